"""The chat data model: messages, conversations, who is "me", and the helpers that build them.

Every importer (:mod:`persona_sdk.importers`) turns one export into
:class:`Conversation` objects made of :class:`Message` objects; :class:`Chats`
holds everything loaded (:func:`persona_sdk.chats.load_chats` reads it).
:func:`resolve_me` decides which sender is the user. Importers share
:func:`classify_text` (placeholders) and :func:`split_on_silence`.

Errors name senders only when they are safe to show (a sender seen once may be
message text), never message text.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from .errors import AmbiguousSpeakerError, ChatFormatError, ConfigError, UnknownSpeakerError

# Message kinds. Only TEXT messages are replies or context; the others are kept
# so that reports can count them.
TEXT = "text"
MEDIA = "media"  # "<Media omitted>", "image omitted", attachments without text
DELETED = "deleted"  # "This message was deleted"
SYSTEM = "system"  # joins, leaves, subject changes, encryption notices, calls
KINDS = (TEXT, MEDIA, DELETED, SYSTEM)


_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with unpaired surrogates (JSON ``"\\ud800"``, undecodable bytes) made U+FFFD.

    Such a str cannot be encoded, tokenised or printed; one bad character must not
    cost the whole history.
    """
    if text.isascii() or not _SURROGATES.search(text):
        return text
    return _SURROGATES.sub("\ufffd", text)


@dataclass(frozen=True, slots=True)
class Message:
    """One message. ``time`` is naive local time or aware UTC, when known.

    Sender and text are cleaned of unpaired surrogates (:func:`clean_text`).
    """

    sender: str
    text: str
    time: datetime | None = None
    kind: str = TEXT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"message kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("sender", "text"):
            value = getattr(self, name)
            if not value.isascii():
                cleaned = clean_text(value)
                if cleaned is not value:
                    object.__setattr__(self, name, cleaned)


@dataclass(frozen=True, slots=True)
class Conversation:
    """Messages in order. ``source`` is the format it came from."""

    id: str
    messages: tuple[Message, ...]
    source: str


@dataclass(frozen=True)
class Chats:
    """Everything loaded: conversations, a "me" hint from the file, formats seen.

    ``skipped`` lists (file, reason) for files inside a folder or .zip that
    were not chat exports.
    """

    conversations: tuple[Conversation, ...]
    me: str | None = None
    formats: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    def sender_counts(self) -> Counter:
        """Messages per sender (system lines not counted); ``.most_common()`` orders them."""
        return Counter(m.sender for c in self.conversations for m in c.messages if m.kind != SYSTEM)

    def subset(self, indices: Iterable[int]) -> "Chats":
        """Only the conversations at ``indices`` (in that order); Example.conversation then indexes the subset."""
        return Chats(tuple(self.conversations[i] for i in indices), self.me, self.formats, self.skipped)


# --- names ---------------------------------------------------------------------
_INVISIBLE = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\u200b"))


def strip_marks(text: str) -> str:
    """Remove invisible direction marks (U+200E etc.) that exports carry."""
    return text if text.isascii() else text.translate(_INVISIBLE)


