"""persona_sdk.explicit.metrics: consistency at K, copy rate and perspective on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from persona_sdk.errors import MetricError
from persona_sdk.explicit import metrics as X

NURSE = ("I am a nurse.", "I have two cats.")
SURFER = ("I surf every morning.", "I live by the sea.")


def test_restates_and_copy_rate():
    assert X.restates("Well, I am a nurse, you know.", "I am a nurse.")
    assert not X.restates("Nursing is hard work.", "I am a nurse.")
    assert not X.restates("cats", "I have two cats.")
    replies = ["Yes, I have two cats at home.", "The weather is nice.", "I surf."]
    assert X.copy_rate(replies, [NURSE, NURSE, SURFER]) == pytest.approx(1 / 3)
    assert X.copies(replies, [NURSE, NURSE, SURFER]) == [True, False, False]  # "I surf." is too short to count
    with pytest.raises(MetricError):
        X.copy_rate(replies, [NURSE])


def test_perspective_tells_speaking_as_from_handing_over():
    assert X.second_person("I am a nurse.") == "you are a nurse"
    replies = ["I work night shifts at the hospital.", "You're a nurse, right? You are a nurse!",
               "The sea is calm today."]
    p = X.perspective(replies, [NURSE, NURSE, SURFER])
    assert p["first_person"] == pytest.approx(1 / 3) and p["about_user"] == pytest.approx(1 / 3)
    assert p["perspective"] == pytest.approx(1 / 3)
    assert X.about_user("so you have two cats?", NURSE) and not X.about_user("I have two cats", NURSE)


def test_consistency_at_k_by_hand():
    # 2-d "embeddings": persona 0 points along x, persona 1 along y, persona 2 along -x
    personas = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [0.1, 0.9]]), np.array([[-1.0, 0.0]])]
    replies = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.7, 0.7]])
    owners = [0, 1, 1, 0]
    cands = [[0, 1, 2], [1, 0, 2], [1, 0, 2], [0, 1, 2]]
    # reply 0 -> persona 0 (hit); 1 -> persona 1 (hit); 2 -> persona 0 (miss); 3: tie of 0 and 1 (miss)
    assert X.consistency_at_k(replies, personas, owners, cands) == pytest.approx(0.5)
    assert X.consistency_hits(replies, personas, owners, cands) == [True, True, False, False]
    # a copied reply counts as a miss: excluding reply 1 (a hit) and reply 2 (a miss anyway) leaves 1 of 4
    assert X.consistency_at_k(replies, personas, owners, cands, exclude=[False, True, True, False]) == pytest.approx(0.25)
    with pytest.raises(MetricError):
        X.consistency_at_k(replies, personas, owners, cands, exclude=[True])
    with pytest.raises(MetricError, match="not among"):
        X.consistency_at_k(replies[:1], personas, [2], [[0, 1]])
