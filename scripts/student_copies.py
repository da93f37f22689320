"""Write student copies of the chapters: solution cells replaced by empty answer cells, outputs cleared.

    .venv/bin/python scripts/student_copies.py OUT_DIR [CHAPTER.ipynb ...]   (default: every book/chapters/*.ipynb)

Solutions are the code cells tagged ``solution``; each becomes a code cell holding only a comment, so that the
check cell after it fails until the student writes an answer.
"""

import sys
from pathlib import Path

import nbformat

STUB = "# Your answer here: write the code, then run the check cell below."


def student_copy(src: Path, dst: Path) -> int:
    nb = nbformat.read(src, as_version=4)
    replaced = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if "solution" in cell.get("metadata", {}).get("tags", []):
            nb.cells[i] = nbformat.v4.new_code_cell(STUB, id=cell.get("id"))
            replaced += 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return replaced


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    out = Path(argv[0])
    chapters = [Path(p) for p in argv[1:]] or sorted(Path(__file__).parent.parent.glob("book/chapters/*.ipynb"))
    for src in chapters:
        n = student_copy(src, out / src.name)
        print(f"{out / src.name}: {n} solutions removed")


if __name__ == "__main__":
    main(sys.argv[1:])
