"""Multi-speaker corpora: chitchat-dataset part A (the evaluation split's source
part) and Synthetic-Persona-Chat (SPC, CC-BY 4.0; persona sentences per side).

SPC has one reader, :func:`read_spc`; on top of it: speakers for the source
prefix (MTML/AMTML's persona descriptions, :func:`spc_speakers` /
:func:`spc_split`), and the explicit-persona replies (:func:`spc_persona_examples`)
of the split *by persona* (:func:`spc_explicit_split`) that PAL trains and the
explicit table evaluates on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..conversation import Turn
from ..errors import TrainingError
from ..manifest import sha256_file


@dataclass
class Speaker:
    """One speaker's training replies (+ persona sentences, training-only)."""

    id: str
    examples: list  # Example-like: context (tuple[Turn]), reply (str), conversation (int)
    persona: str | None = None


def speaker_list_sha256(speakers: Sequence[Speaker]) -> str:
    """A fingerprint of which speakers trained (their sorted ids), for provenance files."""
    ids = "\n".join(sorted(s.id for s in speakers))
    return hashlib.sha256(ids.encode()).hexdigest()


def chitchat_part_a(max_speakers: int | None = None, max_per_speaker: int | None = None, max_val: int = 64,
                    seed: int = 0) -> tuple[list[Speaker], list, dict]:
    """Part-A speakers of chitchat-dataset (the evaluation split), their val replies, and provenance."""
    from ..reply_examples import build_examples
    from ..split import chitchat_split, select

    chats, split = chitchat_split()
    rng = np.random.default_rng(seed)
    part_a = split.part("A")
    if max_speakers is not None:
        part_a = part_a[:max_speakers]  # hash order: a deterministic, unbiased subset
    speakers, val = [], []
    for s in part_a:
        if s.train:
            ex = _examples(build_examples, select(chats, s.train), s.speaker)
            if max_per_speaker is not None and len(ex) > max_per_speaker:
                ex = [ex[i] for i in sorted(rng.choice(len(ex), max_per_speaker, replace=False))]
            if ex:
                speakers.append(Speaker(s.speaker, ex))
        if s.val:
            val += _examples(build_examples, select(chats, s.val), s.speaker)
    if len(val) > max_val:
        val = [val[i] for i in sorted(rng.choice(len(val), max_val, replace=False))]
    provenance = {
        "corpus": "chitchat-dataset",
        "package_version": _version("chitchat-dataset"),
        "split": {"salt": split.config.salt, "part": "A", **split.summary()["A"]},
        "speakers": len(speakers),
        "speaker_list_sha256": speaker_list_sha256(speakers),
        "max_speakers": max_speakers,
        "max_per_speaker": max_per_speaker,
        "val_examples": len(val),
    }
    return speakers, val, provenance


def _examples(build, chats, speaker) -> list:
    from ..errors import PersonaError

    try:
        return list(build(chats, speaker, min_replies=0, val_fraction=0.0).train)
    except PersonaError:
        return []


@dataclass(frozen=True)
class SPCConversation:
    """One Synthetic-Persona-Chat conversation: both sides' persona sentences and the turns."""

    index: int  # row of the CSV, 0-based (file order)
    personas: tuple[tuple[str, ...], tuple[str, ...]]  # (User 1's sentences, User 2's sentences)
    turns: tuple[tuple[str, str], ...]  # (side "1" | "2", text) in order
    sides: tuple[str, ...] = ("1", "2")  # the sides whose replies count (a split keeps its part's personas)

    def persona(self, side: str) -> tuple[str, ...]:
        return self.personas[0 if side == "1" else 1]


SPC_COLUMNS = ("user 1 personas", "user 2 personas", "Best Generated Conversation")


def read_spc(csv_path: str | Path, max_conversations: int | None = None) -> list[SPCConversation]:
    """The one Synthetic-Persona-Chat reader: CSV rows → :class:`SPCConversation` (file order).

    Lines ``User 1: ...`` / ``User 2: ...`` become turns; other lines are skipped.
    Errors name the file (and the row), never its text."""
    import csv

    path = Path(csv_path)
    if not path.is_file():
        raise TrainingError(f"Synthetic-Persona-Chat file not found: {path}")
    out = []
    csv.field_size_limit(1 << 24)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in SPC_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise TrainingError(f"{path} is not a Synthetic-Persona-Chat CSV (no column {missing[0]!r})")
            for ci, row in enumerate(reader):
                if max_conversations is not None and ci >= max_conversations:
                    break
                turns = []
                for ln in (row.get(SPC_COLUMNS[2]) or "").splitlines():
                    who, _, text = ln.strip().partition(":")
                    if who.strip() in ("User 1", "User 2") and text.strip():
                        turns.append((who.strip()[-1], text.strip()))
                personas = tuple(tuple(x.strip() for x in (row.get(col) or "").splitlines() if x.strip())
                                 for col in SPC_COLUMNS[:2])
                out.append(SPCConversation(ci, personas, tuple(turns)))  # type: ignore[arg-type]
    except UnicodeDecodeError:
        raise TrainingError(f"{path} is not UTF-8 text") from None
    except csv.Error as exc:
        raise TrainingError(f"{path} is not a readable CSV ({type(exc).__name__})") from None
    return out


