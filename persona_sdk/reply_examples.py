"""From chats + "me" to training examples (context -> my reply).

Rules:

- consecutive TEXT messages of one sender form one turn (joined with "\\n");
  placeholders (media, deleted, system) and empty messages are neither
  replies nor context;
- every turn of mine with at least one turn before it in its conversation is
  one :class:`Example`; its context is the most recent turns (at most
  ``max_context_turns``) whose rendered size (``render_turn``) fits in
  ``context_budget`` tokens, oldest dropped first -- the newest context turn is
  always kept (``ChatFormat`` trims it if it alone is too long);
- exact duplicates (same context and reply) are dropped;
- train / validation split by conversation, deterministic for ``seed``
  (with a single conversation, its last examples are the validation part);
- fewer than ``min_replies`` examples raises :class:`TooLittleDataError`
  before any training.

Example for a caller with a tokenizer::

    fmt = ChatFormat(tokenizer)
    ex = build_examples(load_chats("chat.txt"), "Alice", count_tokens=count_tokens_fn(fmt))
    ids, n_prompt = fmt.example_ids(ex.train[0].context, ex.train[0].reply, context_budget=256)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from .chatdata import TEXT, Chats, normalize_name
from .conversation import ASSISTANT, USER, Turn, render_turn
from .errors import ConfigError, TooLittleDataError
from .split import split_by_conversation

# Fewest replies of mine we learn from: a floor, not a target (DESIGN.md's calibration
# run shows how the personal prefix does with little data).
MIN_REPLIES = 50

# Reasons a turn of mine did not become an example.
DROP_NO_CONTEXT = "no context before my turn"
DROP_DUPLICATE = "exact duplicate"
# Reasons a message of mine was not part of any turn.
DROP_PLACEHOLDER = "placeholder (media, deleted, system)"
DROP_EMPTY = "empty message"


@dataclass(frozen=True, slots=True)
class Example:
    context: tuple[Turn, ...]  # oldest first, under the token budget; last one is a USER turn
    reply: str  # my turn's text
    conversation: int  # index into Chats.conversations


@dataclass
class ExampleReport:
    """What would be learned from. Counts only: never message text."""

    me: str
    formats: tuple[str, ...]
    conversations: int  # all conversations loaded
    conversations_with_examples: int
    train_conversations: int
    val_conversations: int
    my_messages: int  # messages of mine, all kinds
    my_turns: int  # turns of mine (TEXT messages merged)
    examples: int  # train + val
    train: int
    val: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    senders: dict[str, int] = field(default_factory=dict)  # sender -> messages, most first
    split: str = "by conversation"
    min_replies: int = MIN_REPLIES


@dataclass
class ExampleSet:
    train: list[Example]
    val: list[Example]
    report: ExampleReport


_PIECE = re.compile(r"\S+")


def whitespace_tokens(text: str) -> int:
    """Default token counter: whitespace-separated pieces (a rough stand-in).
    Counted without a list of the pieces: a 4 MiB message would make ~50 MB of them."""
    if len(text) < 4096:
        return len(text.split())
    return sum(1 for _ in _PIECE.finditer(text))


def conversation_turns(chats: Chats, index: int, me: str) -> tuple[list[Turn], Counter]:
    """Turns of one conversation (role from ``me``) and drops among my messages."""
    key = normalize_name(me)
    turns: list[Turn] = []
    dropped: Counter = Counter()
    last_sender: str | None = None
    parts: list[str] = []
    role = USER

    def flush() -> None:
        if parts:
            turns.append(Turn(role, "\n".join(parts)))
            parts.clear()

    for msg in chats.conversations[index].messages:
        sender = normalize_name(msg.sender)
        mine = sender == key
        if msg.kind != TEXT:
            if mine:
                dropped[DROP_PLACEHOLDER] += 1
            continue
        text = msg.text.strip()
        if not text:
            if mine:
                dropped[DROP_EMPTY] += 1
            continue
        if sender != last_sender:
            flush()
            role = ASSISTANT if mine else USER
            last_sender = sender
        parts.append(text)
    flush()
    return turns, dropped


def build_examples(
    chats: Chats,
    me: str,
    *,
    count_tokens: Callable[[str], int] | None = None,
    context_budget: int = 256,
    max_context_turns: int = 8,
    val_fraction: float = 0.1,
    seed: int = 0,
    min_replies: int = MIN_REPLIES,
    keep: bool = True,
) -> ExampleSet:
    """Examples of ``me``'s replies, split into train / validation by conversation.

    ``keep=False`` only counts (``persona inspect``): the report is the same, ``train``
    and ``val`` are empty, and no example is held in memory.
    """
    if context_budget < 1:
        raise ConfigError(f"context_budget must be >= 1, got {context_budget}")
    if max_context_turns < 1:
        raise ConfigError(f"max_context_turns must be >= 1, got {max_context_turns}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if min_replies < 0:
        raise ConfigError(f"min_replies must be >= 0, got {min_replies}")
    count = count_tokens or whitespace_tokens
    key = normalize_name(me)

    dropped: Counter = Counter()
    # duplicates by hash (an int per example, not a tuple); with keep, a hash hit is
    # confirmed against the example it came from, so a collision never drops one
    seen: dict[int, Example | None] = {}
    collided: set[tuple[tuple[Turn, ...], str]] = set()
    per_conv: dict[int, list[Example]] = {}
    counts: Counter = Counter()  # examples per conversation
    my_turns = 0
    for ci in range(len(chats.conversations)):
        turns, conv_dropped = conversation_turns(chats, ci, me)
        dropped.update(conv_dropped)
        sizes = [count(render_turn(t)) for t in turns]  # tokens per rendered turn
        for ti, turn in enumerate(turns):
            if turn.role != ASSISTANT:
                continue
            my_turns += 1
            if ti == 0:
                dropped[DROP_NO_CONTEXT] += 1
                continue
            start, used = ti - 1, sizes[ti - 1]  # newest context turn always kept
            while start > 0 and ti - start < max_context_turns and used + sizes[start - 1] <= context_budget:
                start -= 1
                used += sizes[start]
            context = tuple(turns[start:ti])
            digest = hash((context, turn.text))
            if digest in seen:
                first = seen[digest]
                if first is None or (first.context, first.reply) == (context, turn.text) \
                        or (context, turn.text) in collided:
                    dropped[DROP_DUPLICATE] += 1
                    continue
                collided.add((context, turn.text))
            example = Example(context, turn.text, ci) if keep else None
            seen.setdefault(digest, example)
            counts[ci] += 1
            if keep:
                per_conv.setdefault(ci, []).append(example)

    total = sum(counts.values())
    senders = dict(chats.sender_counts().most_common())
    my_messages = sum(n for s, n in senders.items() if normalize_name(s) == key)
    if total < min_replies:
        raise TooLittleDataError(
            f"found {total} usable replies of yours (as {me!r}) in {len(chats.conversations)} "
            f"conversation(s); at least {min_replies} are needed to learn a persona -- add more chats"
        )

    del seen, collided
    convs = sorted(counts)
    if keep:
        train, val = split_by_conversation([e for c in convs for e in per_conv[c]], val_fraction, seed)
        n_train, n_val_ex = len(train), len(val)
        train_convs, val_convs = len({e.conversation for e in train}), len({e.conversation for e in val})
    else:  # counts only: the same split over one conversation index per example
        ids_train, ids_val = split_by_conversation([c for c in convs for _ in range(counts[c])], val_fraction, seed,
                                                   conversation=lambda c: c)
        train, val = [], []
        n_train, n_val_ex = len(ids_train), len(ids_val)
        train_convs, val_convs = len(set(ids_train)), len(set(ids_val))
    split = "by position (one conversation)" if len(convs) == 1 else "by conversation"

    report = ExampleReport(
        me=me,
        formats=chats.formats,
        conversations=len(chats.conversations),
        conversations_with_examples=len(convs),
        train_conversations=train_convs,
        val_conversations=val_convs,
        my_messages=my_messages,
        my_turns=my_turns,
        examples=total,
        train=n_train,
        val=n_val_ex,
        dropped={k: v for k, v in sorted(dropped.items()) if v},
        senders=senders,
        split=split,
        min_replies=min_replies,
    )
    return ExampleSet(train, val, report)
