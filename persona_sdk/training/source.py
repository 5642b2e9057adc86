"""The source prefix (PersonaPKT stage 1): one KV block trained over many speakers.

Maintainers train it once per backbone (``persona source train``); every
``persona enroll`` then starts from it. Methods (see
:mod:`persona_sdk.training.methods`): ``plain`` and ``temperature`` (how a
batch mixes speakers), ``ppreptile`` (Reptile on the prefix), ``mtml`` and
``amtml`` (Reptile with a persona-reconstruction task; they need persona
descriptions). The loop around the steps is :mod:`persona_sdk.training.loop`'s.
torch is imported only inside functions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import TrainingError
from ..prefix import Prefix
from .backbone import TrainBackbone, kv_of_embeddings, load_backbone, random_prefix, text_embeddings, torch_module
from .config import SourceConfig
from .corpora import Speaker
from .data import batch_mean_loss, encode, mean_loss
from .loop import Clock, LoopConfig, ProgressFn, Trainable, gradient_step, run


@dataclass
class SourceSummary:
    method: str
    speakers: int
    train_examples: int
    val_examples: int
    steps: int
    init_val_loss: float
    best_val_loss: float
    best_step: int
    wall_seconds: float
    stopped: str  # "steps" | "max-minutes"
    curve: list = field(default_factory=list)  # [(step, val_loss)]

    def as_meta(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [[int(s), round(float(v), 4)] for s, v in self.curve]
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}


def train_source(
    speakers: Sequence[Speaker],
    val: Sequence[Any],
    *,
    backbone: Any = None,
    config: SourceConfig | None = None,
    init: Prefix | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Clock | None = None,
) -> tuple[Prefix, SourceSummary]:
    """Train a source KV block over ``speakers``; keep the best on ``val`` replies."""
    from .methods import mixing, mtml, reptile
    from .methods.prefix import KVBlock

    config = config or SourceConfig()
    clock = clock or time.monotonic
    speakers = [s for s in speakers if s.examples]
    if len(speakers) < 2:
        raise TrainingError("source training needs at least two speakers with replies")
    if not val:
        raise TrainingError("source training needs validation replies")
    if config.method in ("mtml", "amtml") and not all(s.persona for s in speakers):
        raise TrainingError(f"method {config.method} needs a persona description for every speaker")
    torch = torch_module()
    start = clock()
    bb = backbone if isinstance(backbone, TrainBackbone) else load_backbone(backbone)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    enc = [encode(bb.fmt, s.examples, config.context_budget, config.reply_budget) for s in speakers]
    rec = None
    if config.method in ("mtml", "amtml"):
        rec = [encode(bb.fmt, [mtml.reconstruction_example(e, s.persona) for e in s.examples],
                      config.context_budget, config.reply_budget * 2) for s in speakers]
    val_data = encode(bb.fmt, val, config.context_budget, config.reply_budget)
    sizes = [len(e) for e in enc]
    rates = mixing.speaker_rates(sizes, config.method, config.temperature)

    if init is not None:
        start_kv = init.kv.astype(np.float32)
    elif config.init_text:
        start_kv = kv_of_embeddings(bb, text_embeddings(bb, config.init_text, config.prefix_len))
    else:
        start_kv = random_prefix(bb, config.prefix_len, config.seed)
    block = KVBlock(start_kv)
    theta = block.kv  # (layers, 2, kv_heads, P, head_dim)

    def loss_on(batch):
        return batch_mean_loss(bb, batch, kv=theta)

    if config.method in ("plain", "temperature"):
        opt = torch.optim.AdamW([theta], lr=config.lr, weight_decay=0.0)
        items = (mixing.plain_batches(enc, config.batch_size, rng) if config.method == "plain"
                 else mixing.temperature_batches(enc, rates, config.batch_size, rng))

        def step(batch):
            return gradient_step(opt, [theta], lambda: loss_on(batch), config.grad_clip)
    else:
        opt = None
        items = reptile.speaker_draws(len(enc), config.outer_batch, rng, rates)

        def inner_loss(i):
            loss = loss_on(mixing.draw(enc[i], config.batch_size, rng))
            if config.method == "mtml":
                loss = mtml.mtml_loss(loss, loss_on(mixing.draw(rec[i], config.batch_size, rng)), config.alpha)
            return loss

        def reconstruction(i, inner_opt):  # amtml: the outer loop's turn
            mtml.amtml_reconstruction_step(inner_opt, lambda: loss_on(mixing.draw(rec[i], config.batch_size, rng)),
                                           config.alpha)

        def step(who):
            return reptile.reptile_step(
                [theta], [int(i) for i in who], inner_steps=config.inner_steps, inner_loss=inner_loss,
                make_optimizer=lambda ps: torch.optim.AdamW(ps, lr=config.lr, weight_decay=0.0),
                grad_clip=config.grad_clip, outer_lr=config.outer_lr,
                after_inner=reconstruction if config.method == "amtml" else None)

    def evaluate() -> float:
        return mean_loss(bb, val_data, kv=theta.detach(), batch_size=config.batch_size)

    def export(meta: dict | None = None) -> Prefix:
        return Prefix(block.block(), bb.fingerprint, method=f"source-{config.method}", meta=meta or {})

    loop = LoopConfig(total_steps=config.steps, max_steps=config.steps,
                      eval_every=config.eval_every or max(1, config.steps // 4),
                      schedule="warmup-linear" if opt is not None else "constant", warmup=config.warmup,
                      max_seconds=config.max_minutes * 60 if config.max_minutes else None,
                      label="source training", cancel_message="source training interrupted; nothing was saved")
    result = run(Trainable(block.params, items, step, evaluate, opt, export), loop, progress=progress,
                 should_stop=should_stop, clock=clock, started=start)
    stopped = "steps" if result.stopped == "max-steps" else result.stopped
    summary = SourceSummary(config.method, len(speakers), sum(sizes), len(val_data), result.steps,
                            result.init_val_loss, result.best_val_loss, result.best_step, clock() - start, stopped,
                            [(s, v) for s, _, v in result.history])
    meta = {**summary.as_meta(), "prefix_len": config.prefix_len, "seed": config.seed}
    meta.pop("curve", None)
    return export(meta), summary


