"""Multi-speaker corpora for the source prefix: chitchat-dataset part A (the
evaluation split's source part) and Synthetic-Persona-Chat (with persona
descriptions, for MTML/AMTML), each with its validation replies and provenance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..conversation import Turn
from ..errors import TrainingError


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


def spc_speakers(csv_path: str | Path, max_conversations: int | None = None) -> list[Speaker]:
    """Synthetic-Persona-Chat CSV → one Speaker per (conversation, side), with persona sentences."""
    import csv

    from ..reply_examples import Example

    out = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for ci, row in enumerate(csv.DictReader(fh)):
            if max_conversations is not None and ci >= max_conversations:
                break
            lines = [ln.strip() for ln in row.get("Best Generated Conversation", "").splitlines() if ln.strip()]
            turns = []
            for ln in lines:
                who, _, text = ln.partition(":")
                if who.strip() in ("User 1", "User 2") and text.strip():
                    turns.append((who.strip(), text.strip()))
            for side, col in (("User 1", "user 1 personas"), ("User 2", "user 2 personas")):
                persona = " ".join(x.strip() for x in (row.get(col) or "").splitlines() if x.strip())
                exs = []
                for t in range(1, len(turns)):
                    if turns[t][0] == side:
                        ctx = tuple(Turn("assistant" if w == side else "user", x) for w, x in turns[max(0, t - 6):t])
                        exs.append(Example(ctx, turns[t][1], ci))
                if exs and persona:
                    out.append(Speaker(f"spc-{ci}-{side[-1]}", exs, persona))
    if not out:
        raise TrainingError(f"{csv_path} holds no Synthetic-Persona-Chat conversations")
    return out


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
