"""Shared CLI plumbing: error → message + exit code, stderr helpers, passphrases."""

from __future__ import annotations

import os
import sys
from typing import Sequence

import typer

from persona_sdk.errors import PersonaError


def err(message: str) -> None:
    """Print a status line to stderr (stdout is for results only)."""
    typer.echo(message, err=True)


def run_cli(app: typer.Typer, argv: Sequence[str]) -> int:
    try:
        app(args=list(argv), prog_name="persona", standalone_mode=False)
    except PersonaError as exc:
        err(f"Error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        err("Interrupted.")
        return 130
    except SystemExit as exc:  # typer/click exits (e.g. --help)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception as exc:  # click usage errors
        import click

        # typer >= 0.29 raises usage errors from its own vendored click: same shape (show, exit_code)
        if isinstance(exc, click.exceptions.ClickException) or (
                callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int)):
            exc.show()
            return exc.exit_code
        if isinstance(exc, (click.exceptions.Abort, typer.Abort)):
            err("Aborted.")
            return 1
        raise
    return 0


def prompt_passphrase(env_var: str, confirm: bool, label: str = "Passphrase") -> str:
    """From ``env_var`` if set, else a hidden prompt (confirmed on creation)."""
    value = os.environ.get(env_var)
    if value:
        return value
    if not sys.stdin.isatty():
        raise PersonaError(f"no passphrase: set {env_var} or run in a terminal")
    return typer.prompt(label, hide_input=True, confirmation_prompt=confirm)
