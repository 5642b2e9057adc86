"""The one training loop.

Every method (personal prefix, rand-prefix, prompt-tuning; plain, temperature,
PPReptile, MTML and AMTML source prefixes; the benchmark's full fine-tuning
references) hands :func:`run` a :class:`Trainable` -- its parameters, what one
step consumes, the step itself, its validation loss -- and the loop owns
everything around the steps:

- the learning-rate schedule (linear warm-up, then linear decay to 0), a
  function of the run's *progress fraction*, which comes from steps done out of
  ``total_steps`` (``schedule_by="steps"``, the default), from the time used
  out of the budget (``schedule_by="time"``), or from whichever of the two is
  further along (``schedule_by="both"``: a time-budgeted run that may also run
  out of data still ends with the learning rate at 0);
- the step budget (``max_steps``) and the end of the data (``"epochs"``);
- the time budget: a step starts only if it, and the closing validation, are
  expected to finish inside ``max_seconds`` (read from an injectable clock);
- the validation cadence (every ``eval_every`` steps, or ``evals`` times spread
  over the progress fraction), best-checkpoint tracking (the parameters are left
  holding the best state) and early stopping (``patience``);
- cancellation: Ctrl-C or ``should_stop()`` raises :class:`EnrollmentCancelled`
  carrying the best result so far (built by the method's ``export``);
- the divergence check (a non-finite loss stops the run with a clear error);
- progress reports (:class:`TrainProgress`, numbers only);
- checkpoints: after every step ``checkpoint`` receives the loop's
  :class:`LoopState`, and ``resume`` starts a run from one (the method restores
  its parameters, optimiser and data position), so a resumed run ends where an
  uninterrupted one would.

torch is imported only inside functions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable

from ..errors import ConfigError, EnrollmentCancelled, TrainingError
from .backbone import torch_module

SCHEDULES = ("warmup-linear", "constant")
SCHEDULE_BY = ("steps", "time", "both")
STOP_REASONS = ("epochs", "max-steps", "max-minutes", "early-stop")


@dataclass
class TrainProgress:
    """One progress report (numbers only)."""

    phase: str  # "load" | "eval" | "train" | "done"
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    elapsed: float = 0.0  # seconds since training started
    eta: float | None = None  # seconds left (estimate)


ProgressFn = Callable[[TrainProgress], None]
Clock = Callable[[], float]  # seconds, monotonic


def warmup_linear(start, end, warmup):
    """Learning-rate factor of a step that covers ``[start, end)`` of the run (fractions of 1).

    Linear warm-up over the first ``warmup`` of the run -- a warm-up step gets
    the factor of where it *ends*, so the very first step already learns --
    then linear decay from 1 at ``warmup`` to 0 at the end. Exact for
    :class:`~fractions.Fraction` arguments (the step clock passes those, so the
    factor is the correctly rounded ratio of step counts)."""
    if start < warmup:
        return min(end / warmup, 1)
    if warmup >= 1:
        return 0
    return max(0, (1 - start) / (1 - warmup))


@dataclass
class LoopConfig:
    """What the loop does around a method's steps (a method's own settings live in its config)."""

    total_steps: int = 0  # the step-based schedule's length; this step is always validated (0 = unknown)
    max_steps: int = 0  # stop before a step once this many are done ("max-steps"; 0 = no limit)
    steps_per_epoch: int = 0  # epoch numbers in progress reports (0 = not epoch-based)
    epochs: int = 0  # the epoch number the final report carries
    eval_every: int = 0  # validate each time this many more steps are done (0 = only at the end)
    evals: int = 0  # or: validate this many times, evenly spread over the progress fraction (the last at the end)
    patience: int = 0  # early stop after this many validations in a row without improvement (0 = never)
    min_delta: float = 0.0  # a validation loss must beat the best by more than this to count
    schedule: str = "warmup-linear"  # the learning-rate schedule, one of SCHEDULES
    warmup: float = 0.0  # share of the run with linear warm-up (0..1)
    schedule_by: str = "steps"  # where the progress fraction comes from, one of SCHEDULE_BY
    max_seconds: float | None = None  # time budget counted from the run's start (None = no limit)
    budget_margin: float = 1.5  # the next step is assumed to take this many mean steps (load varies)
    label: str = "training"  # names the run in the divergence error
    cancel_message: str = "enrollment interrupted; nothing was saved"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule_by not in SCHEDULE_BY:
            raise ConfigError(f"schedule_by must be one of {SCHEDULE_BY}, got {self.schedule_by!r}")
        for name in ("total_steps", "max_steps", "steps_per_epoch", "epochs", "eval_every", "evals", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if not 0 <= self.warmup <= 1:
            raise ConfigError(f"warmup must be a fraction in [0, 1], got {self.warmup!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be > 0 or None, got {self.max_seconds!r}")
        if self.schedule != "constant":
            if self.schedule_by == "steps" and not self.total_steps:
                raise ConfigError("a step-based schedule needs total_steps")
            if self.schedule_by in ("time", "both") and self.max_seconds is None:
                raise ConfigError(f"a {self.schedule_by!r} schedule needs max_seconds")
            if self.schedule_by == "both" and not self.total_steps:
                raise ConfigError("a 'both' schedule needs total_steps")
        if self.eval_every and self.evals:
            raise ConfigError("give eval_every or evals, not both")

    @property
    def warmup_fraction(self):
        """The warm-up share of the run. Step-based: a whole number of steps (at least one when
        warm-up is on), as an exact Fraction of ``total_steps``."""
        if self.schedule_by in ("time", "both"):
            return self.warmup
        warm = max(1, int(round(self.warmup * self.total_steps))) if self.warmup > 0 else 0
        return Fraction(warm, self.total_steps)


@dataclass
class Trainable:
    """What a method hands the loop."""

    params: list  # the tensors trained; the best checkpoint is a copy of them
    items: Iterable  # what each step consumes (a batch, a meta step's speakers); running out ends the run
    step: Callable[[Any], Any]  # one update from one item -> its loss, or (loss, optimisation steps it counts)
    evaluate: Callable[[], float] | None = None  # validation loss now; None = no validation, keep the last state
    optimizer: Any = None  # the schedule sets this optimizer's learning rates (None = the method's own)
    export: Callable[[], Any] | None = None  # the result built from the current parameters


@dataclass
class LoopResult:
    """How a run went; the trainable's parameters hold the best state (the last one without validation)."""

    steps: int
    stopped: str  # one of STOP_REASONS
    init_val_loss: float | None
    best_val_loss: float | None
    best_step: int
    seconds: float  # since the run's start
    history: list = field(default_factory=list)  # [(step, running train loss, val loss)]


