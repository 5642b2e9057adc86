"""The one conversation format, shared by training and the runtime.

A conversation is a list of :class:`Turn`. The persona speaks as ``assistant``;
everyone else speaks as ``user`` (in a group chat, several people map to
``user``). Turns are rendered in ChatML, the template of the default backbone
(SmolLM2-Instruct)::

    <|im_start|>user\\nhey, back from the trip?<|im_end|>\\n
    <|im_start|>assistant\\nyes! still jetlagged<|im_end|>\\n

Training (``example_ids``) and chatting (``prompt_ids``) build token ids with
the same functions, so the persona prefix sees at inference exactly the layout
it was trained on. Turns are tokenised one at a time; because every turn starts
and ends at a special token, this equals tokenising the whole string, and lets
the context budget drop whole turns, oldest first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

USER = "user"
ASSISTANT = "assistant"
ROLES = (USER, ASSISTANT)
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn: consecutive messages of one side, joined by newlines."""

    role: str  # USER (anyone else) or ASSISTANT (me / the persona)
    text: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"turn role must be one of {ROLES}, got {self.role!r}")


def render_turn(turn: Turn) -> str:
    """The text of one finished turn."""
    return f"{TURN_START}{turn.role}\n{turn.text}{TURN_END}\n"


REPLY_HEADER = f"{TURN_START}{ASSISTANT}\n"


_SURROGATES = re.compile("[\ud800-\udfff]")


def _encodable(text: str) -> str:
    """Unpaired surrogates (undecodable bytes, JSON ``"\\ud800"``) -> U+FFFD: the tokenizer refuses them."""
    if text.isascii() or not _SURROGATES.search(text):
        return text
    return _SURROGATES.sub("\ufffd", text)


class ChatFormat:
    """Turns <-> token ids for one tokenizer, with context budgets.

    Where a budget is known, text longer than the budget could ever use is cut
    *before* tokenising (a token covers at most :attr:`max_token_chars`
    characters), so a multi-megabyte message costs what its kept part costs:
    the tokenizer needs ~0.5 KB per token.
    """

    def __init__(self, tokenizer: "Tokenizer") -> None:
        self.tokenizer = tokenizer
        end = tokenizer.token_to_id(TURN_END)
        self.end_id: int | None = end
        self._max_token_chars: int | None = None
        self.header_ids = self.encode(REPLY_HEADER)

    @property
    def max_token_chars(self) -> int:
        """Characters in the longest vocabulary entry: no token covers more text."""
        if self._max_token_chars is None:
            self._max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1) or 1
        return self._max_token_chars

    def _keep(self, tokens: int) -> int:
        """Characters of text that surely hold more than ``tokens`` tokens (with a margin)."""
        return (tokens + 8) * self.max_token_chars

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(_encodable(text), add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def turn_ids(self, turn: Turn, last: int | None = None) -> list[int]:
        """Ids of one rendered turn. ``last``: only its last ``last`` tokens will be used,
        so the start of a longer text is cut before tokenising (the count stays > ``last``)."""
        if last is not None and len(turn.text) > last + 8 and len(turn.text) > self._keep(last):
            turn = Turn(turn.role, turn.text[-self._keep(last):])
        return self.encode(render_turn(turn))

    def own_turn_tokens(self, ids: Sequence[int]) -> list[int]:
        """Tokens in each finished persona (``assistant``) turn of prompt ``ids``, oldest first.

        A turn counts from just after its header to its end-of-turn token; the reply header
        that ends a prompt (no end-of-turn yet) is not a turn. ``(n_own_turns,)``."""
        head, end = self.header_ids, self.end_id
        if not head or end is None:
            return []
        ids, h = list(ids), len(head)
        out: list[int] = []
        i = 0
        while i + h <= len(ids):
            if ids[i: i + h] != head:
                i += 1
                continue
            start = i + h
            try:
                stop = ids.index(end, start)
            except ValueError:
                break  # the reply header at the end of the prompt
            out.append(stop - start)
            i = stop + 1
        return out

    def count_tokens(self, text: str, at_most: int | None = None) -> int:
        """Tokens in ``text``; with ``at_most``, any number above it means "more than ``at_most``"
        (text far beyond it is not tokenised)."""
        if at_most is not None and len(text) > at_most + 8 and len(text) > self._keep(at_most):
            text = text[: self._keep(at_most)]
        return len(self.encode(text))

    def prompt_ids(self, history: Sequence[Turn], budget: int) -> list[int]:
        """Ids of ``history`` + reply header, at most ``budget`` tokens.

        Oldest turns are dropped first. The newest turn is always kept; if it
        alone is over budget, its oldest tokens are cut.
        """
        room = max(budget - len(self.header_ids), 0)
        return _fit(self.header_ids, [self.turn_ids(t, last=room) for t in history], budget)

    def reply_ids(self, reply: str, budget: int | None = None) -> list[int]:
        """Ids the persona must produce for ``reply``, ending with end-of-turn."""
        if budget is not None and len(reply) > budget + 8 and len(reply) > self._keep(budget):
            reply = reply[: self._keep(budget)]
        ids = self.encode(reply)
        if budget is not None:
            ids = ids[: max(budget - 1, 0)]
        return ids + ([self.end_id] if self.end_id is not None else [])

    def example_ids(
        self,
        context: Sequence[Turn],
        reply: str,
        context_budget: int,
        reply_budget: int | None = None,
    ) -> tuple[list[int], int]:
        """(ids, n_prompt): a training example; loss goes on ``ids[n_prompt:]``."""
        prompt = self.prompt_ids(context, context_budget)
        return prompt + self.reply_ids(reply, reply_budget), len(prompt)


def _fit(tail: list[int], turns: list[list[int]], budget: int) -> list[int]:
    if budget <= len(tail):
        raise ConfigError(f"context budget {budget} is too small (needs > {len(tail)} tokens)")
    room = budget - len(tail)
    kept: list[list[int]] = []
    for ids in reversed(turns):
        if len(ids) <= room:
            kept.append(ids)
            room -= len(ids)
        else:
            if not kept:  # the newest turn alone is too long: keep its end
                kept.append(ids[len(ids) - room :])
            break
    out: list[int] = []
    for ids in reversed(kept):
        out.extend(ids)
    return out + tail


def count_tokens_fn(fmt: ChatFormat, at_most: int | None = None) -> Callable[[str], int]:
    """A token counter for code that budgets plain text. ``at_most``: the budget; counts
    above it only mean "too many" (see :meth:`ChatFormat.count_tokens`)."""
    return lambda text: fmt.count_tokens(text, at_most)
