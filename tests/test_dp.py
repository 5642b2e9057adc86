"""Private training (persona_sdk.training.methods.dp): per-example gradients, DP-SGD step, plan, enrollment."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus", reason="the [dp] extra (opacus) is part of setup.sh's install")

from persona_sdk import trainer as tr  # noqa: E402
from persona_sdk.errors import ConfigError, MissingDependencyError, TrainingError  # noqa: E402
from persona_sdk.training import data as D  # noqa: E402
from persona_sdk.training.methods import dp  # noqa: E402
from persona_sdk.vault import Vault  # noqa: E402

from enroll_helpers import make_sharp, quirky_speaker, write_chats  # noqa: E402


@pytest.fixture(scope="module")
def bb(tiny_backbone):
    return tr.load_backbone(tiny_backbone)


@pytest.fixture(scope="module")
def batch(bb):
    return D.encode(bb.fmt, quirky_speaker(6), 48, 16)


def one_at_a_time(bb, batch, name, start):
    """Each example's gradient from its own backward pass, through the ordinary (non-private) path."""
    out = []
    for e in batch:
        p = torch.nn.Parameter(start.clone())
        D.batch_mean_loss(bb, [e], **{name: p}).backward()
        out.append(p.grad.clone())
    return torch.stack(out)  # (B, *block)


def start_of(bb, name):
    if name == "kv":
        return torch.from_numpy(tr.random_prefix(bb, 4, 0))  # (layers, 2, kv_heads, P, head_dim)
    return tr.text_embeddings(bb, "hello there", 4)  # (P, hidden)


@pytest.mark.parametrize("name", ["kv", "soft"])
@pytest.mark.parametrize("force_functorch", [False, True])
def test_opacus_per_example_gradients_of_the_block_are_exact(bb, batch, name, force_functorch):
    """Opacus's GradSampleModule over the rows module gives each example's own gradient -- for the KV
    block (prefix) and the soft prompt (prompt-tuning) -- equal to one backward pass per example."""
    from opacus import GradSampleModule

    start = start_of(bb, name)
    ref = one_at_a_time(bb, batch, name, start)
    p = torch.nn.Parameter(start.clone())
    gsm = GradSampleModule(dp.rows_module(p), batch_first=True, loss_reduction="sum", force_functorch=force_functorch)
    rows = gsm(torch.ones(len(batch)))  # (B, *block)
    D.example_losses(bb, batch, **{name: rows}).sum().backward()
    assert p.grad_sample.shape == ref.shape
    assert float(ref.abs().max()) > 1e-4  # the comparison is not between zeros
    torch.testing.assert_close(p.grad_sample, ref, rtol=1e-4, atol=1e-7)
    # the examples differ: a shared (summed) gradient in every row would not pass
    assert float((ref[0] - ref[1]).abs().max()) > 1e-6


def test_ghost_clipping_norms_match(bb, batch):
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    start = start_of(bb, "kv")
    ref = one_at_a_time(bb, batch, "kv", start).flatten(1).norm(dim=1)
    p = torch.nn.Parameter(start.clone())
    gsm = GradSampleModuleFastGradientClipping(dp.rows_module(p), batch_first=True, loss_reduction="sum",
                                               max_grad_norm=1.0, use_ghost_clipping=True)
    D.example_losses(bb, batch, kv=gsm(torch.ones(len(batch)))).sum().backward()
    torch.testing.assert_close(gsm.get_norm_sample(), ref, rtol=1e-4, atol=1e-8)


def test_opacus_records_nothing_for_the_block_as_ordinary_training_feeds_it(bb, batch):
    """Why the rows module exists: the block expanded inside the cache never passes a module forward,
    so Opacus's hooks see no per-sample gradient at all."""
    from opacus import GradSampleModule

    holder = torch.nn.Module()
    holder.kv = torch.nn.Parameter(start_of(bb, "kv"))
    GradSampleModule(holder, batch_first=True, loss_reduction="sum")
    D.batch_loss(bb, batch, kv=holder.kv)[0].backward()
    assert getattr(holder.kv, "grad_sample", None) is None


def test_example_losses_match_the_batch_loss(bb, batch):
    kv = start_of(bb, "kv")
    losses = D.example_losses(bb, batch, kv=kv)
    for e, v in zip(batch, losses):
        assert float(v) == pytest.approx(float(D.batch_mean_loss(bb, [e], kv=kv)), rel=1e-5)


