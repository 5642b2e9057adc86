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
from .data import batch_mean_loss, encode, epochs_of_batches, mean_loss
from .loop import Clock, LoopConfig, ProgressFn, Trainable, TrainProgress, gradient_step, run

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
    val_data = encode(bb.fmt, val, config.context_budget, config.reply_budget)
    block = start_block(bb, config, init)
    lr = config.learning_rate(from_source=block.from_source)

    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    opt = torch.optim.AdamW(block.params, lr=lr, weight_decay=config.weight_decay)

    def step(batch) -> float:
        return gradient_step(opt, block.params, lambda: batch_mean_loss(bb, batch, bf16=use_bf16, **block.inputs()),
                             config.grad_clip)

    def evaluate() -> float:
        return mean_loss(bb, val_data, batch_size=config.batch_size, bf16=use_bf16, **block.inputs(detach=True))

    def export() -> Prefix:
        return Prefix(block.block(), bb.fingerprint, method=config.method)

    trainable = Trainable(block.params, epochs_of_batches(train_data, config.batch_size, rng, config.epochs), step,
                          evaluate, opt, export)
    loop = LoopConfig(total_steps=total, max_steps=config.max_steps, steps_per_epoch=steps_per_epoch,
                      epochs=config.epochs, eval_every=config.eval_every or steps_per_epoch,
                      patience=config.patience, min_delta=MIN_IMPROVEMENT, warmup=config.warmup,
                      max_seconds=config.max_minutes * 60 if config.max_minutes else None)
    result = run(trainable, loop, progress=say, should_stop=should_stop, clock=clock, started=start)
    prefix = export()
    summary = TrainSummary(config.method, len(train_data), len(val_data), result.steps,
                           round(result.steps / steps_per_epoch, 3), result.init_val_loss, result.best_val_loss,
                           result.best_step, clock() - start, result.stopped, use_bf16, result.history)
    prefix.meta.update(summary.as_meta())
    prefix.meta.update(prefix_len=config.prefix_len, lr=lr, seed=config.seed)
    return prefix, summary
