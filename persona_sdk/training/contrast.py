"""The contrastive term of personal training: learn what sets this person apart, not what everyone shares.

A personal prefix trained on its owner's replies alone also gets better at chat in general, and
such shared gains make every persona cheap on everyone's replies -- which is what perplexity
identification, and a reader, cannot tell apart. The term keeps the block from beating the block
it started from (the source prefix) on *other* people's replies::

    weight * mean_k relu(ref_k + margin - loss_k)

``loss_k``: the block's mean reply-token NLL on background reply k; ``ref_k``: the starting
block's, computed once before the first step; ``margin`` (nats per token) pushes the block that
far above its start on them. Gains on the owner's replies that are also gains on the background
are thereby cancelled; the owner's own distinctive ones are not.

The background is public text: one reply each from chitchat part-A speakers, the corpus the
shipped source prefix was trained on (never a held-out speaker of the evaluation split). Nothing
of the owner's chats is involved beyond the usual loss.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import MissingDependencyError
from .backbone import TrainBackbone, torch_module
from .data import Encoded, example_losses, make_batches, micro_batches

BACKGROUND_SPEAKERS = 256  # part-A speakers, one reply each: the background pool


def background_examples(n: int = BACKGROUND_SPEAKERS, seed: int = 0) -> list:
    """One reply (with its context) from each of the first ``n`` chitchat part-A speakers (hash
    order: a deterministic, unbiased subset); which reply is chosen follows ``seed``."""
    import importlib.util

    if importlib.util.find_spec("chitchat_dataset") is None:
        raise MissingDependencyError("the contrastive term needs the chitchat-dataset package "
                                     "(pip install chitchat-dataset), or contrast=0")
    from .corpora import chitchat_part_a

    speakers, _, _ = chitchat_part_a(max_speakers=n, max_per_speaker=1, max_val=0, seed=seed)
    return [s.examples[0] for s in speakers]


class Contrast:
    """The term over a fixed background pool, its references taken from the block as training starts."""

    def __init__(self, data: Sequence[Encoded], ref: np.ndarray, weight: float, margin: float, batch_size: int,
                 rng: np.random.Generator) -> None:
        if len(data) != len(ref) or not data:
            raise ValueError("the background pool and its references must be non-empty and of one length")
        self.data, self.ref = list(data), np.asarray(ref, dtype=np.float64)  # ref: (n,) nats per token
        self.weight, self.margin, self.batch_size = weight, margin, min(batch_size, len(data))
        self.rng = rng
        self._order: list[int] = []

    @classmethod
    def prepare(cls, bb: TrainBackbone, data: Sequence[Encoded], inputs: dict, *, weight: float, margin: float,
                batch_size: int, rng: np.random.Generator, bf16: bool = False) -> "Contrast":
        """Score the pool once under the starting block (``inputs``: its detached ``kv=`` / ``soft=``)."""
        torch = torch_module()
        index = {id(e): i for i, e in enumerate(data)}
        ref = np.zeros(len(data))
        with torch.no_grad():
            for group in make_batches(data, 8, None):
                losses = example_losses(bb, group, bf16=bf16, **inputs)  # (B,)
                for e, value in zip(group, losses.tolist()):
                    ref[index[id(e)]] = value
        return cls(data, ref, weight, margin, batch_size, rng)

    def draw(self) -> list[int]:
        """The next ``batch_size`` pool indices: passes over the pool in a fresh order each time."""
        out: list[int] = []
        while len(out) < self.batch_size:
            if not self._order:
                self._order = list(self.rng.permutation(len(self.data)))
            out.append(int(self._order.pop()))
        return out

    def backward(self, bb: TrainBackbone, inputs: Any, bf16: bool = False, max_tokens: int = 0) -> float:
        """Backpropagate the term on the next background batch (``inputs()`` as in ``batch_backward``);
        returns its value (0 while the block is nowhere better than ``ref + margin``)."""
        torch = torch_module()
        picked = self.draw()
        rows = [self.data[i] for i in picked]
        ref = {id(self.data[i]): self.ref[i] for i in picked}
        value = 0.0
        for group in micro_batches(sorted(rows, key=lambda e: len(e.ids)), max_tokens):
            losses = example_losses(bb, group, bf16=bf16, **inputs())  # (B,) with the block's graph
            target = torch.tensor([ref[id(e)] + self.margin for e in group], dtype=losses.dtype)
            term = torch.relu(target - losses).sum() * (self.weight / len(rows))
            if term.requires_grad and float(term.detach()) > 0:
                term.backward()
            value += float(term.detach())
        return value
