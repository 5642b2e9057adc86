"""A LoRA adapter merged into its backbone: a plain causal-LM folder the exporters take
like any backbone (its own fingerprint, its own cached ONNX exports).

Built once per (backbone, adapter) into ``cache_dir()/explicit/<mode>-<adapter
sha256[:16]>/`` (safetensors, config, tokenizer), recorded in
``persona-merge.json`` (the adapter's sha256 and the base fingerprint), and
written atomically (temp folder, rename). Merging needs torch and peft, imported
only here, only when building.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .. import paths
from ..errors import AdapterError, ExportNotReadyError, MissingDependencyError

MERGE_RECORD = "persona-merge.json"
COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def merged_dir(mode: str, adapter_sha256: str, cache_root: Path | None = None) -> Path:
    root = Path(cache_root) if cache_root is not None else paths.cache_dir()
    return root / "explicit" / f"{mode}-{adapter_sha256[:16]}"


def is_merged(folder: Path, adapter_sha256: str, base_fingerprint: str) -> bool:
    """Whether ``folder`` holds this adapter merged into this base (complete, as recorded)."""
    try:
        record = json.loads((Path(folder) / MERGE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("adapter_sha256") == adapter_sha256
            and record.get("base_fingerprint") == base_fingerprint
            and (Path(folder) / "config.json").is_file() and (Path(folder) / "tokenizer.json").is_file()
            and any(Path(folder).glob("*.safetensors")))


def ensure_merged(mode: str, base_dir: Path, adapter_dir: Path, adapter_sha256: str, base_fingerprint: str, *,
                  build: bool = False, command: str = "", progress: Callable[[str], None] | None = None,
                  cache_root: Path | None = None) -> Path:
    """The folder of ``adapter_dir`` merged into ``base_dir`` (built first with ``build=True``)."""
    target = merged_dir(mode, adapter_sha256, cache_root)
    if is_merged(target, adapter_sha256, base_fingerprint):
        return target
    if not build:
        raise ExportNotReadyError(f"the {mode} model (adapter merged into the backbone) is not built yet; build it "
                                  f"once with `{command}` (or open it with build=True)")
    say = progress or (lambda msg: None)
    say(f"First use of {mode}: merging its adapter into the backbone (once; a minute or two), then building "
        f"its ONNX export like the backbone's. Later runs reuse them from {target.parent}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".merge-{mode}-", dir=target.parent))
    try:
        merge_into(base_dir, adapter_dir, tmp / "model")
        (tmp / "model" / MERGE_RECORD).write_text(json.dumps(
            {"mode": mode, "adapter_sha256": adapter_sha256, "base_fingerprint": base_fingerprint}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        (tmp / "model").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{mode}: merged model ready at {target}")
    return target


def merge_into(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Load the base, apply the LoRA adapter (PEFT layout), merge it into the weights, save a plain model."""
    try:
        import peft
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise MissingDependencyError("building an explicit mode's model needs the [export] extra (torch, "
                                     "transformers, peft): pip install 'persona-sdk[export]'") from None
    from ..training.methods import lora

    config, weights = lora.load(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    known = {f for f in peft.LoraConfig.__dataclass_fields__}
    lcfg = peft.LoraConfig(**{k: v for k, v in config.items() if k in known and k not in ("peft_type",)})
    wrapped = peft.get_peft_model(model, lcfg)
    result = peft.set_peft_model_state_dict(wrapped, weights)
    if getattr(result, "unexpected_keys", None):
        raise AdapterError(f"the adapter in {adapter_dir} does not fit the backbone {base_dir}")
    merged = wrapped.merge_and_unload()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    for name in COPIED:
        if (Path(base_dir) / name).is_file():
            shutil.copy2(Path(base_dir) / name, out_dir / name)
    return out_dir
