"""PAA (persona-adaptive attention) → two ONNX graphs, validated against the torch ``PAAModel``, cached.

The contract (file names, graph inputs/outputs, the record) is
:mod:`persona_sdk.explicit.paa_store`; the runtime that reads it is
:mod:`persona_sdk.explicit.paa`. Both graphs are derived from the backbone's
fused decoder graph (:mod:`.fused`: GroupQueryAttention, fused RMSNorm), so the
backbone part computes exactly what the backbone's own export computes:

- **encoder** (once per turn): the fused graph up to its final norm, twice
  (persona and context, the weights shared, no past), i.e. the backbone's last
  hidden states E_P (B, P, hidden) and E_C (B, U, hidden); then, for each fused
  block j, the fusion's key and value projections of both, split into heads::

      paa.{j}.persona.key = heads(E_P @ W_k^P)   # (B, heads, P, d)   (value, context alike)

  so a decode step never re-projects the persona or the context.
- **decoder** (per token, with its KV cache): the fused graph, and in each of the
  top ``paa_layers`` blocks, right after self-attention (where
  :func:`~persona_sdk.training.paa_model.PAAModel` hooks it)::

      h   = x + SelfAttn(LN1(x))                        # the block's own SkipSimplifiedLayerNorm gives
      y   = LN2(h)                                      #   y and h in one node
      o_P = (softmax(heads(y W_q^P) K_P^T / √d, persona_mask) V_P) W_o^P     # (B, T, hidden)
      o_C = (softmax(heads(y W_q^C) K_C^T / √d, context_mask) V_C) W_o^C
      w   = σ([y; o_P] W_g + b)                          # (B, T, 1)
      τ   = |U| / max(|U| + |P|, 1)                      # (B,) from the masks
      M_P = 1[w > τ], M_C = 1[1 − w > τ]   (paa_use_masks = 0: both 1)
      h'  = h + w·M_P·o_P + (1 − w)·M_C·o_C
      MLP reads LN2(h'), the residual stream continues from h'

A build writes into a temp folder, validates (below), writes
``PAA-export.json`` and only then renames the folder into the cache; a failed
check raises :class:`ExportError` and leaves nothing behind.

The decoder graph takes any token sequence: whether it reads the context before
the reply (``decoder_context``, the default) or the reply only (the paper's
layout) is the runtime's choice of prompt, recorded in ``PAA-export.json``.

Validation: on a text case and ``CASES - 1`` seeded random ones (persona,
context and decoder token ids in the trained layout), with the masks on and
off, the torch ``PAAModel``'s logits over the whole decoder sequence (one full
forward) against ORT's from one encoder run, a prefill of the decoder's prompt
and the first reply token(s) and ``STEPS`` cached one-token steps. Thresholds as the backbone's
(:data:`~.validation.THRESHOLDS`): fp32 max |Δlogit| ≤ 1e-4·s + 1e-4 (s = the
largest |reference logit|, at least 1) and the same argmax at every position;
int8 (both graphs' constant MatMuls and the decoder's embedding in 8-bit
blocks, the backbone int8's quantiser) max |Δlogit| ≤ 1.0·s and top-1
agreement ≥ 0.3: a sanity bar, not a quality claim.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from persona_sdk.errors import AdapterError, ExportError, MissingDependencyError
from persona_sdk.explicit import paa_store as S
from persona_sdk.manifest import ATTENTION_MASK, INPUT_IDS, LOGITS, LOGITS_TO_KEEP, past_names, present_names

Progress = Callable[[str], None]
OPSET = 17
CASES = 3
PREFILL = 4  # header + reply tokens in the first decoder run (after the context, when the decoder reads it)
STEPS = 6  # cached one-token steps after it
SEED = 4321
TEXT_CASE = (("I have a dog.", "I love pizza."), "hi, what do you do on weekends?", "i walk my dog and eat pizza")
COPIED = ("tokenizer.json", "config.json", "generation_config.json", "tokenizer_config.json")


def _need_deps():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise MissingDependencyError("building PAA's ONNX export needs the [export] extra (torch, transformers, "
                                     "onnx): pip install 'persona-sdk[export]'") from None


# --- graphs ------------------------------------------------------------------------------------
def fusion_weights(model: Any) -> list[dict[str, np.ndarray]]:
    """Each fusion's weights as MatMul right-hand sides (in, out), bottom up."""
    out = []
    for f in model.fusions:
        w = {f"{side}.{n}": getattr(f, side)[n].weight.detach().float().numpy().T.copy()
             for side in ("persona", "context") for n in ("q", "k", "v", "o")}  # (hidden, hidden) each
        w["gate.weight"] = f.gate.weight.detach().float().numpy().T.copy()  # (2·hidden, 1)
        w["gate.bias"] = f.gate.bias.detach().float().numpy().copy()  # (1,)
        out.append(w)
    return out


