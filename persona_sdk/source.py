"""The source prefix (PersonaPKT stage 1): one KV block trained over many speakers.

Maintainers train it once per backbone (``persona source train``); every
``persona enroll`` then starts from it. Methods:

- ``plain``: batches drawn from all speakers' replies pooled (rate ∝ n).
- ``temperature``: each example's speaker drawn with rate ∝ n^(1/T) (T = 10),
  so prolific speakers do not drown out the rest.
- ``ppreptile``: Reptile on the prefix only. Per outer step, ``outer_batch``
  speakers are sampled; from θ, ``inner_steps`` optimiser steps on that
  speaker's replies give W_i; then θ ← θ + β·mean_i(W_i − θ).
- ``mtml`` / ``amtml``: for corpora with persona descriptions. An auxiliary
  task reconstructs the speaker's concatenated persona sentences from the
  dialogue context (the context, then a fixed "describe yourself" user turn,
  then the description as the target). ``mtml``: inner steps on
  L = α·L_res + (1−α)·L_rec (α = 0.8). ``amtml``: inner steps on L_res, then
  one step on L_rec from the adapted point (the losses alternate between the
  inner and the outer loop). Descriptions are used in training only; the
  resulting block is an ordinary prefix.

Shared machinery (loading, batching, the loss behind a KV block) is
:mod:`persona_sdk.trainer`'s. torch is imported only inside functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .conversation import USER, Turn
from .errors import ConfigError, EnrollmentCancelled, SourcePrefixError, TrainingError
from .prefix import Prefix

SOURCE_METHODS = ("plain", "temperature", "ppreptile", "mtml", "amtml")
META_METHODS = ("ppreptile", "mtml", "amtml")
RECONSTRUCT_PROMPT = "(describe yourself: who are you?)"
SHIPPED_DIR = Path(__file__).parent / "data" / "source_prefix"
SHIPPED_FILE = "source_prefix.safetensors"
SHIPPED_INFO = "SOURCE.json"


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

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Speaker:
    """One speaker's training replies (+ persona sentences, training-only)."""

    id: str
    examples: list  # Example-like: context (tuple[Turn]), reply (str), conversation (int)
    persona: str | None = None


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
    stopped: str
    curve: list = field(default_factory=list)  # [(step, val_loss)]

    def as_meta(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [[int(s), round(float(v), 4)] for s, v in self.curve]
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}


def speaker_rates(sizes: Sequence[int], method: str, temperature: float) -> np.ndarray:
    """Sampling probability of each speaker: ∝ n (plain) or ∝ n^(1/T) (otherwise)."""
    n = np.asarray(sizes, dtype=np.float64)
    if (n <= 0).any():
        raise ConfigError("every speaker needs at least one example")
    w = n if method == "plain" else n ** (1.0 / temperature)
    return w / w.sum()


def reconstruction_example(ex: Any, persona: str) -> Any:
    """MTML's auxiliary example: the context, a fixed request, the persona as target."""
    from types import SimpleNamespace

    return SimpleNamespace(context=tuple(ex.context) + (Turn(USER, RECONSTRUCT_PROMPT),), reply=persona,
                           conversation=getattr(ex, "conversation", 0))


