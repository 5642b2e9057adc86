"""`persona explicit ...`: the explicit-persona modes' trained parts (maintainers)."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from persona_sdk.config import RuntimeConfig
from persona_sdk.errors import ConfigError
from persona_sdk.training.config import PAAConfig, PALConfig

from ._app import app
from ._common import backbone_option, config_option, err

explicit_app = typer.Typer(help="Explicit-persona modes (chat as a persona described in sentences): "
                           "train and build their parts.", no_args_is_help=True)
app.add_typer(explicit_app, name="explicit")

TRAINABLE = ("pal", "paa")
# options of `train` that only one mode reads (the rest are shared; a shared option left out takes that
# mode's own config default)
PAL_ONLY = ("stage1_out", "stage1_replies", "dpo_pairs", "dpo_batch", "dpo_lr", "beta", "rank", "top_layers",
            "score_selection", "dev_pairs", "stage1_loss")
PAA_ONLY = ("paa_layers", "train_replies", "replies", "masks", "decoder_context", "epochs")
SHARED = ("max_minutes", "batch_size", "lr", "context_budget", "reply_budget", "dev_replies", "seed")


def _shared(name: str) -> str:
    return f"pal and paa; with paa the default is {getattr(PAAConfig(), name)!r}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@explicit_app.command("train")
def train(
    ctx: typer.Context,
    mode: str = typer.Argument(..., help="the mode to train: pal or paa"),
    spc_csv: Path = typer.Option(..., "--spc-csv", help="Synthetic-Persona-Chat CSV (split by persona; "
                                 "train and dev parts are used, never test)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the adapter + PAL.json "
                                       "(pal's default: the package's shipped adapter folder); paa: the folder "
                                       "for the fusions + PAA.json (default: installed where `persona chat "
                                       "--explicit paa` looks, <data dir>/explicit/paa)"),
    stage1_out: Optional[Path] = typer.Option(None, "--stage1-out", help="also write the stage-1-only adapter here (pal only)"),
    max_minutes: Optional[float] = config_option(PALConfig, "max_minutes", "--max-minutes", note=_shared("max_minutes")),
    stage1_replies: int = config_option(PALConfig, "stage1_replies", "--stage1-replies", note="pal only"),
    dpo_pairs: int = config_option(PALConfig, "dpo_pairs", "--dpo-pairs", note="pal only"),
    batch_size: int = config_option(PALConfig, "batch_size", "--batch-size", note=_shared("batch_size")),
    dpo_batch: int = config_option(PALConfig, "dpo_batch", "--dpo-batch", note="pal only"),
    lr: float = config_option(PALConfig, "lr", "--lr", note=_shared("lr")),
    dpo_lr: float = config_option(PALConfig, "dpo_lr", "--dpo-lr", note="pal only"),
    beta: float = config_option(PALConfig, "beta", "--beta", note="pal only"),
    rank: int = config_option(PALConfig, "rank", "--rank", note="pal only"),
    top_layers: int = config_option(PALConfig, "top_layers", "--top-layers", note="pal only"),
    stage1_loss: str = config_option(PALConfig, "stage1_loss", "--stage1-loss", note="pal only"),
    score_selection: bool = config_option(PALConfig, "score_selection", "--score-selection/--no-score-selection", note="pal only"),
    context_budget: int = config_option(PALConfig, "context_budget", "--context-budget", note=_shared("context_budget")),
    reply_budget: int = config_option(PALConfig, "reply_budget", "--reply-budget", note=_shared("reply_budget")),
    dev_replies: int = config_option(PALConfig, "dev_replies", "--dev-replies", note=_shared("dev_replies")),
    dev_pairs: int = config_option(PALConfig, "dev_pairs", "--dev-pairs", note="pal only"),
    seed: int = config_option(PALConfig, "seed", "--seed", note=_shared("seed")),
    paa_layers: int = config_option(PAAConfig, "paa_layers", "--paa-layers", note="paa only"),
    train_replies: int = config_option(PAAConfig, "train_replies", "--train-replies", note="paa only"),
    replies: str = config_option(PAAConfig, "replies", "--replies", note="paa only"),
    masks: bool = config_option(PAAConfig, "masks", "--masks/--no-masks", note="paa only"),
    decoder_context: bool = config_option(PAAConfig, "decoder_context", "--decoder-context/--paper-layout",
                                          note="paa only"),
    epochs: int = config_option(PAAConfig, "epochs", "--epochs", note="paa only"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
    backbone: Optional[str] = typer.Option(None, help="backbone folder (default: the embedded SmolLM2-135M)"),
) -> None:
    """Train an explicit mode's adapter on Synthetic-Persona-Chat and write it with its provenance.

    Example: nice -n 10 persona explicit train pal --spc-csv ../shared/data/spc/Synthetic-Persona-Chat_valid.csv --max-minutes 90

    Example: persona explicit train paa --spc-csv ../shared/data/spc/Synthetic-Persona-Chat_valid.csv --max-minutes 35 --train-replies 3200 --epochs 2
    """
    if mode not in TRAINABLE:
        raise ConfigError(f"mode must be one of {', '.join(TRAINABLE)} (prompt needs no training)")
    given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    foreign = sorted(given & set(PAA_ONLY if mode == "pal" else PAL_ONLY))
    if foreign:
        raise ConfigError(f"{', '.join(_flag(n) for n in foreign)} only apply to "
                          f"{'paa' if mode == 'pal' else 'pal'}, not {mode}")
    if mode == "paa":
        _train_paa(spc_csv, out, {n: ctx.params[n] for n in SHARED + PAA_ONLY if n in given}, threads, backbone)
        return
    from persona_sdk.explicit import pal as pal_mode
    from persona_sdk.training import pal

    cfg = PALConfig(stage1_replies=stage1_replies, dpo_pairs=dpo_pairs, batch_size=batch_size,
                    dpo_batch=dpo_batch, lr=lr, dpo_lr=dpo_lr, beta=beta, rank=rank, top_layers=top_layers,
                    score_selection=score_selection, dev_replies=dev_replies, stage1_loss=stage1_loss,
                    context_budget=context_budget, reply_budget=reply_budget,
                    dev_pairs=dev_pairs, max_minutes=max_minutes, seed=seed)
    train_ex, dev_ex, provenance = _spc_examples(spc_csv, threads)
    from ._progress import TrainBar

    result = pal.train_pal(train_ex, dev_ex, backbone=backbone, config=cfg, progress=TrainBar("pal"), note=err)
    info = _provenance(cfg, provenance, result.summary, threads)
    target = out or pal_mode.SHIPPED_DIR
    pal.save_pal(result, result.final, target, {**info, "stage": "final"})
    if stage1_out is not None:
        pal.save_pal(result, result.stage1, stage1_out, {**info, "stage": "stage1"})
        err(f"stage-1 adapter written to {stage1_out}")
    typer.echo(str(target))


def _train_paa(spc_csv: Path, out: Optional[Path], options: dict, threads: Optional[int],
               backbone: Optional[str]) -> None:
    """`train paa`: PAA's fusions on the SPC split PAL uses, written to ``out`` (None = installed for the paa
    chat mode) with their provenance."""
    from persona_sdk.explicit.paa_store import installed_dir
    from persona_sdk.training import paa_model

    cfg = PAAConfig(**options)  # options given on the command line; the rest are PAAConfig's defaults
    train_ex, dev_ex, provenance = _spc_examples(spc_csv, threads)
    from ._progress import TrainBar

    result = paa_model.train_paa(train_ex, dev_ex, backbone=backbone, config=cfg, progress=TrainBar("paa"),
                                 note=err)
    target = out if out is not None else installed_dir(create=True)
    paa_model.save_paa(result, target, _provenance(cfg, provenance, result.summary, threads))
    if out is None:
        err("PAA installed for `persona chat --explicit paa` (its ONNX export is built on first use, or now with "
            "`persona explicit export paa`)")
    typer.echo(str(target))


def _spc_examples(spc_csv: Path, threads: Optional[int]) -> tuple[list, list, dict]:
    """(train replies, dev replies, provenance) of the SPC split by persona (the test part untouched);
    ``threads`` torch CPU threads first, when given."""
    from persona_sdk.training.corpora import spc_explicit_split, spc_persona_examples

    if threads:
        import torch

        torch.set_num_threads(threads)
    parts, provenance = spc_explicit_split(spc_csv)
    train_ex, dev_ex = spc_persona_examples(parts["train"]), spc_persona_examples(parts["dev"])
    err(f"Synthetic-Persona-Chat split by persona: {len(train_ex)} train / {len(dev_ex)} dev replies "
        f"(the test part is not touched)")
    return train_ex, dev_ex, provenance


def _provenance(cfg, data: dict, summary: dict, threads: Optional[int]) -> dict:
    """What a trained explicit artifact records: the command as typed, config, data, numbers, time."""
    argv = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else []
    return {"command": "persona explicit train " + " ".join(shlex.quote(a) for a in argv),
            "config": cfg.to_dict(), "data": data, "summary": summary, "threads": threads,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


@explicit_app.command("export")
def export(
    mode: str = typer.Argument(..., help="the mode whose model to build: pal or paa"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="pal: adapter folder (default: the shipped one)"),
    source: Optional[Path] = typer.Option(None, "--from", help="paa: a trained PAA folder (from `persona explicit "
                                          "train paa --out FOLDER`) to export and install where `persona chat "
                                          "--explicit paa` looks (default: the one installed there)"),
    variant: Optional[str] = typer.Option(None, "--variant", help="pal: ONNX variant, as the backbone's "
                                          "(default int8 on CPU); paa: fp32 (default) or int8"),
    backbone: Optional[Path] = backbone_option(note="the backbone the adapter was trained on"),
) -> None:
    """Build a mode's model now: pal's adapter merged into the backbone, or paa's encoder and decoder graphs,
    exported to ONNX and validated against torch.

    `persona chat --explicit pal|paa` does this on first use; this command does it ahead of time.

    Example: persona explicit export pal

    Example: persona explicit export paa --from paa-run
    """
    if mode == "paa":
        if adapter is not None:
            raise ConfigError("--adapter is pal's option; paa takes --from FOLDER")
        _export_paa(source, variant, backbone)
        return
    if mode != "pal":
        raise ConfigError("mode must be pal or paa (prompt runs on the backbone's own export)")
    if source is not None:
        raise ConfigError("--from is paa's option; pal takes --adapter FOLDER")
    from persona_sdk.explicit.pal import open_pal_engine

    engine = open_pal_engine(backbone, RuntimeConfig(variant=variant), err, build=True, adapter=adapter)
    typer.echo(str(engine.export_dir))


def _export_paa(source: Optional[Path], variant: Optional[str], backbone: Optional[Path]) -> None:
    """`export paa`: build (and validate) the export of the PAA in ``source`` (else the installed one); then
    install ``source`` where the chat mode looks, so nothing is installed that did not export."""
    import time

    from persona_sdk import backbone as bb
    from persona_sdk.exporters.paa_export import ensure_paa_exported
    from persona_sdk.explicit.paa import install_paa, paa_variant
    from persona_sdk.explicit.paa_store import installed_info

    started = time.monotonic()
    folder, _ = installed_info(source)
    chosen = paa_variant(RuntimeConfig(variant=variant))
    base_dir = bb.resolve(backbone, err)
    err(f"PAA: exporting the trained fusions in {folder} ({chosen}) on {base_dir}...")
    target = ensure_paa_exported(folder, base_dir, chosen, progress=err)
    if source is not None:
        err(f"PAA installed in {install_paa(source)}")
    err(f"PAA ready for `persona chat --explicit paa` ({time.monotonic() - started:.0f} s)")
    typer.echo(str(target))
