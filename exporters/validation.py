"""Validate an export against the torch model with a persona prefix injected.

A seeded random block ``(layers, 2, kv_heads, P, head_dim)`` goes into both
sides: torch+PEFT prefix-tuning (the block loaded as the prefix encoder's
output) and ONNX Runtime (the block as initial past, P leading mask ones,
positions from P). We compare the logits of a ChatML prompt and then decode
``steps`` tokens teacher-forced on the torch greedy tokens: if ORT's argmax
equals torch's at every step, free-running greedy decoding is identical too.

Thresholds (``THRESHOLDS``), per variant, relative to the logit scale
``s = max|reference logit|`` (at least 1):

- fp32: max |Δlogit| <= 1e-4·s + 1e-4 and greedy identical over all steps.
- fp16: max |Δlogit| <= 0.05·s, top-1 agreement >= 0.9.
- int8, int4: max |Δlogit| <= 1.0·s (sanity: catches a broken graph), top-1
  agreement >= 0.3. Loose on purpose: both run MatMulNBits with int8
  activations, and a *random* N(0, 1) prefix drives SmolLM2-135M into a regime
  of flat logits where argmax flips easily, while a broken graph agrees on
  almost nothing. The numbers are recorded in the manifest; the user-facing
  cost is the perplexity delta measured by ``benchmarks/decode_speed.py``.

Agreement is measured on the teacher-forced steps plus the prompt positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from persona_sdk.errors import ExportError

from persona_sdk.manifest import (ATTENTION_MASK, INPUT_IDS, LOGITS_TO_KEEP, MODEL, POSITION_IDS, past_names,
                                  read_manifest)

PREFIX_LEN = 8
STEPS = 24
SEED = 1234
PROMPT = "hi, what do you do on weekends?"
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"rel_logit_diff": 1e-4, "abs_logit_diff": 1e-4, "top1_agreement": 1.0},
    "fp16": {"rel_logit_diff": 0.05, "abs_logit_diff": 0.0, "top1_agreement": 0.9},
    "int8": {"rel_logit_diff": 1.0, "abs_logit_diff": 0.0, "top1_agreement": 0.3},
    "int4": {"rel_logit_diff": 1.0, "abs_logit_diff": 0.0, "top1_agreement": 0.3},
}


class OrtDecoder:
    """A minimal numpy decode loop over an exported graph (validation, benchmarks).

    Copies the KV through numpy every step; the product runtime lives in
    ``persona_sdk.runtime`` (IO binding). ``past`` is a list of per-layer
    ``(key, value)`` arrays ``(1, kv_heads, past, head_dim)``.
    """

    def __init__(self, export_dir: Path, threads: int | None = None, manifest: dict | None = None) -> None:
        import onnxruntime as ort

        self.manifest = manifest or read_manifest(export_dir)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(Path(export_dir) / MODEL), opts, providers=["CPUExecutionProvider"])
        self.layers = self.manifest["layers"]
        names = {i.name for i in self.session.get_inputs()}
        self.has_position_ids = POSITION_IDS in names
        self.has_logits_to_keep = LOGITS_TO_KEEP in names
        self.past_names = past_names(self.layers)
        self.kv_dtype = np.dtype(self.manifest["kv_dtype"])

    def empty_past(self, kv: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        m = self.manifest
        if kv is None:  # (layers, 2, kv_heads, P, head_dim)
            kv = np.zeros((m["layers"], 2, m["kv_heads"], 0, m["head_dim"]), dtype=self.kv_dtype)
        kv = kv.astype(self.kv_dtype, copy=False)
        return [(kv[i, 0][None], kv[i, 1][None]) for i in range(m["layers"])]

    def step(self, ids: list[int], past: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list]:
        """Run ``ids`` after ``past``; return logits ``(T, vocab)`` float32 and the new past."""
        past_len = past[0][0].shape[2]
        n = len(ids)
        feed: dict[str, np.ndarray] = {
            INPUT_IDS: np.asarray([ids], dtype=np.int64),
            ATTENTION_MASK: np.ones((1, past_len + n), dtype=np.int64),
        }
        if self.has_position_ids:  # optimum graph; the fused one derives positions from the mask
            feed[POSITION_IDS] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
        if self.has_logits_to_keep:
            feed[LOGITS_TO_KEEP] = np.array([0], dtype=np.int64)  # every position
        for i, (k, v) in enumerate(past):
            feed[self.past_names[2 * i]] = k
            feed[self.past_names[2 * i + 1]] = v
        out = self.session.run(None, feed)
        present = [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(self.layers)]
        return out[0][0].astype(np.float32), present

    def forced(self, kv: np.ndarray | None, prompt_ids: list[int], tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Prompt logits ``(T, V)`` and step logits ``(n, V)`` teacher-forced on ``tokens``.

        Step j's logits predict ``tokens[j]``: step 0 is the last prompt
        position, step j > 0 comes after feeding ``tokens[j-1]``.
        """
        prompt_logits, past = self.step(prompt_ids, self.empty_past(kv))
        steps = [prompt_logits[-1]]
        for tok in tokens[:-1]:
            logits, past = self.step([tok], past)
            steps.append(logits[-1])
        return prompt_logits, np.stack(steps)

    def greedy(self, kv: np.ndarray | None, prompt_ids: list[int], steps: int) -> list[int]:
        """Free-running greedy tokens (no stop handling)."""
        logits, past = self.step(prompt_ids, self.empty_past(kv))
        out: list[int] = []
        for _ in range(steps):
            out.append(int(logits[-1].argmax()))
            logits, past = self.step([out[-1]], past)
        return out


