"""Decode speed, time to first token, perplexity cost and chat RSS of the backbone engines.

Same prompt (``--prompt-tokens`` tokens of ``heldout_sample.txt``, default 200),
``--new-tokens`` greedy tokens (default 128, no early stop), one run each,
all on the same machine and thread count:

- torch eager: transformers ``generate`` (timestamps from a logits processor);
- ORT <variant> (runtime): ``persona_sdk.runtime.Engine.generate_ids`` as shipped (KV cache shared
  in place, threads spinning inside a run only), greedy; and with spinning off; and (int8 / the
  chat default variant) with the chat's default sampling settings (top-k/top-p/penalty);
- ORT fp32 (numpy loop): the exporter's minimal loop, KV copied through numpy;
- ORT <variant>, optimum graph: the same variant built from the optimum-onnx export instead of
  the fused graph (``--optimum-variants``), to show what the fused graph buys;
- llama.cpp: ``llama-cpp-python`` on the same GGUF the default backbone comes from.

Time to first token = prompt forward + first token; decode tok/s = (N-1) / (time
from first to last token); per-token times are reported as medians.

Also (``--skip-batch`` / ``--skip-ttft`` to leave out):

- batched rows: N = 1, 4, 8, 16 concurrent replies (``--batch-rows``), each with a different
  random persona block, through ``persona_sdk.batching.Batcher``: total tok/s, per-reply latency
  p50/p95, and the same N replies one after another (max_rows=1) for the speed-up;
- TTFT with a persona: a fresh 200-token prompt, and the second turn of a chat with and without
  reusing the first turn's KV (``DecodeState``). Perplexity
of each ORT variant on the whole held-out sample; delta vs fp32. Peak RSS of a
``persona chat --message`` process (``/usr/bin/time -v``), and of a fresh process per engine
(torch eager, each ORT variant, llama.cpp) that loads it and decodes 16 tokens.

    python benchmarks/decode_speed.py --json benchmarks/results.json
    python benchmarks/decode_speed.py --backbone PATH --variants fp32 int4 --skip-llama --skip-rss
    python benchmarks/decode_speed.py --only-batch --batch-rows 1 8      # the batching rows alone
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

import persona_sdk  # noqa: F401  (first: switches onnxruntime's telemetry off before anything imports it)
from persona_sdk.fileio import atomic_write

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "heldout_sample.txt"


def _rates(stamps: list[float], start: float) -> dict:
    """TTFT, decode tok/s and the median inter-token time from token timestamps."""
    gaps = np.diff(stamps)
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return {"ttft_s": stamps[0] - start, "decode_tok_s": decode,
            "median_ms_per_token": 1000 * float(np.median(gaps)) if len(gaps) else float("nan"),
            "new_tokens": len(stamps)}


def _median(values: list):
    """The median, kept an int when every value is the same int (token and reply counts)."""
    if all(isinstance(v, int) for v in values) and len(set(values)) == 1:
        return values[0]
    return float(np.median(values))


def bench_torch(backbone: Path, prompt: list[int], new: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(backbone), dtype=torch.float32).eval()
    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    ids = torch.tensor([prompt])
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        stamps.clear()
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, logits_processor=LogitsProcessorList([Stamp()]))
    return {**_rates(stamps, start), "tokens": out[0, len(prompt):].tolist()}


def runtime_runner(export_dir: Path, prompt: list[int], new: int, threads: int, spin: bool | None = None,
                   sampling: bool = False) -> Callable[[], dict]:
    """Loads the engine once and warms it up; each call decodes ``new`` tokens through
    ``persona_sdk.runtime.Engine.generate_ids`` as shipped (greedy; ``sampling``: the chat's default
    settings, seeded). ``spin``: ORT intra-op spinning (None: the chat default, ``RuntimeConfig.spin``)."""
    from persona_sdk.config import GenerationConfig, RuntimeConfig
    from persona_sdk.runtime import Engine

    config = RuntimeConfig(device="cpu", variant=_variant(export_dir), threads=threads)
    engine = Engine(export_dir, config if spin is None else replace(config, spin=spin))
    engine.stop_ids = set()  # exactly `new` tokens
    gen = (GenerationConfig(seed=0, max_new_tokens=new) if sampling
           else GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=new))

    def run(n: int = new) -> dict:
        tokens, stamps = [], []
        start = time.perf_counter()
        for token in engine.generate_ids(prompt, None, gen.replace(max_new_tokens=n)):
            stamps.append(time.perf_counter())
            tokens.append(token)
        return {**_rates(stamps, start), "tokens": tokens}

    run(4)  # warm-up
    return run


def bench_runtime(export_dir: Path, prompt: list[int], new: int, threads: int, spin: bool | None = None,
                  sampling: bool = False) -> dict:
    """One run of :func:`runtime_runner`."""
    return runtime_runner(export_dir, prompt, new, threads, spin, sampling)()


def interleaved(runners: dict[str, Callable[[], dict]], rounds: int, reference: str | None = None) -> dict:
    """Each runner once per round, the order rotated every round (so a drifting machine speed hits
    every runner alike); per runner the median of every figure over the rounds, and against
    ``reference`` the median of the per-round decode tok/s ratios with their range."""
    names = list(runners)
    per: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            per[name].append(runners[name]())
    out: dict = {"rounds": rounds, "engines": {}}
    for name, runs in per.items():
        row = {k: float(np.median([x[k] for x in runs])) for k in ("ttft_s", "decode_tok_s", "median_ms_per_token")}
        row["decode_tok_s_rounds"] = [x["decode_tok_s"] for x in runs]
        row["new_tokens"] = runs[0]["new_tokens"]
        row["tokens"] = runs[0]["tokens"]
        if reference is not None and name != reference:
            ratios = [x["decode_tok_s"] / y["decode_tok_s"] for x, y in zip(runs, per[reference])]
            row["vs_reference_median"] = float(np.median(ratios))
            row["vs_reference_range"] = [float(min(ratios)), float(max(ratios))]
        out["engines"][name] = row
    out["reference"] = reference
    return out


def _random_persona(engine, length: int, seed: int):
    from persona_sdk.prefix import Prefix

    rng = np.random.default_rng(seed)
    kv = rng.normal(0, 0.5, (engine.layers, 2, engine.kv_heads, length, engine.head_dim)).astype(engine.kv_dtype)
    return Prefix(kv, engine.fingerprint, method="bench")


def bench_batched(export_dir: Path, prompt: list[int], new: int, threads: int, rows: list[int],
                  persona_len: int = 16, rounds: int = 1) -> dict:
    """N concurrent replies, N different personas, one Batcher; vs the same N replies one at a time
    (``rounds`` pairs, alternating which goes first; medians, and the median of the per-pair speed-ups)."""
    from persona_sdk.batching import Batcher
    from persona_sdk.config import GenerationConfig, RuntimeConfig
    from persona_sdk.runtime import Engine

    engine = Engine(export_dir, RuntimeConfig(device="cpu", variant=_variant(export_dir), threads=threads))
    engine.stop_ids = set()
    gen = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=new)

    def run(n: int, max_rows: int) -> dict:
        personas = [_random_persona(engine, persona_len + (i % 4), seed=i) for i in range(n)]
        prompts = [prompt[i % 7:] for i in range(n)]  # different lengths too
        with Batcher(engine, max_rows=max_rows, capacity=len(prompt) + new + persona_len + 8) as batcher:
            start = time.perf_counter()
            replies = [batcher.submit(p, persona, gen) for p, persona in zip(prompts, personas)]
            tokens = sum(len(list(r)) for r in replies)
            wall = time.perf_counter() - start
            mean_rows = batcher.stats.mean_rows
        latency = np.array([r.times.latency for r in replies])
        ttft = np.array([r.times.ttft for r in replies])
        return {"replies": n, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
                "latency_p50_s": float(np.percentile(latency, 50)), "latency_p95_s": float(np.percentile(latency, 95)),
                "ttft_p50_s": float(np.percentile(ttft, 50)), "mean_rows_per_step": mean_rows}

    run(2, 2)  # warm-up
    out = {}
    for n in rows:
        pairs = []
        for r in range(rounds):  # batched and one-at-a-time alternate, first one then the other
            if r % 2 == 0:
                a = run(n, n)
                b = run(n, 1)
            else:
                b = run(n, 1)
                a = run(n, n)
            pairs.append((a, b))
        batched = {k: _median([a[k] for a, _ in pairs]) for k in pairs[0][0]}
        sequential = {k: _median([b[k] for _, b in pairs]) for k in pairs[0][1]}
        ratios = [a["tok_s"] / b["tok_s"] for a, b in pairs]
        out[str(n)] = {"batched": batched, "sequential": sequential, "speedup": float(np.median(ratios)),
                       "speedup_rounds": ratios, "rounds": rounds}
    return out


def bench_ttft(export_dir: Path, prompt: list[int], threads: int, persona_len: int = 16) -> dict:
    """TTFT with a persona: a fresh prompt, and a chat's second turn with and without KV reuse."""
    from persona_sdk.config import GenerationConfig, RuntimeConfig
    from persona_sdk.conversation import ASSISTANT, USER, Turn
    from persona_sdk.runtime import Engine

    engine = Engine(export_dir, RuntimeConfig(device="cpu", variant=_variant(export_dir), threads=threads))
    persona = _random_persona(engine, persona_len, seed=0)
    gen = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=1)

    def first_token(ids, state=None) -> float:
        start = time.perf_counter()
        next(iter(engine.generate_ids(ids, persona, gen, state=state)))
        return time.perf_counter() - start

    first_token(prompt)  # warm-up
    fresh = [first_token(prompt) for _ in range(3)]
    text = engine.format.decode(prompt)
    turn1 = [Turn(USER, text)]
    reply = "that sounds like a lovely weekend, i would love to join you next time."
    turn2 = turn1 + [Turn(ASSISTANT, reply), Turn(USER, "what else do you do when it rains?")]
    ids1 = engine.prompt_ids(turn1, persona, gen.replace(max_new_tokens=64))
    ids2 = engine.prompt_ids(turn2, persona, gen.replace(max_new_tokens=64))
    reused, refed = [], []
    for _ in range(3):
        state = engine.new_state(persona, capacity=len(ids2) + 64)
        list(engine.generate_ids(ids1 + engine.format.encode(reply), persona, gen, state=state))  # turn one
        reused.append(first_token(ids2, state))
        refed.append(first_token(ids2))
    return {"prompt_tokens": len(prompt), "persona_len": persona_len, "fresh_ttft_s": float(np.median(fresh)),
            "second_turn_tokens": len(ids2), "second_turn_new_tokens": len(ids2) - state.reused,
            "second_turn_ttft_reuse_s": float(np.median(reused)),
            "second_turn_ttft_refeed_s": float(np.median(refed))}


