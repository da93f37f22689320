#!/usr/bin/env bash
# All tests: install, then unit + integration tests and every chapter under nbmake in one pytest run
# (IDCLAB_PROFILE=smoke), then an offline build of the executed book in the smoke profile (warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
export IDCLAB_PROFILE=smoke
start=$(date +%s)
.venv/bin/python -m pytest tests book/chapters --nbmake --nbmake-timeout=900 -n 2 "$@"
build=$(mktemp -d)
.venv/bin/jupyter-book build book --path-output "$build" -W -n --keep-going >"$build/build.log" 2>&1 \
  || { tail -n 60 "$build/build.log"; echo "book build failed (log: $build/build.log)" >&2; exit 1; }
echo "book build (smoke) ok: $build/_build/html; tests + build took $(( $(date +%s) - start )) s" >&2
