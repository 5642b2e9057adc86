"""Export a Hugging Face causal LM to ONNX as a decoder with past, plus quantised variants.

Graph contract, identical across variants (the runtime treats them the same)::

    inputs : input_ids (B, T) int64, attention_mask (B, past+T) int64,
             [position_ids (B, T) int64: optimum graph only],
             past_key_values.{i}.key / .value (B, kv_heads, past, head_dim) kv_dtype
    outputs: logits (B, T, vocab) logits_dtype, present.{i}.key / .value (B, kv_heads, past+T, head_dim)

Two graphs (``graph`` in the manifest):
- ``fused`` (Llama-style backbones, the default for them): written by
  :mod:`.fused` with onnxruntime's fused kernels (GroupQueryAttention with
  rotary, SkipSimplifiedLayerNormalization), which decode faster than the
  optimum graph (BENCHMARKS.md).
- ``optimum``: optimum-onnx ``main_export``, task ``text-generation-with-past``,
  for every other architecture (and on request, for comparison).

A persona block ``(layers, 2, kv_heads, P, head_dim)`` goes in as the first
past (mask with P leading ones, positions from P); past may be longer than the
new input, which is how every decode step after the first runs anyway.

Variants:
- ``fp32``: the reference every other variant is derived from.
- ``int8``: 8-bit block-32 ``MatMulNBits`` on every MatMul with a constant
  weight; the lm_head and the token embedding (``GatherBlockQuantized``) in
  symmetric 8-bit, GGUF Q8_0's form (see ``_quantize_weights``).
- ``int4``: 4-bit block-32 ``MatMulNBits`` with exact per-block offsets (the
  GGUF Q4_1 form), lm_head and embedding as in int8.
  Both run with CPU accuracy level 4 (int8 dot products inside the kernel:
  the fast path; levels 0/1 are much slower). The exact offsets agree with
  fp32 far more often than ORT's own 4-bit RTN with integer zero points
  (BENCHMARKS.md).
- ``fp16``: every float tensor in half precision, KV and logits too (GPU).
"""

from __future__ import annotations

import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from persona_sdk.backbone import BackboneSpec, fingerprint, read_config, stop_token_ids
from persona_sdk.errors import BackboneError, ExportError, MissingDependencyError
from persona_sdk.manifest import (FORMAT, GRAPHS, LOGITS, LOGITS_TO_KEEP, MODEL, POSITION_IDS, REVISION, VARIANTS,
                                  file_entries, io_names, past_names, write_manifest)

Progress = Callable[[str], None]
COPIED_FILES = ("tokenizer.json", "config.json", "generation_config.json", "tokenizer_config.json")
INT4_BLOCK = 32
ACCURACY_LEVEL = 4  # CPU: int8 activations inside MatMulNBits (fast); 0/1 = fp32 activations (slow)
INT8_BLOCK = 32


