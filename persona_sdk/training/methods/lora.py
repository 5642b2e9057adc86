"""LoRA adapters on the backbone (PEFT), for the explicit modes (PAL).

:func:`attach` injects trainable low-rank matrices into the frozen backbone in
place (``bb.model`` keeps working with :mod:`persona_sdk.training.data`); the
adapter is saved in PEFT's layout (``adapter_config.json`` +
``adapter_model.safetensors``, weights in float16 to ship small) and merged
into a plain causal LM for export by :mod:`persona_sdk.explicit.merge`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import AdapterError, MissingDependencyError
from ..backbone import TrainBackbone, torch_module

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - the [train] extra is missing
        raise MissingDependencyError("LoRA adapters need peft: pip install 'persona-sdk[train]'") from None
    return peft


def attach(bb: TrainBackbone, rank: int, alpha: float, targets=TARGETS, seed: int = 0, top_layers: int = 0):
    """Inject a fresh LoRA (A random, B zero: the model is unchanged) into ``bb.model``; the PeftModel.

    ``top_layers`` > 0: only the top that many decoder layers get LoRA matrices, so backward
    passes stop there (cheaper steps on a CPU)."""
    torch = torch_module()
    peft = _peft()
    torch.manual_seed(seed)
    layers = None
    if top_layers and top_layers < bb.layers:
        layers = list(range(bb.layers - top_layers, bb.layers))
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                             bias="none", task_type="CAUSAL_LM", layers_to_transform=layers,
                             layers_pattern="layers" if layers else None)
    return peft.get_peft_model(bb.model, config)


def trainable(peft_model) -> list:
    return [p for p in peft_model.parameters() if p.requires_grad]


def state(peft_model) -> dict:
    """The adapter's weights (PEFT key names), detached copies in float32."""
    peft = _peft()
    return {k: v.detach().clone().float() for k, v in peft.get_peft_model_state_dict(peft_model).items()}


def load_state(peft_model, weights: dict) -> None:
    peft = _peft()
    result = peft.set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in getattr(result, "unexpected_keys", []) or []]
    if missing:
        raise AdapterError(f"the adapter holds {len(missing)} weights this model has no place for")


def save(peft_model, weights: dict, out_dir: str | Path) -> list[Path]:
    """Write ``weights`` in PEFT's layout (float16) with the model's LoRA config; the files written."""
    from safetensors.torch import save as to_bytes

    from ...fileio import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = peft_model.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    config["base_model_name_or_path"] = None
    data = to_bytes({k: v.detach().half().contiguous() for k, v in weights.items()}, metadata={"format": "pt"})
    atomic_write(out / ADAPTER_WEIGHTS, data, private=False)
    atomic_write(out / ADAPTER_CONFIG, (json.dumps(config, indent=2, sort_keys=True, default=str) + "\n").encode(),
                 private=False)
    return [out / ADAPTER_CONFIG, out / ADAPTER_WEIGHTS]


def load(adapter_dir: str | Path) -> tuple[dict, dict]:
    """(LoRA config dict, weights float32) of an adapter folder in PEFT's layout."""
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
        weights = {k: v.float() for k, v in load_file(str(folder / ADAPTER_WEIGHTS)).items()}
    except FileNotFoundError:
        raise AdapterError(f"{folder} is not a LoRA adapter folder ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})") from None
    except Exception as exc:
        raise AdapterError(f"the adapter in {folder} is corrupt ({type(exc).__name__})") from None
    return config, weights
