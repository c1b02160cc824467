"""The README and docs/: every relative link resolves, and the README stays short and starts with the two commands."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.M | re.S)
INDENTED_CODE = re.compile(r"^(?: {4}|\t).*$", re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The text a reader sees as prose: code blocks and code spans can hold brackets that are not links."""
    text = FENCE.sub("", text)
    text = INDENTED_CODE.sub("", text)
    return CODE_SPAN.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, '-' and ' ' kept), spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = text.replace("`", "").replace("\\", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a markdown page, numbered as GitHub numbers repeated headings (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]


def broken(page: Path, target: str) -> str | None:
    """Why a relative link from ``page`` does not resolve, or None when it does."""
    path_part, _, fragment = target.partition("#")
    path = (page.parent / unquote(path_part)).resolve() if path_part else page
    if not path.exists():
        return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} does not exist"
    if fragment:
        if path.suffix != ".md":
            return f"an anchor into {path.name}, which is not markdown"
        if unquote(fragment).lower() not in anchors(path):
            return f"{path.relative_to(REPO)} has no heading #{fragment}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    problems = [f"({target}): {why}" for target in relative_links(page) if (why := broken(page, target))]
    assert not problems, f"{page.relative_to(REPO)}:\n" + "\n".join(problems)


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_begins_with_the_two_commands():
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# "), "the README opens with its title"
    assert lines[1].startswith("```"), "the first thing after the title is a code block"
    commands = []
    for line in lines[2:]:
        if line.startswith("```"):
            break
        commands.append(line.split("#")[0].strip())
    assert commands == ["make demo", "make test"]


def test_slug_matches_github():
    assert slug("Stage `datamix`") == "stage-datamix"
    assert slug("Pipeline (`make demo`, nano, every stage)") == "pipeline-make-demo-nano-every-stage"
    assert slug("µP learning-rate transfer") == "µp-learning-rate-transfer"
    assert slug("Demo and test wall time (issue 16)") == "demo-and-test-wall-time-issue-16"