def _need_export_deps() -> None:
    try:
        import onnx  # noqa: F401
        import optimum.exporters.onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "exporting a backbone to ONNX needs the [export] extra (torch, transformers, optimum-onnx, onnx)"
        ) from None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, dist in (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("optimum", "optimum-onnx"),
                       ("torch", "torch"), ("transformers", "transformers")):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _graph_io(model_path: Path) -> tuple[list[str], list[str], dict[str, int], int]:
    """Input names, output names, elem types by name, and the default-domain opset."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output], types, int(opset)


def _check_contract(model_path: Path, spec: BackboneSpec) -> tuple[str, str, int, list[str]]:
    """Raise ExportError unless the graph has the decoder-with-past contract.

    Returns (kv dtype, logits dtype, opset, input names).
    """
    import onnx

    inputs, outputs, types, opset = _graph_io(model_path)
    want_in, want_out = io_names(spec.layers, position_ids=POSITION_IDS in inputs,
                                 logits_to_keep=LOGITS_TO_KEEP in inputs)
    if inputs != want_in or outputs != want_out:
        raise ExportError(
            f"exported graph does not have the decoder-with-past contract "
            f"(inputs {inputs[:4]}..., {len(inputs)} total; expected {len(want_in)})"
        )
    name = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
    kv = types[past_names(1)[0]]
    logits = types[LOGITS]
    if kv not in name or logits not in name:
        raise ExportError("exported graph has KV/logits of an unsupported dtype")
    return name[kv], name[logits], opset, inputs


# --- the fp32 reference export ---------------------------------------------------
def _export_fp32(backbone_dir: Path, out_dir: Path, say: Progress, graph: str = "auto") -> None:
    """Write the fp32 graph: the fused one where supported (``auto``), else optimum's."""
    from . import fused

    reason = fused.unsupported_reason(read_config(backbone_dir))
    if graph == "fused" and reason:
        raise ExportError(f"the fused graph does not support {backbone_dir}: {reason}")
    if graph in ("auto", "fused") and reason is None:
        _need_export_deps()
        try:
            fused.build(backbone_dir, out_dir / MODEL, say)
        except (ExportError, MissingDependencyError, BackboneError):
            raise
        except Exception as exc:  # onnx/torch raise many kinds; one clear error
            raise ExportError(f"building the fused graph of {backbone_dir} failed "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    else:
        _export_optimum(backbone_dir, out_dir, say)


def _export_optimum(backbone_dir: Path, out_dir: Path, say: Progress) -> None:
    _need_export_deps()
    import logging

    import torch
    from optimum.exporters.onnx import main_export

    say("Exporting the backbone to ONNX (fp32, decoder with past)...")
    tmp = out_dir / ".optimum"
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in ("optimum", "transformers", "torch.onnx"):
                logging.getLogger(name).setLevel(logging.ERROR)
            main_export(
                str(backbone_dir), output=str(tmp), task="text-generation-with-past", device="cpu",
                do_validation=False, local_files_only=True, library_name="transformers",
            )
    except (ExportError, MissingDependencyError):
        raise
    except Exception as exc:  # optimum raises many kinds; one clear error
        raise ExportError(f"optimum could not export {backbone_dir} ({type(exc).__name__}: {str(exc)[:200]})") from None
    finally:
        torch.set_num_threads(threads)
    produced = [f for f in tmp.iterdir() if f.name == MODEL or f.name.startswith(MODEL + "_data") or f.suffix == ".data"]
    if not (tmp / MODEL).is_file():
        raise ExportError(f"optimum produced no {MODEL} for {backbone_dir}")
    for f in produced:
        f.rename(out_dir / f.name)
    shutil.rmtree(tmp, ignore_errors=True)
    _fold_constant_transposes(out_dir / MODEL)


def _fold_constant_transposes(model_path: Path) -> None:
    """Turn ``MatMul(x, Transpose(initializer))`` into ``MatMul(x, initializer')``.

    A tied lm_head exports as a Transpose of the embedding table; folded, it is
    a constant weight that ``MatMulNBits`` can quantise (28M of SmolLM2-135M's
    135M parameters). ORT would fold it at load time anyway, in memory.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    changed = False
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        tr = producers.get(node.input[1])
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        perm = [a.ints for a in tr.attribute if a.name == "perm"]
        weight = numpy_helper.to_array(inits[tr.input[0]])
        folded = weight.T if not perm else weight.transpose(list(perm[0]))
        name = f"{node.name.strip('/').replace('/', '.')}.weight_folded"
        graph.initializer.append(numpy_helper.from_array(folded.copy(), name))
        node.input[1] = name
        if consumers.get(tr.output[0], 0) == 1:
            graph.node.remove(tr)
        changed = True
    if changed:
        onnx.save_model(model, str(model_path))


# --- derived variants ------------------------------------------------------------
def _quantize_nbits(src: Path, dst: Path, bits: int, block: int, accuracy: int | None) -> None:
    import onnx
    import logging

    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=False, accuracy_level=accuracy, quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",), bits=bits,
    )
    quant = MatMulNBitsQuantizer(model, algo_config=config)
    quant.process()
    onnx.save_model(quant.model.model, str(dst))


def _pack8_blockwise(weight, block: int):
    """Asymmetric min/max 8-bit block quantisation of a MatMul weight ``(K, N)`` along K.

    Returns MatMulNBits inputs: codes ``(N, k_blocks, block)`` uint8, scales
    ``(N, k_blocks)`` float32 and uint8 zero points ``(N, k_blocks)``.
    """
    import numpy as np

    k, n = weight.shape
    blocks = -(-k // block)
    w = np.zeros((blocks * block, n), dtype=np.float32)
    w[:k] = weight
    w = w.T.reshape(n, blocks, block)  # (N, k_blocks, block)
    levels = 255
    lo = w.min(-1)
    hi = w.max(-1)
    scale = (hi - lo) / levels
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # (N, k_blocks)
    zero = np.clip(np.rint(-lo / scale), 0, levels).astype(np.uint8)
    q = np.clip(np.rint(w / scale[..., None]) + zero[..., None], 0, levels).astype(np.uint8)
    return np.ascontiguousarray(q), scale, zero


def _pack_symmetric8(weight, block: int):
    """Symmetric 8-bit block quantisation of ``(K, N)`` along K: codes ``q + 128``, ``d = max|w| / 127``.

    Returns MatMulNBits inputs: codes ``(N, k_blocks, block)`` uint8, scales ``(N, k_blocks)``,
    zero points ``(N, k_blocks)`` uint8 (all 128). This is GGUF's Q8_0 form (the default
    backbone's tied embedding / lm_head), so such weights are represented exactly.
    """
    import numpy as np

    k, n = weight.shape
    blocks = -(-k // block)
    w = np.zeros((blocks * block, n), dtype=np.float64)
    w[:k] = weight
    w = w.T.reshape(n, blocks, block)  # (N, k_blocks, block)
    d = np.abs(w).max(-1) / 127.0
    d = np.where(d > 0, d, 1.0)
    q = (np.clip(np.rint(w / d[..., None]), -127, 127) + 128).astype(np.uint8)
    return np.ascontiguousarray(q), d.astype(np.float32), np.full((n, blocks), 128, dtype=np.uint8)


def _quantize_weights(src: Path, dst: Path, bits: int, block: int, accuracy: int, head_block: int | None = None) -> None:
    """Weight-only quantisation of every constant-weight MatMul and of the token embedding table.

    - Body MatMuls ``X @ W`` (W: (K, N)), ``bits`` 8: ``MatMulNBits`` with 8-bit
      codes, per-block scales and uint8 zero points (min/max, asymmetric).
    - ``bits`` 4: the exact-offset form. Per block of ``block`` rows ``W ≈ d·q + lo``,
      ``q`` in 0..15 (min/max rounding), computed as
      ``MatMulNBits(X; q, d, zp=0) + BlockSum(X) @ Lo`` where ``BlockSum(X)`` sums X
      over each block: ``(..., K/block)``. This is the GGUF Q4_1 form, so weights
      dequantised from Q4_1 (the default backbone) are represented exactly, while
      the 4-bit part stays on the fast packed kernel (integer zero points; float
      zero points fall back to a much slower kernel; rounding Q4_1 weights to
      integer zero points instead costs held-out perplexity, BENCHMARKS.md).
    - The lm_head: 8-bit symmetric (``_pack_symmetric8``), exact for a GGUF Q8_0
      tensor; weights whose K is not a multiple of ``block``: 8-bit asymmetric.
    - The token embedding ``Gather(table, input_ids)``: ``GatherBlockQuantized``
      over the same symmetric 8-bit codes (a quarter of the fp32 table's memory).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from persona_sdk.manifest import INPUT_IDS

    head_block = head_block or block
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = list(graph.node)  # by position: protobuf wrappers have no stable identity
    targets = {j for j, n in enumerate(nodes) if n.op_type == "MatMul" and n.input[1] in inits
               and len(inits[n.input[1]].dims) == 2}
    embeds = {j for j, n in enumerate(nodes) if n.op_type == "Gather" and n.input[0] in inits
              and n.input[1] == INPUT_IDS and len(inits[n.input[0]].dims) == 2
              and inits[n.input[0]].dims[1] % head_block == 0}
    used_elsewhere = {i for j, n in enumerate(nodes) if j not in targets | embeds for i in n.input}
    out_nodes: list = []
    block_sums: dict[str, str] = {}
    new_inits = []
    dropped: set[str] = set()

    def add(base: str, packed, scale, zero, extra=None) -> None:
        new_inits.extend([numpy_helper.from_array(packed, base), numpy_helper.from_array(scale, base + "_scales"),
                          numpy_helper.from_array(zero, base + "_zp")])

    for j, node in enumerate(nodes):
        if j in embeds:
            table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)  # (V, H)
            packed, scale, zero = _pack_symmetric8(table.T, head_block)  # codes (V, H/block, block)
            base = node.input[0] + "_q8"
            add(base, packed.reshape(table.shape), scale, zero)
            out_nodes.append(helper.make_node(
                "GatherBlockQuantized", [base, node.input[1], base + "_scales", base + "_zp"], list(node.output),
                name=node.name + "_Q", domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=head_block,
                bits=8))
            dropped.add(node.input[0])
            continue
        if j not in targets:
            out_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # (K, N)
        k, n = weight.shape
        base = node.input[1] + "_q"
        dropped.add(node.input[1])
        if "lm_head" in node.name or bits == 8 or k % block:
            head = "lm_head" in node.name
            size = head_block if head else block
            packed, scale, zero = _pack_symmetric8(weight, size) if head else _pack8_blockwise(weight, size)
            add(base, packed, scale, zero)
            out_nodes.append(helper.make_node(
                "MatMulNBits", [node.input[0], base, base + "_scales", base + "_zp"], list(node.output),
                name=node.name + "_Q", domain="com.microsoft", K=k, N=n, bits=8, block_size=size,
                accuracy_level=accuracy))
            continue
        blocks = k // block
        w = weight.T.reshape(n, blocks, block)  # (N, k_blocks, block)
        lo = w.min(-1)
        scale = (w.max(-1) - lo) / 15.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # (N, k_blocks)
        q = np.clip(np.rint((w - lo[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
        packed = np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << 4))
        zp = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)  # packed 4-bit zeros
        add(base, packed, scale, zp)
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(lo.T.astype(np.float32)), base + "_lo"))  # (k_blocks, N)
        x = node.input[0]
        key = f"{x}|{block}|{k}"
        if key not in block_sums:
            shape_name = f"{x}_bs{block}_shape".replace("/", "_")
            new_inits.append(numpy_helper.from_array(np.array([0, 0, blocks, block], dtype=np.int64), shape_name))
            axes = shape_name + "_axes"
            new_inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))
            r = node.name + "_bs_reshape"
            out_nodes.append(helper.make_node("Reshape", [x, shape_name], [r + "_out"], name=r))
            out_nodes.append(helper.make_node("ReduceSum", [r + "_out", axes], [r + "_sum"], name=r + "_sum",
                                              keepdims=0))
            block_sums[key] = r + "_sum"  # (B, T, k_blocks)
        y = node.output[0]
        out_nodes.append(helper.make_node(
            "MatMulNBits", [x, base, base + "_scales", base + "_zp"], [y + "_q4"], name=node.name + "_Q",
            domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=accuracy))
        out_nodes.append(helper.make_node("MatMul", [block_sums[key], base + "_lo"], [y + "_off"],
                                          name=node.name + "_off"))
        out_nodes.append(helper.make_node("Add", [y + "_q4", y + "_off"], [y], name=node.name + "_add"))
    keep = [i for i in graph.initializer if i.name not in dropped or i.name in used_elsewhere]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    del graph.node[:]
    graph.node.extend(out_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save_model(model, str(dst))


def _quantize_offset4(src: Path, dst: Path, block: int, accuracy: int) -> None:
    """4-bit weight-only in the exact-offset (GGUF Q4_1) form; see ``_quantize_weights``."""
    _quantize_weights(src, dst, 4, block, accuracy)


def _externalize(model_path: Path) -> None:
    """Move every weight into ``<model>.data`` beside the graph.

    onnxruntime memory-maps external data; weights it repacks for its kernels
    (MatMulNBits, MatMul) are then not held twice: the chat process of the
    int8 default is ~140 MB smaller than with the weights inside model.onnx.
    """
    import onnx

    data = model_path.with_name(model_path.name + ".data")
    model = onnx.load(str(model_path))  # reads external data too, if any
    tmp = model_path.with_name(".external.onnx")
    onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name + ".tmp", size_threshold=1024)
    # the graph names its data file: write it under the final name, then swap both in
    del model
    model = onnx.load(str(tmp), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data.name
    onnx.save_model(model, str(tmp))
    for stale in model_path.parent.iterdir():
        if stale.name.startswith(MODEL + "_data") or (stale.suffix == ".data" and stale.name != data.name + ".tmp"):
            stale.unlink()
    data.with_name(data.name + ".tmp").rename(data)
    tmp.rename(model_path)


def _convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # keep_io_types=False: KV and logits in fp16 too (recorded in the manifest),
    # so a GPU runtime never round-trips the cache through fp32.
    model16 = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)
    onnx.save_model(model16, str(dst))


