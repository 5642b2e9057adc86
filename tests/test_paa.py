"""PAA's parts (persona_sdk/training/paa.py): τ, the dynamic masks, the gated fusion, and its ONNX export
against torch."""

from __future__ import annotations

import re
from pathlib import Path

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


# --- PAA attached to the backbone (persona_sdk/training/paa_model.py) -------------------------
from persona_sdk.training.config import PAAConfig  # noqa: E402

PERSONA = ("I have a dog.", "I love pizza.")


@pytest.fixture(scope="module")
def tiny_bb(tiny_backbone):
    from persona_sdk.training.backbone import load_backbone

    return load_backbone(tiny_backbone)


def _batch(bb, config=None, reply="i love pizza and my dog"):
    from persona_sdk.conversation import Turn
    from persona_sdk.training.paa_model import collate_paa, encode_paa

    config = config or PAAConfig()
    context = [Turn("user", "hi there, how are you doing today?"), Turn("assistant", "i am fine thanks, and you?"),
               Turn("user", "what do you do on weekends?")]
    encoded = [encode_paa(bb.fmt, PERSONA, context, reply, config),
               encode_paa(bb.fmt, PERSONA[:1], context[-1:], "lol no", config)]
    return encoded, collate_paa(encoded)


def _inputs_of(t):
    return t["persona_ids"], t["persona_mask"], t["context_ids"], t["context_mask"], t["ids"]


def _randomise(model, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(p.shape[-1], 1) ** 0.5)


def test_untrained_paa_model_is_the_bare_backbone_on_the_response(tiny_bb):
    from persona_sdk.training.paa_model import PAAModel

    model = PAAModel(tiny_bb, PAAConfig(paa_layers=2))
    _, t = _batch(tiny_bb)
    with torch.no_grad():
        bare = tiny_bb.model(input_ids=t["ids"]).logits  # (B, T, vocab)
        assert torch.equal(model(*_inputs_of(t)), bare)  # output projections start at zero: the term is 0
        _randomise(model)
        assert (model(*_inputs_of(t)) - bare).abs().max() > 1e-2  # a non-zero fusion does change them
        assert torch.equal(tiny_bb.model(input_ids=t["ids"]).logits, bare)  # the hooks are gone afterwards


@pytest.mark.parametrize("decoder_context", [True, False])
def test_decoder_reads_the_backbones_own_example_or_in_the_papers_layout_the_reply_only(tiny_bb, decoder_context):
    from persona_sdk.conversation import Turn
    from persona_sdk.training.paa_model import encode_paa

    cfg = PAAConfig(decoder_context=decoder_context)
    history = [Turn("user", "hi there, how are you?"), Turn("assistant", "fine"), Turn("user", "weekends?")]
    enc = encode_paa(tiny_bb.fmt, PERSONA, history, "i love pizza", cfg)
    ids, n_prompt = tiny_bb.fmt.example_ids(history, "i love pizza", cfg.context_budget, cfg.reply_budget)
    assert list(enc.context) == ids[:n_prompt]  # the context encoder reads the bare backbone's prompt
    if decoder_context:  # and so does the decoder, then the reply: the bare backbone's own training example
        assert (list(enc.response.ids), enc.response.n_prompt) == (ids, n_prompt)
    else:
        header = list(tiny_bb.fmt.header_ids)
        assert (list(enc.response.ids), enc.response.n_prompt) == (header + ids[n_prompt:], len(header))


def test_fusion_is_added_to_the_residual_stream_after_self_attention(tiny_bb):
    """paa_layers=1 on the 2-block tiny backbone: recompute the top block by hand from the bare backbone's
    own block input x and self-attention output a: h = x + a; h += fusion(LN2(h)); out = h + MLP(LN2(h))."""
    from persona_sdk.training.paa_model import PAAModel

    model = PAAModel(tiny_bb, PAAConfig(paa_layers=1))
    assert model.fused == [1]
    _randomise(model, seed=1)
    _, t = _batch(tiny_bb)
    block = tiny_bb.model.model.layers[1]
    seen = {}
    hooks = [block.register_forward_pre_hook(lambda m, a, k: seen.update(x=a[0] if a else k["hidden_states"]),
                                             with_kwargs=True),
             block.self_attn.register_forward_hook(lambda m, a, out: seen.update(a=out[0]))]
    try:
        with torch.no_grad():
            tiny_bb.model(input_ids=t["ids"])
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        e_p = model.encode(t["persona_ids"], t["persona_mask"])
        e_c = model.encode(t["context_ids"], t["context_mask"])
        h = seen["x"] + seen["a"]  # (B, T, hidden)
        fused, _ = model.fusions[0](block.post_attention_layernorm(h), e_p, e_c, t["persona_mask"].float(),
                                    t["context_mask"].float())
        h = h + fused
        out = h + block.mlp(block.post_attention_layernorm(h))
        expected = tiny_bb.model.lm_head(tiny_bb.model.model.norm(out))
        assert torch.allclose(model(*_inputs_of(t)), expected, atol=1e-5)
        # the encoders are the backbone's last hidden states over persona and context
        assert torch.allclose(e_p, tiny_bb.model.model(input_ids=t["persona_ids"],
                                                       attention_mask=t["persona_mask"]).last_hidden_state)


