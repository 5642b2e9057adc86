"""A fused decoder-with-past graph for Llama-style backbones, written directly with ``onnx.helper``.

Why: the optimum export of a Llama decoder is ~1,500 small ops per token
(unfused attention with the GQA head expansion, mask building, rotary, KV
Concat). onnxruntime has fused CPU/CUDA kernels for all of it; this builder
emits them, so one decode step is ~400 ops::

    Gather(embed)                                             # (B, T, H)
    per layer l:
      SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization  (residual add fused)
      MatMul(x, Wqkv)                                         # (B, T, (heads + 2 kv_heads) · head_dim)
      GroupQueryAttention(qkv, past_k, past_v, seqlens_k, total_len, cos, sin; do_rotary)
                                                              # → (B, T, heads · head_dim), present_k/v
      MatMul(attn, Wo)
      SkipSimplifiedLayerNormalization                         # post-attention norm + residual
      MatMul(x, Wgate), MatMul(x, Wup); silu(gate) · up; MatMul(·, Wdown)
    SkipSimplifiedLayerNormalization(final norm) → Slice(last logits_to_keep positions) → MatMul(lm_head) → logits

Graph contract = the optimum one minus ``position_ids`` (GroupQueryAttention
derives positions from the attention mask: token i of the new input sits at
``past + i``, so a persona block of length P as past puts the first real token
at position P, exactly as before)::

    inputs : input_ids (B, T) int64, attention_mask (B, past+T) int64,
             past_key_values.{i}.key / .value (B, kv_heads, past, head_dim) float32,
             logits_to_keep (1,) int64: 0 = logits for every position, k = the last k only
    outputs: logits (B, T', vocab) float32 (T' = T, or logits_to_keep when > 0),
             present.{i}.key / .value (B, kv_heads, past+T, head_dim)

``logits_to_keep`` = 1 makes a prompt's forward compute the lm_head (a fifth
of a small model's work per position) for its last position only.
Past and present may be one buffer: bound to the same preallocated
``(B, kv_heads, capacity, head_dim)`` array, GroupQueryAttention writes the new
positions in place (``past_present_share_buffer``; each row's length comes
from its mask row, so rows of different lengths share a batch).

Limits of the fused kernel (onnxruntime 1.31, CPU): with a non-empty past and
T > 1, B must be 1 (the runtime prefills one sequence and expands beams after);
the attention mask must be all ones on the left (no padding), which is all the
runtime ever sends.

Supported: ``LlamaForCausalLM``-style configs (RMSNorm, SiLU gated MLP, rotary
with half-split layout, no attention/MLP bias, rope scaling none/linear/llama3
folded into the cos/sin tables). Anything else falls back to optimum.
Quantised variants are derived from this fp32 graph by the same MatMul
quantisers as the optimum one (every projection is a plain MatMul with a
constant weight here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from persona_sdk.errors import ExportError
from persona_sdk.manifest import ATTENTION_MASK, INPUT_IDS, LOGITS, LOGITS_TO_KEEP, past_names, present_names

Progress = Callable[[str], None]
OPSET = 17
ARCHITECTURES = ("LlamaForCausalLM",)
ROPE_TYPES = (None, "default", "linear", "llama3")


def unsupported_reason(config: dict) -> str | None:
    """Why ``config`` cannot take the fused graph (None when it can)."""
    archs = config.get("architectures") or []
    if not archs or archs[0] not in ARCHITECTURES:
        return f"architecture {archs[:1]} is not one of {ARCHITECTURES}"
    if config.get("attention_bias") or config.get("mlp_bias"):
        return "attention/MLP biases are not supported"
    if config.get("hidden_act", "silu") != "silu":
        return f"hidden_act {config.get('hidden_act')!r} is not silu"
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if rope_type not in ROPE_TYPES:
        return f"rope scaling {rope_type!r} is not one of {ROPE_TYPES}"
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    if head_dim % 16:
        return f"head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention's CPU kernel)"
    return None


def _rotary_tables(model: Any, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin caches ``(positions, head_dim/2)`` from the model's own rotary module.

    Taking ``inv_freq`` and ``attention_scaling`` from transformers keeps every
    static rope variant (linear, llama3) exactly as the reference computes it.
    """
    rotary = model.model.rotary_emb
    inv_freq = rotary.inv_freq.detach().double().cpu().numpy()  # (head_dim/2,)
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    freqs = np.outer(np.arange(positions, dtype=np.float64), inv_freq)  # (positions, head_dim/2)
    return (np.cos(freqs) * scaling).astype(np.float32), (np.sin(freqs) * scaling).astype(np.float32)