def _derive(fp32_dir: Path, out_dir: Path, variant: str, say: Progress) -> None:
    src = fp32_dir / MODEL
    dst = out_dir / MODEL
    say(f"Deriving the {variant} variant from the fp32 export...")
    try:
        if variant == "int8":
            _quantize_weights(src, dst, 8, INT8_BLOCK, ACCURACY_LEVEL)
        elif variant == "int4":
            _quantize_weights(src, dst, 4, INT4_BLOCK, ACCURACY_LEVEL)
        elif variant == "fp16":
            _convert_fp16(src, dst)
        else:  # pragma: no cover - guarded by the caller
            raise ExportError(f"unknown variant {variant!r}")
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"building the {variant} variant failed ({type(exc).__name__}: {str(exc)[:200]})") from None


# --- public ------------------------------------------------------------------------
def export(backbone_dir: Path, out_dir: Path, variant: str = "fp32", fp32_dir: Path | None = None,
           progress: Progress | None = None, graph: str = "auto") -> Path:
    """Write ``variant`` of ``backbone_dir`` into ``out_dir`` with a manifest (not yet validated).

    Quantised/fp16 variants are derived from an fp32 export (``fp32_dir``; made
    in a temp folder when not given). ``out_dir`` must not exist or be empty.
    Use :func:`persona_sdk.exporters.ensure_exported` for the validated,
    cached, atomic path. ``graph``: ``auto`` (fused where supported, else
    optimum), ``fused`` or ``optimum``; a derived variant keeps its fp32's graph.
    """
    if variant not in VARIANTS:
        raise ExportError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if graph not in ("auto", *GRAPHS):
        raise ExportError(f"graph must be one of {('auto', *GRAPHS)}, got {graph!r}")
    say = progress or (lambda msg: None)
    backbone_dir = Path(backbone_dir)
    config = read_config(backbone_dir)
    archs = config.get("architectures") or []
    if not archs:
        raise BackboneError(f"{backbone_dir} is not a causal LM (config.json names no architecture)")
    spec = BackboneSpec.from_config(config)
    fp = fingerprint(backbone_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise ExportError(f"export folder {out_dir} is not empty")
    if variant == "fp32":
        _export_fp32(backbone_dir, out_dir, say, graph)
    else:
        if fp32_dir is None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix=".fp32-", dir=out_dir.parent) as tmp:
                export(backbone_dir, Path(tmp) / "fp32", "fp32", progress=progress, graph=graph)
                _derive(Path(tmp) / "fp32", out_dir, variant, say)
        else:
            _derive(Path(fp32_dir), out_dir, variant, say)
    _externalize(out_dir / MODEL)
    kv_dtype, logits_dtype, opset, inputs = _check_contract(out_dir / MODEL, spec)
    built = "optimum" if POSITION_IDS in inputs else "fused"
    for name in COPIED_FILES:
        if (backbone_dir / name).is_file():
            shutil.copy2(backbone_dir / name, out_dir / name)
    if not (out_dir / "tokenizer.json").is_file():
        raise BackboneError(f"{backbone_dir} has no tokenizer.json (persona needs a fast tokenizer file)")
    inputs, outputs = io_names(spec.layers, position_ids=built == "optimum", logits_to_keep=built == "fused")
    manifest = {
        "format": FORMAT, "variant": variant, "graph": built, "revision": REVISION, "fingerprint": fp, "inputs": inputs, "outputs": outputs,
        "layers": spec.layers, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim, "vocab_size": spec.vocab_size,
        "kv_dtype": kv_dtype, "logits_dtype": logits_dtype, "opset": opset, "versions": versions(),
        "files": file_entries(out_dir), "stop_token_ids": stop_token_ids(backbone_dir, config),
        "validation": {}, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_manifest(out_dir, manifest)
    return out_dir
