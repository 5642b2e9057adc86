"""Prefix-tuning: the KV block itself is the parameter (methods ``prefix`` and ``rand-prefix``).

``prefix`` starts from a source prefix (PersonaPKT); without one, and for
``rand-prefix``, it starts from the KV of P random vocabulary tokens run through
the backbone (the random-init baseline).
"""

from __future__ import annotations

import numpy as np

from ...prefix import Prefix
from ..backbone import TrainBackbone, check_source_fits, random_prefix, torch_module


class KVBlock:
    """A trainable KV block ``(layers, 2, kv_heads, P, head_dim)``."""

    def __init__(self, start: np.ndarray, from_source: bool = False) -> None:
        torch = torch_module()
        self.kv = torch.nn.Parameter(torch.from_numpy(start.copy()))  # (layers, 2, kv_heads, P, head_dim)
        self.params = [self.kv]
        self.from_source = from_source  # started from a source prefix (the learning-rate policy asks)

    def inputs(self, detach: bool = False) -> dict:
        """Keyword arguments of :func:`persona_sdk.training.data.batch_loss` for this block."""
        return {"kv": self.kv.detach() if detach else self.kv}

    def block(self) -> np.ndarray:
        """The KV block as the runtime takes it. (layers, 2, kv_heads, P, head_dim) float32"""
        return self.kv.detach().numpy().copy()


def start(bb: TrainBackbone, method: str, prefix_len: int, seed: int, init: Prefix | None) -> KVBlock:
    """The starting block: ``init`` for method ``prefix`` (checked against the backbone), else random."""
    if method == "prefix" and init is not None:
        check_source_fits(init, bb, prefix_len)
        return KVBlock(init.kv.astype(np.float32), from_source=True)
    return KVBlock(random_prefix(bb, prefix_len, seed))
