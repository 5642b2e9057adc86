"""The `persona` Typer application every command group adds its commands to."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="persona",
    help="Learn your implicit persona from your own chats, keep it encrypted, chat in your voice. "
    "Everything runs on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
