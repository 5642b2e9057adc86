"""The interface every explicit mode implements, and the registry the agent, the CLI
and the benchmark open modes through (runtime side: no torch).

A mode turns (persona sentences, conversation) into a reply. It owns the
engine it decodes with (the backbone's export for ``prompt``; PAL's merged
backbone for ``pal``) and splits a turn in two steps, so the benchmark can score
what the chat path does:

- :meth:`ExplicitMode.prepare`: everything before decoding the reply (PAL:
  predicting the relevant sentence) → a :class:`Prepared` (the prompt ids and
  which sentences the reply is conditioned on);
- :meth:`ExplicitMode.stream` / :meth:`ExplicitMode.reply_losses`: decode the
  reply from it, or score a given reply after it (perplexity, Hits@1).

A new mode subclasses :class:`ExplicitMode`, overrides ``prepare`` (and
``open``/``stream``/``reply_losses`` if it decodes differently, e.g. with its
own graph), and adds one line to ``MODES``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from ..config import GenerationConfig, RuntimeConfig
from ..conversation import Turn
from ..errors import ConfigError, GenerationError
from .persona import persona_sentences

# mode name -> "module:Class" (imported only when the mode is opened)
MODES: dict[str, str] = {
    "prompt": "persona_sdk.explicit.prompt:PromptMode",
    "pal": "persona_sdk.explicit.pal:PALMode",
    "paa": "persona_sdk.explicit.paa:PAAMode",
}
DEFAULT_MODE = "prompt"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Prepared:
    """What a mode feeds the decoder for one reply."""

    prompt_ids: tuple[int, ...]
    conditioned_on: tuple[int, ...]  # indices of the persona sentences in the prompt (PAL: the predicted ones)


class ExplicitMode:
    """A persona given as sentences, and how replies are made from it."""

    name: ClassVar[str] = ""

    def __init__(self, sentences: Sequence[str], engine: Any) -> None:
        self.sentences = persona_sentences(sentences)
        self.engine = engine

    @classmethod
    def open(cls, sentences: Sequence[str], *, backbone: str | Path | None = None,
             runtime: RuntimeConfig | None = None, progress: Progress | None = None, build: bool = False,
             engine: Any = None, **options: Any) -> "ExplicitMode":
        """The mode on ``engine``, or on the backbone's export (found, or built with ``build=True``)."""
        sentences = persona_sentences(sentences)  # bad input fails before anything is opened or built
        if engine is None:
            from ..engines import open_engine

            engine = open_engine(backbone, runtime, progress, build=build)
        return cls(sentences, engine, **options)

    # --- one reply, in two steps --------------------------------------------------------
    def budget(self, gen: GenerationConfig) -> int:
        """Most prompt tokens: the generation's context budget, within the backbone's positions."""
        return max(16, min(gen.context_budget, self.engine.max_positions - gen.max_new_tokens))

    def prepare(self, history: Sequence[Turn], gen: GenerationConfig | None = None) -> Prepared:
        """The prompt (and chosen sentences) for the reply to ``history``'s last user turn."""
        raise NotImplementedError

    def stream(self, prepared: Prepared, gen: GenerationConfig | None = None,
               should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """Decode the reply after ``prepared``, piece by piece."""
        return self.engine.stream_text(list(prepared.prompt_ids), None, gen or GenerationConfig(), should_stop)

    def reply_losses(self, prepared: Prepared, reply: str, reply_budget: int | None = None) -> np.ndarray:
        """Per-token NLL (nats) of ``reply`` (and its end of turn) after ``prepared``. (reply tokens,)"""
        ids = list(prepared.prompt_ids)
        return self.engine.token_losses(ids + self.engine.format.reply_ids(reply, reply_budget), len(ids))

    def reply_stream(self, history: Sequence[Turn], gen: GenerationConfig | None = None,
                     should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """``prepare`` then ``stream``: what the agent calls for each turn."""
        gen = gen or GenerationConfig()
        return self.stream(self.prepare(history, gen), gen, should_stop)

    def describe(self) -> str:
        """One line for status messages (no persona text)."""
        return f"{self.name} mode, {len(self.sentences)} persona sentence(s)"


def mode_class(name: str) -> type[ExplicitMode]:
    """The class of mode ``name``; a :class:`ConfigError` naming the known modes otherwise."""
    if name not in MODES:
        raise ConfigError(f"explicit mode must be one of {', '.join(MODES)}, got {name!r}")
    module, _, cls = MODES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def open_mode(name: str | None, sentences: Sequence[str], **kwargs: Any) -> ExplicitMode:
    """Open explicit mode ``name`` (None = ``prompt``) for ``sentences``; see :meth:`ExplicitMode.open`."""
    return mode_class(name or DEFAULT_MODE).open(sentences, **kwargs)


def check_history(history: Sequence[Turn]) -> None:
    if not history:
        raise GenerationError("an explicit mode needs at least the user's message")
