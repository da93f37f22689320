"""The book stands alone (issue 14): no pointer to notes outside the repository, and every citation, glossary term,
pitfall reference and local link in the book resolves. Static checks on the sources; no build, no execution."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

# Phrases that pointed readers at the developers' private notes ("§4.5 of the reference notes", "pitfall 12",
# "bug 3", "combiner.md §6.2"). Traps are now named IDC-N / P2W-N / CMB-N / MET-N and live in book/pitfalls.md.
EXTERNAL = re.compile(r"reference notes|idclab's notes|pitfall \d|\bbug \d|§|(?:clip4idc|pic2word|combiner|metrics_and_data)\.md")


def _markdown_sources() -> dict[Path, str]:
    out = {p: p.read_text(encoding="utf-8") for p in BOOK.glob("*.md")}
    for p in sorted((BOOK / "chapters").glob("*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        out[p] = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return out


def _code_sources() -> dict[Path, str]:
    files = [*(ROOT / "idclab").rglob("*.py"), *(ROOT / "data_scripts").glob("*.py"), ROOT / "README.md"]
    return {p: p.read_text(encoding="utf-8") for p in files if p.is_file()}


def test_nothing_points_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p, text in {**_markdown_sources(), **_code_sources()}.items()
             for m in EXTERNAL.finditer(text)]
    assert not found, "references to notes outside the repository:\n" + "\n".join(found)


def test_citations_terms_and_pitfall_references_resolve():
    bib = set(re.findall(r"@\w+\{([^,\s]+),", (BOOK / "references.bib").read_text(encoding="utf-8")))
    glossary = (BOOK / "glossary.md").read_text(encoding="utf-8").split("```{glossary}")[1].split("```")[0]
    terms = {line.strip().lower() for line in glossary.splitlines() if line.strip() and not line.startswith(" ")}
    labels = set(re.findall(r"^\(([\w-]+)\)=", "\n".join(p.read_text(encoding="utf-8") for p in BOOK.glob("*.md")),
                            re.M))
    bad = []
    for path, text in _markdown_sources().items():
        for keys in re.findall(r"\{cite:?[pt]?\}`([^`]+)`", text):
            bad += [f"{path.name}: cite {k.strip()}" for k in keys.split(",") if k.strip() not in bib]
        for term in re.findall(r"\{term\}`([^`]+)`", text):
            m = re.match(r".*<(.*)>", term)
            if (m.group(1) if m else term).strip().lower() not in terms:
                bad.append(f"{path.name}: term {term}")
        for label in re.findall(r"\{ref\}`[^`<]*<([^>]+)>`", text):
            if label not in labels:
                bad.append(f"{path.name}: ref {label}")
        for link in re.findall(r"\]\(([^)#:]+\.(?:md|ipynb))(?:#[^)]*)?\)", text):
            if not (path.parent / link).resolve().exists():
                bad.append(f"{path.name}: link {link}")
    assert not bad, "unresolved: " + ", ".join(bad)


@pytest.mark.parametrize("page", ["notation", "glossary", "pitfalls", "bibliography"])
def test_reader_aids_are_in_the_toc(page):
    assert re.search(rf"^\s*- file: {page}\s*$", (BOOK / "_toc.yml").read_text(encoding="utf-8"), re.M)


def test_every_chapter_has_prerequisites_times_and_further_reading():
    for path in sorted((BOOK / "chapters").glob("*.ipynb")):
        text = _markdown_sources()[path]
        assert text.count("**Before you start.**") == 1, path.name
        assert "| time to run the whole chapter |" in text, path.name
        assert text.count("## Further reading") == 1, path.name
        assert "{cite:" in text, path.name
