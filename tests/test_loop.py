"""The one training loop (persona_sdk.training.loop) on a toy problem: schedule, budgets
(with a fake clock: nothing here depends on how busy the machine is), validation cadence,
best checkpoint, early stopping, cancellation, divergence."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from persona_sdk.errors import ConfigError, EnrollmentCancelled, TrainingError
from persona_sdk.training import loop


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Toy:
    """One scalar parameter, a scripted loss per step and per validation; every step "takes"
    ``step_seconds`` and every validation ``eval_seconds`` on the fake clock."""

    def __init__(self, clock: FakeClock, val_losses=(), step_seconds: float = 1.0, eval_seconds: float = 0.0,
                 lr: float = 0.1, items=None) -> None:
        import torch

        self.clock = clock
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.opt = torch.optim.SGD([self.w], lr=lr)
        self.val = list(val_losses)
        self.step_seconds, self.eval_seconds = step_seconds, eval_seconds
        self.lrs: list[float] = []  # learning rate each step ran with
        self.evals = 0
        self.items = items if items is not None else range(10_000)

    def step(self, item):
        self.lrs.append(self.opt.param_groups[0]["lr"])
        self.clock.now += self.step_seconds
        return loop.gradient_step(self.opt, [self.w], lambda: (self.w - 1.0) ** 2)  # w moves towards 1

    def evaluate(self) -> float:
        self.clock.now += self.eval_seconds
        self.evals += 1
        return self.val.pop(0) if self.val else 1.0

    def trainable(self, **kw) -> loop.Trainable:
        return loop.Trainable([self.w], self.items, self.step, self.evaluate, self.opt,
                              export=lambda: float(self.w.detach()), **kw)


def old_lambda(total: int, warmup: float):
    """The schedule as the trainers wrote it before the loop existed (LambdaLR over step numbers)."""
    warm = max(1, int(round(warmup * total))) if warmup > 0 else 0
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))


@pytest.mark.parametrize("total", [1, 2, 3, 7, 13, 40, 200, 1001])
@pytest.mark.parametrize("warmup", [0.0, 0.01, 0.06, 0.1, 0.5])
def test_step_schedule_is_exactly_the_former_one(total, warmup):
    cfg = loop.LoopConfig(total_steps=total, warmup=warmup)
    f = old_lambda(total, warmup)
    for s in range(total):
        got = float(loop.warmup_linear(Fraction(s, total), Fraction(s + 1, total), cfg.warmup_fraction))
        assert got == f(s), (s, got, f(s))  # bitwise: same floats as before


def test_the_loop_applies_the_step_schedule():
    clock = FakeClock()
    toy = Toy(clock, items=range(20))
    result = loop.run(toy.trainable(), loop.LoopConfig(total_steps=20, warmup=0.1, eval_every=5), clock=clock)
    f = old_lambda(20, 0.1)
    assert toy.lrs == [0.1 * f(s) for s in range(20)]
    assert toy.lrs[0] > 0 and toy.lrs[1] == 0.1 and toy.lrs[-1] == pytest.approx(0.1 / 18)
    assert result.stopped == "epochs" and result.steps == 20
    assert [h[0] for h in result.history] == [0, 5, 10, 15, 20]


def test_time_budget_stops_before_a_step_and_validation_that_would_not_fit():
    clock = FakeClock()
    clock.now = 100.0
    started = clock() - 4.0  # loading took 4 s before the loop: charged to the budget
    toy = Toy(clock, step_seconds=2.0, eval_seconds=3.0)
    result = loop.run(toy.trainable(), loop.LoopConfig(total_steps=1000, max_seconds=30.0), clock=clock,
                      started=started)
    # before step n+1: 4 + 3 (initial validation) + 2n elapsed, + 1.5 * 2 margin + 3 for the closing
    # validation must fit in 30 s: after 8 steps 29 s (step 9 starts), after 9 steps 31 s (it stops)
    assert result.stopped == "max-minutes" and result.steps == 9
    assert result.seconds == 4 + 3 + 18 + 3  # ... and the closing validation ran, inside the budget
    assert result.history[-1][0] == 9


def test_time_based_schedule_warms_up_then_decays_over_the_budget():
    clock = FakeClock()
    toy = Toy(clock, step_seconds=1.0, eval_seconds=1.0)
    cfg = loop.LoopConfig(schedule_by="time", warmup=0.1, max_seconds=101.0, budget_margin=1.0)
    result = loop.run(toy.trainable(), cfg, clock=clock)
    # 101 s - 1 s initial validation - 1 s closing one = 99 s of steps, 1 s each; the last starts at 98 s
    assert result.stopped == "max-minutes" and result.steps == 99
    factors = [lr / 0.1 for lr in toy.lrs]
    span = 101.0 - 1.0 - 1.0
    for n, got in enumerate(factors):
        assert got == pytest.approx(float(loop.warmup_linear(n / span, (n + 1) / span, 0.1)))
    assert factors[0] > 0  # the first step already learns
    assert max(factors) == pytest.approx(1.0) and factors.index(max(factors)) in (9, 10)
    assert factors[-1] == pytest.approx(1 / span / 0.9)  # decayed to (almost) nothing at the end of the budget


def test_best_checkpoint_is_restored_and_patience_stops():
    clock = FakeClock()
    toy = Toy(clock, val_losses=[5.0, 4.0, 3.0, 3.00005, 3.5, 2.9])
    cfg = loop.LoopConfig(total_steps=100, eval_every=2, patience=2, min_delta=1e-4, schedule="constant")
    seen = []
    result = loop.run(toy.trainable(), cfg, clock=clock, progress=seen.append)
    # validations at steps 0, 2, 4, 6, 8: 3.00005 is not better by more than 1e-4, 3.5 is worse: stop
    assert result.stopped == "early-stop" and result.steps == 8
    assert (result.init_val_loss, result.best_val_loss, result.best_step) == (5.0, 3.0, 4)
    assert [h[0] for h in result.history] == [0, 2, 4, 6, 8]
    expected_w = 0.0
    for _ in range(4):  # the weight after 4 plain SGD steps on (w - 1)^2: the best checkpoint
        expected_w -= 0.1 * 2 * (expected_w - 1.0)
    assert float(toy.w.detach()) == pytest.approx(expected_w)
    phases = [p.phase for p in seen]
    assert phases[0] == "eval" and phases[-1] == "done" and phases.count("train") == 8
    assert all(p.eta is not None for p in seen if p.phase == "train")


def test_items_running_out_end_the_run_and_the_last_steps_are_validated():
    clock = FakeClock()
    toy = Toy(clock, items=range(7))
    result = loop.run(toy.trainable(), loop.LoopConfig(total_steps=100, eval_every=3, schedule="constant"),
                      clock=clock)
    assert result.stopped == "epochs" and result.steps == 7
    assert [h[0] for h in result.history] == [0, 3, 6, 7]


def test_max_steps_counts_the_optimisation_steps_an_item_takes():
    clock = FakeClock()
    toy = Toy(clock)
    base_step = toy.step
    toy.step = lambda item: (base_step(item), 3)  # a meta step: 3 inner steps per item
    result = loop.run(toy.trainable(), loop.LoopConfig(max_steps=10, eval_every=4, schedule="constant"),
                      clock=clock)
    assert result.stopped == "max-steps" and result.steps == 12  # 4 items; a step never stops half-way
    assert [h[0] for h in result.history] == [0, 6, 9, 12]  # each validation once the next 4 steps are done


def test_stop_request_raises_cancelled_carrying_the_best_so_far():
    clock = FakeClock()
    toy = Toy(clock, val_losses=[5.0, 4.0, 6.0])
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(EnrollmentCancelled, match="custom") as info:
        loop.run(toy.trainable(), loop.LoopConfig(total_steps=10, eval_every=1, schedule="constant",
                                                  cancel_message="custom"), should_stop=stop, clock=clock)
    assert info.value.best == pytest.approx(0.2)  # the state after step 1 (val 4.0), not after step 2 (6.0)


def test_ctrl_c_in_a_step_or_before_any_improvement():
    clock = FakeClock()
    toy = Toy(clock, val_losses=[5.0, 6.0])
    base_step = toy.step

    def interrupted(item):
        if len(toy.lrs) == 1:  # Ctrl-C during the second step
            raise KeyboardInterrupt
        return base_step(item)

    toy.step = interrupted
    with pytest.raises(EnrollmentCancelled) as info:
        loop.run(toy.trainable(), loop.LoopConfig(total_steps=10, eval_every=1, schedule="constant"), clock=clock)
    assert info.value.best is None  # nothing better than the start was seen: nothing to keep


def test_a_non_finite_loss_is_a_clear_error():
    clock = FakeClock()
    toy = Toy(clock)
    toy.step = lambda item: math.nan if item == 3 else 1.0
    with pytest.raises(TrainingError, match="diverged at step 4"):
        loop.run(toy.trainable(), loop.LoopConfig(total_steps=10, schedule="constant"), clock=clock)


def test_without_validation_the_last_state_is_kept():
    clock = FakeClock()
    toy = Toy(clock, items=range(3))
    result = loop.run(loop.Trainable([toy.w], toy.items, toy.step), loop.LoopConfig(schedule="constant"),
                      clock=clock)
    assert result.steps == 3 and result.history == [] and result.best_val_loss is None
    assert float(toy.w.detach()) == pytest.approx(1 - 0.8 ** 3)


def test_both_schedule_follows_the_time_when_it_runs_out_first():
    clock = FakeClock()
    toy = Toy(clock, step_seconds=1.0, eval_seconds=1.0)
    cfg = loop.LoopConfig(schedule_by="both", total_steps=10_000, max_seconds=101.0, budget_margin=1.0)
    result = loop.run(toy.trainable(), cfg, clock=clock)
    assert result.stopped == "max-minutes" and result.steps == 99
    span = 101.0 - 1.0 - 1.0
    for n, lr in enumerate(toy.lrs):  # the step fraction (n / 10,000) is never the further one here
        assert lr / 0.1 == pytest.approx(float(loop.warmup_linear(n / span, (n + 1) / span, 0.0)))


def test_both_schedule_follows_the_steps_when_the_data_runs_out_first():
    clock = FakeClock()
    toy = Toy(clock, step_seconds=1.0, items=range(20))
    cfg = loop.LoopConfig(schedule_by="both", total_steps=20, max_seconds=1000.0)
    result = loop.run(toy.trainable(), cfg, clock=clock)
    assert result.stopped == "epochs" and result.steps == 20
    # 20 s of a 1000 s budget used: the steps set the schedule, which still reaches the end
    assert toy.lrs == pytest.approx([0.1 * float(loop.warmup_linear(n / 20, (n + 1) / 20, 0.0)) for n in range(20)])
    assert toy.lrs[-1] == pytest.approx(0.1 / 20)


def test_evals_are_spread_over_the_time_budget():
    clock = FakeClock()
    toy = Toy(clock, step_seconds=1.0)
    cfg = loop.LoopConfig(schedule_by="time", max_seconds=100.0, budget_margin=1.0, evals=4)
    result = loop.run(toy.trainable(), cfg, clock=clock)
    steps = [h[0] for h in result.history]
    assert steps[0] == 0 and len(steps) == 5  # the first validation, then 4 over the run, the last at its end
    assert steps[1:] == [25, 50, 75, result.steps]


def test_evals_are_spread_over_the_steps_without_a_budget():
    clock = FakeClock()
    toy = Toy(clock, items=range(40))
    result = loop.run(toy.trainable(), loop.LoopConfig(total_steps=40, evals=4), clock=clock)
    assert [h[0] for h in result.history] == [0, 10, 20, 30, 40]


@pytest.mark.parametrize("bad, match", [
    (dict(schedule="cosine"), "schedule must be one of"),
    (dict(schedule_by="epochs"), "schedule_by must be one of"),
    (dict(total_steps=0), "needs total_steps"),
    (dict(schedule_by="time"), "needs max_seconds"),
    (dict(total_steps=5, warmup=1.5), "warmup"),
    (dict(total_steps=5, max_seconds=0), "max_seconds"),
    (dict(total_steps=5, patience=-1), "patience"),
    (dict(schedule_by="both", max_seconds=10), "needs total_steps"),
    (dict(schedule_by="both", total_steps=5), "needs max_seconds"),
    (dict(total_steps=5, eval_every=2, evals=3), "not both"),
])
def test_loop_config_rejects_bad_values(bad, match):
    with pytest.raises(ConfigError, match=match):
        loop.LoopConfig(**bad)
