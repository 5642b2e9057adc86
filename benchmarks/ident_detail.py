"""What a voice table's identification matrix says beyond its one top-1 figure.

    .venv/bin/python benchmarks/ident_detail.py benchmarks/out/voice20-ctx48

Reads ``OUT/results.json`` and ``OUT/cache/voice/ident/<speaker>.json`` of a finished
``personapkt_table.py --size voice20`` run (each file: one enrolled persona's mean reply-token loss
on every enrolled speaker's identification replies, speakers in the table's order) and prints:

- per-reply top-1 (the bar's figure: macro over speakers, and micro over replies);
- the same after cohort normalisation (each persona's losses z-scored over all replies), which
  tells calibration (one persona is "cheap" for everyone) from separation;
- per speaker: a speaker's replies summed, is their own persona the best? (more text per decision);
- the own persona's rank among K (median, top-3 share) and the median margin (best other minus own,
  nats per token; > 0 = identified);
- per-reply top-1 against each speaker's training replies and enrollment steps (Pearson r with
  log replies), so a lever that buys steps or data can be read against it.

numpy on the cached matrix (hits counted by ``persona_sdk.metrics``): seconds, no model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(out: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[dict]]:
    """(losses (K, N), owners (N,), speaker ids (K,), enrollment info per speaker) of a finished run."""
    results = json.loads((out / "results.json").read_text())
    ident_dir = out / "cache" / "voice" / "ident"
    sids = [sid for sid in results["speakers"] if (ident_dir / f"{sid}.json").is_file()]
    if len(sids) < 2:
        raise SystemExit(f"{ident_dir}: fewer than 2 identification rows; is the run finished?")
    m = np.asarray([json.loads((ident_dir / f"{sid}.json").read_text()) for sid in sids], dtype=np.float64)  # (K, N)
    k, n = m.shape
    if n % k:
        raise SystemExit(f"{n} replies do not split evenly over {k} speakers; this script assumes equal counts")
    per = n // k
    owners = np.repeat(np.arange(k), per)  # (N,): speakers' replies are consecutive blocks, in table order
    info = [results["speakers"][sid]["enrollment"] for sid in sids]
    return m, owners, sids, info


def summary(m: np.ndarray, owners: np.ndarray) -> dict:
    """The figures above for a (K, N) loss matrix and its (N,) owners (0..K-1)."""
    from persona_sdk.metrics import persona_identification  # the table's own definition of a hit

    k, n = m.shape
    raw = persona_identification(m, owners)
    z = (m - m.mean(axis=1, keepdims=True)) / m.std(axis=1, keepdims=True)  # (K, N), per persona
    normalised = persona_identification(z, owners)
    sums = np.stack([m[:, owners == i].sum(axis=1) for i in range(k)], axis=1)  # (K, K): persona x speaker
    per_speaker = float(np.mean(np.argmin(sums, axis=0) == np.arange(k)))
    ranks = (m < m[owners, np.arange(n)]).sum(axis=0) + 1  # (N,): 1 = best
    others = m.copy()
    others[owners, np.arange(n)] = np.inf
    margin = others.min(axis=0) - m[owners, np.arange(n)]  # (N,)
    wins = np.bincount(np.argmin(m, axis=0), minlength=k)  # replies each persona wins
    return {"k": k, "n": n, "top1_macro": raw.accuracy, "top1_micro": raw.micro,
            "top1_znorm": normalised.accuracy, "per_speaker": per_speaker,
            "rank_median": float(np.median(ranks)), "top3": float(np.mean(ranks <= 3)),
            "margin_median": float(np.median(margin)), "wins_min": int(wins.min()), "wins_max": int(wins.max()),
            "per_speaker_top1": list(raw.per_speaker)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the --out folder of a finished voice20 table")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    m, owners, sids, info = load(args.out)
    s = summary(m, owners)
    replies = np.asarray([e["profile"]["train_examples"] if e.get("profile") else np.nan for e in info], float)
    steps = np.asarray([e["profile"]["steps"] if e.get("profile") else np.nan for e in info], float)
    acc = np.asarray(s["per_speaker_top1"])
    ok = np.isfinite(replies)
    s["r_log_replies"] = float(np.corrcoef(np.log(replies[ok]), acc[ok])[0, 1]) if ok.sum() > 2 else None
    s["steps_min"], s["steps_max"] = float(np.nanmin(steps)), float(np.nanmax(steps))
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"K = {s['k']} personas, N = {s['n']} replies ({s['n'] // s['k']} per speaker)")
    print(f"per-reply top-1: {s['top1_macro']:.1%} (macro; micro {s['top1_micro']:.1%}); chance {1 / s['k']:.1%}")
    print(f"  cohort-normalised (z per persona): {s['top1_znorm']:.1%}")
    print(f"per-speaker top-1 (a speaker's replies summed): {s['per_speaker']:.1%}")
    print(f"own persona's rank: median {s['rank_median']:g}, top-3 {s['top3']:.1%}; "
          f"median margin {s['margin_median']:+.4f} nats/token")
    print(f"replies won per persona: {s['wins_min']}..{s['wins_max']}")
    r = s["r_log_replies"]
    print(f"enrollment steps {s['steps_min']:.0f}..{s['steps_max']:.0f}; r(per-speaker top-1, log training "
          f"replies) = {'n/a (fewer than 3 speakers)' if r is None else f'{r:.2f}'}")
    print("\n| speaker | training replies | steps | per-reply top-1 |\n|---|---|---|---|")
    for sid, n_rep, st, a in sorted(zip(sids, replies, steps, acc), key=lambda t: t[1]):
        print(f"| {sid} | {n_rep:.0f} | {st:.0f} | {a:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
