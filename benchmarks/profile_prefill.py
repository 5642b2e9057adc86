"""Time to first token with and without a persona block, and where a 200-token prefill spends its time.

    python benchmarks/profile_prefill.py int8      # or fp32 / int4

Prints the median TTFT (5 runs after 2 warm-ups each) of a random 200-token prompt with no
persona and with a random 16-position persona (the runtime's ``generate_ids``, one new token),
then, per profiled run (3 without, then 3 with the persona), onnxruntime's profiler: the run's
time and the kernel time per op type (top 6). Needs a quiet machine for the TTFT figures.
"""
import collections
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import persona_sdk  # noqa: F401  (before onnxruntime: turns its telemetry off)
from persona_sdk.config import RuntimeConfig, GenerationConfig
from persona_sdk.engines import open_engine
from persona_sdk.prefix import Prefix
import onnxruntime as ort

variant = sys.argv[1] if len(sys.argv) > 1 else "int8"
engine = open_engine(None, RuntimeConfig(device="cpu", variant=variant, threads=2))
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.intra_op_num_threads = 2
opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
opts.add_session_config_entry("session.force_spinning_stop", "1")
opts.log_severity_level = 3
rng = np.random.default_rng(0)
prompt = [int(x) for x in rng.integers(100, 20000, 200)]
kv = rng.normal(0, 0.5, (engine.layers, 2, engine.kv_heads, 16, engine.head_dim)).astype(engine.kv_dtype)
persona = Prefix(kv, engine.fingerprint, method="bench")
gen = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=1)

def ttft(p):
    t = time.perf_counter(); next(iter(engine.generate_ids(prompt, p, gen))); return time.perf_counter() - t

for _ in range(2): ttft(None); ttft(persona)
a = [ttft(None) for _ in range(5)]; b = [ttft(persona) for _ in range(5)]
print(variant, "ttft no persona %.3f  persona %.3f" % (np.median(a), np.median(b)))
opts.enable_profiling = True
opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="persona-prefill-profile-")) / variant)
engine.session = ort.InferenceSession(str(engine.export_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
for p, label in ((None, "none"), (persona, "persona")):
    for _ in range(3): ttft(p)
path = engine.session.end_profiling()
events = json.loads(Path(path).read_text())
shutil.rmtree(Path(path).parent, ignore_errors=True)  # op timings only, but leave nothing behind
# runs in order: 3 no-persona then 3 persona; split node events by model_run events
runs = [e for e in events if e.get("name") == "model_run"]
nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
def tally(r):
    t = collections.Counter()
    for n in nodes:
        if r["ts"] <= n["ts"] <= r["ts"] + r["dur"]:
            t[n["args"]["op_name"]] += n["dur"]
    return t
for i, r in enumerate(runs):
    t = tally(r)
    tot = sum(t.values())
    print(i, "run %.1f ms, kernels %.1f ms:" % (r["dur"]/1e3, tot/1e3), ", ".join("%s %.1f" % (k, v/1e3) for k, v in t.most_common(6)))
