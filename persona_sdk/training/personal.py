"""The personal prefix (PersonaPKT stage 2): one person's KV block on a frozen backbone.

Methods (every one ends as the KV block the runtime consumes,
``(layers, 2, kv_heads, P, head_dim)``): ``prefix`` (default; from a source
prefix), ``rand-prefix``, ``prompt`` -- see :mod:`persona_sdk.training.methods`.
The loop around the steps (schedule, validation, budgets, best checkpoint,
cancellation) is :mod:`persona_sdk.training.loop`'s.

torch and transformers are imported inside functions: ``import persona_sdk``
never pays for them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import TooLittleDataError
from ..prefix import Prefix
from ..split import split_by_conversation
from .backbone import TrainBackbone, bf16_supported, load_backbone, torch_module
from .config import TrainConfig
from .data import batch_backward, encode, epochs_of_batches, mean_loss
from .loop import Clock, LoopConfig, ProgressFn, Trainable, TrainProgress, backward_step, run

MIN_IMPROVEMENT = 1e-4  # a validation loss counts as better only by more than this (early stopping)


@dataclass
class TrainSummary:
    """Numbers that describe a finished run (never any text)."""

    method: str
    train_examples: int
    val_examples: int
    steps: int
    epochs: float
    init_val_loss: float
    best_val_loss: float
    best_step: int
    wall_seconds: float
    stopped: str  # "epochs" | "early-stop" | "max-minutes" | "max-steps"
    bf16: bool
    history: list = field(default_factory=list)  # [(step, train_loss, val_loss)]

    def as_meta(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}


def check_enough(n_train: int, config: TrainConfig) -> None:
    if n_train < config.min_examples:
        raise TooLittleDataError(
            f"only {n_train} training replies; at least {config.min_examples} are needed to learn a persona"
        )


def start_block(bb: TrainBackbone, config: TrainConfig, init: Prefix | None):
    """The method's trainable block (``params``, ``inputs()``, ``block()``, ``from_source``)."""
    from .methods import prefix, prompt

    if config.method == "prompt":
        return prompt.start(bb, config.prompt_init, config.prefix_len)
    return prefix.start(bb, config.method, config.prefix_len, config.seed, init)


def train_prefix(
    train: Sequence[Any],
    val: Sequence[Any] | None = None,
    *,
    backbone: TrainBackbone | str | Path | None = None,
    config: TrainConfig | None = None,
    init: Prefix | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock | None = None,
) -> tuple[Prefix, TrainSummary]:
    """Train a personal KV block on ``train`` replies; validate on ``val``.

    ``val`` None: a ``val_fraction`` of the conversations is held out. ``init``
    is the source prefix for method ``prefix`` (ignored otherwise). Returns the
    best-on-validation block and a summary. Ctrl-C (or ``should_stop()``)
    raises :class:`EnrollmentCancelled` carrying the best block so far.
    ``clock`` (seconds, monotonic) times the ``max_minutes`` budget.
    """
    config = config or TrainConfig()
    clock = clock or time.monotonic
    if val is None or len(val) == 0:
        train, val = split_by_conversation(list(train), config.val_fraction, config.seed)
    check_enough(len(train), config)
    if not val:
        raise TooLittleDataError("no validation replies (need at least two conversations or more replies)")
    torch = torch_module()
    say = progress or (lambda p: None)
    start = clock()
    say(TrainProgress("load"))
    bb = backbone if isinstance(backbone, TrainBackbone) else load_backbone(backbone)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    use_bf16 = config.bf16 == "on" or (config.bf16 == "auto" and bf16_supported())

    train_data = encode(bb.fmt, train, config.context_budget, config.reply_budget)
    if config.max_val and len(val) > config.max_val:  # evenly spread: every held-out conversation has its say
        val = [val[i] for i in np.linspace(0, len(val) - 1, config.max_val).round().astype(int)]
    val_data = encode(bb.fmt, val, config.context_budget, config.reply_budget)
    block = start_block(bb, config, init)
    lr = config.learning_rate(from_source=block.from_source, n_train=len(train_data))

    if config.dp is not None:
        return _train_private(bb, config, block, train_data, val_data, use_bf16, say, should_stop, clock, start)
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    opt = torch.optim.AdamW(block.params, lr=lr, weight_decay=config.weight_decay)

    def step(batch) -> float:
        return backward_step(opt, block.params, lambda: batch_backward(bb, batch, block.inputs, bf16=use_bf16,
                                                                       max_tokens=config.micro_batch_tokens),
                             config.grad_clip)

    def evaluate() -> float:
        return mean_loss(bb, val_data, batch_size=config.batch_size, bf16=use_bf16, **block.inputs(detach=True))

    def export() -> Prefix:
        return Prefix(block.block(), bb.fingerprint, method=config.method)

    trainable = Trainable(block.params, epochs_of_batches(train_data, config.batch_size, rng, config.epochs), step,
                          evaluate, opt, export)
    budget = config.max_minutes * 60 if config.max_minutes else None
    # with a time budget the schedule follows whichever runs out first, the time or the epochs
    loop = LoopConfig(total_steps=total, max_steps=config.max_steps, steps_per_epoch=steps_per_epoch,
                      epochs=config.epochs, eval_every=config.eval_every,
                      evals=0 if config.eval_every else config.evals,
                      patience=config.patience, min_delta=MIN_IMPROVEMENT, warmup=config.warmup,
                      schedule_by="both" if budget is not None else "steps", max_seconds=budget)
    result = run(trainable, loop, progress=say, should_stop=should_stop, clock=clock, started=start)
    prefix = export()
    summary = TrainSummary(config.method, len(train_data), len(val_data), result.steps,
                           round(result.steps / steps_per_epoch, 3), result.init_val_loss, result.best_val_loss,
                           result.best_step, clock() - start, result.stopped, use_bf16, result.history)
    prefix.meta.update(summary.as_meta())
    prefix.meta.update(prefix_len=config.prefix_len, lr=lr, seed=config.seed)
    return prefix, summary


