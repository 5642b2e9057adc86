"""The noise floor of the voice table's length and casing bars: how often a *perfect* persona
(one that writes exactly like its speaker) would land within the bars, given that each speaker's
generated figure comes from only ``voice_contexts`` (16) replies.

    python benchmarks/voice_noise_floor.py

For each voice20 speaker (the table's split and selection), draws ``--draws`` samples of 16 of the
speaker's real held-out replies and compares each sample's median words and lowercase-start share
with those of all the held-out replies (the table's reference). Prints per-speaker probabilities
(numbers only) and their means: the share of speakers a perfect persona is expected to get within
±35% length and within 0.15 lowercase. Seconds on any machine.

A persona can only know its owner from the *training* conversations, and people write longer or
shorter in different conversations. So it also prints the share of speakers whose median
*training* reply is within ±35% of their held-out median: what a persona that copied its owner's
training length exactly (the chat-time length pull's ``profile`` target) would get with unlimited
replies. The same for the pull's other targets, per voice context: the median of the owner's own
earlier turns in that conversation (``conversation``; the training median where the context holds
none) and its geometric mean with the training median (``blend``); a speaker's prediction is the
median over their voice contexts. Words stand in for the pull's tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

LENGTH_BAND, LOWERCASE_BAND = 0.35, 0.15  # issue 10's bars


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=None, help="chitchat JSON (default: the installed chitchat-dataset)")
    ap.add_argument("--backbone", default=None, help="backbone folder whose tokenizer budgets contexts (default: embedded)")
    ap.add_argument("--n-b", type=int, default=None, help="part-B speakers in the split (default: the table's)")
    ap.add_argument("--n-c", type=int, default=None, help="part-C speakers in the split (default: the table's)")
    ap.add_argument("--b-min", type=int, default=None, help="fewest replies of a part-B speaker (default: the table's)")
    ap.add_argument("--draws", type=int, default=500, help="samples per speaker")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import personapkt_table as table
    from tokenizers import Tokenizer

    from persona_sdk import backbone as bbmod
    from persona_sdk.conversation import ASSISTANT, ChatFormat
    from persona_sdk.split import SplitConfig
    from persona_sdk.voice import median_words, starts_lowercase, word_count

    size = table.VOICE_SIZES["voice20"]
    fmt = ChatFormat(Tokenizer.from_file(str(Path(bbmod.resolve(args.backbone)) / "tokenizer.json")))
    split = SplitConfig(**{k: getattr(args, k) for k in ("n_b", "n_c", "b_min") if getattr(args, k) is not None})
    _, people, _ = table.load_voice_people(args.corpus, split, size, lambda t: len(fmt.encode(t)))
    rng = np.random.default_rng(args.seed)
    rows = []
    for p in people:
        real = [ex.reply for ex in p.test]
        median, lower = median_words(real), float(np.mean([starts_lowercase(r) for r in real]))
        n = min(size.voice_contexts, len(real))
        length_in = lower_in = 0
        for _ in range(args.draws):
            sample = [real[i] for i in rng.choice(len(real), size=n, replace=False)]
            length_in += median > 0 and abs(median_words(sample) / median - 1) <= LENGTH_BAND
            lower_in += abs(float(np.mean([starts_lowercase(r) for r in sample])) - lower) <= LOWERCASE_BAND
        usual = median_words([ex.reply for ex in p.train])
        train_ratio = usual / median if median > 0 else float("nan")
        here = [[word_count(t.text) for t in p.test[i].context if t.role == ASSISTANT] for i in p.voice]
        conversation = float(np.median([np.median(h) if h else usual for h in here]))
        blend = float(np.median([np.sqrt(np.median(h) * usual) if h else usual for h in here]))
        rows.append({"speaker": p.sid, "held_out": len(real), "median_words": median,
                     "p_length": length_in / args.draws, "p_lowercase": lower_in / args.draws,
                     "train_ratio": train_ratio,
                     "conversation_ratio": conversation / median if median > 0 else float("nan"),
                     "blend_ratio": blend / median if median > 0 else float("nan"),
                     "contexts_with_own_turns": sum(bool(h) for h in here) / max(len(here), 1)})
        print(f"{p.sid}  held-out {len(real):4d}  median words {median:5.1f}  "
              f"P(length within) {length_in / args.draws:.2f}  P(lowercase within) {lower_in / args.draws:.2f}  "
              f"train median / held-out median {train_ratio:.2f}")
    out = {"speakers": len(rows), "sample": size.voice_contexts,
           "length_share": float(np.mean([r["p_length"] for r in rows])) if rows else float("nan"),
           "lowercase_share": float(np.mean([r["p_lowercase"] for r in rows])) if rows else float("nan"),
           "rows": rows}
    for key in ("train", "conversation", "blend"):
        out[f"{key}_median_share"] = (float(np.mean([abs(r[f"{key}_ratio"] - 1) <= LENGTH_BAND for r in rows]))
                                      if rows else float("nan"))
    print(f"a perfect persona, {size.voice_contexts} replies per speaker, {len(rows)} speakers: expected share "
          f"within ±35% length {out['length_share']:.3f}, within 0.15 lowercase {out['lowercase_share']:.3f}")
    print(f"the owner's training median as the prediction: share within ±35% of the held-out median "
          f"{out['train_median_share']:.3f}")
    print(f"the owner's earlier turns in each held-out conversation as the prediction (training median where "
          f"there are none): {out['conversation_median_share']:.3f}; blended with the training median: "
          f"{out['blend_median_share']:.3f}; voice contexts holding an own turn: "
          f"{np.mean([r['contexts_with_own_turns'] for r in rows]):.3f}")
    return out


if __name__ == "__main__":
    main()