@functools.lru_cache(maxsize=65536)  # sender names repeat on every message
def normalize_name(name: str) -> str:
    """Case-, width- and whitespace-insensitive key for a sender name."""
    name = unicodedata.normalize("NFKC", strip_marks(name))
    return " ".join(name.split()).casefold()


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def display_name(name: str) -> str:
    """A sender name safe to print: control characters (terminal escape sequences) escaped."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", name)


def _senders_line(counts: Counter, limit: int = 12) -> str:
    """Senders and counts for an error message. A "sender" seen only once may be message
    text that looked like a header line (WhatsApp), so those are counted, never named."""
    top = counts.most_common()
    named = [(name, n) for name, n in top if n > 1]
    once = len(top) - len(named)
    parts = [f"{display_name(name)} ({n})" for name, n in named[:limit]]
    if len(named) > limit:
        parts.append(f"{len(named) - limit} more")
    if once:
        parts.append(f"{once} sender(s) with a single message (not named)")
    return "senders with message counts: " + ", ".join(parts)


def who_is_me(chats: Chats, me: str | None = None) -> tuple[str, str]:
    """(sender name as written in the chats, how it was chosen).

    How: ``"given"`` (``me`` argument / ``--me``), ``"file"`` (``me`` in the
    file) or ``"inferred"`` (the only sender present in every conversation).
    Matching is case- and whitespace-insensitive.
    """
    counts = chats.sender_counts()
    if not counts:
        raise ChatFormatError("the chats contain no messages")
    for how, wanted in (("given", me), ("file", chats.me)):
        if wanted is None:
            continue
        key = normalize_name(wanted)
        matches = [name for name, _ in counts.most_common() if normalize_name(name) == key]
        if not matches:
            where = "--me" if how == "given" else "\"me\" in the chats file"
            raise UnknownSpeakerError(
                f"{where} matches no sender; {_senders_line(counts)}"
            )
        return matches[0], how
    everywhere: set[str] | None = None
    for conv in chats.conversations:
        present = {normalize_name(m.sender) for m in conv.messages if m.kind != SYSTEM}
        if not present:
            continue
        everywhere = present if everywhere is None else everywhere & present
    if everywhere and len(everywhere) == 1:
        key = next(iter(everywhere))
        name = next(n for n, _ in counts.most_common() if normalize_name(n) == key)
        return name, "inferred"
    raise AmbiguousSpeakerError(
        f"cannot tell which sender is you; pass --me NAME. {_senders_line(counts)}"
    )


def resolve_me(chats: Chats, me: str | None = None) -> str:
    """The sender who is "me": ``me``, else the file's ``me``, else the only
    sender present in every conversation; else an error listing the senders."""
    return who_is_me(chats, me)[0]


# --- helpers shared by importers -----------------------------------------------
_SILENCE_HOURS = 6.0


def split_on_silence(
    messages: Iterable[Message], source: str, id_prefix: str, silence_hours: float = _SILENCE_HOURS
) -> list[Conversation]:
    """Cut one chat log into conversations wherever nobody wrote for
    ``silence_hours`` (so context never spans days). Messages without a time
    never cut."""
    out: list[Conversation] = []
    current: list[Message] = []
    last: datetime | None = None
    for msg in messages:
        if current and msg.time is not None and last is not None:
            try:
                gap = (msg.time - last).total_seconds()
            except TypeError:  # naive vs aware: no cut
                gap = 0.0
            if gap > silence_hours * 3600:
                out.append(Conversation(f"{id_prefix}#{len(out) + 1}", tuple(current), source))
                current = []
        current.append(msg)
        if msg.time is not None:
            last = msg.time
    if current:
        out.append(Conversation(f"{id_prefix}#{len(out) + 1}", tuple(current), source))
    return out


_MARKS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\u200b"
_PLACEHOLDER_RE = re.compile(
    r"^(?:<media omitted>|<attached: [^>\n]*>|(?:image|video|audio|sticker|gif|document|contact card|location)"
    r" omitted|[^\n]{0,200} (?:document|file|pages?) omitted|[^\n]{0,200} ?\(file attached\)|null)$",
    re.IGNORECASE,
)
_DELETED = frozenset(
    ("this message was deleted", "this message was deleted.", "you deleted this message",
     "you deleted this message.", "deleted message", "message deleted")
)


def classify_text(text: str) -> str:
    """TEXT, or MEDIA / DELETED for the placeholders exports write instead of content."""
    probe = text.strip()
    if not probe or len(probe) > 300:
        return TEXT
    if probe[0] in _MARKS or probe[-1] in _MARKS or "\u200e" in probe:
        probe = strip_marks(probe).strip()
    low = probe.lower()
    if low in _DELETED:
        return DELETED
    if (low.endswith(("omitted", "omitted>", "(file attached)", ">")) or low == "null") and _PLACEHOLDER_RE.match(probe):
        return MEDIA
    return TEXT
