#!/usr/bin/env bash
# The main job: install, then build the executed book (every chapter runs for real) into book/_build/html.
# Profile: IDCLAB_PROFILE (default toy: the Shapes world on CPU, a few minutes per chapter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export IDCLAB_PROFILE=${IDCLAB_PROFILE:-toy}
OUT=${1:-book}
echo "building the book with IDCLAB_PROFILE=$IDCLAB_PROFILE into $OUT/_build/html" >&2
.venv/bin/jupyter-book build book --path-output "$OUT" -W -n --keep-going
echo "open $OUT/_build/html/index.html" >&2
