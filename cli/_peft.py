"""`persona export --format peft` / `persona import --format peft`: the CLI side (parse, prompt, print).

The conversion lives in :mod:`persona_sdk.interop`; this module finds the backbone,
asks for passphrases and confirmation, and says what it did.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from ._common import err


class Format(str, Enum):
    """What `persona export` writes / `persona import` reads."""

    persona = "persona"  # the encrypted .persona file (default)
    peft = "peft"  # a plaintext PEFT prefix-tuning adapter folder


def plaintext_warning(name: str, folder: Path) -> str:
    return (f"--format peft writes profile {name!r} UNENCRYPTED to {folder}: anyone who can read that folder "
            f"can speak as this persona. The default export (an encrypted .persona file) does not.")


def backbone_facts(backbone: Optional[str]) -> tuple[Any, str, Optional[Path]]:
    """(spec with layers / kv_heads / head_dim, fingerprint, Hugging Face folder or None) of ``backbone``.

    ``backbone``: None (the embedded default), a Hugging Face causal-LM folder, or an
    ONNX export folder (its manifest holds the shapes and the fingerprint).
    """
    from persona_sdk import backbone as bb
    from persona_sdk.manifest import MANIFEST, read_manifest
    from persona_sdk.prefix import PrefixSpec

    if backbone not in (None, "", "default") and (Path(backbone).expanduser() / MANIFEST).is_file():
        m = read_manifest(Path(backbone).expanduser())
        return PrefixSpec(m["layers"], m["kv_heads"], 1, m["head_dim"]), m["fingerprint"], None
    model_dir = bb.resolve(backbone, progress=err)
    return bb.spec_of(model_dir), bb.fingerprint(model_dir), model_dir


def export_peft(vault, name: str, folder: Path, *, yes: bool, force: bool, backbone: Optional[str],
                unlock) -> Path:
    """Write profile ``name`` as a PEFT adapter folder after the plaintext warning and --yes."""
    from persona_sdk import backbone as bb
    from persona_sdk import interop
    from persona_sdk.errors import BackboneMismatchError, ConfirmationRequiredError

    info = vault.info(name)
    err(f"Warning: {plaintext_warning(name, folder)}")
    if not yes:
        raise ConfirmationRequiredError("refusing to write a persona unencrypted without --yes "
                                        "(or export it encrypted: persona export NAME -o FILE)")
    base_model: Optional[Path] = None
    if backbone is not None:
        _, fp, base_model = backbone_facts(backbone)
        if fp != info.backbone:
            raise BackboneMismatchError(f"profile {name!r} was made for backbone {info.backbone[:16]}, "
                                        f"not {fp[:16]} (--backbone)")
    elif bb.is_materialised(bb.default_dir()) and bb.fingerprint(bb.default_dir()) == info.backbone:
        base_model = bb.default_dir()
    prefix = vault.load(name, unlock(vault, name))
    out = interop.write_peft(prefix, folder, base_model=str(base_model) if base_model else None, force=force)
    err(f"Wrote {name!r} as a PEFT prefix-tuning adapter ({prefix.length} virtual tokens) to {out} "
        f"(plaintext; load it with PeftModel.from_pretrained(model, {str(out)!r}) on "
        f"{'the backbone at ' + str(base_model) if base_model else 'the backbone it was made for'}).")
    return out


def import_peft(vault, folder: Path, *, name: Optional[str], force: bool, backbone: Optional[str],
                new_key) -> str:
    """Import a PEFT prefix-tuning adapter folder as profile ``name`` (default: the folder's name)."""
    from persona_sdk import interop
    from persona_sdk.errors import ProfileExistsError, ProfileNameError
    from persona_sdk.vault import ENV_PASSPHRASE, validate_name

    interop.read_peft(folder)  # cheap structural checks before the backbone and any passphrase
    if name is None:
        try:
            name = validate_name(folder.expanduser().resolve().name)
        except ProfileNameError:
            raise ProfileNameError(f"the folder name does not make a valid profile name; pass a name "
                                   f"(--name). {ProfileNameError.__doc__}") from None
    validate_name(name)
    if vault.exists(name) and not force:
        raise ProfileExistsError(f"profile {name!r} already exists (use --force to replace it)")
    spec, fp, _ = backbone_facts(backbone)
    prefix, checked = interop.prefix_from_peft(folder, spec=spec, fingerprint=fp)
    if not checked:
        err(f"{folder.name} does not say which backbone it was trained on (PEFT does not record it): its shapes "
            f"fit the backbone in use ({fp[:12]}), so it is bound to that one. It speaks sensibly only if it was "
            f"trained on this very model.")
    vault.save(name, prefix, new_key(ENV_PASSPHRASE), force=force)
    err(f"Imported PEFT adapter {folder.name} ({prefix.length} virtual tokens) as profile {name!r} (encrypted).")
    return name