def test_masks_cut_both_sides_when_tau_is_above_the_gate(tiny_bb):
    from persona_sdk.training.paa_model import PAAModel, set_masks

    encoded, t = _batch(tiny_bb)
    assert all(len(e.context) > len(e.persona) for e in encoded)  # τ = |U| / (|U| + |P|) > 1/2
    model = PAAModel(tiny_bb, PAAConfig(paa_layers=2))
    _randomise(model, seed=2)
    with torch.no_grad():
        for f in model.fusions:  # w = σ(0) = 1/2 everywhere: neither w nor 1 − w clears τ
            f.gate.weight.zero_()
            f.gate.bias.zero_()
        bare = tiny_bb.model(input_ids=t["ids"]).logits
        assert torch.equal(model(*_inputs_of(t)), bare)  # masks on: both sides masked, the fused term is 0
        set_masks(model, False)
        unmasked = model(*_inputs_of(t))
        assert (unmasked - bare).abs().max() > 1e-2  # masks off: the plain mix w·o_P + (1 − w)·o_C gets through
    off = PAAModel(tiny_bb, PAAConfig(paa_layers=2, masks=False))
    assert not any(f.use_masks for f in off.fusions)
    off.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(off(*_inputs_of(t)), unmasked)


def test_straight_through_lets_gradients_cross_closed_masks_and_keeps_the_forward():
    torch.manual_seed(0)
    h, e_p, e_c, p_mask, c_mask = _inputs(p=2, u=9)  # τ > 1/2 for both rows
    grads = {}
    for st in (False, True):
        fusion = PAAFusion(32, 4, straight_through=st).train()
        torch.manual_seed(0)
        fusion.load_state_dict(PAAFusion(32, 4).state_dict())
        with torch.no_grad():
            fusion.gate.weight.zero_()
            fusion.gate.bias.zero_()  # w = 1/2: both masks closed
        out, _ = fusion(h, e_p, e_c, p_mask, c_mask)
        assert torch.equal(out, torch.zeros_like(out))  # the forward is the masked one either way
        out.sum().backward()
        grads[st] = fusion.persona["o"].weight.grad
    assert grads[False] is None or grads[False].abs().max() == 0
    assert grads[True].abs().max() > 0


def test_a_step_trains_the_fusions_and_leaves_the_backbone_untouched(tiny_bb):
    from persona_sdk.training.loop import gradient_step
    from persona_sdk.training.paa_model import PAAModel, paa_batch_loss

    model = PAAModel(tiny_bb, PAAConfig(paa_layers=2))
    encoded, _ = _batch(tiny_bb)
    backbone_before = {k: v.clone() for k, v in tiny_bb.model.state_dict().items()}
    fusion_before = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(fusion_before) and all(k.startswith("fusions.") for k in fusion_before)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(2):  # the second step moves more than the zero-initialised output projections
        gradient_step(opt, params, lambda: (lambda s, n: s / n)(*paa_batch_loss(model, encoded)), 1.0)
    assert all(torch.equal(v, backbone_before[k]) for k, v in tiny_bb.model.state_dict().items())
    assert not any(p.requires_grad for p in tiny_bb.model.parameters())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, fusion_before[k])]
    assert any(".persona.o." in k for k in changed) and any(".context.q." in k for k in changed)
    assert any(".gate." in k for k in changed)


def test_loss_is_on_response_tokens_only(tiny_bb):
    from persona_sdk.training.paa_model import PAAModel, paa_batch_loss

    model = PAAModel(tiny_bb, PAAConfig())
    encoded, t = _batch(tiny_bb)
    with torch.no_grad():
        loss, n = paa_batch_loss(model, encoded)
    reply_tokens = [len(e.response.ids) - e.response.n_prompt for e in encoded]  # reply + end of turn
    assert n == sum(reply_tokens) and reply_tokens[0] == len(tiny_bb.fmt.reply_ids("i love pizza and my dog"))
    with torch.no_grad():  # untrained = bare backbone: the same NLL from its logits over the reply positions
        logp = tiny_bb.model(input_ids=t["ids"]).logits.log_softmax(-1)
        expected = -sum(float(logp[b, s - 1, t["ids"][b, s]]) for b, e in enumerate(encoded)
                        for s in range(e.response.n_prompt, len(e.response.ids)))
    assert float(loss) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("bias", [6.0, 0.0])
