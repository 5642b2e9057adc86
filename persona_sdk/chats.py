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
import stat
import unicodedata
import zipfile
import zlib
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


def _sniff(data: bytes, where: str) -> tuple[str, int]:
    """(encoding, offset of the text after any BOM), refusing empty and binary data -- without copying."""
    if not _NOT_BLANK.search(data):
        raise ChatFileError(f"{where} is empty")
    encoding, start = "utf-8", 0
    for bom, enc in _BOMS:
        if data.startswith(bom):
            encoding, start = enc, len(bom)
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
    if encoding == "utf-8" and data.find(b"\x00", start) >= 0:
        raise ChatFileError(f"{where} looks like a binary file, not a chat export")
    return encoding, start


_NOT_BLANK = re.compile(rb"[^ \t\n\r\x0b\x0c]")


def _bad_bytes(where: str, encoding: str, line: int) -> ChatFileError:
    return ChatFileError(
        f"{where} is not valid {encoding.upper()} text (bad bytes at line {line}); save the export as UTF-8"
    )


def _decode(data: bytes, encoding: str, start: int, where: str) -> str:
    try:
        text = str(memoryview(data)[start:], encoding) if start else data.decode(encoding)
    except UnicodeDecodeError as exc:
        nl = b"\n" if encoding == "utf-8" else "\n".encode(encoding)
        line = data.count(nl, start, start + exc.start) + 1
        raise _bad_bytes(where, encoding, line) from None
    if "\x00" in text:
        raise ChatFileError(f"{where} looks like a binary file, not a chat export")
    if not text.strip():
        raise ChatFileError(f"{where} is empty")
    return text


def decode_text(data: bytes, where: str) -> str:
    """Chat bytes -> str: BOMs, BOM-less UTF-16, binary and invalid UTF-8 handled."""
    encoding, start = _sniff(data, where)
    return _decode(data, encoding, start, where)


def text_lines(text: str) -> Iterator[str]:
    """``text.splitlines()`` one line at a time (no list of every line in memory)."""
    pos, end = 0, len(text)
    while pos < end:
        nl = text.find("\n", pos)
        stop = end if nl < 0 else nl + 1
        yield from text[pos:stop].splitlines()
        pos = stop