def spc_context(conv: SPCConversation, t: int, side: str, context_turns: int = 6) -> tuple[Turn, ...]:
    """The turns before turn ``t`` (at most ``context_turns``), ``side`` speaking as the assistant."""
    return tuple(Turn("assistant" if w == side else "user", x) for w, x in conv.turns[max(0, t - context_turns):t])


def spc_speakers(csv_path: str | Path, max_conversations: int | None = None) -> list[Speaker]:
    """Synthetic-Persona-Chat CSV → one Speaker per (conversation, side), with persona sentences."""
    from ..reply_examples import Example

    out = []
    for conv in read_spc(csv_path, max_conversations):
        ci = conv.index
        for side in ("1", "2"):
            persona = " ".join(conv.persona(side))
            exs = [Example(spc_context(conv, t, side), conv.turns[t][1], ci)
                   for t in range(1, len(conv.turns)) if conv.turns[t][0] == side]
            if exs and persona:
                out.append(Speaker(f"spc-{ci}-{side}", exs, persona))
    if not out:
        raise TrainingError(f"{csv_path} holds no Synthetic-Persona-Chat conversations")
    return out


@dataclass(frozen=True)
class PersonaExample:
    """One reply of an explicit persona: its sentences, the context before it, the reply."""

    conversation: int  # SPCConversation.index
    side: str  # "1" | "2": whose reply
    turn: int  # index of the reply in the conversation's turns
    persona: tuple[str, ...]  # the replying side's persona sentences
    context: tuple[Turn, ...]  # the replying side speaks as the assistant
    reply: str

    @property
    def key(self) -> str:
        """A stable id of the reply (conversation:side:turn), for sampling and distractors."""
        return f"{self.conversation}:{self.side}:{self.turn}"


def spc_persona_examples(conversations: Sequence[SPCConversation], context_turns: int = 6) -> list[PersonaExample]:
    """Every reply (a turn after at least one other turn) of the conversations' counted sides
    (``SPCConversation.sides``) that have persona sentences."""
    out = []
    for conv in conversations:
        for t in range(1, len(conv.turns)):
            side, text = conv.turns[t]
            if side in conv.sides and conv.persona(side):
                out.append(PersonaExample(conv.index, side, t, conv.persona(side),
                                          spc_context(conv, t, side, context_turns), text))
    return out


def spc_explicit_split(csv_path: str | Path, config: Any = None
                       ) -> tuple[dict[str, list[SPCConversation]], dict[str, Any]]:
    """Synthetic-Persona-Chat split *by persona* into train / dev / test (see
    :func:`persona_sdk.split.split_by_persona`): (conversations per part, provenance)."""
    from ..split import PersonaSplitConfig, persona_key, split_by_persona

    config = config or PersonaSplitConfig()
    path = Path(csv_path)
    convs = read_spc(path)
    if not convs:
        raise TrainingError(f"{path} holds no Synthetic-Persona-Chat conversations")
    out: dict[str, list[SPCConversation]] = {"train": [], "dev": [], "test": []}
    for conv, (part, sides) in zip(convs, split_by_persona([c.personas for c in convs], config)):
        held = tuple(str(i + 1) for i in sides)
        out[part].append(SPCConversation(conv.index, conv.personas, conv.turns, held))
    provenance = {
        "corpus": "synthetic-persona-chat", "license": "CC-BY 4.0",
        "attribution": SPC_ATTRIBUTION, "file": path.name, "file_sha256": sha256_file(path),
        "split": {"salt": config.salt, "dev": config.dev, "test": config.test, "by": "persona",
                  "conversations": {p: len(v) for p, v in out.items()},
                  "personas": {p: len({persona_key(c.persona(s), config.salt) for c in v for s in c.sides})
                               for p, v in out.items()}},
    }
    return out, provenance


SPC_ATTRIBUTION = ("Synthetic-Persona-Chat (Jandaghi, Sheng, Bai, Pujara, Sidahmed, 2023, "
                   "arXiv:2312.10007; google-research-datasets), CC-BY 4.0")


def spc_split(csv_path: str | Path, max_speakers: int | None = None, max_val: int = 64
              ) -> tuple[list[Speaker], list, dict[str, Any]]:
    """Synthetic-Persona-Chat for source training: (train speakers, val replies, provenance).

    The first tenth of the speakers (at least two, file order) are held out; their
    replies (the first ``max_val``) validate. ``max_speakers`` caps the training speakers."""
    everyone = spc_speakers(csv_path)
    n_val = max(2, len(everyone) // 10)
    speakers, held = everyone[n_val:], everyone[:n_val]
    if max_speakers:
        speakers = speakers[:max_speakers]
    val = [e for s in held for e in s.examples][:max_val]
    provenance = {"corpus": "synthetic-persona-chat", "file": Path(csv_path).name, "speakers": len(speakers),
                  "speaker_list_sha256": speaker_list_sha256(speakers), "val_examples": len(val)}
    return speakers, val, provenance


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
