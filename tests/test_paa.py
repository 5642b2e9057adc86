"""PAA's parts (persona_sdk/training/paa.py): τ, the dynamic masks, the gated fusion, and its ONNX export
against torch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from persona_sdk.errors import ConfigError  # noqa: E402
from persona_sdk.training.paa import PAAFusion, added_parameters, export_fusion, paa_masks, paa_tau  # noqa: E402


def test_tau_is_the_context_share_of_all_tokens():
    assert paa_tau(30, 10) == pytest.approx(0.75)
    assert paa_tau(0, 12) == 0.0 and paa_tau(12, 0) == 1.0
    got = paa_tau(torch.tensor([30, 5, 0]), torch.tensor([10, 15, 4]))
    assert torch.allclose(got, torch.tensor([0.75, 0.25, 0.0]))
    with pytest.raises(ConfigError):
        paa_tau(0, 0)
    with pytest.raises(ConfigError):
        paa_tau(-1, 3)


def test_masks_keep_a_side_only_above_tau_strictly():
    w = torch.tensor([[[0.875], [0.5], [0.125], [0.75]]])  # (1, 4, 1), exact in binary
    m_p, m_c = paa_masks(w, 0.75)
    assert m_p.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]  # w > 0.75 (0.75 itself is not above)
    assert m_c.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]  # 1 - w > 0.75
    m_p, m_c = paa_masks(w, 0.25)  # a low bar keeps both sides where both clear it
    assert m_p.flatten().tolist() == [1.0, 1.0, 0.0, 1.0] and m_c.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]


def test_masks_take_one_tau_per_sequence():
    w = torch.full((2, 3, 1), 0.6)
    m_p, m_c = paa_masks(w, torch.tensor([0.5, 0.7]))
    assert m_p[0].sum() == 3 and m_p[1].sum() == 0
    assert m_c.sum() == 0  # 1 - 0.6 = 0.4 clears neither


def _inputs(b=2, t=3, p=5, u=7, hidden=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, e_p, e_c = (torch.randn(b, n, hidden, generator=g) for n in (t, p, u))
    p_mask = torch.ones(b, p)
    c_mask = torch.ones(b, u)
    if b > 1:  # the second sequence: 3 persona tokens, 4 context tokens (padding after)
        p_mask[1, 3:] = 0
        c_mask[1, 4:] = 0
    return h, e_p, e_c, p_mask, c_mask


def test_fusion_is_the_masked_gate_mix_of_both_cross_attentions():
    torch.manual_seed(0)
    fusion = PAAFusion(32, 4).eval()
    h, e_p, e_c, p_mask, c_mask = _inputs()
    with torch.no_grad():
        out, w = fusion(h, e_p, e_c, p_mask, c_mask)
        o_p = fusion.attend(fusion.persona, h, e_p, p_mask)
        o_c = fusion.attend(fusion.context, h, e_c, c_mask)
        tau = torch.tensor([7 / 12, 4 / 7]).view(2, 1, 1)
        expected = w * (w > tau) * o_p + (1 - w) * ((1 - w) > tau) * o_c
        assert torch.allclose(out, expected, atol=1e-6)
        assert torch.allclose(w, torch.sigmoid(fusion.gate(torch.cat([h, o_p], -1))))
        # padding never leaks: changing padded persona/context positions changes nothing
        e_p2, e_c2 = e_p.clone(), e_c.clone()
        e_p2[1, 3:] += 5.0
        e_c2[1, 4:] -= 5.0
        assert torch.allclose(fusion(h, e_p2, e_c2, p_mask, c_mask)[0], out, atol=1e-6)
        # without masks: the plain gate mix
        fusion.use_masks = False
        plain, _ = fusion(h, e_p, e_c, p_mask, c_mask)
        assert torch.allclose(plain, w * o_p + (1 - w) * o_c, atol=1e-6)
    assert added_parameters(fusion) == 8 * 32 * 32 + 2 * 32 + 1


def test_fusion_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    fusion = PAAFusion(32, 4).eval()
    with torch.no_grad():  # a gate that lands on both sides of τ, so the masks matter
        fusion.gate.weight.mul_(20.0)
    path = export_fusion(fusion, tmp_path / "paa.onnx", _inputs())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ({}, {"b": 1, "t": 1, "p": 9, "u": 2}):  # other batch and lengths than the export's
        inputs = _inputs(**shape, seed=3)
        with torch.no_grad():
            ref, ref_w = fusion(*inputs)
        got, got_w = sess.run(None, dict(zip(["h", "e_p", "e_c", "p_mask", "c_mask"], (x.numpy() for x in inputs))))
        assert np.abs(got - ref.numpy()).max() < 1e-4 and np.abs(got_w - ref_w.numpy()).max() < 1e-5