def _train_private(bb, config: TrainConfig, block, train_data, val_data, use_bf16: bool, say: ProgressFn,
                   should_stop, clock: Clock, start: float) -> tuple[Prefix, TrainSummary]:
    """The private run of :func:`train_prefix` (see :mod:`persona_sdk.training.methods.dp`): a fixed
    plan of Poisson-sampled DP-SGD steps in the same loop, the last state kept."""
    from .data import example_losses
    from .methods import dp

    cfg = config.dp
    dp.require_opacus()
    param = block.params[0]
    name = next(iter(block.inputs()))  # "kv" or "soft": how the block reaches the backbone

    def loss_rows(batch, rows):
        return example_losses(bb, batch, bf16=use_bf16, **{name: rows})

    def evaluate() -> float:
        return mean_loss(bb, val_data, batch_size=config.batch_size, bf16=use_bf16, **block.inputs(detach=True))

    t = clock()
    init_val = evaluate()
    eval_cost = clock() - t
    say(TrainProgress("eval", 0, 0, 0, None, init_val, init_val, clock() - start))
    n = len(train_data)
    generator = dp.secret_generator(cfg.insecure_seed)
    private = dp.PrivateStep(param, loss_rows, generator)
    seconds_left = step_seconds = None
    if config.max_minutes:
        # the step count is fixed before the first step: time one step on validation replies
        # (never trained on; the probe changes nothing), then fit the steps into what is left
        size = max(1, round(min(cfg.batch_size, n)))
        step_seconds = private.probe([val_data[i % len(val_data)] for i in range(size)], clock)
        seconds_left = config.max_minutes * 60 - (clock() - start) - eval_cost
    plan = dp.make_plan(n, cfg, dp.planned_steps(n, cfg, config.epochs, config.max_steps, step_seconds, seconds_left))
    private.attach(plan, cfg.lr)

    def export() -> Prefix:
        return Prefix(block.block(), bb.fingerprint, method=config.method)

    steps_per_epoch = max(1, round(1 / plan.sample_rate))
    trainable = Trainable(block.params, dp.poisson_batches(train_data, plan, generator), private, None,
                          private.optimizer, export)
    loop = LoopConfig(total_steps=plan.steps, max_steps=plan.steps, steps_per_epoch=steps_per_epoch,
                      epochs=config.epochs, warmup=config.warmup,
                      max_seconds=config.max_minutes * 60 - eval_cost if config.max_minutes else None,
                      cancel_message="private enrollment interrupted; nothing was saved")
    result = run(trainable, loop, progress=say, should_stop=should_stop, clock=clock, started=start)
    final_val = evaluate()
    history = [(0, None, init_val), (result.steps, None, final_val)]
    prefix = export()
    summary = TrainSummary(config.method, n, len(val_data), result.steps, round(result.steps * plan.sample_rate, 3),
                           init_val, final_val, result.steps, clock() - start, result.stopped, use_bf16, history)
    prefix.meta.update(summary.as_meta())
    prefix.meta.update(prefix_len=config.prefix_len, lr=cfg.lr, seed=config.seed, batch_size=cfg.batch_size)
    prefix.meta.update(plan.meta(result.steps))
    return prefix, summary
