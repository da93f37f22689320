"""Where idclab lives and which release the book belongs to: the one place to edit when publishing.

Everything that points at the repository is built from the two constants below: the Colab badge of every chapter,
the install line of every chapter's first cell (pinned to :data:`RELEASE`, never a moving branch), the launch
buttons of ``book/_config.yml`` and the package version. ``python scripts/sync_release.py`` rewrites the book from
them; ``tests/test_book.py`` fails until it has been run.

Publishing under another address, or cutting a new release, is therefore a one-line change here, followed by
``python scripts/sync_release.py`` and a tag ``v<VERSION>`` pushed to the repository.
"""

from __future__ import annotations

# Placeholder until the team publishes the repository. Change it here only.
REPOSITORY = "https://github.com/idclab/idclab"
VERSION = "0.1.0"  # the package version (pyproject.toml reads it from here)
RELEASE = f"v{VERSION}"  # the git tag of this version: what Colab opens and installs

BOOK_DIR = "book"  # the book's folder inside the repository
CHAPTERS_DIR = f"{BOOK_DIR}/chapters"
COLAB = "https://colab.research.google.com"
COLAB_BADGE = f"{COLAB}/assets/colab-badge.svg"


def github_slug() -> str:
    """``owner/name`` of :data:`REPOSITORY` (e.g. ``idclab/idclab``)."""
    prefix = "https://github.com/"
    if not REPOSITORY.startswith(prefix) or REPOSITORY.rstrip("/").count("/") != 4:
        raise ValueError(f"idclab.project.REPOSITORY must look like {prefix}OWNER/NAME, got {REPOSITORY!r}.")
    return REPOSITORY[len(prefix):].rstrip("/")


def colab_url(notebook: str) -> str:
    """The Colab address of a chapter (``01_clip_in_a_nutshell.ipynb``) at :data:`RELEASE`."""
    return f"{COLAB}/github/{github_slug()}/blob/{RELEASE}/{CHAPTERS_DIR}/{notebook}"


def colab_badge(notebook: str) -> str:
    """The markdown of a chapter's "Open in Colab" badge."""
    return f"[![Open In Colab]({COLAB_BADGE})]({colab_url(notebook)})"


def pip_requirement() -> str:
    """What a chapter's first cell installs on Colab: this release of idclab, straight from the repository."""
    return f"idclab @ git+{REPOSITORY}@{RELEASE}"
