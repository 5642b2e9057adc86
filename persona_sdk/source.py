"""The source prefix (PersonaPKT stage 1): one KV block trained over many speakers.

Maintainers train it once per backbone (``persona source train``); every
``persona enroll`` then starts from it. This module holds the shipped file
(``save_source`` / ``load_source``, with its recorded sha256) and is the public
face of the training side: ``train_source`` and ``SourceConfig``
(:mod:`persona_sdk.training.source`), the methods' helpers
(:mod:`persona_sdk.training.methods`) and the corpora
(:mod:`persona_sdk.training.corpora`). Methods:

- ``plain``: batches drawn from all speakers' replies pooled (rate ∝ n).
- ``temperature``: each example's speaker drawn with rate ∝ n^(1/T) (T = 10).
- ``ppreptile``: Reptile on the prefix only.
- ``mtml`` / ``amtml``: Reptile with a persona-reconstruction task (corpora with
  persona descriptions; used in training only).

torch is imported only inside functions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import SourcePrefixError
from .fileio import atomic_write
from .prefix import Prefix
from .training.config import META_METHODS, SOURCE_METHODS, SourceConfig
from .training.corpora import Speaker, chitchat_part_a, spc_speakers, spc_split
from .training.methods.mixing import speaker_rates
from .training.methods.mtml import RECONSTRUCT_PROMPT, reconstruction_example
from .training.source import SourceSummary, train_source

SHIPPED_DIR = Path(__file__).parent / "data" / "source_prefix"
SHIPPED_FILE = "source_prefix.safetensors"
SHIPPED_INFO = "SOURCE.json"

__all__ = ["SOURCE_METHODS", "META_METHODS", "RECONSTRUCT_PROMPT", "SHIPPED_DIR", "SHIPPED_FILE", "SHIPPED_INFO",
           "SourceConfig", "SourceSummary", "Speaker", "train_source", "speaker_rates", "reconstruction_example",
           "chitchat_part_a", "spc_speakers", "spc_split", "save_source", "load_source", "shipped_available"]


# --- the shipped source prefix ---------------------------------------------------
def save_source(prefix: Prefix, out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write ``source_prefix.safetensors`` + ``SOURCE.json`` (with its sha256) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = prefix.to_bytes()
    atomic_write(out / SHIPPED_FILE, data, private=False)
    info = {**info, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "shape": list(prefix.kv.shape), "backbone": prefix.backbone, "method": prefix.method}
    atomic_write(out / SHIPPED_INFO, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8"),
                 private=False)
    return out / SHIPPED_FILE


def load_source(path: str | Path | None = None) -> Prefix:
    """A source prefix file (None = the shipped one); checks the recorded sha256 when present."""
    file = Path(path) if path is not None else SHIPPED_DIR / SHIPPED_FILE
    if file.is_dir():
        file = file / SHIPPED_FILE
    if not file.is_file():
        raise SourcePrefixError(f"source prefix not found: {file}")
    data = file.read_bytes()
    info_file = file.with_name(SHIPPED_INFO)
    if info_file.is_file():
        try:
            want = json.loads(info_file.read_text()).get("sha256")
        except ValueError:
            want = None
        if want and hashlib.sha256(data).hexdigest() != want:
            raise SourcePrefixError(f"{file.name} does not match the sha256 recorded in {SHIPPED_INFO}")
    try:
        return Prefix.from_bytes(data)
    except Exception as exc:
        raise SourcePrefixError(f"{file} is not a valid prefix file ({exc})") from None


def shipped_available() -> bool:
    return (SHIPPED_DIR / SHIPPED_FILE).is_file()
