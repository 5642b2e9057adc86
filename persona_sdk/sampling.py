"""Picking the next token from last-position logits: greedy, top-k / top-p sampling, repetition penalty.

Per token this touches the whole vocabulary only a few times (penalty on
the tokens seen, one max or a top-k preselection); sorting happens among the
top k candidates only, never over the 49k-token vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import GenerationConfig

_CHUNK = 64  # top-k preselection: maxima of chunks of this many logits


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest of ``logits`` (vocab,), in no particular order."""
    v = logits.size
    if k >= v:
        return np.arange(v)
    chunks = v // _CHUNK
    if chunks >= 4 * k:
        # the k-th largest chunk maximum bounds the k-th largest logit from below: at least k
        # logits reach it, so every top-k logit is among those >= it (usually a few hundred)
        maxima = logits[: chunks * _CHUNK].reshape(chunks, _CHUNK).max(axis=1)
        bound = np.partition(maxima, chunks - k)[chunks - k]
        cand = np.flatnonzero(logits >= bound)
        if cand.size > k:
            cand = cand[np.argpartition(logits[cand], cand.size - k)[cand.size - k:]]
        return cand
    return np.argpartition(logits, v - k)[v - k:]


class Sampler:
    """One reply's token picker: its settings, its random stream, the tokens seen so far."""

    def __init__(self, gen: GenerationConfig, vocab_size: int, context_ids: Sequence[int] = ()) -> None:
        self.gen = gen
        self.rng = np.random.default_rng(gen.seed)
        self._seen = np.zeros(vocab_size, dtype=bool)
        ids = np.asarray(list(context_ids), dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        self._seen[ids] = True
        self._seen_ids = np.flatnonzero(self._seen)  # (n_seen,) sorted, unique

    def observe(self, token: int) -> None:
        """Count ``token`` as seen (the repetition penalty applies to it from now on)."""
        if 0 <= token < self._seen.size and not self._seen[token]:
            self._seen[token] = True
            self._seen_ids = np.append(self._seen_ids, token)

    def pick(self, logits: np.ndarray) -> int:
        """The next token from last-position ``logits`` (vocab,); ``logits`` is not modified."""
        gen = self.gen
        if gen.repetition_penalty != 1.0 and self._seen_ids.size:
            logits = np.array(logits, dtype=np.float32)  # a copy: the caller's buffer stays as it was
            hit = logits[self._seen_ids]
            logits[self._seen_ids] = np.where(hit > 0, hit / gen.repetition_penalty, hit * gen.repetition_penalty)
        if gen.greedy:
            return int(np.argmax(logits))
        k = gen.top_k if 0 < gen.top_k < logits.size else logits.size
        idx = top_k_indices(logits, k)
        vals = logits[idx].astype(np.float64) / gen.temperature
        order = np.argsort(-vals, kind="stable")
        idx, vals = idx[order], vals[order]
        probs = np.exp(vals - vals[0])
        probs /= probs.sum()
        if gen.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), gen.top_p)) + 1
            idx, probs = idx[:keep], probs[:keep] / probs[:keep].sum()
        return int(idx[self.rng.choice(idx.size, p=probs)])

