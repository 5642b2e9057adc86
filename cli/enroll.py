"""`persona enroll`: learn your persona from your chats and store it encrypted."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from persona_sdk.enrollment import SOURCE_DEFAULT
from persona_sdk.training.config import DPConfig, TrainConfig

from ._app import app
from ._common import backbone_option, config_option, err, interrupt_flag, prompt_passphrase


@app.command()
def enroll(
    chats: Path = typer.Argument(..., help="chat export: chats.json, WhatsApp .txt/.zip, Telegram/Discord JSON, or a folder"),
    me: Optional[str] = typer.Option(None, "--me", help="your sender name in the chats (default: from the file, or the only sender in every chat)"),
    name: Optional[str] = typer.Option(None, "--name", help="profile name (default: derived from --me)"),
    fmt: str = typer.Option("auto", "--format", help="auto, chats, whatsapp, telegram, discord or chitchat"),
    method: str = config_option(TrainConfig, "method", "--method"),
    prefix_len: int = config_option(TrainConfig, "prefix_len", "--prefix-len"),
    max_minutes: float = config_option(TrainConfig, "max_minutes", "--max-minutes", note="0 = no limit"),
    epochs: int = config_option(TrainConfig, "epochs", "--epochs"),
    lr: Optional[float] = config_option(TrainConfig, "lr", "--lr"),
    seed: int = config_option(TrainConfig, "seed", "--seed"),
    backbone: Optional[str] = backbone_option(),
    source: str = typer.Option(SOURCE_DEFAULT, "--source", help="source prefix: default (shipped), a FILE, or none"),
    force: bool = typer.Option(False, "--force", help="replace an existing profile of the same name"),
    private: bool = typer.Option(False, "--private", help="train with differential privacy (DP-SGD with Opacus: the dp extra of persona-sdk)"),
    epsilon: float = config_option(DPConfig, "epsilon", "--epsilon"),
    delta: float = config_option(DPConfig, "delta", "--delta"),
) -> None:
    """Learn your implicit persona from your own chats; store it encrypted on this machine.

    Example: persona enroll chats.json --me Ana --name ana --max-minutes 5
    Private: persona enroll chats.json --me Ana --private --epsilon 8
    """
    from persona_sdk.enrollment import enroll as run_enroll
    from persona_sdk.errors import EnrollmentCancelled
    from persona_sdk.vault import ENV_PASSPHRASE

    from ._progress import TrainBar

    dp = None
    if private:
        from persona_sdk.training.methods.dp import require_opacus

        require_opacus()
        dp = DPConfig(epsilon=epsilon, delta=delta, **({"lr": lr} if lr is not None else {}))
    passphrase = prompt_passphrase(ENV_PASSPHRASE, confirm=True, label="Passphrase for the new profile")
    config = TrainConfig(method=method, prefix_len=prefix_len, epochs=epochs, lr=lr, seed=seed,
                         max_minutes=max_minutes or None, dp=dp)  # --max-minutes 0 = no limit
    try:
        with interrupt_flag() as interrupted:
            result = run_enroll(chats, me=me, name=name, fmt=fmt, backbone=backbone, source=source,
                                passphrase=passphrase, force=force, progress=TrainBar("enrolling"), config=config,
                                should_stop=interrupted)
    except EnrollmentCancelled as exc:
        sys.stderr.write("\n")
        if exc.best is not None and exc.profile and sys.stdin.isatty() and typer.confirm(
                "Interrupted. Keep the best persona so far?", default=False):
            from persona_sdk.vault import Vault

            Vault().save(exc.profile, exc.best, passphrase, force=force)
            err(f"Saved the best checkpoint so far as profile {exc.profile!r}.")
            return
        raise
    s, r = result.summary, result.report
    for note in result.notes:
        err(f"Note: {note}")
    err(f"Learned from {s.train_examples} replies of {result.me!r} ({s.val_examples} held out for validation, "
        f"{r.conversations_with_examples} conversations).")
    start_label = "source prefix alone" if result.source != "none" else "starting prefix"
    err(f"Validation loss {s.best_val_loss:.3f} (perplexity {_ppl(s.best_val_loss):.1f}) vs {s.init_val_loss:.3f} "
        f"({_ppl(s.init_val_loss):.1f}) for the {start_label}; {s.steps} steps, {s.epochs:g} epochs, "
        f"stopped: {s.stopped}, {result.wall_seconds / 60:.1f} min.")
    if dp is not None:
        m = result.prefix.meta
        err(f"Private: ({m['dp_epsilon']:g}, {m['dp_delta']:g})-DP per training reply; spent epsilon "
            f"{m['dp_epsilon_spent']:g} in {s.steps} of {m['dp_steps_planned']} planned steps (clip "
            f"{m['dp_max_grad_norm']:g}, noise multiplier {m['dp_noise_multiplier']:.3g}, sampling rate "
            f"{m['dp_sample_rate']:.3g}).")
    err(f"Saved encrypted profile {result.name!r}.")
    err(f"Chat with it:  persona chat --name {result.name}")
    typer.echo(result.name)


def _ppl(loss: float) -> float:
    import math

    return math.exp(min(loss, 50.0))