def utf8_lines(data: bytes, start: int, where: str) -> Iterator[str]:
    """The lines of UTF-8 ``data`` from ``start``, as ``str.splitlines()`` would give them,
    decoded one line at a time: the whole text never exists as one str (which a
    single emoji would make 4 bytes per character)."""
    pos, end, line = start, len(data), 0
    while pos < end:
        nl = data.find(b"\n", pos)
        stop = end if nl < 0 else nl + 1
        line += 1
        try:
            chunk = data[pos:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_bytes(where, "utf-8", line) from None
        yield from chunk.splitlines()
        pos = stop


def _first_line(data: bytes, start: int) -> str | None:
    """The first non-blank line of UTF-8 ``data`` (None if it does not decode)."""
    pos = start
    while pos < len(data):
        nl = data.find(b"\n", pos)
        stop = len(data) if nl < 0 else nl + 1
        try:
            for line in data[pos:stop].decode("utf-8").splitlines():
                if line.strip(" \t\ufeff\u200e\u200f"):
                    return line
        except UnicodeDecodeError:
            return None
        pos = stop
    return None


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An fd of ``path`` if it is a regular file; anything else (a FIFO, a device, a socket)
    is refused before it is opened, and again after (non-blocking open + fstat): reading
    one could block forever or never end."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ChatFileError(f"cannot read {path}: {exc.strerror or 'not accessible'}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ChatFileError(f"{path} is not a regular file (a pipe, device or socket); pass the export file itself")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise ChatFileError(f"cannot read {path}: {exc.strerror or 'not accessible'}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped after the check
        os.close(fd)
        raise ChatFileError(f"{path} is not a regular file (a pipe, device or socket); pass the export file itself")
    return fd, st


def _too_large(path: Path, size: int, max_bytes: int) -> ChatFileTooLargeError:
    return ChatFileTooLargeError(
        f"{path} is {size / 2**20:.0f} MiB; chat files above {max_bytes / 2**20:.0f} MiB are refused "
        "(split the export, e.g. one chat per file)"
    )


def _read_limited(path: Path, max_bytes: int) -> bytes:
    fd, st = _open_regular(path)
    try:
        if st.st_size > max_bytes:
            raise _too_large(path, st.st_size, max_bytes)
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            # one allocation of the file's size; a file that grows (or a pseudo-file that
            # reports size 0) is read on in chunks, never past the limit
            data = fh.read(st.st_size + 1) if st.st_size else b""
            if len(data) > st.st_size or not st.st_size:
                chunks, total = [data], len(data)
                while total <= max_bytes:
                    chunk = fh.read(min(1 << 20, max_bytes + 1 - total))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
                data = b"".join(chunks)
    except OSError as exc:
        raise ChatFileError(f"cannot read {path}: {exc.strerror or 'not accessible'}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while reading
        raise ChatFileTooLargeError(f"{path} is larger than the {max_bytes / 2**20:.0f} MiB limit")
    return data


# --- format detection and dispatch ---------------------------------------------
class _NotChatJSON(ValueError):
    """JSON that Python accepts but no chat export contains (NaN, Infinity, huge numbers)."""


def _no_constant(name: str) -> Any:
    raise _NotChatJSON(f"it holds {name}, which is not standard JSON")


def _bounded_int(digits: str) -> int:
    if len(digits) > 64:  # Python refuses > 4300 digits anyway; no id or timestamp is this long
        raise _NotChatJSON("it holds a number with more than 64 digits")
    return int(digits)


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int)


def parse_json(text: str, where: str) -> Any:
    try:
        return _loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg is a fixed phrase ("Expecting value"), never document text
        raise ChatFormatError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except _NotChatJSON as exc:
        raise ChatFormatError(f"{where} is not a chat export: {exc}") from None
    except RecursionError:
        raise ChatFormatError(f"{where} is JSON nested too deeply to be a chat export") from None
    except ValueError:  # anything else the decoder refuses; its message may quote the document
        raise ChatFormatError(f"{where} is not valid JSON") from None


def detect_format(text: str) -> str | None:
    """The format of a decoded chat file, from its content; None if unknown."""
    from .importers import whatsapp

    if whatsapp.detect(text):
        return "whatsapp"
    if text.lstrip()[:1] in ("{", "["):
        try:
            obj = _loads(text)
        except (ValueError, RecursionError):
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
    budget: int  # bytes of chat files still allowed (folders and archives share one limit)
    conversations: list[Conversation] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    me: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def parse_chat_text(text: str, where: str, fmt: str | None = None) -> tuple[str, list[Conversation], str | None]:
    """(format, conversations, me hint) from one decoded file."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMAT_CHOICES}, got {fmt!r}")
    return _parse_text([text], where, fmt)


def _parse_text(box: list[str], where: str, fmt: str | None) -> tuple[str, list[Conversation], str | None]:
    """:func:`parse_chat_text` on ``box[0]``, which is released once parsed (memory)."""
    from . import importers

    text = box.pop()
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
    del text
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


def _parse_data(box: list[bytes], where: str, fmt: str | None) -> tuple[str, list[Conversation], str | None]:
    """(format, conversations, me hint) from the bytes in ``box`` (released as early as possible).

    UTF-8 WhatsApp text is parsed line by line from the bytes; everything else is decoded whole.
    """
    from . import importers

    data = box.pop()
    encoding, start = _sniff(data, where)
    if encoding == "utf-8" and fmt in (None, "whatsapp"):
        first = _first_line(data, start) if fmt is None else None
        if fmt == "whatsapp" or (first is not None and importers.whatsapp.detect(first)):
            return "whatsapp", importers.whatsapp.parse_lines(lambda: utf8_lines(data, start, where), where), None
    box.append(_decode(data, encoding, start, where))
    del data
    return _parse_text(box, where, fmt)


def _iter_folder(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _load_one(box: list[bytes], where: str, fmt: str | None, out: _Loaded, in_bundle: bool) -> None:
    try:
        found, conversations, me = _parse_data(box, where, fmt)
    except (ChatFileError, ChatFormatError) as exc:
        if not in_bundle or isinstance(exc, ChatFileTooLargeError):
            raise
        out.skipped.append((where, str(exc)))
        return
    out.conversations.extend(conversations)
    if found not in out.formats:
        out.formats.append(found)
    if me is not None and out.me is None:
        out.me = clean_text(me)


# A chat export's text deflates 3-10x; a zip bomb's, hundreds of times. Members of more
# than a MiB that claim more than this ratio are refused before anything is unpacked.
MAX_ZIP_RATIO = 100
MAX_ZIP_MEMBERS = 100_000  # entries in an archive (each costs a ZipInfo in memory)


def _zip_entries(fh: Any) -> int | None:
    """Entries the archive's end record declares (before zipfile reads its whole directory)."""
    try:
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]
        return None if not end else int(end[4])  # _ECD_ENTRIES_TOTAL
    except Exception:  # a private helper of zipfile: if it changes, zipfile's own checks remain
        return None


def _load_zip(path: Path, fmt: str | None, out: _Loaded) -> None:
    fd, _ = _open_regular(path)
    with os.fdopen(fd, "rb") as fh:
        entries = _zip_entries(fh)
        if entries is not None and entries > MAX_ZIP_MEMBERS:
            raise ChatFileTooLargeError(f"{path} holds {entries} files; archives of more than "
                                        f"{MAX_ZIP_MEMBERS} are refused")
        try:
            archive = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
            raise ChatFileError(f"{path} is not a readable .zip archive") from None
        with archive:
            members = sorted((i for i in archive.infolist() if not i.is_dir() and _is_chat_member(i.filename)),
                             key=lambda i: i.filename)
            # sizes as the archive declares them, all checked before anything is unpacked
            declared = sum(i.file_size for i in members)
            if declared > out.budget:
                raise ChatFileTooLargeError(
                    f"{path} unpacks to {declared / 2**20:.0f} MiB of chat files, more than the "
                    f"{out.budget / 2**20:.0f} MiB limit")
            for info in members:
                if info.file_size > 2**20 and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
                    raise ChatFileTooLargeError(
                        f"{path}!{info.filename} unpacks to {info.file_size // max(info.compress_size, 1)} times "
                        f"its packed size (chat exports: under {MAX_ZIP_RATIO}); refusing a likely zip bomb")
            for info in members:
                where = f"{path}!{info.filename}"
                try:
                    with archive.open(info) as member:  # zipfile stops at the declared size
                        data = member.read(info.file_size + 1)
                except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError, ValueError,
                        zlib.error):
                    raise ChatFileError(f"{where} cannot be unpacked (corrupt or encrypted archive)") from None
                if len(data) > info.file_size:
                    raise ChatFileError(f"{where} is larger than the archive declares (corrupt archive)")
                out.budget -= len(data)
                _load_one([data], where, fmt, out, in_bundle=True)
                del data


