"""persona: learn a person's implicit persona as a KV prefix on a frozen LM,
keep it encrypted on their disk, and chat in their voice through ONNX Runtime.

``import persona_sdk`` is light: no torch, no onnxruntime until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
    "enroll": "enroll",
    "EnrollResult": "enroll",
    "TrainConfig": "trainer",
    "errors": None,
}

if TYPE_CHECKING:  # pragma: no cover
    from . import errors
    from .agent import PersonaAgent
    from .config import GenerationConfig
    from .conversation import Turn
    from .prefix import Prefix, PrefixSpec
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