def train_source(
    speakers: Sequence[Speaker],
    val: Sequence[Any],
    *,
    backbone: Any = None,
    config: SourceConfig | None = None,
    init: Prefix | None = None,
    progress: Callable[[Any], None] | None = None,
) -> tuple[Prefix, SourceSummary]:
    """Train a source KV block over ``speakers``; keep the best on ``val`` replies."""
    from . import trainer as tr

    config = config or SourceConfig()
    speakers = [s for s in speakers if s.examples]
    if len(speakers) < 2:
        raise TrainingError("source training needs at least two speakers with replies")
    if not val:
        raise TrainingError("source training needs validation replies")
    if config.method in ("mtml", "amtml") and not all(s.persona for s in speakers):
        raise TrainingError(f"method {config.method} needs a persona description for every speaker")
    torch = tr._torch()
    say = progress or (lambda p: None)
    start = time.monotonic()
    bb = backbone if isinstance(backbone, tr.TrainBackbone) else tr.load_backbone(backbone)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    enc = [tr.encode(bb.fmt, s.examples, config.context_budget, config.reply_budget) for s in speakers]
    rec = None
    if config.method in ("mtml", "amtml"):
        rec = [tr.encode(bb.fmt, [reconstruction_example(e, s.persona) for e in s.examples],
                         config.context_budget, config.reply_budget * 2) for s in speakers]
    val_data = tr.encode(bb.fmt, val, config.context_budget, config.reply_budget)
    sizes = [len(e) for e in enc]
    rates = speaker_rates(sizes, config.method, config.temperature)

    if init is not None:
        start_kv = init.kv.astype(np.float32)
    elif config.init_text:
        start_kv = tr.kv_of_embeddings(bb, tr.text_embeddings(bb, config.init_text, config.prefix_len))
    else:
        start_kv = tr.random_prefix(bb, config.prefix_len, config.seed)
    theta = torch.nn.Parameter(torch.from_numpy(start_kv.copy()))  # (layers, 2, kv_heads, P, head_dim)

    def evaluate() -> float:
        return tr.mean_loss(bb, val_data, kv=theta.detach(), batch_size=config.batch_size)

    def loss_on(batch, kv):
        loss_sum, n = tr.batch_loss(bb, batch, kv=kv)
        return loss_sum / max(n, 1)

    def sample(i: int, k: int, source=None) -> list:
        pool = (source or enc)[i]
        return [pool[j] for j in rng.integers(0, len(pool), size=k)]

    eval_every = config.eval_every or max(1, config.steps // 4)
    init_val = evaluate()
    best_val, best_step, best = init_val, 0, theta.detach().clone()
    curve = [(0, init_val)]
    say(tr.TrainProgress("eval", 0, config.steps, 0, None, init_val, best_val, time.monotonic() - start))
    budget = config.max_minutes * 60 if config.max_minutes else None
    step, stopped, running, next_eval = 0, "steps", None, eval_every

    def after_step(value: float) -> None:
        nonlocal running, best_val, best_step, best, next_eval
        if not math.isfinite(value):
            raise TrainingError(f"source training diverged at step {step}")
        running = value if running is None else 0.9 * running + 0.1 * value
        val_loss = None
        if step >= next_eval or step >= config.steps:
            next_eval += eval_every
            val_loss = evaluate()
            curve.append((step, val_loss))
            if val_loss < best_val:
                best_val, best_step, best = val_loss, step, theta.detach().clone()
        el = time.monotonic() - start
        say(tr.TrainProgress("train", step, config.steps, 0, running, val_loss, best_val, el,
                             el / max(step, 1) * (config.steps - step)))

    def out_of_time() -> bool:
        return budget is not None and time.monotonic() - start > budget

    try:
        if config.method in ("plain", "temperature"):
            opt = torch.optim.AdamW([theta], lr=config.lr, weight_decay=0.0)
            warm = max(1, int(round(config.warmup * config.steps)))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (config.steps - s) / max(1, config.steps - warm)))
            flat = [(i, j) for i, e in enumerate(enc) for j in range(len(e))]
            order: list = []
            while step < config.steps:
                if out_of_time():
                    stopped = "max-minutes"
                    break
                if config.method == "plain":  # epochs over the pooled replies
                    if len(order) < config.batch_size:
                        order += [flat[k] for k in rng.permutation(len(flat))]
                    picks, order = order[: config.batch_size], order[config.batch_size :]
                    batch = [enc[i][j] for i, j in picks]
                else:
                    who = rng.choice(len(enc), size=config.batch_size, p=rates)
                    batch = [sample(int(i), 1)[0] for i in who]
                opt.zero_grad(set_to_none=True)
                loss = loss_on(batch, theta)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_([theta], config.grad_clip)
                opt.step()
                sched.step()
                step += 1
                after_step(float(loss.detach()))
        else:
            while step < config.steps:
                if out_of_time():
                    stopped = "max-minutes"
                    break
                base = theta.detach().clone()
                deltas = []
                who = rng.choice(len(enc), size=config.outer_batch, replace=len(enc) < config.outer_batch, p=rates)
                last = 0.0
                for i in who:
                    w = torch.nn.Parameter(base.clone())
                    inner = torch.optim.AdamW([w], lr=config.lr, weight_decay=0.0)
                    for _ in range(config.inner_steps):
                        inner.zero_grad(set_to_none=True)
                        loss = loss_on(sample(int(i), config.batch_size), w)
                        if config.method == "mtml":
                            rec_loss = loss_on(sample(int(i), config.batch_size, rec), w)
                            loss = config.alpha * loss + (1 - config.alpha) * rec_loss
                        loss.backward()
                        if config.grad_clip:
                            torch.nn.utils.clip_grad_norm_([w], config.grad_clip)
                        inner.step()
                        last = float(loss.detach())
                    if config.method == "amtml":  # the outer loop's turn: reconstruction
                        inner.zero_grad(set_to_none=True)
                        rec_loss = (1 - config.alpha) / max(config.alpha, 1e-6) * loss_on(
                            sample(int(i), config.batch_size, rec), w)
                        rec_loss.backward()
                        inner.step()
                    deltas.append(w.detach() - base)
                with torch.no_grad():
                    theta.copy_(base + config.outer_lr * torch.stack(deltas).mean(0))
                step += config.inner_steps * len(who)
                after_step(last)
        if curve[-1][0] != step and step:
            v = evaluate()
            curve.append((step, v))
            if v < best_val:
                best_val, best_step, best = v, step, theta.detach().clone()
    except KeyboardInterrupt:
        raise EnrollmentCancelled("source training interrupted; nothing was saved") from None
    summary = SourceSummary(config.method, len(speakers), sum(sizes), len(val_data), step, init_val, best_val,
                            best_step, time.monotonic() - start, stopped, curve)
    prefix = Prefix(best.numpy().copy(), bb.fingerprint, method=f"source-{config.method}",
                    meta={**summary.as_meta(), "prefix_len": config.prefix_len, "seed": config.seed})
    prefix.meta.pop("curve", None)
    return prefix, summary


