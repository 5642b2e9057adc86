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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, TrainingError
from ..fileio import atomic_write
from ..prefix import Prefix
from .backbone import TrainBackbone, kv_of_embeddings, load_backbone, random_prefix, text_embeddings, torch_module
from .config import SourceConfig
from .corpora import Speaker
from .data import batch_loss, batch_mean_loss, encode, make_batches, mean_loss
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
    import io
    from dataclasses import asdict as as_dict

    torch = torch_module()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    loop = as_dict(st)
    loop["best_state"] = [t.detach().cpu() for t in st.best_state] if st.best_state is not None else None
    data = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "kv": theta.detach().cpu(),
            "optimizer": opt.state_dict() if opt is not None else None, "rng": rng.bit_generator.state,
            "loop": loop}
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_write(path, buf.getvalue(), error=TrainingError)


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