def test_gate_stats_count_open_and_closed_sides_over_reply_positions(tiny_bb, bias):
    """A constant gate w = σ(bias): the shares follow from each reply's τ and its number of reply tokens."""
    from persona_sdk.training.paa import paa_tau
    from persona_sdk.training.paa_model import PAAModel, gate_stats

    model = PAAModel(tiny_bb, PAAConfig(paa_layers=2))
    with torch.no_grad():
        for f in model.fusions:
            f.gate.weight.zero_()
            f.gate.bias.fill_(bias)
    encoded, _ = _batch(tiny_bb)
    encoded = encoded + [encode_short(tiny_bb)]  # a persona longer than its context: τ < 1/2
    w = 1 / (1 + np.exp(-bias))
    n = [len(e.response.ids) - e.response.n_prompt for e in encoded]
    tau = [paa_tau(len(e.context), len(e.persona)) for e in encoded]
    assert min(tau) < 0.5 < max(tau)

    def share(open_: list) -> float:  # the share of reply positions in the replies where ``open_`` holds
        return sum(k for k, o in zip(n, open_) if o) / sum(n)

    stats = gate_stats(model, encoded, batch_size=2)
    assert [g["block"] for g in stats] == model.fused and all(g["positions"] == sum(n) for g in stats)
    for g in stats:
        assert g["w"] == pytest.approx(w, abs=1e-4)
        assert g["persona_open"] == pytest.approx(share([w > t for t in tau]), abs=1e-4)
        assert g["context_open"] == pytest.approx(share([1 - w > t for t in tau]), abs=1e-4)
        assert g["both_closed"] == pytest.approx(share([w <= t and 1 - w <= t for t in tau]), abs=1e-4)
    assert model.gates is None  # recording is off again


def encode_short(bb):
    from persona_sdk.conversation import Turn
    from persona_sdk.training.paa_model import encode_paa

    persona = ["I have a dog and two cats and I love long walks on the beach at night with all of them."] * 3
    return encode_paa(bb.fmt, persona, [Turn("user", "hi")], "ok cool", PAAConfig())


def test_added_parameters_match_a_hand_count(tiny_bb):
    from persona_sdk.training.paa_model import PAAModel, paa_parameter_count

    # per block: 8 projections 32×32 (q, k, v, o for persona and for context) + gate FC 64 weights + 1 bias
    assert added_parameters(PAAModel(tiny_bb, PAAConfig(paa_layers=2))) == 2 * (8 * 32 * 32 + 64 + 1) == 16_514
    assert added_parameters(PAAModel(tiny_bb, PAAConfig(paa_layers=1))) == 8 * 32 * 32 + 64 + 1
    assert paa_parameter_count(576, 2) == 2 * (8 * 576 * 576 + 2 * 576 + 1) == 5_310_722  # the default backbone


def test_training_on_a_tiny_persona_set_lowers_the_training_loss(tiny_backbone, tmp_path):
    from explicit_helpers import write_spc_csv
    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.corpora import spc_explicit_split, spc_persona_examples
    from persona_sdk.split import PersonaSplitConfig
    from persona_sdk.training.paa_model import PAAModel, encode_examples, paa_mean_loss, train_paa

    # the SPC split PAL trains on (by persona), with a dev share large enough for 24 made-up personas
    parts, _ = spc_explicit_split(write_spc_csv(tmp_path / "spc.csv", conversations=60),
                                  PersonaSplitConfig(dev=0.3, test=0.1))
    train, dev = spc_persona_examples(parts["train"]), spc_persona_examples(parts["dev"])
    bb = load_backbone(tiny_backbone)  # its own copy: nothing another test does can leak in
    cfg = PAAConfig(train_replies=48, dev_replies=16, batch_size=8, epochs=4, lr=3e-2, evals=2, bf16="off")
    data = encode_examples(bb.fmt, train[:48], cfg)
    before = paa_mean_loss(PAAModel(bb, cfg), data)
    phases = []
    result = train_paa(train, dev, backbone=bb, config=cfg, progress=lambda p: phases.append(p.phase))
    after = paa_mean_loss(result.model, data)
    assert after < before - 0.05, (before, after)
    s = result.summary
    assert s["best_dev_loss"] < s["init_dev_loss"] and s["trainable_parameters"] == 16_514
    assert s["steps"] == 4 * 6 and phases[0] == "eval" and phases[-1] == "done" and "train" in phases
    assert set(result.state) == set(result.model.state_dict())


