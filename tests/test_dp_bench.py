"""benchmarks/dp_bench.py runs end to end on the tiny backbone (smoke: quality and canary, tiny sizes)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("opacus", reason="the [dp] extra (opacus) is part of setup.sh's install")
pytest.importorskip("chitchat_dataset", reason="the [train] extra's corpus")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "dp_bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("dp_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_canaries_have_one_shape():
    import numpy as np

    bench = _load()
    rng = np.random.default_rng(0)
    texts = [bench.canary_text(rng) for _ in range(50)]
    assert all(t.startswith("my locker code is ") and len(t.split()) == 4 + 6 for t in texts)
    assert len(set(texts)) == 50


def test_dp_bench_smoke(tiny_backbone, tiny_exported_home, tmp_path):
    bench = _load()
    out = tmp_path / "dp.json"
    results = bench.main(["--backbone", str(tiny_backbone), "--smoke", "--variant", "fp32", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))  # what it returns is what it wrote
    q = results["quality"]
    assert set(q) == {"speaker-1", "speaker-2"}
    for row in q.values():
        assert {"source", "non-private", "eps=1"} <= set(row) and "_generated" not in row
        assert all(math.isfinite(row[s]["test_ppl"]) for s in ("source", "non-private", "eps=1"))
        assert row["eps=1"]["dp_epsilon"] == 1 and 0 < row["eps=1"]["dp_epsilon_spent"] <= 1
    assert set(results["voice"]["aggregate"]["settings"]) >= {"non-private", "eps=1"}
    c = results["canary"]
    assert {"k=2 non-private", "k=2 eps=1", "backbone+source only"} <= set(c)
    for row in c.values():
        assert row["candidates"] == 20 and 1 <= row["rank"] <= 21
        assert row["exposure"] == pytest.approx(math.log2(20) - math.log2(row["rank"]), abs=1e-3)