def build(backbone_dir: Path, out_path: Path, say: Progress | None = None) -> None:
    """Write the fused fp32 graph of ``backbone_dir`` to ``out_path`` (external data only past 1.8 GB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from persona_sdk.backbone import BackboneSpec, read_config

    from . import reference

    say = say or (lambda msg: None)
    config = read_config(backbone_dir)
    reason = unsupported_reason(config)
    if reason:
        raise ExportError(f"the fused graph does not support {backbone_dir}: {reason}")
    spec = BackboneSpec.from_config(config)
    eps = float(config.get("rms_norm_eps", 1e-6))
    say("Building the fused ONNX graph (GroupQueryAttention, fused RMSNorm)...")
    model = reference.load_model(backbone_dir)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    cos, sin = _rotary_tables(model, spec.max_positions)
    del model

    inits: list = []
    nodes: list = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))

    def weight(key: str) -> np.ndarray:
        if key not in state:
            raise ExportError(f"{backbone_dir} has no tensor {key} (not a Llama-style checkpoint)")
        return state[key]

    L, H, KV, D = spec.layers, spec.heads, spec.kv_heads, spec.head_dim
    # attention bookkeeping shared by every layer
    one = init("const_one_i64", np.array([1], dtype=np.int64))
    node("ReduceSum", [ATTENTION_MASK, one], ["mask_len"], "mask/ReduceSum", keepdims=0)  # (B,)
    node("Sub", ["mask_len", one], ["seqlens_k_i64"], "mask/Sub")
    node("Cast", ["seqlens_k_i64"], ["seqlens_k"], "mask/Cast", to=TensorProto.INT32)  # (B,) past+T-1
    node("Shape", [ATTENTION_MASK], ["mask_shape"], "mask/Shape")
    node("Gather", ["mask_shape", init("const_axis1", np.array(1, dtype=np.int64))], ["total_len_i64"],
         "mask/Gather", axis=0)
    node("Cast", ["total_len_i64"], ["total_len"], "mask/CastTotal", to=TensorProto.INT32)  # scalar past+T
    init("cos_cache", cos)  # (max_positions, head_dim/2)
    init("sin_cache", sin)

    init("embed_tokens.weight", weight("model.embed_tokens.weight"))  # (V, H)
    node("Gather", ["embed_tokens.weight", INPUT_IDS], ["embeds"], "embed/Gather", axis=0)  # (B, T, hidden)

    past, present = past_names(L), present_names(L)  # [l0.key, l0.value, l1.key, ...]
    residual, pending = "embeds", None  # pending: a block output not yet added to the residual
    for layer in range(L):
        p = f"model.layers.{layer}."
        n_in = init(f"layers.{layer}.input_norm", weight(p + "input_layernorm.weight"))
        if pending is None:
            node("SimplifiedLayerNormalization", [residual, n_in], [f"l{layer}/x"], f"l{layer}/input_norm",
                 axis=-1, epsilon=eps, stash_type=1)
        else:
            node("SkipSimplifiedLayerNormalization", [pending, residual, n_in],
                 [f"l{layer}/x", "", "", f"l{layer}/res_in"], f"l{layer}/input_norm", domain="com.microsoft",
                 epsilon=eps)
            residual = f"l{layer}/res_in"
        wqkv = np.concatenate([weight(p + "self_attn.q_proj.weight"), weight(p + "self_attn.k_proj.weight"),
                               weight(p + "self_attn.v_proj.weight")], axis=0).T  # (hidden, (H + 2KV)·D)
        node("MatMul", [f"l{layer}/x", init(f"layers.{layer}.qkv_proj.weight", wqkv)], [f"l{layer}/qkv"],
             f"l{layer}/qkv_proj/MatMul")
        node("GroupQueryAttention",
             [f"l{layer}/qkv", "", "", past[2 * layer], past[2 * layer + 1],
              "seqlens_k", "total_len", "cos_cache", "sin_cache"],
             [f"l{layer}/attn", present[2 * layer], present[2 * layer + 1]], f"l{layer}/attn",
             domain="com.microsoft", num_heads=H, kv_num_heads=KV, scale=float(D) ** -0.5, do_rotary=1,
             rotary_interleaved=0, local_window_size=-1)
        wo = weight(p + "self_attn.o_proj.weight").T  # (H·D, hidden)
        node("MatMul", [f"l{layer}/attn", init(f"layers.{layer}.o_proj.weight", wo)], [f"l{layer}/o"],
             f"l{layer}/o_proj/MatMul")
        n_post = init(f"layers.{layer}.post_norm", weight(p + "post_attention_layernorm.weight"))
        node("SkipSimplifiedLayerNormalization", [f"l{layer}/o", residual, n_post],
             [f"l{layer}/h", "", "", f"l{layer}/res_mid"], f"l{layer}/post_norm", domain="com.microsoft",
             epsilon=eps)
        residual = f"l{layer}/res_mid"
        for proj in ("gate", "up"):
            w = weight(p + f"mlp.{proj}_proj.weight").T  # (hidden, intermediate)
            node("MatMul", [f"l{layer}/h", init(f"layers.{layer}.{proj}_proj.weight", w)], [f"l{layer}/{proj}"],
                 f"l{layer}/{proj}_proj/MatMul")
        node("Sigmoid", [f"l{layer}/gate"], [f"l{layer}/gate_sig"], f"l{layer}/act/Sigmoid")
        node("Mul", [f"l{layer}/gate", f"l{layer}/gate_sig"], [f"l{layer}/silu"], f"l{layer}/act/Mul")
        node("Mul", [f"l{layer}/silu", f"l{layer}/up"], [f"l{layer}/act"], f"l{layer}/act/MulUp")
        wd = weight(p + "mlp.down_proj.weight").T  # (intermediate, hidden)
        node("MatMul", [f"l{layer}/act", init(f"layers.{layer}.down_proj.weight", wd)], [f"l{layer}/down"],
             f"l{layer}/down_proj/MatMul")
        pending = f"l{layer}/down"
    n_final = init("final_norm", weight("model.norm.weight"))
    node("SkipSimplifiedLayerNormalization", [pending, residual, n_final], ["final"], "final_norm",
         domain="com.microsoft", epsilon=eps)
    lm_head = state.get("lm_head.weight", state["model.embed_tokens.weight"])  # tied when absent
    node("Neg", [LOGITS_TO_KEEP], ["keep_start"], "logits_to_keep/Neg")  # 0 -> from 0; k -> from -k
    node("Slice", ["final", "keep_start", init("const_int64_max", np.array([2**63 - 1], dtype=np.int64)),
                   init("const_axes_1", np.array([1], dtype=np.int64))], ["final_kept"], "logits_to_keep/Slice")
    node("MatMul", ["final_kept", init("lm_head.weight", lm_head.T)], [LOGITS], "lm_head/MatMul")  # (B, T', V)

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info(INPUT_IDS, i64, ["batch", "sequence"]),
              helper.make_tensor_value_info(ATTENTION_MASK, i64, ["batch", "total_sequence"])]
    outputs = [helper.make_tensor_value_info(LOGITS, f32, ["batch", "kept_sequence", spec.vocab_size])]
    inputs += [helper.make_tensor_value_info(name, f32, ["batch", KV, "past_sequence", D]) for name in past]
    inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, i64, [1]))
    outputs += [helper.make_tensor_value_info(name, f32, ["batch", KV, "total_sequence", D]) for name in present]
    graph = helper.make_graph(nodes, "persona-fused-decoder", inputs, outputs, initializer=inits)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                           helper.make_opsetid("com.microsoft", 1)],
                                    producer_name="persona_sdk.exporters.fused")
    model_proto.ir_version = 8
    out_path = Path(out_path)
    big = sum(t.ByteSize() for t in inits) > 1_800_000_000  # protobuf's 2 GiB limit
    onnx.save_model(model_proto, str(out_path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=out_path.name + ".data")
