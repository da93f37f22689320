#!/usr/bin/env bash
# The main job: install, then build the executed book (every chapter runs for real) into book/_build/html.
# Profile: IDCLAB_PROFILE (default toy: the Shapes world on CPU, a few minutes per chapter).
# Edition: IDCLAB_EDITION=student (default: the public book, exercises without solutions, from the student
# copies of scripts/student_copies.py --book) or instructor (the chapters as they are, solutions collapsed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export IDCLAB_PROFILE=${IDCLAB_PROFILE:-toy}
OUT=${1:-book}
EDITION=${IDCLAB_EDITION:-student}
case "$EDITION" in
  instructor) SRC=book ;;
  student)
    # a copy of book/ whose chapters are the student copies (answers emptied, hidden tests removed, exercise cells
    # tagged skip-execution so that the build executes everything else)
    SRC=$(mktemp -d)/book
    mkdir -p "$SRC"
    tar -C book --exclude=./_build --exclude=.jupyter_cache -cf - . | tar -C "$SRC" -xf -
    .venv/bin/python scripts/student_copies.py --book "$SRC/chapters" book/chapters/*.ipynb >&2 ;;
  *) echo "IDCLAB_EDITION must be student or instructor, not '$EDITION'" >&2; exit 2 ;;
esac
echo "building the $EDITION edition with IDCLAB_PROFILE=$IDCLAB_PROFILE into $OUT/_build/html" >&2
.venv/bin/jupyter-book build "$SRC" --path-output "$OUT" -W -n --keep-going
echo "open $OUT/_build/html/index.html" >&2
