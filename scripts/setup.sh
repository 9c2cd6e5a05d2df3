#!/usr/bin/env bash
# Install dia-ray into ./.venv (idempotent). Used by the README's two commands and by .ci/run.
#   - uv with bytecode compiled (workers and tests import torch/ray many times; .pyc saves ~12 s per process)
#   - torch: the CPU wheel when the machine has no NVIDIA driver, the regular CUDA wheel otherwise
#   - medmnist without its torchvision dependency (see pyproject.toml)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DIA_RAY_VENV:-.venv}
PY=${PYTHON:-python3}
if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install -q --user uv >/dev/null 2>&1 || "$PY" -m pip install -q uv
  export PATH="$HOME/.local/bin:$PATH"
fi
UV=$(command -v uv || echo "$PY -m uv")
[ -x "$VENV/bin/python" ] || $UV venv -q -p "$PY" "$VENV"
export UV_COMPILE_BYTECODE=1
args=()
[ -n "${PIP_FIND_LINKS:-}" ] && args+=(--find-links "$PIP_FIND_LINKS")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_spec="torch>=2.4,<2.15"
else
  torch_spec="torch==2.13.0"   # resolves to the local +cpu wheel when one is on --find-links
fi
$UV pip install -q --python "$VENV/bin/python" "${args[@]}" "$torch_spec" -e ".[dev]"
$UV pip install -q --python "$VENV/bin/python" "${args[@]}" --no-deps "medmnist>=3.0"
$UV pip install -q --python "$VENV/bin/python" "${args[@]}" "$torch_spec" scikit-image fire
echo "dia-ray installed in $VENV ($("$VENV/bin/python" -c 'import torch,ray;print("torch",torch.__version__,"ray",ray.__version__)'))"
