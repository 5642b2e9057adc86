"""`persona chat`: talk to the backbone, or to an enrolled persona."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import app
from persona_sdk.errors import ConfigError

from ._common import err


@app.command()
def chat(
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Send one message, print the reply to stdout, exit."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Enrolled profile to speak as (see `persona list`)."),
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Local Hugging Face causal-LM folder (default: embedded SmolLM2-135M-Instruct)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    spin: bool = typer.Option(False, "--spin", help="Busy-waiting CPU threads: ~1.5x faster on an idle CPU, "
                              "slower when the cores are busy."),
    variant: Optional[str] = typer.Option(None, "--variant", help="ONNX variant: fp32, int8, int4 or fp16 (default: int8 on CPU, fp16 on CUDA)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Most tokens in one reply."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature; 0 = greedy."),
    top_p: float = typer.Option(0.9, "--top-p", help="Nucleus sampling mass."),
    top_k: int = typer.Option(50, "--top-k", help="Sample among the k most likely tokens (0 = all)."),
    repetition_penalty: float = typer.Option(1.1, "--repetition-penalty", help=">= 1; discourages repeating tokens."),
    beams: int = typer.Option(1, "--beams", help="Beam search width (> 1 disables sampling)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for reproducible sampling."),
    persona: Optional[List[str]] = typer.Option(None, "--persona", help="A persona sentence to speak as "
                                                "(repeat for several), instead of an enrolled profile."),
    persona_file: Optional[Path] = typer.Option(None, "--persona-file", help="Persona sentences, one per line."),
    explicit: Optional[str] = typer.Option(None, "--explicit", help="How persona sentences are used: prompt "
                                           "(in the prompt, default) or pal (PAL adapter: select, then generate)."),
) -> None:
    """Chat in a persona's voice (or with the bare backbone).

    Example: persona chat --name me --message "hi, what do you do on weekends?"

    Example: persona chat --persona "I bake cookies." --persona "I have a dog." --explicit pal -m "what do you do for fun?"

    In the interactive chat, /reset forgets the conversation, /exit or Ctrl-D
    quits, and Ctrl-C stops the reply being written. The first run builds the
    backbone's ONNX export (once; it says so on stderr first, needs the [export] extra).
    """
    from persona_sdk.agent import PersonaAgent
    from persona_sdk.config import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                           repetition_penalty=repetition_penalty, num_beams=beams, seed=seed,
                           do_sample=temperature > 0 and beams == 1)
    # the first run builds the ONNX export: announced on stderr before it starts
    kwargs = dict(backbone=backbone, device=device, variant=variant, spin=spin, generation=gen, progress=err,
                  build=True)
    sentences = _persona_sentences(persona, persona_file, explicit)
    if sentences is not None:
        if name:
            raise ConfigError("--name and --persona/--persona-file cannot be combined; pass one")
        agent = PersonaAgent(persona_sentences=sentences, explicit=explicit, **kwargs)
    elif name:
        agent = PersonaAgent.open(name, passphrase=_vault_passphrase(name), **kwargs)
    else:
        agent = PersonaAgent(**kwargs)
    with agent:
        if message is not None:
            typer.echo(agent.reply(message).strip())
            return
        _repl(agent, name)


def _persona_sentences(persona, persona_file, explicit) -> Optional[list]:
    """The checked persona sentences of --persona / --persona-file (None = no explicit persona)."""
    if not persona and persona_file is None and explicit is None:
        return None
    from persona_sdk.explicit import persona_sentences, read_persona_file

    sentences = list(persona or []) + (read_persona_file(persona_file) if persona_file is not None else [])
    return list(persona_sentences(sentences))


def _vault_passphrase(name: str) -> Optional[str]:
    """PERSONA_PASSPHRASE, else a hidden prompt — only for passphrase-mode profiles."""
    from persona_sdk import vault

    value = os.environ.get("PERSONA_PASSPHRASE")
    if value or not vault.needs_passphrase(name):
        return value or None
    from ._common import prompt_passphrase

    return prompt_passphrase("PERSONA_PASSPHRASE", confirm=False)


def _repl(agent, name: Optional[str]) -> None:
    who = name or "persona"
    err(f"Chatting as {who} on {agent.engine.device}. /reset forgets, /exit or Ctrl-D quits, Ctrl-C stops a reply.")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            typer.echo("")
            return
        except KeyboardInterrupt:
            typer.echo("")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            agent.reset()
            err("(conversation forgotten)")
            continue
        sys.stdout.write(f"{who}> ")
        sys.stdout.flush()
        pieces = agent.stream(text)
        try:
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            agent.cancel()
            pieces.close()
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()
