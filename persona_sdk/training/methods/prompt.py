"""Prompt-tuning (method ``prompt``): P soft-prompt embeddings, initialised from the
embeddings of a text, trained at positions 0..P-1 in front of the conversation,
then compiled into a KV block by one backbone pass (the same thing the runtime
would compute from the soft prompt, so the runtime only ever sees KV blocks).
"""

from __future__ import annotations

import numpy as np

from ..backbone import TrainBackbone, kv_of_embeddings, text_embeddings, torch_module


class SoftPrompt:
    """A trainable soft prompt ``(P, hidden)``."""

    from_source = False

    def __init__(self, bb: TrainBackbone, text: str, length: int) -> None:
        torch = torch_module()
        self.bb = bb
        self.soft = torch.nn.Parameter(text_embeddings(bb, text, length))  # (P, hidden)
        self.params = [self.soft]

    def inputs(self, detach: bool = False) -> dict:
        """Keyword arguments of :func:`persona_sdk.training.data.batch_loss` for this prompt."""
        return {"soft": self.soft.detach() if detach else self.soft}

    def block(self) -> np.ndarray:
        """The compiled KV block. (layers, 2, kv_heads, P, head_dim) float32"""
        return kv_of_embeddings(self.bb, self.soft.detach())


def start(bb: TrainBackbone, text: str, prefix_len: int) -> SoftPrompt:
    return SoftPrompt(bb, text, prefix_len)
