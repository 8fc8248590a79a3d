#!/usr/bin/env bash
# Create .venv and install the project with everything it needs. Idempotent: a second run with
# an unchanged pyproject.toml only checks and exits.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.fourdthinker-installed"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY" -c "import dift, transformers, deepspeed" 2>/dev/null; then
    echo "[setup] .venv is up to date"
    exit 0
fi

"$PY" -m pip install -q --upgrade pip setuptools wheel
# torch first (CUDA build, taken from local disk here): deepspeed's build reads it.
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# DeepSpeed without prebuilt ops (no CUDA toolkit needed); its CPU comm op is JIT-built on first use.
DS_BUILD_OPS=0 "$PY" -m pip install -q --no-build-isolation "deepspeed>=0.19.8,<0.20"
# decord (the original's first video decoder) has a wheel for Linux x86_64 only.
EXTRAS="dev"
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then EXTRAS="dev,decord"; fi
"$PY" -m pip install -q -e ".[$EXTRAS]"
echo "$WANT" > "$STAMP"
echo "[setup] installed: $("$PY" -c 'import torch, transformers, trl, deepspeed; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, deepspeed {deepspeed.__version__}")')"
