"""WhatsApp "Export chat" text files (``WhatsApp Chat with X.txt`` / ``_chat.txt``).

Both styles, as the phone writes them::

    Android   12/31/23, 9:41 PM - Name: text        (also 24-hour, day-first, dots)
    iOS       [31/12/2023, 21:41:07] Name: text     (lines may start with U+200E)

- The style of the first line is locked for the file (brackets or dash, date
  separator, seconds, AM/PM), so a line inside a message that merely looks
  like a date does not start a new message. A header-like line whose date is
  invalid or more than a day earlier than the previous message is text too.
- Date order (day-first / month-first / year-first) comes from the dates seen;
  when every date is ambiguous, 12-hour files are month-first, others day-first.
- Lines that do not start with a date continue the previous message.
- The sender is the text before ": ". A name may itself contain ": ": among
  the possible splits of a line, the prefix that starts most lines wins.
- System lines (encryption notice, joined, left, added, changed the subject,
  security code, missed calls) become SYSTEM messages; ``<Media omitted>``,
  ``image omitted``, ``<attached: ...>`` become MEDIA; "This message was
  deleted" becomes DELETED; ``<This message was edited>`` is removed from the
  text; invisible direction marks are stripped from names and text.
- A silence of more than 6 hours starts a new conversation.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePath

from ..chats import SYSTEM, TEXT, Conversation, Message, classify_text, split_on_silence, strip_marks
from ..errors import ChatFormatError

SOURCE = "whatsapp"

_DATE = r"(?P<date>\d{1,4}(?P<sep>[./-])\d{1,2}(?P=sep)\d{1,4})"
_TIME = r"(?P<time>\d{1,2}(?P<tsep>[:.])\d{2}(?:(?P=tsep)\d{2})?)"
_AMPM = r"(?:[ \u202f\u00a0]?(?P<ampm>[AaPp]\.?[ \u202f\u00a0]?[Mm]\.?))?"
_MARK = "[\u200e\u200f\ufeff]*"
_IOS = re.compile(rf"^{_MARK}\[{_DATE},? {_TIME}{_AMPM}\] (?P<rest>.*)$")
_ANDROID = re.compile(rf"^{_MARK}{_DATE},? {_TIME}{_AMPM} [-\u2013] (?P<rest>.*)$")

_SYSTEM_RE = re.compile(
    r"(?:messages and calls are end-to-end encrypted|messages to this group are now secured"
    r"|end-to-end encrypted|created (?:the )?group|created this group|joined using this group's invite link"
    r"|(?:^|\s)(?:joined|left)\.?$|(?:^|\s)(?:added|removed) |changed the subject|changed this group's"
    r"|changed the group|deleted this group's|changed their phone number|changed to \+?\d|security code"
    r"|missed (?:voice|video|group) call|(?:voice|video) call(?:, .*)?$|is a contact\.?$|disappearing messages"
    r"|now an admin|no longer an admin|pinned a message|turned (?:on|off) |you blocked|you unblocked"
    r"|waiting for this message|this chat is with a business)",
    re.IGNORECASE,
)
_EDITED_RE = re.compile(r"\s*[\u200e\u200f]*<this message was edited>\s*$", re.IGNORECASE)
_BACK_IN_TIME = timedelta(days=1)
_DATE_SPLIT = re.compile(r"[./-]")
_TIME_SPLIT = re.compile(r"[:.]")


@dataclass
class _Head:
    line: int  # 1-based
    date: tuple[str, str, str]
    time: str
    ampm: str | None
    rest: str
    cands: list[str]


def _style(m: re.Match, ios: bool) -> tuple:
    return (ios, m.group("sep"), m.group("tsep"), m.group("time").count(m.group("tsep")), m.group("ampm") is not None)


def _match(line: str) -> tuple[re.Match | None, bool]:
    m = _IOS.match(line)
    if m:
        return m, True
    return _ANDROID.match(line), False


def detect(text: str) -> bool:
    """The first non-empty line is a WhatsApp message line."""
    for line in text.splitlines():
        if line.strip(" \t\ufeff\u200e\u200f"):
            return _match(line.lstrip("\ufeff"))[0] is not None
    return False


def _date_order(heads: list[_Head]) -> str:
    if heads and all(len(h.date[0]) == 4 for h in heads):
        return "ymd"
    first = [int(h.date[0]) for h in heads]
    second = [int(h.date[1]) for h in heads]
    if any(x > 12 for x in first):
        return "dmy"
    if any(x > 12 for x in second):
        return "mdy"
    return "mdy" if heads and heads[0].ampm is not None else "dmy"


def _when(head: _Head, order: str) -> datetime | None:
    a, b, c = head.date
    if order == "ymd":
        y, mo, d = a, b, c
    elif order == "dmy":
        d, mo, y = a, b, c
    else:
        mo, d, y = a, b, c
    parts = _TIME_SPLIT.split(head.time)
    try:
        year = int(y) + (2000 if len(y) <= 2 else 0)
        hour, minute = int(parts[0]), int(parts[1])
        second = int(parts[2]) if len(parts) > 2 else 0
        if head.ampm is not None:
            if not 1 <= hour <= 12:
                return None
            pm = head.ampm.strip().lower().startswith("p")
            hour = (hour % 12) + (12 if pm else 0)
        return datetime(year, int(mo), int(d), hour, minute, second)
    except ValueError:
        return None


def _candidates(rest: str) -> list[str]:
    out = []
    start = 0
    while len(out) < 6:
        i = rest.find(": ", start)
        if i < 0 or i > 120:
            break
        name = strip_marks(rest[:i]).strip()
        if name:
            out.append(name)
        start = i + 2
    if rest.endswith(":") and not out and 0 < len(rest) <= 121:  # "Name:" with an empty first line
        out.append(strip_marks(rest[:-1]).strip())
    return out


def parse(text: str, where: str) -> list[Conversation]:
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.splitlines()
    style = None
    heads: dict[int, _Head] = {}
    for no, line in enumerate(lines, start=1):
        m, ios = _match(line)
        if m is None:
            continue
        s = _style(m, ios)
        if style is None:
            style = s
        elif s != style:
            continue
        a, b, c = _DATE_SPLIT.split(m.group("date"))
        rest = m.group("rest")
        heads[no] = _Head(no, (a, b, c), m.group("time"), m.group("ampm"), rest, _candidates(rest))
    if not heads:
        raise ChatFormatError(f"{where}: no WhatsApp message lines found (expected e.g. \"31/12/2023, 21:41 - Name: text\")")
    first_text = next((no for no, line in enumerate(lines, start=1) if line.strip(" \t\u200e\u200f")), 1)
    if first_text not in heads:
        raise ChatFormatError(f"{where}: line {first_text}: expected a WhatsApp message line with date and time")

    order = _date_order(list(heads.values()))
    counts: Counter = Counter()
    for h in heads.values():
        counts.update(set(h.cands))

    # (time, sender, lines of text, is system line)
    raw: list[tuple[datetime, str, list[str], bool]] = []
    for no, line in enumerate(lines, start=1):
        head = heads.get(no)
        when = _when(head, order) if head is not None else None
        if head is not None and when is not None and raw and when < raw[-1][0] - _BACK_IN_TIME:
            when = None  # a quoted old date inside a message, not a new message
        if head is None or when is None:
            if raw:
                raw[-1][2].append(line)
            continue
        rest = head.rest
        cands = head.cands
        sender = ""
        if cands:
            best = max(counts[c] for c in cands)
            tied = [c for c in cands if counts[c] == best]
            sender = max(tied, key=len) if best > 1 else min(tied, key=len)
        body_start = _body_start(rest, sender)
        if not sender or (counts[sender] <= 1 and _SYSTEM_RE.search(strip_marks(rest))):
            raw.append((when, "", [rest], True))
        else:
            raw.append((when, sender, [rest[body_start:]], False))

    messages: list[Message] = []
    for when, sender, parts, system in raw:
        body = "\n".join(parts)
        if system:
            messages.append(Message("", strip_marks(body).strip(), when, SYSTEM))
            continue
        marked = body.lstrip(" ").startswith(("\u200e", "\u200f"))
        body = _EDITED_RE.sub("", body)
        clean = strip_marks(body).strip()
        kind = classify_text(clean)
        if kind == TEXT and len(clean) < 300 and _is_system_text(clean, marked):
            kind = SYSTEM
        messages.append(Message(sender, clean, when, kind))
    name = PurePath(where).name or "chat"
    return split_on_silence(messages, SOURCE, name)


def _body_start(rest: str, sender: str) -> int:
    if not sender:
        return 0
    start = 0
    while True:
        i = rest.find(": ", start)
        if i < 0:
            return len(rest) if rest.endswith(":") else 0
        if strip_marks(rest[:i]).strip() == sender:
            return i + 2
        start = i + 2


def _is_system_text(text: str, marked: bool) -> bool:
    """iOS writes system events as a message of the chat (text starting with U+200E)."""
    low = text.lower()
    if low.startswith(("missed voice call", "missed video call", "missed group")):
        return True
    return marked and bool(_SYSTEM_RE.search(text))


