"""The frozen backbone, loaded for training, and the KV blocks made from it.

``(layers, 2, kv_heads, P, head_dim)`` is the shape of every block here: the
persona prefix the runtime feeds as past keys/values. torch and transformers
are imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..conversation import ChatFormat
from ..errors import MissingDependencyError, SourcePrefixError, TrainingError
from ..prefix import Prefix


@dataclass
class TrainBackbone:
    """A frozen torch backbone + its chat format, spec and fingerprint."""

    path: Path
    model: Any  # transformers LlamaForCausalLM-like, eval(), requires_grad False
    fmt: ChatFormat
    fingerprint: str
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int


# oneDNN (torch's CPU kernels for bf16) keeps a compiled primitive per tensor shape, 1,024 of them
# by default; training batches come in many shapes, and the cache grew an enrollment's RSS past 3 GB
# (BENCHMARKS.md, enrollment memory). 16 entries: -444 MiB peak at the same steps and losses. Read
# by oneDNN when it makes its first primitive; a value the user set is kept.
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_CAPACITY = "16"


def torch_module():
    """``torch``, or a clear error naming the extra that provides it."""
    os.environ.setdefault(ONEDNN_CACHE_ENV, ONEDNN_CACHE_CAPACITY)
    try:
        import torch
    except ImportError:  # pragma: no cover - the [train] extra is missing
        raise MissingDependencyError("training needs the [train] extra: pip install 'persona-sdk[train]'") from None
    return torch


def load_backbone(path: str | Path | None) -> TrainBackbone:
    """Load a backbone directory (None = the embedded default) for training."""
    from tokenizers import Tokenizer

    from .. import backbone as bb

    torch = torch_module()
    from transformers import AutoModelForCausalLM

    model_dir = bb.resolve(path)
    spec = bb.spec_of(model_dir)
    tok_file = Path(model_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise TrainingError(f"{model_dir} has no tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return TrainBackbone(Path(model_dir), model, ChatFormat(Tokenizer.from_file(str(tok_file))),
                         bb.fingerprint(model_dir), spec.layers, spec.kv_heads, spec.head_dim, spec.hidden)


def bf16_supported() -> bool:
    """True if the CPU has native bf16 math (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def kv_of_embeddings(bb: TrainBackbone, embeds) -> np.ndarray:
    """Run the backbone over embeddings (P, hidden) at positions 0..P-1; return the KV block.

    (layers, 2, kv_heads, P, head_dim) float32 -- this is how a soft prompt (or
    a hard prompt's embeddings) becomes a persona prefix."""
    torch = torch_module()
    P = embeds.shape[0]
    with torch.no_grad():
        out = bb.model.model(inputs_embeds=embeds.unsqueeze(0).float(), position_ids=torch.arange(P).unsqueeze(0),
                             attention_mask=torch.ones(1, P, dtype=torch.long), use_cache=True)
        cache = out.past_key_values
        blocks = []
        for layer in range(bb.layers):
            k, v = _cache_layer(cache, layer)  # (1, kv_heads, P, head_dim) each
            blocks.append(torch.stack([k[0], v[0]]))
    return torch.stack(blocks).float().numpy().copy()


def _cache_layer(cache, layer: int):
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache[layer]  # pragma: no cover - older transformers


def random_prefix(bb: TrainBackbone, length: int, seed: int) -> np.ndarray:
    """The rand-init block: KV of ``length`` random vocabulary tokens (seeded)."""
    torch = torch_module()
    rng = np.random.default_rng(seed)
    vocab = bb.model.get_input_embeddings().weight.shape[0]
    ids = torch.from_numpy(rng.integers(0, vocab, size=length)).long()
    return kv_of_embeddings(bb, bb.model.get_input_embeddings()(ids))


def text_embeddings(bb: TrainBackbone, text: str, length: int):
    """Soft-prompt init: embeddings of ``text``'s tokens, repeated/cut to ``length``. (P, hidden)"""
    torch = torch_module()
    ids = bb.fmt.encode(text) or [0]
    ids = (ids * (length // len(ids) + 1))[:length]
    return bb.model.get_input_embeddings()(torch.tensor(ids)).detach().clone()


def check_source_fits(init: Prefix, bb: TrainBackbone, prefix_len: int) -> None:
    """Raise :class:`SourcePrefixError` unless ``init`` is a block of this backbone with ``prefix_len`` tokens."""
    from ..prefix import PrefixSpec

    try:
        init.check(PrefixSpec(bb.layers, bb.kv_heads, init.length, bb.head_dim), bb.fingerprint)
    except Exception as exc:
        raise SourcePrefixError(f"the source prefix does not fit this backbone: {exc}") from None
    if init.length != prefix_len:
        raise SourcePrefixError(
            f"the source prefix has {init.length} virtual tokens but prefix_len is {prefix_len}; "
            "use the same length or no source"
        )