def test_a_private_step_clips_each_example_and_divides_by_the_expected_batch(bb, batch):
    """ε = ∞ (no noise): the update's gradient is Σ_i g_i·min(1, C/‖g_i‖) / (q·n)."""
    start = start_of(bb, "kv")
    ref = one_at_a_time(bb, batch, "kv", start)
    norms = ref.flatten(1).norm(dim=1)
    C = float(norms.median())  # some examples are clipped, some not
    n = 24
    plan = dp.DPPlan(steps=1, sample_rate=len(batch) / n, noise_multiplier=0.0, max_grad_norm=C, epsilon=math.inf,
                     delta=1e-5, n=n)
    p = torch.nn.Parameter(start.clone())
    step = dp.PrivateStep(p, lambda b, rows: D.example_losses(bb, b, kv=rows), dp.secret_generator(0))
    step.attach(plan, lr=1e-3)
    grads = []
    step.optimizer.original_optimizer.step = lambda *a, **k: grads.append(p.grad.clone())  # see the gradient
    step(batch)
    want = (ref * (C / (norms + 1e-6)).clamp(max=1.0).view(-1, *[1] * (ref.dim() - 1))).sum(0) / plan.expected_batch
    torch.testing.assert_close(grads[0], want, rtol=1e-4, atol=1e-9)


def test_noise_has_the_planned_scale(bb):
    """An empty Poisson sample is a noise-only step: the gradient is N(0, σ²C²)/(q·n) per coordinate."""
    p = torch.nn.Parameter(start_of(bb, "kv"))
    plan = dp.DPPlan(steps=1, sample_rate=0.1, noise_multiplier=2.0, max_grad_norm=0.5, epsilon=1.0, delta=1e-5, n=50)
    step = dp.PrivateStep(p, lambda b, rows: None, dp.secret_generator(0)).attach(plan, lr=1e-3)
    grads = []
    step.optimizer.original_optimizer.step = lambda *a, **k: grads.append(p.grad.clone())
    step([])
    std = float(grads[0].std())
    assert std == pytest.approx(2.0 * 0.5 / 5.0, rel=0.1)


