"""Interop with the PEFT ecosystem: a persona KV block <-> a PEFT prefix-tuning adapter folder.

Torch-free (json, numpy, safetensors). The folder is what ``PeftModel.save_pretrained``
writes for prefix tuning, and what ``PeftModel.from_pretrained(model, folder)`` loads::

    folder/adapter_config.json          PrefixTuningConfig (peft_type PREFIX_TUNING, CAUSAL_LM)
    folder/adapter_model.safetensors    one tensor, "prompt_embeddings": (P, layers * 2 * kv_heads * head_dim)

PEFT's layout (verified on peft 0.21.2 with a grouped-query-attention Llama):
``PeftModel.get_prompt`` views the table as ``(batch, P, layers * 2, kv_heads, head_dim)``,
permutes it to ``(layers * 2, batch, kv_heads, P, head_dim)`` and splits it in pairs, so
row ``2l`` is layer l's keys and row ``2l + 1`` its values; for GQA models PEFT sets
``num_attention_heads`` to the KV heads and ``token_dim`` to ``kv_heads * head_dim``. Our block
``(layers, 2, kv_heads, P, head_dim)`` is the same numbers in another order. PEFT saves the
*computed* table even when it trained through a reparametrisation MLP (``prefix_projection``),
and uses it as is at inference, so both kinds import the same way.

An adapter folder is **plaintext**: anyone who can read it can speak as the persona.
Only the KV block, the backbone fingerprint and the training method are written (never the
profile's private metadata); the fingerprint sits in the safetensors metadata, which PEFT
ignores. Reading treats a folder as hostile: sizes are bounded, the safetensors header is
parsed by hand (no pickle, no torch), and config, shapes and backbone are checked.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackboneMismatchError, PeftAdapterError, ProfileExistsError
from .fileio import atomic_write
from .prefix import Prefix

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"
TABLE_KEY = "prompt_embeddings"  # the tensor name PEFT saves for prompt-learning adapters
META_BACKBONE = "persona_backbone"  # safetensors metadata: the backbone fingerprint (ours)
META_METHOD = "persona_method"
PEFT_VERSION = "0.21.2"  # the PEFT release whose layout this module was verified against
IMPORTED_METHOD = "peft-prefix-tuning"
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 1 << 30
MAX_HEADER_BYTES = 1 << 20
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


@dataclass(frozen=True)
class PeftAdapter:
    """A PEFT prefix-tuning adapter read from a folder (checked for structure, not yet for a backbone)."""

    config: dict[str, Any]
    table: np.ndarray  # (P, layers * 2 * kv_heads * head_dim) float32
    fingerprint: str | None  # the backbone fingerprint persona wrote, None for a folder PEFT wrote
    method: str | None

    @property
    def length(self) -> int:
        return int(self.config["num_virtual_tokens"])

    @property
    def layers(self) -> int:
        return int(self.config["num_layers"])

    @property
    def kv_heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.config["token_dim"]) // self.kv_heads


# --- the layout -------------------------------------------------------------------
def block_to_table(kv: np.ndarray) -> np.ndarray:
    """``(layers, 2, kv_heads, P, head_dim)`` -> PEFT's ``(P, layers * 2 * kv_heads * head_dim)``."""
    layers, two, heads, length, dim = kv.shape
    return np.ascontiguousarray(kv.transpose(3, 0, 1, 2, 4).reshape(length, layers * two * heads * dim))


def table_to_block(table: np.ndarray, layers: int, kv_heads: int, head_dim: int) -> np.ndarray:
    """PEFT's ``(P, layers * 2 * kv_heads * head_dim)`` -> ``(layers, 2, kv_heads, P, head_dim)``."""
    length = table.shape[0]
    view = table.reshape(length, layers, 2, kv_heads, head_dim)  # (P, layers, 2, kv_heads, head_dim)
    return np.ascontiguousarray(view.transpose(1, 2, 3, 0, 4))


