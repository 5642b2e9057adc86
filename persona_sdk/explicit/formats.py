"""The prompt formats of the explicit modes, shared by training and chat (no torch).

Every explicit prompt is a ChatML *system* turn that carries the persona, then
the conversation as :class:`~persona_sdk.conversation.ChatFormat` renders it,
then the reply header. Training (:mod:`persona_sdk.training.pal`) and the
runtime build token ids with these same functions, so a mode sees at chat
time exactly the layout it was trained on::

    <|im_start|>system\\n{persona text}<|im_end|>\\n
    <|im_start|>user\\n...<|im_end|>\\n  ...  <|im_start|>assistant\\n

- ``persona_system(sentences)``: the persona to speak as (the prompting
  baseline and PAL's generation step; no sentences = no persona);
- ``selection_system(sentences)``: PAL's selection step lists the sentences
  numbered from 1; the answer is the relevant sentence itself
  (``selection_answer``), as in the PAL paper, written after a cue
  (``SELECTION_CUE``) that the prompt already holds, so that no selection
  answer ever follows the bare reply header. (Without the cue, the first token
  after the header was a digit in half of PAL's training examples, and a
  briefly trained adapter answered chat messages with a sentence number. With
  numbers as answers, 600 steps left dev selection accuracy below chance; with
  the sentence as the answer, the untrained backbone already picks 0.40.)
"""

from __future__ import annotations

from typing import Sequence

from ..conversation import TURN_END, TURN_START, ChatFormat, Turn
from ..errors import PersonaSentencesError

SYSTEM = "system"
NO_PERSONA = "You are chatting with someone. Reply in one or two short sentences."
PAL_FORMAT = 3  # PAL.json's "format": the prompt layout a PAL adapter was trained on (3 = the cue + the sentence)
SELECTION_CUE = "Relevant sentence:"  # opens the assistant's answer in the selection prompt; the sentence follows
MIN_CONVERSATION_TOKENS = 24  # what the persona must leave for the conversation in a prompt


def system_turn(text: str) -> str:
    return f"{TURN_START}{SYSTEM}\n{text}{TURN_END}\n"


def persona_system(sentences: Sequence[str]) -> str:
    """The system text that makes the model speak *as* the persona (none = no persona)."""
    if not sentences:
        return NO_PERSONA
    return ("You are this person: " + " ".join(sentences) +
            " Stay in character: reply as this person, in the first person, in one or two short sentences.")


def selection_system(sentences: Sequence[str]) -> str:
    """PAL's selection prompt: the sentences numbered from 1, and the question."""
    listed = "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))
    return ("Persona sentences:\n" + listed +
            "\nWhich sentence matters most for your next reply? Answer with that sentence.")


def selection_answer(sentence: str) -> str:
    """The selection step's answer choosing ``sentence``: the sentence itself, after the cue and a space."""
    return " " + sentence.strip()


def prompt_ids(fmt: ChatFormat, system: str, history: Sequence[Turn], budget: int) -> list[int]:
    """System turn + ``history`` (oldest turns dropped first) + reply header, at most ``budget`` ids."""
    head = fmt.encode(system_turn(system))
    room = budget - len(head)
    if room < len(fmt.header_ids) + MIN_CONVERSATION_TOKENS:
        raise PersonaSentencesError(f"the persona sentences take {len(head)} tokens and leave too little room "
                                    f"for the conversation (budget {budget}); use fewer or shorter sentences")
    return head + fmt.prompt_ids(history, room)


def persona_prompt_ids(fmt: ChatFormat, sentences: Sequence[str], history: Sequence[Turn], budget: int) -> list[int]:
    return prompt_ids(fmt, persona_system(sentences), history, budget)


def selection_prompt_ids(fmt: ChatFormat, sentences: Sequence[str], history: Sequence[Turn], budget: int
                         ) -> list[int]:
    """The selection system turn + ``history`` + the reply header + ``SELECTION_CUE``: the answer (the chosen
    sentence) comes next. At most ``budget`` ids."""
    cue = fmt.encode(SELECTION_CUE)
    return prompt_ids(fmt, selection_system(sentences), history, budget - len(cue)) + cue


# --- PAA: three token sequences instead of one prompt ---------------------------------------------
# PAA (persona-adaptive attention) does not put the persona in the prompt: its encoders read the
# persona and the dialogue context; its decoder reads the context again and then the reply (or, in
# the paper's layout, the reply only). Training (persona_sdk.training.paa_model.encode_paa) and the
# paa mode build the three sequences here.
def paa_persona_ids(fmt: ChatFormat, sentences: Sequence[str], budget: int) -> list[int]:
    """The persona encoder's input: the sentences joined by spaces, the first ``budget`` tokens
    (may be empty when the text encodes to nothing; each caller says what that means for it)."""
    return fmt.encode(" ".join(sentences))[:budget]


def paa_context_ids(fmt: ChatFormat, history: Sequence[Turn], budget: int) -> list[int]:
    """The context encoder's input: the ChatML turns (oldest dropped first) + the reply header, at most
    ``budget`` tokens (never empty: the header is always there)."""
    return fmt.prompt_ids(history, budget)


def paa_response_prompt(fmt: ChatFormat) -> list[int]:
    """The reply header: what the paper's layout feeds the decoder before the reply's first token."""
    return list(fmt.header_ids)


def paa_decoder_prompt(fmt: ChatFormat, context_ids: Sequence[int], decoder_context: bool) -> list[int]:
    """What the decoder reads before the reply's first token: the context encoder's input itself (the
    conversation + the reply header, i.e. the bare backbone's prompt) when ``decoder_context``, else the
    reply header only (the paper's layout)."""
    return list(context_ids) if decoder_context else paa_response_prompt(fmt)
