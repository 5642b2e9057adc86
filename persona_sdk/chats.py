"""Chat history in: the canonical in-memory model, reading and format detection.

Every importer (``persona_sdk.importers``) turns one export into
:class:`Conversation` objects; :func:`load_chats` reads a file, a folder or a
.zip, guards the bytes (size, emptiness, binary data, BOM / UTF-16), detects
the format from the content (or takes ``fmt``) and returns :class:`Chats`.
:func:`resolve_me` decides which sender is the user.

Privacy: the input is read into memory only, never copied, cached or logged.
Errors name a file and a position (``line 2041``, ``conversation 3, message
17``), never message text.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import (
    AmbiguousSpeakerError,
    ChatFileError,
    ChatFileTooLargeError,
    ChatFormatError,
    ConfigError,
    UnknownSpeakerError,
)

# Message kinds. Only TEXT messages are replies or context; the others are kept
# so that reports can count them.
TEXT = "text"
MEDIA = "media"  # "<Media omitted>", "image omitted", attachments without text
DELETED = "deleted"  # "This message was deleted"
SYSTEM = "system"  # joins, leaves, subject changes, encryption notices, calls
KINDS = (TEXT, MEDIA, DELETED, SYSTEM)

FORMATS = ("chats", "whatsapp", "telegram", "discord", "chitchat")
FORMAT_CHOICES = ("auto",) + FORMATS

# Years of daily texting are tens of MB; a Telegram full export of all chats
# rarely passes a few hundred. Anything larger is refused before reading.
MAX_CHAT_BYTES = 512 * 2**20

# File types looked at inside folders and .zip archives (media is skipped).
_CHAT_SUFFIXES = (".txt", ".json")


@dataclass(frozen=True)
class Message:
    """One message. ``time`` is naive local time or aware UTC, when known."""

    sender: str
    text: str
    time: datetime | None = None
    kind: str = TEXT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"message kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
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

    def with_sender(self, sender: str) -> "Chats":
        """Only the conversations in which ``sender`` (matched loosely) wrote something."""
        key = normalize_name(sender)
        keep = tuple(
            c
            for c in self.conversations
            if any(m.kind != SYSTEM and normalize_name(m.sender) == key for m in c.messages)
        )
        return Chats(keep, self.me, self.formats, self.skipped)

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


def _senders_line(counts: Counter, limit: int = 12) -> str:
    top = counts.most_common()
    shown = ", ".join(f"{name} ({n})" for name, n in top[:limit])
    more = f", and {len(top) - limit} more" if len(top) > limit else ""
    return f"senders with message counts: {shown}{more}"


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


def is_me(sender: str, me: str) -> bool:
    return normalize_name(sender) == normalize_name(me)


# --- bytes -> text -------------------------------------------------------------
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def decode_text(data: bytes, where: str) -> str:
    """Chat bytes -> str: BOMs, BOM-less UTF-16, binary and invalid UTF-8 handled."""
    if not data.strip():
        raise ChatFileError(f"{where} is empty")
    encoding = "utf-8"
    for bom, enc in _BOMS:
        if data.startswith(bom):
            encoding, data = enc, data[len(bom):]
            break
    else:
        head = data[:4096]
        if len(head) >= 4:
            odd_nuls = head[1::2].count(0) / max(len(head[1::2]), 1)
            even_nuls = head[0::2].count(0) / max(len(head[0::2]), 1)
            if odd_nuls > 0.4 and even_nuls < 0.05:
                encoding = "utf-16-le"
            elif even_nuls > 0.4 and odd_nuls < 0.05:
                encoding = "utf-16-be"
    if encoding == "utf-8" and b"\x00" in data:
        raise ChatFileError(f"{where} looks like a binary file, not a chat export")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n" if encoding == "utf-8" else "\n".encode(encoding)) + 1
        raise ChatFileError(
            f"{where} is not valid {encoding.upper()} text (bad bytes at line {line}); "
            "save the export as UTF-8"
        ) from None
    if "\x00" in text:
        raise ChatFileError(f"{where} looks like a binary file, not a chat export")
    if not text.strip():
        raise ChatFileError(f"{where} is empty")
    return text


def _read_limited(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ChatFileError(f"cannot read {path}: {exc.strerror or 'not accessible'}") from None
    if size > max_bytes:
        raise ChatFileTooLargeError(
            f"{path} is {size / 2**20:.0f} MiB; chat files above {max_bytes / 2**20:.0f} MiB are refused "
            "(split the export, e.g. one chat per file)"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ChatFileError(f"cannot read {path}: {exc.strerror or 'not accessible'}") from None
    if len(data) > max_bytes:  # grew while reading, or a special file
        raise ChatFileTooLargeError(f"{path} is larger than the {max_bytes / 2**20:.0f} MiB limit")
    return data


# --- format detection and dispatch ---------------------------------------------
def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg is a fixed phrase ("Expecting value"), never document text
        raise ChatFormatError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise ChatFormatError(f"{where} is JSON nested too deeply to be a chat export") from None


def detect_format(text: str) -> str | None:
    """The format of a decoded chat file, from its content; None if unknown."""
    from .importers import whatsapp

    if whatsapp.detect(text):
        return "whatsapp"
    if text.lstrip()[:1] in ("{", "["):
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return None
        return detect_json_format(obj)
    return None


def detect_json_format(obj: Any) -> str | None:
    from .importers import JSON_DETECTORS

    for name, detect in JSON_DETECTORS:
        if detect(obj):
            return name
    return None


@dataclass
class _Loaded:
    conversations: list[Conversation] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    me: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def parse_chat_text(text: str, where: str, fmt: str | None = None) -> tuple[str, list[Conversation], str | None]:
    """(format, conversations, me hint) from one decoded file."""
    from . import importers

    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMAT_CHOICES}, got {fmt!r}")
    if fmt is None and importers.whatsapp.detect(text):
        fmt = "whatsapp"
    if fmt == "whatsapp":
        return "whatsapp", importers.whatsapp.parse(text, where), None
    if fmt is None and text.lstrip()[:1] not in ("{", "["):
        raise ChatFormatError(
            f"{where} is not a recognised chat export (not JSON, and not a WhatsApp "
            "\"Export chat\" text file); supported: " + ", ".join(FORMATS)
        )
    obj = parse_json(text, where)
    if fmt is None:
        fmt = detect_json_format(obj)
        if fmt is None:
            raise ChatFormatError(
                f"{where} is JSON but not a recognised chat export (expected chats.json with "
                "\"conversations\", Telegram result.json, DiscordChatExporter JSON or chitchat-dataset)"
            )
    module = importers.JSON_IMPORTERS[fmt]
    conversations, me = module.parse(obj, where)
    return fmt, conversations, me


def _iter_folder(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _load_one(data: bytes, where: str, fmt: str | None, out: _Loaded, in_bundle: bool) -> None:
    try:
        text = decode_text(data, where)
        found, conversations, me = parse_chat_text(text, where, fmt)
    except (ChatFileError, ChatFormatError) as exc:
        if not in_bundle or isinstance(exc, ChatFileTooLargeError):
            raise
        out.skipped.append((where, str(exc)))
        return
    out.conversations.extend(conversations)
    if found not in out.formats:
        out.formats.append(found)
    if me is not None and out.me is None:
        out.me = me


def _load_zip(path: Path, fmt: str | None, out: _Loaded, max_bytes: int) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise ChatFileError(f"{path} is not a readable .zip archive") from None
    with archive:
        total = 0
        members = sorted(
            (i for i in archive.infolist() if not i.is_dir()), key=lambda i: i.filename
        )
        for info in members:
            name = info.filename
            base = name.rsplit("/", 1)[-1]
            if name.startswith("__MACOSX/") or base.startswith(".") or not base.lower().endswith(_CHAT_SUFFIXES):
                continue
            where = f"{path}!{name}"
            if info.file_size > max_bytes or total + info.file_size > max_bytes:
                raise ChatFileTooLargeError(
                    f"{where} unpacks to more than the {max_bytes / 2**20:.0f} MiB limit"
                )
            try:
                with archive.open(info) as fh:
                    data = fh.read(max_bytes + 1 - total)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError):
                raise ChatFileError(f"{where} cannot be unpacked (corrupt or encrypted archive)") from None
            total += len(data)
            if total > max_bytes:
                raise ChatFileTooLargeError(f"{where} unpacks to more than the {max_bytes / 2**20:.0f} MiB limit")
            _load_one(data, where, fmt, out, in_bundle=True)


def load_chats(path: str | os.PathLike, fmt: str | None = None, *, max_bytes: int = MAX_CHAT_BYTES) -> Chats:
    """Load chat history from a file, a folder of exports or a .zip.

    ``fmt``: one of :data:`FORMATS`, or None / ``"auto"`` to detect each file
    from its content. In folders and archives only ``.txt`` / ``.json`` files
    are read (media is ignored); files that are not chat exports are listed in
    ``Chats.skipped``. Raises :class:`ChatFileError`, :class:`ChatFormatError`.
    """
    if fmt == "auto":
        fmt = None
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMAT_CHOICES}, got {fmt!r}")
    root = Path(path)
    out = _Loaded()
    if root.is_dir():
        total = 0
        for file in _iter_folder(root):
            suffix = file.suffix.lower()
            if suffix == ".zip":
                _load_zip(file, fmt, out, max_bytes)
            elif suffix in _CHAT_SUFFIXES:
                data = _read_limited(file, max_bytes)
                total += len(data)
                if total > max_bytes:
                    raise ChatFileTooLargeError(
                        f"{root} holds more than {max_bytes / 2**20:.0f} MiB of chat files; pass fewer exports at once"
                    )
                _load_one(data, str(file), fmt, out, in_bundle=True)
        if not out.conversations:
            detail = f" ({len(out.skipped)} file(s) were not chat exports)" if out.skipped else ""
            raise ChatFormatError(f"{root} contains no chat export (.txt, .json or .zip){detail}")
    elif not root.exists():
        raise ChatFileError(f"{root} does not exist")
    elif root.suffix.lower() == ".zip" or _is_zip(root):
        _load_zip(root, fmt, out, max_bytes)
        if not out.conversations:
            detail = f" ({len(out.skipped)} file(s) were not chat exports)" if out.skipped else ""
            raise ChatFormatError(f"{root} contains no chat export (.txt or .json){detail}")
    else:
        _load_one(_read_limited(root, max_bytes), str(root), fmt, out, in_bundle=False)
    if not any(c.messages for c in out.conversations):
        raise ChatFormatError(f"{root} contains no messages")
    return Chats(tuple(out.conversations), out.me, tuple(out.formats), tuple(out.skipped))


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


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