@dataclass
class LoopState:
    """Where a run stands after a step: with the method's parameters, optimiser and data position,
    what a resumed run starts from. ``best_state`` is the loop's copy of the best parameters."""

    step: int
    bad: int
    running: float | None
    next_eval: float
    init_val: float | None
    eval_cost: float
    best_val: float | None
    best_step: int
    best_state: list | None
    history: list
    evals_done: int = 0


def gradient_step(optimizer, params: list, loss_fn: Callable[[], Any], grad_clip: float = 0.0) -> float:
    """One optimiser step on ``loss_fn()`` (gradient norm clipped to ``grad_clip``; 0 = no clipping)."""

    def backward() -> float:
        loss = loss_fn()
        loss.backward()
        return float(loss.detach())

    return backward_step(optimizer, params, backward, grad_clip)


def backward_step(optimizer, params: list, backward_fn: Callable[[], float], grad_clip: float = 0.0) -> float:
    """One optimiser step on the gradients ``backward_fn()`` accumulates (it returns the loss value)."""
    torch = torch_module()
    optimizer.zero_grad(set_to_none=True)
    loss = backward_fn()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss


def run(
    trainable: Trainable,
    config: LoopConfig,
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock | None = None,
    started: float | None = None,
    checkpoint: Callable[[LoopState], None] | None = None,
    resume: LoopState | None = None,
) -> LoopResult:
    """Train ``trainable`` until its items run out or a budget, early stopping or a stop request ends it.

    ``started``: the clock reading the time budget counts from (default: now),
    so loading that came before is charged to the budget. ``checkpoint`` gets
    the state after every step; ``resume`` continues from such a state (the
    trainable's parameters, optimiser and items already where it left them;
    a time budget counts from the resumed start)."""
    torch = torch_module()
    clock = clock or time.monotonic
    say = progress or (lambda p: None)
    start = clock() if started is None else started
    params = list(trainable.params)
    opt = trainable.optimizer
    scheduled = opt is not None and config.schedule != "constant"
    if scheduled:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    validating = trainable.evaluate is not None
    total, budget = config.total_steps, config.max_seconds
    warm = config.warmup_fraction if scheduled else 0

    def snapshot() -> list:
        return [p.detach().clone() for p in params]

    def restore(state: list) -> None:
        with torch.no_grad():
            for p, s in zip(params, state):
                p.copy_(s)

    if resume is None:
        try:
            t_eval = clock()
            init_val = trainable.evaluate() if validating else None
            eval_cost = clock() - t_eval
        except KeyboardInterrupt:
            raise EnrollmentCancelled(config.cancel_message) from None
        best_val, best_step, best_state = init_val, 0, (snapshot() if validating else None)
        history: list = [(0, None, init_val)] if validating else []
        if validating:
            say(TrainProgress("eval", 0, total, 0, None, init_val, best_val, clock() - start))
    else:
        init_val, eval_cost, best_val, best_step = resume.init_val, resume.eval_cost, resume.best_val, resume.best_step
        best_state = [s.clone() for s in resume.best_state] if resume.best_state is not None else None
        history = [tuple(h) for h in resume.history]

    def fraction(step: int, now: float, per_step: float):
        """(start, end) of the next step as fractions of the run."""
        if config.schedule_by == "steps":
            return Fraction(step, total), Fraction(step + 1, total)
        span = max(budget - (train_start - start) - eval_cost, 1e-9)  # seconds the steps (and validations) can use
        done = now - train_start
        timed = (done / span, (done + (per_step or eval_cost)) / span)  # first step: a validation's cost as guess
        if config.schedule_by == "time":
            return timed
        return max(timed[0], step / total), max(timed[1], (step + 1) / total)

    def progress_fraction(step: int, now: float) -> float:
        """How far along the run is (for ``evals``): steps done, time used, or the further of the two."""
        by_steps = step / total if total else 0.0
        if config.schedule_by == "steps" or budget is None:
            return by_steps
        span = max(budget - (train_start - start) - eval_cost, 1e-9)
        by_time = (now - train_start) / span
        return by_time if config.schedule_by == "time" else max(by_time, by_steps)

    step, iters, bad, stopped, running = 0, 0, 0, "epochs", None
    next_eval = config.eval_every or math.inf
    evals_done = 0
    if resume is not None:
        step, bad, running, next_eval = resume.step, resume.bad, resume.running, resume.next_eval
        evals_done = resume.evals_done
    train_start = clock()
    items = iter(trainable.items)
    try:
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            if config.max_steps and step >= config.max_steps:
                stopped = "max-steps"
                break
            now = clock()
            per_step = (now - train_start) / iters if iters else 0.0
            if budget is not None and (now - start) + config.budget_margin * per_step + eval_cost > budget:
                stopped = "max-minutes"
                break
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            if scheduled:
                factor = float(warmup_linear(*fraction(step, now, per_step), warm))
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * factor
            out = trainable.step(item)
            value, n = out if isinstance(out, tuple) else (out, 1)
            step += n
            iters += 1
            if not math.isfinite(value):
                raise TrainingError(f"{config.label} diverged at step {step} (loss is not finite); try a lower lr")
            running = value if running is None else 0.9 * running + 0.1 * value
            now = clock()
            elapsed = now - start
            etas = [(now - train_start) / step * max(total - step, 0)] if total else []
            if budget is not None:
                etas.append(max(budget - elapsed, 0.0))
            eta = min(etas) if etas else None  # whichever ends the run first
            val_loss = None
            due = step >= next_eval or (total and step >= total)
            if config.evals and evals_done < config.evals - 1:  # the last one is at the end of the run
                due = due or progress_fraction(step, now) >= (evals_done + 1) / config.evals
            if validating and due:
                next_eval += config.eval_every or math.inf
                evals_done += 1
                val_loss = trainable.evaluate()
                history.append((step, running, val_loss))
                if val_loss < best_val - config.min_delta:
                    best_val, best_step, bad = val_loss, step, 0
                    best_state = snapshot()
                else:
                    bad += 1
            epoch = (step - 1) // config.steps_per_epoch if config.steps_per_epoch else 0
            say(TrainProgress("train", step, total, epoch, running, val_loss, best_val, elapsed, eta))
            if checkpoint is not None:
                checkpoint(LoopState(step, bad, running, next_eval, init_val, eval_cost, best_val, best_step,
                                     best_state, list(history), evals_done))
            if config.patience and bad >= config.patience:
                stopped = "early-stop"
                break
        if validating and step and history[-1][0] != step:  # validate the last steps if they were not yet
            val_loss = trainable.evaluate()
            history.append((step, running, val_loss))
            if val_loss < best_val - config.min_delta:
                best_val, best_step = val_loss, step
                best_state = snapshot()
    except KeyboardInterrupt:
        best = None
        if validating and best_step and trainable.export is not None:
            restore(best_state)
            best = trainable.export()
        raise EnrollmentCancelled(config.cancel_message, best=best) from None
    if validating:
        restore(best_state)
    result = LoopResult(step, stopped, init_val, best_val, best_step, clock() - start, history)
    say(TrainProgress("done", step, total, config.epochs, running, None, best_val, result.seconds, 0.0))
    return result
