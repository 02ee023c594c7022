"""The book's source is consistent: notebook pairs, table of contents, parameters, badges."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"

PARAMETERS = {"profile", "seed", "dataset", "device", "data_dir", "results_dir", "cache_dir"}
COLAB = re.compile(r"https://colab\.research\.google\.com/github/[^\s)\"'<>\]]+")


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def toc_files(node) -> list[str]:
    """Every ``file:`` entry of _toc.yml, at any depth, plus the root."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root") and isinstance(value, str):
                found.append(value)
            else:
                found += toc_files(value)
    elif isinstance(node, list):
        for item in node:
            found += toc_files(item)
    return found


def cells_signature(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (c.cell_type, c.source.strip(), tuple(sorted(c.metadata.get("tags", []))))
        for c in nb.cells
    ]


def test_notebook_has_synced_py_twin(ipynb: Path):
    py = ipynb.with_suffix(".py")
    assert py.exists(), f"{ipynb.name} has no jupytext twin {py.name}: run `make sync`"
    a = cells_signature(jupytext.read(ipynb))
    b = cells_signature(jupytext.read(py))
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        pytest.fail(
            f"{ipynb.name} and {py.name} differ ({len(a)} vs {len(b)} cells, first "
            f"difference at cell {first}): run `make sync` (the newer file wins)"
        )


def test_every_py_twin_has_a_notebook():
    orphans = [p.name for p in NOTEBOOKS_DIR.glob("*.py")
               if not p.with_suffix(".ipynb").exists()]
    assert not orphans, f"{orphans} have no .ipynb: run `make sync` after pairing them"


