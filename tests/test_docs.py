"""The README is the front door and docs/ the manual: every relative link in them must resolve, and the README
stays short."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")".
# <target> (angle brackets, for a target with spaces) is accepted too.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+).*?\1")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def markdown_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]


def relative_links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every relative link outside code: fenced blocks and `inline code` are skipped."""
    links, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1).strip("<>").strip()
            if not target or target.startswith("#") or target.lower().startswith(EXTERNAL):
                continue
            links.append((number, target))
    return links


def broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    broken = []
    for path in files:
        for number, target in relative_links(path.read_text(encoding="utf-8")):
            file_part = target.split("#", 1)[0].split("?", 1)[0]
            resolved = (path.parent / file_part).resolve()
            if not resolved.exists():
                broken.append(f"{path.relative_to(root)}:{number}: {target}")
    return broken


@pytest.mark.pure
def test_docs_folder_exists():
    assert (ROOT / "docs").is_dir() and list((ROOT / "docs").glob("*.md")), "docs/ holds no markdown file"


@pytest.mark.pure
def test_every_relative_link_resolves():
    broken = broken_links(markdown_files())
    assert not broken, "relative links that do not resolve:\n" + "\n".join(broken)


@pytest.mark.pure
def test_every_docs_file_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / t.split("#", 1)[0]).resolve() for _, t in relative_links(readme.read_text())}
    missing = [str(p.relative_to(ROOT)) for p in markdown_files()[1:] if p.resolve() not in linked]
    assert not missing, "docs files the README's 'Read on' does not link: " + ", ".join(missing)


@pytest.mark.pure
def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"


@pytest.mark.pure
def test_the_checker_finds_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "r.md").write_text("")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok too](docs/a.md#section) ![plot](reports/r.md) [web](https://example.org/x)\n"
        "[anchor](#top) [mail](mailto:a@b.c) `[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n"
        "[gone](docs/missing.md#part) ![gone image](reports/missing.png)\n")
    (tmp_path / "docs" / "a.md").write_text("[up](../README.md) [wrong base](reports/r.md)\n")
    broken = broken_links(markdown_files(tmp_path), tmp_path)
    assert broken == ["README.md:6: docs/missing.md#part", "README.md:6: reports/missing.png",
                      "docs/a.md:1: reports/r.md"]
