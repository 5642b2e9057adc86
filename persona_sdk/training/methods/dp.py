"""Private training (option ``dp`` of the personal-prefix methods): DP-SGD with a stated (ε, δ).

The block is trained by differentially private SGD (Abadi et al. 2016) with
Opacus (the ``[dp]`` extra): every step draws a Poisson sample of the training
replies (each one independently with probability q), computes each example's
own gradient, clips it to L2 norm C, sums, adds Gaussian noise N(0, σ²C²) and
divides by the expected batch size qN; AdamW then takes the step. The unit of
privacy is one training example: a reply of "me" with its context.

How each part is done, and why:

- **Per-example gradients.** Our trainable is a raw KV tensor fed through the
  attention cache (or a soft prompt concatenated in front of the embeddings),
  not a standard layer. Handed to Opacus's ``GradSampleModule`` as it is used
  in ordinary training (expanded inside the cache), Opacus records *no*
  per-sample gradient -- its hooks sit on module forwards, and the tensor never
  goes through one. So the block goes through :func:`rows_module`: a module
  whose forward returns one copy of the block per batch row, (B, *block), and
  each row feeds only its own example. Opacus's hooks then capture the
  gradient of every row; its functorch fallback (the module has no registered
  grad sampler) turns them into per-sample gradients, which are exact (the
  test compares them with gradients of one example at a time). Ghost clipping
  computes the same norms; expanded-weights mode cannot run this module.
- **Sampling.** Poisson sampling (Opacus's ``UniformWithReplacementSampler``),
  the scheme the accountant assumes; batch sizes vary, an empty batch is a
  noise-only step.
- **Noise and step count.** DP needs the number of steps up front: the planner
  turns the epochs, ``max_steps`` and the time budget (one probe step on
  validation replies is timed) into a fixed step count T, then σ is the
  smallest noise multiplier whose ε after T steps at rate q is at most the
  target. Stopping earlier (time, Ctrl-C) spends less; the spent ε is recorded.
- **Accountant: RDP** (Rényi DP, Mironov 2017; Opacus's ``RDPAccountant``). It
  is an upper bound -- the stated ε is never an underestimate -- numerically
  robust for every q, σ and T, and cheap to calibrate. Opacus's PRV accountant
  is tighter (about 7% less noise for the same ε at our sizes) but costlier to
  calibrate and needs care with its discretisation.
- **Randomness.** The sample and the noise come from a generator seeded from
  the OS's secret randomness: amplification by sampling assumes the sample is
  secret, and noise an attacker could regenerate protects nothing. So a private
  enrollment is not reproducible from ``seed`` (``insecure_seed`` exists for
  tests only). The noise is torch's generator, as in Opacus's default
  (non-"secure") mode.
- **No selection on validation.** The last state is kept (no best-checkpoint
  choice, no early stopping): selecting by a loss on held-out replies is not
  covered by ε. Validation replies are never trained on; the loss numbers
  reported are about them.

torch and opacus are imported inside functions.
"""

from __future__ import annotations

import functools
import math
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ...errors import ConfigError, MissingDependencyError, TrainingError
from ..backbone import torch_module
from ..config import DPConfig

ACCOUNTANT = "rdp"
EXTRA_HINT = "private enrollment needs the [dp] extra: pip install 'persona-sdk[dp]'"
PLAN_MARGIN = 1.25  # a planned step is assumed to take this many probe steps (load varies)
UNIT = "example"  # what one (ε, δ) guarantee covers: one training reply with its context


def require_opacus():
    """The ``opacus`` module, or a one-line error naming the extra that provides it."""
    try:
        import opacus
    except ImportError:
        raise MissingDependencyError(EXTRA_HINT) from None
    return opacus


