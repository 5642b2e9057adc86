"""The personal-prefix trainer on the tiny backbone: learning, parity with the
ONNX runtime, budgets, cancellation, reproducibility, the learning-rate policy,
bad settings."""

from __future__ import annotations

import os

import numpy as np
import pytest

from persona_sdk import trainer as tr
from persona_sdk.errors import ConfigError, EnrollmentCancelled, TooLittleDataError, SourcePrefixError
from persona_sdk.prefix import Prefix
from persona_sdk.training.data import batch_backward, micro_batches

from enroll_helpers import make_sharp, quirky_speaker


@pytest.fixture(scope="module")
def bb(tiny_backbone):
    import torch

    torch.set_num_threads(2)
    return tr.load_backbone(tiny_backbone)


@pytest.fixture(scope="module")
def sharp(tiny_backbone, tmp_path_factory):
    return tr.load_backbone(make_sharp(tiny_backbone, tmp_path_factory.mktemp("sharp") / "tiny-sharp"))


FAST = dict(batch_size=8, min_examples=8, context_budget=48, reply_budget=16)


def test_prefix_learns_quirk_and_beats_no_prefix(sharp):
    bb = sharp
    data = quirky_speaker(96)
    held_out = quirky_speaker(24, seed=1)
    cfg = tr.TrainConfig(method="rand-prefix", lr=0.2, epochs=3, patience=3, **FAST)
    reports = []
    prefix, summary = tr.train_prefix(data[:80], data[80:], backbone=bb, config=cfg, progress=reports.append)
    assert summary.best_val_loss < summary.init_val_loss - 0.5
    assert prefix.kv.shape == (bb.layers, 2, bb.kv_heads, 16, bb.head_dim)
    assert prefix.backbone == bb.fingerprint and prefix.method == "rand-prefix"
    with_prefix = tr.reply_loss(bb, held_out, prefix, 48, 16)
    without = tr.reply_loss(bb, held_out, None, 48, 16)
    assert with_prefix < without - 0.5
    # progress: load, initial eval, train steps with ETA, done
    phases = [r.phase for r in reports]
    assert phases[0] == "load" and phases[1] == "eval" and phases[-1] == "done"
    steps = [r for r in reports if r.phase == "train"]
    assert steps and steps[-1].step == summary.steps and all(r.eta is not None for r in steps)
    assert any(r.val_loss is not None for r in steps)
    # meta holds numbers only
    assert all(isinstance(v, (int, float, str, bool)) for v in prefix.meta.values())
    assert prefix.meta["best_val_loss"] == pytest.approx(summary.best_val_loss, abs=1e-4)


def test_prefix_method_starts_from_source_and_is_reproducible(bb):
    data = quirky_speaker(40)
    source = Prefix(tr.random_prefix(bb, 16, seed=7), bb.fingerprint, method="source")
    cfg = tr.TrainConfig(method="prefix", lr=0.05, max_steps=3, **FAST)
    a, sa = tr.train_prefix(data[:32], data[32:], backbone=bb, config=cfg, init=source)
    b, _ = tr.train_prefix(data[:32], data[32:], backbone=bb, config=cfg, init=source)
    np.testing.assert_array_equal(a.kv, b.kv)
    # initial validation loss is the source's own loss (the summary's "vs source alone")
    assert sa.init_val_loss == pytest.approx(tr.reply_loss(bb, data[32:], source, 48, 16), rel=1e-4)
    assert sa.steps == 3 and sa.stopped == "max-steps"
    other = tr.TrainConfig(method="prefix", lr=0.05, max_steps=3, seed=1, **FAST)
    c, _ = tr.train_prefix(data[:32], data[32:], backbone=bb, config=other, init=source)
    assert not np.array_equal(a.kv, c.kv)


def test_source_of_wrong_shape_or_backbone_is_refused(bb):
    data = quirky_speaker(40)
    cfg = tr.TrainConfig(method="prefix", max_steps=1, **FAST)
    short = Prefix(np.zeros((bb.layers, 2, bb.kv_heads, 4, bb.head_dim), np.float32), bb.fingerprint)
    with pytest.raises(SourcePrefixError, match="4 virtual tokens"):
        tr.train_prefix(data[:32], data[32:], backbone=bb, config=cfg, init=short)
    foreign = Prefix(np.zeros((bb.layers, 2, bb.kv_heads, 16, bb.head_dim), np.float32), "0" * 64)
    with pytest.raises(SourcePrefixError, match="does not fit"):
        tr.train_prefix(data[:32], data[32:], backbone=bb, config=cfg, init=foreign)


