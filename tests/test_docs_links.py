"""README.md and docs/*.md link only inside the repository, and every link and anchor resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A path that climbs out of its folder ("../x"), but not an ellipsis (".../masks").
PARENT_PATH = re.compile(r"(?<![.\w])\.\./")


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", _without_code_blocks(path.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_stay_in_the_repository_and_resolve(doc):
    text = _without_code_blocks(doc.read_text())
    problems = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            problems.append(f"{target}: an outside link (the docs must be readable from the checkout alone)")
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    problems += [f"path {m.group(0)!r} at offset {m.start()} leaves the folder" for m in PARENT_PATH.finditer(text)]
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_checker_sees_links():
    assert len(LINK.findall((ROOT / "README.md").read_text())) >= 5
