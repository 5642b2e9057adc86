"""Training data on the backbone: encode examples, batch them, and the loss of a
batch behind a KV block, a soft prompt, or nothing.

The block is fed exactly as the runtime does: a ``DynamicCache`` holding the
block, an attention mask with P leading ones, positions starting at P. Loss goes
on reply tokens only, and the LM head runs on those positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..prefix import Prefix
from .backbone import TrainBackbone, torch_module


@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    n_prompt: int  # loss on ids[n_prompt:]
    conversation: int


def encode(fmt, examples: Sequence[Any], context_budget: int, reply_budget: int) -> list[Encoded]:
    """Token ids of examples (anything with ``context``, ``reply``, ``conversation``)."""
    out = []
    for ex in examples:
        ids, n_prompt = fmt.example_ids(tuple(ex.context), ex.reply, context_budget, reply_budget)
        out.append(Encoded(tuple(ids), n_prompt, int(getattr(ex, "conversation", 0))))
    return out


def make_batches(data: Sequence[Encoded], batch_size: int, rng: np.random.Generator | None) -> list[list[Encoded]]:
    """Length-bucketed batches: similar lengths together, batch order shuffled.

    With ``rng`` None the order is deterministic (for validation)."""
    idx = np.arange(len(data)) if rng is None else rng.permutation(len(data))
    chunk = batch_size * 32  # sort within chunks so epochs still differ
    batches = []
    for start in range(0, len(idx), chunk):
        part = sorted(idx[start : start + chunk], key=lambda i: len(data[i].ids))
        batches += [[data[i] for i in part[j : j + batch_size]] for j in range(0, len(part), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def epochs_of_batches(data: Sequence[Encoded], batch_size: int, rng: np.random.Generator, epochs: int | None):
    """Batches of ``epochs`` passes over ``data`` (None = endless), each pass reshuffled when it starts."""
    epoch = 0
    while epochs is None or epoch < epochs:
        yield from make_batches(data, batch_size, rng)
        epoch += 1


# Batches are padded to a multiple of this many positions: the CPU kernels (oneDNN) build and keep
# a primitive per tensor shape, so every new length grew an enrollment's memory step after step;
# with lengths on a coarse grid the shapes repeat. Right padding changes no loss (causal attention,
# padded positions are never selected).
PAD_MULTIPLE = 16


def collate(batch: Sequence[Encoded]):
    """input_ids (B, L) right-padded to a multiple of PAD_MULTIPLE; sel (B, L) positions that predict a
    reply token; targets (B, L)."""
    torch = torch_module()
    length = -(-max(len(e.ids) for e in batch) // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = torch.zeros((len(batch), length), dtype=torch.long)
    sel = torch.zeros((len(batch), length), dtype=torch.bool)
    tgt = torch.zeros((len(batch), length), dtype=torch.long)
    for b, e in enumerate(batch):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids)
        tgt[b, : n - 1] = ids[b, 1:n]
        sel[b, max(e.n_prompt - 1, 0) : n - 1] = True
    return ids, sel, tgt


def model_device(bb: TrainBackbone):
    """Where the backbone's weights are (CPU, or the rank's GPU in distributed training)."""
    return bb.model.lm_head.weight.device


def cache_from_kv(kv, batch: int):
    """A DynamicCache holding ``kv`` (layers, 2, kv_heads, P, head_dim) for every batch row.

    ``kv`` may also hold one block per row, (B, layers, 2, kv_heads, P, head_dim):
    private training feeds per-row copies to get per-example gradients."""
    from transformers import DynamicCache

    cache = DynamicCache()
    rows = kv.dim() == 6
    for layer in range(kv.shape[1] if rows else kv.shape[0]):
        if rows:
            k, v = kv[:, layer, 0], kv[:, layer, 1]  # (B, kv_heads, P, head_dim)
        else:
            k = kv[layer, 0].unsqueeze(0).expand(batch, -1, -1, -1)  # (B, kv_heads, P, head_dim)
            v = kv[layer, 1].unsqueeze(0).expand(batch, -1, -1, -1)
        cache.update(k, v, layer)
    return cache


def hidden(bb: TrainBackbone, ids, kv=None, soft=None):
    """Final hidden states (B, L, hidden) of ``ids`` behind a KV block, a soft prompt, or nothing.

    ``kv`` / ``soft`` may carry a leading batch dimension (one copy per row)."""
    torch = torch_module()
    B, L = ids.shape
    if soft is not None:  # soft (P, hidden) or (B, P, hidden) at positions 0..P-1, then the conversation
        P = soft.shape[-2]
        emb = bb.model.get_input_embeddings()(ids)  # (B, L, hidden)
        x = torch.cat([soft if soft.dim() == 3 else soft.unsqueeze(0).expand(B, -1, -1), emb], dim=1)
        pos = torch.arange(P + L, device=ids.device).unsqueeze(0).expand(B, -1)
        out = bb.model.model(inputs_embeds=x, position_ids=pos,
                             attention_mask=torch.ones(B, P + L, dtype=torch.long, device=ids.device),
                             use_cache=False)
        return out.last_hidden_state[:, P:]
    P = 0 if kv is None else kv.shape[-2]
    cache = cache_from_kv(kv, B) if kv is not None else None
    pos = torch.arange(P, P + L, device=ids.device).unsqueeze(0).expand(B, -1)
    out = bb.model.model(input_ids=ids, past_key_values=cache, position_ids=pos,
                         attention_mask=torch.ones(B, P + L, dtype=torch.long, device=ids.device),
                         use_cache=kv is not None)
    return out.last_hidden_state


def batch_loss(bb: TrainBackbone, batch: Sequence[Encoded], kv=None, soft=None, bf16: bool = False):
    """(sum of reply-token NLL, number of reply tokens) for one batch."""
    torch = torch_module()
    ids, sel, tgt = (t.to(model_device(bb)) for t in collate(batch))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = hidden(bb, ids, kv=kv, soft=soft)[sel]  # (N, hidden) only where a reply token is predicted
        logits = bb.model.lm_head(h)  # (N, vocab)
    loss = torch.nn.functional.cross_entropy(logits.float(), tgt[sel], reduction="sum")
    return loss, int(sel.sum())


def example_losses(bb: TrainBackbone, batch: Sequence[Encoded], kv=None, soft=None, bf16: bool = False):
    """Each example's own mean reply-token NLL, (B,) with its graph.

    An example's loss depends on that example alone (rows are right-padded and
    attention is causal), which per-example gradients -- private training --
    rely on."""
    torch = torch_module()
    ids, sel, tgt = (t.to(model_device(bb)) for t in collate(batch))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = hidden(bb, ids, kv=kv, soft=soft)[sel]  # (N, hidden) only where a reply token is predicted
        logits = bb.model.lm_head(h)  # (N, vocab)
    nll = torch.nn.functional.cross_entropy(logits.float(), tgt[sel], reduction="none")  # (N,)
    row = sel.nonzero()[:, 0]  # (N,) the example each predicted token belongs to
    sums = torch.zeros(len(batch), dtype=nll.dtype, device=nll.device).index_add(0, row, nll)  # (B,)
    return sums / sel.sum(1).clamp(min=1)


def batch_mean_loss(bb: TrainBackbone, batch: Sequence[Encoded], kv=None, soft=None, bf16: bool = False):
    """Mean reply-token NLL of one batch (a scalar tensor with its graph: what a step minimises)."""
    loss_sum, n = batch_loss(bb, batch, kv=kv, soft=soft, bf16=bf16)
    return loss_sum / max(n, 1)


def reply_tokens(e: Encoded) -> int:
    """How many reply tokens of ``e`` are predicted (the positions ``collate`` selects)."""
    return len(e.ids) - max(e.n_prompt, 1)


def micro_batches(batch: Sequence[Encoded], max_tokens: int) -> list[list[Encoded]]:
    """``batch`` as consecutive groups of at most ``max_tokens`` padded tokens (rows x longest row),
    at least one row each; ``max_tokens`` 0 = the whole batch at once."""
    if not max_tokens:
        return [list(batch)]
    groups: list[list[Encoded]] = [[]]
    for e in batch:
        group = groups[-1]
        longest = max([len(x.ids) for x in group] + [len(e.ids)])
        if group and longest * (len(group) + 1) > max_tokens:
            groups.append([])
        groups[-1].append(e)
    return groups


def batch_backward(bb: TrainBackbone, batch: Sequence[Encoded], inputs: Callable[[], dict], bf16: bool = False,
                   max_tokens: int = 0) -> float:
    """Backpropagate the mean reply-token NLL of ``batch``; returns it.

    The rows go through the model in micro-batches of at most ``max_tokens`` padded tokens,
    each scaled by the whole batch's token count, so the summed gradient is the one-pass
    gradient while only one micro-batch's activations are alive at a time (the peak memory
    of a step). ``inputs()``: the block's keyword inputs (``kv=`` / ``soft=``), made afresh
    for every micro-batch (each backward frees its own graph).
    """
    total = max(sum(reply_tokens(e) for e in batch), 1)
    value = 0.0
    for group in micro_batches(batch, max_tokens):
        loss_sum, _ = batch_loss(bb, group, bf16=bf16, **inputs())
        (loss_sum / total).backward()
        value += float(loss_sum.detach())
    return value / total


def mean_loss(bb: TrainBackbone, data: Sequence[Encoded], kv=None, soft=None, batch_size: int = 8,
              bf16: bool = False) -> float:
    """Mean reply-token NLL (nats) over ``data``; exp() of it is the perplexity."""
    torch = torch_module()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in make_batches(data, batch_size, None):
            loss, n = batch_loss(bb, batch, kv=kv, soft=soft, bf16=bf16)
            total += float(loss)
            count += n
    return total / max(count, 1)


def reply_loss(bb: TrainBackbone, examples: Sequence[Any], prefix: Prefix | None, context_budget: int = 112,
               reply_budget: int = 48, batch_size: int = 8) -> float:
    """Mean reply-token NLL of ``examples`` behind ``prefix`` (None = backbone only)."""
    torch = torch_module()
    data = encode(bb.fmt, examples, context_budget, reply_budget)
    kv = None
    if prefix is not None:
        prefix.check(fingerprint=bb.fingerprint)
        kv = torch.from_numpy(prefix.kv.astype(np.float32))
    return mean_loss(bb, data, kv=kv, batch_size=batch_size)
