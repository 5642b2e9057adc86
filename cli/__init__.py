"""The `persona` command line. One file per command group; heavy imports
live inside the commands so `persona --help` stays instant.

Only the CLI turns a :class:`persona_sdk.errors.PersonaError` into a one-line
message and an exit code; the library raises.
"""

from __future__ import annotations

import sys

import typer

from ._common import run_cli

app = typer.Typer(
    name="persona",
    help="Learn your implicit persona from your own chats, keep it encrypted, chat in your voice. "
    "Everything runs on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # each module adds its commands to `app`
    for optional in ("chat", "backbone", "inspect", "profiles", "enroll", "source", "evaluate", "explicit"):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != f"{__name__}.{optional}":
                raise


_register()


def main(argv: list[str] | None = None) -> int:
    return run_cli(app, argv if argv is not None else sys.argv[1:])
