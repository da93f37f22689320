#!/usr/bin/env bash
# All tests, executing each chapter once (IDCLAB_PROFILE=smoke):
#   1. one pytest run: unit + integration tests, and every chapter under nbmake. nbmake runs a temporary copy of
#      book/ with --overwrite, so the copy keeps the executed outputs while the tracked notebooks stay stripped;
#   2. an offline build of that executed copy, with execution turned off (its _config.yml is rewritten to
#      execute_notebooks: "off"; MathJax from Debian's libjs-mathjax where installed) and warnings as errors;
#   3. tests/test_browser.py over every page of that build in headless Chromium (IDCLAB_BOOK_HTML), one
#      screenshot per chapter.
# Extra arguments go to pytest (e.g. -x, -k ...). scripts/build_book.sh is the main job: it executes for real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
export IDCLAB_PROFILE=smoke
unset IDCLAB_BOOK_HTML  # the browser test runs once, on the book built below (step 3)
start=$(date +%s)

work=$(mktemp -d)
copy="$work/book"
mkdir "$copy"
tar -C book --exclude=./_build --exclude=.jupyter_cache -cf - . | tar -C "$copy" -xf -
.venv/bin/python - "$copy/_config.yml" <<'EOF'
import sys
from pathlib import Path

import yaml

path = sys.argv[1]
config = yaml.safe_load(open(path))
if config.get("execute", {}).get("execute_notebooks") is None:
    sys.exit(f"{path}: no execute.execute_notebooks entry; scripts/test.sh expects book/_config.yml to have one")
config["execute"]["execute_notebooks"] = "off"  # pytest --nbmake --overwrite below has executed every chapter
# The public book loads MathJax from a CDN, which CI cannot reach: where Debian's libjs-mathjax is installed (.ci/run
# installs it) this copy uses it instead, so tests/test_browser.py sees the math rendered.
mathjax = Path("/usr/share/javascript/mathjax/MathJax.js")
if mathjax.is_file():
    sphinx = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx["mathjax_path"] = mathjax.as_uri() + "?config=TeX-AMS-MML_HTMLorMML"
    sphinx["mathjax2_config"] = {"tex2jax": {"processClass": "math|tex2jax_process|mathjax_process|output_area"}}
yaml.safe_dump(config, open(path, "w"), sort_keys=False)
EOF

# -c: the copied chapters lie outside the repository, so name its pytest configuration (and rootdir) explicitly.
# A cell may take up to 1800 s: smoke cells take seconds here, so this leaves room for a far slower machine.
.venv/bin/python -m pytest -c pyproject.toml tests "$copy/chapters" --nbmake --overwrite --nbmake-timeout=1800 -n 2 "$@"
.venv/bin/python - "$copy/chapters" <<'EOF'
import sys
from pathlib import Path

import nbformat

for path in sorted(Path(sys.argv[1]).glob("*.ipynb")):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    if not any(c.execution_count for c in cells):
        sys.exit(f"{path.name} was not executed by pytest (deselected?): run scripts/test.sh without -k/--deselect")
EOF
tested=$(date +%s)

.venv/bin/jupyter-book build "$copy" -W -n --keep-going >"$work/build.log" 2>&1 \
  || { tail -n 60 "$work/build.log"; echo "book build failed (log: $work/build.log)" >&2; exit 1; }
echo "book build (smoke, executed once by nbmake) ok: $copy/_build/html" >&2
built=$(date +%s)

# 3. the built book in headless Chromium (apt: chromium, chromium-driver, libjs-mathjax; see .ci/run)
export IDCLAB_BROWSER_SHOTS="$work/screenshots"
IDCLAB_BOOK_HTML="$copy/_build/html" .venv/bin/python -m pytest -c pyproject.toml tests/test_browser.py -q
echo "browser test ok; one screenshot per chapter in $IDCLAB_BROWSER_SHOTS" >&2
echo "pytest (tests + chapters) $(( tested - start )) s, book build $(( built - tested )) s," \
  "browser $(( $(date +%s) - built )) s" >&2