def adapter_config(layers: int, kv_heads: int, head_dim: int, length: int,
                   base_model: str | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` PEFT writes for prefix tuning on a causal LM with these shapes."""
    token_dim = kv_heads * head_dim
    return {
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "encoder_hidden_size": token_dim,
        "inference_mode": True,
        "init_weights": None,
        "modules_to_save": None,
        "num_attention_heads": kv_heads,
        "num_layers": layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": length,
        "peft_type": "PREFIX_TUNING",
        "peft_version": PEFT_VERSION,
        "prefix_projection": False,
        "revision": None,
        "task_type": "CAUSAL_LM",
        "token_dim": token_dim,
    }


# --- writing --------------------------------------------------------------------------
def write_peft(prefix: Prefix, folder: Path | str, *, base_model: str | None = None,
               force: bool = False) -> Path:
    """Write ``prefix`` as a PEFT prefix-tuning adapter folder (plaintext; files 0600).

    ``base_model``: what ``adapter_config.json`` names as the base model (a hub id or
    folder), for tools that load the base model from it. Refuses to replace an adapter
    already in ``folder`` unless ``force``. Each file is written atomically.
    """
    from safetensors.numpy import save

    out = Path(folder).expanduser()
    if out.exists() and not out.is_dir():
        raise PeftAdapterError(f"{out} exists and is not a folder")
    present = [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if (out / n).exists()]
    if present and not force:
        raise ProfileExistsError(f"{out} already holds a PEFT adapter ({', '.join(present)}); "
                                 "use force / --force to overwrite it")
    if not out.parent.is_dir():
        raise PeftAdapterError(f"folder {out.parent} does not exist")
    spec = prefix.spec
    table = block_to_table(prefix.kv.astype(np.float32))  # (P, layers * 2 * kv_heads * head_dim)
    config = adapter_config(spec.layers, spec.kv_heads, spec.head_dim, spec.length, base_model)
    weights = save({TABLE_KEY: table}, metadata={"format": "pt", META_BACKBONE: prefix.backbone,
                                                 META_METHOD: prefix.method})
    try:
        out.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise PeftAdapterError(f"cannot create {out} ({exc.strerror or type(exc).__name__})") from None
    atomic_write(out / ADAPTER_WEIGHTS, weights, error=PeftAdapterError)
    atomic_write(out / ADAPTER_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
                 error=PeftAdapterError)
    return out


# --- reading ----------------------------------------------------------------------------
def read_peft(folder: Path | str) -> PeftAdapter:
    """Read and check a PEFT prefix-tuning adapter folder (config, one table of the right shape)."""
    src = Path(folder).expanduser()
    if not src.is_dir():
        raise PeftAdapterError(f"{src} is not a folder (a PEFT adapter is a folder holding {ADAPTER_CONFIG})")
    config = _read_config(src / ADAPTER_CONFIG)
    weights = src / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (src / PICKLED_WEIGHTS).exists():
            raise PeftAdapterError(f"{src} holds {PICKLED_WEIGHTS} (a pickle, which persona never loads); "
                                   f"save the adapter with safetensors (PEFT's default) to get {ADAPTER_WEIGHTS}")
        raise PeftAdapterError(f"{src} has no {ADAPTER_WEIGHTS}")
    tensors, metadata = _read_safetensors(weights)
    if set(tensors) != {TABLE_KEY}:
        raise PeftAdapterError(f"{weights.name} should hold one tensor, {TABLE_KEY!r}; it holds "
                               f"{', '.join(sorted(tensors)) or 'none'}")
    table = tensors[TABLE_KEY]
    length, layers, heads, token_dim = (config[k] for k in ("num_virtual_tokens", "num_layers",
                                                          "num_attention_heads", "token_dim"))
    want = (length, layers * 2 * token_dim)
    if table.shape != want:
        raise PeftAdapterError(f"{weights.name}: {TABLE_KEY} has shape {table.shape}, but the config says "
                               f"{want} (num_virtual_tokens, num_layers * 2 * token_dim)")
    if not np.isfinite(table).all():
        raise PeftAdapterError(f"{weights.name}: {TABLE_KEY} holds NaN or infinite values")
    fingerprint = metadata.get(META_BACKBONE) or None
    if fingerprint is not None and (len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint)):
        raise PeftAdapterError(f"{weights.name}: the backbone fingerprint in its metadata is malformed")
    method = metadata.get(META_METHOD) or None
    return PeftAdapter(config=config, table=table, fingerprint=fingerprint, method=method)


def prefix_from_peft(folder: Path | str, *, spec: Any, fingerprint: str) -> tuple[Prefix, bool]:
    """A :class:`Prefix` for the backbone in use from a PEFT adapter folder.

    ``spec``: the backbone's ``BackboneSpec`` (layers, KV heads, head dim must match);
    ``fingerprint``: its fingerprint. A folder persona wrote carries the fingerprint of
    the backbone it was made for and is refused by another one; a folder PEFT wrote has
    none and is bound to ``fingerprint`` after the shape checks. Returns ``(prefix,
    fingerprint_checked)``.
    """
    adapter = read_peft(folder)
    have = (adapter.layers, adapter.kv_heads, adapter.head_dim)
    want = (spec.layers, spec.kv_heads, spec.head_dim)
    if have != want:
        raise PeftAdapterError(
            f"the adapter's (layers, KV heads, head dim) = {have} does not fit the backbone in use, "
            f"{want}; it was trained on another model: use that one (--backbone)")
    if adapter.fingerprint is not None and adapter.fingerprint != fingerprint:
        raise BackboneMismatchError(
            f"the adapter was made for backbone {adapter.fingerprint[:16]}, but the backbone in use is "
            f"{fingerprint[:16]}; use the backbone it was made for (--backbone)")
    kv = table_to_block(adapter.table, *want)  # (layers, 2, kv_heads, P, head_dim)
    prefix = Prefix(kv=kv.astype(np.float32), backbone=fingerprint,
                    method=adapter.method or IMPORTED_METHOD, meta={"virtual_tokens": adapter.length})
    return prefix, adapter.fingerprint is not None


# --- helpers ----------------------------------------------------------------------------
_INT_FIELDS = ("num_virtual_tokens", "num_layers", "num_attention_heads", "token_dim")


def _read_config(path: Path) -> dict[str, Any]:
    data = _read_bounded(path, MAX_CONFIG_BYTES)
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PeftAdapterError(f"{path.name} is not valid JSON") from None
    if not isinstance(config, dict):
        raise PeftAdapterError(f"{path.name} is not a JSON object")
    kind = config.get("peft_type")
    if kind != "PREFIX_TUNING":
        raise PeftAdapterError(f"{path.name}: peft_type is {kind!r}; persona imports PREFIX_TUNING adapters "
                               "(a KV prefix), not other PEFT methods")
    if config.get("task_type") not in ("CAUSAL_LM", None):
        raise PeftAdapterError(f"{path.name}: task_type is {config.get('task_type')!r}; persona needs CAUSAL_LM")
    for key in _INT_FIELDS:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 1 << 20:
            raise PeftAdapterError(f"{path.name}: {key} must be a positive integer, got {value!r}")
    if config.get("num_transformer_submodules", 1) != 1:
        raise PeftAdapterError(f"{path.name}: num_transformer_submodules must be 1 (a decoder-only model)")
    if config["token_dim"] % config["num_attention_heads"]:
        raise PeftAdapterError(f"{path.name}: token_dim is not a multiple of num_attention_heads")
    return config


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (as float32) and metadata of a safetensors file, parsed by hand with bounds checked."""
    data = _read_bounded(path, MAX_WEIGHTS_BYTES)
    try:
        if len(data) < 8:
            raise ValueError("truncated")
        (header_len,) = struct.unpack("<Q", data[:8])
        if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
            raise ValueError("header length")
        header = json.loads(data[8 : 8 + header_len])
        if not isinstance(header, dict):
            raise ValueError("header")
        body = memoryview(data)[8 + header_len :]
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("metadata")
        tensors = {}
        for name, info in header.items():
            dtype = info["dtype"]
            if dtype not in _DTYPES:
                raise PeftAdapterError(f"{path.name}: tensor {name!r} has dtype {dtype}; "
                                       f"expected one of {', '.join(_DTYPES)}")
            shape = tuple(int(x) for x in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
            if not 0 <= start <= end <= len(body) or end - start != math.prod(shape) * _DTYPES[dtype].itemsize:
                raise ValueError("offsets")
            raw = np.frombuffer(body[start:end], dtype=_DTYPES[dtype]).reshape(shape)
            if dtype == "BF16":  # bfloat16 is the top half of a float32
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            tensors[str(name)] = raw.astype(np.float32)
    except PeftAdapterError:
        raise
    except Exception as exc:  # any structural problem is one clean error
        raise PeftAdapterError(f"{path.name} is not a valid safetensors file ({type(exc).__name__})") from None
    return tensors, metadata


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise PeftAdapterError(f"{path.name} is too large for a PEFT prefix adapter ({size} bytes)")
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise PeftAdapterError(f"{path.parent} has no {path.name}") from None
    except IsADirectoryError:
        raise PeftAdapterError(f"{path} is a folder, not a file") from None
    except OSError as exc:
        raise PeftAdapterError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        raise PeftAdapterError(f"{path.name} is too large for a PEFT prefix adapter")
    return data
