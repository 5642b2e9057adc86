"""Length control at chat time, measured on the voice table's enrolled personas: how the pull toward a
persona's usual reply length moves the length, casing, topic and attribution figures.

    python benchmarks/length_control.py --table-out benchmarks/out/personapkt --pulls 0,1,2,3,5,8,12
    python benchmarks/length_control.py --pulls 3,5 --seeds 0,1000,2000,3000

Reads the profiles a ``personapkt_table.py --size voice20`` run enrolled (its ``--out`` folder),
answers each speaker's 16 held-out voice contexts with the int8 chat defaults and the table's
seeds (context i uses seed + i), once per variant, and scores every variant with the table's voice
metrics (``voice.speakers_voice``, K = the speakers). Variants:

* ``before`` -- the sampler as the K = 20 tables up to 2026-12-01 ran it: the end-of-turn token
  is penalised as a repeat, no length pull (``length_pull=0``);
* ``pull=X`` -- the end-of-turn token exempt from the repetition penalty and
  ``GenerationConfig(length_pull=X, length_from="profile")``, the target being the speaker's median
  *training* reply in tokens (what ``persona enroll`` keeps in the profile; rebuilt here the way
  enrollment builds it for profiles enrolled before it did). ``pull=0`` is the exemption alone;
* ``--variants pull=X,length_from=conversation,temperature=T``: any generation settings (``pull`` =
  ``length_pull``); what a variant does not set is the chat default, except ``length_pull`` (0
  unless set) and ``length_from`` (``profile`` unless set). ``pull=5,length_from=conversation`` is
  today's chat default: the target is the median of the speaker's own earlier turns in that
  conversation (the training median where the context holds none);
* ``--variants default``: the chat defaults exactly (``GenerationConfig(seed=...)``), whatever they
  are today: the replies the voice table generates.

Every variant decodes through the runtime's own path (``Engine.generate_ids``), so the target is
found the way ``persona chat`` finds it.

Each speaker's figure comes from 16 replies, so one seed's table moves by several points from
seed to seed (``--seeds``: one table per seed and their mean). Generated replies are cached per
seed, variant and speaker under ``--out`` (public dataset text, like the table's cache); the
printed tables hold numbers only. About a minute per variant and seed on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_setting(text: str) -> dict:
    """``pull=5,temperature=0.5`` -> GenerationConfig changes (``pull`` is ``length_pull``)."""
    from persona_sdk import GenerationConfig

    changes: dict = {}
    for part in (x for x in text.split(",") if x.strip()):
        key, _, value = part.partition("=")
        key = "length_pull" if key.strip() == "pull" else key.strip()
        if key == "length_from":  # a word, checked by GenerationConfig below
            changes[key] = value.strip()
            continue
        try:
            changes[key] = int(value) if key in ("top_k", "max_new_tokens") else float(value)
        except ValueError:
            raise SystemExit(f"--variants: {part!r} is not NAME=NUMBER") from None
    GenerationConfig().replace(**changes)  # unknown or bad settings fail here, naming the allowed ones
    return changes


def parse_pulls(text: str) -> list[float]:
    try:
        pulls = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--pulls takes numbers separated by commas, got {text!r}") from None
    if not pulls or any(p < 0 for p in pulls):
        raise SystemExit("--pulls needs at least one number >= 0")
    return pulls


def generate(engine, prefix, context, gen) -> tuple[str, int]:
    """One reply through the runtime's own path: (text, tokens)."""
    ids = engine.prompt_ids(list(context), prefix, gen)
    out = list(engine.generate_ids(ids, prefix, gen))
    return engine.format.decode(out).rstrip("\ufffd").strip(), len(out)


