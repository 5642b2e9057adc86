"""persona: learn a person's implicit persona as a KV prefix on a frozen LM,
keep it encrypted on their disk, and chat in their voice through ONNX Runtime.

``import persona_sdk`` is light: no torch, no onnxruntime until used.
"""

from __future__ import annotations

import os as _os
import sys as _sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# --- no telemetry from dependencies ---------------------------------------------
# onnxruntime ships a telemetry client: each session queues events (OS, CPU, a device
# id, paths, graph names) in ~/.cache/Microsoft/DeveloperTools/.onnxruntime and a
# long-lived process sends them to an events host. It reads ORT_DISABLE_TELEMETRY
# once, when onnxruntime is imported (onnxruntime.disable_telemetry_events() does not
# stop it). Every way to onnxruntime through persona -- SDK, CLI, exporters,
# benchmarks -- imports this package first, so the switch lives here and is forced
# on; child processes inherit it. Hugging Face Hub telemetry (export and training
# paths) is switched off the same way.
QUIET_ENV = {"ORT_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def _quiet_dependencies() -> None:
    late = "onnxruntime" in _sys.modules and _os.environ.get("ORT_DISABLE_TELEMETRY") != "1"
    _os.environ.update(QUIET_ENV)
    if late:
        import warnings

        from .errors import PersonaWarning

        warnings.warn(
            "onnxruntime was imported before persona_sdk, so its telemetry could not be switched off "
            "in this process: import persona_sdk first, or set ORT_DISABLE_TELEMETRY=1",
            PersonaWarning, stacklevel=3)


_quiet_dependencies()

# public name -> module that defines it (imported on first use)
_LAZY = {
    "PersonaAgent": "agent",
    "ReplyWorker": "worker",
    "ReplyDone": "worker",
    "GenerationConfig": "config",
    "Prefix": "prefix",
    "PrefixSpec": "prefix",
    "Turn": "conversation",
    "Vault": "vault",
    "enroll": "enrollment",
    "EnrollResult": "enrollment",
    "TrainConfig": "training.config",
    "errors": None,
}

if TYPE_CHECKING:  # pragma: no cover
    from . import errors
    from .agent import PersonaAgent
    from .config import GenerationConfig
    from .conversation import Turn
    from .enrollment import EnrollResult, enroll
    from .prefix import Prefix, PrefixSpec
    from .training.config import TrainConfig
    from .vault import Vault
    from .worker import ReplyDone, ReplyWorker


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'persona_sdk' has no attribute {name!r}")
    module = _LAZY[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_LAZY)
