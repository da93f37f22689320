#!/usr/bin/env bash
# Create .venv (if missing) and install idclab with the book and dev extras into it.
# torch: the package itself does not pin torch (Colab ships its own). Here we install a matched torch/torchvision
# pair first; override with IDCLAB_TORCH, e.g. IDCLAB_TORCH="torch torchvision" or a CPU wheel index on your laptop.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q ${IDCLAB_TORCH:-torch==2.14.1 torchvision==0.29.1}
fi
.venv/bin/python -m pip install -q -e ".[book,dev]"
command -v java >/dev/null || echo "warning: no java on PATH; caption metrics need it (apt-get install -y default-jre-headless)" >&2
