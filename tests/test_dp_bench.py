"""benchmarks/dp_bench.py runs end to end on the tiny backbone (smoke: quality and canary, tiny sizes)."""

from __future__ import annotations

import json
import math

import pytest

from bench_helpers import load_benchmark

pytest.importorskip("opacus", reason="the [dp] extra (opacus) is part of setup.sh's install")
pytest.importorskip("chitchat_dataset", reason="the [train] extra's corpus")


def _load():
    return load_benchmark("dp_bench")


def test_canaries_have_one_shape():
    import numpy as np

    bench = _load()
    rng = np.random.default_rng(0)
    texts = [bench.canary_text(rng) for _ in range(50)]
    assert all(t.startswith("my locker code is ") and len(t.split()) == 4 + 6 for t in texts)
    assert len(set(texts)) == 50


def test_dp_bench_smoke(tiny_backbone, tiny_exported_home, tmp_path, capsys):
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
    capsys.readouterr()
    bench.main(["--out", str(out), "--table"])  # BENCHMARKS.md's tables from the results file
    table = capsys.readouterr().out
    assert "| speaker-2 (" in table and "| eps=1 |" in table and "| k=2 eps=1 | 2 |" in table
    assert f"| {c['k=2 non-private']['rank']:g} / 20 |" in table


def test_canary_losses_from_the_shared_start_equal_whole_example_losses(tiny_backbone):
    """The canary's candidates run their shared start once; each loss must be the one example_losses gives."""
    import numpy as np
    import torch

    from persona_sdk.conversation import USER, Turn
    from persona_sdk.trainer import load_backbone
    from persona_sdk.training.data import encode, example_losses

    bench = _load()
    bb = load_backbone(tiny_backbone)
    rng = np.random.default_rng(3)
    texts = [bench.canary_text(rng) for _ in range(7)]
    ctx = (Turn(USER, bench.CANARY_PROMPT),)
    data = encode(bb.fmt, [type("Ex", (), {"context": ctx, "reply": t, "conversation": 0}) for t in texts], 48, 24)
    spec = bb.model.config
    kv_heads = spec.num_key_value_heads
    head_dim = getattr(spec, "head_dim", None) or spec.hidden_size // spec.num_attention_heads
    kv = torch.randn(spec.num_hidden_layers, 2, kv_heads, 3, head_dim, generator=torch.Generator().manual_seed(0))
    for block in (None, kv):
        with torch.no_grad():
            whole = example_losses(bb, data, kv=block).numpy()
        fast = bench.shared_start_losses(bb, data, block, batch_size=3)
        np.testing.assert_allclose(fast, whole, rtol=1e-5, atol=1e-6)
        assert len(set(np.round(whole, 6))) > 1  # the candidates do differ: the tails are scored
