"""`persona inspect`: what would be learned from a chat export -- counts only,
never message text."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._app import app
from ._common import err

_HOW = {
    "given": "from --me",
    "file": "from \"me\" in the chats file",
    "inferred": "inferred: the only sender in every conversation; pass --me to change",
}


@app.command()
def inspect(
    chats: Path = typer.Argument(..., help="Chat export: chats.json, WhatsApp .txt, Telegram result.json, "
                                 "DiscordChatExporter .json, chitchat dataset.json, or a folder / .zip of exports."),
    me: str = typer.Option(None, "--me", help="Your name as it appears in the chats (case-insensitive)."),
    fmt: str = typer.Option("auto", "--format", help="auto, chats, whatsapp, telegram, discord or chitchat."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/validation split."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Show formats, senders, examples per split and dropped counts, without any message text.

    Example: persona inspect "WhatsApp Chat with Bob.txt" --me Alice
    """
    from persona_sdk.chats import FORMAT_CHOICES, display_name, load_chats, who_is_me
    from persona_sdk.errors import ConfigError
    from persona_sdk.reply_examples import MIN_REPLIES, build_examples

    if fmt not in FORMAT_CHOICES:
        raise ConfigError(f"--format must be one of {', '.join(FORMAT_CHOICES)}, got {fmt!r}")
    loaded = load_chats(chats, fmt)
    name, how = who_is_me(loaded, me)
    result = build_examples(loaded, name, seed=seed, min_replies=0, keep=False)  # counts only
    r = result.report
    # a "sender" seen once may be message text that looked like a header: counted, not named
    named = {s: n for s, n in r.senders.items() if n > 1 or s == r.me}
    once = len(r.senders) - len(named)
    if as_json:
        data = dict(vars(r))
        data["senders"] = named
        data["senders_with_one_message"] = once
        data["me_how"] = how
        data["min_replies"] = MIN_REPLIES
        data["skipped_files"] = len(loaded.skipped)
        typer.echo(json.dumps(data, ensure_ascii=False, indent=1))
    else:
        out = typer.echo
        out(f"formats: {', '.join(r.formats)}")
        if loaded.skipped:
            out(f"skipped files: {len(loaded.skipped)} (not chat exports)")
        out(f"me: {display_name(r.me)} ({_HOW[how]})")
        out(f"conversations: {r.conversations} ({r.conversations_with_examples} with examples of yours)")
        out("senders (messages):")
        shown = {display_name(s): n for s, n in named.items()}
        width = max((len(s) for s in shown), default=0)
        for sender, n in shown.items():
            out(f"  {sender.ljust(width)}  {n}")
        if once:
            out(f"  ({once} sender(s) with a single message, not named)")
        out(f"my messages: {r.my_messages}, my turns: {r.my_turns}")
        out(f"examples: {r.examples}")
        out(f"  train: {r.train} from {r.train_conversations} conversation(s)")
        out(f"  val:   {r.val} from {r.val_conversations} conversation(s) (split {r.split}, seed {seed})")
        out("dropped:" + ("" if r.dropped else " none"))
        for reason, n in r.dropped.items():
            out(f"  {reason}: {n}")
    if r.examples < MIN_REPLIES:
        err(f"warning: too little data to enroll: found {r.examples} usable replies of yours; "
            f"at least {MIN_REPLIES} are needed")
    else:
        err(f"ok: {r.examples} usable replies of yours (enroll needs at least {MIN_REPLIES})")
