"""The `persona` command line. One file per command group; heavy imports
live inside the commands so `persona --help` stays instant.

Only the CLI turns a :class:`persona_sdk.errors.PersonaError` into a one-line
message and an exit code; the library raises.
"""

from __future__ import annotations

import sys

from ._app import app

# each command group adds its commands to `app`; `persona --help` lists them in this order
from . import chat, backbone, inspect, profiles, enroll, source, evaluate, serve, explicit  # noqa: E402,F401  isort: skip
from ._common import run_cli

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    return run_cli(app, argv if argv is not None else sys.argv[1:])
