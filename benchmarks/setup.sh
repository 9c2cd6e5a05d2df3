#!/usr/bin/env bash
# Install the benchmark's extra into ./.venv (after scripts/setup.sh): lucidrains' denoising-diffusion-pytorch at the
# version the reference pinned (0.27.12), WITHOUT its torchvision dependency — the index's torchvision wheel breaks
# beside the CPU torch ("operator torchvision::nms does not exist") and the package only needs torchvision for its
# folder Dataset and Trainer, which the benchmark does not use (benchmarks/lucidrains.py explains the import) — plus
# the dependencies it does use (einops, ema-pytorch; accelerate, pillow and tqdm come with dia-ray).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DIA_RAY_VENV:-.venv}
UV=$(command -v uv || echo "$HOME/.local/bin/uv")
args=()
[ -n "${PIP_FIND_LINKS:-}" ] && args+=(--find-links "$PIP_FIND_LINKS")
$UV pip install -q --python "$VENV/bin/python" "${args[@]}" --no-deps "denoising-diffusion-pytorch==0.27.12"
$UV pip install -q --python "$VENV/bin/python" "${args[@]}" "einops>=0.6" "ema-pytorch>=0.2"  # keeps the torch installed
"$VENV/bin/python" -c "from benchmarks.lucidrains import describe; print('benchmark extra installed:', describe())"
