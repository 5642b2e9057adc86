"""Profile commands: list, info, delete, rekey, export, import.

Passphrases come from the environment (``PERSONA_PASSPHRASE``,
``PERSONA_NEW_PASSPHRASE`` for rekey, ``PERSONA_EXPORT_PASSPHRASE``) or a
hidden prompt, confirmed whenever a new one is set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from ._common import err, prompt_passphrase

ENV_NEW_PASSPHRASE = "PERSONA_NEW_PASSPHRASE"


def _vault():
    from persona_sdk.vault import Vault

    return Vault()


def _unlock(vault, name: str) -> Any:
    """What opens profile ``name``: the keyring, or its passphrase (env or prompt)."""
    from persona_sdk.vault import ENV_PASSPHRASE, KEYRING

    if vault.info(name).mode == "keyring":
        return KEYRING
    return prompt_passphrase(ENV_PASSPHRASE, confirm=False, label=f"Passphrase for {name}")


def _new_key(env_var: str, use_keyring: bool, label: str) -> Any:
    """A new key: the OS keyring if asked for and present, else a confirmed passphrase."""
    from persona_sdk.vault import KEYRING, keyring_available

    if use_keyring:
        if keyring_available():
            return KEYRING
        err("No OS keyring is available here; protecting the profile with a passphrase instead.")
    return prompt_passphrase(env_var, confirm=True, label=label)


def _ago(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@app.command("list")
def list_profiles() -> None:
    """List the encrypted profiles on this machine (name, key mode, backbone, size, modified).

    Example: persona list
    """
    vault = _vault()
    names = vault.list()
    if not names:
        err(f"No profiles yet in {vault.root}.")
        return
    for name in names:
        info = vault.info(name)
        typer.echo(f"{name}\t{info.mode}\t{info.backbone[:12]}\t{info.file_bytes} B\t{_ago(info.modified)}")


@app.command("info")
def info(
    name: str = typer.Argument(..., help="Profile name."),
    unlock: bool = typer.Option(True, "--unlock/--no-unlock",
                                help="Decrypt to show the prefix shape, method and summary numbers."),
) -> None:
    """Show what is known about a profile; with --unlock (default) also its prefix shape and stats.

    Example: persona info me --no-unlock
    """
    vault = _vault()
    meta = vault.info(name)
    typer.echo(f"name: {meta.name}")
    typer.echo(f"file: {meta.path}")
    typer.echo(f"format: persona file v{meta.format_version}, AES-256-GCM, key-committed")
    if meta.kdf is not None:
        typer.echo(f"key: passphrase (Argon2id {meta.kdf.memory_kib // 1024} MiB, "
                   f"{meta.kdf.iterations} passes, {meta.kdf.lanes} lanes)")
    else:
        typer.echo("key: OS keyring")
    typer.echo(f"backbone: {meta.backbone}")
    typer.echo(f"size: {meta.file_bytes} bytes ({meta.payload_bytes} encrypted payload)")
    typer.echo(f"modified: {_ago(meta.modified)}")
    if not unlock:
        return
    prefix = vault.load(name, _unlock(vault, name))
    spec = prefix.spec
    typer.echo(f"prefix: {spec.length} virtual tokens x {spec.layers} layers x {spec.kv_heads} KV heads "
               f"x {spec.head_dim} dims ({spec.dtype}, {prefix.kv.nbytes} bytes)")
    typer.echo(f"method: {prefix.method}")
    if prefix.meta.get("dp"):
        m = prefix.meta
        typer.echo(f"privacy: ({m.get('dp_epsilon'):g}, {m.get('dp_delta'):g})-differentially private per training "
                   f"reply (DP-SGD, {m.get('dp_accountant')} accountant; epsilon spent {m.get('dp_epsilon_spent'):g})")
    for key in sorted(prefix.meta):
        value = prefix.meta[key]
        if isinstance(value, (int, float, bool)) or value is None:  # summary numbers only
            typer.echo(f"meta.{key}: {value}")


@app.command("delete")
def delete(
    name: str = typer.Argument(..., help="Profile name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a profile (and its OS-keyring key). Cannot be undone; export first to keep a copy.

    Example: persona delete old-me --yes
    """
    import sys

    vault = _vault()
    vault.info(name)  # raises ProfileNotFoundError early
    if not yes:
        if not sys.stdin.isatty():
            from persona_sdk.errors import PersonaError

            raise PersonaError("refusing to delete without confirmation: pass --yes")
        typer.confirm(f"Delete profile {name!r}? This cannot be undone", abort=True)
    vault.delete(name)
    err(f"Deleted profile {name!r}.")