def prompt_ids_for(export_dir: Path, text: str = PROMPT) -> list[int]:
    """A ChatML prompt (one user turn + reply header) in the export's tokenizer."""
    from tokenizers import Tokenizer

    from persona_sdk.conversation import USER, ChatFormat, Turn

    fmt = ChatFormat(Tokenizer.from_file(str(Path(export_dir) / "tokenizer.json")))
    return fmt.prompt_ids([Turn(USER, text)], budget=128)


def random_block(manifest: dict, length: int = PREFIX_LEN, seed: int = SEED, scale: float = 1.0) -> np.ndarray:
    """A seeded random KV block ``(layers, 2, kv_heads, P, head_dim)`` float32."""
    rng = np.random.default_rng(seed)
    shape = (manifest["layers"], 2, manifest["kv_heads"], length, manifest["head_dim"])
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def compare(variant: str, ref_prompt: np.ndarray, ref_tokens: list[int], ref_steps: np.ndarray,
            ort_prompt: np.ndarray, ort_steps: np.ndarray) -> dict[str, Any]:
    """Numbers + verdict for one variant (see module docstring for thresholds)."""
    ref_all = np.concatenate([ref_prompt, ref_steps])  # (T + n, V)
    ort_all = np.concatenate([ort_prompt, ort_steps])
    diff = float(np.abs(ref_all - ort_all).max())
    scale = max(1.0, float(np.abs(ref_all).max()))
    agree = float((ref_all.argmax(-1) == ort_all.argmax(-1)).mean())
    greedy = bool((ort_steps.argmax(-1) == np.asarray(ref_tokens)).all())
    th = THRESHOLDS[variant]
    limit = th["rel_logit_diff"] * scale + th["abs_logit_diff"]
    ok = bool(np.isfinite(ort_all).all()) and diff <= limit and agree >= th["top1_agreement"]
    if variant == "fp32":
        ok = ok and greedy
    return {"max_abs_logit_diff": diff, "logit_scale": scale, "max_allowed_diff": limit,
            "top1_agreement": agree, "greedy_match": greedy, "passed": ok}


def validate(export_dir: Path, backbone_dir: Path, prefix_len: int = PREFIX_LEN, steps: int = STEPS,
             seed: int = SEED, threads: int | None = None, raise_on_fail: bool = True) -> dict[str, Any]:
    """Compare the export with torch+PEFT, a seeded prefix injected in both.

    Returns the ``validation`` record for the manifest. Raises
    :class:`ExportError` naming the numbers when the export fails its
    thresholds (unless ``raise_on_fail=False``).
    """
    from . import reference

    manifest = read_manifest(export_dir)
    variant = manifest["variant"]
    kv = random_block(manifest, prefix_len, seed)
    ids = prompt_ids_for(export_dir)
    torch = reference._torch()
    threads_before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        model = reference.load_model(backbone_dir)
        try:
            model = reference.peft_prefix_model(model, kv)
            route, use_peft = "torch+peft", True
        except ImportError:  # peft not installed: the same block through a DynamicCache
            route, use_peft = "torch+cache", False
        ref_prompt, ref_tokens, ref_steps = reference.greedy_reference(model, kv, ids, steps, peft=use_peft)
        del model
    finally:
        torch.set_num_threads(threads_before)
    decoder = OrtDecoder(export_dir, threads=threads, manifest=manifest)
    ort_prompt, ort_steps = decoder.forced(kv, ids, ref_tokens)
    result = compare(variant, ref_prompt, ref_tokens, ref_steps, ort_prompt, ort_steps)
    record = {"prefix_len": prefix_len, "steps": steps, "seed": seed, "reference": route,
              "prompt_tokens": len(ids), **result}
    if raise_on_fail and not result["passed"]:
        raise ExportError(
            f"the {variant} export does not match the torch model with a prefix injected: "
            f"max |Δlogit| {result['max_abs_logit_diff']:.3g} (allowed {result['max_allowed_diff']:.3g}), "
            f"top-1 agreement {result['top1_agreement']:.2f} (need {THRESHOLDS[variant]['top1_agreement']}), "
            f"greedy match {result['greedy_match']}"
        )
    return record