@dataclass
class DPPlan:
    """A private run fixed up front: T steps at sampling rate q with noise multiplier σ."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    epsilon: float  # the target, met by σ after ``steps`` steps
    delta: float
    n: int  # training examples

    @property
    def expected_batch(self) -> float:
        return self.sample_rate * self.n

    def meta(self, steps_done: int) -> dict[str, Any]:
        """The numbers a profile keeps (``persona info`` shows them)."""
        return {"dp": True, "dp_unit": UNIT, "dp_epsilon": self.epsilon, "dp_delta": self.delta,
                "dp_epsilon_spent": round(epsilon_spent(self, steps_done), 4),
                "dp_max_grad_norm": self.max_grad_norm, "dp_noise_multiplier": round(self.noise_multiplier, 6),
                "dp_sample_rate": round(self.sample_rate, 6), "dp_steps_planned": self.steps,
                "dp_accountant": ACCOUNTANT}


def planned_steps(n: int, cfg: DPConfig, epochs: int, max_steps: int = 0, step_seconds: float | None = None,
                  seconds_left: float | None = None) -> int:
    """T: ``epochs`` passes in expectation, capped by ``max_steps`` and by the time left."""
    q = min(cfg.batch_size, n) / n
    steps = max(1, math.ceil(epochs / q))
    if max_steps:
        steps = min(steps, max_steps)
    if seconds_left is not None and step_seconds:
        fit = int(seconds_left // (PLAN_MARGIN * step_seconds))
        if fit < 1:
            raise TrainingError("the time budget leaves no room for a private training step; give more minutes")
        steps = min(steps, fit)
    return steps


def check_delta(n: int, cfg: DPConfig) -> None:
    """δ must be below 1/n: a δ of 1/n could allow releasing one of n replies outright."""
    if n < 1:
        raise TrainingError("private training needs training replies")
    if cfg.delta >= 1.0 / n:
        raise ConfigError(f"delta must be below 1/n = {1.0 / n:.3g} for {n} training replies, got {cfg.delta:g}")


def make_plan(n: int, cfg: DPConfig, steps: int) -> DPPlan:
    """σ for the target (ε, δ) after ``steps`` steps at rate q = batch_size / n (RDP accountant)."""
    check_delta(n, cfg)
    q = min(cfg.batch_size, n) / n
    sigma = 0.0 if math.isinf(cfg.epsilon) else noise_multiplier(float(cfg.epsilon), cfg.delta, q, steps)
    return DPPlan(steps, q, sigma, cfg.max_grad_norm, float(cfg.epsilon), cfg.delta, n)


@functools.lru_cache(maxsize=64)
def noise_multiplier(epsilon: float, delta: float, q: float, steps: int) -> float:
    """The smallest σ (to 0.01 in ε) whose ε after ``steps`` steps at rate ``q`` is at most ``epsilon``."""
    require_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the accountant warns about optimal orders at the edge of its range
        try:
            return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q,
                                              steps=steps, accountant=ACCOUNTANT))
        except ValueError:
            raise ConfigError(f"epsilon {epsilon:g} cannot be reached with {steps} steps at sampling rate {q:.3g}; "
                              "choose a larger epsilon") from None


def epsilon_spent(plan: DPPlan, steps: int) -> float:
    """ε (RDP accountant) after ``steps`` of the plan's steps (0 steps = 0; no noise = inf)."""
    if steps <= 0:
        return 0.0
    if plan.noise_multiplier == 0:
        return math.inf
    require_opacus()
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(plan.noise_multiplier, plan.sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(plan.delta))


def secret_generator(seed: int | None):
    """A torch generator seeded from the OS's secret randomness (or ``seed``, for tests)."""
    torch = torch_module()
    g = torch.Generator()
    g.manual_seed(secrets.randbits(63) if seed is None else seed)
    return g


def poisson_batches(data: Sequence, plan: DPPlan, generator) -> Iterator[list]:
    """``plan.steps`` batches, each holding every example independently with probability q."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(num_samples=len(data), sample_rate=plan.sample_rate,
                                            generator=generator, steps=plan.steps)
    for idx in sampler:
        yield [data[i] for i in idx]


def rows_module(param):
    """A module whose forward returns one copy of ``param`` per batch row: (B, *param.shape).

    ``forward(ones)`` takes any (B,) tensor; only its length is used. Opacus
    hooks its output and gets each row's gradient: an example's gradient."""
    torch = torch_module()

    class Rows(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = param  # the trainer's own Parameter (registered here too, not copied)

        def forward(self, ones):  # ones (B,)
            return self.block.unsqueeze(0).expand(ones.shape[0], *self.block.shape)  # (B, *block)

    return Rows()


class PrivateStep:
    """One DP-SGD step on a Poisson batch: per-example gradients (Opacus), clipping, noise, AdamW.

    ``loss_rows(batch, rows)`` must return each example's own loss (B,) with the
    block given per row. :meth:`probe` times a step before the plan exists;
    :meth:`attach` sets the plan; ``optimizer`` is then the one the loop schedules."""

    def __init__(self, param, loss_rows: Callable[[Sequence, Any], Any], generator) -> None:
        torch = torch_module()
        require_opacus()
        from opacus import GradSampleModule

        self.torch = torch
        self.param = param
        self.rows = GradSampleModule(rows_module(param), batch_first=True, loss_reduction="sum")
        self.loss_rows = loss_rows
        self.generator = generator
        self.optimizer: Any = None
        self.last = math.nan

    def attach(self, plan: DPPlan, lr: float) -> "PrivateStep":
        """Clip to C, add N(0, σ²C²) to the sum, divide by the expected batch qN, then AdamW."""
        from opacus.optimizers import DPOptimizer

        self.optimizer = DPOptimizer(self.torch.optim.AdamW([self.param], lr=lr, weight_decay=0.0),
                                     noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                                     expected_batch_size=plan.expected_batch, loss_reduction="mean",
                                     generator=self.generator)
        return self

    def _backward(self, batch: Sequence) -> float:
        torch = self.torch
        with warnings.catch_warnings():
            # the hook fires on the rows' output on purpose: the block is the only input with a gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            rows = self.rows(torch.ones(len(batch)))  # (B, *block)
            losses = self.loss_rows(batch, rows)  # (B,)
            losses.sum().backward()
        return float(losses.detach().mean())

    def __call__(self, batch: Sequence) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        if batch:
            self.last = self._backward(batch)
        else:  # an empty Poisson sample: the step is noise only
            self.param.grad_sample = self.torch.zeros((0, *self.param.shape), dtype=self.param.dtype)
        self.optimizer.step()
        return self.last

    def probe(self, batch: Sequence, clock: Callable[[], float] = time.monotonic) -> float:
        """Seconds one step on ``batch`` takes; nothing changes (no update, no noise drawn)."""
        t = clock()
        self._backward(batch)
        seconds = clock() - t
        self.param.grad = None
        self.param.grad_sample = None
        return seconds