class _Graph:
    """Nodes and initializers being added to a graph."""

    def __init__(self, proto) -> None:
        self.proto = proto
        self.names = {i.name for i in proto.graph.initializer}

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self.names.add(name)
        return name


def _heads(g: _Graph, nodes: list, x: str, prefix: str, heads: int, d: int) -> str:
    """(B, S, heads·d) → (B, heads, S, d)."""
    from onnx import helper

    shape = g.init(f"{prefix}/heads_shape", np.array([0, 0, heads, d], dtype=np.int64)) \
        if f"{prefix}/heads_shape" not in g.names else f"{prefix}/heads_shape"
    nodes.append(helper.make_node("Reshape", [x, shape], [f"{prefix}/split"], name=f"{prefix}/split"))
    nodes.append(helper.make_node("Transpose", [f"{prefix}/split"], [f"{prefix}/bhsd"], name=f"{prefix}/bhsd",
                                  perm=[0, 2, 1, 3]))
    return f"{prefix}/bhsd"


def _base_graph(backbone_dir: Path, tmp: Path, say: Progress):
    """The backbone's fused fp32 decoder graph (loaded, weights inside)."""
    import onnx

    from . import fused

    reason = fused.unsupported_reason(json.loads((Path(backbone_dir) / "config.json").read_text()))
    if reason:
        raise ExportError(f"PAA's ONNX export builds on the fused backbone graph, which does not support "
                          f"{backbone_dir}: {reason}")
    fused.build(backbone_dir, tmp / "base.onnx", say)
    return onnx.load(str(tmp / "base.onnx"))


def build_encoder(base, weights: list[dict], heads: int, hidden: int):
    """The encoder graph (see the module doc) from the fused backbone graph ``base``."""
    import onnx
    from onnx import TensorProto, helper

    d = hidden // heads
    model = onnx.ModelProto()  # the base's settings and opsets, not yet its weights (copied below: those used)
    model.ir_version = base.ir_version
    model.producer_name = "persona_sdk.exporters.paa_export"
    model.opset_import.extend(base.opset_import)
    graph = model.graph
    body = []
    for n in base.graph.node:
        body.append(n)
        if n.name == "final_norm":
            break
    else:
        raise ExportError("the fused backbone graph has no final_norm node (unexpected graph layout)")
    inits = {i.name for i in base.graph.initializer}
    g = _Graph(model)
    nodes = []
    for side, ids, mask in (("persona", S.PERSONA_IDS, S.PERSONA_MASK), ("context", S.CONTEXT_IDS, S.CONTEXT_MASK)):
        def rename(t: str) -> str:
            if t == "" or t in inits:
                return t
            return {INPUT_IDS: ids, ATTENTION_MASK: mask}.get(t, f"{side}/{t}")

        for n in body:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = f"{side}/{n.name}"
            inputs = [rename(t) for t in n.input]
            outputs = [rename(t) for t in n.output]
            if n.op_type == "GroupQueryAttention":  # no past, no present: the encoder runs from scratch
                inputs[3] = inputs[4] = ""
                outputs[1:] = ["", ""]
            del copy.input[:]
            copy.input.extend(inputs)
            del copy.output[:]
            copy.output.extend(outputs)
            nodes.append(copy)
        final = f"{side}/final"  # (B, S, hidden) the backbone's last hidden states E
        for j, w in enumerate(weights):
            for kv in ("key", "value"):
                prefix = f"paa.{j}.{side}.{kv}"
                name = g.init(f"paa.{j}.{side}.{kv[0]}_proj.weight", w[f"{side}.{kv[0]}"])
                nodes.append(helper.make_node("MatMul", [final, name], [f"{prefix}/proj"], name=f"{prefix}/proj"))
                out = _heads(g, nodes, f"{prefix}/proj", prefix, heads, d)
                nodes.append(helper.make_node("Identity", [out], [prefix], name=f"{prefix}/out"))
    used = {t for n in nodes for t in n.input}
    graph.initializer.extend(i for i in base.graph.initializer if i.name in used)
    graph.node.extend(nodes)
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph.input.extend([helper.make_tensor_value_info(S.PERSONA_IDS, i64, ["batch", "persona"]),
                        helper.make_tensor_value_info(S.PERSONA_MASK, i64, ["batch", "persona"]),
                        helper.make_tensor_value_info(S.CONTEXT_IDS, i64, ["batch", "context"]),
                        helper.make_tensor_value_info(S.CONTEXT_MASK, i64, ["batch", "context"])])
    for name in S.cross_names(len(weights)):
        length = "persona" if ".persona." in name else "context"
        graph.output.append(helper.make_tensor_value_info(name, f32, ["batch", heads, length, d]))
    graph.name = "persona-paa-encoder"
    return model


