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
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Callable, Iterable

from ..chatbytes import text_lines
from ..chatdata import SYSTEM, TEXT, Conversation, Message, classify_text, split_on_silence, strip_marks
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
_EDITED = "<this message was edited>"  # WhatsApp's note after an edited message's text
_BACK_IN_TIME = timedelta(days=1)
_SYSTEM_MAX = 1000  # characters: system lines are short, and the regex's cost grows with a line's length
_DATE_SPLIT = re.compile(r"[./-]")
_TIME_SPLIT = re.compile(r"[:.]")


def _style(m: re.Match, ios: bool) -> tuple:
    return (ios, m.group("sep"), m.group("tsep"), m.group("time").count(m.group("tsep")), m.group("ampm") is not None)


def _match(line: str) -> tuple[re.Match | None, bool]:
    m = _IOS.match(line)
    if m:
        return m, True
    return _ANDROID.match(line), False


def detect(text: str) -> bool:
    """The first non-empty line is a WhatsApp message line."""
    for line in text_lines(text):
        if line.strip(" \t\ufeff\u200e\u200f"):
            return _match(line.lstrip("\ufeff"))[0] is not None
    return False


class _Order:
    """Evidence for the date order (day-first / month-first / year-first), one header at a time."""

    def __init__(self) -> None:
        self.seen = 0
        self.all_year_first = True
        self.first_over_12 = False
        self.second_over_12 = False
        self.first_ampm: bool | None = None

    def add(self, date: tuple[str, str, str], ampm: str | None) -> None:
        if self.first_ampm is None:
            self.first_ampm = ampm is not None
        self.seen += 1
        self.all_year_first = self.all_year_first and len(date[0]) == 4
        self.first_over_12 = self.first_over_12 or int(date[0]) > 12
        self.second_over_12 = self.second_over_12 or int(date[1]) > 12

    def order(self) -> str:
        if self.seen and self.all_year_first:
            return "ymd"
        if self.first_over_12:
            return "dmy"
        if self.second_over_12:
            return "mdy"
        return "mdy" if self.first_ampm else "dmy"


def _when(date: tuple[str, str, str], time: str, ampm: str | None, order: str) -> datetime | None:
    a, b, c = date
    if order == "ymd":
        y, mo, d = a, b, c
    elif order == "dmy":
        d, mo, y = a, b, c
    else:
        mo, d, y = a, b, c
    parts = _TIME_SPLIT.split(time)
    try:
        year = int(y) + (2000 if len(y) <= 2 else 0)
        hour, minute = int(parts[0]), int(parts[1])
        second = int(parts[2]) if len(parts) > 2 else 0
        if ampm is not None:
            if not 1 <= hour <= 12:
                return None
            pm = ampm.strip().lower().startswith("p")
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
    return parse_lines(lambda: text_lines(text), where)


def parse_lines(lines: Callable[[], Iterable[str]], where: str) -> list[Conversation]:
    """Conversations from the lines of one export; ``lines()`` is called twice (two passes).

    Memory: nothing is kept per line -- the first pass gathers the style, the date
    order and the sender counts, the second builds the messages.
    """
    # pass 1: the style of the first header line, date-order evidence, sender candidates
    style = None
    order = _Order()
    counts: Counter = Counter()
    first_text: int | None = None
    first_is_head = False
    for no, line in enumerate(lines(), start=1):
        blank = not line.strip(" \t\u200e\u200f")
        if first_text is None and not blank:
            first_text = no
        m, ios = _match(line)
        if m is None:
            continue
        s = _style(m, ios)
        if style is None:
            style = s
        elif s != style:
            continue
        if no == first_text:
            first_is_head = True
        order.add(tuple(_DATE_SPLIT.split(m.group("date"))), m.group("ampm"))
        counts.update(set(_candidates(m.group("rest"))))
    if style is None:
        raise ChatFormatError(f"{where}: no WhatsApp message lines found (expected e.g. \"31/12/2023, 21:41 - Name: text\")")
    if not first_is_head:
        raise ChatFormatError(f"{where}: line {first_text or 1}: expected a WhatsApp message line with date and time")

    # pass 2: messages
    date_order = order.order()
    names: dict[str, str] = {}  # one str object per sender
    messages: list[Message] = []
    current: tuple[datetime, str, list[str], bool] | None = None  # (time, sender, lines of text, system line)
    last_key: tuple | None = None
    last_when: datetime | None = None
    for line in lines():
        m, ios = _match(line)
        when = None
        if m is not None and _style(m, ios) == style:
            key = (m.group("date"), m.group("time"), m.group("ampm"))
            if key != last_key:  # consecutive messages of one minute share their datetime
                last_key = key
                last_when = _when(tuple(_DATE_SPLIT.split(key[0])), key[1], key[2], date_order)
            when = last_when
            if when is not None and current is not None and when < current[0] - _BACK_IN_TIME:
                when = None  # a quoted old date inside a message, not a new message
        if when is None:
            if current is not None:
                current[2].append(line)
            continue
        if current is not None:
            messages.append(_message(*current))
        rest = m.group("rest")
        cands = _candidates(rest)
        sender = ""
        if cands:
            best = max(counts[c] for c in cands)
            tied = [c for c in cands if counts[c] == best]
            sender = max(tied, key=len) if best > 1 else min(tied, key=len)
        if not sender or (counts[sender] <= 1 and len(rest) <= _SYSTEM_MAX and _SYSTEM_RE.search(strip_marks(rest))):
            current = (when, "", [rest], True)
        else:
            current = (when, names.setdefault(sender, sender), [rest[_body_start(rest, sender):]], False)
    if current is not None:
        messages.append(_message(*current))
    name = PurePath(where).name or "chat"
    return split_on_silence(messages, SOURCE, name)


def _message(when: datetime, sender: str, parts: list[str], system: bool) -> Message:
    body = parts[0] if len(parts) == 1 else "\n".join(parts)
    if system:
        return Message("", strip_marks(body).strip(), when, SYSTEM)
    marked = body.lstrip(" ").startswith(("\u200e", "\u200f"))
    tail = body.rstrip()
    if tail[-len(_EDITED):].lower() == _EDITED:  # string operations: a regex with a leading \s* is
        body = tail[:-len(_EDITED)].rstrip("\u200e\u200f").rstrip()  # quadratic on long whitespace
    clean = strip_marks(body).strip()
    kind = classify_text(clean)
    if kind == TEXT and len(clean) < 300 and _is_system_text(clean, marked):
        kind = SYSTEM
    return Message(sender, clean, when, kind)


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


