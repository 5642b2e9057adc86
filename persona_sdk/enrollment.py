"""Enrollment: chats → examples → trainer → vault, as one function.

``enroll("chats.json", me="Ana", name="ana")`` reads the chat export, picks
"my" replies, trains a personal KV block (from the shipped source prefix by
default) and stores it encrypted as a profile. Everything checkable is checked
before training starts: the profile name (and that it is free unless
``force``), the chats, who "me" is, that there are enough replies, the source
prefix. Nothing is written until training has finished; an interruption
(Ctrl-C) raises :class:`EnrollmentCancelled` and leaves the vault unchanged (the
exception carries the best block so far and the profile name it was meant for).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import ConfigError, EnrollmentCancelled, SourcePrefixError, TrainingError

if TYPE_CHECKING:  # pragma: no cover
    from .reply_examples import ExampleReport
    from .prefix import Prefix
    from .trainer import TrainConfig, TrainProgress, TrainSummary

SAVE_RESERVE_MINUTES = 0.15  # process start-up, key derivation and the atomic write, with margin
SOURCE_DEFAULT = "default"  # the shipped source prefix (when it fits the backbone)
SOURCE_NONE = "none"


@dataclass
class EnrollResult:
    """What enrollment produced (numbers and names only, never chat text)."""

    name: str
    path: Path | None  # the vault file (None if not saved)
    prefix: "Prefix"
    summary: "TrainSummary"
    report: "ExampleReport"
    me: str
    backbone: Path
    source: str  # "shipped", a file path, or "none"
    notes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


def profile_name_for(me: str) -> str:
    """A valid profile name derived from a sender name."""
    from .vault import _valid_name

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", me.strip()).lower()[:64].strip("-._")
    name = re.sub(r"\.{2,}", ".", name)
    if name and not _valid_name(name):  # e.g. a Windows device name ("con")
        name = f"{name[:56]}-persona"
    return name if _valid_name(name) else "me"


def check_trained(summary: "TrainSummary", config: "TrainConfig", lr: float | None = None) -> None:
    """Refuse to save a persona that training never moved from where it started.

    0 steps (the time budget ran out first, e.g. on a loaded machine), or steps of which
    none improved the validation loss: the block is the starting prefix, not yours.
    (The best-so-far of an interrupted run that did improve is offered separately.)
    ``lr`` is the learning rate the run used (the advice names a third of it).
    """
    if summary.steps == 0:
        budget = f" of --max-minutes {config.max_minutes:g}" if config.max_minutes else ""
        raise TrainingError(
            f"training made no step in the time budget{budget} (reading and loading used it up; stopped: "
            f"{summary.stopped}); nothing was saved -- give it more time or run when the machine is less busy")
    if summary.best_step == 0:
        raise TrainingError(
            f"none of the {summary.steps} training steps improved the validation loss on the starting prefix "
            f"({summary.init_val_loss:.3f}); nothing was saved -- train longer (--epochs, --max-minutes) "
            + (f"or with a gentler --lr (e.g. {lr / 3:.2g})" if lr else "or with another --lr"))


def resolve_source(source: str | Path | None, backbone_dir: Path, fingerprint: str,
                   notes: list[str]) -> tuple["Prefix | None", str]:
    """(source prefix or None, label). The default is the shipped prefix if it fits this backbone."""
    from . import source as src

    if source is None or str(source) == SOURCE_NONE:
        return None, SOURCE_NONE
    if str(source) == SOURCE_DEFAULT:
        if not src.shipped_available():
            notes.append("no shipped source prefix in this install; starting from a random prefix")
            return None, SOURCE_NONE
        prefix = src.load_source()
        if prefix.backbone != fingerprint:
            notes.append("the shipped source prefix is for the default backbone; starting from a random prefix")
            return None, SOURCE_NONE
        return prefix, "shipped"
    prefix = src.load_source(source)
    if prefix.backbone != fingerprint:
        raise SourcePrefixError(f"source prefix {Path(source).name} was trained for another backbone")
    return prefix, str(source)


def enroll(
    chats_path: str | Path,
    *,
    me: str | None = None,
    name: str | None = None,
    fmt: str | None = None,
    method: str | None = None,
    prefix_len: int | None = None,
    max_minutes: float | None = None,
    backbone: str | Path | None = None,
    source: str | Path | None = SOURCE_DEFAULT,
    passphrase: str | None = None,
    force: bool = False,
    progress: Callable[["TrainProgress"], None] | None = None,
    config: "TrainConfig | None" = None,
    vault: Any = None,
    save: bool = True,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] | None = None,
) -> EnrollResult:
    """Learn the persona of ``me`` from ``chats_path`` and store it as profile ``name``.

    ``source``: ``"default"`` (the shipped source prefix), a file, or ``"none"``.
    ``config`` holds the trainer settings (default ``TrainConfig()``); ``method``,
    ``prefix_len`` and ``max_minutes`` win over it only when given (not None). Its
    ``lr`` None is the library's policy (:meth:`TrainConfig.learning_rate`), the
    same for every caller.
    ``passphrase`` None: ``PERSONA_PASSPHRASE`` or the vault's keyring mode.
    ``clock`` (seconds, monotonic) times the ``max_minutes`` budget, which covers
    the whole enrollment. Raises before training for every input problem.
    """
    from dataclasses import replace

    from . import backbone as bb_mod
    from .chats import load_chats, resolve_me
    from .conversation import ChatFormat, count_tokens_fn
    from .reply_examples import MIN_REPLIES, build_examples
    from .trainer import TrainConfig, check_enough, load_backbone, train_prefix
    from .vault import Vault, validate_name

    clock = clock or time.monotonic
    start = clock()
    given = {"method": method, "prefix_len": prefix_len, "max_minutes": max_minutes}
    cfg = replace(config or TrainConfig(), **{k: v for k, v in given.items() if v is not None})
    if fmt is not None and fmt == "auto":
        fmt = None
    vault = vault if vault is not None else Vault()
    notes: list[str] = []

    # --- everything checkable before the expensive part
    chats = load_chats(chats_path, fmt)
    who = resolve_me(chats, me)
    name = validate_name(name if name is not None else profile_name_for(who))
    if save and not force and vault.exists(name):
        from .errors import ProfileExistsError

        raise ProfileExistsError(f"profile {name!r} already exists (use --force to replace it)")
    model_dir = bb_mod.resolve(backbone)
    from tokenizers import Tokenizer

    tok_file = Path(model_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise ConfigError(f"backbone {model_dir} has no tokenizer.json")
    fmt_ = ChatFormat(Tokenizer.from_file(str(tok_file)))
    examples = build_examples(chats, who, count_tokens=count_tokens_fn(fmt_, at_most=cfg.context_budget),
                              context_budget=cfg.context_budget,
                              val_fraction=cfg.val_fraction, seed=cfg.seed,
                              min_replies=max(MIN_REPLIES, cfg.min_examples))
    check_enough(len(examples.train), cfg)
    if cfg.dp is not None:  # private: the extra and the delta it can promise, before the model loads
        from .training.methods.dp import check_delta, require_opacus

        require_opacus()
        check_delta(len(examples.train), cfg.dp)
    from .voice import enrollment_meta

    # topic words + salted digests (for `persona eval`), median reply tokens (the chat-time length pull)
    voice_meta = enrollment_meta(examples.train, examples.val, count_tokens=count_tokens_fn(fmt_))
    fingerprint = bb_mod.fingerprint(model_dir)
    init, source_label = (None, SOURCE_NONE)
    if cfg.method == "prefix":
        init, source_label = resolve_source(source, Path(model_dir), fingerprint, notes)
        if init is not None and init.length != cfg.prefix_len:
            raise SourcePrefixError(
                f"the source prefix has {init.length} virtual tokens; use --prefix-len {init.length} or --source none")

    # --- train (nothing written until it is done)
    tb = load_backbone(model_dir)
    if cfg.max_minutes is not None:
        # the budget is for the whole enrollment: what reading, loading and (after training)
        # encrypting + saving take comes out of the trainer's share
        spent = (clock() - start) / 60
        cfg = replace(cfg, max_minutes=max(cfg.max_minutes - spent - SAVE_RESERVE_MINUTES, 0.05))
    try:
        prefix, summary = train_prefix(examples.train, examples.val or None, backbone=tb, config=cfg, init=init,
                                       progress=progress, should_stop=should_stop, clock=clock)
    except EnrollmentCancelled as exc:
        exc.profile = name  # where a caller that keeps the best block so far saves it
        raise
    prefix.meta.update(source="none" if init is None else ("shipped" if source_label == "shipped" else "file"))
    if cfg.dp is None:  # private: nothing derived from the replies outside the DP-trained block
        prefix.meta.update(voice_meta)  # kept inside the encrypted profile only; `persona info` prints numbers only
    if save:
        check_trained(summary, cfg, prefix.meta.get("lr"))
    path = vault.save(name, prefix, passphrase, force=force) if save else None
    return EnrollResult(name, path, prefix, summary, examples.report, who, Path(model_dir), source_label, notes,
                        clock() - start)

