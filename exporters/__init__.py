"""Backbone → ONNX exports (fp32 reference, int8/int4 weight-only, fp16), validated and cached.

Runtime-safe at import (no torch): the runtime calls :func:`ensure_exported`
lazily and reads manifests with :func:`read_manifest`; torch, optimum and peft
are imported only when an export actually has to be built.

Layout::

    cache_dir()/onnx/<fingerprint[:16]>/<variant>/
        model.onnx  manifest.json  tokenizer.json  config.json  (+ generation_config.json ...)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from persona_sdk import paths
from persona_sdk.backbone import fingerprint, read_config
from persona_sdk.errors import ExportError, ModelFileError

from .manifest import FORMAT, MANIFEST, MODEL, REVISION, VARIANTS, io_names, read_manifest, write_manifest

__all__ = [
    "FORMAT", "MANIFEST", "MODEL", "VARIANTS", "ensure_exported", "export", "export_dir_for", "io_names",
    "read_manifest", "validate",
]

Progress = Callable[[str], None]


def export_dir_for(backbone_dir: Path, variant: str = "fp32", cache_root: Path | None = None) -> Path:
    """Where ``variant`` of ``backbone_dir`` lives (whether or not it exists yet)."""
    if variant not in VARIANTS:
        raise ExportError(f"variant must be one of {VARIANTS}, got {variant!r}")
    root = Path(cache_root) if cache_root is not None else paths.cache_dir()
    return root / "onnx" / fingerprint(backbone_dir)[:16] / variant


def export(backbone_dir: Path, out_dir: Path, variant: str = "fp32", fp32_dir: Path | None = None,
           progress: Progress | None = None, graph: str = "auto") -> Path:
    """Export ``variant`` into ``out_dir`` (no validation, no caching); see onnx_export.export."""
    from .onnx_export import export as _export

    return _export(backbone_dir, out_dir, variant, fp32_dir=fp32_dir, progress=progress, graph=graph)


def validate(export_dir: Path, backbone_dir: Path, **kwargs) -> dict:
    """Compare an export with torch+PEFT (prefix injected); see validation.validate."""
    from .validation import validate as _validate

    return _validate(export_dir, backbone_dir, **kwargs)


def _usable(target: Path, fp: str, current: bool = True) -> bool:
    """A validated export of this backbone (``current``: built by this exporter revision)."""
    try:
        manifest = read_manifest(target)
    except ModelFileError:
        return False
    ok = manifest["fingerprint"] == fp and bool(manifest["validation"].get("passed"))
    return ok and (not current or manifest.get("revision") == REVISION)


def _can_export() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "onnx"))


def ensure_exported(backbone_dir: Path, variant: str = "fp32", progress: Progress | None = None,
                    cache_root: Path | None = None) -> Path:
    """The validated export dir of ``variant`` for ``backbone_dir``; built on first use.

    Exports (fp32 as the fused graph, or via optimum for other architectures;
    other variants derived from the fp32 export, which is ensured first),
    validates against torch+PEFT with a prefix
    injected, writes the manifest and renames the finished folder into place.
    A build that fails validation is deleted and raises :class:`ExportError`;
    a damaged cached export is rebuilt.
    """
    backbone_dir = Path(backbone_dir)
    read_config(backbone_dir)
    target = export_dir_for(backbone_dir, variant, cache_root)
    fp = fingerprint(backbone_dir)
    if _usable(target, fp):
        return target
    if _usable(target, fp, current=False) and not _can_export():
        return target  # built by an older exporter; still valid, and a chat-only install cannot rebuild it
    say = progress or (lambda msg: None)
    fp32_dir = None
    if variant != "fp32":
        fp32_dir = ensure_exported(backbone_dir, "fp32", progress, cache_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{variant}-", dir=target.parent))
    try:
        build = tmp / variant
        export(backbone_dir, build, variant, fp32_dir=fp32_dir, progress=progress)
        say(f"Validating the {variant} export against the torch model (prefix injected)...")
        record = validate(build, backbone_dir)
        manifest = read_manifest(build)
        manifest["validation"] = record
        write_manifest(build, manifest)
        if target.exists():  # damaged or foreign leftovers (a valid one returned above)
            if _usable(target, fp):
                return target  # another process finished first
            shutil.rmtree(target)
        build.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"ONNX {variant} export ready at {target}")
    return target
