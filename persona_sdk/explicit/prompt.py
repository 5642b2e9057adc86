"""The prompting baseline (``explicit="prompt"``): the persona sentences in a system turn
of the backbone's prompt, no training. Every other explicit mode is compared with it."""

from __future__ import annotations

from typing import Sequence

from ..config import GenerationConfig
from ..conversation import Turn
from .base import ExplicitMode, Prepared, check_history
from .formats import persona_prompt_ids


class PromptMode(ExplicitMode):
    """The backbone, told who it is in a system turn (:func:`~.formats.persona_system`)."""

    name = "prompt"

    def prepare(self, history: Sequence[Turn], gen: GenerationConfig | None = None) -> Prepared:
        check_history(history)
        gen = gen or GenerationConfig()
        ids = persona_prompt_ids(self.engine.format, self.sentences, history, self.budget(gen))
        return Prepared(tuple(ids), tuple(range(len(self.sentences))))
