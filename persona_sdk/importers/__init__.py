"""One module per chat-export format. Each turns decoded content into
:class:`persona_sdk.chatdata.Conversation` objects (the dispatcher,
:mod:`persona_sdk.chats`, picks the module; importers never import it).

JSON formats expose ``detect(obj) -> bool`` and ``parse(obj, where) ->
(conversations, me_hint)``; WhatsApp (plain text) exposes ``detect(text)`` and
``parse(text, where)``. Detection order matters: the most specific shape first.
"""

from __future__ import annotations

from . import chatsjson, chitchat, discord, telegram, whatsapp

JSON_IMPORTERS = {
    "chats": chatsjson,
    "telegram": telegram,
    "discord": discord,
    "chitchat": chitchat,
}
JSON_DETECTORS = (
    ("telegram", telegram.detect),
    ("discord", discord.detect),
    ("chats", chatsjson.detect),
    ("chitchat", chitchat.detect),
)

__all__ = ["JSON_DETECTORS", "JSON_IMPORTERS", "chatsjson", "chitchat", "discord", "telegram", "whatsapp"]
