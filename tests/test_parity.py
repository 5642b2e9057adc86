"""Parity: ONNX Runtime with a persona KV block injected == torch + PEFT with the same persona.

Tiny GQA Llama (kv_heads < heads) and the real default backbone. The ORT side
feeds the block as the initial past (P leading mask ones, positions from P);
the torch side is PEFT prefix-tuning with the block as its prefix-encoder
output, or PEFT prompt-tuning whose soft prompt was compiled into the block.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona_sdk.exporters import ensure_exported, reference
from persona_sdk.exporters.validation import OrtDecoder, prompt_ids_for, random_block
from persona_sdk.manifest import read_manifest
from persona_sdk.training.backbone import kv_of_embeddings, load_backbone

STEPS = 24


@pytest.fixture(scope="module")
def sharp_backbone(tmp_path_factory):
    """The tiny GQA Llama with larger random weights, so greedy decoding is not one repeated token."""
    from conftest import build_tiny_backbone

    path = build_tiny_backbone(tmp_path_factory.mktemp("sharp") / "tiny-llama", seed=5)
    model = reference.load_model(path)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.35)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(sharp_backbone, tmp_path_factory):
    return ensure_exported(sharp_backbone, "fp32", cache_root=tmp_path_factory.mktemp("parity") / "cache")


def _no_eos(model):
    """generate() runs exactly max_new_tokens steps (the ORT loop has no stop handling)."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _generate(peft_model, ids, steps):
    with torch.no_grad():
        out = peft_model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=steps, do_sample=False)
    return out[0, -steps:].tolist()


def test_prefix_tuning_parity_tiny_gqa(sharp_backbone, tiny_onnx):
    torch.manual_seed(0)
    dec = OrtDecoder(tiny_onnx, threads=1)
    spec = dec.manifest
    assert spec["kv_heads"] < 4  # GQA: 2 KV heads for 4 query heads
    kv = random_block(spec, length=6, seed=7)  # (layers, 2, kv_heads, P, head_dim)
    ids = prompt_ids_for(tiny_onnx, "hey, back from the trip?")
    peft_model = reference.peft_prefix_model(_no_eos(reference.load_model(sharp_backbone)), kv)
    # the block really is what PEFT injects
    pkv = peft_model.get_prompt(batch_size=1)
    assert np.allclose(pkv.layers[1].keys[0].detach().numpy(), kv[1, 0]) and np.allclose(pkv.layers[0].values[0].detach().numpy(), kv[0, 1])

    with torch.no_grad():
        peft_logits = peft_model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0].numpy()
    ort_logits, _ = dec.step(ids, dec.empty_past(kv))
    np.testing.assert_allclose(ort_logits, peft_logits, atol=1e-4, rtol=1e-4)

    peft_tokens = _generate(peft_model, ids, STEPS)  # PEFT's own generate()
    assert len(set(peft_tokens)) > 3  # a real continuation, not one repeated token
    assert dec.greedy(kv, ids, STEPS) == peft_tokens
    no_prefix = OrtDecoder(tiny_onnx, threads=1).greedy(None, ids, STEPS)
    assert no_prefix != peft_tokens  # the prefix changes the continuation (the test can fail)


def test_cache_route_equals_peft_route(sharp_backbone, tiny_onnx):
    kv = random_block(read_manifest(tiny_onnx), length=5, seed=3)
    ids = prompt_ids_for(tiny_onnx)
    a_logits, a_tokens, a_steps = reference.greedy_reference(reference.load_model(sharp_backbone), kv, ids, STEPS)
    peft_model = reference.peft_prefix_model(reference.load_model(sharp_backbone), kv)
    b_logits, b_tokens, b_steps = reference.greedy_reference(peft_model, kv, ids, STEPS, peft=True)
    np.testing.assert_allclose(a_logits, b_logits, atol=1e-5)
    np.testing.assert_allclose(a_steps, b_steps, atol=1e-5)
    assert a_tokens == b_tokens


def test_prompt_tuning_soft_prompt_compiled_to_kv(sharp_backbone, tiny_onnx):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    length = 5
    model = _no_eos(reference.load_model(sharp_backbone))
    hidden = model.config.hidden_size
    torch.manual_seed(1)
    soft = torch.randn(length, hidden) * 0.5  # (P, hidden) soft prompt
    kv = kv_of_embeddings(load_backbone(sharp_backbone), soft)  # the library's compile, as method "prompt" uses
    spec = read_manifest(tiny_onnx)
    assert kv.shape == (spec["layers"], 2, spec["kv_heads"], length, spec["head_dim"])

    peft_model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=length))
    with torch.no_grad():
        peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight.copy_(soft)
    peft_model.eval()
    ids = prompt_ids_for(tiny_onnx, "what do you do on weekends?")
    with torch.no_grad():
        out = peft_model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    peft_logits = out.logits[0, length:].numpy()  # drop the virtual-token positions
    dec = OrtDecoder(tiny_onnx, threads=1)
    ort_logits, _ = dec.step(ids, dec.empty_past(kv))
    np.testing.assert_allclose(ort_logits, peft_logits, atol=1e-4, rtol=1e-4)
    assert dec.greedy(kv, ids, STEPS) == _generate(peft_model, ids, STEPS)


@pytest.mark.slow
def test_prefix_parity_on_the_default_backbone(default_backbone, default_onnx):
    torch.set_num_threads(2)
    manifest = read_manifest(default_onnx)
    assert (manifest["layers"], manifest["kv_heads"], manifest["head_dim"]) == (30, 3, 64)
    assert manifest["validation"]["greedy_match"] and manifest["validation"]["reference"] == "torch+peft"
    kv = random_block(manifest, length=16, seed=42, scale=0.5)
    ids = prompt_ids_for(default_onnx, "hi, what do you do on weekends?")
    peft_model = reference.peft_prefix_model(reference.load_model(default_backbone), kv)
    ref_logits, ref_tokens, ref_steps = reference.greedy_reference(peft_model, kv, ids, 20, peft=True)
    dec = OrtDecoder(default_onnx, threads=2)
    ort_prompt, ort_steps = dec.forced(kv, ids, ref_tokens)
    scale = np.abs(ref_logits).max()
    assert np.abs(ort_prompt - ref_logits).max() < 1e-4 * scale + 1e-4
    assert np.abs(ort_steps - ref_steps).max() < 1e-4 * scale + 1e-4
    assert dec.greedy(kv, ids, 20) == ref_tokens  # identical greedy continuation
