"""Enrollment settings vs how the persona's replies *read*: a fixed-step sweep on part-B speakers.

For each held-out part-B speaker and each setting, a personal prefix is trained
for a fixed number of steps (not minutes, so the figures do not depend on how
busy the machine is), then it answers the speaker's own held-out contexts
through the ONNX runtime with the chat defaults and fixed seeds. Printed per
speaker and setting: median words per reply and the share starting lowercase
(generated vs the speaker's real replies) and the held-out perplexity. Rows
``backbone`` and ``source`` (the shipped source prefix, no training) are the
references. ``--identify N`` adds, per trained setting, perplexity
identification among the speakers given (each speaker's first N held-out
replies scored under every speaker's prefix) and its margin.

    .venv/bin/python benchmarks/voice_sweep.py --speakers 0,21 --steps 40 \\
        --setting lr=1e-3 --setting lr=1e-2

A ``--setting`` is ``field=value[,field=value]`` over ``TrainConfig`` fields.
Reads the chitchat corpus (``chitchat-dataset``) and the default backbone; one
JSON line per (setting, speaker). Slow (~3-5 min per trained row on 2 cores);
a smoke version runs in the tests on the tiny backbone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import persona_sdk  # noqa: F401  (first: switches onnxruntime's telemetry off before anything imports it)


def part_b_people(n: int, context_budget: int = 112) -> list[dict[str, Any]]:
    """The first ``n`` part-B speakers: their train / val / test reply examples."""
    from persona_sdk.reply_examples import build_examples
    from persona_sdk.split import chitchat_split, select

    chats, split = chitchat_split()

    def examples(convs, speaker):
        if not convs:
            return []
        return list(build_examples(select(chats, convs), speaker, context_budget=context_budget,
                                   val_fraction=0.0, min_replies=0).train)

    return [dict(speaker=s.speaker, train=examples(s.train, s.speaker), val=examples(s.val, s.speaker),
                 test=examples(s.test, s.speaker)) for s in split.part("B")[:n]]


def parse_setting(text: str) -> dict[str, Any]:
    """``lr=1e-2,epochs=100`` -> {"lr": 0.01, "epochs": 100}."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def generate(engine, prefix, examples: Sequence[Any], n: int, seed: int = 0) -> list[str]:
    """Replies to the first ``n`` held-out contexts (chat defaults, seed ``seed + i``)."""
    from persona_sdk.config import GenerationConfig

    out = []
    for i, ex in enumerate(examples[:n]):
        gen = GenerationConfig(seed=seed + i)
        ids = engine.prompt_ids(list(ex.context), prefix, gen)
        out.append(engine.format.decode(list(engine.generate_ids(ids, prefix, gen))).strip())
    return out


def perplexity(engine, prefix, examples: Sequence[Any], n: int) -> float:
    total, count = 0.0, 0
    for ex in examples[:n]:
        ids, n_prompt = engine.format.example_ids(list(ex.context), ex.reply, 256, 64)
        losses = engine.token_losses(ids, n_prompt, prefix)
        total += float(losses.sum())
        count += len(losses)
    return math.exp(total / max(count, 1))


def reply_losses(engine, prefix, examples: Sequence[Any]) -> list[float]:
    """Mean token loss (nats) of each reply after its context, under ``prefix``."""
    out = []
    for ex in examples:
        ids, n_prompt = engine.format.example_ids(list(ex.context), ex.reply, 256, 64)
        out.append(float(engine.token_losses(ids, n_prompt, prefix).mean()))
    return out


