"""Student copies of the chapters, in nbgrader's format: solutions out, hidden tests out, outputs cleared.

    .venv/bin/python scripts/student_copies.py OUT_DIR [CHAPTER.ipynb ...]          (default: every chapter)
    .venv/bin/python scripts/student_copies.py --book OUT_DIR [CHAPTER.ipynb ...]   (for the student edition of the book)

The chapters (the masters) mark their exercises the way nbgrader does, so an instructor can also run nbgrader itself
on them (``nbgrader generate_assignment``; see book/instructors.md):

* an answer cell has ``metadata.nbgrader.solution = true``; its solution sits between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` and becomes nbgrader's stub (``# YOUR CODE HERE`` / ``raise NotImplementedError()``, or
  ``YOUR ANSWER HERE`` in a markdown cell for an open-ended write-up);
* a check cell is an autograded test cell (``metadata.nbgrader.grade = true``, locked, with points); what sits
  between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` is removed from the copy and runs only when the
  instructor grades.

This script does the same as nbgrader's ClearSolutions, ClearHiddenTests and ClearOutput preprocessors without
needing nbgrader installed (tests/test_student_copies.py checks that both agree where nbgrader is installed). With
``--book`` the answer, check and write-up cells are also tagged ``skip-execution``, so that the book build can execute
a copy without solutions (its check cells would fail) and shows the exercises without outputs.
"""

import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"
SOLUTION_TAGS = {"solution", "hide-input"}  # the master's tags for a collapsed solution; meaningless in a copy


def grading(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_answer(cell) -> bool:
    return bool(grading(cell).get("solution"))


def is_check(cell) -> bool:
    """An autograded test cell: graded, not an answer (an open-ended write-up is graded by hand)."""
    return bool(grading(cell).get("grade")) and not is_answer(cell)


def _cut(source: str, begin: str, end: str, stub: str | None) -> str:
    """Replace every begin ... end region (marker lines included) by `stub` (None: drop it)."""
    out, inside = [], False
    for line in source.splitlines():
        if begin in line:
            if inside:
                raise ValueError(f"nested {begin!r}")
            inside = True
            if stub is not None:
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(indent + s for s in stub.splitlines())
        elif end in line:
            if not inside:
                raise ValueError(f"{end!r} without {begin!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin!r} without {end!r}")
    return "\n".join(out)


def student_notebook(nb, *, book: bool = False):
    """A student copy of the notebook `nb` (changed in place and returned)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if is_answer(cell):
            stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
            cell.source = _cut(cell.source, BEGIN, END, stub) if BEGIN in cell.source else stub
        if BEGIN_HIDDEN in cell.source:
            cell.source = _cut(cell.source, BEGIN_HIDDEN, END_HIDDEN, None)
        tags = [t for t in cell.metadata.get("tags", []) if t not in SOLUTION_TAGS]
        if book and (is_answer(cell) or is_check(cell)) and cell.cell_type == "code":
            tags.append("skip-execution")
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
    return nb


def student_copy(src: Path, dst: Path, *, book: bool = False) -> int:
    """Write the student copy of chapter `src` to `dst`; returns the number of answer cells emptied."""
    nb = nbformat.read(src, as_version=4)
    n = sum(is_answer(c) for c in nb.cells)
    student_notebook(nb, book=book)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return n


def main(argv: list[str]) -> None:
    book = "--book" in argv
    argv = [a for a in argv if a != "--book"]
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    out = Path(argv[0])
    chapters = [Path(p) for p in argv[1:]] or sorted(Path(__file__).parent.parent.glob("book/chapters/*.ipynb"))
    for src in chapters:
        n = student_copy(src, out / src.name, book=book)
        print(f"{out / src.name}: {n} answers emptied")


if __name__ == "__main__":
    main(sys.argv[1:])
