"""Load-independent decode evidence for a shared machine: CPU time per token and an op census.

Wall-clock timings are meaningless on cores shared with other work; these are not:

- ``ab``: CPU seconds per decoded token (``time.process_time``, one intra-op
  thread, spinning off, so CPU time is work done), for several exports or
  runtime settings, interleaved back to back in alternating order, medians
  over ``--rounds``. Greedy tokens are compared too.
- ``census``: onnxruntime's profiler over ``--steps`` decode steps: per op
  type, nodes per token and the sum of per-node *median* kernel times (medians
  shrug off preemption), plus the share of each.
- ``prefill``: CPU seconds for a ``--prompt``-token prompt after a persona block.

    python benchmarks/profile_decode.py ab EXPORT_DIR [EXPORT_DIR ...] --steps 48 --rounds 4
    python benchmarks/profile_decode.py census EXPORT_DIR --past 300 --steps 40
    python benchmarks/profile_decode.py prefill EXPORT_DIR [EXPORT_DIR ...] --prompt 200

A "dir:legacy" argument runs that export through the pre-shared-buffer
decode loop (``Engine.forward``: the KV is copied into a new present every
step), for the A/B of that change.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import persona_sdk  # noqa: F401  (first: switches onnxruntime's telemetry off before anything imports it)


def _engine(spec: str, threads: int = 1):
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.runtime import Engine

    path, _, mode = spec.partition(":")
    return Engine(Path(path), RuntimeConfig(device="cpu", threads=threads, spin=False)), mode


def _decode(engine, mode: str, prompt: list[int], steps: int) -> tuple[list[int], float]:
    """Greedy tokens and CPU seconds per decode step (the prompt's forward excluded)."""
    tokens = []
    if mode == "legacy":
        out = engine.forward(np.asarray([prompt]), *engine.initial_past(None))
        start = time.process_time()
        for _ in range(steps):
            tokens.append(int(out.logits[0].argmax()))
            out = engine.forward(np.asarray([[tokens[-1]]]), out.past, out.past_len)
    else:
        state = engine.new_state(None, capacity=len(prompt) + steps + 1)
        logits = state.start(prompt)
        start = time.process_time()
        for _ in range(steps):
            tokens.append(int(logits.argmax()))
            logits = state.feed(tokens[-1])
    return tokens, (time.process_time() - start) / steps


def _prompt(engine, n: int) -> list[int]:
    text = (Path(__file__).resolve().parent / "heldout_sample.txt").read_text(encoding="utf-8")
    ids = engine.format.encode(text)
    return (ids * (-(-n // len(ids))))[:n]


def ab(args) -> dict:
    engines = {spec: _engine(spec) for spec in args.exports}
    prompt = _prompt(next(iter(engines.values()))[0], args.past)
    cpu = {spec: [] for spec in engines}
    tokens = {}
    for r in range(args.rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(list(engines)))
        for spec in order:
            tokens[spec], t = _decode(*engines[spec], prompt, args.steps)
            cpu[spec].append(t)
    ref = tokens[args.exports[0]]
    out = {}
    for spec in engines:
        same = int(np.sum(np.cumprod(np.asarray(tokens[spec]) == np.asarray(ref))))
        out[spec] = {"cpu_ms_per_token": 1000 * float(np.median(cpu[spec])),
                     "runs_ms": [round(1000 * c, 2) for c in cpu[spec]], "same_greedy_as_first": same}
        print(f"{spec}: {out[spec]['cpu_ms_per_token']:.2f} ms CPU/token (runs {out[spec]['runs_ms']}); "
              f"greedy = first for {same}/{args.steps}")
    return out


def census(args) -> dict:
    import onnxruntime as ort

    engine, mode = _engine(args.exports[0])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(args.out_dir) / "ort_profile")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    engine.session = ort.InferenceSession(str(engine.export_dir / "model.onnx"), opts,
                                          providers=["CPUExecutionProvider"])
    prompt = _prompt(engine, args.past)
    _, cpu = _decode(engine, mode, prompt, args.steps)
    profile = engine.session.end_profiling()
    events = json.loads(Path(profile).read_text())
    os.remove(profile)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    first_end = runs[0]["ts"] + runs[0]["dur"]  # the prompt's run
    per_node, op_of = collections.defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_end:
            per_node[e["name"]].append(e["dur"])
            op_of[e["name"]] = e["args"]["op_name"]
    by_op = collections.defaultdict(lambda: [0, 0.0])
    for name, durs in per_node.items():
        by_op[op_of[name]][0] += 1
        by_op[op_of[name]][1] += float(np.median(durs))
    total = sum(v[1] for v in by_op.values())
    run_ms = float(np.median([e["dur"] for e in runs[1:]])) / 1000
    print(f"{args.exports[0]} past={args.past}: {1000 * cpu:.2f} ms CPU/token; median model_run {run_ms:.2f} ms; "
          f"sum of per-node median kernel times {total / 1000:.2f} ms; {sum(v[0] for v in by_op.values())} nodes/token")
    print("| op | nodes/token | µs/token (sum of medians) | share |\n|---|---|---|---|")
    rows = {}
    for op, (count, us) in sorted(by_op.items(), key=lambda kv: -kv[1][1]):
        rows[op] = {"nodes": count, "us": us}
        print(f"| {op} | {count} | {us:.0f} | {100 * us / total:.1f}% |")
    return {"cpu_ms_per_token": 1000 * cpu, "ops": rows}


def prefill(args) -> dict:
    out = {}
    for spec in args.exports:
        engine, _ = _engine(spec)
        prompt = _prompt(engine, args.prompt)
        from persona_sdk.prefix import Prefix

        kv = np.random.default_rng(0).normal(0, 0.5, (engine.layers, 2, engine.kv_heads, 16, engine.head_dim))
        persona = Prefix(kv.astype(engine.kv_dtype), engine.fingerprint, method="bench")
        times = []
        for _ in range(args.rounds):
            state = engine.new_state(persona, capacity=len(prompt) + 2)
            start = time.process_time()
            state.start(prompt)
            times.append(time.process_time() - start)
        out[spec] = 1000 * float(np.median(times))
        print(f"{spec}: {args.prompt}-token prompt after a 16-position persona: {out[spec]:.1f} ms CPU (1 thread)")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("ab", "census", "prefill"))
    ap.add_argument("exports", nargs="+", help="export folders (append :legacy for the copying decode loop)")
    ap.add_argument("--past", type=int, default=200, help="prompt tokens before the decode steps")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--out-dir", default="/tmp")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = {"ab": ab, "census": census, "prefill": prefill}[args.what](args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
