"""Chat history in: read a file, a folder or a .zip, detect each export's format, dispatch.

:func:`load_chats` guards the bytes (regular files only, size, emptiness,
binary data, BOM / UTF-16; zip bombs), detects the format from the content (or
takes ``fmt``), hands each file to its importer (:mod:`persona_sdk.importers`)
and returns :class:`Chats`. The data model (:class:`Message`,
:class:`Conversation`, :class:`Chats`, :func:`resolve_me`, ...) lives in
:mod:`persona_sdk.chatdata` and is re-exported here, so callers need only
this module. Imports point one way: chats -> importers -> chatdata / chatbytes.

Privacy: the input is read into memory only, never copied, cached or logged.
Errors name a file and a position (``line 2041``, ``conversation 3, message
17``), never message text.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import importers
from .chatbytes import decode_body, decode_text, first_line, loads_json, parse_json, sniff, text_lines, utf8_lines
from .chatdata import (
    DELETED,
    KINDS,
    MEDIA,
    SYSTEM,
    TEXT,
    Chats,
    Conversation,
    Message,
    classify_text,
    clean_text,
    display_name,
    normalize_name,
    resolve_me,
    split_on_silence,
    strip_marks,
    who_is_me,
)
from .errors import ChatFileError, ChatFileTooLargeError, ChatFormatError, ConfigError

__all__ = [
    "FORMATS", "FORMAT_CHOICES", "MAX_CHAT_BYTES", "load_chats", "detect_format", "detect_json_format",
    # the data model and helpers, re-exported from chatdata / chatbytes
    "TEXT", "MEDIA", "DELETED", "SYSTEM", "KINDS", "Message", "Conversation", "Chats", "clean_text", "strip_marks",
    "normalize_name", "display_name", "who_is_me", "resolve_me", "classify_text", "split_on_silence",
    "decode_text", "parse_json", "text_lines", "utf8_lines",
]

FORMATS = ("chats", "whatsapp", "telegram", "discord", "chitchat")
FORMAT_CHOICES = ("auto",) + FORMATS

# Years of daily texting are tens of MB; a Telegram full export of all chats
# rarely passes a few hundred. Anything larger is refused before reading.
MAX_CHAT_BYTES = 512 * 2**20

# File types looked at inside folders and .zip archives (media is skipped).
_CHAT_SUFFIXES = (".txt", ".json")


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
def detect_format(text: str) -> str | None:
    """The format of a decoded chat file, from its content; None if unknown."""
    if importers.whatsapp.detect(text):
        return "whatsapp"
    if text.lstrip()[:1] in ("{", "["):
        try:
            obj = loads_json(text)
        except (ValueError, RecursionError):
            return None
        return detect_json_format(obj)
    return None


def detect_json_format(obj: Any) -> str | None:
    for name, detect in importers.JSON_DETECTORS:
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


def _parse_text(box: list[str], where: str, fmt: str | None) -> tuple[str, list[Conversation], str | None]:
    """(format, conversations, me hint) from the decoded text in ``box`` (released once parsed: memory)."""
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
    data = box.pop()
    encoding, start = sniff(data, where)
    if encoding == "utf-8" and fmt in (None, "whatsapp"):
        first = first_line(data, start) if fmt is None else None
        if fmt == "whatsapp" or (first is not None and importers.whatsapp.detect(first)):
            return "whatsapp", importers.whatsapp.parse_lines(lambda: utf8_lines(data, start, where), where), None
    box.append(decode_body(data, encoding, start, where))
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