@app.command("rekey")
def rekey(
    name: str = typer.Argument(..., help="Profile name."),
    keyring: bool = typer.Option(False, "--keyring",
                                 help="Keep the new key in the OS keyring instead of a passphrase."),
) -> None:
    """Change a profile's passphrase (or move its key to the OS keyring with --keyring).

    Non-interactive: PERSONA_PASSPHRASE (current) and PERSONA_NEW_PASSPHRASE (new).
    Example: persona rekey me
    """
    vault = _vault()
    old = _unlock(vault, name)
    new = _new_key(ENV_NEW_PASSPHRASE, keyring, "New passphrase")
    vault.rekey(name, old, new)
    err(f"Profile {name!r} re-encrypted.")


@app.command("export")
def export(
    name: str = typer.Argument(..., help="Profile name."),
    output: Path = typer.Option(..., "--output", "-o", help="Export file to write, e.g. me.persona."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output file if it exists."),
) -> None:
    """Write a profile to an encrypted file (its own export passphrase) to carry to another device.

    Non-interactive: PERSONA_PASSPHRASE (vault) and PERSONA_EXPORT_PASSPHRASE (export file).
    Example: persona export me -o me.persona
    """
    from persona_sdk.vault import ENV_EXPORT_PASSPHRASE

    vault = _vault()
    vault.info(name)
    if output.exists() and not force:
        from persona_sdk.errors import ProfileExistsError

        raise ProfileExistsError(f"{output} already exists (use --force to overwrite it)")
    unlock = _unlock(vault, name)
    export_pw = prompt_passphrase(ENV_EXPORT_PASSPHRASE, confirm=True, label="Export passphrase")
    out = vault.export(name, output, unlock, export_pw, force=force)
    err(f"Exported {name!r} to {out} (encrypted; bound to backbone {vault.info(name).backbone[:12]}).")
    typer.echo(str(out))


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="Export file made by `persona export`."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name (default: the file name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing profile of that name."),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", help="Backbone folder in use (default: the embedded default backbone)."),
    keyring: bool = typer.Option(False, "--keyring",
                                 help="Keep the profile's key in the OS keyring instead of a passphrase."),
) -> None:
    """Import an exported persona; refuses one made for a different backbone.

    Non-interactive: PERSONA_EXPORT_PASSPHRASE (export file) and PERSONA_PASSPHRASE (vault).
    Example: persona import me.persona --name me
    """
    from persona_sdk import _crypto, backbone as bb
    from persona_sdk.errors import BackboneMismatchError, ProfileExistsError
    from persona_sdk.vault import ENV_EXPORT_PASSPHRASE, ENV_PASSPHRASE, _read_bounded, validate_name

    vault = _vault()
    # cheap checks first: structure, backbone, existing profile; then passphrases
    header = _crypto.read_header(_read_bounded(file), kind=_crypto.KIND_EXPORT)
    target = validate_name(name) if name else None
    if target and vault.exists(target) and not force:
        raise ProfileExistsError(f"profile {target!r} already exists (use --force to replace it)")
    fp = bb.fingerprint(bb.resolve(backbone, progress=err))
    if fp != header.fingerprint:
        raise BackboneMismatchError(
            f"{file.name} was made for backbone {header.fingerprint[:16]}, but the backbone in use is "
            f"{fp[:16]}; pass the matching one with --backbone"
        )
    export_pw = prompt_passphrase(ENV_EXPORT_PASSPHRASE, confirm=False, label="Export passphrase")
    new = _new_key(ENV_PASSPHRASE, keyring, "New vault passphrase")
    done = vault.import_file(file, export_pw, new, name=name, force=force, fingerprint=fp)
    err(f"Imported {file.name} as profile {done!r}.")
    typer.echo(done)