def build_decoder(base, weights: list[dict], fused_blocks: list[int], heads: int, hidden: int):
    """The decoder graph (see the module doc): ``base`` itself (changed in place, no copy of its weights) with a
    fusion after self-attention in ``fused_blocks``."""
    from onnx import TensorProto, helper

    d = hidden // heads
    model = base
    graph = model.graph
    g = _Graph(model)
    # per-turn bookkeeping shared by every fusion: τ (B, 1, 1), the key masks (B, 1, 1, S), the switch
    pre = []

    def node(op, inputs, outputs, name, **attrs):
        pre.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    one = g.init("paa/one", np.array(1.0, dtype=np.float32))
    node("Cast", [S.PERSONA_MASK], ["paa/p_mask"], "paa/p_mask", to=TensorProto.FLOAT)  # (B, P)
    node("Cast", [S.CONTEXT_MASK], ["paa/c_mask"], "paa/c_mask", to=TensorProto.FLOAT)  # (B, U)
    axis1 = g.init("paa/axis1", np.array([1], dtype=np.int64))
    node("ReduceSum", ["paa/p_mask", axis1], ["paa/p_len"], "paa/p_len", keepdims=0)  # (B,)
    node("ReduceSum", ["paa/c_mask", axis1], ["paa/u_len"], "paa/u_len", keepdims=0)
    node("Add", ["paa/u_len", "paa/p_len"], ["paa/all_len"], "paa/all_len")
    node("Max", ["paa/all_len", one], ["paa/denom"], "paa/denom")  # clamp_min(1), as paa_tau
    node("Div", ["paa/u_len", "paa/denom"], ["paa/tau1"], "paa/tau1")
    node("Reshape", ["paa/tau1", g.init("paa/tau_shape", np.array([-1, 1, 1], dtype=np.int64))], ["paa/tau"],
         "paa/tau")  # (B, 1, 1)
    axes12 = g.init("paa/axes12", np.array([1, 2], dtype=np.int64))
    zero = g.init("paa/zero", np.array(0.0, dtype=np.float32))
    for side, m in (("persona", "paa/p_mask"), ("context", "paa/c_mask")):
        node("Unsqueeze", [m, axes12], [f"paa/{side}_mask4"], f"paa/{side}_mask4")  # (B, 1, 1, S)
        node("Greater", [f"paa/{side}_mask4", zero], [f"paa/{side}_keep"], f"paa/{side}_keep")
    node("Sub", [one, S.USE_MASKS], ["paa/masks_off"], "paa/masks_off")  # (1,) 1 - switch
    neg = g.init("paa/neg", np.array(np.finfo(np.float32).min, dtype=np.float32))
    scale = g.init("paa/sqrt_d", np.array(d ** 0.5, dtype=np.float32))
    heads_shape = g.init("paa/heads_shape", np.array([0, 0, heads, d], dtype=np.int64))
    merge_shape = g.init("paa/merge_shape", np.array([0, 0, hidden], dtype=np.int64))

    nodes = list(graph.node)
    out_nodes = pre + []
    by_block = {b: j for j, b in enumerate(fused_blocks)}
    for n in nodes:
        out_nodes.append(n)
        block = next((b for b in by_block if n.name == f"l{b}/post_norm"), None)
        if block is None:
            continue
        j = by_block[block]
        if n.op_type != "SkipSimplifiedLayerNormalization" or len(n.output) < 4 or not n.output[3]:
            raise ExportError(f"block {block}'s post-attention norm is not the expected fused node")
        y_name, h_name = f"l{block}/paa_y", f"l{block}/paa_h"
        h_out, res_out = n.output[0], n.output[3]
        n.output[0], n.output[3] = y_name, h_name
        w = weights[j]
        fz = []

        def add(op, inputs, outputs, name, **attrs):
            fz.append(helper.make_node(op, inputs, outputs, name=f"l{block}/paa/{name}", **attrs))

        o = {}
        for side in ("persona", "context"):
            p = f"l{block}/paa/{side}"
            add("MatMul", [y_name, g.init(f"paa.{j}.{side}.q_proj.weight", w[f"{side}.q"])], [f"{p}/q"], f"{side}/q")
            add("Reshape", [f"{p}/q", heads_shape], [f"{p}/q_split"], f"{side}/q_split")
            add("Transpose", [f"{p}/q_split"], [f"{p}/q4"], f"{side}/q4", perm=[0, 2, 1, 3])  # (B, heads, T, d)
            add("Transpose", [f"paa.{j}.{side}.key"], [f"{p}/kT"], f"{side}/kT", perm=[0, 1, 3, 2])  # (B, heads, d, S)
            add("MatMul", [f"{p}/q4", f"{p}/kT"], [f"{p}/s_raw"], f"{side}/scores")  # (B, heads, T, S)
            add("Div", [f"{p}/s_raw", scale], [f"{p}/s"], f"{side}/scale")
            add("Where", [f"paa/{side}_keep", f"{p}/s", neg], [f"{p}/s_masked"], f"{side}/key_mask")
            add("Softmax", [f"{p}/s_masked"], [f"{p}/a"], f"{side}/softmax", axis=-1)
            add("MatMul", [f"{p}/a", f"paa.{j}.{side}.value"], [f"{p}/ctx4"], f"{side}/attend")  # (B, heads, T, d)
            add("Transpose", [f"{p}/ctx4"], [f"{p}/ctx_t"], f"{side}/ctx_t", perm=[0, 2, 1, 3])
            add("Reshape", [f"{p}/ctx_t", merge_shape], [f"{p}/ctx"], f"{side}/ctx")  # (B, T, hidden)
            add("MatMul", [f"{p}/ctx", g.init(f"paa.{j}.{side}.o_proj.weight", w[f"{side}.o"])], [f"{p}/o"],
                f"{side}/o")
            o[side] = f"{p}/o"
        p = f"l{block}/paa"
        add("Concat", [y_name, o["persona"]], [f"{p}/cat"], "cat", axis=-1)  # (B, T, 2·hidden)
        add("MatMul", [f"{p}/cat", g.init(f"paa.{j}.gate.weight", w["gate.weight"])], [f"{p}/g_mm"], "gate")
        add("Add", [f"{p}/g_mm", g.init(f"paa.{j}.gate.bias", w["gate.bias"])], [f"{p}/g"], "gate_bias")
        add("Sigmoid", [f"{p}/g"], [f"{p}/w"], "w")  # (B, T, 1)
        add("Sub", [one, f"{p}/w"], [f"{p}/1mw"], "one_minus_w")
        for side, gate in (("persona", f"{p}/w"), ("context", f"{p}/1mw")):
            add("Greater", [gate, "paa/tau"], [f"{p}/{side}_gt"], f"{side}_gt")
            add("Cast", [f"{p}/{side}_gt"], [f"{p}/{side}_m"], f"{side}_m", to=TensorProto.FLOAT)
            add("Mul", [f"{p}/{side}_m", S.USE_MASKS], [f"{p}/{side}_ms"], f"{side}_ms")
            add("Add", [f"{p}/{side}_ms", "paa/masks_off"], [f"{p}/{side}_mask"], f"{side}_mask")  # M or 1
            add("Mul", [gate, f"{p}/{side}_mask"], [f"{p}/{side}_wm"], f"{side}_wm")
            add("Mul", [f"{p}/{side}_wm", o[side]], [f"{p}/{side}_term"], f"{side}_term")
        add("Add", [f"{p}/persona_term", f"{p}/context_term"], [f"{p}/fused"], "fused")  # (B, T, hidden)
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-6)
        fz.append(helper.make_node("SkipSimplifiedLayerNormalization", [f"{p}/fused", h_name, n.input[2]],
                                   [h_out, "", "", res_out], name=f"l{block}/paa/post_norm", domain="com.microsoft",
                                   epsilon=eps))
        out_nodes.extend(fz)
        by_block.pop(block)
    if by_block:
        raise ExportError(f"the fused backbone graph has no post-attention norm for blocks {sorted(by_block)}")
    del graph.node[:]
    graph.node.extend(out_nodes)
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    for name in S.cross_names(len(weights)):
        length = "persona" if ".persona." in name else "context"
        graph.input.append(helper.make_tensor_value_info(name, f32, ["batch", heads, length, d]))
    graph.input.extend([helper.make_tensor_value_info(S.PERSONA_MASK, i64, ["batch", "persona"]),
                        helper.make_tensor_value_info(S.CONTEXT_MASK, i64, ["batch", "context"]),
                        helper.make_tensor_value_info(S.USE_MASKS, f32, [1])])
    graph.name = "persona-paa-decoder"
    return model