def optimum_export(model_dir: Path, variant: str, say) -> Path:
    """``variant`` built from the optimum graph (validated, cached under cache/bench-optimum)."""
    import shutil

    from persona_sdk import paths
    from persona_sdk.backbone import fingerprint
    from persona_sdk.errors import ModelFileError
    from persona_sdk.exporters import export, read_manifest, validate, write_manifest

    root = paths.cache_dir() / "bench-optimum" / fingerprint(model_dir)[:16]
    target = root / variant
    try:
        if read_manifest(target)["validation"].get("passed"):
            return target
    except ModelFileError:
        pass
    fp32 = optimum_export(model_dir, "fp32", say) if variant != "fp32" else None
    shutil.rmtree(target, ignore_errors=True)
    say(f"building the optimum-graph {variant} export for comparison ...")
    export(model_dir, target, variant, fp32_dir=fp32, graph="optimum", progress=say)
    manifest = read_manifest(target)
    manifest["validation"] = validate(target, model_dir)
    write_manifest(target, manifest)
    return target


def bench_numpy_loop(export_dir: Path, prompt: list[int], new: int, threads: int) -> dict:
    from persona_sdk.exporters.validation import OrtDecoder

    dec = OrtDecoder(export_dir, threads=threads)
    dec.greedy(None, prompt[:8], 4)  # warm-up
    start = time.perf_counter()
    logits, past = dec.step(prompt, dec.empty_past())
    tokens, stamps = [], []
    for _ in range(new):
        tokens.append(int(logits[-1].argmax()))
        stamps.append(time.perf_counter())
        logits, past = dec.step([tokens[-1]], past)
    return {**_rates(stamps, start), "tokens": tokens}


