"""MTML and AMTML (methods ``mtml`` / ``amtml``): Reptile with a persona-reconstruction task.

For corpora with persona descriptions. The auxiliary task reconstructs the
speaker's concatenated persona sentences from the dialogue context (the
context, then a fixed "describe yourself" user turn, then the description as
the target). ``mtml``: inner steps on L = α·L_res + (1−α)·L_rec (α = 0.8).
``amtml``: inner steps on L_res, then one step on L_rec from the adapted point
(the losses alternate between the inner and the outer loop). Descriptions are
used in training only; the resulting block is an ordinary prefix.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

from ...conversation import USER, Turn

RECONSTRUCT_PROMPT = "(describe yourself: who are you?)"


def reconstruction_example(ex: Any, persona: str) -> Any:
    """MTML's auxiliary example: the context, a fixed request, the persona as target."""
    return SimpleNamespace(context=tuple(ex.context) + (Turn(USER, RECONSTRUCT_PROMPT),), reply=persona,
                           conversation=getattr(ex, "conversation", 0))


def mtml_loss(response_loss, reconstruction_loss, alpha: float):
    """L = α·L_res + (1−α)·L_rec."""
    return alpha * response_loss + (1 - alpha) * reconstruction_loss


def amtml_reconstruction_step(opt, reconstruction_loss: Callable[[], Any], alpha: float) -> None:
    """AMTML's outer-loop turn: one step on (1−α)/α·L_rec from the adapted point."""
    opt.zero_grad(set_to_none=True)
    loss = (1 - alpha) / max(alpha, 1e-6) * reconstruction_loss()
    loss.backward()
    opt.step()
