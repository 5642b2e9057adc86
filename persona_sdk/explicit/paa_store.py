"""Where PAA lives, and the contract of its ONNX export (runtime side: json/hashlib only, no torch).

Two places, one job each:

- the **installed PAA** (trained fusions, not rebuildable without a training run):
  ``data_dir()/explicit/paa/`` holding ``paa_fusions.safetensors`` (float16) and
  ``PAA.json`` (provenance, config, the weights' sha256, the backbone
  fingerprint). ``persona explicit train paa`` writes there by default;
  ``persona explicit export paa --from FOLDER`` installs a trained folder there.
- its **ONNX export** (rebuildable from the installed PAA and the backbone):
  ``cache_dir()/explicit/paa-<weights sha256[:16]>/<variant>/``::

      encoder.onnx (+ .data)   persona ids/mask, context ids/mask → each fused block's cross-attention
                               keys and values of E_P and E_C (run once per turn)
      decoder.onnx (+ .data)   the backbone's fused decoder with past, a fusion after self-attention in
                               each of the top paa_layers blocks (run per token, keeps its KV cache)
      PAA-export.json          provenance: PAA sha256s, backbone fingerprint, opset, shapes, budgets,
                               the validation against torch
      tokenizer.json  config.json

Graph contract (B = batch, P / U = persona / context tokens, heads·d = hidden)::

    encoder  in : persona_ids (B, P) int64, persona_mask (B, P) int64 (1 = real token),
                  context_ids (B, U) int64, context_mask (B, U) int64
             out: paa.{j}.persona.key / .value (B, heads, P, d), paa.{j}.context.key / .value (B, heads, U, d)
                  for j = 0 .. paa_layers - 1 (fused blocks bottom up)
    decoder  in : input_ids (B, T), attention_mask (B, past+T), past_key_values.{i}.key / .value
                  (B, kv_heads, past, head_dim), logits_to_keep (1,)   (the backbone's fused contract)
                  + the encoder's outputs, persona_mask, context_mask, paa_use_masks (1,) float32
                  (1 = the dynamic masks on, 0 = off: the "PAA without masks" variant)
             out: logits (B, T', vocab), present.{i}.key / .value (B, kv_heads, past+T, head_dim)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import AdapterError, ModelFileError
from ..manifest import sha256_file

PAA_INFO = "PAA.json"
PAA_WEIGHTS = "paa_fusions.safetensors"

FORMAT = "persona-paa-onnx/1"
REVISION = 2  # bump when exports built by older code must be rebuilt (2: the record says decoder_context)
RECORD = "PAA-export.json"
ENCODER = "encoder.onnx"
DECODER = "decoder.onnx"
VARIANTS = ("fp32", "int8")
DEFAULT_VARIANT = "fp32"

PERSONA_IDS, PERSONA_MASK = "persona_ids", "persona_mask"
CONTEXT_IDS, CONTEXT_MASK = "context_ids", "context_mask"
USE_MASKS = "paa_use_masks"

TRAIN_COMMAND = "persona explicit train paa --spc-csv FILE"
EXPORT_COMMAND = "persona explicit export paa"
INSTALL_COMMAND = "persona explicit export paa --from FOLDER"

CURRENT, MISSING, DAMAGED = "current", "missing", "damaged"
REQUIRED = {"format": str, "revision": int, "variant": str, "paa_sha256": str, "paa_info_sha256": str,
            "backbone": str, "layers": int, "kv_heads": int, "head_dim": int, "hidden": int, "heads": int,
            "paa_layers": int, "vocab_size": int, "masks": bool, "decoder_context": bool, "persona_budget": int,
            "context_budget": int, "reply_budget": int, "stop_token_ids": list, "files": dict, "validation": dict, "opset": int}
MAX_RECORD_BYTES = 1 << 20


def cross_names(paa_layers: int) -> list[str]:
    """The encoder's outputs (= the decoder's per-turn inputs), in order."""
    return [f"paa.{j}.{side}.{kv}" for j in range(paa_layers) for side in ("persona", "context")
            for kv in ("key", "value")]


def installed_dir(create: bool = False) -> Path:
    """The one place the PAA mode looks for trained fusions: ``<data dir>/explicit/paa``."""
    folder = paths.data_dir(create=create) / "explicit" / "paa"
    return paths.ensure_dir(folder) if create else folder


def missing_message(folder: Path) -> str:
    return (f"no trained PAA is installed ({folder} holds no {PAA_WEIGHTS} + {PAA_INFO}); train one with "
            f"`{TRAIN_COMMAND}` (it installs there), or install a trained folder with `{INSTALL_COMMAND}`")


def paa_info(folder: str | Path) -> dict:
    """``PAA.json`` of a trained PAA folder, the weights file checked against its sha256 (AdapterError if not)."""
    folder = Path(folder)
    weights = folder / PAA_WEIGHTS
    if not weights.is_file() or not (folder / PAA_INFO).is_file():
        raise AdapterError(f"there is no trained PAA in {folder} ({PAA_WEIGHTS} + {PAA_INFO}); "
                           f"train one with `{TRAIN_COMMAND}`")
    try:
        info = json.loads((folder / PAA_INFO).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        raise AdapterError(f"{folder / PAA_INFO} is corrupt (not valid JSON)") from None
    if not isinstance(info, dict) or info.get("sha256") != sha256_file(weights):
        raise AdapterError(f"{weights} does not match the sha256 recorded in {PAA_INFO}")
    if not isinstance(info.get("config"), dict) or not isinstance(info.get("backbone"), str):
        raise AdapterError(f"{folder / PAA_INFO} records no config or backbone fingerprint")
    return info


def installed_info(folder: str | Path | None = None) -> tuple[Path, dict]:
    """(folder, PAA.json) of the PAA in ``folder`` (None = the installed one), checked as :func:`paa_info`;
    a missing one is an AdapterError naming the commands that build or install it."""
    if folder is not None:
        return Path(folder), paa_info(folder)
    where = installed_dir()
    if not (where / PAA_WEIGHTS).is_file() and not (where / PAA_INFO).is_file():
        raise AdapterError(missing_message(where))
    return where, paa_info(where)


def info_sha256(folder: Path) -> str:
    """sha256 of the ``PAA.json`` bytes (an export records which record it was built from)."""
    return hashlib.sha256((Path(folder) / PAA_INFO).read_bytes()).hexdigest()


def export_dir_for(paa_sha256: str, variant: str = DEFAULT_VARIANT, cache_root: Path | None = None) -> Path:
    """Where ``variant`` of the PAA with weights sha256 ``paa_sha256`` is exported (whether or not it exists)."""
    if variant not in VARIANTS:
        raise ModelFileError(f"PAA variant must be one of {VARIANTS}, got {variant!r}")
    root = Path(cache_root) if cache_root is not None else paths.cache_dir()
    return root / "explicit" / f"paa-{paa_sha256[:16]}" / variant


def model_files(export_dir: Path) -> dict[str, dict[str, Any]]:
    """Size of each graph file (the two graphs and their external data), as the record lists them."""
    out = {}
    for f in sorted(Path(export_dir).iterdir()):
        if f.is_file() and (f.name.startswith(ENCODER) or f.name.startswith(DECODER)):
            out[f.name] = {"size": f.stat().st_size}
    return out


def read_record(export_dir: Path) -> dict:
    """``PAA-export.json`` of an export folder after checking it and the graph files it lists (sizes);
    :class:`ModelFileError` naming the problem otherwise."""
    export_dir = Path(export_dir)
    path = export_dir / RECORD
    if not path.is_file():
        raise ModelFileError(f"no {RECORD} in {export_dir} (not a PAA export); rebuild it with `{EXPORT_COMMAND}`")
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise ValueError("too large")
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path} is corrupt (not valid JSON); rebuild it with `{EXPORT_COMMAND}`") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a {FORMAT} record; rebuild it with `{EXPORT_COMMAND}`")
    for key, kind in REQUIRED.items():
        value = record.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ModelFileError(f"{path} is corrupt: field {key!r} missing or not a {kind.__name__}")
    for name in (ENCODER, DECODER, "tokenizer.json"):
        if not (export_dir / name).is_file():
            raise ModelFileError(f"{export_dir / name} is missing; rebuild it with `{EXPORT_COMMAND}`")
    for name, entry in record["files"].items():
        f = export_dir / name
        if "/" in name or "\\" in name or name.startswith("."):
            raise ModelFileError(f"{path} lists an invalid file name at files[{name!r}]")
        if not f.is_file() or not isinstance(entry, dict) or f.stat().st_size != entry.get("size"):
            raise ModelFileError(f"model file {f} is missing or corrupt (size differs from {RECORD}); "
                                 f"rebuild it with `{EXPORT_COMMAND}`")
    return record


def export_status(export_dir: Path, paa_folder: Path, info: dict, backbone_fingerprint: str) -> tuple[str, str]:
    """(status, why) of a PAA export for the PAA in ``paa_folder`` (its checked ``info``) on this backbone:
    ``current`` (validated, built from exactly this PAA.json and weights, this backbone, this revision),
    ``missing``, or ``damaged`` (corrupt, foreign, unvalidated or from an older exporter: rebuild)."""
    export_dir = Path(export_dir)
    if not (export_dir / RECORD).is_file():
        return MISSING, f"no {RECORD} in {export_dir}"
    try:
        record = read_record(export_dir)
    except ModelFileError as exc:
        return DAMAGED, str(exc)
    if record["paa_sha256"] != info.get("sha256") or record["paa_info_sha256"] != info_sha256(paa_folder):
        return DAMAGED, f"{export_dir} was built from another PAA"
    if record["backbone"] != backbone_fingerprint:
        return DAMAGED, f"{export_dir} was built for another backbone"
    if not record["validation"].get("passed"):
        return DAMAGED, f"{export_dir} was never validated against torch"
    if record["revision"] != REVISION:
        return DAMAGED, f"{export_dir} was built by an older exporter (revision {record['revision']})"
    return CURRENT, ""
