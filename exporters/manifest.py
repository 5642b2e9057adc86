"""The manifest written next to every exported model: the contract the runtime reads.

Runtime side: numpy/json only, never torch. ``read_manifest`` checks that the
manifest is well formed and that every model file it lists is present with the
recorded size (and, on demand, sha256), so a damaged export gives one clear
:class:`ModelFileError` instead of an onnxruntime stack trace.

Keys (``format`` = ``persona-onnx/1``)::

    variant, fingerprint, inputs, outputs, layers, kv_heads, head_dim,
    vocab_size, kv_dtype, logits_dtype, opset, versions, files, stop_token_ids,
    validation, created; optional: graph (fused | optimum), revision
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from persona_sdk.errors import ModelFileError

FORMAT = "persona-onnx/1"
MANIFEST = "manifest.json"
MODEL = "model.onnx"
VARIANTS = ("fp32", "int8", "int4", "fp16")
KV_DTYPES = ("float32", "float16")
REQUIRED = {
    "format": str, "variant": str, "fingerprint": str, "inputs": list, "outputs": list,
    "layers": int, "kv_heads": int, "head_dim": int, "vocab_size": int, "kv_dtype": str,
    "logits_dtype": str, "opset": int, "versions": dict, "files": dict,
    "stop_token_ids": list, "validation": dict, "created": str,
}
MAX_MANIFEST_BYTES = 1 << 20


GRAPHS = ("fused", "optimum")
REVISION = 2  # bump when exports built by older code should be rebuilt (2: the fused graph)


def io_names(layers: int, position_ids: bool = True) -> tuple[list[str], list[str]]:
    """Graph input and output names of a decoder with past, in order.

    The fused graph (GroupQueryAttention derives positions from the mask) has
    no ``position_ids`` input; the optimum graph has one.
    """
    inputs = ["input_ids", "attention_mask"] + (["position_ids"] if position_ids else [])
    outputs = ["logits"]
    for i in range(layers):
        inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    return inputs, outputs


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
    """Write ``manifest.json`` atomically (temp file, fsync, rename)."""
    _check_fields(manifest, Path(export_dir) / MANIFEST)
    path = Path(export_dir) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


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
    inputs, outputs = io_names(manifest["layers"], position_ids="position_ids" in manifest["inputs"])
    if manifest["inputs"] != inputs or manifest["outputs"] != outputs:
        raise ModelFileError(f"{path}: graph inputs/outputs do not match a decoder with {manifest['layers']} layers")
