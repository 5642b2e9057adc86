"""Explicit-persona modes: chat as a persona described in a few sentences, with no enrollment.

    from persona_sdk import PersonaAgent

    with PersonaAgent(persona_sentences=["I bake cookies.", "I have a dog."], explicit="pal",
                      build=True) as agent:
        print(agent.reply("what do you do for fun?"))

Modes (``MODES``):

- ``prompt`` (:mod:`.prompt`): the sentences in a system turn of the backbone's
  prompt, no training: the baseline every other mode is compared with;
- ``pal`` (:mod:`.pal`): PAL (persona-aware alignment): a LoRA adapter trained
  here (multi-task SFT, then DPO), merged into its own ONNX backbone; each reply
  first predicts the relevant sentence, then generates conditioned on it;
- ``paa`` (:mod:`.paa`): PAA (persona-adaptive attention): trained fusions on the
  frozen backbone, run through their own ONNX export (persona and context
  encoded once per turn, the decoder on its KV cache); installed in
  ``<data dir>/explicit/paa`` (:mod:`.paa_store`).

The interface a mode implements is :class:`~.base.ExplicitMode`; the prompt
formats shared with training are in :mod:`.formats`; sentences are checked by
:func:`~.persona.persona_sentences`. Runtime side: nothing here imports torch
unless a mode's model has to be built.
"""

from .base import DEFAULT_MODE, MODES, ExplicitMode, Prepared, mode_class, open_mode
from .persona import MAX_SENTENCE_CHARS, MAX_SENTENCES, persona_sentences, read_persona_file

__all__ = ["DEFAULT_MODE", "MODES", "ExplicitMode", "Prepared", "mode_class", "open_mode", "persona_sentences",
           "read_persona_file", "MAX_SENTENCES", "MAX_SENTENCE_CHARS"]