def _dedupe(model):
    """Keep one of same-named initializers: the encoder's persona and context halves share each weight, and the
    quantiser packs a shared weight once per MatMul that reads it (under the same name, the same codes)."""
    seen, keep = set(), []
    for init in model.graph.initializer:
        if init.name not in seen:
            seen.add(init.name)
            keep.append(init)
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return model


def _save(model, path: Path) -> None:
    """Save with every weight in ``<name>.data`` beside the graph (onnxruntime memory-maps it)."""
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


def build(model: Any, backbone_dir: Path, out_dir: Path, variant: str = "fp32", say: Progress | None = None) -> None:
    """Write the encoder and decoder graphs of the PAA ``model`` (a loaded ``PAAModel``) into ``out_dir``."""
    say = say or (lambda msg: None)
    if variant not in S.VARIANTS:
        raise ExportError(f"PAA variant must be one of {S.VARIANTS}, got {variant!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = fusion_weights(model)
    heads, hidden = int(model.fusions[0].heads), int(model.bb.hidden)
    with tempfile.TemporaryDirectory(prefix=".paa-base-", dir=out_dir) as tmp:
        base = _base_graph(backbone_dir, Path(tmp), say)
        say(f"PAA: writing the encoder (persona and context, once per turn) and the decoder (fusions in blocks "
            f"{', '.join(map(str, model.fused))})...")
        # one graph in memory beside the base at a time: the encoder first, then the base becomes the decoder
        dest = out_dir if variant == "fp32" else Path(tmp)
        _save(build_encoder(base, weights, heads, hidden), dest / S.ENCODER)
        _save(build_decoder(base, weights, list(model.fused), heads, hidden), dest / S.DECODER)
        del base
        if variant == "fp32":
            return
        import onnx

        from .onnx_export import ACCURACY_LEVEL, INT8_BLOCK, _quantize_weights

        say("PAA: quantising both graphs' weights to 8 bits...")
        for name in (S.ENCODER, S.DECODER):
            _quantize_weights(dest / name, dest / f"q-{name}", 8, INT8_BLOCK, ACCURACY_LEVEL)
            _save(_dedupe(onnx.load(str(dest / f"q-{name}"))), out_dir / name)


# --- validation ---------------------------------------------------------------------------------
class OrtPAA:
    """A minimal numpy loop over the two graphs (validation only; the product runtime is explicit/paa.py)."""

    def __init__(self, export_dir: Path, layers: int, kv_heads: int, head_dim: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.encoder = ort.InferenceSession(str(Path(export_dir) / S.ENCODER), opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(Path(export_dir) / S.DECODER), opts, providers=["CPUExecutionProvider"])
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim

    def encode(self, persona: list[int], context: list[int]) -> dict[str, np.ndarray]:
        p = np.asarray([persona], dtype=np.int64)
        c = np.asarray([context], dtype=np.int64)
        feed = {S.PERSONA_IDS: p, S.PERSONA_MASK: np.ones_like(p), S.CONTEXT_IDS: c, S.CONTEXT_MASK: np.ones_like(c)}
        names = [o.name for o in self.encoder.get_outputs()]
        cross = dict(zip(names, self.encoder.run(None, feed)))
        cross[S.PERSONA_MASK], cross[S.CONTEXT_MASK] = feed[S.PERSONA_MASK], feed[S.CONTEXT_MASK]
        return cross

    def logits(self, cross: dict, ids: list[int], masks: bool, prefill: int) -> np.ndarray:
        """Logits (T, V) of ``ids``: the first ``prefill`` in one run, then one cached step per token."""
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        past = [empty] * (2 * self.layers)
        out, done = [], 0
        while done < len(ids):
            chunk = ids[done:done + (prefill if done == 0 else 1)]
            feed = {INPUT_IDS: np.asarray([chunk], dtype=np.int64),
                    ATTENTION_MASK: np.ones((1, done + len(chunk)), dtype=np.int64),
                    LOGITS_TO_KEEP: np.array([0], dtype=np.int64),
                    S.USE_MASKS: np.array([1.0 if masks else 0.0], dtype=np.float32), **cross}
            feed.update(zip(past_names(self.layers), past))
            res = self.decoder.run([LOGITS, *present_names(self.layers)], feed)
            out.append(res[0][0])
            past = res[1:]
            done += len(chunk)
        return np.concatenate(out).astype(np.float32)  # (T, V)


def validation_cases(fmt, vocab: int, config, seed: int = SEED, cases: int = CASES) -> list[tuple]:
    """(persona ids, context ids, decoder ids, prefill) of a text case and seeded random ones: the decoder ids
    are the decoder's prompt (:func:`~persona_sdk.explicit.formats.paa_decoder_prompt`: the context, or the
    reply header in the paper's layout) and reply tokens; ``prefill`` of them go in the first decoder run (the
    prompt and ``PREFILL`` − header tokens of the reply), one per cached step after it."""
    from persona_sdk.conversation import USER, Turn
    from persona_sdk.explicit.formats import paa_context_ids, paa_decoder_prompt, paa_persona_ids

    persona, message, reply = TEXT_CASE
    n_header = len(fmt.header_ids)
    n_reply = PREFILL + STEPS - n_header

    def case(p: list, c: list, reply_ids: list) -> tuple:
        prompt = paa_decoder_prompt(fmt, c, config.decoder_context)
        return p, c, prompt + reply_ids, len(prompt) + PREFILL - n_header

    c = paa_context_ids(fmt, [Turn(USER, message)], config.context_budget)
    out = [case(paa_persona_ids(fmt, persona, config.persona_budget), c, fmt.reply_ids(reply, n_reply))]
    rng = np.random.default_rng(seed)
    for _ in range(cases - 1):
        p = rng.integers(0, vocab, size=int(rng.integers(2, 24))).tolist()
        c = rng.integers(0, vocab, size=int(rng.integers(4, 64))).tolist() + list(fmt.header_ids)
        out.append(case(p, c, rng.integers(0, vocab, size=n_reply).tolist()))
    return out


def validate(export_dir: Path, model: Any, variant: str = "fp32", cases: int = CASES) -> dict:
    """Compare the export with the torch ``model`` (see the module doc); the record's ``validation``.
    Raises :class:`ExportError` naming the numbers when it fails its threshold."""
    import torch

    from persona_sdk.training.paa_model import set_masks

    from .validation import THRESHOLDS

    bb = model.bb
    ort_paa = OrtPAA(export_dir, bb.layers, bb.kv_heads, bb.head_dim)
    vocab = int(bb.model.config.vocab_size)
    worst, scale, agree, total, greedy = 0.0, 1.0, 0, 0, True
    before = [f.use_masks for f in model.fusions]
    try:
        for masks in (True, False):
            set_masks(model, masks)
            for p, c, r, prefill in validation_cases(bb.fmt, vocab, model.config, cases=cases):
                with torch.no_grad():
                    ref = model(*(torch.tensor([x]) for x in (p, [1] * len(p), c, [1] * len(c), r)))[0].numpy()
                got = ort_paa.logits(ort_paa.encode(p, c), r, masks, prefill)
                if not np.isfinite(got).all():
                    raise ExportError(f"the {variant} PAA export produced non-finite logits")
                worst = max(worst, float(np.abs(ref - got).max()))
                scale = max(scale, float(np.abs(ref).max()))
                same = ref.argmax(-1) == got.argmax(-1)
                agree += int(same.sum())
                total += len(same)
                greedy = greedy and bool(same.all())
    finally:
        for f, on in zip(model.fusions, before):
            f.use_masks = on
    th = THRESHOLDS[variant]
    limit = th["rel_logit_diff"] * scale + th["abs_logit_diff"]
    agreement = agree / max(total, 1)
    passed = worst <= limit and agreement >= th["top1_agreement"] and (greedy or variant != "fp32")
    record = {"cases": cases, "prefill": "the decoder prompt + " + str(PREFILL - len(bb.fmt.header_ids))
              + " reply token(s)", "steps": STEPS, "seed": SEED, "masks": [True, False],
              "max_abs_logit_diff": worst, "logit_scale": scale, "max_allowed_diff": limit,
              "top1_agreement": agreement, "argmax_match": greedy, "passed": passed, "reference": "torch PAAModel"}
    if not passed:
        raise ExportError(f"the {variant} PAA export does not match the torch PAA model: max |Δlogit| {worst:.3g} "
                          f"(allowed {limit:.3g}), top-1 agreement {agreement:.2f} "
                          f"(need {th['top1_agreement']}), argmax identical: {greedy}")
    return record


# --- the cached, validated export ---------------------------------------------------------------
def ensure_paa_exported(paa_dir: Path, backbone_dir: Path, variant: str = S.DEFAULT_VARIANT,
                        progress: Progress | None = None, cache_root: Path | None = None) -> Path:
    """The validated export of the PAA in ``paa_dir`` on ``backbone_dir`` (built first when it is not current):
    built in a temp folder, checked against torch, recorded, then renamed into place."""
    from persona_sdk.backbone import fingerprint, stop_token_ids

    say = progress or (lambda msg: None)
    paa_dir, backbone_dir = Path(paa_dir), Path(backbone_dir)
    info = S.paa_info(paa_dir)
    fp = fingerprint(backbone_dir)
    if info["backbone"] != fp:
        raise AdapterError(f"the PAA in {paa_dir} was trained for another backbone "
                           f"({info['backbone'][:16]}…, this one is {fp[:16]}…)")
    target = S.export_dir_for(info["sha256"], variant, cache_root)
    if S.export_status(target, paa_dir, info, fp)[0] == S.CURRENT:
        return target
    _need_deps()
    from persona_sdk.training.paa_model import load_paa

    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-paa-{variant}-", dir=target.parent))
    try:
        out = tmp / variant
        say(f"PAA: loading the trained fusions from {paa_dir} onto the backbone...")
        model = load_paa(paa_dir, backbone_dir)
        try:
            build(model, backbone_dir, out, variant, say)
        except (ExportError, MissingDependencyError, AdapterError):
            raise
        except Exception as exc:  # onnx / onnxruntime raise many kinds: one clear error
            raise ExportError(f"building PAA's ONNX graphs failed ({type(exc).__name__}: {str(exc)[:200]})") from None
        say(f"PAA: validating the {variant} export against the torch PAA model (prefill and cached steps, "
            f"masks on and off)...")
        validation = validate(out, model, variant)
        for name in COPIED:
            if (backbone_dir / name).is_file():
                shutil.copy2(backbone_dir / name, out / name)
        bb, config = model.bb, model.config
        from persona_sdk.fileio import atomic_write

        from .onnx_export import versions

        record = {
            "format": S.FORMAT, "revision": S.REVISION, "variant": variant,
            "paa_sha256": info["sha256"], "paa_info_sha256": S.info_sha256(paa_dir), "backbone": fp,
            "layers": bb.layers, "kv_heads": bb.kv_heads, "head_dim": bb.head_dim, "hidden": bb.hidden,
            "heads": int(model.fusions[0].heads), "paa_layers": config.paa_layers, "fused_blocks": list(model.fused),
            "vocab_size": int(bb.model.config.vocab_size), "masks": bool(config.masks),
            "decoder_context": bool(config.decoder_context),
            "persona_budget": config.persona_budget, "context_budget": config.context_budget,
            "reply_budget": config.reply_budget, "stop_token_ids": stop_token_ids(backbone_dir),
            "encoder_outputs": S.cross_names(config.paa_layers), "opset": OPSET, "files": S.model_files(out),
            "validation": validation, "versions": versions(), "seconds": round(time.monotonic() - started, 1),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write(out / S.RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), private=False)
        del model
        if target.exists():
            if S.export_status(target, paa_dir, info, fp)[0] == S.CURRENT:
                return target  # another process finished first
            shutil.rmtree(target)
        out.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"PAA {variant} ONNX export ready at {target} (built and validated in "
        f"{time.monotonic() - started:.0f} s; max |Δlogit| vs torch {validation['max_abs_logit_diff']:.2g})")
    return target
