#!/usr/bin/env python3
"""Build the HTML book from notebooks that scripts/run_notebooks.py has executed.

    python scripts/build_book.py --executed _build/standard/notebooks --out _build/html [--strict]

The book source (_config.yml, _toc.yml, book/, references.bib, notebooks/) is copied to
``_build/stage-<name>/``. There the executed notebooks replace the committed, output-free
ones and the jupytext ``.py`` twins are left out. Jupyter Book 1.x then renders the stored
outputs without executing anything, and the HTML is copied to OUTDIR. ``--strict`` turns
every Sphinx warning into an error (``-W -n --keep-going``).

Also on the staged copy:
- MathJax 3 from npm (``package.json``; ``npm ci`` fetches it when ``node_modules/`` is
  missing) is copied into the site, so that math renders without the network. Without npm
  the build falls back to MathJax's CDN and says so; ``--strict`` refuses that.
- ``book/reproduction.md`` gets its table from the results files next to the executed
  notebooks (``rmd_course.report``).
- Widget state that papermill saved is dropped: the book shows static figures instead.
- Papermill's injected-parameters cell is tagged ``remove-cell``: it stays in the executed
  notebook, and the page does not show it (nor the Colab install cell, tagged in the
  source). The Colab badge points at the vendored ``book/images/colab-badge.svg``, so that
  it renders offline; the committed notebooks keep Colab's own badge.
- ``--audience`` picks the student book (exercise solutions hidden, assignments with their
  stubs) or the instructor book (solutions shown, the assignments' solutions and the
  instructors' page); ``rmd_course.course.stage_audience`` adapts the staged copy.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

from rmd_course.course import AUDIENCES, stage_audience
from rmd_course.report import render_page

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ["_config.yml", "_toc.yml", "book", "references.bib", "notebooks"]
OPTIONAL = ["_static", "images"]
MATHJAX = ROOT / "node_modules" / "mathjax" / "es5"
# What tex-chtml.js loads at run time: TeX extensions (autoload), the CHTML fonts, the menu
# and the accessibility components. The rest of the package (speech rule engine, other
# combined builds) is never requested by the book's pages.
MATHJAX_PARTS = ["tex-chtml.js", "input/tex", "output/chtml", "ui", "a11y", "adaptors"]
IGNORE = shutil.ignore_patterns("*.py", "__pycache__", ".ipynb_checkpoints", "*.pyc")
OUTPUT_TYPES = {"display_data", "execute_result", "stream"}
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# The vendored badge, relative to a page in notebooks/.
VENDORED_BADGE = "../book/images/colab-badge.svg"


def stage_source(stage: Path, executed: Path, allow_unexecuted: bool,
                 strict: bool = False) -> list[Path]:
    """Copy the book source into ``stage``; return the staged notebooks."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in REQUIRED + OPTIONAL:
        src = ROOT / name
        if not src.exists():
            if name in REQUIRED:
                sys.exit(f"error: {src} is missing; it is part of the book source")
            continue
        if src.is_dir():
            shutil.copytree(src, stage / name, ignore=IGNORE)
        else:
            shutil.copy2(src, stage / name)

    staged = sorted((stage / "notebooks").glob("*.ipynb"))
    missing = []
    for nb in staged:
        run = executed / nb.name
        if run.exists():
            shutil.copy2(run, nb)
        else:
            missing.append(nb.name)
    if missing and not allow_unexecuted:
        sys.exit(
            f"error: no executed copy in {executed} of: {', '.join(missing)}.\n"
            "Run scripts/run_notebooks.py first (make book / make test do)."
        )

    # The build must only render stored outputs, whatever _config.yml says.
    config_path = stage / "_config.yml"
    config = yaml.safe_load(config_path.read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    if stage_mathjax(stage, strict):
        sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
        # Served from the site's root (html_extra_path), not from _static: Jupyter Book adds
        # a <script> tag to every page for each .js file it finds under _static.
        sphinx_config["html_extra_path"] = ["_mathjax"]
        sphinx_config["mathjax_path"] = "../mathjax/tex-chtml.js"  # relative to _static
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    for nb_path in staged:
        drop_widget_state(nb_path)
        adapt_cells(nb_path)
    report = stage / "book" / "reproduction.md"
    if report.exists():
        results = executed.parent / "results"
        report.write_text(render_page(report.read_text(encoding="utf-8"), results),
                          encoding="utf-8")
    return staged


def stage_mathjax(stage: Path, strict: bool) -> bool:
    """Copy MathJax into the staged ``_mathjax/mathjax``; False if it is unavailable."""
    if not MATHJAX.is_dir() and shutil.which("npm"):
        print("MathJax: node_modules/ is missing; running npm ci", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=False)
    if not MATHJAX.is_dir():
        fix = ("install Node.js and npm (Debian: apt-get install npm), then run `npm ci` in "
               f"{ROOT}")
        if strict:
            sys.exit(f"error: MathJax is not in {MATHJAX}, and a strict build serves it "
                     f"locally; {fix}")
        print(f"warning: MathJax is not in {MATHJAX}; the site will load it from a CDN, so "
              f"math needs the network to render. To serve it locally, {fix}.", flush=True)
        return False
    dest = stage / "_mathjax" / "mathjax"
    for part in MATHJAX_PARTS:
        src = MATHJAX / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    return True


def drop_widget_state(nb_path: Path) -> None:
    """Remove the ipywidgets state papermill stores; the static book does not render it."""
    nb = nbformat.read(nb_path, as_version=4)
    if nb.metadata.pop("widgets", None) is not None:
        nbformat.write(nb, nb_path)


def adapt_cells(nb_path: Path) -> None:
    """Hide papermill's injected-parameters cell in the book (``remove-cell``) and point
    the Colab badge at the vendored SVG."""
    nb = nbformat.read(nb_path, as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
            changed = True
        if cell.cell_type == "markdown" and COLAB_BADGE in cell.source:
            cell.source = cell.source.replace(COLAB_BADGE, VENDORED_BADGE)
            changed = True
    if changed:
        nbformat.write(nb, nb_path)


def has_outputs(nb_path: Path) -> bool:
    nb = nbformat.read(nb_path, as_version=4)
    return any(
        out.get("output_type") in OUTPUT_TYPES
        for cell in nb.cells if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def check_html(html: Path, staged: list[Path]) -> None:
    """Each notebook has a page, and a notebook with outputs shows them on it."""
    problems = []
    for nb in staged:
        page = html / "notebooks" / (nb.stem + ".html")
        if not page.exists():
            problems.append(f"no page {page}")
        elif has_outputs(nb) and "cell_output" not in page.read_text(encoding="utf-8"):
            problems.append(f"{page} shows none of the outputs stored in {nb.name}")
    if problems:
        sys.exit("error: " + "\n       ".join(problems))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executed", required=True, type=Path,
                    help="folder of executed notebooks, e.g. _build/standard/notebooks")
    ap.add_argument("--out", required=True, type=Path, help="where the HTML goes")
    ap.add_argument("--strict", action="store_true", help="Sphinx warnings are errors")
    ap.add_argument("--audience", choices=AUDIENCES, default="student",
                    help="student (default): exercise solutions hidden, the assignments as "
                         "handed out; instructor: solutions shown, the assignments' solutions "
                         "and the instructors' page")
    ap.add_argument("--name", help="stage folder suffix (default: the run's folder name)")
    ap.add_argument("--allow-unexecuted", action="store_true",
                    help="render notebooks without an executed copy as they are")
    args = ap.parse_args(argv)

    executed = args.executed.resolve()
    if not executed.is_dir():
        sys.exit(f"error: {executed} does not exist; run scripts/run_notebooks.py first")
    name = args.name or executed.parent.name
    stage = ROOT / "_build" / f"stage-{name}"
    staged = stage_source(stage, executed, args.allow_unexecuted, args.strict)
    stage_audience(stage, args.audience)

    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(stage),
           "--builder", "html", "--all"]
    if args.strict:
        cmd += ["-W", "-n", "--keep-going"]
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        print(f"error: jupyter-book build failed (exit {rc}); see the warnings above",
              file=sys.stderr)
        return rc

    html = stage / "_build" / "html"
    check_html(html, staged)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(html, out)
    print(f"book: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