def _is_chat_member(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not (name.startswith("__MACOSX/") or base.startswith(".") or not base.lower().endswith(_CHAT_SUFFIXES))


def load_chats(path: str | os.PathLike, fmt: str | None = None, *, max_bytes: int = MAX_CHAT_BYTES) -> Chats:
    """Load chat history from a file, a folder of exports or a .zip.

    ``fmt``: one of :data:`FORMATS`, or None / ``"auto"`` to detect each file
    from its content. In folders and archives only ``.txt`` / ``.json`` files
    are read (media is ignored); files that are not chat exports are listed in
    ``Chats.skipped``. Only regular files are read: a FIFO, a device or a socket
    is refused (in a folder: skipped) before it is opened. ``max_bytes`` bounds
    the chat bytes read in all (a .zip's members by their declared sizes, before
    unpacking). Raises :class:`ChatFileError`, :class:`ChatFormatError`.
    """
    if fmt == "auto":
        fmt = None
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMAT_CHOICES}, got {fmt!r}")
    root = Path(path)
    out = _Loaded(budget=max_bytes)
    if root.is_dir():
        for file in _iter_folder(root):
            suffix = file.suffix.lower()
            if suffix not in _CHAT_SUFFIXES + (".zip",):
                continue
            try:
                st = file.stat()
            except OSError as exc:
                raise ChatFileError(f"cannot read {file}: {exc.strerror or 'not accessible'}") from None
            if not stat.S_ISREG(st.st_mode):
                out.skipped.append((str(file), "not a regular file"))
                continue
            if suffix == ".zip":
                _load_zip(file, fmt, out)
                continue
            if st.st_size > out.budget:
                raise ChatFileTooLargeError(
                    f"{root} holds more than {max_bytes / 2**20:.0f} MiB of chat files; pass fewer exports at once"
                )
            data = _read_limited(file, out.budget)
            out.budget -= len(data)
            _load_one([data], str(file), fmt, out, in_bundle=True)
            del data
        if not out.conversations:
            detail = f" ({len(out.skipped)} file(s) were not chat exports)" if out.skipped else ""
            raise ChatFormatError(f"{root} contains no chat export (.txt, .json or .zip){detail}")
    elif not root.exists():
        raise ChatFileError(f"{root} does not exist")
    elif root.suffix.lower() == ".zip" or _is_zip(root):
        _load_zip(root, fmt, out)
        if not out.conversations:
            detail = f" ({len(out.skipped)} file(s) were not chat exports)" if out.skipped else ""
            raise ChatFormatError(f"{root} contains no chat export (.txt or .json){detail}")
    else:
        _load_one([_read_limited(root, max_bytes)], str(root), fmt, out, in_bundle=False)
    if not any(c.messages for c in out.conversations):
        raise ChatFormatError(f"{root} contains no messages")
    return Chats(tuple(out.conversations), out.me, tuple(out.formats), tuple(out.skipped))


def _is_zip(path: Path) -> bool:
    fd, _ = _open_regular(path)  # refuses a FIFO or device before reading from it
    try:
        return os.read(fd, 4) == b"PK\x03\x04"
    except OSError:
        return False
    finally:
        os.close(fd)


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
