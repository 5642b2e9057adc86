"""The canonical ``chats.json`` format (schema: ``persona_sdk/data/chats.schema.json``)::

    {"me": "Alice",                       # optional; --me wins
     "conversations": [
       {"id": "optional",
        "messages": [{"sender": "Bob", "text": "hey", "time": "2024-05-01T10:00:00Z"},
                     {"sender": "Alice", "text": "yes!"}]}]}

A bare JSON list of conversations is accepted too; a conversation may also be
a bare list of messages. ``time`` is optional ISO-8601; ``kind`` is optional
(text, media, deleted, system). Unknown extra keys are ignored.
"""

from __future__ import annotations

from typing import Any

from ..chatdata import KINDS, TEXT, Conversation, Message, classify_text
from ._util import parse_time, shape_error, type_name

SOURCE = "chats"


def detect(obj: Any) -> bool:
    if isinstance(obj, dict):
        return "conversations" in obj
    if isinstance(obj, list):
        first = obj[0] if obj else None
        if isinstance(first, dict):
            return "messages" in first
        if isinstance(first, list):
            return not first or (isinstance(first[0], dict) and "sender" in first[0])
    return False


def parse(obj: Any, where: str) -> tuple[list[Conversation], str | None]:
    me = None
    if isinstance(obj, dict):
        if "conversations" not in obj:
            raise shape_error(where, "top level", 'missing the "conversations" field')
        me = obj.get("me")
        if me is not None and (not isinstance(me, str) or not me.strip()):
            raise shape_error(where, "top level", f'"me" must be a non-empty string, got {type_name(me)}')
        convs = obj["conversations"]
        if not isinstance(convs, list):
            raise shape_error(where, "top level", f'"conversations" must be a list, got {type_name(convs)}')
    elif isinstance(obj, list):
        convs = obj
    else:
        raise shape_error(where, "top level", f"expected an object or a list, got {type_name(obj)}")
    out: list[Conversation] = []
    for ci, conv in enumerate(convs, start=1):
        pos = f"conversation {ci}"
        cid: Any = str(ci)
        if isinstance(conv, dict):
            if "messages" not in conv:
                raise shape_error(where, pos, 'missing the "messages" field')
            raw = conv["messages"]
            if conv.get("id") is not None:
                cid = conv["id"]
                if not isinstance(cid, (str, int)) or isinstance(cid, bool):
                    raise shape_error(where, pos, f'"id" must be a string, got {type_name(cid)}')
        elif isinstance(conv, list):
            raw = conv
        else:
            raise shape_error(where, pos, f"expected an object with \"messages\", got {type_name(conv)}")
        if not isinstance(raw, list):
            raise shape_error(where, pos, f'"messages" must be a list, got {type_name(raw)}')
        messages = []
        for mi, item in enumerate(raw, start=1):
            messages.append(_message(item, where, f"{pos}, message {mi}"))
        out.append(Conversation(str(cid), tuple(messages), SOURCE))
    return out, (me.strip() if isinstance(me, str) else None)


def _message(item: Any, where: str, pos: str) -> Message:
    if not isinstance(item, dict):
        raise shape_error(where, pos, f"expected an object, got {type_name(item)}")
    for key in ("sender", "text"):
        if key not in item:
            raise shape_error(where, pos, f'missing the "{key}" field')
    sender, text = item["sender"], item["text"]
    if not isinstance(sender, str) or not sender.strip():
        raise shape_error(where, pos, f'"sender" must be a non-empty string, got {type_name(sender)}')
    if not isinstance(text, str):
        raise shape_error(where, pos, f'"text" must be a string, got {type_name(text)}')
    time = parse_time(item.get("time"), where, pos)
    kind = item.get("kind")
    if kind is None:
        kind = classify_text(text)
    elif kind not in KINDS:
        raise shape_error(where, pos, f'"kind" must be one of {", ".join(KINDS)}')
    return Message(sender.strip(), text, time, kind or TEXT)
