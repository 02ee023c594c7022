"""Numbers in a chapter's prose come from the run (myst-nb glue), not from the keyboard.

A measured number typed into the text goes stale as soon as a profile, a seed or the code
changes. This test reads the Markdown cells of every chapter and flags the numbers that look
measured or profile-dependent: decimals, percentages, and counts of steps, images, restarts
and the like. Maths, code, roles (``{glue:}`...` ``), links and citations are left out. A
number that is a fixed fact (a constant of the method, a setting quoted from a paper, an
exercise's own parameter) is listed in prose_numbers_allow.txt with the reason it may stay.
"""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALLOW_FILE = Path(__file__).with_name("prose_numbers_allow.txt")

UNITS = (r"steps?|restarts?|images?|epochs?|iterations?|queries|pairs?|networks?|photos?"
         r"|digits?|faces?|samples?|seconds?|minutes?|hours?|points?|s\b|min\b")
NUMBER = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?\s?%|\d+\.\d+|\d[\d,]*(?=\s+(?:" + UNITS + r")\b))")
# What is not prose: fenced blocks, display and inline maths, inline code and roles, link
# targets, HTML tags, directive options (":label: ...").
STRIP = [
    # code blocks go; a directive's fence (```{admonition} ...) goes but its prose stays
    re.compile(r"^(`{3,}|~{3,})(?!\{)(?:\{code[^}]*\})?[^\n]*\n.*?^\1\s*$",
               re.DOTALL | re.MULTILINE),
    re.compile(r"^(`{3,}|~{3,})(?:\{code[^}]*\}).*?^\1\s*$", re.DOTALL | re.MULTILINE),
    re.compile(r"^(`{3,}|~{3,}|:{3,}).*$", re.MULTILINE),
    re.compile(r"\$\$.*?\$\$", re.DOTALL),
    re.compile(r"\$[^$\n]+\$"),
    re.compile(r"\{[\w:-]+\}`[^`]*`"),
    re.compile(r"`[^`\n]*`"),
    re.compile(r"\]\([^)]*\)"),
    re.compile(r"<[^>\n]+>"),
    re.compile(r"^\s*:[\w-]+:.*$", re.MULTILINE),
]


def prose(text: str) -> str:
    for pattern in STRIP:
        text = pattern.sub(" ", text)
    return text


def typed_numbers(text: str) -> list[str]:
    return [m.group(1).strip() for m in NUMBER.finditer(prose(text))]


def allowed() -> dict[str, set[str]]:
    """{notebook stem: numbers}; each line is `stem: number  # reason`, the reason required."""
    table: dict[str, set[str]] = {}
    for i, line in enumerate(ALLOW_FILE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        entry, _, reason = line.partition("#")
        stem, _, number = entry.partition(":")
        assert number.strip() and reason.strip(), (
            f"{ALLOW_FILE.name}:{i}: write `stem: number  # why it may be typed`")
        table.setdefault(stem.strip(), set()).add(number.strip())
    return table


def test_the_scanner_finds_typed_numbers_and_skips_computed_ones():
    text = ("We ran 200 steps with 10 restarts and got 93.5% (0.92). "
            "The glued {glue:text}`acc` and $\\epsilon = 0.3$ and `lr=0.01` are not prose; "
            "see [the docs](https://x.org/2.0).\n```python\nx = 0.5\n```\n"
            "```{admonition} Time\n:class: tip\nAbout 18 minutes.\n```\n"
            "```{code-cell}\ny = 0.25\n```")
    assert typed_numbers(text) == ["200", "10", "93.5%", "0.92", "18"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_prose_has_no_typed_measurements(nb: Path):
    cells = nbformat.read(nb, as_version=4).cells
    found = [n for c in cells if c.cell_type == "markdown" for n in typed_numbers(c.source)]
    ok = allowed().get(nb.stem, set())
    stray = sorted(set(found) - ok)
    assert not stray, (
        f"{nb.name}: numbers typed into the prose: {stray}. Compute them and glue them "
        f"(myst_nb.glue, then {{glue:text}}`name`), or, for a fixed fact, list them in "
        f"tests/{ALLOW_FILE.name} with the reason.")


def test_allow_list_names_only_numbers_that_are_there():
    """A stale entry would let the number come back unnoticed."""
    for stem, numbers in allowed().items():
        nb = ROOT / "notebooks" / f"{stem}.ipynb"
        assert nb.exists(), f"{ALLOW_FILE.name}: no notebook {stem}"
        cells = nbformat.read(nb, as_version=4).cells
        found = {n for c in cells if c.cell_type == "markdown" for n in typed_numbers(c.source)}
        assert numbers <= found, f"{ALLOW_FILE.name}: {stem} no longer has {numbers - found}"
