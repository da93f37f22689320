"""Write the repository address and release of idclab/project.py into the book; --check only reports.

    python scripts/sync_release.py           rewrite what is out of date (and say what)
    python scripts/sync_release.py --check   exit 1 listing what is out of date (tests/test_book.py runs this)

What it owns, in every chapter: the "Open in Colab" badge of the title cell and the whole first code cell (the
profile form and the pinned install line); in book/_config.yml: repository.url, repository.branch (the release, so
the launch buttons open the notebook of this release) and launch_buttons.colab_url. Run it after changing
REPOSITORY or VERSION in idclab/project.py, or the profiles in idclab/configs.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

from idclab import project
from idclab.configs import DEFAULT_PROFILE, PROFILES

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / project.BOOK_DIR
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")

SETUP_CELL = '''\
# @title Set-up: pick a profile, then run this cell
# The first cell of every chapter (written by scripts/sync_release.py from idclab/project.py). On Colab it installs
# the release of idclab that this book belongs to (Colab already has PyTorch). Where $IDCLAB_PROFILE is set it
# overrides the form: CI runs every chapter with IDCLAB_PROFILE=smoke.
import os
import sys

IDCLAB_PROFILE = "{default}"  # @param {choices}
if "google.colab" in sys.modules:
    %pip install -q "{requirement}"
from idclab.configs import get_profile

PROFILE = get_profile(form=IDCLAB_PROFILE)
print(f"profile: {{PROFILE}}")'''


def setup_cell() -> str:
    """The source of every chapter's first code cell."""
    choices = "[" + ", ".join(f'"{p}"' for p in PROFILES) + "]"
    return SETUP_CELL.format(default=DEFAULT_PROFILE, choices=choices, requirement=project.pip_requirement())


def chapters() -> list[Path]:
    return sorted((BOOK / "chapters").glob("*.ipynb"))


def sync_chapter(path: Path, *, write: bool) -> list[str]:
    """What is out of date in one chapter (fixed in the file when ``write``)."""
    nb = nbformat.read(path, as_version=4)
    problems = []
    title = nb.cells[0]
    badges = BADGE.findall(title.source)
    if len(badges) != 1:
        problems.append(f"{path.name}: the title cell has {len(badges)} Colab badges; it needs exactly one "
                        f"(add {project.colab_badge(path.name)} under the title)")
    elif badges[0] != project.colab_badge(path.name):
        problems.append(f"{path.name}: Colab badge {badges[0]}")
        title.source = title.source.replace(badges[0], project.colab_badge(path.name))
    code = next((c for c in nb.cells if c.cell_type == "code"), None)
    if code is None:
        problems.append(f"{path.name}: no code cell; the first one must be the set-up cell")
    elif code.source != setup_cell():
        problems.append(f"{path.name}: first code cell differs from the set-up cell")
        code.source = setup_cell()
    if write and problems:
        nbformat.write(nb, path)
    return problems


def sync_config(path: Path, *, write: bool) -> list[str]:
    """repository.url / branch and launch_buttons.colab_url of book/_config.yml (edited line by line: comments stay)."""
    want = {("repository", "url"): project.REPOSITORY, ("repository", "branch"): project.RELEASE,
            ("launch_buttons", "colab_url"): f'"{project.COLAB}"'}
    lines = path.read_text().splitlines(keepends=True)
    section, found, problems = None, set(), []
    for i, line in enumerate(lines):
        if re.match(r"^\S", line):
            section = line.split(":")[0].strip()
        m = re.match(r"^(\s+)(\w+):\s*(.*?)\s*$", line)
        if m and (section, m.group(2)) in want:
            key = (section, m.group(2))
            found.add(key)
            if m.group(3) != want[key]:
                problems.append(f"{path.name}: {section}.{key[1]} is {m.group(3)}, not {want[key]}")
                lines[i] = f"{m.group(1)}{key[1]}: {want[key]}\n"
    for key in sorted(set(want) - found):
        problems.append(f"{path.name}: no {key[0]}.{key[1]} entry; add `{key[1]}: {want[key]}` under {key[0]}:")
    if write and problems:
        path.write_text("".join(lines))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="report what is out of date; change nothing")
    args = parser.parse_args(argv)
    problems = sync_config(BOOK / "_config.yml", write=not args.check)
    for path in chapters():
        problems += sync_chapter(path, write=not args.check)
    for line in problems:
        print(line)
    if not args.check and problems:  # rewritten: what is still wrong could not be fixed by this script
        problems = sync_config(BOOK / "_config.yml", write=False)
        problems += [p for path in chapters() for p in sync_chapter(path, write=False)]
        print(*problems, sep="\n") if problems else print("rewritten")
    if problems:
        print(f"out of date with idclab/project.py ({project.REPOSITORY} @ {project.RELEASE}): "
              f"{'run  python scripts/sync_release.py' if args.check else 'fix the lines above by hand'}")
        return 1
    print(f"the book matches idclab/project.py: {project.REPOSITORY} @ {project.RELEASE}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
