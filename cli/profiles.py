"""Profile commands: list, info, delete, rekey, export, import.

Passphrases come from the environment (``PERSONA_PASSPHRASE``,
``PERSONA_NEW_PASSPHRASE`` for rekey, ``PERSONA_EXPORT_PASSPHRASE``) or a
hidden prompt, confirmed whenever a new one is set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._common import err, new_key, open_vault, profile_key, prompt_passphrase
from ._peft import Format, export_peft, import_peft

ENV_NEW_PASSPHRASE = "PERSONA_NEW_PASSPHRASE"


def _ago(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@app.command("list")
def list_profiles() -> None:
    """List the encrypted profiles on this machine (name, key mode, backbone, size, modified).

    Example: persona list
    """
    from persona_sdk.errors import PersonaError, VaultError

    vault = open_vault()
    names = vault.list()
    if not names:
        err(f"No profiles yet in {vault.root}.")
        return
    bad = 0
    for name in names:  # every profile; an unreadable one is marked and does not hide the rest
        try:
            info = vault.info(name)
        except PersonaError as exc:
            bad += 1
            typer.echo(f"{name}\tunreadable\t{exc}")
            continue
        typer.echo(f"{name}\t{info.mode}\t{info.backbone[:12]}\t{info.file_bytes} B\t{_ago(info.modified)}")
    if bad:
        raise VaultError(f"{bad} of {len(names)} profiles cannot be read (marked unreadable above)")


@app.command("info")
def info(
    name: str = typer.Argument(..., help="Profile name."),
    unlock: bool = typer.Option(True, "--unlock/--no-unlock",
                                help="Decrypt to show the prefix shape, method and summary numbers."),
) -> None:
    """Show what is known about a profile; with --unlock (default) also its prefix shape and stats.

    Example: persona info me --no-unlock
    """
    vault = open_vault()
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
    prefix = vault.load(name, profile_key(vault, name))
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

    vault = open_vault()
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
    vault = open_vault()
    old = profile_key(vault, name)
    new = new_key(ENV_NEW_PASSPHRASE, keyring, "New passphrase")
    vault.rekey(name, old, new)
    err(f"Profile {name!r} re-encrypted.")


@app.command("export")
def export(
    name: str = typer.Argument(..., help="Profile name."),
    target: Optional[Path] = typer.Argument(None, help="Where to write (same as --output)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Export file to write, e.g. me.persona "
                                          "(with --format peft: the adapter folder)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output file if it exists."),
    fmt: Format = typer.Option(Format.persona, "--format", help="persona: an encrypted file (default); "
                               "peft: a PEFT prefix-tuning adapter folder, UNENCRYPTED (needs --yes)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="--format peft: confirm writing the persona unencrypted."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="--format peft: the backbone folder to name "
                                           "as the adapter's base model (default: the embedded one, if it fits)."),
) -> None:
    """Write a profile to an encrypted file (its own export passphrase) to carry to another device,
    or (--format peft --yes) to a plaintext PEFT prefix-tuning adapter folder for PeftModel.from_pretrained.

    Non-interactive: PERSONA_PASSPHRASE (vault) and PERSONA_EXPORT_PASSPHRASE (export file).
    Example: persona export me -o me.persona
    Example: persona export me --format peft me-adapter --yes
    """
    from persona_sdk.errors import ConfigError
    from persona_sdk.vault import ENV_EXPORT_PASSPHRASE

    if target is not None and output is not None and target != output:
        raise ConfigError("give the destination once (as an argument or with --output)")
    output = target if target is not None else output
    if output is None:
        raise ConfigError("where to write? e.g. persona export NAME -o NAME.persona")
    vault = open_vault()
    if fmt is Format.peft:
        out = export_peft(vault, name, output, yes=yes, force=force, backbone=backbone, unlock=profile_key)
        typer.echo(str(out))
        return
    vault.info(name)
    vault.check_export_path(output)
    if output.exists() and not force:
        from persona_sdk.errors import ProfileExistsError

        raise ProfileExistsError(f"{output} already exists (use --force to overwrite it)")
    unlock = profile_key(vault, name)
    export_pw = prompt_passphrase(ENV_EXPORT_PASSPHRASE, confirm=True, label="Export passphrase")
    out = vault.export(name, output, unlock, export_pw, force=force)
    err(f"Exported {name!r} to {out} (encrypted; bound to backbone {vault.info(name).backbone[:12]}).")
    typer.echo(str(out))


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="Export file made by `persona export` (--format peft: a PEFT "
                                "prefix-tuning adapter folder)."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name (default: the file name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing profile of that name."),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", help="Backbone folder in use (default: the embedded default backbone)."),
    keyring: bool = typer.Option(False, "--keyring",
                                 help="Keep the profile's key in the OS keyring instead of a passphrase."),
    fmt: Format = typer.Option(Format.persona, "--format", help="persona: an encrypted export file (default); "
                               "peft: a PEFT prefix-tuning adapter folder (e.g. trained with PEFT elsewhere)."),
) -> None:
    """Import an exported persona; refuses one made for a different backbone.

    Non-interactive: PERSONA_EXPORT_PASSPHRASE (export file) and PERSONA_PASSPHRASE (vault).
    Example: persona import me.persona --name me
    Example: persona import my-peft-adapter --format peft --name me
    """
    if fmt is Format.peft:
        done = import_peft(open_vault(), file, name=name, force=force, backbone=backbone,
                                 new_key=lambda env: new_key(env, keyring, "New vault passphrase"))
        typer.echo(done)
        return
    from persona_sdk import backbone as bb
    from persona_sdk.errors import ProfileExistsError
    from persona_sdk.vault import ENV_EXPORT_PASSPHRASE, ENV_PASSPHRASE, export_info, validate_name

    vault = open_vault()
    # cheap checks first: structure, existing profile, backbone; then passphrases
    exported = export_info(file)
    target = validate_name(name) if name else None
    if target and vault.exists(target) and not force:
        raise ProfileExistsError(f"profile {target!r} already exists (use --force to replace it)")
    fp = bb.fingerprint(bb.resolve(backbone, progress=err))
    exported.check_backbone(fp)
    export_pw = prompt_passphrase(ENV_EXPORT_PASSPHRASE, confirm=False, label="Export passphrase")
    new = new_key(ENV_PASSPHRASE, keyring, "New vault passphrase")
    done = vault.import_file(file, export_pw, new, name=name, force=force, fingerprint=fp)
    err(f"Imported {file.name} as profile {done!r}.")
    typer.echo(done)
