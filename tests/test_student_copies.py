"""Student copies (scripts/student_copies.py): every check cell fails there, and passes with the master's answer.

Each chapter's student copy is executed once in the smoke profile, in one kernel (about 3-4 minutes for the seven
chapters on 2 CPU cores). After each exercise's graded cell the test runs, in the same kernel, the master's answer
cells and check cell again, then deletes every name they defined, so:

* a check cell that passes without an answer fails the test (it would pass a student who wrote nothing);
* a check cell that fails with the master's answer fails the test (a broken exercise);
* an exercise that needs a previous exercise's answer fails the test (exercises are independent);
* an open-ended experiment's sample solution must run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parent.parent
CHAPTERS = sorted((ROOT / "book" / "chapters").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "scripts"))
import student_copies  # noqa: E402

SNAPSHOT = "__before_exercise = set(globals())"
FORGET = ("for __name in set(globals()) - __before_exercise - {'__before_exercise'}:\n"
          "    if not __name.startswith('_'):\n"
          "        del globals()[__name]")


def exercises(nb) -> list[tuple[int, list[int]]]:
    """(index of a graded cell, indices of the answer code cells before it) for each exercise of the notebook."""
    out, answers = [], []
    for i, cell in enumerate(nb.cells):
        graded = cell.metadata.get("nbgrader", {}).get("grade")
        if student_copies.is_answer(cell) and cell.cell_type == "code":
            answers.append(i)
        if graded:
            out.append((i, answers))
            answers = []
    assert not answers, "an answer cell after the last graded cell"
    return out


def augmented(master, copy) -> tuple[nbformat.NotebookNode, dict]:
    """The student copy with the master's answers and checks re-run after each exercise; roles of the cells."""
    nb = nbformat.v4.new_notebook(metadata=copy.metadata)
    after = {graded: answers for graded, answers in exercises(master)}
    roles = {}
    for i, cell in enumerate(copy.cells):
        roles[len(nb.cells)] = ("check" if student_copies.is_check(master.cells[i]) else
                                "stub" if student_copies.is_answer(master.cells[i]) else "chapter", i)
        nb.cells.append(cell)
        if i in after:
            nb.cells.append(nbformat.v4.new_code_cell(SNAPSHOT))
            for a in after[i]:
                roles[len(nb.cells)] = ("master answer", a)
                nb.cells.append(nbformat.v4.new_code_cell(master.cells[a].source))
            if student_copies.is_check(master.cells[i]):
                roles[len(nb.cells)] = ("master check", i)
                nb.cells.append(nbformat.v4.new_code_cell(master.cells[i].source))
            nb.cells.append(nbformat.v4.new_code_cell(FORGET))
    return nb, roles


def problems(master_path: Path, tmp_path: Path) -> list[str]:
    """Generate the student copy of `master_path`, execute it with the master's answers interleaved, list problems."""
    from nbclient import NotebookClient

    copy_path = tmp_path / "student" / master_path.name
    subprocess.run([sys.executable, str(ROOT / "scripts" / "student_copies.py"), str(copy_path.parent),
                    str(master_path)], check=True, capture_output=True)
    master = nbformat.read(master_path, as_version=4)
    copy = nbformat.read(copy_path, as_version=4)
    assert [c.cell_type for c in copy.cells] == [c.cell_type for c in master.cells]
    last = max(i for i, _ in exercises(master))
    master.cells, copy.cells = master.cells[:last + 1], copy.cells[:last + 1]  # nothing after the last exercise
    nb, roles = augmented(master, copy)
    env = {"IDCLAB_PROFILE": "smoke", "HF_HUB_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=1800, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(master_path.parent)}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    found = []
    for j, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        role, i = roles.get(j, ("helper", None))
        what = f"{master_path.name} cell {i} ({role})"
        if role == "check" and not errors:
            found.append(f"{what} passes without an answer: {cell.source.splitlines()[0]!r}")
        elif role in ("chapter", "helper", "master answer", "master check") and errors:
            found.append(f"{what} raised {errors[0].ename}: {errors[0].evalue}"[:400])
    return found


def test_exercises_are_marked_for_nbgrader():
    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert len(graded) >= 3, f"{path.name}: at least 3 graded exercises"
        ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
        assert len(ids) == len(set(ids)), f"{path.name}: grade ids repeat"
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution"):
                assert student_copies.BEGIN in cell.source and student_copies.END in cell.source, (
                    f"{path.name}: answer cell {meta['grade_id']} without solution markers")
            if meta.get("grade"):
                assert meta.get("points", 0) > 0, f"{path.name}: {meta['grade_id']} has no points"
            if student_copies.is_check(cell):
                assert meta.get("locked"), f"{path.name}: check {meta['grade_id']} is not locked"
        for graded_i, answers in exercises(nb):
            assert answers, f"{path.name}: graded cell {graded_i} has no answer cell before it"


@pytest.mark.parametrize("book", [False, True], ids=["handout", "book"])
def test_copies_hide_solutions_and_hidden_tests(tmp_path, book):
    args = ["--book"] if book else []
    subprocess.run([sys.executable, str(ROOT / "scripts" / "student_copies.py"), *args, str(tmp_path)], check=True,
                   capture_output=True)
    for path in CHAPTERS:
        master = nbformat.read(path, as_version=4)
        copy = nbformat.read(tmp_path / path.name, as_version=4)
        text = json.dumps([c.source for c in copy.cells])
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
            assert marker not in text, f"{path.name}: {marker} left in the copy"
        for m, c in zip(master.cells, copy.cells):
            tags = c.metadata.get("tags", [])
            assert "solution" not in tags and "hide-input" not in tags
            if student_copies.is_answer(m):
                assert "YOUR" in c.source
                solution = m.source.split(student_copies.BEGIN)[1].split(student_copies.END)[0].strip()
                assert solution not in c.source
                assert ("skip-execution" in tags) == (book and c.cell_type == "code")
            elif student_copies.is_check(m):
                assert ("skip-execution" in tags) == book
            else:
                assert c.source == m.source
            if c.cell_type == "code":
                assert c.outputs == [] and c.execution_count is None


def test_copies_match_nbgrader(tmp_path):
    """Where nbgrader is installed, its preprocessors give the same cell sources as the script."""
    pre = pytest.importorskip("nbgrader.preprocessors")
    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        for p in (pre.ClearSolutions(), pre.ClearHiddenTests(), pre.ClearOutput()):
            nb, _ = p.preprocess(nb, {})
        ours = student_copies.student_notebook(nbformat.read(path, as_version=4))
        assert [c.source for c in nb.cells] == [c.source for c in ours.cells], path.name


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_student_copy_checks_fail_and_master_answers_pass(path, tmp_path):
    found = problems(path, tmp_path)
    assert not found, "\n".join(found)