def test_persona_labelled_training_uses_only_replies_that_restate_a_sentence(tiny_backbone, tmp_path):
    from explicit_helpers import write_spc_csv
    from persona_sdk.errors import TrainingError
    from persona_sdk.split import PersonaSplitConfig
    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.corpora import spc_explicit_split, spc_persona_examples
    from persona_sdk.training.pal import label_examples
    from persona_sdk.training.paa_model import train_paa

    parts, _ = spc_explicit_split(write_spc_csv(tmp_path / "spc.csv", conversations=60),
                                  PersonaSplitConfig(dev=0.3, test=0.1))
    train, dev = spc_persona_examples(parts["train"]), spc_persona_examples(parts["dev"])
    labelled = label_examples(train)
    assert 0 < len(labelled) < len(train)
    bb = load_backbone(tiny_backbone)
    cfg = PAAConfig(train_replies=10_000, dev_replies=4, max_steps=1, evals=1, bf16="off", replies="persona-labelled")
    s = train_paa(train, dev, backbone=bb, config=cfg).summary
    assert s["train_replies"] == len(labelled) and s["replies"] == "persona-labelled"
    assert s["dev_replies"] == 4  # dev is not filtered
    unlabelled = [ex for ex in train if ex.key not in {it.example.key for it in labelled}]
    with pytest.raises(TrainingError, match="restates a persona sentence"):
        train_paa(unlabelled, dev, backbone=bb, config=cfg)


@pytest.mark.parametrize("field, value, allowed", [
    ("replies", "some", "('all', 'persona-labelled')"),
    ("mask_grad", "soft", "('straight-through', 'none')"),
    ("masks", "yes", "(True, False)"),
    ("bf16", "maybe", "('auto', 'on', 'off')"),
    ("paa_layers", 0, "positive integer"),
    ("lr", -1.0, "positive number"),
    ("max_minutes", 0, "> 0 or None"),
])
def test_bad_paa_config_names_the_allowed_values(field, value, allowed):
    with pytest.raises(ConfigError, match=re.escape(allowed)):
        PAAConfig(**{field: value})


def test_more_paa_layers_than_blocks_names_the_range(tiny_bb):
    from persona_sdk.training.paa_model import PAAModel

    with pytest.raises(ConfigError, match=re.escape("1..2")):
        PAAModel(tiny_bb, PAAConfig(paa_layers=3))


# --- saving and loading trained fusions (save_paa / load_paa) --------------------------------
@pytest.fixture(scope="module")
def trained_paa(tiny_backbone, tmp_path_factory):
    """A few steps of PAA on made-up SPC replies, saved; (result, folder)."""
    from explicit_helpers import write_spc_csv
    from persona_sdk.split import PersonaSplitConfig
    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.corpora import spc_explicit_split, spc_persona_examples
    from persona_sdk.training.paa_model import save_paa, train_paa

    root = tmp_path_factory.mktemp("paa-save")
    parts, _ = spc_explicit_split(write_spc_csv(root / "spc.csv", conversations=60),
                                  PersonaSplitConfig(dev=0.3, test=0.1))
    cfg = PAAConfig(paa_layers=1, masks=False, train_replies=16, dev_replies=4, batch_size=8, lr=3e-2, evals=1,
                    bf16="off")  # masks off: the hard masks may close both sides after so few steps
    result = train_paa(spc_persona_examples(parts["train"]), spc_persona_examples(parts["dev"]),
                       backbone=load_backbone(tiny_backbone), config=cfg)
    return result, save_paa(result, root / "paa", {"command": "test", "summary": result.summary})


