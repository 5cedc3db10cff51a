"""The workshop pages in docs/labs/ and their markup (docs/labs/README.md, "How the pages stay
true"): a ```sh block is a script that runs, a ```text block right after it is the output it
must show, where `...` stands for any text and the lines must appear in that order.

Shared by tests/unit/test_labs_pages.py (every page parses and has its sections) and
tests/e2e/test_labs.py (every page runs, exactly as written, against a lab of its own).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABS = REPO / "docs" / "labs"
SECTIONS = ("Goal", "Commands", "What you should see", "Questions")
FLAGS = ("no-run",)                   # plus timeout=<seconds>
DEFAULT_TIMEOUT_S = 300.0
FENCE = re.compile(r"^```(\S*)(.*)$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LINK = re.compile(r"\]\(([^)\s]+)\)")


class PageError(ValueError):
    """A page breaks the markup convention: the message names the page, the line and the fix."""


@dataclass(frozen=True)
class Block:
    page: str
    line: int                  # line number of the opening fence
    script: str
    expected: tuple[str, ...]  # output lines to find in order; empty: the output is not checked
    run: bool
    timeout_s: float

    def where(self) -> str:
        return f"docs/labs/{self.page}:{self.line}"


def pages() -> list[Path]:
    """The lab pages in the order a student works through them (01-..., 02-..., ...)."""
    return sorted(LABS.glob("[0-9][0-9]-*.md"))


def fenced(path: Path) -> list[tuple[int, str, list[str], str]]:
    """(line of the opening fence, language, flags, body) of every fenced block of a page."""
    found, current, body = [], None, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if current is None and match:
            current, body = (number, match.group(1), match.group(2).split()), []
        elif current is not None and line.startswith("```"):
            if line.strip() != "```":
                raise PageError(f"{path.name}:{number}: a closing fence is a bare ``` (the block opened at "
                                f"line {current[0]} is still open)")
            found.append((*current, "\n".join(body)))
            current = None
        elif current is not None:
            body.append(line)
    if current is not None:
        raise PageError(f"{path.name}:{current[0]}: this ``` block is never closed: add a line with ```")
    return found


def timeout_of(path: Path, line: int, flags: list[str]) -> float:
    timeout = DEFAULT_TIMEOUT_S
    for flag in flags:
        if flag.startswith("timeout="):
            try:
                timeout = float(flag.removeprefix("timeout="))
            except ValueError:
                raise PageError(f"{path.name}:{line}: {flag!r} is not a number of seconds, e.g. timeout=600") from None
        elif flag not in FLAGS:
            raise PageError(f"{path.name}:{line}: unknown flag {flag!r} on a sh block: use no-run or timeout=<s>")
    return timeout


def blocks(path: Path) -> list[Block]:
    """The page's sh blocks in order; the fenced block after a run sh block, if it is a text
    block, is the output that block must show."""
    raw = fenced(path)
    found = []
    for at, (line, language, flags, body) in enumerate(raw):
        if language != "sh":
            continue
        run = "no-run" not in flags
        after = raw[at + 1] if at + 1 < len(raw) else None
        shown = after[3].splitlines() if run and after and after[1] == "text" else []
        expected = tuple(p.strip() for p in shown if p.strip() not in ("", "..."))
        found.append(Block(path.name, line, body, expected, run, timeout_of(path, line, flags)))
    return found


def first_missing(expected: tuple[str, ...], output: str) -> str | None:
    """The first expected line not found, in order, among the output's lines (None: all found).
    A pattern matches a line that contains it, `...` standing for any text."""
    lines = ANSI.sub("", output).splitlines()
    at = 0
    for pattern in expected:
        regex = re.compile(".*".join(re.escape(part) for part in pattern.split("...")))
        while at < len(lines) and not regex.search(lines[at]):
            at += 1
        if at == len(lines):
            return pattern
        at += 1
    return None


def headings(path: Path) -> list[str]:
    """The page's level-2 headings (## ...), outside fenced blocks."""
    found, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("## "):
            found.append(line[3:].strip())
    return found


def local_links(path: Path) -> list[str]:
    """Markdown link targets of a page that point into the repository (no URLs, no #anchors)."""
    return [target.split("#")[0] for target in LINK.findall(path.read_text())
            if not re.match(r"[a-z]+:", target) and not target.startswith("#")]