# --- corpora ---------------------------------------------------------------------
def chitchat_part_a(max_speakers: int | None = None, max_per_speaker: int | None = None, max_val: int = 64,
                    seed: int = 0) -> tuple[list[Speaker], list, dict]:
    """Part-A speakers of chitchat-dataset (the evaluation split), their val replies, and provenance."""
    from .examples import build_examples
    from .split import chitchat_split, select

    chats, split = chitchat_split()
    rng = np.random.default_rng(seed)
    part_a = split.part("A")
    if max_speakers is not None:
        part_a = part_a[:max_speakers]  # hash order: a deterministic, unbiased subset
    speakers, val = [], []
    by_id = {c.id: i for i, c in enumerate(chats.conversations)}
    for s in part_a:
        if s.train:
            ex = _examples(build_examples, select(chats, s.train), s.speaker)
            if max_per_speaker is not None and len(ex) > max_per_speaker:
                ex = [ex[i] for i in sorted(rng.choice(len(ex), max_per_speaker, replace=False))]
            if ex:
                speakers.append(Speaker(s.speaker, ex))
        if s.val:
            val += _examples(build_examples, select(chats, s.val), s.speaker)
    del by_id
    if len(val) > max_val:
        val = [val[i] for i in sorted(rng.choice(len(val), max_val, replace=False))]
    ids = "\n".join(sorted(s.id for s in speakers))
    provenance = {
        "corpus": "chitchat-dataset",
        "package_version": _version("chitchat-dataset"),
        "split": {"salt": split.config.salt, "part": "A", **split.summary()["A"]},
        "speakers": len(speakers),
        "speaker_list_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "max_speakers": max_speakers,
        "max_per_speaker": max_per_speaker,
        "val_examples": len(val),
    }
    return speakers, val, provenance


def _examples(build, chats, speaker) -> list:
    from .errors import PersonaError

    try:
        return list(build(chats, speaker, min_replies=0, val_fraction=0.0).train)
    except PersonaError:
        return []


def spc_speakers(csv_path: str | Path, max_conversations: int | None = None) -> list[Speaker]:
    """Synthetic-Persona-Chat CSV → one Speaker per (conversation, side), with persona sentences."""
    import csv

    from .examples import Example

    out = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for ci, row in enumerate(csv.DictReader(fh)):
            if max_conversations is not None and ci >= max_conversations:
                break
            lines = [ln.strip() for ln in row.get("Best Generated Conversation", "").splitlines() if ln.strip()]
            turns = []
            for ln in lines:
                who, _, text = ln.partition(":")
                if who.strip() in ("User 1", "User 2") and text.strip():
                    turns.append((who.strip(), text.strip()))
            for side, col in (("User 1", "user 1 personas"), ("User 2", "user 2 personas")):
                persona = " ".join(x.strip() for x in (row.get(col) or "").splitlines() if x.strip())
                exs = []
                for t in range(1, len(turns)):
                    if turns[t][0] == side:
                        ctx = tuple(Turn("assistant" if w == side else "user", x) for w, x in turns[max(0, t - 6):t])
                        exs.append(Example(ctx, turns[t][1], ci))
                if exs and persona:
                    out.append(Speaker(f"spc-{ci}-{side[-1]}", exs, persona))
    if not out:
        raise TrainingError(f"{csv_path} holds no Synthetic-Persona-Chat conversations")
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# --- the shipped source prefix ---------------------------------------------------
def save_source(prefix: Prefix, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``source_prefix.safetensors`` + ``SOURCE.json`` (with its sha256) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = prefix.to_bytes()
    tmp = out / (SHIPPED_FILE + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out / SHIPPED_FILE)
    info = {**info, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "shape": list(prefix.kv.shape), "backbone": prefix.backbone, "method": prefix.method}
    (out / SHIPPED_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out / SHIPPED_FILE


def load_source(path: str | Path | None = None) -> Prefix:
    """A source prefix file (None = the shipped one); checks the recorded sha256 when present."""
    file = Path(path) if path is not None else SHIPPED_DIR / SHIPPED_FILE
    if file.is_dir():
        file = file / SHIPPED_FILE
    if not file.is_file():
        raise SourcePrefixError(f"source prefix not found: {file}")
    data = file.read_bytes()
    info_file = file.with_name(SHIPPED_INFO)
    if info_file.is_file():
        try:
            want = json.loads(info_file.read_text()).get("sha256")
        except ValueError:
            want = None
        if want and hashlib.sha256(data).hexdigest() != want:
            raise SourcePrefixError(f"{file.name} does not match the sha256 recorded in {SHIPPED_INFO}")
    try:
        return Prefix.from_bytes(data)
    except Exception as exc:
        raise SourcePrefixError(f"{file} is not a valid prefix file ({exc})") from None


def shipped_available() -> bool:
    return (SHIPPED_DIR / SHIPPED_FILE).is_file()
