"""The chapters follow the chapter template; student copies are solution-free; the book build executes every chapter."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from idclab import configs, project

BOOK = Path(__file__).parent.parent / "book"
CHAPTERS = sorted((BOOK / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_template(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source
    assert first.startswith("# "), "the first cell is the title"
    assert project.colab_badge(path.name) in first, "run  python scripts/sync_release.py"
    assert "**Learning goals.**" in first
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert 'if "google.colab" in sys.modules:' in code[0].source and "IDCLAB_PROFILE" in code[0].source
    assert f'%pip install -q "{project.pip_requirement()}"' in code[0].source, "run  python scripts/sync_release.py"
    assert nb.metadata.get("accelerator") == "GPU"
    solutions = [c for c in code if "solution" in c.metadata.get("tags", [])]
    assert len(solutions) >= 3, "at least 3 exercises, each with a solution cell"
    for c in code:
        assert c.outputs == [] and c.execution_count is None, "outputs are stripped in git"
    assert (BOOK / "_toc.yml").read_text().count(f"chapters/{path.stem}") == 1


# Student copies (nbgrader's format, scripts/student_copies.py) are tested in tests/test_student_copies.py.


def test_book_config_executes_every_chapter_with_room_for_a_slow_machine():
    execute = yaml.safe_load((BOOK / "_config.yml").read_text())["execute"]
    # scripts/build_book.sh executes every chapter at build time; scripts/test.sh sets this to "off" on a copy that
    # pytest --nbmake has already executed (and stops with a clear error if the entry is missing)
    assert execute["execute_notebooks"] == "force"
    assert execute["allow_errors"] is False
    # the slowest toy-profile cell takes about 11 minutes on a 2-core CPU: leave room for a machine 5x slower
    assert execute["timeout"] >= 3600, "raise execute.timeout in book/_config.yml (seconds per cell)"


def test_badges_install_cells_and_launch_buttons_follow_idclab_project():
    """One source of truth: scripts/sync_release.py --check finds every chapter and book/_config.yml up to date."""
    script = Path(__file__).parent.parent / "scripts" / "sync_release.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    assert config["repository"]["url"] == project.REPOSITORY
    assert config["repository"]["branch"] == project.RELEASE  # the launch buttons open this release's notebooks
    assert config["launch_buttons"]["colab_url"] == project.COLAB
    slug = project.github_slug()
    for path in CHAPTERS:
        text = path.read_text()
        # every link to this repository's notebooks and every install of it names the release, not a moving branch
        assert text.count(f"{slug}/blob/") == text.count(f"{slug}/blob/{project.RELEASE}/") >= 1, path.name
        assert text.count(f"{slug}@") == text.count(f"{slug}@{project.RELEASE}") >= 1, path.name


def test_sync_release_check_fails_on_a_stale_badge_and_install_line(tmp_path):
    """The check above can fail: a chapter copy with last release's badge and an unpinned install line is reported."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    try:
        import sync_release
    finally:
        sys.path.pop(0)
    nb = nbformat.read(CHAPTERS[0], as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace(project.RELEASE, "main")
    first = next(c for c in nb.cells if c.cell_type == "code")
    first.source = first.source.replace(f"@{project.RELEASE}", "@main")
    stale = tmp_path / CHAPTERS[0].name
    nbformat.write(nb, stale)
    problems = sync_release.sync_chapter(stale, write=False)
    assert any("Colab badge" in p for p in problems) and any("first code cell" in p for p in problems)
    assert sync_release.sync_chapter(stale, write=True) and sync_release.sync_chapter(stale, write=False) == []
    fixed = nbformat.read(stale, as_version=4)
    assert [c.source for c in fixed.cells[1:] if c.cell_type == "markdown"] == \
        [c.source for c in nb.cells[1:] if c.cell_type == "markdown"], "only the badge and the set-up cell change"


def test_setup_cell_is_a_colab_form_over_the_library_profiles():
    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    try:
        import sync_release
    finally:
        sys.path.pop(0)
    cell = sync_release.setup_cell()
    form = next(line for line in cell.splitlines() if line.startswith("IDCLAB_PROFILE ="))
    default, choices = re.fullmatch(r'IDCLAB_PROFILE = "(\w+)"  # @param (\[.*\])', form).groups()
    assert default == configs.DEFAULT_PROFILE and json.loads(choices) == list(configs.PROFILES)
    assert "get_profile(form=IDCLAB_PROFILE)" in cell  # the environment override lives in the library


def test_get_profile_environment_overrides_the_form(monkeypatch):
    monkeypatch.delenv("IDCLAB_PROFILE", raising=False)
    assert configs.get_profile(form="smoke") == "smoke"
    assert configs.get_profile() == configs.DEFAULT_PROFILE
    monkeypatch.setenv("IDCLAB_PROFILE", "smoke")
    assert configs.get_profile(form="toy") == "smoke"  # CI's smoke run wins over the reader's form
    assert configs.get_profile("toy", form="paper") == "toy"  # an explicit argument wins over both
    with pytest.raises(ValueError, match="the form's IDCLAB_PROFILE 'huge'"):
        configs.get_profile(form="huge")
    monkeypatch.setenv("IDCLAB_PROFILE", "huge")
    with pytest.raises(ValueError, match=r"\$IDCLAB_PROFILE.*unset it"):
        configs.get_profile(form="toy")
