"""A persona is a KV block: P learned keys and values for every decoder layer.

``kv`` has shape ``(layers, 2, kv_heads, P, head_dim)``; ``kv[l, 0]`` is layer
l's keys and ``kv[l, 1]`` its values. The runtime feeds it as the initial past
of the backbone (attention mask with P leading ones, positions from P), so one
backbone graph serves every persona at no extra cost per token.

Serialised as safetensors bytes (never pickle); the vault encrypts them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BackboneMismatchError, PrefixShapeError

KV_TENSOR = "kv"
MAX_HEADER_BYTES = 64 * 1024  # a prefix header is a few hundred bytes
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class PrefixSpec:
    """Shape of a KV block for one backbone."""

    layers: int
    kv_heads: int
    length: int  # P, the number of virtual tokens
    head_dim: int
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("layers", "kv_heads", "length", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise PrefixShapeError(f"prefix {name} must be a positive int, got {value!r}")
        if self.dtype not in DTYPES:
            raise PrefixShapeError(f"prefix dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.layers, 2, self.kv_heads, self.length, self.head_dim)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Prefix:
    """A persona KV block bound to one backbone fingerprint."""

    kv: np.ndarray  # (layers, 2, kv_heads, P, head_dim)
    backbone: str  # fingerprint of the backbone it was trained for
    method: str = "unknown"
    # summary numbers, plus (under "voice") the owner's topic words and salted training digests:
    # private, so kept out of repr; persisted only inside the encrypted vault file
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        kv = np.asarray(self.kv)
        if kv.ndim != 5 or kv.shape[1] != 2:
            raise PrefixShapeError(
                f"prefix KV block must have shape (layers, 2, kv_heads, P, head_dim), got {kv.shape}"
            )
        if kv.dtype.name not in DTYPES:
            raise PrefixShapeError(f"prefix dtype must be one of {DTYPES}, got {kv.dtype.name}")
        if not np.isfinite(kv).all():
            raise PrefixShapeError("prefix KV block contains NaN or infinite values")
        self.kv = np.ascontiguousarray(kv)

    @property
    def spec(self) -> PrefixSpec:
        layers, _, heads, length, dim = self.kv.shape
        return PrefixSpec(int(layers), int(heads), int(length), int(dim), self.kv.dtype.name)

    @property
    def length(self) -> int:
        return int(self.kv.shape[3])

    def check(self, spec: PrefixSpec | None = None, fingerprint: str | None = None) -> None:
        """Raise unless this prefix fits a backbone with ``spec`` / ``fingerprint``."""
        if fingerprint is not None and self.backbone != fingerprint:
            raise BackboneMismatchError(
                f"this persona was made for backbone {self.backbone[:16]}, "
                f"but the backbone in use is {fingerprint[:16]}"
            )
        if spec is not None:
            mine = self.spec
            if (mine.layers, mine.kv_heads, mine.head_dim) != (spec.layers, spec.kv_heads, spec.head_dim):
                raise PrefixShapeError(
                    "prefix shape (layers, kv_heads, head_dim) = "
                    f"{(mine.layers, mine.kv_heads, mine.head_dim)} does not match the backbone's "
                    f"{(spec.layers, spec.kv_heads, spec.head_dim)}"
                )

    # --- serialisation (safetensors bytes, bounded header) ---------------------
    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        metadata = {
            "format": "persona-prefix/1",
            "backbone": self.backbone,
            "method": self.method,
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        return save({KV_TENSOR: self.kv}, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, expect: PrefixSpec | None = None) -> "Prefix":
        """Parse safetensors bytes; bounds-check the header before parsing."""
        if len(data) < 8:
            raise PrefixShapeError("prefix data is truncated")
        (header_len,) = struct.unpack("<Q", data[:8])
        if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
            raise PrefixShapeError("prefix data has an invalid header length")
        try:
            header = json.loads(data[8 : 8 + header_len])
            info = header[KV_TENSOR]
            metadata = header.get("__metadata__", {})
            if set(header) - {KV_TENSOR, "__metadata__"}:
                raise ValueError("unexpected tensors")
            dtype = {"F32": "float32", "F16": "float16"}[info["dtype"]]
            shape = tuple(int(x) for x in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
            if len(shape) != 5 or start != 0 or end != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise ValueError("inconsistent tensor")
            body = data[8 + header_len :]
            if len(body) != end:
                raise ValueError("length mismatch")
            kv = np.frombuffer(body, dtype=dtype).reshape(shape).copy()
            meta = json.loads(metadata.get("meta", "{}"))
            if not isinstance(meta, dict):
                raise ValueError("meta is not a mapping")
        except PrefixShapeError:
            raise
        except Exception as exc:  # any structural problem is one clean error
            raise PrefixShapeError(f"prefix data is malformed ({type(exc).__name__})") from None
        prefix = cls(kv=kv, backbone=str(metadata.get("backbone", "")),
                     method=str(metadata.get("method", "unknown")), meta=meta)
        if expect is not None:
            prefix.check(expect)
            if prefix.spec.dtype != expect.dtype:
                raise PrefixShapeError(f"prefix dtype {prefix.spec.dtype} != expected {expect.dtype}")
        return prefix
