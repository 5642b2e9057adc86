"""DPO (direct preference optimisation), PAL's stage 2: the loss and the sequence
log-probabilities it is computed from. Our own, not TRL's trainer: TRL brings its
own training loop (and datasets, pandas, pyarrow), while a method here
contributes a step to the one loop (:mod:`persona_sdk.training.loop`).

For a prompt x with a preferred reply y_w and a dispreferred one y_l::

    L = -log σ( β · [ (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x)) ] )

averaged over pairs; π is the model being trained, π_ref the frozen model it
started from (PAL: the stage-1 model), β = 0.1. The implicit rewards
β·(log π − log π_ref) of chosen and rejected replies are returned for reports.
"""

from __future__ import annotations

from typing import Sequence

from ..backbone import TrainBackbone, torch_module
from ..data import Encoded, collate, hidden


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """(mean loss, chosen rewards, rejected rewards) from per-pair summed log-probs, each (B,)."""
    torch = torch_module()
    chosen = policy_chosen - ref_chosen  # (B,) log π/π_ref of y_w
    rejected = policy_rejected - ref_rejected  # (B,)
    loss = -torch.nn.functional.logsigmoid(beta * (chosen - rejected))  # (B,)
    return loss.mean(), (beta * chosen).detach(), (beta * rejected).detach()


def sequence_logps(bb: TrainBackbone, batch: Sequence[Encoded], bf16: bool = False):
    """Summed log-probability of each example's target tokens (ids[n_prompt:]) given its prompt. (B,)"""
    torch = torch_module()
    ids, sel, tgt = collate(batch)  # (B, L) each
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = hidden(bb, ids)[sel]  # (N, hidden): the positions that predict a target token
        logits = bb.model.lm_head(h)  # (N, vocab)
    logp = -torch.nn.functional.cross_entropy(logits.float(), tgt[sel], reduction="none")  # (N,)
    rows = sel.nonzero()[:, 0]  # (N,) the example each position belongs to
    return torch.zeros(len(batch), dtype=logp.dtype).index_add(0, rows, logp)  # (B,)
