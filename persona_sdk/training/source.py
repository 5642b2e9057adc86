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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, TrainingError
from ..prefix import Prefix
from .backbone import TrainBackbone, kv_of_embeddings, load_backbone, random_prefix, text_embeddings, torch_module
from .corpora import Speaker
from .data import batch_loss, batch_mean_loss, encode, make_batches, mean_loss
from .loop import Clock, LoopConfig, ProgressFn, Trainable, gradient_step, run

SOURCE_METHODS = ("plain", "temperature", "ppreptile", "mtml", "amtml")
META_METHODS = ("ppreptile", "mtml", "amtml")


@dataclass
class SourceConfig:
    """How the source prefix is trained. Each field's help is in ``HELP``."""

    method: str = "plain"
    prefix_len: int = 16
    steps: int = 200
    lr: float = 3e-3
    batch_size: int = 8
    warmup: float = 0.06
    grad_clip: float = 1.0
    temperature: float = 10.0
    inner_steps: int = 3
    outer_batch: int = 2
    outer_lr: float = 1.0
    alpha: float = 0.8
    context_budget: int = 112
    reply_budget: int = 48
    eval_every: int = 0
    max_minutes: float | None = None
    seed: int = 0
    init_text: str | None = None
    shards: int = 0

    HELP = {
        "method": f"one of {SOURCE_METHODS}",
        "prefix_len": "P, virtual tokens of the block",
        "steps": "optimisation steps on batches (for meta methods: inner steps in total)",
        "lr": "AdamW learning rate (plain/temperature) or inner learning rate (meta methods)",
        "batch_size": "examples per step",
        "warmup": "fraction of steps with linear warm-up (plain/temperature)",
        "grad_clip": "max gradient L2 norm (0 disables)",
        "temperature": "T of temperature mixing: speaker rate ∝ n^(1/T)",
        "inner_steps": "k, inner steps per sampled speaker (meta methods)",
        "outer_batch": "speakers per outer step (meta methods)",
        "outer_lr": "β of the outer interpolation θ ← θ + β·mean(W_i − θ)",
        "alpha": "α of L = α·L_res + (1−α)·L_rec (mtml/amtml)",
        "context_budget": "max context tokens in front of a reply",
        "reply_budget": "max reply tokens trained on",
        "eval_every": "validate every N steps (0 = 4 times per run)",
        "max_minutes": "wall-clock budget; stops at the best checkpoint so far",
        "seed": "random seed (same data + config + seed = same block)",
        "init_text": "start from the KV of this text (a hard prompt) instead of P random tokens",
        "shards": ("plain/temperature: split the speakers into this many shards, each drawing batch_size/shards "
                   "of every batch from its own stream (0 = one per process); the data order, and so the "
                   "result, depends on the seed and the shards, not on how many processes run them"),
    }

    def __post_init__(self) -> None:
        if self.method not in SOURCE_METHODS:
            raise ConfigError(f"source method must be one of {SOURCE_METHODS}, got {self.method!r}")
        for name in ("prefix_len", "steps", "batch_size", "inner_steps", "outer_batch", "context_budget",
                     "reply_budget"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and self.outer_lr > 0 and self.temperature > 0):
            raise ConfigError("lr, outer_lr and temperature must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not 0 <= self.warmup <= 0.5:
            raise ConfigError(f"warmup must be in [0, 0.5], got {self.warmup!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError("max_minutes must be > 0 or None")
        if not isinstance(self.shards, int) or self.shards < 0:
            raise ConfigError(f"shards must be a non-negative integer, got {self.shards!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    train_curve: list = field(default_factory=list)  # [(step, running train loss)] at the validations
    world: int = 1  # processes that trained
    shards: int = 1

    def as_meta(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [[int(s), round(float(v), 4)] for s, v in self.curve]
        d["train_curve"] = [[int(s), round(float(v), 6)] for s, v in self.train_curve]
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
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> tuple[Prefix, SourceSummary]:
    """Train a source KV block over ``speakers``; keep the best on ``val`` replies.

    Under a launcher (``torchrun``, ``accelerate launch``) every process calls
    this with the same arguments; see :mod:`persona_sdk.training.distributed`.
    ``checkpoint``: a file rank 0 writes atomically every ``checkpoint_every``
    steps; ``resume`` continues from it, ending where an
    uninterrupted run would."""
    from . import distributed as dd
    from .methods import mixing, mtml, reptile
    from .methods.prefix import KVBlock

    config = config or SourceConfig()
    speakers = [s for s in speakers if s.examples]
    if len(speakers) < 2:
        raise TrainingError("source training needs at least two speakers with replies")
    if not val:
        raise TrainingError("source training needs validation replies")
    if config.method in ("mtml", "amtml") and not all(s.persona for s in speakers):
        raise TrainingError(f"method {config.method} needs a persona description for every speaker")
    if checkpoint_every < 0 or (checkpoint_every and checkpoint is None):
        raise ConfigError("checkpoint_every needs a checkpoint file and must be >= 0")
    ctx = dd.context()
    shards = config.shards or ctx.world
    batched = config.method in ("plain", "temperature")
    if (ctx.distributed or shards > 1) and not batched:
        raise TrainingError(f"method {config.method} runs in one process with one shard; "
                            "plain and temperature run on several (torchrun)")
    if shards < ctx.world:
        raise ConfigError(f"shards ({shards}) must be at least the number of processes ({ctx.world})")
    if config.batch_size % shards:
        raise ConfigError(f"batch_size ({config.batch_size}) must be a multiple of shards ({shards})")
    from dataclasses import replace

    config = replace(config, shards=shards)  # the effective data order, recorded (and checked on resume)
    torch = torch_module()
    clock = dd.synced_clock(ctx, clock or time.monotonic)
    start = clock()
    bb = backbone if isinstance(backbone, TrainBackbone) else load_backbone(backbone)
    if ctx.device != "cpu":
        bb.model.to(ctx.device)
    say = progress if ctx.main else None
    torch.manual_seed(config.seed)
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
    if ctx.device != "cpu":
        with torch.no_grad():
            theta.data = theta.data.to(ctx.device)

    def loss_on(batch):
        return batch_mean_loss(bb, batch, kv=theta)

    def make_items(rng_seed):
        """The step items from the start of the run (a resume replays them to its step)."""
        rng = np.random.default_rng(rng_seed)
        if not batched:
            return rng, reptile.speaker_draws(len(enc), config.outer_batch, rng, rates)
        if shards == 1:
            return rng, (mixing.plain_batches(enc, config.batch_size, rng) if config.method == "plain"
                         else mixing.temperature_batches(enc, rates, config.batch_size, rng))
        per = config.batch_size // shards
        streams = []
        for s, members in enumerate(dd.shard_speakers(sizes, shards)):
            if s % ctx.world != ctx.rank:
                continue
            part = [enc[i] for i in members]
            srng = np.random.default_rng([config.seed, s])
            streams.append(mixing.plain_batches(part, per, srng) if config.method == "plain" else
                           mixing.temperature_batches(part, mixing.speaker_rates([sizes[i] for i in members],
                                                      config.method, config.temperature), per, srng))

        def joined():
            while True:
                yield [e for st in streams for e in next(st)]

        return rng, joined()

    rng, items = make_items(config.seed)
    if batched:
        opt = torch.optim.AdamW([theta], lr=config.lr, weight_decay=0.0)
        if shards == 1 and not ctx.distributed:
            def step(batch):
                return gradient_step(opt, [theta], lambda: loss_on(batch), config.grad_clip)
        else:
            ddp = None
            if ctx.distributed:
                from torch.nn.parallel import DistributedDataParallel

                ddp = DistributedDataParallel(dd.prefix_module(theta),
                                              device_ids=None if ctx.device == "cpu" else [ctx.local_rank])

            def step(batch):
                # the global batch's mean reply-token loss: local sum / global token count, times W
                # (DDP averages the W gradients)
                opt.zero_grad(set_to_none=True)
                loss_sum, n = batch_loss(bb, batch, kv=ddp() if ddp is not None else theta)
                n_all = dd.all_sum(ctx, [n])[0]
                (loss_sum * (ctx.world / max(n_all, 1))).backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_([theta], config.grad_clip)
                opt.step()
                return dd.all_sum(ctx, [float(loss_sum.detach())])[0] / max(n_all, 1)
    else:
        opt = None

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

    val_mine = val_data[ctx.rank::ctx.world]

    def evaluate() -> float:
        if not ctx.distributed:
            return mean_loss(bb, val_data, kv=theta.detach(), batch_size=config.batch_size)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in make_batches(val_mine, config.batch_size, None):
                loss, n = batch_loss(bb, batch, kv=theta.detach())
                total, count = total + float(loss), count + n
        total, count = dd.all_sum(ctx, [total, count])
        return total / max(count, 1)

    def export(meta: dict | None = None) -> Prefix:
        return Prefix(block.block() if ctx.device == "cpu" else theta.detach().cpu().numpy().copy(),
                      bb.fingerprint, method=f"source-{config.method}", meta=meta or {})

    state = None
    if resume:
        state = _load_checkpoint(ctx, checkpoint, config, theta, opt)
        if state is not None:
            rng.bit_generator.state = state.pop("rng")
            if batched:  # replay the batches the checkpoint's steps took (index draws only, no compute)
                rng, items = make_items(config.seed)
                for _ in range(state["loop"].step):
                    next(items)
            state = state["loop"]

    def save(st) -> None:
        if st.step % checkpoint_every == 0:
            _save_checkpoint(ctx, checkpoint, config, theta, opt, rng, st)

    loop = LoopConfig(total_steps=config.steps, max_steps=config.steps,
                      eval_every=config.eval_every or max(1, config.steps // 4),
                      schedule="warmup-linear" if opt is not None else "constant", warmup=config.warmup,
                      max_seconds=config.max_minutes * 60 if config.max_minutes else None,
                      label="source training", cancel_message="source training interrupted; nothing was saved")
    result = run(Trainable(block.params, items, step, evaluate, opt, export), loop, progress=say,
                 should_stop=should_stop, clock=clock, started=start,
                 checkpoint=save if checkpoint_every else None, resume=state)
    stopped = "steps" if result.stopped == "max-steps" else result.stopped
    summary = SourceSummary(config.method, len(speakers), sum(sizes), len(val_data), result.steps,
                            result.init_val_loss, result.best_val_loss, result.best_step, clock() - start, stopped,
                            [(s, v) for s, _, v in result.history],
                            [(s, r) for s, r, _ in result.history if r is not None], ctx.world, shards)
    meta = {**summary.as_meta(), "prefix_len": config.prefix_len, "seed": config.seed}
    meta.pop("curve", None)
    meta.pop("train_curve", None)
    return export(meta), summary


CHECKPOINT_FORMAT = 1


def _save_checkpoint(ctx, path, config: SourceConfig, theta, opt, rng, st) -> None:
    """Rank 0 writes everything a resume needs, atomically (temp file, fsync, rename)."""
    if not ctx.main:
        return
    import os
    from dataclasses import asdict as as_dict

    torch = torch_module()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    loop = as_dict(st)
    loop["best_state"] = [t.detach().cpu() for t in st.best_state] if st.best_state is not None else None
    data = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "kv": theta.detach().cpu(),
            "optimizer": opt.state_dict() if opt is not None else None, "rng": rng.bit_generator.state,
            "loop": loop}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _load_checkpoint(ctx, path, config: SourceConfig, theta, opt) -> dict | None:
    """Rank 0 reads the checkpoint (None if there is none yet) and every rank gets it."""
    from . import distributed as dd
    from .loop import LoopState

    torch = torch_module()
    data = None
    if ctx.main and path is not None and Path(path).is_file():
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise TrainingError(f"checkpoint {Path(path).name} cannot be read ({type(exc).__name__})") from None
    data = dd.broadcast_object(ctx, data)
    if data is None:
        return None
    if data.get("format") != CHECKPOINT_FORMAT or data.get("config") != config.to_dict():
        raise TrainingError(f"checkpoint {Path(path).name} was made with other settings; "
                            "resume with the same options or start afresh without --resume")
    with torch.no_grad():
        theta.copy_(data["kv"].to(theta.device))
    if opt is not None and data["optimizer"] is not None:
        opt.load_state_dict(data["optimizer"])
    loop = dict(data["loop"])
    loop["best_state"] = ([t.to(theta.device) for t in loop["best_state"]]
                          if loop["best_state"] is not None else None)
    return {"rng": data["rng"], "loop": LoopState(**loop)}
