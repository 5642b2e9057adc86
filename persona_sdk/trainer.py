"""Train a persona KV block on a frozen backbone (PersonaPKT stage 2).

Methods (every one ends as the KV block the runtime consumes,
``(layers, 2, kv_heads, P, head_dim)``):

- ``prefix`` (default): prefix-tuning of the KV block itself, initialised from a
  source prefix (PersonaPKT). Without a source it starts like ``rand-prefix``.
- ``rand-prefix``: the same, initialised from the KV of P random vocabulary
  tokens run through the backbone (the random-init baseline).
- ``prompt``: prompt-tuning; P soft-prompt embeddings initialised from the
  embeddings of a text, trained at positions 0..P-1 in front of the
  conversation, then compiled into a KV block by one backbone pass.

The block is fed exactly as the runtime does: a ``DynamicCache`` holding the
block, an attention mask with P leading ones, positions starting at P. Loss goes
on reply tokens only, and the LM head runs on those positions only.

torch and transformers are imported inside functions: ``import persona_sdk``
never pays for them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .conversation import ChatFormat, Turn
from .errors import ConfigError, EnrollmentCancelled, MissingDependencyError, TooLittleDataError, SourcePrefixError, TrainingError
from .prefix import Prefix

METHODS = ("prefix", "rand-prefix", "prompt")
BF16_MODES = ("auto", "on", "off")
DEFAULT_PROMPT_INIT = "Reply as yourself: in your own words, tone and style, as you always write to friends."


@dataclass
class TrainConfig:
    """How the personal prefix is trained. Each field's help is in ``HELP``."""

    method: str = "prefix"
    prefix_len: int = 16
    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    warmup: float = 0.06
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    context_budget: int = 112
    reply_budget: int = 48
    eval_every: int = 0
    patience: int = 2
    max_minutes: float | None = None
    max_steps: int = 0
    min_examples: int = 20
    val_fraction: float = 0.1
    seed: int = 0
    bf16: str = "auto"
    prompt_init: str = DEFAULT_PROMPT_INIT

    HELP = {
        "method": f"training method, one of {METHODS}",
        "prefix_len": "P, the number of virtual tokens in the KV block",
        "lr": "AdamW peak learning rate",
        "epochs": "maximum passes over the training replies",
        "batch_size": "examples per optimisation step (length-bucketed)",
        "warmup": "fraction of the steps with linear learning-rate warm-up (0..0.5)",
        "weight_decay": "AdamW weight decay on the KV block / soft prompt",
        "grad_clip": "max gradient L2 norm (0 disables clipping)",
        "context_budget": "max tokens of conversation context in front of a reply (oldest turns dropped)",
        "reply_budget": "max tokens of a reply that are trained on",
        "eval_every": "validate every N steps (0 = once per epoch)",
        "patience": "stop after this many validations without improvement",
        "max_minutes": "wall-clock budget; stops at the best checkpoint so far (None = no limit)",
        "max_steps": "stop after this many optimisation steps (0 = no limit)",
        "min_examples": "refuse to train (before loading the model) with fewer training replies",
        "val_fraction": "share of conversations held out for validation when no split is given",
        "seed": "random seed: same data + seed + config = same prefix",
        "bf16": f"bfloat16 autocast, one of {BF16_MODES} (auto = only if the CPU has native bf16)",
        "prompt_init": "text whose token embeddings initialise the soft prompt (method 'prompt')",
    }

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.bf16 not in BF16_MODES:
            raise ConfigError(f"bf16 must be one of {BF16_MODES}, got {self.bf16!r}")
        positive_ints = ("prefix_len", "epochs", "batch_size", "context_budget", "reply_budget", "patience",
                         "min_examples")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("eval_every", "max_steps", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.warmup <= 0.5:
            raise ConfigError(f"warmup must be a fraction in [0, 0.5], got {self.warmup!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("weight_decay and grad_clip must be >= 0")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0 or None, got {self.max_minutes!r}")
        if self.prefix_len > 256:
            raise ConfigError(f"prefix_len must be at most 256, got {self.prefix_len}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "prompt_init"}


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


# --- the backbone, loaded for training ------------------------------------------
@dataclass
class TrainBackbone:
    """A frozen torch backbone + its chat format, spec and fingerprint."""

    path: Path
    model: Any  # transformers LlamaForCausalLM-like, eval(), requires_grad False
    fmt: ChatFormat
    fingerprint: str
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - the [train] extra is missing
        raise MissingDependencyError("training needs the [train] extra: pip install 'persona-sdk[train]'") from None
    return torch


def load_backbone(path: str | Path | None) -> TrainBackbone:
    """Load a backbone directory (None = the embedded default) for training."""
    from tokenizers import Tokenizer

    from . import backbone as bb

    torch = _torch()
    from transformers import AutoModelForCausalLM

    model_dir = bb.resolve(path)
    spec = bb.spec_of(model_dir)
    tok_file = Path(model_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise TrainingError(f"{model_dir} has no tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return TrainBackbone(Path(model_dir), model, ChatFormat(Tokenizer.from_file(str(tok_file))),
                         bb.fingerprint(model_dir), spec.layers, spec.kv_heads, spec.head_dim, spec.hidden)


# --- data -------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    n_prompt: int  # loss on ids[n_prompt:]
    conversation: int


def encode(fmt: ChatFormat, examples: Sequence[Any], context_budget: int, reply_budget: int) -> list[Encoded]:
    """Token ids of examples (anything with ``context``, ``reply``, ``conversation``)."""
    out = []
    for ex in examples:
        ids, n_prompt = fmt.example_ids(tuple(ex.context), ex.reply, context_budget, reply_budget)
        out.append(Encoded(tuple(ids), n_prompt, int(getattr(ex, "conversation", 0))))
    return out


def split_by_conversation(examples: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): whole conversations go to validation, at least one."""
    convs = sorted({int(getattr(e, "conversation", 0)) for e in examples})
    if len(convs) < 2:
        # one conversation: hold out its last replies (still no overlap of replies)
        n_val = max(1, int(round(len(examples) * fraction)))
        return list(examples[:-n_val]), list(examples[-n_val:])
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(convs))
    n_val = max(1, int(round(len(convs) * fraction)))
    held = set(int(c) for c in order[:n_val])
    return ([e for e in examples if int(getattr(e, "conversation", 0)) not in held],
            [e for e in examples if int(getattr(e, "conversation", 0)) in held])


def make_batches(data: Sequence[Encoded], batch_size: int, rng: np.random.Generator | None) -> list[list[Encoded]]:
    """Length-bucketed batches: similar lengths together, batch order shuffled.

    With ``rng`` None the order is deterministic (for validation)."""
    idx = np.arange(len(data)) if rng is None else rng.permutation(len(data))
    chunk = batch_size * 32  # sort within chunks so epochs still differ
    batches = []
    for start in range(0, len(idx), chunk):
        part = sorted(idx[start : start + chunk], key=lambda i: len(data[i].ids))
        batches += [[data[i] for i in part[j : j + batch_size]] for j in range(0, len(part), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _collate(batch: Sequence[Encoded]):
    """input_ids (B, L) right-padded; sel (B, L) positions that predict a reply token; targets (B, L)."""
    torch = _torch()
    length = max(len(e.ids) for e in batch)
    ids = torch.zeros((len(batch), length), dtype=torch.long)
    sel = torch.zeros((len(batch), length), dtype=torch.bool)
    tgt = torch.zeros((len(batch), length), dtype=torch.long)
    for b, e in enumerate(batch):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids)
        tgt[b, : n - 1] = ids[b, 1:n]
        sel[b, max(e.n_prompt - 1, 0) : n - 1] = True
    return ids, sel, tgt


# --- forward passes -----------------------------------------------------------------
def _cache_from_kv(kv, batch: int):
    """A DynamicCache holding ``kv`` (layers, 2, kv_heads, P, head_dim) for every batch row."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(kv.shape[0]):
        k = kv[layer, 0].unsqueeze(0).expand(batch, -1, -1, -1)  # (B, kv_heads, P, head_dim)
        v = kv[layer, 1].unsqueeze(0).expand(batch, -1, -1, -1)
        cache.update(k, v, layer)
    return cache


def _hidden(bb: TrainBackbone, ids, kv=None, soft=None):
    """Final hidden states (B, L, hidden) of ``ids`` behind a KV block, a soft prompt, or nothing."""
    torch = _torch()
    B, L = ids.shape
    if soft is not None:  # soft (P, hidden) at positions 0..P-1, then the conversation
        P = soft.shape[0]
        emb = bb.model.get_input_embeddings()(ids)  # (B, L, hidden)
        x = torch.cat([soft.unsqueeze(0).expand(B, -1, -1), emb], dim=1)
        pos = torch.arange(P + L).unsqueeze(0).expand(B, -1)
        out = bb.model.model(inputs_embeds=x, position_ids=pos, attention_mask=torch.ones(B, P + L, dtype=torch.long),
                              use_cache=False)
        return out.last_hidden_state[:, P:]
    P = 0 if kv is None else kv.shape[3]
    cache = _cache_from_kv(kv, B) if kv is not None else None
    pos = torch.arange(P, P + L).unsqueeze(0).expand(B, -1)
    out = bb.model.model(input_ids=ids, past_key_values=cache, position_ids=pos,
                         attention_mask=torch.ones(B, P + L, dtype=torch.long), use_cache=kv is not None)
    return out.last_hidden_state


def batch_loss(bb: TrainBackbone, batch: Sequence[Encoded], kv=None, soft=None, bf16: bool = False):
    """(sum of reply-token NLL, number of reply tokens) for one batch."""
    torch = _torch()
    ids, sel, tgt = _collate(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = _hidden(bb, ids, kv=kv, soft=soft)[sel]  # (N, hidden) only where a reply token is predicted
        logits = bb.model.lm_head(h)  # (N, vocab)
    loss = torch.nn.functional.cross_entropy(logits.float(), tgt[sel], reduction="sum")
    return loss, int(sel.sum())


def mean_loss(bb: TrainBackbone, data: Sequence[Encoded], kv=None, soft=None, batch_size: int = 8,
              bf16: bool = False) -> float:
    """Mean reply-token NLL (nats) over ``data``; exp() of it is the perplexity."""
    torch = _torch()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in make_batches(data, batch_size, None):
            loss, n = batch_loss(bb, batch, kv=kv, soft=soft, bf16=bf16)
            total += float(loss)
            count += n
    return total / max(count, 1)


def reply_loss(bb: TrainBackbone, examples: Sequence[Any], prefix: Prefix | None, context_budget: int = 112,
               reply_budget: int = 48, batch_size: int = 8) -> float:
    """Mean reply-token NLL of ``examples`` behind ``prefix`` (None = backbone only)."""
    torch = _torch()
    data = encode(bb.fmt, examples, context_budget, reply_budget)
    kv = None
    if prefix is not None:
        prefix.check(fingerprint=bb.fingerprint)
        kv = torch.from_numpy(prefix.kv.astype(np.float32))
    return mean_loss(bb, data, kv=kv, batch_size=batch_size)


def kv_of_embeddings(bb: TrainBackbone, embeds) -> np.ndarray:
    """Run the backbone over embeddings (P, hidden) at positions 0..P-1; return the KV block.

    (layers, 2, kv_heads, P, head_dim) float32 -- this is how a soft prompt (or
    a hard prompt's embeddings) becomes a persona prefix."""
    torch = _torch()
    P = embeds.shape[0]
    with torch.no_grad():
        out = bb.model.model(inputs_embeds=embeds.unsqueeze(0).float(), position_ids=torch.arange(P).unsqueeze(0),
                             attention_mask=torch.ones(1, P, dtype=torch.long), use_cache=True)
        cache = out.past_key_values
        blocks = []
        for layer in range(bb.layers):
            k, v = _cache_layer(cache, layer)  # (1, kv_heads, P, head_dim) each
            blocks.append(torch.stack([k[0], v[0]]))
    return torch.stack(blocks).float().numpy().copy()


def _cache_layer(cache, layer: int):
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache[layer]  # pragma: no cover - older transformers


def random_prefix(bb: TrainBackbone, length: int, seed: int) -> np.ndarray:
    """The rand-init block: KV of ``length`` random vocabulary tokens (seeded)."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    vocab = bb.model.get_input_embeddings().weight.shape[0]
    ids = torch.from_numpy(rng.integers(0, vocab, size=length)).long()
    return kv_of_embeddings(bb, bb.model.get_input_embeddings()(ids))


def text_embeddings(bb: TrainBackbone, text: str, length: int):
    """Soft-prompt init: embeddings of ``text``'s tokens, repeated/cut to ``length``. (P, hidden)"""
    torch = _torch()
    ids = bb.fmt.encode(text) or [0]
    ids = (ids * (length // len(ids) + 1))[:length]
    return bb.model.get_input_embeddings()(torch.tensor(ids)).detach().clone()


def bf16_supported() -> bool:
    """True if the CPU has native bf16 math (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --- the trainer --------------------------------------------------------------------
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


def train_prefix(
    train: Sequence[Any],
    val: Sequence[Any] | None = None,
    *,
    backbone: TrainBackbone | str | Path | None = None,
    config: TrainConfig | None = None,
    init: Prefix | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Prefix, TrainSummary]:
    """Train a personal KV block on ``train`` replies; validate on ``val``.

    ``val`` None: a ``val_fraction`` of the conversations is held out. ``init``
    is the source prefix for method ``prefix`` (ignored otherwise). Returns the
    best-on-validation block and a summary. Ctrl-C (or ``should_stop()``)
    raises :class:`EnrollmentCancelled` carrying the best block so far.
    """
    config = config or TrainConfig()
    if val is None or len(val) == 0:
        train, val = split_by_conversation(list(train), config.val_fraction, config.seed)
    check_enough(len(train), config)
    if not val:
        raise TooLittleDataError("no validation replies (need at least two conversations or more replies)")
    torch = _torch()
    say = progress or (lambda p: None)
    start = time.monotonic()
    say(TrainProgress("load"))
    bb = backbone if isinstance(backbone, TrainBackbone) else load_backbone(backbone)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    use_bf16 = config.bf16 == "on" or (config.bf16 == "auto" and bf16_supported())

    train_data = encode(bb.fmt, train, config.context_budget, config.reply_budget)
    val_data = encode(bb.fmt, val, config.context_budget, config.reply_budget)

    # --- parameters
    soft = None
    if config.method == "prompt":
        soft = torch.nn.Parameter(text_embeddings(bb, config.prompt_init, config.prefix_len))  # (P, hidden)
        params = [soft]
    else:
        if config.method == "prefix" and init is not None:
            _check_init(init, bb, config.prefix_len)
            start_kv = init.kv.astype(np.float32)
        else:
            start_kv = random_prefix(bb, config.prefix_len, config.seed)
        kv = torch.nn.Parameter(torch.from_numpy(start_kv.copy()))  # (layers, 2, kv_heads, P, head_dim)
        params = [kv]

    def current_kv() -> np.ndarray:
        if soft is not None:
            return kv_of_embeddings(bb, soft.detach())
        return kv.detach().numpy().copy()

    def evaluate() -> float:
        if soft is not None:
            return mean_loss(bb, val_data, soft=soft.detach(), batch_size=config.batch_size, bf16=use_bf16)
        return mean_loss(bb, val_data, kv=kv.detach(), batch_size=config.batch_size, bf16=use_bf16)

    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    warm = max(1, int(round(config.warmup * total))) if config.warmup > 0 else 0
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    eval_every = config.eval_every or steps_per_epoch
    budget = config.max_minutes * 60 if config.max_minutes else None

    try:
        t_eval = time.monotonic()
        init_val = evaluate()
        eval_cost = time.monotonic() - t_eval
    except KeyboardInterrupt:
        raise EnrollmentCancelled() from None
    best_val, best_step, best_state = init_val, 0, [p.detach().clone() for p in params]
    history: list = [(0, None, init_val)]
    say(TrainProgress("eval", 0, total, 0, None, init_val, best_val, time.monotonic() - start))

    def best_prefix() -> Prefix:
        with torch.no_grad():
            for p, b in zip(params, best_state):
                p.copy_(b)
        return Prefix(current_kv(), bb.fingerprint, method=config.method)

    step, bad, stopped, running = 0, 0, "epochs", None
    train_start = time.monotonic()
    try:
        done = False
        for epoch in range(config.epochs):
            for batch in make_batches(train_data, config.batch_size, rng):
                if config.max_steps and step >= config.max_steps:
                    stopped, done = "max-steps", True
                    break
                now = time.monotonic()
                per_step = (now - train_start) / step if step else 0.0
                if budget is not None and (now - start) + 1.5 * per_step + eval_cost > budget:  # margin: load varies
                    stopped, done = "max-minutes", True
                    break
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt
                opt.zero_grad(set_to_none=True)
                loss_sum, n_tok = batch_loss(bb, batch, kv=None if soft is not None else kv, soft=soft, bf16=use_bf16)
                loss = loss_sum / max(n_tok, 1)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                sched.step()
                step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(f"training diverged at step {step} (loss is not finite); try a lower lr")
                running = value if running is None else 0.9 * running + 0.1 * value
                elapsed = time.monotonic() - start
                eta = (time.monotonic() - train_start) / step * (total - step)
                val_loss = None
                if step % eval_every == 0 or step == total:
                    val_loss = evaluate()
                    history.append((step, running, val_loss))
                    if val_loss < best_val - 1e-4:
                        best_val, best_step, bad = val_loss, step, 0
                        best_state = [p.detach().clone() for p in params]
                    else:
                        bad += 1
                say(TrainProgress("train", step, total, epoch, running, val_loss, best_val, elapsed, eta))
                if bad >= config.patience:
                    stopped, done = "early-stop", True
                    break
            if done:
                break
        # validate the last steps if they were not yet
        if step and history[-1][0] != step:
            val_loss = evaluate()
            history.append((step, running, val_loss))
            if val_loss < best_val - 1e-4:
                best_val, best_step = val_loss, step
                best_state = [p.detach().clone() for p in params]
    except KeyboardInterrupt:
        raise EnrollmentCancelled(best=best_prefix() if best_step else None) from None
    prefix = best_prefix()
    summary = TrainSummary(config.method, len(train_data), len(val_data), step, round(step / steps_per_epoch, 3),
                           init_val, best_val, best_step, time.monotonic() - start, stopped, use_bf16, history)
    prefix.meta.update(summary.as_meta())
    prefix.meta.update(prefix_len=config.prefix_len, lr=config.lr, seed=config.seed)
    say(TrainProgress("done", step, total, config.epochs, running, None, best_val, summary.wall_seconds, 0.0))
    return prefix, summary


def _check_init(init: Prefix, bb: TrainBackbone, prefix_len: int) -> None:
    from .prefix import PrefixSpec

    try:
        init.check(PrefixSpec(bb.layers, bb.kv_heads, init.length, bb.head_dim), bb.fingerprint)
    except Exception as exc:
        raise SourcePrefixError(f"the source prefix does not fit this backbone: {exc}") from None
    if init.length != prefix_len:
        raise SourcePrefixError(
            f"the source prefix has {init.length} virtual tokens but prefix_len is {prefix_len}; "
            "use the same length or no source"
        )


__all__ = ["TrainConfig", "TrainProgress", "TrainSummary", "TrainBackbone", "train_prefix", "load_backbone",
           "reply_loss", "kv_of_embeddings", "split_by_conversation", "make_batches", "encode", "METHODS", "Turn"]