def enrollment_target(table, chats, person, fmt) -> int:
    """The reply length ``persona enroll`` now keeps for ``person``: its training examples rebuilt the
    way enrollment builds them (its chats.json, the default TrainConfig: validation share held out)."""
    import tempfile

    from persona_sdk.chats import load_chats, resolve_me
    from persona_sdk.conversation import count_tokens_fn
    from persona_sdk.reply_examples import MIN_REPLIES, build_examples
    from persona_sdk.training.config import TrainConfig
    from persona_sdk.voice import median_reply_tokens

    cfg = TrainConfig()
    with tempfile.TemporaryDirectory(prefix="length-control-") as tmp:  # public dataset text, removed after
        path = Path(tmp) / "chats.json"
        table.write_chats_json(chats, person.train_conversations, path)
        loaded = load_chats(path)
    examples = build_examples(loaded, resolve_me(loaded, person.speaker),
                              count_tokens=count_tokens_fn(fmt, at_most=cfg.context_budget),
                              context_budget=cfg.context_budget, val_fraction=cfg.val_fraction, seed=cfg.seed,
                              min_replies=max(MIN_REPLIES, cfg.min_examples))
    return median_reply_tokens([e.reply for e in examples.train], count_tokens_fn(fmt))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table-out", default="benchmarks/out/personapkt",
                    help="the --out folder of a personapkt_table.py --size voice20 run (its enrolled profiles)")
    ap.add_argument("--out", default="benchmarks/out/length_control", help="output folder (and resume cache)")
    ap.add_argument("--pulls", default="0,1,2,4", help="length_pull values to run, comma-separated")
    ap.add_argument("--variants", nargs="*", default=[],
                    help="more variants, each a comma-separated list of generation settings, e.g. "
                         "pull=5,temperature=0.5 (pull = length_pull)")
    ap.add_argument("--no-before", action="store_true", help="skip the 'before' variant")
    ap.add_argument("--write-targets", action="store_true",
                    help="store each speaker's reply length in its profile in --table-out where it has none "
                         "(profiles enrolled before `persona enroll` kept it), so a table run on that cache "
                         "decodes with the length pull as a fresh enrollment would")
    ap.add_argument("--speakers", type=int, default=None, help="only the first N speakers (a smoke run)")
    ap.add_argument("--contexts", type=int, default=None, help="only the first N voice contexts per speaker")
    ap.add_argument("--corpus", default=None, help="chitchat JSON (default: the installed chitchat-dataset)")
    ap.add_argument("--backbone", default=None, help="backbone folder (default: embedded)")
    ap.add_argument("--export", default=None, help="ONNX export folder (default: the backbone's, built if missing)")
    ap.add_argument("--variant", default="int8", help="ONNX variant to decode with (int8 = the chat default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default="0", help="generation seeds, comma-separated (context i uses seed + i; the "
                    "table's is 0); figures per seed and their mean")
    args = ap.parse_args(argv)
    pulls = parse_pulls(args.pulls)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds takes integers separated by commas, got {args.seeds!r}") from None
    if not seeds:
        raise SystemExit("--seeds needs at least one seed")

    import personapkt_table as table
    from tokenizers import Tokenizer

    from persona_sdk import GenerationConfig
    from persona_sdk import backbone as bbmod
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.conversation import ChatFormat
    from persona_sdk.engines import find_export
    from persona_sdk.runtime import Engine
    from persona_sdk.split import SplitConfig
    from persona_sdk.voice import META_KEY, REPLY_TOKENS_KEY, SpeakerTexts, profile_reply_tokens, speakers_voice

    t_start = time.monotonic()
    backbone_dir = Path(bbmod.resolve(args.backbone, table.say))
    fmt = ChatFormat(Tokenizer.from_file(str(backbone_dir / "tokenizer.json")))
    run = json.loads((Path(args.table_out) / "cache" / "run.json").read_text())
    size = table.VoiceSize(**run["size"])
    chats, people, _ = table.load_voice_people(args.corpus, SplitConfig(**run["split"]), size, lambda t: len(fmt.encode(t)))
    people = people[: args.speakers] if args.speakers else people
    fingerprint = bbmod.fingerprint(backbone_dir)
    vault = table._Home((Path(args.table_out) / "cache" / "persona-home").resolve()).vault()
    engine = Engine(find_export(args.export or backbone_dir, args.variant, table.say, build=True),
                    RuntimeConfig(device="cpu", threads=args.threads))
    variants = ([] if args.no_before else ["before"]) + [f"pull={p:g}" for p in pulls]
    variants += [v for v in args.variants if v not in variants]
    settings = {v: (None if v == "default" else {} if v == "before" else parse_setting(v)) for v in variants}
    out = Path(args.out)
    prefixes, targets = {}, {}
    for n, p in enumerate(people, start=1):
        if not vault.exists(p.profile):
            table.say(f"speaker {n}: no enrolled profile in {args.table_out}; skipped")
            continue
        prefix = prefixes[p.sid] = vault.load(p.profile, table.VOICE_PASSPHRASE, fingerprint=fingerprint)
        targets[p.sid] = profile_reply_tokens(prefix.meta) or enrollment_target(table, chats, p, fmt)
        if profile_reply_tokens(prefix.meta) is None:  # enrolled before enrollment kept it: in memory here
            prefix.meta.setdefault(META_KEY, {})[REPLY_TOKENS_KEY] = targets[p.sid]
            if args.write_targets:
                vault.save(p.profile, prefix, table.VOICE_PASSPHRASE, force=True)
                table.say(f"speaker {n}: wrote its reply length ({targets[p.sid]} tokens) into its profile")
    per_seed = {}
    pooled: dict[str, dict[str, list[str]]] = {}  # speaker -> variant -> replies over every seed
    for seed in seeds:
        cache = table.Cache(out / f"seed-{seed}" / "cache")
        identity = {"table_run": run, "seed": seed, "variant": args.variant, "backbone": fingerprint}
        if cache.json("run", lambda: identity) != json.loads(json.dumps(identity)):
            raise SystemExit(f"{out} holds replies of another configuration (variant or table run); use another --out")
        texts: dict[str, SpeakerTexts] = {}
        for n, p in enumerate(people, start=1):
            if p.sid not in prefixes:
                continue
            prefix, target = prefixes[p.sid], targets[p.sid]
            contexts = p.voice[: args.contexts] if args.contexts else p.voice
            generated = {}
            for v in variants:
                def run_variant(v=v) -> dict:
                    replies, tokens = [], []
                    for i in contexts:
                        if settings[v] is None:  # "default": the chat defaults as they are
                            gen = GenerationConfig(seed=seed + i)
                        else:
                            gen = GenerationConfig(seed=seed + i, length_pull=0.0, length_from="profile")
                            gen = gen.replace(**settings[v])  # the target: the runtime's, from profile and context
                        text, k = generate(engine, prefix, p.test[i].context, gen)
                        replies.append(text)
                        tokens.append(k)
                    return {"replies": replies, "tokens": tokens}

                t0 = time.monotonic()
                fresh = not cache.has(f"{v}/{p.sid}")
                got = cache.json(f"{v}/{p.sid}", run_variant)
                generated[v] = got["replies"]
                if fresh:
                    table.say(f"seed {seed}, speaker {n}/{len(people)} {v}: {len(got['replies'])} replies, median "
                              f"{np.median(got['tokens']):.0f} tokens (profile length {target}) in {time.monotonic() - t0:.0f} s")
            texts[p.sid] = SpeakerTexts(train=[e.reply for e in p.train], real=[e.reply for e in p.test],
                                        generated=generated)
            for v, replies in generated.items():
                pooled.setdefault(p.sid, {}).setdefault(v, []).extend(replies)
        voice = speakers_voice(texts, seed=0)  # the table's classifier; only the generation seeds differ
        per_seed[seed] = {"aggregate": {v: voice["aggregate"]["settings"][v] for v in ["real", *variants]},
                          "per_speaker": {sid: {v: {k: r[v].get(k) for k in ("length_ratio", "lowercase_gap",
                                                                             "attribution")} for v in variants}
                                          for sid, r in voice["per_speaker"].items()}}
        print(f"\nseed {seed} (context i decoded with seed {seed} + i):\n")
        print(markdown(per_seed[seed]["aggregate"], variants))
    mean = {v: {k: float(np.mean([per_seed[s]["aggregate"][v][k] for s in seeds]))
                for k in per_seed[seeds[0]]["aggregate"][v] if isinstance(per_seed[seeds[0]]["aggregate"][v][k], float)}
            for v in ["real", *variants]}
    table_md = markdown(mean, variants)
    if len(seeds) > 1:
        print(f"\nmean over the {len(seeds)} seeds {', '.join(map(str, seeds))}:\n")
        print(table_md)
    pooled_agg = None
    if len(seeds) > 1:  # each speaker's figures from all seeds' replies at once (len(seeds) x 16 replies)
        by_sid = {p.sid: p for p in people}
        voice = speakers_voice({sid: SpeakerTexts(train=[e.reply for e in by_sid[sid].train],
                                                  real=[e.reply for e in by_sid[sid].test], generated=g)
                                for sid, g in pooled.items()}, seed=0)
        pooled_agg = {v: voice["aggregate"]["settings"][v] for v in ["real", *variants]}
        print(f"\npooled: each speaker's replies of all {len(seeds)} seeds together:\n")
        print(markdown(pooled_agg, variants))
    result = {"variants": variants, "seeds": seeds, "speakers": len(prefixes), "per_seed": per_seed, "mean": mean,
              "pooled": pooled_agg,
              "targets": targets, "table_run": run, "seconds": time.monotonic() - t_start,
              "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "command": " ".join(sys.argv)}
    out.mkdir(parents=True, exist_ok=True)
    table.write_atomic(out / "results.json", json.dumps(result, indent=2).encode())
    (out / "table.md").write_text(table_md + "\n")
    return result


def markdown(agg: dict, variants: list[str]) -> str:
    """The voice figures of each variant (numbers only)."""
    lines = ["| variant | median words (median) | length ratio (median) | within ±35% length | length KS "
             "(median) | length spread ratio (median) | within 0.15 lowercase | topic share | attribution top-1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    real = agg["real"]
    lines.append(f"| real held-out replies | {real['median_words_median']:.1f} | 1 | — | 0 | 1 | — | "
                 f"{real['topic_share_median']:.1%} | {real.get('attribution_macro', float('nan')):.1%} (ceiling) |")
    for v in variants:
        a = agg[v]
        lines.append(f"| {v} | {a['median_words_median']:.1f} | {a['length_ratio_median']:.2f} | "
                     f"{a['length_within_tolerance']:.0%} | {a['length_ks_median']:.2f} | "
                     f"{a['length_spread_ratio_median']:.2f} | {a['lowercase_within_tolerance']:.0%} | "
                     f"{a['topic_share_median']:.1%} | {a.get('attribution_macro', float('nan')):.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
