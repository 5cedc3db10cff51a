"""The workshop pages in docs/labs/ follow their markup (tests/labpages.py), have their four
sections, start from a clean lab, and link only to files that exist. The e2e tier runs them."""
from __future__ import annotations

from pathlib import Path

import pytest

from labpages import LABS, SECTIONS, Block, PageError, blocks, fenced, first_missing, headings, local_links, pages

PAGES = pages()
ALL_MARKDOWN = sorted(LABS.glob("*.md"))


def test_there_are_seven_labs_and_an_index():
    assert [p.name[:3] for p in PAGES] == ["01-", "02-", "03-", "04-", "05-", "06-", "07-"]
    assert (LABS / "README.md").exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_parses_and_has_runnable_blocks(page: Path):
    runnable = [b for b in blocks(page) if b.run]
    assert runnable, f"{page.name}: no ```sh block to run"
    assert all(b.script.strip() for b in runnable), f"{page.name}: an empty ```sh block"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_has_the_four_sections_in_order(page: Path):
    found = [h for h in headings(page) if h in SECTIONS]
    assert found == list(SECTIONS), (f"{page.name}: level-2 sections are {headings(page)}; a lab needs "
                                     f"{', '.join('## ' + s for s in SECTIONS)} in that order")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_starts_from_a_clean_lab(page: Path):
    first = next(b for b in blocks(page) if b.run)
    assert "docker compose down -v" in first.script and "up -d --wait" in first.script, (
        f"{first.where()}: a lab's first ```sh block starts a clean lab (docker compose down -v, then up -d --wait)")


@pytest.mark.parametrize("page", ALL_MARKDOWN, ids=lambda p: p.name)
def test_local_links_resolve(page: Path):
    broken = [target for target in local_links(page) if not (page.parent / target).resolve().exists()]
    assert not broken, f"{page.name} links to files that do not exist: {broken}"


def test_index_links_every_lab():
    linked = {Path(target).name for target in local_links(LABS / "README.md")}
    missing = [p.name for p in PAGES if p.name not in linked]
    assert not missing, f"docs/labs/README.md does not link {missing}"


# -- the markup itself

def write(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "01-x.md"
    page.write_text(text)
    return page


def test_a_text_block_after_a_sh_block_is_its_expected_output(tmp_path):
    page = write(tmp_path, "```sh\necho hi\n```\nsome prose\n```text\nhi\n...\n```\n```sh no-run\nsleep 9\n```\n"
                           "```text\nnot checked\n```\n")
    assert blocks(page) == [Block("01-x.md", 1, "echo hi", ("hi",), True, 300.0),
                            Block("01-x.md", 9, "sleep 9", (), False, 300.0)]


def test_timeout_flag_and_unknown_flags(tmp_path):
    assert blocks(write(tmp_path, "```sh timeout=600\ntrue\n```\n"))[0].timeout_s == 600
    with pytest.raises(PageError, match="unknown flag 'norun'"):
        blocks(write(tmp_path, "```sh norun\ntrue\n```\n"))


def test_unclosed_block_is_an_error_naming_its_line(tmp_path):
    with pytest.raises(PageError, match=r"01-x.md:2: this ``` block is never closed"):
        fenced(write(tmp_path, "text\n```sh\ntrue\n"))


@pytest.mark.parametrize("expected, missing", [
    (("a 1", "c ... 3"), None),
    (("c", "a"), "a"),                 # out of order
    (("b 2 ... x",), "b 2 ... x"),
])
def test_expected_lines_appear_in_order_with_wildcards(expected, missing):
    assert first_missing(expected, "\x1b[2Ka 1\nb 2\nc and 3\n") == missing