def llama_runner(gguf: Path, prompt: list[int], new: int, threads: int) -> Callable[[], dict]:
    """Loads the GGUF once with llama-cpp-python; each call prefills ``prompt`` afresh and decodes ``new``
    greedy tokens (argmax over the logits in Python, as our runtime's greedy path does)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
    llm.eval(prompt[:8])  # warm-up

    def run() -> dict:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        tokens, stamps = [], []
        for _ in range(new):
            tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            stamps.append(time.perf_counter())
            llm.eval([tokens[-1]])
        return {**_rates(stamps, start), "tokens": tokens}

    return run


def bench_llama_cpp(gguf: Path, prompt: list[int], new: int, threads: int) -> dict:
    """One run of :func:`llama_runner`."""
    return llama_runner(gguf, prompt, new, threads)()


def perplexity(export_dir: Path, ids: list[int], threads: int) -> float:
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.runtime import Engine

    engine = Engine(export_dir, RuntimeConfig(device="cpu", variant=_variant(export_dir), threads=threads))
    losses = engine.token_losses(ids[: engine.max_positions], 1)  # the sample, cut to the context window
    return float(np.exp(losses.mean()))


def chat_peak_rss(home: str | None, variant: str) -> dict:
    exe = Path(sys.executable).with_name("persona")
    env = dict(os.environ)
    if home:
        env["PERSONA_HOME"] = home
    cmd = ["/usr/bin/time", "-v", str(exe), "chat", "--message", "hi, what do you do on weekends?",
           "--variant", variant, "--seed", "0", "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"variant": variant, "exit_code": proc.returncode, "wall_s": wall,
            "peak_rss_mb": int(m.group(1)) / 1024 if m else None, "reply_chars": len(proc.stdout.strip())}


_RSS_SNIPPET = r"""
import json, re, sys
sys.path.insert(0, {here!r})
import decode_speed as d
from pathlib import Path
kind, arg, prompt, threads = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
if kind == "torch":
    d.bench_torch(Path(arg), prompt, 16, threads)
