"""Telegram Desktop "Export chat history" JSON (``result.json``).

Either a single chat (``{"name", "type", "id", "messages": [...]}``) or the
full export (``{"personal_information": {...}, "chats": {"list": [chat, ...]}}``;
``left_chats`` too). ``text`` is a string or a list of strings and entity
objects (``{"type": "bold", "text": ...}``); service messages (joins, pins,
calls) are skipped; the sender is ``from``, else ``from_id``. Messages with
only a photo, file, sticker, poll or location are MEDIA. In a full export the
owner (``personal_information``) is the "me" hint. A silence of more than 6
hours starts a new conversation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..chatdata import MEDIA, TEXT, Conversation, Message, classify_text, split_on_silence
from ._util import parse_time, shape_error, type_name

SOURCE = "telegram"
_MEDIA_KEYS = ("photo", "file", "media_type", "sticker_emoji", "location_information",
               "contact_information", "poll", "game_title", "invoice_information")


def _is_chat(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("messages"), list) and "type" in obj and (
        "id" in obj or "name" in obj
    ) and "guild" not in obj


def detect(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    chats = obj.get("chats")
    if isinstance(chats, dict) and isinstance(chats.get("list"), list):
        return True
    if not _is_chat(obj):
        return False
    first = obj["messages"][0] if obj["messages"] else {}
    return isinstance(first, dict) and ("date" in first or first.get("type") in ("message", "service"))


def parse(obj: Any, where: str) -> tuple[list[Conversation], str | None]:
    if not isinstance(obj, dict):
        raise shape_error(where, "top level", f"expected an object, got {type_name(obj)}")
    chats: list[tuple[str, Any]] = []
    if "chats" in obj:
        for key in ("chats", "left_chats"):
            block = obj.get(key)
            if block is None and key == "left_chats":
                continue
            if not isinstance(block, dict) or not isinstance(block.get("list"), list):
                raise shape_error(where, f'"{key}"', 'expected an object with a "list" of chats')
            label = "chat" if key == "chats" else "left chat"
            chats.extend((f"{label} {i}", chat) for i, chat in enumerate(block["list"], start=1))
    else:
        chats.append(("chat 1", obj))
    out: list[Conversation] = []
    names: dict[str, str] = {}  # from_id -> display name, so a message without "from" keeps its sender
    for _, chat in chats:
        for item in chat.get("messages", []) if isinstance(chat, dict) and isinstance(chat.get("messages"), list) else []:
            if isinstance(item, dict) and isinstance(item.get("from"), str) and isinstance(item.get("from_id"), str):
                names.setdefault(item["from_id"], item["from"].strip())
    for label, chat in chats:
        if not isinstance(chat, dict) or not isinstance(chat.get("messages"), list):
            raise shape_error(where, label, 'expected an object with a "messages" list')
        messages = []
        for mi, item in enumerate(chat["messages"], start=1):
            msg = _message(item, where, f"{label}, message {mi}", names)
            if msg is not None:
                messages.append(msg)
        out.extend(split_on_silence(messages, SOURCE, f"telegram:{label}"))
    return out, _owner(obj, names)


def _message(item: Any, where: str, pos: str, names: dict[str, str]) -> Message | None:
    if not isinstance(item, dict):
        raise shape_error(where, pos, f"expected an object, got {type_name(item)}")
    if item.get("type", "message") != "message":
        return None  # service message: joins, pins, calls, ...
    sender = item.get("from")
    from_id = item.get("from_id")
    if not isinstance(sender, str) or not sender.strip():
        sender = (names.get(from_id) or from_id) if isinstance(from_id, str) else None
    if sender is None:
        raise shape_error(where, pos, 'needs a "from" or "from_id" string')
    sender = sender.strip()
    text = _text(item.get("text", ""), where, pos)
    if item.get("date") is not None:  # local time of the exporting machine, naive
        time: datetime | None = parse_time(item["date"], where, pos, "date")
    else:
        raw = item.get("date_unixtime")
        try:
            time = parse_time(int(raw), where, pos, "date_unixtime") if raw is not None else None
        except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 is infinity
            raise shape_error(where, pos, '"date_unixtime" is not a number') from None
    if not text.strip() and any(k in item for k in _MEDIA_KEYS):
        return Message(sender, "", time, MEDIA)
    return Message(sender, text, time, classify_text(text) if text else TEXT)


def _text(value: Any, where: str, pos: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for ei, part in enumerate(value, start=1):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text", ""), str):
                parts.append(part.get("text", ""))
            else:
                raise shape_error(where, f"{pos}, text part {ei}", "expected a string or an object with \"text\"")
        return "".join(parts)
    raise shape_error(where, pos, f'"text" must be a string or a list, got {type_name(value)}')


def _owner(obj: dict, names: dict[str, str]) -> str | None:
    info = obj.get("personal_information")
    if not isinstance(info, dict):
        return None
    uid = info.get("user_id")
    if uid is not None and f"user{uid}" in names:
        return names[f"user{uid}"]
    full = " ".join(str(info.get(k) or "").strip() for k in ("first_name", "last_name")).strip()
    return full or None
