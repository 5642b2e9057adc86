"""Backbone → ONNX exports (fp32 reference, int8/int4 weight-only, fp16), validated and cached.

The build side of the export contract in :mod:`persona_sdk.manifest` (input
and output names, variants, revision, cache layout, reading manifests), which
is re-exported here. Only :mod:`persona_sdk.engines` (the layer that opens
engines for chat) and the CLI import this package; the runtime never does.
Importing it is cheap (no torch): torch, optimum and peft are imported only
when an export is actually built.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from persona_sdk.backbone import fingerprint, read_config
from persona_sdk.manifest import (CURRENT, FORMAT, MANIFEST, MODEL, VARIANTS, export_dir_for, export_status, io_names,
                                  read_manifest, write_manifest)

__all__ = [
    "FORMAT", "MANIFEST", "MODEL", "VARIANTS", "ensure_exported", "export", "export_dir_for", "io_names",
    "read_manifest", "validate", "write_manifest",
]

Progress = Callable[[str], None]


def export(backbone_dir: Path, out_dir: Path, variant: str = "fp32", fp32_dir: Path | None = None,
           progress: Progress | None = None, graph: str = "auto") -> Path:
    """Export ``variant`` into ``out_dir`` (no validation, no caching); see onnx_export.export."""
    from .onnx_export import export as _export

    return _export(backbone_dir, out_dir, variant, fp32_dir=fp32_dir, progress=progress, graph=graph)


def validate(export_dir: Path, backbone_dir: Path, **kwargs) -> dict:
    """Compare an export with torch+PEFT (prefix injected); see validation.validate."""
    from .validation import validate as _validate

    return _validate(export_dir, backbone_dir, **kwargs)


def ensure_exported(backbone_dir: Path, variant: str = "fp32", progress: Progress | None = None,
                    cache_root: Path | None = None) -> Path:
    """The validated export dir of ``variant`` for ``backbone_dir``; built on first use.

    Exports (fp32 as the fused graph, or via optimum for other architectures;
    other variants derived from the fp32 export, which is ensured first),
    validates against torch+PEFT with a prefix
    injected, writes the manifest and renames the finished folder into place.
    A build that fails validation is deleted and raises :class:`ExportError`;
    a damaged cached export, or one built by an older exporter revision, is
    rebuilt. Needs the ``[export]`` extra whenever it builds.
    """
    backbone_dir = Path(backbone_dir)
    read_config(backbone_dir)
    target = export_dir_for(backbone_dir, variant, cache_root)
    fp = fingerprint(backbone_dir)
    if export_status(target, fp)[0] == CURRENT:
        return target
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
            if export_status(target, fp)[0] == CURRENT:
                return target  # another process finished first
            shutil.rmtree(target)
        build.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"ONNX {variant} export ready at {target}")
    return target
