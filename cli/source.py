"""`persona source train`: train a source prefix (maintainers; PersonaPKT stage 1)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._common import err

source_app = typer.Typer(help="Source prefixes (maintainers): the multi-speaker start of every enrollment.",
                         no_args_is_help=True)
app.add_typer(source_app, name="source")


@source_app.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="folder to write source_prefix.safetensors + SOURCE.json into"),
    corpus: str = typer.Option("chitchat", help="chitchat (part-A speakers of the eval split) or spc (needs --spc-csv)"),
    spc_csv: Optional[Path] = typer.Option(None, "--spc-csv", help="Synthetic-Persona-Chat CSV (corpus spc)"),
    method: str = typer.Option("plain", help="plain | temperature | ppreptile | mtml | amtml"),
    steps: int = typer.Option(200, help="optimisation steps (meta methods: inner steps in total)"),
    lr: float = typer.Option(3e-3, help="learning rate (inner lr for meta methods)"),
    batch_size: int = typer.Option(8, help="examples per step"),
    prefix_len: int = typer.Option(16, help="virtual tokens P"),
    temperature: float = typer.Option(10.0, help="T of temperature mixing"),
    inner_steps: int = typer.Option(3, help="k inner steps per speaker (meta methods)"),
    outer_batch: int = typer.Option(2, help="speakers per outer step (meta methods)"),
    outer_lr: float = typer.Option(1.0, help="β of the Reptile outer step"),
    alpha: float = typer.Option(0.8, help="α weighting response vs reconstruction loss (mtml/amtml)"),
    context_budget: int = typer.Option(112, help="max context tokens before a reply"),
    max_speakers: Optional[int] = typer.Option(None, help="use only the first N part-A speakers (hash order)"),
    max_per_speaker: Optional[int] = typer.Option(None, help="cap replies per speaker"),
    max_val: int = typer.Option(64, help="validation replies (sampled from part-A val conversations)"),
    max_minutes: Optional[float] = typer.Option(None, help="wall-clock budget"),
    seed: int = typer.Option(0, help="random seed"),
    init_text: Optional[str] = typer.Option(None, help="start from the KV of this text instead of random tokens"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
    backbone: Optional[str] = typer.Option(None, help="backbone folder (default: the embedded SmolLM2-135M)"),
) -> None:
    """Train a source prefix over many speakers and write it with its provenance.

    Example: persona source train --out persona_sdk/data/source_prefix --method plain --steps 200
    """
    from persona_sdk import source as src

    cfg = src.SourceConfig(method=method, prefix_len=prefix_len, steps=steps, lr=lr, batch_size=batch_size,
                           temperature=temperature, inner_steps=inner_steps, outer_batch=outer_batch,
                           outer_lr=outer_lr, alpha=alpha, context_budget=context_budget,
                           max_minutes=max_minutes, seed=seed, init_text=init_text)
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
    err(f"{provenance['speakers']} speakers, {sum(len(s.examples) for s in speakers)} replies, "
        f"{len(val)} validation replies; method {method}, {steps} steps")
    from ._progress import TrainBar

    prefix, summary = src.train_source(speakers, val, backbone=backbone, config=cfg,
                                       progress=TrainBar(f"source/{method}"))
    info = {
        "command": "persona source train " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("train") + 1:])
        if "train" in sys.argv else None,
        "config": cfg.to_dict(),
        "data": provenance,
        "summary": summary.as_meta(),
        "threads": threads,
    }
    path = src.save_source(prefix, out, info)
    err(f"val loss {summary.init_val_loss:.3f} -> {summary.best_val_loss:.3f} (best at step {summary.best_step}), "
        f"{summary.wall_seconds / 60:.1f} min")
    typer.echo(str(path))
