"""Load on `persona serve`: concurrent streaming clients on loopback for a bounded time.

A server process (the same app `persona serve` runs: the batcher behind the
OpenAI-compatible API) serves the bare backbone plus ``--personas`` random
persona blocks; ``--clients`` client threads each send streaming chat
requests back to back, round-robin over the models, until ``--duration``
seconds have passed. Reported: requests/s, generated tokens/s, per-request
latency and time to first token (p50/p95), errors (0 expected) and the
server's peak RSS (VmHWM).

    python benchmarks/serve_load.py --clients 8 --duration 60 --json benchmarks/serve_load.json
    python benchmarks/serve_load.py --backbone PATH --clients 2 --duration 5      # any backbone or export folder
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

TOKEN = "serve-load-" + "x" * 24
QUESTIONS = ["hi, what do you do on weekends?", "did you watch the game last night?", "how was the trip?",
             "what are you cooking tonight?", "any plans for the holidays?", "how is work going?"]


def child(args: argparse.Namespace) -> None:
    """The server process: engine, random personas, batcher, app, uvicorn on a free loopback port."""
    import uvicorn

    from persona_sdk.batching import Batcher
    from persona_sdk.config import RuntimeConfig
    from persona_sdk.engines import open_engine
    from persona_sdk.prefix import Prefix
    from persona_sdk.server import ServeLimits, create_app

    engine = open_engine(args.backbone, RuntimeConfig(device="cpu", threads=args.threads, variant=args.variant),
                         build=True)
    rng = np.random.default_rng(0)
    personas = {}
    for i in range(args.personas):
        kv = rng.normal(0, 0.5, (engine.layers, 2, engine.kv_heads, 16 + i % 4, engine.head_dim))
        personas[f"p{i}"] = Prefix(kv.astype(engine.kv_dtype), engine.fingerprint, method="bench")
    batcher = Batcher(engine, max_rows=args.rows)
    limits = ServeLimits(max_tokens=args.max_tokens, default_max_tokens=args.max_tokens)
    app = create_app(batcher, personas, TOKEN, limits)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    print(f"PORT {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        server.should_exit = True
        thread.join(10)
        batcher.close()


def _stream(port: int, model: str, question: str, max_tokens: int) -> tuple[float, float | None, int]:
    """One streaming request: (latency s, TTFT s, content chunks)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "stream": True,
                       "max_tokens": max_tokens, "temperature": 0.7, "seed": 1})
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        ttft, chunks, done = None, 0, False
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"]["code"])
            if event["choices"][0]["delta"].get("content"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
        if not done:
            raise RuntimeError("stream ended without [DONE]")
        return time.perf_counter() - start, ttft, chunks
    finally:
        conn.close()


def _rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else None


def run(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--personas", str(args.personas),
           "--rows", str(args.rows), "--max-tokens", str(args.max_tokens)]
    if args.backbone:
        cmd += ["--backbone", str(args.backbone)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.variant:
        cmd += ["--variant", args.variant]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"the server did not start (exit {proc.poll()})")
        port = int(line.split()[1])
        models = ["backbone"] + [f"persona/p{i}" for i in range(args.personas)]
        _stream(port, models[0], QUESTIONS[0], 4)  # warm-up
        results: list[tuple[float, float | None, int]] = []
        errors: list[str] = []
        lock = threading.Lock()
        deadline = time.perf_counter() + args.duration

        def client(i: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                model = models[(i + n) % len(models)]
                question = QUESTIONS[(i * 7 + n) % len(QUESTIONS)]
                n += 1
                try:
                    out = _stream(port, model, question, args.max_tokens)
                    with lock:
                        results.append(out)
                except Exception as exc:  # counted, reported
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        rss = _rss_mb(proc.pid)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    latency = np.array([r[0] for r in results]) if results else np.array([np.nan])
    ttft = np.array([r[1] for r in results if r[1] is not None]) if results else np.array([np.nan])
    chunks = sum(r[2] for r in results)
    return {"clients": args.clients, "duration_s": args.duration, "wall_s": wall, "models": 1 + args.personas,
            "rows": args.rows, "max_tokens": args.max_tokens, "requests": len(results),
            "requests_per_s": len(results) / wall, "content_chunks_per_s": chunks / wall,
            "latency_p50_s": float(np.percentile(latency, 50)), "latency_p95_s": float(np.percentile(latency, 95)),
            "ttft_p50_s": float(np.percentile(ttft, 50)) if ttft.size else None,
            "ttft_p95_s": float(np.percentile(ttft, 95)) if ttft.size else None,
            "errors": len(errors), "error_kinds": sorted(set(errors))[:5], "server_peak_rss_mb": rss,
            "load_avg_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", type=Path, default=None, help="backbone or export folder (default: the embedded one)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent streaming clients")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    ap.add_argument("--personas", type=int, default=8, help="random personas served beside the bare backbone")
    ap.add_argument("--rows", type=int, default=8, help="the server's batch rows")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens asked per request")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return None
    results = run(args)
    print(f"| clients | models | rows | requests/s | content chunks/s | latency p50 / p95 (s) | TTFT p50 / p95 (s) "
          f"| errors | server peak RSS (MB) |\n|---|---|---|---|---|---|---|---|---|\n"
          f"| {results['clients']} | {results['models']} | {results['rows']} | {results['requests_per_s']:.2f} | "
          f"{results['content_chunks_per_s']:.1f} | {results['latency_p50_s']:.2f} / {results['latency_p95_s']:.2f} | "
          f"{results['ttft_p50_s'] or float('nan'):.3f} / {results['ttft_p95_s'] or float('nan'):.3f} | "
          f"{results['errors']} | {results['server_peak_rss_mb'] or float('nan'):.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