def _torch_logits(bb, ids, kv):
    import torch

    with torch.no_grad():
        h = tr.hidden(bb, torch.tensor([ids]), kv=torch.from_numpy(kv))
        return bb.model.lm_head(h)[0].numpy()  # (T, V)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_trained_block_gives_same_logits_in_torch_and_onnx_runtime(bb, tiny_onnx, method):
    """The saved KV block (prefix-tuned or compiled from a soft prompt) == what ORT computes with it."""
    from persona_sdk.runtime import Engine

    data = quirky_speaker(40)
    cfg = tr.TrainConfig(method=method, lr=0.05, max_steps=4, **FAST)
    prefix, _ = tr.train_prefix(data[:32], data[32:], backbone=bb, config=cfg)
    prefix = Prefix.from_bytes(prefix.to_bytes())  # exactly what the vault stores
    engine = Engine(tiny_onnx)
    assert engine.fingerprint == bb.fingerprint
    ids, _ = bb.fmt.example_ids(data[0].context, data[0].reply, 48, 16)
    past, plen = engine.initial_past(prefix)
    ort_logits = engine.forward(np.asarray([ids]), past, plen, all_logits=True).logits[0]
    torch_logits = _torch_logits(bb, ids, prefix.kv)
    assert plen == 16
    np.testing.assert_allclose(ort_logits, torch_logits, atol=1e-4, rtol=1e-4)


def test_prompt_tuning_compiles_to_the_same_function(bb):
    """Soft prompt in front of the input == its compiled KV block as past (positions from P)."""
    import torch

    soft = tr.text_embeddings(bb, "a persona", 6) + 0.1  # (P, hidden)
    data = tr.encode(bb.fmt, quirky_speaker(4), 48, 16)
    with torch.no_grad():
        a, n = tr.batch_loss(bb, data, soft=soft)
        b, m = tr.batch_loss(bb, data, kv=torch.from_numpy(tr.kv_of_embeddings(bb, soft)))
    assert n == m > 0
    assert float(a) == pytest.approx(float(b), rel=1e-5)