elif kind == "ort":
    d.bench_runtime(Path(arg), prompt, 16, threads)
else:
    d.bench_llama_cpp(Path(arg), prompt, 16, threads)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec
print(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))
"""


def engine_peak_rss(kind: str, arg: Path, prompt: list[int], threads: int) -> float | None:
    """Peak RSS (MB) of a fresh process that loads one engine and decodes 16 tokens after ``prompt``."""
    code = _RSS_SNIPPET.format(here=str(HERE))
    proc = subprocess.run([sys.executable, "-c", code, kind, str(arg), json.dumps(prompt), str(threads)],
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    return int(lines[-1]) / 1024 if proc.returncode == 0 and lines and lines[-1].isdigit() else None


def _variant(export_dir: Path) -> str:
    return json.loads((Path(export_dir) / "manifest.json").read_text())["variant"]


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import onnxruntime

    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "load_avg_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", type=Path, default=None, help="HF causal-LM dir (default: the embedded SmolLM2)")
    ap.add_argument("--variants", nargs="+", default=["fp32", "int8", "int4"], help="ORT variants to run")
    ap.add_argument("--optimum-variants", nargs="*", default=["fp32", "int8"],
                    help="variants also run from the optimum graph (the pre-fused export), for comparison")
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--skip-numpy-loop", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-only", action="store_true",
                    help="only the peak RSS per engine (memory is not timing: fine on a busy machine)")
    ap.add_argument("--skip-spin", action="store_true", help="skip the rows with ORT thread spinning off")
    ap.add_argument("--skip-batch", action="store_true", help="skip the batched rows")
    ap.add_argument("--skip-ttft", action="store_true", help="skip the TTFT / history-reuse rows")
    ap.add_argument("--only-batch", action="store_true", help="only the batched rows (and TTFT)")
    ap.add_argument("--batch-rows", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--batch-variant", default="int8", help="the variant the batched / TTFT rows run on")
    ap.add_argument("--batch-prompt-tokens", type=int, default=32, help="a short chat message")
    ap.add_argument("--batch-new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5,
                    help="head to head: interleaved rounds of the chat default (ORT --batch-variant) and llama.cpp "
                         "(else ORT fp32), medians and the median per-round ratio; also the batched rows' pairs; "
                         "0 skips the head to head")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    from tokenizers import Tokenizer

    from persona_sdk import backbone as bb
    from persona_sdk.exporters import ensure_exported

    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    model_dir = bb.resolve(args.backbone, say)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text_ids = tok.encode(SAMPLE.read_text(encoding="utf-8"), add_special_tokens=False).ids
    reps = -(-args.prompt_tokens // len(text_ids))
    prompt = (text_ids * reps)[: args.prompt_tokens]
    exports = {v: ensure_exported(model_dir, v, progress=say) for v in args.variants}
    results: dict = {"machine": machine(), "backbone": str(model_dir), "prompt_tokens": len(prompt),
                     "new_tokens": args.new_tokens, "threads": args.threads, "engines": {}, "perplexity": {}}
    engines = results["engines"]
    timing = not (args.rss_only or args.only_batch)
    if not args.skip_torch and timing:
        say("torch eager ...")
        engines["torch eager (generate)"] = bench_torch(model_dir, prompt, args.new_tokens, args.threads)
    for v, d in (exports if timing else {}).items():
        say(f"ORT {v} ...")
        engines[f"ORT {v} (runtime)"] = bench_runtime(d, prompt, args.new_tokens, args.threads)
        if not args.skip_spin:
            engines[f"ORT {v} (runtime, spinning off)"] = bench_runtime(d, prompt, args.new_tokens, args.threads,
                                                                        spin=False)
        if v == args.batch_variant:
            engines[f"ORT {v} (runtime, chat sampling)"] = bench_runtime(d, prompt, args.new_tokens, args.threads,
                                                                         sampling=True)
    for v in (args.optimum_variants if timing else []):
        say(f"ORT {v}, optimum graph ...")
        engines[f"ORT {v}, optimum graph (runtime)"] = bench_runtime(optimum_export(model_dir, v, say), prompt,
                                                                   args.new_tokens, args.threads)
    if not args.skip_numpy_loop and "fp32" in exports and timing:
        engines["ORT fp32 (numpy loop)"] = bench_numpy_loop(exports["fp32"], prompt, args.new_tokens, args.threads)
    if not args.skip_llama and args.backbone is None and timing:
        try:
            say("llama.cpp ...")
            engines["llama.cpp Q4_1 (llama-cpp-python)"] = bench_llama_cpp(bb._default_gguf(), prompt,
                                                                          args.new_tokens, args.threads)
        except ImportError:
            say("llama-cpp-python is not installed: skipping llama.cpp")
    if args.rounds > 0 and timing:
        results["head_to_head"] = head_to_head(args, model_dir, exports, prompt, say)
    ref = engines.get("ORT fp32 (runtime)", {}).get("tokens")
    for row in engines.values():
        toks = row.pop("tokens")
        if ref is not None:
            row["same_greedy_tokens_as_ort_fp32"] = int(np.sum(np.cumprod(np.asarray(toks[: len(ref)]) == ref[: len(toks)])))
    batch_dir = exports.get(args.batch_variant) or next(iter(exports.values()))
    if not args.rss_only and not args.skip_batch:
        say(f"batched rows on {_variant(batch_dir)} ...")
        results["batched"] = {"variant": _variant(batch_dir), "prompt_tokens": args.batch_prompt_tokens,
                              "new_tokens": args.batch_new_tokens,
                              "rows": bench_batched(batch_dir, prompt[: args.batch_prompt_tokens], args.batch_new_tokens,
                                                    args.threads, args.batch_rows,
                                                    rounds=max(args.rounds, 1))}
    if not args.rss_only and not args.skip_ttft:
        say(f"TTFT with a persona on {_variant(batch_dir)} ...")
        results["ttft"] = {"variant": _variant(batch_dir), **bench_ttft(batch_dir, prompt, args.threads)}
    for v, d in (exports if timing else {}).items():
        results["perplexity"][v] = perplexity(d, text_ids, args.threads)
    if "fp32" in results["perplexity"]:
        base = results["perplexity"]["fp32"]
        results["perplexity_delta_pct"] = {v: 100 * (p / base - 1) for v, p in results["perplexity"].items()}
    if not args.skip_rss and args.backbone is None and timing:
        results["chat_rss"] = [chat_peak_rss(os.environ.get("PERSONA_HOME"), v) for v in args.variants]
    if not args.skip_rss and not args.only_batch:
        say("peak RSS per engine ...")
        rss = results["engine_rss_mb"] = {}
        if not args.skip_torch:
            rss["torch eager (generate)"] = engine_peak_rss("torch", model_dir, prompt, args.threads)
        for v, d in exports.items():
            rss[f"ORT {v} (runtime)"] = engine_peak_rss("ort", d, prompt, args.threads)
        if not args.skip_llama and args.backbone is None and importlib.util.find_spec("llama_cpp"):
            rss["llama.cpp Q4_1 (llama-cpp-python)"] = engine_peak_rss("llama", bb._default_gguf(), prompt,
                                                                       args.threads)
    report(results)
    if args.json:
        atomic_write(args.json, json.dumps(results, indent=2).encode("utf-8"), private=False)
    return results


def head_to_head(args, model_dir: Path, exports: dict, prompt: list[int], say) -> dict:
    """The chat default (ORT ``--batch-variant``, RuntimeConfig's defaults) against llama.cpp (else ORT fp32),
    ``--rounds`` interleaved rounds on engines loaded once."""
    default = args.batch_variant if args.batch_variant in exports else next(iter(exports))
    ours = f"ORT {default} (chat default)"
    runners = {ours: runtime_runner(exports[default], prompt, args.new_tokens, args.threads)}
    reference = None
    if not args.skip_llama and args.backbone is None and importlib.util.find_spec("llama_cpp"):
        reference = "llama.cpp Q4_1 (llama-cpp-python)"
        runners[reference] = llama_runner(bb_default_gguf(), prompt, args.new_tokens, args.threads)
    elif "fp32" in exports and default != "fp32":
        reference = "ORT fp32 (runtime)"
        runners[reference] = runtime_runner(exports["fp32"], prompt, args.new_tokens, args.threads)
    say(f"head to head, {args.rounds} interleaved rounds: {', '.join(runners)} ...")
    out = interleaved(runners, args.rounds, reference)
    for row in out["engines"].values():
        row.pop("tokens")
    return out


def bb_default_gguf() -> Path:
    from persona_sdk import backbone as bb

    return bb._default_gguf()


def report(results: dict) -> None:
    engines = results["engines"]
    torch_rate = engines.get("torch eager (generate)", {}).get("decode_tok_s")
    llama_rate = engines.get("llama.cpp Q4_1 (llama-cpp-python)", {}).get("decode_tok_s")
    print("| engine | TTFT (s) | decode tok/s | median ms/token | vs torch | vs llama.cpp | same greedy tokens as ORT fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name, row in engines.items():
        vs_t = f"{row['decode_tok_s'] / torch_rate:.2f}x" if torch_rate else "-"
        vs_l = f"{row['decode_tok_s'] / llama_rate:.2f}" if llama_rate else "-"
        same = row.get("same_greedy_tokens_as_ort_fp32", "-")
        print(f"| {name} | {row['ttft_s']:.3f} | {row['decode_tok_s']:.1f} | {row['median_ms_per_token']:.1f} | {vs_t} | {vs_l} | {same}/{row['new_tokens']} |")
    if results.get("head_to_head"):
        h = results["head_to_head"]
        print(f"\nhead to head, {h['rounds']} interleaved rounds (medians; ratio = median of the per-round ratios "
              f"to {h['reference']}):\n\n| engine | TTFT (s) | decode tok/s | per round | ratio (range) |\n|---|---|---|---|---|")
        for name, row in h["engines"].items():
            ratio = (f"{row['vs_reference_median']:.2f} ({row['vs_reference_range'][0]:.2f}–"
                     f"{row['vs_reference_range'][1]:.2f})" if "vs_reference_median" in row else "1")
            rounds = ", ".join(f"{x:.1f}" for x in row["decode_tok_s_rounds"])
            print(f"| {name} | {row['ttft_s']:.3f} | {row['decode_tok_s']:.1f} | {rounds} | {ratio} |")
    if results.get("batched"):
        b = results["batched"]
        print(f"\n| concurrent replies ({b['variant']}, {b['prompt_tokens']}-token prompts, {b['new_tokens']} new tokens, "
              "a different persona each) | batched tok/s | one at a time tok/s | speed-up | latency p50 / p95 (s) "
              "| TTFT p50 (s) | rows per step |\n|---|---|---|---|---|---|---|")
        for n, row in b["rows"].items():
            bt, sq = row["batched"], row["sequential"]
            print(f"| {n} | {bt['tok_s']:.1f} | {sq['tok_s']:.1f} | {row['speedup']:.2f}x | "
                  f"{bt['latency_p50_s']:.2f} / {bt['latency_p95_s']:.2f} | {bt['ttft_p50_s']:.3f} | "
                  f"{bt['mean_rows_per_step']:.1f} |")
    if results.get("ttft"):
        t = results["ttft"]
        print(f"\nTTFT with a {t['persona_len']}-position persona ({t['variant']}): fresh {t['prompt_tokens']}-token "
              f"prompt {t['fresh_ttft_s']:.3f} s; second turn ({t['second_turn_tokens']} tokens, "
              f"{t['second_turn_new_tokens']} new) {t['second_turn_ttft_reuse_s']:.3f} s reusing the first turn's KV, "
              f"{t['second_turn_ttft_refeed_s']:.3f} s re-fed whole")
    if results.get("perplexity"):
        print("\n| variant | held-out perplexity | delta vs fp32 |\n|---|---|---|")
        for v, p in results["perplexity"].items():
            print(f"| {v} | {p:.3f} | {results.get('perplexity_delta_pct', {}).get(v, 0):+.2f}% |")
    if results.get("engine_rss_mb"):
        print("\n| engine (fresh process: load, 200-token prompt, 16 tokens) | peak RSS (MB) |\n|---|---|")
        for name, mb in results["engine_rss_mb"].items():
            print(f"| {name} | {mb:.0f} |" if mb else f"| {name} | failed |")
    for row in results.get("chat_rss", []):
        print(f"\npersona chat --message --variant {row['variant']}: exit {row['exit_code']}, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB, wall {row['wall_s']:.1f} s" if row["peak_rss_mb"] else
              f"\npersona chat --variant {row['variant']}: exit {row['exit_code']} (no RSS reading)")


if __name__ == "__main__":
    main()
