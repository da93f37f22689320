"""What a pip-installed idclab carries: the version and address of idclab/project.py, every subpackage, and the
data scripts behind `idclab data` (tested from a wheel installed outside the repository)."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import setuptools

import idclab
from idclab import cli, project

REPO = Path(__file__).parent.parent


def test_one_place_for_version_and_address():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "idclab.project.VERSION"}
    assert idclab.__version__ == project.VERSION and project.RELEASE == f"v{project.VERSION}"
    slug = project.github_slug()
    assert project.colab_url("x.ipynb") == f"https://colab.research.google.com/github/{slug}/blob/{project.RELEASE}/book/chapters/x.ipynb"
    assert project.pip_requirement() == f"idclab @ git+https://github.com/{slug}@{project.RELEASE}"


def test_pyproject_lists_every_subpackage():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(setuptools.find_packages(str(REPO), include=["idclab*"])) | {"idclab.assets"}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "idclab.data_scripts" in listed


def test_data_command_knows_every_script():
    scripts = {p.stem for p in (REPO / "data_scripts").glob("*.py") if not p.name.startswith("_")}
    assert set(cli.DATA_SCRIPTS.values()) == scripts, "map every data_scripts/ script in idclab.cli.DATA_SCRIPTS"
    assert cli.data_scripts_dir() == REPO / "data_scripts"  # a checkout: the scripts beside the package


def test_data_verify_on_an_empty_folder_reports_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["data", "verify", "clevr", "--root", str(tmp_path)])
    assert exit_.value.code == 1


def test_wheel_installed_idclab_downloads_and_verifies_outside_the_repository(tmp_path):
    """Build a wheel from a copy of the sources, install it into a folder, and run `idclab data` from elsewhere."""
    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("idclab", "data_scripts"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("idclab-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    assert (site / "idclab" / "data_scripts" / "clevr_change.py").is_file()

    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install
    work = tmp_path / "elsewhere"
    (work / "empty").mkdir(parents=True)

    def idclab_(*args):
        return subprocess.run([str(site / "bin" / "idclab"), *args], cwd=work, env=env, capture_output=True, text=True)

    where = subprocess.run([sys.executable, "-c", "import idclab; print(idclab.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), f"the test imported {where}, not the installed wheel"

    done = idclab_("data", "verify", "clevr", "--root", "empty")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "has no splits.json" in done.stdout and "FAILED" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr

    done = idclab_("data", "download", "cirr", "--help")
    assert done.returncode == 0 and "--root" in done.stdout, done.stdout + done.stderr
