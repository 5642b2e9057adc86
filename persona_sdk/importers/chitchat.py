"""The ``chitchat-dataset`` package's format (BYU PCC Chit Chat Challenge).

Shape: ``{conversation_id: {"messages": [[{"text", "timestamp", "sender"}, ...], ...],
"start", "prompt", "ratings"}}`` -- each inner list is one turn of one sender;
senders are anonymous speaker ids (UUIDs), so one speaker can be learned as a
persona (``me`` = that speaker id).

For training and benchmarks use :func:`load_chitchat`::

    from persona_sdk.importers.chitchat import load_chitchat, speaker_conversations
    chats = load_chitchat()                      # 7,168 conversations, sender = speaker id
    by_speaker = speaker_conversations(chats)    # {speaker_id: [conversation index, ...]}
    mine = chats.subset(by_speaker[speaker_id])  # only that speaker's conversations (fast)
    # build_examples(mine, speaker_id) -> ExampleSet (see persona_sdk.reply_examples)

Conversations keep the dataset's order; ``Conversation.id`` is the dataset's
conversation id; ``Message.time`` is an aware UTC datetime.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..chatbytes import decode_text, parse_json
from ..chatdata import Chats, Conversation, Message, classify_text
from ..errors import ChatFileError
from ._util import shape_error, type_name, parse_time

SOURCE = "chitchat"


def detect(obj: Any) -> bool:
    """A dict of id -> {"messages": [[{...sender, text}], ...]}."""
    if not isinstance(obj, dict) or not obj or "conversations" in obj:
        return False
    for value in list(obj.values())[:3]:
        if not (isinstance(value, dict) and isinstance(value.get("messages"), list)):
            return False
        groups = value["messages"]
        if groups and not isinstance(groups[0], list):
            return False
    return True


def parse(obj: Any, where: str) -> tuple[list[Conversation], None]:
    if not isinstance(obj, dict):
        raise shape_error(where, "top level", f"expected an object of conversations, got {type_name(obj)}")
    out: list[Conversation] = []
    for ci, (cid, conv) in enumerate(obj.items(), start=1):
        pos = f"conversation {ci}"
        if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
            raise shape_error(where, pos, 'expected an object with a "messages" list')
        messages: list[Message] = []
        mi = 0
        for gi, group in enumerate(conv["messages"], start=1):
            if not isinstance(group, list):
                raise shape_error(where, f"{pos}, turn {gi}", f"expected a list of messages, got {type_name(group)}")
            for item in group:
                mi += 1
                mpos = f"{pos}, message {mi}"
                if not isinstance(item, dict):
                    raise shape_error(where, mpos, f"expected an object, got {type_name(item)}")
                sender, text = item.get("sender"), item.get("text")
                if not isinstance(sender, str) or not sender.strip():
                    raise shape_error(where, mpos, '"sender" must be a non-empty string')
                if not isinstance(text, str):
                    raise shape_error(where, mpos, f'"text" must be a string, got {type_name(text)}')
                time = parse_time(item.get("timestamp"), where, mpos, "timestamp")
                messages.append(Message(sender.strip(), text, time, classify_text(text)))
        out.append(Conversation(str(cid), tuple(messages), SOURCE))
    return out, None


def dataset_path() -> Path:
    """The dataset.json shipped by the installed ``chitchat-dataset`` package."""
    try:
        import chitchat_dataset
    except ImportError:
        raise ChatFileError(
            "the chitchat-dataset package is not installed (pip install chitchat-dataset)"
        ) from None
    return Path(chitchat_dataset.__file__).with_name("dataset.json")


@functools.lru_cache(maxsize=2)
def load_chitchat(path: str | None = None) -> Chats:
    """All chitchat-dataset conversations (sender = speaker id), read from the
    installed package (or ``path``). Parsed once per process (cached). ``Chats.me`` is None."""
    file = Path(path) if path is not None else dataset_path()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ChatFileError(f"cannot read {file}: {exc.strerror or 'not accessible'}") from None
    where = str(file)
    conversations, _ = parse(parse_json(decode_text(data, where), where), where)
    return Chats(tuple(conversations), None, (SOURCE,))


def speaker_conversations(chats: Chats) -> dict[str, list[int]]:
    """{speaker id: indices of the conversations they speak in}, in first-seen order."""
    out: dict[str, list[int]] = {}
    for i, conv in enumerate(chats.conversations):
        for sender in dict.fromkeys(m.sender for m in conv.messages):
            out.setdefault(sender, []).append(i)
    return out
