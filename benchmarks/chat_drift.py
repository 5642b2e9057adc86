"""Reply lengths over a multi-turn chat with an enrolled persona: does the length stay the person's?

    python benchmarks/chat_drift.py --table-out benchmarks/out/voice20-conv-intel --speakers 3

Opens the first ``--speakers`` profiles a ``personapkt_table.py --size voice20`` run enrolled (its
``--out`` folder) as a ``PersonaAgent`` -- the app path, the conversation kept by the agent -- and
sends the same ``--turns`` neutral messages (seed = turn index), once per ``--pulls`` value of the
chat-time length pull (the chat default and 0 = off). Prints words per reply, turn by turn, with
the speaker's real held-out median beside them, and their medians; numbers only. In a chat the
persona's earlier turns are its own replies, so this is where a length target taken from the
conversation could drift. About a minute per speaker on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

MESSAGES = ("hey how was your week?", "what did you do on saturday", "nice, anything else going on?",
            "how is work these days", "any plans for the holidays?", "cool. what are you reading lately?",
            "ha ok. talk later?", "wait, one more thing: how is your family?")


def main(argv=None) -> dict:
    from persona_sdk.config import LENGTH_PULL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table-out", default="benchmarks/out/personapkt",
                    help="the --out folder of a personapkt_table.py --size voice20 run (its enrolled profiles)")
    ap.add_argument("--speakers", type=int, default=3, help="the first N enrolled speakers")
    ap.add_argument("--turns", type=int, default=len(MESSAGES), help=f"messages sent (at most {len(MESSAGES)})")
    ap.add_argument("--pulls", default=f"{LENGTH_PULL:g},0", help="length_pull values, comma-separated")
    ap.add_argument("--corpus", default=None, help="chitchat JSON (default: the installed chitchat-dataset)")
    ap.add_argument("--backbone", default=None, help="backbone folder (default: embedded)")
    ap.add_argument("--export", default=None, help="ONNX export folder (default: the backbone's, built if missing)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not 1 <= args.turns <= len(MESSAGES):
        raise SystemExit(f"--turns must be in 1..{len(MESSAGES)}")
    try:
        pulls = [float(x) for x in args.pulls.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--pulls takes numbers separated by commas, got {args.pulls!r}") from None

    import personapkt_table as table
    from tokenizers import Tokenizer

    from persona_sdk import backbone as bbmod
    from persona_sdk.agent import PersonaAgent
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.conversation import ChatFormat
    from persona_sdk.engines import find_export
    from persona_sdk.runtime import Engine
    from persona_sdk.split import SplitConfig
    from persona_sdk.voice import median_words, profile_reply_tokens, word_count

    backbone_dir = Path(bbmod.resolve(args.backbone, table.say))
    fmt = ChatFormat(Tokenizer.from_file(str(backbone_dir / "tokenizer.json")))
    run = json.loads((Path(args.table_out) / "cache" / "run.json").read_text())
    _, people, _ = table.load_voice_people(args.corpus, SplitConfig(**run["split"]), table.VoiceSize(**run["size"]),
                                           lambda t: len(fmt.encode(t)))
    vault = table._Home((Path(args.table_out) / "cache" / "persona-home").resolve()).vault()
    engine = Engine(find_export(args.export or backbone_dir, "int8", table.say, build=True),
                    RuntimeConfig(device="cpu", threads=args.threads))
    fingerprint = bbmod.fingerprint(backbone_dir)
    rows = []
    for p in [p for p in people if vault.exists(p.profile)][: args.speakers]:
        prefix = vault.load(p.profile, table.VOICE_PASSPHRASE, fingerprint=fingerprint)
        row = {"speaker": p.sid, "real_median_words": median_words([e.reply for e in p.test]),
               "usual_tokens": profile_reply_tokens(prefix.meta), "words": {}}
        for pull in pulls:
            agent = PersonaAgent(prefix, engine=engine)
            row["words"][f"{pull:g}"] = [word_count(agent.reply(m, seed=i, length_pull=pull))
                                         for i, m in enumerate(MESSAGES[: args.turns])]
        rows.append(row)
        print(f"{p.sid}  real median {row['real_median_words']:.1f} words, usual {row['usual_tokens']} tokens")
        for pull, words in row["words"].items():
            print(f"  pull {pull:>3}: words per turn {words}  median {np.median(words):.1f}")
    out = {"speakers": len(rows), "turns": args.turns, "pulls": [f"{p:g}" for p in pulls], "rows": rows}
    if rows:
        print("median over speakers of each speaker's median words: "
              + ", ".join(f"pull {k} {np.median([np.median(r['words'][k]) for r in rows]):.1f}" for k in out["pulls"])
              + f"; real {np.median([r['real_median_words'] for r in rows]):.1f}")
    return out


if __name__ == "__main__":
    main()