def test_saved_paa_loads_to_the_trained_models_logits(trained_paa):
    import json

    from persona_sdk.training.paa_model import PAA_INFO, PAA_WEIGHTS, load_paa

    result, folder = trained_paa
    info = json.loads((folder / PAA_INFO).read_text())
    assert info["method"] == "paa" and info["dtype"] == "float16" and info["bytes"] == (folder / PAA_WEIGHTS).stat().st_size
    assert info["backbone"] == result.backbone.fingerprint and info["config"]["paa_layers"] == 1
    assert info["parameters"] == result.summary["trainable_parameters"] and info["command"] == "test"
    loaded = load_paa(folder, result.backbone)
    for k, v in result.state.items():  # stored in float16, as PAL's adapter: exactly the rounded weights
        assert torch.equal(loaded.state_dict()[k], v.half().float())
    assert any(v.abs().max() > 0 for k, v in loaded.state_dict().items() if ".o." in k)  # trained, not the zero init
    _, t = _batch(result.backbone, result.model.config)
    with torch.no_grad():
        want = result.model(*_inputs_of(t))
        got = loaded(*_inputs_of(t))
        bare = result.backbone.model(input_ids=t["ids"]).logits
    assert (want - bare).abs().max() > 1e-3  # the trained fusions do change the logits
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3), float((got - want).abs().max())


def test_tampered_missing_foreign_or_old_paa_is_refused_or_read_as_saved(trained_paa, tmp_path):
    import json
    import shutil

    from conftest import build_tiny_backbone
    from persona_sdk.errors import AdapterError
    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.paa_model import PAA_INFO, PAA_WEIGHTS, load_paa

    result, folder = trained_paa
    with pytest.raises(AdapterError, match="no trained PAA"):
        load_paa(tmp_path, result.backbone)
    tampered = Path(shutil.copytree(folder, tmp_path / "tampered"))
    data = bytearray((tampered / PAA_WEIGHTS).read_bytes())
    data[-1] ^= 1
    (tampered / PAA_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="sha256"):
        load_paa(tampered, result.backbone)
    other = load_backbone(build_tiny_backbone(tmp_path / "other", seed=7))  # same shapes, other weights
    with pytest.raises(AdapterError, match="another backbone"):
        load_paa(folder, other)
    old = Path(shutil.copytree(folder, tmp_path / "old"))  # saved before decoder_context existed: the paper's layout
    info = json.loads((old / PAA_INFO).read_text())
    assert info["config"]["decoder_context"] is True and info["config"]["replies"] == "persona-labelled"
    (old / PAA_INFO).write_text(json.dumps({**info, "config": {k: v for k, v in info["config"].items()
                                                               if k not in ("decoder_context", "replies")}}))
    old_config = load_paa(old, result.backbone).config
    assert old_config.decoder_context is False and old_config.replies == "all"
    wide = Path(shutil.copytree(folder, tmp_path / "wide"))  # a record claiming another hidden size
    info = json.loads((wide / PAA_INFO).read_text())
    (wide / PAA_INFO).write_text(json.dumps({**info, "hidden": 64}))
    with pytest.raises(AdapterError, match="hidden size 64"):
        load_paa(wide, result.backbone)


# --- `persona explicit train paa` ------------------------------------------------------------
def _cli(args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "persona_sdk", "explicit", "train", "paa", *args],
                          capture_output=True, text=True, timeout=600)


def test_cli_trains_paa_and_writes_it(tiny_backbone, tmp_path):
    import json

    from explicit_helpers import write_spc_csv
    from persona_sdk.training.paa_model import PAA_INFO, PAA_WEIGHTS, load_paa

    csv_path = write_spc_csv(tmp_path / "spc.csv", conversations=80, n_personas=80)
    out = tmp_path / "paa"
    done = _cli(["--spc-csv", str(csv_path), "--backbone", str(tiny_backbone), "--out", str(out),
                 "--train-replies", "8", "--dev-replies", "2", "--batch-size", "4", "--paa-layers", "1",
                 "--no-masks", "--max-minutes", "2", "--threads", "1"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and "test part is not touched" in done.stderr
    info = json.loads((out / PAA_INFO).read_text())
    assert info["command"].startswith("persona explicit train paa") and info["data"]["split"]["by"] == "persona"
    assert info["config"]["paa_layers"] == 1 and info["config"]["masks"] is False, done.stderr[:1500]
    assert info["config"]["lr"] == PAAConfig().lr  # a shared option left out takes PAA's default, not PAL's
    assert info["summary"]["train_replies"] == 8 and (out / PAA_WEIGHTS).stat().st_size == info["bytes"]
    assert load_paa(out, tiny_backbone).config.paa_layers == 1


def test_cli_paa_with_a_pal_option_or_no_data_is_a_one_line_error(tmp_path):
    for extra, words in ((["--out", str(tmp_path / "o"), "--rank", "4"], "--rank"), ([], "not found")):
        done = _cli(["--spc-csv", str(tmp_path / "none.csv"), *extra])
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert done.stderr.strip().startswith("Error:") and len(done.stderr.strip().splitlines()) == 1
        assert words in done.stderr
