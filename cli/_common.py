"""Shared CLI plumbing: error → message + exit code, stderr helpers, passphrases and vault keys,
options that take their default and help from the library's config dataclasses."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings
from dataclasses import fields
from typing import Any, Callable, Iterator, Sequence

import typer

from persona_sdk.errors import PersonaError


def err(message: str) -> None:
    """Print a status line to stderr (stdout is for results only)."""
    typer.echo(message, err=True)


def _usage_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(click-style errors that know how to show themselves, abort signals).

    typer >= 0.26 raises its own vendored copy of click's exceptions (``typer._click``),
    older typer raises click's; catch whichever this install uses.
    """
    shown: list[type] = []
    aborts: list[type] = [typer.Abort]
    try:
        from typer._click import exceptions as vendored

        shown.append(vendored.ClickException)
    except ImportError:  # typer without a vendored click
        pass
    try:
        import click.exceptions

        shown.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(shown), tuple(aborts)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one plain line: no source path, no code line."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    err(f"Warning: {text}")


def run_cli(app: typer.Typer, argv: Sequence[str]) -> int:
    shown, aborts = _usage_exceptions()
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        rc = app(args=list(argv), prog_name="persona", standalone_mode=False)
    except PersonaError as exc:
        err(f"Error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        err("Interrupted.")
        return 130
    except SystemExit as exc:  # typer/click exits (e.g. --help)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except shown as exc:  # usage errors: click's message, exit code 2
        exc.show()
        return exc.exit_code
    except aborts:  # "n" at a confirmation prompt, or end of input at a prompt
        err("Aborted.")
        return 1
    finally:
        warnings.showwarning = previous
    # typer returns the exit code of a typer.Exit (130 for Ctrl-C) in non-standalone mode
    if isinstance(rc, int) and not isinstance(rc, bool):
        if rc == 130:
            err("Interrupted.")
        return rc
    return 0


def prompt_passphrase(env_var: str, confirm: bool, label: str = "Passphrase") -> str:
    """From ``env_var`` if set, else a hidden prompt (confirmed on creation)."""
    value = os.environ.get(env_var)
    if value:
        return value
    if not sys.stdin.isatty():
        raise PersonaError(f"no passphrase: set {env_var} or run in a terminal")
    return typer.prompt(label, hide_input=True, confirmation_prompt=confirm)


def open_vault() -> Any:
    """The vault in the data directory (``PERSONA_HOME``)."""
    from persona_sdk.vault import Vault

    return Vault()


def profile_key(vault: Any, name: str) -> Any:
    """What opens profile ``name``: the keyring, or its passphrase (env or prompt)."""
    from persona_sdk.vault import ENV_PASSPHRASE, KEYRING

    if vault.info(name).mode == "keyring":
        return KEYRING
    return prompt_passphrase(ENV_PASSPHRASE, confirm=False, label=f"Passphrase for {name}")


def new_key(env_var: str, use_keyring: bool, label: str) -> Any:
    """A new key: the OS keyring if asked for and present, else a confirmed passphrase."""
    from persona_sdk.vault import KEYRING, keyring_available

    if use_keyring:
        if keyring_available():
            return KEYRING
        err("No OS keyring is available here; protecting the profile with a passphrase instead.")
    return prompt_passphrase(env_var, confirm=True, label=label)


def config_option(config: type, name: str, *flags: str, note: str = "") -> Any:
    """A typer option whose default and help are field ``name`` of the library's dataclass ``config``
    (the library owns defaults and policies; the CLI only parses). ``note``: what the CLI adds (e.g. how
    a command line says None)."""
    spec = next(f for f in fields(config) if f.name == name)
    return typer.Option(spec.default, *flags, help=spec.metadata["help"] + (f"; {note}" if note else ""))


def backbone_option(*, export_ok: bool = False, note: str = "") -> Any:
    """The ``--backbone`` option, one wording for every command (``export_ok``: an ONNX export folder works too)."""
    what = "Local Hugging Face causal-LM folder" + (" or ONNX export folder" if export_ok else "")
    return typer.Option(None, "--backbone", help=f"{what} (default: the embedded SmolLM2-135M-Instruct)"
                        + (f"; {note}" if note else "") + ".")


@contextlib.contextmanager
def interrupt_flag() -> Iterator[Callable[[], bool]]:
    """Ctrl-C raises KeyboardInterrupt as usual and also sets a flag; yields the flag's getter.

    A long loop passes the getter as ``should_stop``: an interrupt that lands in a finalizer or a
    callback (where Python prints and drops the KeyboardInterrupt) still stops it at the next step.
    """
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return

    def handler(signum, frame):
        hit.set()
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
