#!/usr/bin/env bash
# Install dia-ray into ./.venv (idempotent). Used by the README's two commands and by .ci/run.
#   - uv with bytecode compiled (workers and tests import torch/ray many times; .pyc saves ~12 s per process)
#   - torch: the CPU wheel when the machine has no NVIDIA driver, the regular CUDA wheel otherwise
#   - medmnist without its torchvision dependency (see pyproject.toml)
#   - opt-in, for the report's tests (they skip, saying so, without): Debian's chromium (DIA_RAY_TEST_BROWSER=1 or
#     --with-browser) and pdflatex with booktabs (DIA_RAY_TEST_LATEX=1 or --with-latex), installed when missing and
#     apt-get is usable (as root)
set -euo pipefail
with_browser=${DIA_RAY_TEST_BROWSER:-0}
with_latex=${DIA_RAY_TEST_LATEX:-0}
for arg in "$@"; do
  case "$arg" in
    --with-browser) with_browser=1 ;;
    --with-latex) with_latex=1 ;;
    *) echo "scripts/setup.sh: unknown option '$arg' (known: --with-browser, --with-latex)" >&2; exit 2 ;;
  esac
done
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
apt_packages=()
[ "$with_browser" = 1 ] && ! command -v chromium >/dev/null 2>&1 && apt_packages+=(chromium fonts-dejavu-core)
[ "$with_latex" = 1 ] && ! command -v pdflatex >/dev/null 2>&1 &&
  apt_packages+=(texlive-latex-base texlive-latex-recommended)
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null; } ||
      echo "scripts/setup.sh: could not install ${apt_packages[*]}; their tests will skip" >&2
  else
    echo "scripts/setup.sh: installing ${apt_packages[*]} needs root and apt-get; their tests will skip" >&2
  fi
fi
echo "dia-ray installed in $VENV ($("$VENV/bin/python" -c 'import torch,ray;print("torch",torch.__version__,"ray",ray.__version__)'))"