class FakeClock:
    """A clock that only moves when the test says so (no wall-clock dependence)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_max_minutes_stops_before_a_step_that_would_not_fit(bb):
    data = quirky_speaker(120)
    clock = FakeClock()

    def tick(report) -> None:  # every training step "takes" 10 s
        if report.phase == "train":
            clock.now += 10.0

    cfg = tr.TrainConfig(method="rand-prefix", lr=0.05, epochs=50, max_minutes=1.0, **FAST)
    prefix, summary = tr.train_prefix(data[:100], data[100:], backbone=bb, config=cfg, progress=tick, clock=clock)
    # a step starts only while elapsed + 1.5 mean steps (+ a validation, free here) fits in 60 s:
    # after 4 steps 40 + 15 <= 60, after 5 steps 50 + 15 > 60
    assert summary.stopped == "max-minutes" and summary.steps == 5
    assert summary.wall_seconds == 50.0
    assert summary.history[-1][0] == 5  # the last steps were validated before stopping
    assert np.isfinite(prefix.kv).all()
    assert summary.best_val_loss <= summary.init_val_loss


def test_stop_request_raises_cancelled_with_best_so_far(sharp):
    data = quirky_speaker(40)
    calls, reports = [], []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    cfg = tr.TrainConfig(method="rand-prefix", lr=0.2, epochs=20, eval_every=1, bf16="off", **FAST)
    with pytest.raises(EnrollmentCancelled) as info:
        tr.train_prefix(data[:32], data[32:], backbone=sharp, config=cfg, should_stop=stop, progress=reports.append)
    assert len(calls) == 4
    steps = [r for r in reports if r.phase == "train"]
    assert [r.step for r in steps] == [1, 2, 3] and all(r.val_loss is not None for r in steps)
    init_val = next(r.val_loss for r in reports if r.phase == "eval")
    best_val = steps[-1].best_val_loss
    assert best_val < init_val - 1e-4  # training improved on the start, so a best block was kept...
    best = info.value.best
    assert isinstance(best, Prefix) and best.method == "rand-prefix" and best.backbone == sharp.fingerprint
    # ...and the one carried is that best block, not the last one
    assert tr.reply_loss(sharp, data[32:], best, 48, 16) == pytest.approx(best_val, rel=1e-6)


def test_stop_request_before_any_improvement_carries_nothing(bb):
    data = quirky_speaker(40)
    cfg = tr.TrainConfig(method="rand-prefix", lr=0.05, epochs=2, **FAST)
    with pytest.raises(EnrollmentCancelled) as info:
        tr.train_prefix(data[:32], data[32:], backbone=bb, config=cfg, should_stop=lambda: True)
    assert info.value.best is None


def test_learning_rate_policy_depends_on_the_start(bb):
    """lr None: one rate from a source prefix, another from random / a soft prompt; an explicit lr wins."""
    assert tr.TrainConfig().learning_rate(from_source=True) == tr.LR_FROM_SOURCE
    # few training replies: the budget runs many epochs over them, so the rate from a source is gentler
    assert tr.TrainConfig().learning_rate(True, n_train=tr.FEW_REPLIES - 1) == tr.LR_FROM_SOURCE_FEW < tr.LR_FROM_SOURCE
    assert tr.TrainConfig().learning_rate(True, n_train=tr.FEW_REPLIES) == tr.LR_FROM_SOURCE
    assert tr.TrainConfig().learning_rate(False, n_train=10) == tr.LR_FROM_SCRATCH
    assert tr.TrainConfig().learning_rate(from_source=False) == tr.LR_FROM_SCRATCH != tr.LR_FROM_SOURCE
    assert tr.TrainConfig(lr=0.5).learning_rate(from_source=True) == 0.5
    data = quirky_speaker(40)
    source = Prefix(tr.random_prefix(bb, 16, seed=7), bb.fingerprint, method="source")
    used = {}
    for method, init in (("prefix", source), ("prefix", None), ("rand-prefix", source), ("prompt", None)):
        cfg = tr.TrainConfig(method=method, max_steps=1, **FAST)
        prefix, _ = tr.train_prefix(data[:32], data[32:], backbone=bb, config=cfg, init=init)
        used[(method, init is not None)] = prefix.meta["lr"]
    assert used == {("prefix", True): tr.LR_FROM_SOURCE_FEW, ("prefix", False): tr.LR_FROM_SCRATCH,  # 32 replies
                    ("rand-prefix", True): tr.LR_FROM_SCRATCH, ("prompt", False): tr.LR_FROM_SCRATCH}


def test_too_little_data_fails_before_loading_anything(tmp_path):
    with pytest.raises(TooLittleDataError, match="at least 20"):
        tr.train_prefix(quirky_speaker(10), quirky_speaker(4), backbone=tmp_path / "missing",
                        config=tr.TrainConfig())


def test_split_by_conversation_keeps_conversations_whole():
    data = quirky_speaker(80)
    train, val = tr.split_by_conversation(data, 0.1, seed=0)
    assert val and train and len(train) + len(val) == 80
    assert not {e.conversation for e in train} & {e.conversation for e in val}


def test_length_bucketed_batches_cover_everything_once():
    data = [tr.Encoded(tuple(range(n)), 1, 0) for n in np.random.default_rng(0).integers(3, 90, 100)]
    batches = tr.make_batches(data, 8, np.random.default_rng(0))
    assert sorted(id(e) for b in batches for e in b) == sorted(id(e) for e in data)
    padding = sum(max(len(e.ids) for e in b) * len(b) - sum(len(e.ids) for e in b) for b in batches)
    naive = sum(max(len(e.ids) for e in data[i:i + 8]) * len(data[i:i + 8]) - sum(len(e.ids) for e in data[i:i + 8])
                for i in range(0, 100, 8))
    assert padding < naive / 3


def test_micro_batches_bound_padded_tokens_and_keep_every_row_in_order():
    data = [tr.Encoded(tuple(range(n)), 1, 0) for n in (10, 12, 30, 31, 5, 40, 40, 3)]
    groups = micro_batches(data, 64)
    assert [e for g in groups for e in g] == data
    assert all(len(g) == 1 or max(len(e.ids) for e in g) * len(g) <= 64 for g in groups)
    assert [len(g) for g in groups] == [2, 2, 1, 1, 1, 1]  # 10,12 | 30,31 | 5 (5,40: 80) | 40 | 40 | 3
    assert micro_batches(data, 0) == [data]
    assert [len(g) for g in micro_batches(data, 1)] == [1] * 8  # a row longer than the cap still goes alone


def test_micro_batched_gradient_equals_the_one_pass_gradient(bb):
    import torch

    data = tr.encode(bb.fmt, quirky_speaker(8), 48, 16)
    kv0 = torch.from_numpy(tr.random_prefix(bb, 4, seed=0).astype(np.float32))  # (layers, 2, kv_heads, 4, head_dim)
    grads, values = [], []
    for cap in (0, 40):
        kv = kv0.clone().requires_grad_(True)
        assert (len(micro_batches(data, cap)) > 2) == bool(cap)
        values.append(batch_backward(bb, data, lambda: {"kv": kv}, max_tokens=cap))
        grads.append(kv.grad.clone())
    one = tr.batch_mean_loss(bb, data, kv=kv0)
    assert values[0] == pytest.approx(float(one), rel=1e-6) and values[1] == pytest.approx(values[0], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4) and grads[0].abs().sum() > 0


@pytest.mark.parametrize("bad, match", [
    (dict(method="lora"), "method must be one of"),
    (dict(prefix_len=0), "prefix_len"),
    (dict(lr=-1.0), "lr"),
    (dict(warmup=0.9), "warmup"),
    (dict(bf16="maybe"), "bf16 must be one of"),
    (dict(max_minutes=0), "max_minutes"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(micro_batch_tokens=-1), "micro_batch_tokens"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ConfigError, match=match):
        tr.TrainConfig(**bad)


def test_import_persona_sdk_does_not_import_torch():
    import subprocess
    import sys

    code = "import persona_sdk, persona_sdk.enrollment, persona_sdk.source, persona_sdk.trainer, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"



def test_batches_pad_to_a_coarse_grid_without_changing_the_loss(bb, monkeypatch):
    """Lengths on a grid of PAD_MULTIPLE (so kernel shapes repeat); the padded positions add no loss."""
    import torch

    from persona_sdk.training import data as D

    batch = tr.encode(bb.fmt, quirky_speaker(5), 48, 16)
    ids, sel, _ = D.collate(batch)
    assert ids.shape[1] % D.PAD_MULTIPLE == 0 and ids.shape[1] - max(len(e.ids) for e in batch) < D.PAD_MULTIPLE
    assert not sel[:, max(len(e.ids) for e in batch) - 1:].any()
    kv = torch.from_numpy(tr.random_prefix(bb, 4, seed=0).astype(np.float32))  # (layers, 2, kv_heads, 4, head_dim)
    padded, n_padded = D.batch_loss(bb, batch, kv=kv)
    monkeypatch.setattr(D, "PAD_MULTIPLE", 1)
    assert D.collate(batch)[0].shape[1] == max(len(e.ids) for e in batch)
    exact, n_exact = D.batch_loss(bb, batch, kv=kv)
    assert n_padded == n_exact and float(padded) == pytest.approx(float(exact), rel=1e-5)


def test_torch_module_caps_onednn_primitive_cache_unless_the_user_chose(monkeypatch):
    from persona_sdk.training import backbone as tb

    monkeypatch.delenv(tb.ONEDNN_CACHE_ENV, raising=False)
    tb.torch_module()
    assert os.environ[tb.ONEDNN_CACHE_ENV] == tb.ONEDNN_CACHE_CAPACITY == "16"
    monkeypatch.setenv(tb.ONEDNN_CACHE_ENV, "64")
    tb.torch_module()
    assert os.environ[tb.ONEDNN_CACHE_ENV] == "64"
