"""Discord channel exports in DiscordChatExporter's JSON format.

Shape: ``{"guild": {...}, "channel": {...}, "messages": [{"type", "timestamp",
"content", "author": {"name", "nickname", ...}, "attachments", "stickers",
"embeds"}, ...]}``. The sender is ``author.name``; ``Default`` and ``Reply``
messages are text, every other type (joins, pins, calls, thread events) is
SYSTEM; a message with no content but attachments, stickers or embeds is
MEDIA. A silence of more than 6 hours starts a new conversation.
"""

from __future__ import annotations

from typing import Any

from ..chatdata import MEDIA, SYSTEM, TEXT, Conversation, Message, classify_text, split_on_silence
from ._util import parse_time, shape_error, type_name

SOURCE = "discord"
_TEXT_TYPES = ("Default", "Reply", 0, 19)


def detect(obj: Any) -> bool:
    return isinstance(obj, dict) and "channel" in obj and isinstance(obj.get("messages"), list) and (
        "guild" in obj or "exportedAt" in obj
    )


def parse(obj: Any, where: str) -> tuple[list[Conversation], None]:
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise shape_error(where, "top level", 'expected an object with a "messages" list')
    messages = [_message(item, where, f"message {i}") for i, item in enumerate(obj["messages"], start=1)]
    channel = obj.get("channel")
    cid = channel.get("id") if isinstance(channel, dict) else None
    return split_on_silence(messages, SOURCE, f"discord:{cid or 'channel'}"), None


def _message(item: Any, where: str, pos: str) -> Message:
    if not isinstance(item, dict):
        raise shape_error(where, pos, f"expected an object, got {type_name(item)}")
    author = item.get("author")
    if not isinstance(author, dict):
        raise shape_error(where, pos, f'"author" must be an object, got {type_name(author)}')
    sender = next((author[k] for k in ("name", "nickname", "id") if isinstance(author.get(k), str) and author[k].strip()), None)
    if sender is None:
        raise shape_error(where, pos, '"author" needs a "name"')
    content = item.get("content", "")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise shape_error(where, pos, f'"content" must be a string, got {type_name(content)}')
    time = parse_time(item.get("timestamp"), where, pos, "timestamp")
    if item.get("type", "Default") not in _TEXT_TYPES:
        return Message(sender.strip(), content, time, SYSTEM)
    if not content.strip() and any(item.get(k) for k in ("attachments", "stickers", "embeds")):
        return Message(sender.strip(), "", time, MEDIA)
    return Message(sender.strip(), content, time, classify_text(content) if content else TEXT)
