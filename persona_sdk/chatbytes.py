"""Chat export bytes -> text: encodings, lines and JSON, with errors that name positions.

Shared by the format dispatcher (:mod:`persona_sdk.chats`) and the importers.
Guards: empty and binary data, BOMs and BOM-less UTF-16, invalid UTF-8 (the
line is named, never its text), JSON that Python accepts but no export holds
(NaN, Infinity, numbers of more than 64 digits).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

from .errors import ChatFileError, ChatFormatError

_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def sniff(data: bytes, where: str) -> tuple[str, int]:
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


def decode_body(data: bytes, encoding: str, start: int, where: str) -> str:
    """``data[start:]`` decoded as ``encoding`` (from :func:`sniff`); bad bytes name their line."""
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
    encoding, start = sniff(data, where)
    return decode_body(data, encoding, start, where)


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


def first_line(data: bytes, start: int) -> str | None:
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


# --- JSON ----------------------------------------------------------------------
class _NotChatJSON(ValueError):
    """JSON that Python accepts but no chat export contains (NaN, Infinity, huge numbers)."""


def _no_constant(name: str) -> Any:
    raise _NotChatJSON(f"it holds {name}, which is not standard JSON")


def _bounded_int(digits: str) -> int:
    if len(digits) > 64:  # Python refuses > 4300 digits anyway; no id or timestamp is this long
        raise _NotChatJSON("it holds a number with more than 64 digits")
    return int(digits)


def loads_json(text: str) -> Any:
    """``json.loads`` refusing NaN, Infinity and numbers of more than 64 digits (raises ValueError)."""
    return json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int)


def parse_json(text: str, where: str) -> Any:
    try:
        return loads_json(text)
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
