"""Picking the next token from last-position logits: greedy, top-k / top-p sampling, repetition penalty,
and a pull toward the persona's usual reply length.

Per token this touches the whole vocabulary only a few times (penalty on
the tokens seen, one max or a top-k preselection); sorting happens among the
top k candidates only, never over the 49k-token vocabulary.

Length (``GenerationConfig.length_pull``, 5 by default): a persona's profile
keeps its owner's median reply length in tokens (``voice.profile_reply_tokens``).
The target is the median length of the persona's turns so far in this
conversation (``length_from="conversation"``, the default; people write longer
or shorter from one conversation to the next, and their earlier turns say
which), the profile's length before the persona has spoken, or the profile's
always (``"profile"``), or the geometric mean of the two (``"blend"``). After
``n`` reply tokens the end-of-turn logits get
``length_pull * log((n + 1) / (target + 1))``: ending is discouraged before the
target and encouraged after it, more the further away, and only the stop
tokens' logits move (a sentence is still ended where the model would end one);
with the pull on, the end-of-turn tokens are exempt from the repetition
penalty, so the target is where replies end. On the K = 20 voice table this
put 85% of speakers' median length within ±35% of their own (no pull: 55%;
the profile's length as the target: 65%); the distance between generated and
real length distributions (KS) did not grow, though the spread narrowed to
two thirds of a person's (BENCHMARKS.md, "length from the conversation").
With ``length_pull=0``, or for the bare backbone, the end-of-turn token is
penalised like any token already in the conversation (as in transformers).
"""

from __future__ import annotations

import math
from typing import Any, Collection, Sequence

import numpy as np

from .config import GenerationConfig
from .voice import profile_reply_tokens

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


def length_target(gen: GenerationConfig, prefix: Any = None, own_turns: Sequence[int] = ()) -> int | None:
    """The reply length (tokens) ``gen`` pulls toward: its ``target_tokens``; else, for a persona whose
    profile keeps its owner's usual length, that length, the median of ``own_turns`` (tokens in the
    persona's turns so far in this conversation) or their geometric mean, as ``gen.length_from`` says
    (the profile's alone while ``own_turns`` is empty); else none (the bare backbone is not pulled)."""
    if gen.length_pull == 0:
        return None
    if gen.target_tokens is not None:
        return gen.target_tokens
    usual = profile_reply_tokens(getattr(prefix, "meta", None)) if prefix is not None else None
    if usual is None or gen.length_from == "profile" or not len(own_turns):
        return usual
    here = max(float(np.median(np.asarray(own_turns, dtype=np.float64))), 1.0)
    if gen.length_from == "conversation":
        return max(1, round(here))
    return max(1, round(math.sqrt(here * usual)))  # "blend": the geometric mean


class Sampler:
    """One reply's token picker: its settings, its random stream, the tokens seen so far."""

    def __init__(self, gen: GenerationConfig, vocab_size: int, context_ids: Sequence[int] = (),
                 stop_ids: Collection[int] = (), target_tokens: int | None = None) -> None:
        self.gen = gen
        self.rng = np.random.default_rng(gen.seed)
        self._seen = np.zeros(vocab_size, dtype=bool)
        ids = np.asarray(list(context_ids), dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        self._seen[ids] = True
        stops = np.asarray(sorted(int(i) for i in stop_ids if 0 <= int(i) < vocab_size), dtype=np.int64)
        self._stops = stops  # (n_stop,): moved by the length pull
        self.target = target_tokens if gen.length_pull > 0 and stops.size else None
        # under the pull, it alone decides where a reply ends: no repeat penalty on the stop tokens
        self._exempt = frozenset(stops.tolist()) if self.target is not None else frozenset()
        if self._exempt:
            self._seen[stops] = False
        self._seen_ids = np.flatnonzero(self._seen)  # (n_seen,) sorted, unique
        self.generated = 0  # reply tokens observed so far

    def observe(self, token: int) -> None:
        """Count ``token`` as generated and seen (the repetition penalty applies to it from now on)."""
        self.generated += 1
        if 0 <= token < self._seen.size and not self._seen[token] and token not in self._exempt:
            self._seen[token] = True
            self._seen_ids = np.append(self._seen_ids, token)

    def stop_bias(self) -> float:
        """What the length pull adds to the end-of-turn logits before the next token (0 without a target)."""
        if self.target is None:
            return 0.0
        return self.gen.length_pull * math.log((self.generated + 1) / (self.target + 1))

    def pick(self, logits: np.ndarray) -> int:
        """The next token from last-position ``logits`` (vocab,); ``logits`` is not modified."""
        gen = self.gen
        penalise = gen.repetition_penalty != 1.0 and self._seen_ids.size
        bias = self.stop_bias()
        if penalise or bias:
            logits = np.array(logits, dtype=np.float32)  # a copy: the caller's buffer stays as it was
        if penalise:
            hit = logits[self._seen_ids]
            logits[self._seen_ids] = np.where(hit > 0, hit / gen.repetition_penalty, hit * gen.repetition_penalty)
        if bias:
            logits[self._stops] += bias
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

