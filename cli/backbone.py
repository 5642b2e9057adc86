"""`persona backbone ...`: export the backbone to ONNX and show what is cached."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._common import backbone_option, err

backbone_app = typer.Typer(help="Export the backbone to ONNX (fp32, int8, int4, fp16) and inspect it.",
                           no_args_is_help=True)
app.add_typer(backbone_app, name="backbone")


@backbone_app.command("export")
def export(
    quant: Optional[str] = typer.Option(None, "--quant", help="Quantised CPU variant: int8 or int4."),
    fp16: bool = typer.Option(False, "--fp16", help="Also build the fp16 variant for GPUs."),
    backbone: Optional[Path] = backbone_option(),
) -> None:
    """Export (once) and validate the backbone against the torch model, with a persona prefix injected.

    Builds what is missing or outdated, reuses what is current (needs the [export] extra).
    `persona chat` uses int8 on CPU, fp16 on CUDA.

    Example: persona backbone export --quant int4
    """
    from persona_sdk.engines import find_export
    from persona_sdk.errors import ConfigError

    if quant not in (None, "int8", "int4"):
        raise ConfigError(f"--quant must be int8 or int4, got {quant!r}")
    variants = ["fp32"] + ([quant] if quant else []) + (["fp16"] if fp16 else [])
    for variant in variants:
        out = find_export(backbone, variant, progress=err, build=True)
        typer.echo(f"{variant}: {out}")


@backbone_app.command("info")
def info(
    backbone: Optional[Path] = backbone_option(),
) -> None:
    """Show the backbone, its fingerprint and the cached ONNX variants with their validation.

    Example: persona backbone info
    """
    import json

    from persona_sdk import backbone as bb
    from persona_sdk import paths
    from persona_sdk.manifest import MANIFEST

    model_dir = bb.resolve(backbone, progress=err)
    spec = bb.spec_of(model_dir)
    fp = bb.fingerprint(model_dir)
    typer.echo(f"backbone     {model_dir}")
    typer.echo(f"fingerprint  {fp}")
    typer.echo(f"shape        {spec.layers} layers, {spec.heads} heads ({spec.kv_heads} KV), head_dim {spec.head_dim}, "
               f"vocab {spec.vocab_size}")
    root = paths.cache_dir() / "onnx" / fp[:16]
    found = sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
    if not found:
        typer.echo("onnx         none yet (run `persona backbone export`)")
    for manifest_path in found:
        m = json.loads(manifest_path.read_text())
        v = m.get("validation", {})
        size = sum(f.get("size", 0) for f in m.get("files", {}).values()) / 2**20
        graph = m.get("graph", "optimum")  # exports from before the fused graph have no key
        typer.echo(f"onnx {m.get('variant', '?'):<7} {size:7.1f} MiB  {graph} graph  max|dlogit| "
                   f"{v.get('max_abs_logit_diff', '?')}  greedy match {v.get('greedy_match', '?')}  {manifest_path.parent}")
