"""persona_sdk.training.methods.dpo: the DPO loss against hand-computed values, and the
sequence log-probabilities it is computed from."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from persona_sdk.training.methods.dpo import dpo_loss, sequence_logps  # noqa: E402


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_dpo_loss_matches_hand_computed_values():
    # pair 1: chosen gained 0.5 nats over the reference, rejected lost 1.0 -> margin 1.5
    # pair 2: chosen unchanged, rejected gained 0.5                         -> margin -0.5
    loss, rc, rr = dpo_loss(_t(-1.0, -2.0), _t(-3.0, -1.0), _t(-1.5, -2.0), _t(-2.0, -1.5), beta=0.1)
    # -log σ(x) = log(1 + e^-x):  x = 0.15 -> log(1.860708) = 0.620957, x = -0.05 -> log(2.051271) = 0.718459
    hand = (math.log(1 + math.exp(-0.15)) + math.log(1 + math.exp(0.05))) / 2
    assert hand == pytest.approx(0.669708, abs=1e-6)
    assert float(loss) == pytest.approx(hand, abs=1e-12)
    assert rc.tolist() == pytest.approx([0.05, 0.0]) and rr.tolist() == pytest.approx([-0.1, 0.05])


def test_dpo_loss_starts_at_log2_and_pushes_the_right_way():
    lp = _t(-4.0, -7.0)
    loss, _, _ = dpo_loss(lp, lp.clone(), lp.clone(), lp.clone(), beta=0.1)
    assert float(loss) == pytest.approx(math.log(2))  # policy = reference: σ(0) = 1/2
    chosen = _t(-4.0).requires_grad_(True)
    rejected = _t(-5.0).requires_grad_(True)
    loss, _, _ = dpo_loss(chosen, rejected, _t(-4.0), _t(-5.0), beta=0.1)
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.05) and rejected.grad.item() == pytest.approx(0.05)
    # β scales the margin: a larger β with the same margin gives a smaller loss
    small, _, _ = dpo_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0), beta=0.1)
    large, _, _ = dpo_loss(_t(-1.0), _t(-3.0), _t(-2.0), _t(-2.0), beta=1.0)
    assert float(large) < float(small) < math.log(2)


def test_sequence_logps_sums_target_tokens_only(tiny_backbone):
    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.data import Encoded

    bb = load_backbone(tiny_backbone)
    a = Encoded((5, 6, 7, 8, 9), 3, 0)  # targets 8, 9
    b = Encoded((5, 6, 7, 8, 9, 10, 11), 2, 0)  # targets 7..11
    with torch.no_grad():
        got = sequence_logps(bb, [a, b])
        logits = bb.model(torch.tensor([b.ids])).logits[0].log_softmax(-1)  # (L, V)
    by_hand = sum(float(logits[i - 1, b.ids[i]]) for i in range(2, 7))
    assert got.shape == (2,) and float(got[1]) == pytest.approx(by_hand, abs=1e-4)
    with torch.no_grad():
        la = bb.model(torch.tensor([a.ids])).logits[0].log_softmax(-1)
    assert float(got[0]) == pytest.approx(float(la[2, 8] + la[3, 9]), abs=1e-4)  # padding changes nothing
