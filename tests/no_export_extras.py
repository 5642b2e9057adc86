"""Run Python in a subprocess where the export side cannot be imported.

``BLOCK`` installs a meta-path finder that raises ImportError for torch,
transformers, optimum, peft, onnx and ``persona_sdk.exporters``, as on a
chat-only install (onnxruntime stays importable), so a test can prove a code
path never needs them: importing one fails instead of passing silently.
"""

from __future__ import annotations

import subprocess
import sys

BLOCKED = ("torch", "transformers", "optimum", "peft", "onnx", "persona_sdk.exporters")

BLOCK = f"""
import sys

class _NoExportExtras:
    blocked = {BLOCKED!r}

    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in self.blocked):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoExportExtras())
"""


def run_without_export_extras(code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -c BLOCK + code``; the environment (PERSONA_HOME included) is inherited."""
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=timeout)
