"""The README and every docs page link only to files that exist, and docs/ keeps its three parts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.lib import ROOT

DOCS = ROOT / "docs"
LINK = re.compile(r"(?:\]\(|src=\"|href=\")([^)\"\s]+)")
PARTS = ("guide", "design", "measurements")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def relative_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands, not links
    out = []
    for target in LINK.findall(text):
        target = target.split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            continue
        out.append(target)
    return out


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_docs_has_three_parts_and_an_index() -> None:
    loose = [p.name for p in DOCS.iterdir() if p.is_file() and p.name != "README.md"]
    assert not loose, f"docs/ holds only README.md and {PARTS}; loose files: {loose}"
    assert sorted(p.name for p in DOCS.iterdir() if p.is_dir()) == sorted(PARTS)
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    listed = set(relative_links(DOCS / "README.md"))
    for part in PARTS:
        for page in sorted((DOCS / part).glob("*.md")):
            assert f"{part}/{page.name}" in listed, f"docs/README.md does not list {part}/{page.name}"
    assert "guide" in index
