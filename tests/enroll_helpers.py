"""Shared test data for the enrollment tests (trainer, source, enroll)."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from persona_sdk.conversation import ASSISTANT, USER, Turn

QUESTIONS = ["hey, back from the trip?", "what do you do on weekends?", "hi there, how are you doing today?",
             "did you watch the game last night", "I love pizza and music and long walks"]


@dataclass(frozen=True)
class Ex:
    context: tuple
    reply: str
    conversation: int


def quirky_speaker(n: int, seed: int = 0, quirk: str = "lol") -> list[Ex]:
    """A speaker whose every reply is ``quirk`` + one of two phrases: a learnable habit."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ctx = (Turn(USER, rng.choice(QUESTIONS)),)
        if i % 3 == 0:
            ctx = (Turn(ASSISTANT, f"{quirk} yes"),) + ctx
        out.append(Ex(ctx, f"{quirk} " + rng.choice(["yes!", "no, i was asleep"]), i // 4))
    return out


def make_sharp(tiny_backbone: Path, out: Path, scale: float = 8.0) -> Path:
    """The tiny backbone with scaled embeddings (tied LM head): a random model whose
    output distribution a prefix can actually move (the plain one is near uniform)."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_backbone, out)
    (out / "persona-fingerprint.json").unlink(missing_ok=True)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_backbone))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(scale)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def write_chats(path: Path, n_conversations: int = 16, per_conversation: int = 4, me: str = "Ana") -> Path:
    """A chats.json where ``me`` answers Bob ``n_conversations * per_conversation`` times."""
    rng = random.Random(0)
    convs = []
    for c in range(n_conversations):
        msgs = []
        for _ in range(per_conversation):
            msgs.append({"sender": "Bob", "text": rng.choice(QUESTIONS)})
            msgs.append({"sender": me, "text": f"lol {c} " + rng.choice(["yes!", "no, i was asleep", "mostly hiking"])})
        convs.append({"id": f"c{c}", "messages": msgs})
    path.write_text(json.dumps({"conversations": convs}))
    return path
