"""`persona chat`: talk to the backbone, to an enrolled persona, or to a persona described in sentences."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from persona_sdk.config import GenerationConfig, RuntimeConfig
from persona_sdk.errors import ConfigError

from ._app import app
from ._common import backbone_option, config_option, err, open_vault, profile_key


@app.command()
def chat(
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Send one message, print the reply to stdout, exit."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Enrolled profile to speak as (see `persona list`)."),
    backbone: Optional[Path] = backbone_option(),
    device: str = config_option(RuntimeConfig, "device", "--device"),
    spin: bool = config_option(RuntimeConfig, "spin", "--spin"),
    variant: Optional[str] = config_option(RuntimeConfig, "variant", "--variant"),
    max_new_tokens: int = config_option(GenerationConfig, "max_new_tokens", "--max-new-tokens"),
    temperature: float = config_option(GenerationConfig, "temperature", "--temperature"),
    top_p: float = config_option(GenerationConfig, "top_p", "--top-p"),
    top_k: int = config_option(GenerationConfig, "top_k", "--top-k"),
    repetition_penalty: float = config_option(GenerationConfig, "repetition_penalty", "--repetition-penalty"),
    beams: int = config_option(GenerationConfig, "num_beams", "--beams"),
    length_pull: float = config_option(GenerationConfig, "length_pull", "--length-pull"),
    length_from: str = config_option(GenerationConfig, "length_from", "--length-from"),
    seed: Optional[int] = config_option(GenerationConfig, "seed", "--seed"),
    persona: Optional[List[str]] = typer.Option(None, "--persona", help="A persona sentence to speak as "
                                                "(repeat for several), instead of an enrolled profile."),
    persona_file: Optional[Path] = typer.Option(None, "--persona-file", help="Persona sentences, one per line."),
    explicit: Optional[str] = typer.Option(None, "--explicit", help="How persona sentences are used: prompt "
                                           "(in the prompt, default), pal (PAL adapter: select, then generate) or "
                                           "paa (persona-adaptive attention: trained fusions, see `persona explicit "
                                           "train paa`)."),
) -> None:
    """Chat in a persona's voice (or with the bare backbone).

    Example: persona chat --name me --message "hi, what do you do on weekends?"

    Example: persona chat --persona "I bake cookies." --persona "I have a dog." --explicit pal -m "what do you do for fun?"

    Example: persona chat --persona "I bake cookies." --explicit paa -m "what do you do for fun?"

    In the interactive chat, /reset forgets the conversation, /exit or Ctrl-D
    quits, and Ctrl-C stops the reply being written. The first run builds the
    backbone's ONNX export (once; it says so on stderr first, needs the [export] extra).
    """
    from persona_sdk.agent import PersonaAgent

    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                           repetition_penalty=repetition_penalty, num_beams=beams, seed=seed,
                           length_pull=length_pull, length_from=length_from, do_sample=temperature > 0 and beams == 1)
    # the first run builds the ONNX export: announced on stderr before it starts
    kwargs = dict(backbone=backbone, device=device, variant=variant, spin=spin, generation=gen, progress=err,
                  build=True)
    sentences = _persona_sentences(persona, persona_file, explicit)
    if sentences is not None:
        if name:
            raise ConfigError("--name and --persona/--persona-file cannot be combined; pass one")
        agent = PersonaAgent(persona_sentences=sentences, explicit=explicit, **kwargs)
    elif name:
        agent = PersonaAgent.open(name, passphrase=profile_key(open_vault(), name), **kwargs)
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
        except UnicodeDecodeError:  # a strict-decoding terminal got bytes that are not text
            err("Error: that line is not valid text (bytes that are not UTF-8); try again")
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
        from persona_sdk.errors import GenerationError

        try:
            pieces = agent.stream(text)
        except GenerationError as exc:  # one bad line does not end the conversation
            err(f"Error: {exc}")
            continue
        sys.stdout.write(f"{who}> ")
        sys.stdout.flush()
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