def test_committed_notebook_has_no_outputs(ipynb: Path):
    nb = nbformat.read(ipynb, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (
        f"{ipynb.name}: cells {dirty} keep outputs or execution counts; clear all outputs "
        "before committing (the build executes the notebooks itself)"
    )


def test_toc_lists_exactly_the_notebooks():
    listed = toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    for entry in listed:
        matches = [p for p in (ROOT / Path(entry).parent).glob(Path(entry).name + ".*")
                   if p.suffix in (".md", ".ipynb")]
        assert matches, f"_toc.yml lists {entry!r}, but there is no {entry}.md or .ipynb"
    in_toc = {e for e in listed if e.startswith("notebooks/")}
    on_disk = {f"notebooks/{p.stem}" for p in NOTEBOOKS_DIR.glob("*.ipynb")}
    assert on_disk - in_toc == set(), f"notebooks missing from _toc.yml: {sorted(on_disk - in_toc)}"
    assert in_toc - on_disk == set(), f"_toc.yml entries with no notebook: {sorted(in_toc - on_disk)}"


def test_parameters_cell(ipynb: Path):
    nb = nbformat.read(ipynb, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{ipynb.name}: expected one cell tagged 'parameters', got {len(tagged)}"
    assert tagged[0].cell_type == "code"
    names = set()
    for node in ast.parse(tagged[0].source).body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    missing = PARAMETERS - names
    assert not missing, f"{ipynb.name}: the parameters cell does not define {sorted(missing)}"


def test_colab_badge_matches_repository(ipynb: Path):
    cfg = config()
    m = re.match(r"https://github\.com/([^/]+)/([^/]+?)/?$", cfg["repository"]["url"])
    assert m, f"_config.yml repository.url {cfg['repository']['url']!r} is not a GitHub URL"
    branch = cfg["repository"].get("branch", "main")
    rel = ipynb.relative_to(ROOT).as_posix()
    expected = f"https://colab.research.google.com/github/{m[1]}/{m[2]}/blob/{branch}/{rel}"
    nb = nbformat.read(ipynb, as_version=4)
    first_md = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    assert first_md is not None, f"{ipynb.name} has no markdown cell"
    urls = COLAB.findall(first_md.source)
    assert urls, f"{ipynb.name}: the first markdown cell has no Colab badge linking {expected}"
    wrong = [u for u in urls if u != expected]
    assert not wrong, (
        f"{ipynb.name}: Colab link {wrong[0]} should be {expected} "
        "(`make set-repo-url URL=...` rewrites them all)"
    )


def test_config_is_jupyter_book_1_without_execution():
    cfg = config()
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert "sphinx_exercise" in cfg["sphinx"]["extra_extensions"]
    assert cfg["bibtex_bibfiles"] == ["references.bib"]
    assert (ROOT / "references.bib").exists()


def test_install_cell_is_hidden_in_the_book_and_banner_shown(ipynb: Path):
    nb = nbformat.read(ipynb, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    install = [c for c in code if "google.colab" in c.source]
    assert len(install) == 1, f"{ipynb.name}: expected one Colab install cell"
    assert "remove-cell" in install[0].metadata.get("tags", []), (
        f"{ipynb.name}: tag the Colab install cell remove-cell (it stays in the notebook)")
    banners = [c for c in code if re.search(r"^run\.banner\(", c.source, re.MULTILINE)]
    assert len(banners) == 1, f"{ipynb.name}: expected one run.banner() call, near the top"
    assert code.index(banners[0]) < len(code) // 2, f"{ipynb.name}: the banner comes too late"
    assert "remove-input" in banners[0].metadata.get("tags", [])


def test_notation_gives_each_symbol_one_meaning():
    rows = [line for line in (ROOT / "book" / "notation.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| ---")
            and not line.startswith("| Symbol")]
    symbols = [row.split(" | ")[0].removeprefix("| ").strip() for row in rows]
    repeated = sorted({s for s in symbols if symbols.count(s) > 1})
    assert not repeated, f"book/notation.md defines {repeated} more than once"
    # The image's channels are c, not C (the classifier); BEGAN's discriminator is A, not
    # D (the divergence).
    assert "{C \\times H" not in "".join(symbols)
    assert not any(re.search(r"\bD\(v\)", s) for s in symbols)


def test_pitfalls_page_points_at_tests_and_chapters_that_exist():
    text = (ROOT / "book" / "pitfalls.md").read_text()
    assert "{cite:t}`carlini2019evaluating`" in text
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    assert len(sections) >= 8
    for section in sections:
        title = section.splitlines()[0]
        files = re.findall(r"\[`(tests/test_\w+\.py)`\]", section)
        assert files, f"pitfall {title!r} names no test file"
        assert "**Shown in:**" in section, f"pitfall {title!r} names no chapter"
        sources = "".join((ROOT / f).read_text() for f in files)
        for name in re.findall(r"`(test_\w+)`", section):
            assert f"def {name}(" in sources, f"pitfall {title!r}: no {name} in {files}"
        for doc in re.findall(r"\{doc\}`\.\./(notebooks/\w+)`", section):
            assert (ROOT / f"{doc}.ipynb").exists(), f"pitfall {title!r}: no {doc}"


def test_pipeline_diagrams_are_drawn_by_the_script_and_shown():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "draw_diagrams.py"),
                           "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = (ROOT / "book" / "pipelines.md").read_text()
    for svg in sorted((ROOT / "book" / "figures").glob("pipeline_*.svg")):
        assert f"figures/{svg.name}" in page, f"book/pipelines.md does not show {svg.name}"
    assert len(list((ROOT / "book" / "figures").glob("pipeline_*.svg"))) == 4


CODE_COLUMNS = 88  # what the book's column shows at a 1,280-px window without scrolling


def test_code_fits_the_column(ipynb: Path):
    """Code cells wrap at 88 characters, so no code scrolls sideways on the page (the site
    check measures the rendered width; this finds the line before a build)."""
    long = [f"cell {i}, line {j}: {len(line)} characters"
            for i, cell in enumerate(nbformat.read(ipynb, as_version=4).cells)
            if cell.cell_type == "code"
            for j, line in enumerate(cell.source.splitlines(), 1) if len(line) > CODE_COLUMNS]
    assert not long, f"{ipynb.name}: code lines longer than {CODE_COLUMNS}: {long}"


def test_chapter_opens_with_objectives_and_closes_with_takeaways(ipynb: Path):
    """A chapter opens with a box of objectives, prerequisites and times, its `standard`
    run time glued from the library (a measurement or the budget, never typed), and has
    takeaways before the claims box, so that a failed claim never hides them."""
    cells = nbformat.read(ipynb, as_version=4).cells
    first_code = next(i for i, c in enumerate(cells) if c.cell_type == "code")
    opening = "\n".join(c.source for c in cells[:first_code] if c.cell_type == "markdown")
    for part in ("{admonition}", "**You will learn**", "**You need**", "**Time",
                 "{glue:text}`time_standard`", "`colab`", "`paper`"):
        assert part in opening, f"{ipynb.name}: the opening box lacks {part}"
    code = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert "run.banner(" in code, (  # Run.banner glues time_standard from expected_time
        f"{ipynb.name}: no banner, so time_standard is not glued from expected_time")
    takeaways = [i for i, c in enumerate(cells)
                 if c.cell_type == "markdown" and "## Takeaways" in c.source]
    claims = [i for i, c in enumerate(cells)
              if c.cell_type == "code" and "run.report_claims()" in c.source]
    assert len(takeaways) == 1 and len(claims) == 1, (
        f"{ipynb.name}: wants one Takeaways section and one claims box")
    assert takeaways[0] < claims[0], f"{ipynb.name}: the takeaways come after the claims box"
