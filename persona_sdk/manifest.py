"""The ONNX export contract: the folder and ``manifest.json`` the exporters write and the runtime reads.

Runtime side: json/hashlib only, never torch. This module is the one place that
names the decoder graph's inputs and outputs, the variants, the exporter
revision and the cache layout; :mod:`persona_sdk.exporters` writes exports
that follow it, :mod:`persona_sdk.runtime` reads them.

``read_manifest`` checks that the manifest is well formed and that every model
file it lists is present with the recorded size (and, on demand, sha256), so a
damaged export gives one clear :class:`ModelFileError` instead of an
onnxruntime stack trace. ``export_status`` says whether a cached export can be
used as it is.

Keys (``format`` = ``persona-onnx/1``)::

    variant, fingerprint, inputs, outputs, layers, kv_heads, head_dim,
    vocab_size, kv_dtype, logits_dtype, opset, versions, files, stop_token_ids,
    validation, created; optional: graph (fused | optimum), revision

Layout::

    cache_dir()/onnx/<fingerprint[:16]>/<variant>/
        model.onnx  manifest.json  tokenizer.json  config.json  (+ generation_config.json ...)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import paths
from .errors import ExportError, ModelFileError
from .fileio import atomic_write

FORMAT = "persona-onnx/1"
MANIFEST = "manifest.json"
MODEL = "model.onnx"
VARIANTS = ("fp32", "int8", "int4", "fp16")
KV_DTYPES = ("float32", "float16")
GRAPHS = ("fused", "optimum")
# bump when exports built by older code should be rebuilt (2: the fused graph; 3: logits_to_keep,
# 8-bit embedding table and Q8_0-form lm_head in the quantised variants)
REVISION = 3
REQUIRED = {
    "format": str, "variant": str, "fingerprint": str, "inputs": list, "outputs": list,
    "layers": int, "kv_heads": int, "head_dim": int, "vocab_size": int, "kv_dtype": str,
    "logits_dtype": str, "opset": int, "versions": dict, "files": dict,
    "stop_token_ids": list, "validation": dict, "created": str,
}
MAX_MANIFEST_BYTES = 1 << 20

# the decoder-with-past graph's input and output names
INPUT_IDS = "input_ids"  # (B, T) int64
ATTENTION_MASK = "attention_mask"  # (B, past+T) int64
POSITION_IDS = "position_ids"  # (B, T) int64: optimum graph only
LOGITS = "logits"  # (B, T, V)
# fused graph, revision 3 on: (1,) int64. 0 = logits for every position (perplexity, validation);
# k = for the last k positions only (generation: a prefill then skips the lm_head, ~a fifth of a
# small model's work per position, on every position but the last).
LOGITS_TO_KEEP = "logits_to_keep"

# export_status() results
CURRENT, OUTDATED, MISSING, DAMAGED = "current", "outdated", "missing", "damaged"


def past_names(layers: int) -> list[str]:
    """``past_key_values.{i}.key / .value`` inputs, each (B, kv_heads, past, head_dim), in order."""
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    """``present.{i}.key / .value`` outputs, each (B, kv_heads, past+T, head_dim), in order."""
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def io_names(layers: int, position_ids: bool = True, logits_to_keep: bool = False) -> tuple[list[str], list[str]]:
    """Graph input and output names of a decoder with past, in order.

    The fused graph (GroupQueryAttention derives positions from the mask) has
    no ``position_ids`` input; the optimum graph has one. Fused graphs from
    revision 3 on end with ``logits_to_keep``.
    """
    inputs = [INPUT_IDS, ATTENTION_MASK] + ([POSITION_IDS] if position_ids else []) + past_names(layers)
    return inputs + ([LOGITS_TO_KEEP] if logits_to_keep else []), [LOGITS] + present_names(layers)


def export_dir_for(backbone_dir: Path, variant: str = "fp32", cache_root: Path | None = None) -> Path:
    """Where ``variant`` of ``backbone_dir`` lives in the cache (whether or not it exists yet)."""
    from .backbone import fingerprint

    if variant not in VARIANTS:
        raise ExportError(f"variant must be one of {VARIANTS}, got {variant!r}")
    root = Path(cache_root) if cache_root is not None else paths.cache_dir()
    return root / "onnx" / fingerprint(backbone_dir)[:16] / variant


def export_status(export_dir: Path, fp: str) -> tuple[str, str]:
    """(status, why) of a cached export of the backbone with fingerprint ``fp``.

    ``current``: validated, this backbone, built by this exporter revision;
    ``outdated``: the same but built by an older exporter (still usable);
    ``missing``: nothing there; ``damaged``: a corrupt, foreign or unvalidated folder.
    """
    export_dir = Path(export_dir)
    if not (export_dir / MANIFEST).is_file():
        return MISSING, f"no {MANIFEST} in {export_dir}"
    try:
        manifest = read_manifest(export_dir)
    except ModelFileError as exc:
        return DAMAGED, str(exc)
    if manifest["fingerprint"] != fp:
        return DAMAGED, f"{export_dir} holds an export of another backbone"
    if not manifest["validation"].get("passed"):
        return DAMAGED, f"{export_dir} holds an export that was never validated"
    if manifest.get("revision") != REVISION:
        return OUTDATED, (f"it was built by an older exporter (revision {manifest.get('revision', 1)}; "
                          f"this version builds revision {REVISION})")
    return CURRENT, ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(export_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every model file (the graph and its external data)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(Path(export_dir).iterdir()):
        if f.is_file() and (f.name == MODEL or f.name.startswith(MODEL + ".") or f.suffix == ".data"):
            out[f.name] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    return out


def write_manifest(export_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (:func:`persona_sdk.fileio.atomic_write`)."""
    _check_fields(manifest, Path(export_dir) / MANIFEST)
    path = Path(export_dir) / MANIFEST
    return atomic_write(path, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"), private=False)


def read_manifest(export_dir: Path, verify_sha256: bool = False) -> dict[str, Any]:
    """The manifest of an export dir, after checking it and the files it lists.

    Raises :class:`ModelFileError` naming the problem: missing/corrupt manifest,
    missing model file, wrong size, or (with ``verify_sha256``) wrong checksum.
    """
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST
    if not path.is_file():
        raise ModelFileError(f"no {MANIFEST} in {export_dir} (not a persona ONNX export; re-export the backbone)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path} is corrupt (not valid JSON); delete {export_dir} and re-export") from None
    _check_fields(manifest, path)
    if MODEL not in manifest["files"]:
        raise ModelFileError(f"{path} lists no {MODEL}")
    for name, info in manifest["files"].items():
        f = export_dir / name
        if "/" in name or "\\" in name or name.startswith("."):
            raise ModelFileError(f"{path} lists an invalid file name at files[{name!r}]")
        if not f.is_file():
            raise ModelFileError(f"model file {f} is missing; delete {export_dir} and re-export")
        size = f.stat().st_size
        if not isinstance(info, dict) or size != info.get("size"):
            raise ModelFileError(
                f"model file {f} is corrupt: {size} bytes, manifest says {info.get('size') if isinstance(info, dict) else '?'}"
            )
        if verify_sha256 and sha256_file(f) != info.get("sha256"):
            raise ModelFileError(f"model file {f} is corrupt: sha256 does not match the manifest")
    return manifest


def _check_fields(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise ModelFileError(f"{path} is corrupt (not a JSON object)")
    if manifest.get("format") != FORMAT:
        raise ModelFileError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    for key, kind in REQUIRED.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ModelFileError(f"{path} is corrupt: field {key!r} missing or not a {kind.__name__}")
    if manifest["variant"] not in VARIANTS:
        raise ModelFileError(f"{path}: variant {manifest['variant']!r} is not one of {VARIANTS}")
    if manifest["kv_dtype"] not in KV_DTYPES:
        raise ModelFileError(f"{path}: kv_dtype {manifest['kv_dtype']!r} is not one of {KV_DTYPES}")
    inputs, outputs = io_names(manifest["layers"], position_ids=POSITION_IDS in manifest["inputs"],
                               logits_to_keep=LOGITS_TO_KEEP in manifest["inputs"])
    if manifest["inputs"] != inputs or manifest["outputs"] != outputs:
        raise ModelFileError(f"{path}: graph inputs/outputs do not match a decoder with {manifest['layers']} layers")