def test_plan_meets_the_target_epsilon_and_more_privacy_means_more_noise():
    cfg = lambda eps: dp.DPConfig(epsilon=eps, delta=1e-5, batch_size=16)  # noqa: E731
    steps = dp.planned_steps(300, cfg(8), epochs=3)
    assert steps == math.ceil(3 * 300 / 16)
    plans = {eps: dp.make_plan(300, cfg(eps), steps) for eps in (1, 8)}
    for eps, plan in plans.items():
        spent = dp.epsilon_spent(plan, plan.steps)
        assert eps * 0.9 < spent <= eps  # calibrated: close to the target, never above it
        assert dp.epsilon_spent(plan, plan.steps // 2) < spent  # stopping early spends less
    assert plans[1].noise_multiplier > plans[8].noise_multiplier > 0
    assert dp.make_plan(300, cfg(math.inf), steps).noise_multiplier == 0.0


def test_plan_caps_the_steps_by_max_steps_and_by_time():
    cfg = dp.DPConfig(batch_size=10)
    assert dp.planned_steps(100, cfg, epochs=5) == 50
    assert dp.planned_steps(100, cfg, epochs=5, max_steps=7) == 7
    assert dp.planned_steps(100, cfg, epochs=5, step_seconds=2.0, seconds_left=25.0) == int(25 // (2.0 * dp.PLAN_MARGIN))
    with pytest.raises(TrainingError, match="time budget"):
        dp.planned_steps(100, cfg, epochs=5, step_seconds=2.0, seconds_left=1.0)


def test_delta_must_be_below_one_over_n_and_config_is_checked():
    with pytest.raises(ConfigError, match="below 1/n"):
        dp.make_plan(1000, dp.DPConfig(delta=1e-3), 10)
    for bad in (dict(epsilon=0), dict(epsilon=float("nan")), dict(delta=0), dict(max_grad_norm=0),
                dict(batch_size=0), dict(lr=-1)):
        with pytest.raises(ConfigError):
            dp.DPConfig(**bad)
    with pytest.raises(ConfigError, match="DPConfig"):
        tr.TrainConfig(dp={"epsilon": 8})


def test_poisson_batches_sample_each_example_with_rate_q():
    data = list(range(200))
    plan = dp.DPPlan(steps=400, sample_rate=0.05, noise_multiplier=1.0, max_grad_norm=1.0, epsilon=1.0, delta=1e-5,
                     n=200)
    batches = list(dp.poisson_batches(data, plan, dp.secret_generator(1)))
    assert len(batches) == 400
    sizes = np.array([len(b) for b in batches])
    assert sizes.mean() == pytest.approx(10, rel=0.05) and sizes.std() > 1.5  # binomial, not fixed-size
    counts = np.bincount([x for b in batches for x in b], minlength=200)
    assert counts.mean() == pytest.approx(20, rel=0.05)


def test_secret_generator_differs_between_runs_unless_seeded():
    a, b = dp.secret_generator(None), dp.secret_generator(None)
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    assert torch.equal(torch.rand(8, generator=dp.secret_generator(5)), torch.rand(8, generator=dp.secret_generator(5)))


def private_config(max_steps: int = 0, **kw):
    return tr.TrainConfig(batch_size=8, min_examples=8, context_budget=48, reply_budget=16, epochs=1,
                          max_steps=max_steps,
                          dp=dp.DPConfig(**{"epsilon": 8, "delta": 1e-3, "batch_size": 8, "lr": 0.05, **kw}))


def test_train_prefix_privately_records_the_guarantee(tmp_path, tiny_backbone):
    sharp = make_sharp(tiny_backbone, tmp_path / "sharp")
    train, val = quirky_speaker(60), quirky_speaker(12, seed=1)
    prefix, s = tr.train_prefix(train, val, backbone=sharp, config=private_config(insecure_seed=1))
    m = prefix.meta
    assert s.steps == m["dp_steps_planned"] == math.ceil(1 / (8 / 60))
    assert m["dp"] is True and m["dp_epsilon"] == 8 and m["dp_delta"] == 1e-3 and m["dp_accountant"] == "rdp"
    assert 7 < m["dp_epsilon_spent"] <= 8 and m["dp_noise_multiplier"] > 0
    assert m["dp_sample_rate"] == pytest.approx(8 / 60, abs=1e-6)
    assert m["dp_max_grad_norm"] == dp.DPConfig().max_grad_norm
    assert s.best_val_loss < s.init_val_loss  # it still learns the quirk
    assert s.best_step == s.steps  # the last state is kept: no selection on validation
    short = dict(max_steps=2)
    a, _ = tr.train_prefix(train, val, backbone=sharp, config=private_config(insecure_seed=1, **short))
    b, _ = tr.train_prefix(train, val, backbone=sharp, config=private_config(insecure_seed=1, **short))
    np.testing.assert_array_equal(a.kv, b.kv)  # the fixed test seed reproduces
    fresh, _ = tr.train_prefix(train, val, backbone=sharp, config=private_config(**short))
    assert not np.array_equal(fresh.kv, a.kv)  # the real one draws fresh secret noise


def test_private_time_budget_fixes_the_step_count_up_front(tiny_backbone):
    ticks = [0.0]

    def clock():  # every reading advances 1 s: a step (a few readings) costs a few seconds
        ticks[0] += 1.0
        return ticks[0]

    train, val = quirky_speaker(60), quirky_speaker(12, seed=1)
    cfg = private_config(insecure_seed=0)
    cfg.max_minutes = 0.2
    prefix, s = tr.train_prefix(train, val, backbone=tiny_backbone, config=cfg, clock=clock)
    planned = prefix.meta["dp_steps_planned"]
    assert 1 <= planned < math.ceil(1 / (8 / 60))  # fewer than the epochs ask for: the time decided
    assert s.steps <= planned and prefix.meta["dp_epsilon_spent"] <= 8


def test_missing_opacus_is_one_line_naming_the_extra(tmp_path, tiny_backbone, monkeypatch, capsys):
    from persona_sdk.cli import main

    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus -> ImportError
    with pytest.raises(MissingDependencyError, match=r"\[dp\]"):
        dp.require_opacus()
    chats = write_chats(tmp_path / "chats.json")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code = main(["enroll", str(chats), "--me", "Ana", "--backbone", str(tiny_backbone), "--private"])
    err = capsys.readouterr().err
    assert code != 0 and err.strip().count("\n") == 0 and "persona-sdk[dp]" in err
    assert Vault().list() == []


def test_cli_private_enroll_end_to_end_and_info_shows_epsilon(tmp_path, tiny_backbone, monkeypatch, capsys):
    from persona_sdk.cli import main

    chats = write_chats(tmp_path / "chats.json")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code = main(["enroll", str(chats), "--me", "Ana", "--name", "priv", "--backbone", str(tiny_backbone),
                 "--source", "none", "--private", "--epsilon", "4", "--delta", "1e-3", "--epochs", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Private: (4, 0.001)-DP per training reply" in out.err and "lol" not in out.err
    prof = Vault().load("priv", "pw")
    assert prof.meta["dp_epsilon"] == 4 and "voice" not in prof.meta  # no reply-derived words kept
    code = main(["info", "priv"])
    out = capsys.readouterr().out
    assert code == 0
    assert "privacy: (4, 0.001)-differentially private per training reply" in out
    for key in ("dp_epsilon: 4", "dp_delta: 0.001", "dp_max_grad_norm:", "dp_noise_multiplier:", "dp_sample_rate:"):
        assert f"meta.{key}" in out
    code = main(["enroll", str(chats), "--me", "Ana", "--name", "bad", "--backbone", str(tiny_backbone),
                 "--source", "none", "--private", "--delta", "0.5"])
    assert code != 0 and "below 1/n" in capsys.readouterr().err
