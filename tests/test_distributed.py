"""Source training on several processes (persona_sdk.training.distributed): DDP equivalence, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from persona_sdk import source as src  # noqa: E402
from persona_sdk.errors import ConfigError, EnrollmentCancelled, TrainingError  # noqa: E402
from persona_sdk.fileio import TMP_MARK  # noqa: E402
from persona_sdk.prefix import Prefix  # noqa: E402
from persona_sdk.training import distributed as dd  # noqa: E402

from enroll_helpers import quirky_speaker  # noqa: E402

SMALL = dict(method="plain", prefix_len=4, batch_size=8, context_budget=48, reply_budget=16, lr=0.05, eval_every=1)


def speakers(n: int = 6):
    return [src.Speaker(f"s{i}", quirky_speaker(10 + 3 * i, seed=i, quirk=["lol", "haha", "omg"][i % 3]))
            for i in range(n)]


def test_shards_are_balanced_and_deterministic():
    sizes = [50, 10, 10, 30, 20, 20]
    shards = dd.shard_speakers(sizes, 2)
    assert shards == dd.shard_speakers(sizes, 2)
    assert sorted(i for s in shards for i in s) == list(range(6))  # every speaker once
    loads = [sum(sizes[i] for i in s) for s in shards]
    assert max(loads) - min(loads) <= 10
    with pytest.raises(ConfigError, match="cannot fill"):
        dd.shard_speakers([5], 2)


def test_one_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = dd.context()
    assert not ctx.distributed and ctx.main and ctx.world == 1
    assert dd.all_sum(ctx, [1.5, 2]) == [1.5, 2]


def test_sharding_rules(tiny_backbone):
    sp, val = speakers(), quirky_speaker(6, seed=9)
    with pytest.raises(ConfigError, match="multiple of shards"):
        src.train_source(sp, val, backbone=tiny_backbone, config=src.SourceConfig(**{**SMALL, "batch_size": 6,
                                                                                   "shards": 4, "steps": 1}))
    with pytest.raises(TrainingError, match="one process"):
        src.train_source(sp, val, backbone=tiny_backbone,
                         config=src.SourceConfig(**{**SMALL, "method": "ppreptile", "shards": 2, "steps": 1}))


def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path, tiny_backbone):
    from persona_sdk.trainer import load_backbone

    bb = load_backbone(tiny_backbone)
    sp, val = speakers(), quirky_speaker(6, seed=9)
    meta = {**SMALL, "method": "ppreptile", "inner_steps": 1, "outer_batch": 1, "batch_size": 4}
    for name, cfg in (("plain", src.SourceConfig(**{**SMALL, "steps": 6, "shards": 1})),
                      ("plain-2-shards", src.SourceConfig(**{**SMALL, "steps": 6, "shards": 2})),
                      ("ppreptile", src.SourceConfig(**{**meta, "steps": 6}))):  # its data position is its rng
        whole, s_whole = src.train_source(sp, val, backbone=bb, config=cfg)
        ckpt = tmp_path / f"ckpt-{name}.pt"
        calls = [0]

        def stop_after_three():
            calls[0] += 1
            return calls[0] > 3  # asked before each step: steps 1-3 run, then "Ctrl-C"

        with pytest.raises(EnrollmentCancelled):
            src.train_source(sp, val, backbone=bb, config=cfg, checkpoint=ckpt, checkpoint_every=2,
                             should_stop=stop_after_three)
        assert ckpt.is_file()  # step 2's, written atomically: no temp file is left beside it
        assert [p.name for p in tmp_path.iterdir() if TMP_MARK in p.name] == []
        resumed, s_resumed = src.train_source(sp, val, backbone=bb, config=cfg, checkpoint=ckpt, checkpoint_every=2,
                                              resume=True)
        np.testing.assert_allclose(resumed.kv, whole.kv, rtol=0, atol=1e-6)
        assert s_resumed.best_step == s_whole.best_step and s_resumed.steps == 6
        np.testing.assert_allclose([v for _, v in s_resumed.curve], [v for _, v in s_whole.curve], rtol=1e-6)
        np.testing.assert_allclose([v for _, v in s_resumed.train_curve], [v for _, v in s_whole.train_curve],
                                   rtol=1e-6)
    other = src.SourceConfig(**{**SMALL, "steps": 6, "shards": 2, "lr": 0.01})
    with pytest.raises(TrainingError, match="other settings"):
        src.train_source(sp, val, backbone=bb, config=other, checkpoint=ckpt, resume=True)


@pytest.mark.slow
def test_two_ranks_of_batch_4_equal_one_rank_of_batch_8(tmp_path, tiny_backbone, persona_home):
    """`torchrun --nproc-per-node 2 -m persona_sdk.cli source train` (gloo) gives the loss curve and the
    prefix of one process with the same seed and data order (--shards 2: 4 + 4 replies per step)."""
    args = ["--backbone", str(tiny_backbone), "--method", "plain", "--steps", "4", "--batch-size", "8",
            "--context-budget", "48", "--max-speakers", "8", "--max-per-speaker", "12", "--max-val", "8",
            "--eval-every", "1", "--prefix-len", "4", "--lr", "0.05", "--seed", "3"]
    env = {**os.environ, "PERSONA_HOME": str(persona_home), "OMP_NUM_THREADS": "1"}
    # torch.distributed.run is what the `torchrun` script runs
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "persona_sdk.cli", "source", "train", "--out", str(tmp_path / "two"), *args],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stderr.count("speakers,") == 1 and "rank 0 of 2 (gloo)" in two.stderr  # rank 0 alone logs
    one = subprocess.run([sys.executable, "-m", "persona_sdk.cli", "source", "train", "--out", str(tmp_path / "one"),
                          "--shards", "2", *args], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    a = json.loads((tmp_path / "two" / src.SHIPPED_INFO).read_text())
    b = json.loads((tmp_path / "one" / src.SHIPPED_INFO).read_text())
    assert (a["summary"]["world"], b["summary"]["world"]) == (2, 1) and a["world_size"] == 2
    assert len(a["summary"]["train_curve"]) == 4  # one running train loss per step
    for curve in ("train_curve", "curve"):
        np.testing.assert_allclose(np.array(a["summary"][curve]), np.array(b["summary"][curve]), rtol=1e-5)
    pa = Prefix.from_bytes((tmp_path / "two" / src.SHIPPED_FILE).read_bytes())
    pb = Prefix.from_bytes((tmp_path / "one" / src.SHIPPED_FILE).read_bytes())
    np.testing.assert_allclose(pa.kv, pb.kv, rtol=0, atol=1e-5)
    leftovers = [p.name for p in Path(tmp_path / "two").iterdir() if TMP_MARK in p.name]
    assert leftovers == []
