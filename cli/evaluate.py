"""`persona eval`: perplexity of your held-out replies with and without your persona, and what a
reader notices (length, style, topics, attribution) in the replies it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from persona_sdk.config import RuntimeConfig

from ._app import app
from ._common import backbone_option, config_option, err, open_vault, profile_key


@app.command("eval")
def eval_(
    profile: str = typer.Argument(..., help="Enrolled profile to evaluate (see `persona list`)."),
    chats: Path = typer.Option(..., "--chats", help="Held-out chats (chats.json or an export) the persona was NOT trained on."),
    me: Optional[str] = typer.Option(None, "--me", help="Your sender name in the chats (default: from the file, or the one sender in every conversation)."),
    fmt: str = typer.Option("auto", "--format", help="Chats format: auto, chats, whatsapp, telegram, discord or chitchat."),
    source: str = typer.Option("default", "--source", help="Source prefix to compare against: default (the shipped one, when it fits the backbone), a .safetensors file, or none."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write an HTML report with a plot and the side-by-side replies (contains your chat text)."),
    samples: int = typer.Option(3, "--samples", help="Side-by-side replies to generate and print (0 = none; only numbers are printed)."),
    max_replies: int = typer.Option(100, "--max-replies", help="Score at most this many replies (evenly spread)."),
    voice: int = typer.Option(40, "--voice", help="Held-out contexts the persona, the source prefix and the backbone each answer (chat defaults, fixed seeds) for the style/topic/attribution comparison; 0 = skip."),
    attribution_k: int = typer.Option(20, "--attribution-k", help="Attribution classes: you + K-1 chitchat source speakers (chance 1/K); 0 = skip attribution."),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON (never any chat text)."),
    backbone: Optional[Path] = backbone_option(export_ok=True),
    device: str = config_option(RuntimeConfig, "device", "--device"),
    variant: Optional[str] = config_option(RuntimeConfig, "variant", "--variant"),
) -> None:
    """Measure how much your persona explains your own held-out replies.

    Example: persona eval me --chats held_out.json --me Alice --html report.html

    Prints perplexity of your replies with the backbone alone, with the source
    prefix (the shipped one by default) and with your persona, the relative gain; then
    what a reader notices: replies the persona, the source prefix and the bare backbone
    write to your held-out contexts against your real ones (median length, lowercase
    starts, final punctuation, emoji, ! or ?, multi-message turns, your distinctive
    topics, and whether a stylometric classifier attributes them to you among K-1
    chitchat source speakers). Warns when the chats overlap what the persona was
    trained on. A few generated replies are shown next to yours. Nothing is written
    unless you pass --html; --json prints numbers only.
    """
    from persona_sdk.chats import load_chats, resolve_me
    from persona_sdk.evaluate import EvalConfig, evaluate, format_samples, held_out_examples, write_html
    from persona_sdk.engines import open_engine

    if as_json and html_out is None:
        samples = 0  # nothing would show them
    if attribution_k == 1 or attribution_k < 0:
        from persona_sdk.errors import ConfigError

        raise ConfigError("--attribution-k must be 0 (skip) or >= 2")
    config = EvalConfig(samples=samples, max_replies=max_replies, voice=voice,
                        **({"attribution_k": attribution_k} if attribution_k else {}))
    vault = open_vault()
    key = profile_key(vault, profile)
    loaded = load_chats(chats, fmt)
    who = resolve_me(loaded, me)
    runtime = RuntimeConfig(device=device, **({"variant": variant} if variant else {}))
    engine = open_engine(backbone, runtime, progress=err, build=True)  # a first-run build is announced
    persona = vault.load(profile, key, fingerprint=engine.fingerprint)
    source_prefix = _source(source, engine.fingerprint)
    examples = held_out_examples(engine, loaded, who, config)
    distractors = _distractors(config) if voice and attribution_k else None
    err(f"Scoring {min(len(examples), config.max_replies)} of your {len(examples)} replies on {engine.device}...")
    report = evaluate(engine, persona, examples, me=who, source=source_prefix, config=config,
                      progress=_progress_printer(), distractors=distractors,
                      voice_progress=_progress_printer("contexts answered"))
    for note in report.notes:
        err(f"({note})")
    if as_json:
        for line in report.warnings:
            err(line)
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.summary_lines():
            typer.echo(line)
        for line in format_samples(report):
            typer.echo(line)
    if html_out is not None:
        err(f"Wrote {write_html(report, html_out)} (it contains your chat text).")


def _source(source: str, fingerprint: str):
    """The source prefix to compare with, or None (``none``, or no shipped one fits)."""
    from persona_sdk import source as src
    from persona_sdk.errors import EvalError, SourcePrefixError

    if source == "none":
        return None
    if source == "default":
        if not src.shipped_available():
            return None
        prefix = src.load_source()
        if prefix.backbone != fingerprint:
            err("(the shipped source prefix is for the default backbone: not compared)")
            return None
        return prefix
    try:
        return src.load_source(source)
    except SourcePrefixError as exc:
        raise EvalError(str(exc)) from None


def _distractors(config):
    """Chitchat source speakers for attribution, or None (with one line saying why)."""
    import importlib.util

    from persona_sdk.errors import ChatFileError, MissingDependencyError
    from persona_sdk.evaluate import source_speakers

    if importlib.util.find_spec("sklearn") is None:
        err("(attribution skipped: it needs scikit-learn: pip install 'persona-sdk[eval]')")
        return None
    try:
        return source_speakers(config.attribution_k - 1, config.distractor_replies, seed=config.seed)
    except (MissingDependencyError, ChatFileError) as exc:
        err(f"(attribution skipped: {exc})")
        return None


def _progress_printer(what: str = "scored"):
    step_every = [1]

    def show(done: int, total: int) -> None:
        step_every[0] = max(1, total // 10)
        if done == total or done % step_every[0] == 0:
            err(f"  {what} {done}/{total}")

    return show
