"""Metrics against hand-computed values."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from persona_sdk import metrics as M
from persona_sdk.errors import MetricError

HYP, REF = "the cat", "the cat sat on the mat"


def test_module_import_pulls_no_heavy_dependency():
    code = ("import sys, persona_sdk.metrics; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'sacrebleu', 'rouge_score')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_normalisation_is_convai2():
    assert M.normalize_answer("  The Cat,  sat on A mat!! ") == "cat sat on mat"
    assert M.normalize_answer("An apple's thé") == "apples thé"  # only whole-word articles go
    assert M.normalize_answer("...") == ""


def test_unigram_f1_hand_computed():
    # hyp -> "cat sat" (2), ref -> "cat sat on mat" (4): P = 1, R = 1/2, F1 = 2/3
    assert M.unigram_f1("The cat, sat!", "a cat sat on the mat") == pytest.approx(2 / 3)
    assert M.unigram_f1("Hello, World", "hello world") == 1.0  # case/punctuation
    assert M.unigram_f1("", "hello") == 0.0
    assert M.unigram_f1("hello", "") == 0.0
    assert M.unigram_f1("the", "a!") == 1.0  # both empty after normalisation
    assert M.unigram_f1("dog", "cat") == 0.0
    # multiset overlap: hyp "yes yes yes" vs ref "yes no": common 1, P 1/3, R 1/2 -> 0.4
    assert M.unigram_f1("yes yes yes", "yes no") == pytest.approx(0.4)


def test_bleu_hand_computed_and_argument_order():
    # hyp 2 tokens, ref 6: all n-grams match, brevity penalty exp(1 - 6/2)
    assert M.bleu(HYP, REF, 1) == pytest.approx(math.exp(-2))
    assert M.bleu(HYP, REF, 2) == pytest.approx(math.exp(-2))
    # swapped: clipped unigram precision 2/6, bigram 1/5, no brevity penalty
    assert M.bleu(REF, HYP, 1) == pytest.approx(1 / 3)
    assert M.bleu(REF, HYP, 2) == pytest.approx(math.sqrt(1 / 3 * 1 / 5))
    assert M.bleu(HYP, REF, 1) != pytest.approx(M.bleu(REF, HYP, 1))
    assert M.bleu(REF, REF, 2) == pytest.approx(1.0)
    assert M.bleu("", REF, 2) == 0.0
    assert M.corpus_bleu([HYP], [REF], 1) == pytest.approx(math.exp(-2))
    with pytest.raises(MetricError):
        M.bleu(HYP, REF, 5)
    with pytest.raises(MetricError):
        M.corpus_bleu([HYP], [REF, REF])


def test_rouge_l_hand_computed():
    # LCS 2: P = 2/2, R = 2/6, F = 0.5
    assert M.rouge_l(HYP, REF) == pytest.approx(0.5)
    assert M.rouge_l(REF, REF) == pytest.approx(1.0)
    assert M.rouge_l("", REF) == 0.0
    assert M.rouge_l("The CAT!", "the cat") == pytest.approx(1.0)  # lowercased, punctuation dropped


def test_distinct_and_entropy_hand_computed():
    texts = ["a a b", "a b"]
    assert M.distinct_n(texts, 1) == pytest.approx(2 / 5)
    # bigrams never cross replies: (a,a) (a,b) | (a,b) -> 2 distinct of 3
    assert M.distinct_n(texts, 2) == pytest.approx(2 / 3)
    assert M.entropy_n(texts, 1) == pytest.approx(-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)))
    assert M.entropy_n(["a b c d"], 1, base=2) == pytest.approx(2.0)
    assert M.distinct_n([""], 1) == 0.0 and M.entropy_n(["x"], 2) == 0.0
    assert M.tokens("Hi, YOU!") == ["hi", ",", "you", "!"]


def test_perplexity_and_gain():
    assert M.perplexity([math.log(4)] * 3) == pytest.approx(4.0)
    # pooled over tokens, not averaged per reply: (0 + 0 + 0 + 3 ln 2) / 4 ... exp
    per_reply = [[0.0, 0.0, 0.0], [3 * math.log(2)]]
    assert M.perplexity(per_reply) == pytest.approx(math.exp(3 * math.log(2) / 4))
    assert M.relative_gain(50.0, 40.0) == pytest.approx(0.2)
    with pytest.raises(MetricError):
        M.perplexity([])
    with pytest.raises(MetricError):
        M.perplexity([float("nan")])


def test_hits_at_1_with_known_losses():
    # the loss is the reply's length; the reference is the shortest in ex 0 only
    loss = lambda ctx, reply: float(len(reply)) + ctx  # noqa: E731
    distractors = tuple("x" * (i + 3) for i in range(19))
    good = M.HitsExample(0.0, "ok", distractors)
    bad = M.HitsExample(0.0, "a much longer reply than any", distractors)
    tie = M.HitsExample(0.0, "abc", distractors)  # ties with "xxx": a miss
    assert M.hits_at_1(loss, [good]) == 1.0
    assert M.hits_at_1(loss, [good, bad, tie, good]) == pytest.approx(0.5)
    with pytest.raises(MetricError, match="distractors"):
        M.hits_at_1(loss, [M.HitsExample(0.0, "ok", distractors[:5])])


def test_pick_distractors_is_deterministic_and_excludes_the_speaker():
    pool = [(f"s{i % 5}", f"reply {i}") for i in range(60)]
    d = M.pick_distractors(pool, "s0", "conv1:3")
    assert len(d) == 19 and len(set(d)) == 19
    assert not {f"reply {i}" for i in range(0, 60, 5)} & set(d)  # s0 wrote every 5th reply
    assert d == M.pick_distractors(list(pool), "s0", "conv1:3")
    assert d != M.pick_distractors(pool, "s0", "conv2:0")  # a different item gets other distractors
    with pytest.raises(MetricError, match="distractors needed"):
        M.pick_distractors(pool[:10], "s0", "k")


def test_persona_identification_known_answer():
    # K = 3 prefixes, N = 6 replies, owners 0,0,1,1,2,2
    owners = [0, 0, 1, 1, 2, 2]
    losses = np.array([
        [1.0, 1.0, 2.0, 2.0, 2.0, 0.5],
        [2.0, 2.0, 1.0, 3.0, 2.0, 2.0],
        [2.0, 0.9, 2.0, 2.5, 1.0, 1.0],
    ])  # (K, N)
    # reply: 0 hit, 1 miss (prefix 2 lower), 2 hit, 3 miss, 4 hit, 5 miss (prefix 0 lower)
    r = M.persona_identification(losses, owners)
    assert r.per_speaker == (0.5, 0.5, 0.5)
    assert r.accuracy == pytest.approx(0.5) and r.micro == pytest.approx(0.5)
    assert r.k == 3 and r.chance == pytest.approx(1 / 3) and r.n_replies == 6
    # a perfect diagonal and a tie (counts as a miss)
    eye = np.where(np.eye(3) == 1, 0.1, 1.0)
    assert M.persona_identification(eye, [0, 1, 2]).accuracy == 1.0
    tied = eye.copy()
    tied[1, 0] = 0.1
    assert M.persona_identification(tied, [0, 1, 2]).per_speaker == (0.0, 1.0, 1.0)
    # macro vs micro differ when speakers own different numbers of replies
    m = np.array([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 2.0]])
    r2 = M.persona_identification(m, [0, 0, 0, 1])
    assert r2.accuracy == pytest.approx(0.5) and r2.micro == pytest.approx(0.75)
    with pytest.raises(MetricError, match="owns no reply"):
        M.persona_identification(m, [0, 0, 0, 0])
    with pytest.raises(MetricError):
        M.persona_identification(m, [0, 0, 2, 1])
    with pytest.raises(MetricError):
        M.persona_identification(m[:, :3], [0, 0, 0, 1])


def test_persona_consistency_with_a_known_embedding():
    table = {"i love dogs": [1.0, 0.0], "dogs are great": [0.8, 0.6], "i ski": [0.0, 1.0]}
    embed = lambda texts: np.array([table[t] for t in texts])  # noqa: E731
    # reply 1 best matches "i love dogs" (1.0); reply 2 ("i ski") best matches "i ski" (1.0)
    assert M.persona_consistency(["i love dogs", "i ski"], ["i love dogs", "i ski"], embed) == pytest.approx(1.0)
    assert M.persona_consistency(["dogs are great"], ["i love dogs"], embed) == pytest.approx(0.8)
    with pytest.raises(MetricError):
        M.persona_consistency([], ["x"], embed)


def test_persona_consistency_offline_minilm(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embed = M.MiniLMEmbedder()
    persona = ["I have two dogs and I walk them every morning."]
    on = M.persona_consistency(["My dogs woke me up early for their walk."], persona, embed)
    off = M.persona_consistency(["The quarterly tax forms are due in April."], persona, embed)
    assert on > off + 0.2
    assert M.persona_consistency(persona, persona, embed) == pytest.approx(1.0, abs=1e-5)
