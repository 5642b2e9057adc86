"""Metrics of explicit personas: does a reply speak *as* its persona? (pure functions, no torch)

- :func:`consistency_at_k`: the share of replies whose best-matching persona
  among K candidates (their own + K−1 others) is their own, by embedding
  similarity (a persona's score is its best sentence's cosine similarity);
  chance is 1/K. The embedder (MiniLM in the table) is passed in as vectors.
- :func:`restates`, :func:`copy_rate`: a reply that restates a persona
  sentence nearly verbatim (most of the sentence's words, in order) games the
  consistency score without conversing; report the share beside it.
- :func:`perspective`: a reply speaks *as* the persona when it talks in the
  first person singular and does not hand the persona to the user ("You're a
  nurse, right?" for "I am a nurse.").
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..errors import MetricError

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
FIRST_PERSON = frozenset({"i", "me", "my", "mine", "myself"})
SECOND_PERSON = frozenset({"you", "your", "yours", "yourself"})
# first person -> second person, word by word (enough for persona sentences)
_TO_SECOND = {"i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "am": "are",
              "was": "were"}
_EXPAND = {"i'm": "i am", "im": "i am", "i've": "i have", "ive": "i have", "i'd": "i would", "i'll": "i will",
           "you're": "you are", "youre": "you are", "you've": "you have", "you'd": "you would",
           "you'll": "you will"}


def words(text: str) -> list[str]:
    """Lowercased word tokens, pronoun contractions expanded ("I'm" -> "i am", "you're" -> "you are")."""
    out: list[str] = []
    for w in _TOKEN.findall(text.lower().replace("’", "'")):
        out += _EXPAND.get(w, w).split()
    return out


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[-1]))
        prev = cur
    return prev[-1]


def restates(reply: str, sentence: str, threshold: float = 0.8, min_words: int = 3) -> bool:
    """Whether ``reply`` holds at least ``threshold`` of ``sentence``'s words in order (longest common
    subsequence); sentences shorter than ``min_words`` words never count."""
    s = words(sentence)
    if len(s) < min_words:
        return False
    return _lcs(s, words(reply)) >= threshold * len(s)


def copies(replies: Sequence[str], personas: Sequence[Sequence[str]], threshold: float = 0.8) -> list[bool]:
    """Per reply: does it restate one of its own persona's sentences nearly verbatim (:func:`restates`)?"""
    _same(replies, personas)
    return [any(restates(r, s, threshold) for s in p) for r, p in zip(replies, personas)]


def copy_rate(replies: Sequence[str], personas: Sequence[Sequence[str]], threshold: float = 0.8) -> float:
    """Share of replies restating one of their own persona's sentences nearly verbatim (:func:`restates`)."""
    return float(np.mean(copies(replies, personas, threshold)))


def second_person(sentence: str) -> str:
    """A first-person persona sentence turned to the user ("I am a nurse." -> "you are a nurse")."""
    return " ".join(_TO_SECOND.get(w, w) for w in words(sentence))


def is_first_person(reply: str) -> bool:
    return any(w in FIRST_PERSON for w in words(reply))


def about_user(reply: str, persona: Sequence[str], threshold: float = 0.6) -> bool:
    """Whether ``reply`` hands a persona sentence to the user: its second-person form ("you are a
    nurse" for "I am a nurse.") restated at ``threshold`` of its words, and matched better than the
    first-person original (so "I have two cats" is not handing "I have two cats." over)."""
    said = words(reply)
    if not SECOND_PERSON & set(said):
        return False
    for s in persona:
        turned = second_person(s).split()
        if not SECOND_PERSON & set(turned) or len(turned) < 3:
            continue
        hit = _lcs(turned, said)
        if hit >= threshold * len(turned) and hit > _lcs(words(s), said):
            return True
    return False


def perspective(replies: Sequence[str], personas: Sequence[Sequence[str]]) -> dict[str, float]:
    """Shares of replies in the first person, handing the persona to the user, and speaking *as* the
    persona (first person and not handing it over: ``perspective``)."""
    _same(replies, personas)
    first = [is_first_person(r) for r in replies]
    handed = [about_user(r, p) for r, p in zip(replies, personas)]
    return {"first_person": float(np.mean(first)), "about_user": float(np.mean(handed)),
            "perspective": float(np.mean([f and not h for f, h in zip(first, handed)]))}


def consistency_at_k(reply_vecs: np.ndarray, persona_vecs: Sequence[np.ndarray], owners: Sequence[int],
                     candidates: Sequence[Sequence[int]], exclude: Sequence[bool] | None = None) -> float:
    """Share of replies whose best-matching candidate persona is their own (:func:`consistency_hits`);
    replies flagged in ``exclude`` (e.g. :func:`copies`) count as misses."""
    hits = consistency_hits(reply_vecs, persona_vecs, owners, candidates)
    if exclude is not None:
        _same(hits, exclude)
        hits = [h and not x for h, x in zip(hits, exclude)]
    return float(np.mean(hits))


def consistency_hits(reply_vecs: np.ndarray, persona_vecs: Sequence[np.ndarray], owners: Sequence[int],
                     candidates: Sequence[Sequence[int]]) -> list[bool]:
    """Per reply: is its best-matching candidate persona its own?

    ``reply_vecs`` (R, d); ``persona_vecs[p]`` (S_p, d) the sentences of persona p;
    ``owners[r]`` the persona of reply r; ``candidates[r]`` the K personas it is
    compared against (its owner among them). A persona's score is the highest
    cosine similarity of any of its sentences; ties count as misses."""
    r = np.asarray(reply_vecs, dtype=np.float64)
    if r.ndim != 2 or len(r) != len(owners) or len(owners) != len(candidates) or not len(r):
        raise MetricError("consistency needs one vector, owner and candidate list per reply")
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    normed = []
    for v in persona_vecs:
        v = np.asarray(v, dtype=np.float64)
        normed.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))
    hits = []
    for i, (own, cands) in enumerate(zip(owners, candidates)):
        if own not in cands:
            raise MetricError(f"reply {i}: its own persona is not among its candidates")
        scores = {c: float((normed[c] @ r[i]).max()) for c in cands}  # persona -> best sentence similarity
        best = max(scores.values())
        hits.append(scores[own] == best and sum(v == best for v in scores.values()) == 1)
    return hits


def _same(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise MetricError(f"{len(a)} replies but {len(b)} personas")
    if not a:
        raise MetricError("nothing to score: no replies")