def identify(engine, prefixes: Sequence[Any], people: Sequence[dict], n: int) -> dict[str, Any]:
    """Perplexity identification at K = len(people) over each speaker's first ``n`` held-out replies.

    ``margin``: median over replies of (best other prefix's loss - own prefix's loss), nats per
    token: > 0 where the own prefix wins; it moves before the top-1 does.
    """
    import numpy as np

    from persona_sdk.metrics import persona_identification

    owners = np.asarray([k for k, p in enumerate(people) for _ in p["test"][:n]])
    replies = [ex for p in people for ex in p["test"][:n]]
    m = np.asarray([reply_losses(engine, prefix, replies) for prefix in prefixes])  # (K, N)
    res = persona_identification(m, owners)
    own = m[owners, np.arange(len(owners))]
    others = m.copy()
    others[owners, np.arange(len(owners))] = np.inf
    return {"k": res.k, "replies": res.n_replies, "top1": round(res.accuracy, 4),
            "margin": round(float(np.median(others.min(axis=0) - own)), 4)}


def sweep(people: Sequence[dict], settings: Sequence[str], steps: int, n_gen: int, n_ppl: int,
          backbone: str | None = None, engine=None, source=None, out=sys.stdout, n_identify: int = 0) -> list[dict]:
    from persona_sdk import trainer as tr
    from persona_sdk.voice import median_words, share

    bb = tr.load_backbone(backbone)
    rows = []
    for setting in settings:
        prefixes = []
        for index, person in enumerate(people):
            t0 = time.monotonic()
            summary = None
            train_seconds = 0.0
            if setting == "backbone":
                prefix = None
            elif setting == "source":
                prefix = source
            else:
                fields = {"max_minutes": None, "epochs": 1000, "max_steps": steps, **parse_setting(setting)}
                prefix, summary = tr.train_prefix(person["train"], person["val"] or None, backbone=bb,
                                                  config=tr.TrainConfig(**fields), init=source)
            train_seconds = time.monotonic() - t0
            prefixes.append(prefix)
            replies = generate(engine, prefix, person["test"], n_gen)
            real = [e.reply for e in person["test"][:n_gen]]
            row = {"setting": setting, "speaker": index, "train_replies": len(person["train"]),
                   "steps": summary.steps if summary else 0, "seconds": round(time.monotonic() - t0, 1),
                   "seconds_per_step": round(train_seconds / summary.steps, 2) if summary and summary.steps else None,
                   "median_words": {"real": median_words(real), "generated": median_words(replies)},
                   "lowercase": {"real": round(share(real, "lowercase_start"), 3),
                                 "generated": round(share(replies, "lowercase_start"), 3)},
                   "perplexity": round(perplexity(engine, prefix, person["test"], n_ppl), 2)}
            rows.append(row)
            print(json.dumps(row), file=out, flush=True)
        if n_identify and len(people) >= 2 and setting not in ("backbone", "source"):
            row = {"setting": setting, "identification": identify(engine, prefixes, people, n_identify)}
            rows.append(row)
            print(json.dumps(row), file=out, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speakers", default="0,21", help="indices into the part-B speakers")
    ap.add_argument("--steps", type=int, default=40, help="training steps per trained row")
    ap.add_argument("--setting", action="append", default=[],
                    help="TrainConfig fields for one row, e.g. lr=1e-2 (repeatable); rows backbone and source "
                         "are always added")
    ap.add_argument("--generate", type=int, default=20, help="replies generated per speaker")
    ap.add_argument("--perplexity", type=int, default=40, help="held-out replies scored per speaker")
    ap.add_argument("--variant", default="int8", help="ONNX variant that answers")
    ap.add_argument("--identify", type=int, default=0,
                    help="per trained setting, perplexity identification at K = the speakers given, over each "
                         "speaker's first N held-out replies (0 = skip)")
    args = ap.parse_args(argv)

    from persona_sdk import source as src
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.engines import open_engine

    indices = [int(x) for x in args.speakers.split(",")]
    everyone = part_b_people(max(indices) + 1)
    people = [everyone[i] for i in indices]
    engine = open_engine(None, RuntimeConfig(variant=args.variant))
    sweep(people, ["backbone", "source", *args.setting], args.steps, args.generate, args.perplexity,
          engine=engine, source=src.load_source(), n_identify=args.identify)


if __name__ == "__main__":
    main()
