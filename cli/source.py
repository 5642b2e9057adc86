"""`persona source train`: train a source prefix (maintainers; PersonaPKT stage 1)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from persona_sdk.training.config import SourceConfig

from ._app import app
from ._common import config_option, err

source_app = typer.Typer(help="Source prefixes (maintainers): the multi-speaker start of every enrollment.",
                         no_args_is_help=True)
app.add_typer(source_app, name="source")


@source_app.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="folder to write source_prefix.safetensors + SOURCE.json into"),
    corpus: str = typer.Option("chitchat", help="chitchat (part-A speakers of the eval split) or spc (needs --spc-csv)"),
    spc_csv: Optional[Path] = typer.Option(None, "--spc-csv", help="Synthetic-Persona-Chat CSV (corpus spc)"),
    method: str = config_option(SourceConfig, "method"),
    steps: int = config_option(SourceConfig, "steps"),
    lr: float = config_option(SourceConfig, "lr"),
    batch_size: int = config_option(SourceConfig, "batch_size"),
    prefix_len: int = config_option(SourceConfig, "prefix_len"),
    temperature: float = config_option(SourceConfig, "temperature"),
    inner_steps: int = config_option(SourceConfig, "inner_steps"),
    outer_batch: int = config_option(SourceConfig, "outer_batch"),
    outer_lr: float = config_option(SourceConfig, "outer_lr"),
    alpha: float = config_option(SourceConfig, "alpha"),
    context_budget: int = config_option(SourceConfig, "context_budget"),
    max_speakers: Optional[int] = typer.Option(None, help="use only the first N part-A speakers (hash order)"),
    max_per_speaker: Optional[int] = typer.Option(None, help="cap replies per speaker"),
    max_val: int = typer.Option(64, help="validation replies (sampled from part-A val conversations)"),
    max_minutes: Optional[float] = config_option(SourceConfig, "max_minutes"),
    eval_every: int = config_option(SourceConfig, "eval_every"),
    seed: int = config_option(SourceConfig, "seed"),
    init_text: Optional[str] = config_option(SourceConfig, "init_text"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
    backbone: Optional[str] = typer.Option(None, help="backbone folder (default: the embedded SmolLM2-135M)"),
    shards: int = config_option(SourceConfig, "shards"),
    checkpoint: Optional[Path] = typer.Option(None, help="checkpoint file (written atomically by rank 0)"),
    checkpoint_every: int = typer.Option(0, help="write the checkpoint every N steps (0 = never)"),
    resume: bool = typer.Option(False, "--resume", help="continue from --checkpoint if it exists"),
) -> None:
    """Train a source prefix over many speakers and write it with its provenance.

    Example: persona source train --out persona_sdk/data/source_prefix --method plain --steps 200
    On 2 processes (gloo on CPU, nccl on CUDA), same result as 1 process with --shards 2:
      torchrun --nproc-per-node 2 -m persona_sdk.cli source train --out src --method plain --checkpoint src/ckpt.pt
    """
    from persona_sdk import source as src
    from persona_sdk.training import distributed as dd

    ctx = dd.context()
    log = err if ctx.main else (lambda message: None)  # rank 0 alone logs and writes

    cfg = SourceConfig(method=method, prefix_len=prefix_len, steps=steps, lr=lr, batch_size=batch_size,
                       temperature=temperature, inner_steps=inner_steps, outer_batch=outer_batch,
                       outer_lr=outer_lr, alpha=alpha, context_budget=context_budget,
                       max_minutes=max_minutes, seed=seed, init_text=init_text, shards=shards,
                       eval_every=eval_every)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if corpus == "chitchat":
        speakers, val, provenance = src.chitchat_part_a(max_speakers, max_per_speaker, max_val, seed)
    elif corpus == "spc":
        if spc_csv is None:
            raise typer.BadParameter("--corpus spc needs --spc-csv")
        speakers, val, provenance = src.spc_split(spc_csv, max_speakers, max_val)
    else:
        raise typer.BadParameter("corpus must be chitchat or spc")
    log(f"{provenance['speakers']} speakers, {sum(len(s.examples) for s in speakers)} replies, "
        f"{len(val)} validation replies; method {method}, {steps} steps"
        + (f"; rank 0 of {ctx.world} ({ctx.backend})" if ctx.distributed else ""))
    from ._progress import TrainBar

    try:
        prefix, summary = src.train_source(speakers, val, backbone=backbone, config=cfg,
                                           progress=TrainBar(f"source/{method}") if ctx.main else None,
                                           checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
    finally:
        dd.barrier(ctx)
    if not ctx.main:
        dd.shutdown(ctx)
        return
    info = {
        "command": "persona source train " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("train") + 1:])
        if "train" in sys.argv else None,
        "config": cfg.to_dict(),
        "data": provenance,
        "summary": summary.as_meta(),
        "threads": threads,
        "world_size": ctx.world,
        "backend": ctx.backend,
    }
    path = src.save_source(prefix, out, info)
    log(f"val loss {summary.init_val_loss:.3f} -> {summary.best_val_loss:.3f} (best at step {summary.best_step}), "
        f"{summary.wall_seconds / 60:.1f} min")
    typer.echo(str(path))
    dd.shutdown(ctx)
