"""The build scripts' own logic, on small trees the tests make themselves."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


set_repo_url = load_script("set_repo_url")
run_notebooks = load_script("run_notebooks")

OLD = "https://github.com/old-owner/old-book"
BADGE = "https://colab.research.google.com/github/old-owner/old-book/blob/main/notebooks/01_x.ipynb"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "_config.yml").write_text(f"title: t\nrepository:\n  url: {OLD}\n  branch: main\n")
    nb = tmp_path / "notebooks"
    nb.mkdir()
    cell = {"cell_type": "markdown", "metadata": {},
            "source": [f"[![Open In Colab](badge.svg)]({BADGE})"]}
    (nb / "01_x.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {},
                                               "nbformat": 4, "nbformat_minor": 5}))
    (nb / "01_x.py").write_text(f"# %% [markdown]\n# [![Open In Colab](badge.svg)]({BADGE})\n")
    (tmp_path / "README.md").write_text(
        f"git clone {OLD}.git\nsee {OLD}.\nnot ours: https://github.com/old-owner/old-book-2\n"
        "read it at https://old-owner.github.io/old-book/ online\n")
    return tmp_path


def test_set_repo_url_rewrites_config_badges_and_readme(tree: Path):
    new = "https://github.com/new-org/new-book"
    changed = set_repo_url.rewrite(tree, new + "/")
    assert set_repo_url.current_url(tree) == new
    assert {p.name for p in changed} == {"_config.yml", "01_x.ipynb", "01_x.py", "README.md"}
    new_badge = BADGE.replace("old-owner/old-book", "new-org/new-book")
    assert new_badge in (tree / "notebooks" / "01_x.ipynb").read_text()
    assert new_badge in (tree / "notebooks" / "01_x.py").read_text()
    readme = (tree / "README.md").read_text()
    assert f"{new}.git" in readme and f"see {new}." in readme
    assert "old-owner/old-book-2" in readme  # a longer name is someone else's repository
    assert "read it at https://new-org.github.io/new-book/ online" in readme


def test_set_repo_url_rejects_non_github_urls(tree: Path):
    with pytest.raises(ValueError):
        set_repo_url.rewrite(tree, "https://example.org/a/b")


def test_chapter_name_drops_the_number_prefix():
    assert run_notebooks.chapter_name(Path("01_generative_models.ipynb")) == "generative_models"
    assert run_notebooks.chapter_name(Path("12_a_b.ipynb")) == "a_b"
    assert run_notebooks.chapter_name(Path("appendix.ipynb")) == "appendix"



def test_runner_reports_claims_per_notebook(tmp_path: Path, capsys):
    results = tmp_path / "faces.json"
    results.write_text(json.dumps({"claims": [
        {"name": "held", "passed": True}, {"name": "divergence falls", "passed": False}]}))
    claims = run_notebooks.claims_of(results)
    assert claims == {"held": 1, "total": 2, "failed": ["divergence falls"]}
    assert run_notebooks.claims_of(tmp_path / "missing.json") is None
    timings = {"notebooks": {"08_faces": {"seconds": 12.0, "status": "ok", "claims": claims},
                             "09_dip": {"seconds": 3.0, "status": "failed", "claims": None}}}
    run_notebooks.print_summary("standard", timings)
    out = capsys.readouterr().out
    assert "08_faces" in out and "1/2" in out and "FAIL  divergence falls" in out
    assert "09_dip" in out and "failed" in out


def test_gpu_table_gives_a_verdict_per_chapter(tmp_path: Path, capsys):
    gpu_table = load_script("gpu_table")
    timings = {"notebooks": {
        "01_a": {"seconds": 40.0, "status": "ok", "peak_gpu_gb": 3.2},
        "02_b": {"seconds": 150.0, "status": "ok", "peak_gpu_gb": 13.5},
        "03_c": {"seconds": 10.0, "status": "failed", "peak_gpu_gb": None}}}
    rows = gpu_table.table(timings, speedup=8.0)
    assert "at most 75 s here, 12 GB" in rows[0]
    assert rows[2] == "| 01_a | 40.0 | 3.20 | within budget |"
    assert "over time (2.0x)" in rows[3] and "over memory (13.5 GB)" in rows[3]
    assert "failed" in rows[4] and "no GPU peak recorded" in rows[4]
    path = tmp_path / "timings.json"
    path.write_text(json.dumps(timings))
    assert gpu_table.main([str(path)]) == 0 and "| 02_b |" in capsys.readouterr().out
    assert gpu_table.main([str(tmp_path / "none.json")]) == 2


def test_runner_reads_the_peaks_a_chapter_recorded(tmp_path: Path):
    results = tmp_path / "x.json"
    results.write_text(json.dumps({"provenance": {"peak_rss_gb": 1.5, "peak_gpu_gb": None}}))
    assert run_notebooks.peaks(results) == {"peak_rss_gb": 1.5, "peak_gpu_gb": None}
    assert run_notebooks.peaks(tmp_path / "none.json") == {"peak_rss_gb": None, "peak_gpu_gb": None}


def test_pages_workflow_builds_with_the_readme_command():
    """The published site is built the way the README tells a reader to build it."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    flow = yaml.safe_load((root / ".github/workflows/pages.yml").read_text())
    runs = [step.get("run", "") for step in flow["jobs"]["build"]["steps"]]
    assert "make book" in runs, runs
    assert "make book" in (root / "README.md").read_text()
    uploads = [s for s in flow["jobs"]["build"]["steps"] if "upload-pages-artifact" in s.get("uses", "")]
    assert uploads and uploads[0]["with"]["path"] == "_build/html"
    assert "_build/html" in (root / "Makefile").read_text()


# ---------------------------------------------------------------------------------------
# scripts/check_site.py: what makes a loaded page pass or fail, and when the check skips.
# ---------------------------------------------------------------------------------------
check_site = load_script("check_site")

MATH_SOURCE = ('<script src="../mathjax/tex-chtml.js"></script>'
               '<span class="math notranslate nohighlight">\\(x\\)</span>'
               '<div class="math notranslate nohighlight">\\[y\\]</div>')
GOOD_DOM = ('<h1>Chapter</h1><div class="admonition note rmd-banner">banner</div>'
            '<mjx-container>x</mjx-container><mjx-container>y</mjx-container>'
            '<img alt="f" src="../_images/fig.png"><div class="admonition tip rmd-claims">box</div>'
            '<pre id="rmd-site-check" data-cells="3"></pre>')
WIDE = '<pre id="rmd-site-check" data-cells="3">41px: x = compute(a, b) &lt; 3</pre>'


@pytest.fixture
def site(tmp_path: Path) -> Path:
    from PIL import Image

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "_images").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "_images" / "fig.png")
    (tmp_path / "_images" / "colab-badge.svg").write_bytes(
        (ROOT / "book" / "images" / "colab-badge.svg").read_bytes())
    return tmp_path


def test_site_check_passes_a_page_with_figures_and_typeset_math(site: Path):
    r = check_site.inspect_page("notebooks/01_x.html", MATH_SOURCE, GOOD_DOM, site)
    assert r.problems == []
    assert (r.figures, r.math_expected, r.math_typeset) == (1, 2, 2)


@pytest.mark.parametrize("dom, source, problem", [
    (GOOD_DOM.replace("<h1>Chapter</h1>", ""), MATH_SOURCE, "no <h1>"),
    (GOOD_DOM.replace("fig.png", "gone.png"), MATH_SOURCE, "does not load"),
    (GOOD_DOM.replace('<img alt="f" src="../_images/fig.png">', ""), MATH_SOURCE,
     "without any figure"),
    (GOOD_DOM.replace("<mjx-container>y</mjx-container>", ""), MATH_SOURCE,
     "only 1 typeset"),
    (GOOD_DOM + "<mjx-merror>bad</mjx-merror>", MATH_SOURCE, "error in a formula"),
    (GOOD_DOM.replace("rmd-banner", "other"), MATH_SOURCE, "no banner"),
    (GOOD_DOM.replace(" rmd-claims", ""), MATH_SOURCE, "What this run shows"),
    (GOOD_DOM.replace('<pre id="rmd-site-check" data-cells="3"></pre>', WIDE), MATH_SOURCE,
     "1 code cell(s) scroll sideways at 1280 px, e.g. 41px: x = compute(a, b) < 3"),
    (GOOD_DOM.replace('<pre id="rmd-site-check" data-cells="3"></pre>', ""), MATH_SOURCE,
     "measurement did not run"),
    (GOOD_DOM.replace("fig.png", "colab-badge.svg"), MATH_SOURCE, "without any figure"),
    (GOOD_DOM, MATH_SOURCE.replace("../mathjax/tex-chtml.js",
                                   "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"),
     "not from the site"),
])
def test_site_check_names_each_problem(site: Path, dom: str, source: str, problem: str):
    r = check_site.inspect_page("notebooks/01_x.html", source, dom, site)
    assert len(r.problems) == 1 and problem in r.problems[0]


def test_site_check_reads_svg_figures_and_the_pipelines_page(site: Path):
    names = sorted(p.name for p in check_site.DIAGRAMS.glob("pipeline_*.svg"))
    assert len(names) == 4
    for name in names:
        (site / "_images" / name).write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (site / "book").mkdir()
    imgs = "".join(f'<img src="../_images/{n}">' for n in names)
    dom = f'<h1>Pipelines</h1>{imgs}<pre id="rmd-site-check" data-cells="0"></pre>'
    r = check_site.inspect_page(check_site.PIPELINES_PAGE, "", dom, site)
    assert r.problems == [] and r.figures == 4
    first = f'<img src="../_images/{names[0]}">'
    r = check_site.inspect_page(check_site.PIPELINES_PAGE, "", dom.replace(first, ""), site)
    assert r.problems == [f"diagrams not shown: {names[0]}"]
    (site / "_images" / names[1]).write_text("<svg")  # truncated
    r = check_site.inspect_page(check_site.PIPELINES_PAGE, "", dom, site)
    assert len(r.problems) == 1 and "does not load" in r.problems[0]


@pytest.mark.parametrize("measured_on, loads, measured", [
    (1, 1, True), (3, 3, True), (None, 3, False)])
def test_site_check_loads_a_page_again_when_the_dump_came_before_its_load_event(
        monkeypatch, tmp_path: Path, measured_on, loads, measured):
    early = GOOD_DOM.replace('<pre id="rmd-site-check" data-cells="3"></pre>', "")
    calls = []

    def fake_load(browser, url, profile_dir):
        calls.append(profile_dir)
        return GOOD_DOM if len(calls) == measured_on else early

    monkeypatch.setattr(check_site, "load_dom", fake_load)
    dom, n = check_site.load_measured_dom("chromium", "http://x/p.html", str(tmp_path))
    assert n == loads == len(calls) and (dom == GOOD_DOM) == measured
    assert calls[0] == str(tmp_path) and len(set(calls)) == len(calls)  # a fresh profile each
    if not measured:  # after the last try the page fails, as a missing measurement should
        (tmp_path / "notebooks").mkdir(exist_ok=True)
        r = check_site.inspect_page("notebooks/01_x.html", MATH_SOURCE, dom, tmp_path)
        assert any("measurement did not run" in p for p in r.problems)


def test_site_check_server_adds_the_measurement_to_html_only(site: Path):
    import urllib.request

    (site / "page.html").write_text("<html><body><h1>x</h1></body></html>")
    (site / "data.txt").write_text("plain </body>")
    server = check_site.serve(site)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        page = urllib.request.urlopen(base + "page.html").read().decode()
        plain = urllib.request.urlopen(base + "data.txt").read().decode()
    finally:
        server.shutdown()
    assert page.index("rmd-site-check") < page.index("</body>")
    assert page.startswith("<html><body><h1>x</h1><script>") and plain == "plain </body>"
    assert f"--window-size={check_site.WINDOW_WIDTH}," in " ".join(check_site.FLAGS)


@pytest.mark.skipif(check_site.find_chromium() is None, reason="needs Chromium")
def test_site_check_measures_a_wide_code_cell_in_chromium(tmp_path: Path):
    # The measuring script, run by the real browser: a code cell of 400 characters on one
    # line scrolls at 1,280 px; one of 40 does not.
    long, short = "x" * 400, "y = 1"
    cell = '<div class="cell_input"><pre style="overflow-x:auto">{}</pre></div>'
    (tmp_path / "p.html").write_text(
        "<html><body><h1>t</h1>" + cell.format(long) + cell.format(short) + "</body></html>")
    server = check_site.serve(tmp_path)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/p.html"
        dom = check_site.load_dom(check_site.find_chromium(), url, str(tmp_path / "profile"))
    finally:
        server.shutdown()
    measured = check_site.MEASURED.search(dom)
    assert measured and measured.group(1) == "2"
    wide = [line for line in measured.group(2).splitlines() if line]
    assert len(wide) == 1 and wide[0].endswith("x" * 60)


def test_site_check_broken_figure_file_is_caught(site: Path):
    (site / "_images" / "fig.png").write_bytes(b"not a png")
    r = check_site.inspect_page("notebooks/01_x.html", MATH_SOURCE, GOOD_DOM, site)
    assert any("does not load" in p for p in r.problems)


def test_site_check_pages_follow_the_toc():
    pages = check_site.toc_pages(ROOT / "_toc.yml")
    assert pages[0] == "book/intro.html"
    assert len(pages) == len(set(pages))
    assert {f"notebooks/{p.stem}.html" for p in (ROOT / "notebooks").glob("*.ipynb")} <= set(pages)


@pytest.fixture
def no_browser(monkeypatch, site: Path):
    (site / "index.html").write_text("<h1>x</h1>")
    monkeypatch.setattr(check_site, "find_chromium", lambda: None)
    monkeypatch.setattr(check_site, "install_chromium", lambda: None)
    return site


def test_site_check_skips_without_chromium_or_root(no_browser, monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    assert check_site.main([str(no_browser)]) == 0
    assert "SKIPPED" in capsys.readouterr().out


def test_site_check_is_required_in_ci(no_browser, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(SystemExit, match="CI=true requires"):
        check_site.main([str(no_browser)])


# ---------------------------------------------------------------------------------------
# scripts/build_book.py: MathJax served by the site, widget state dropped.
# ---------------------------------------------------------------------------------------
build_book = load_script("build_book")


@pytest.fixture
def fake_mathjax(tmp_path: Path, monkeypatch) -> Path:
    es5 = tmp_path / "node_modules" / "mathjax" / "es5"
    for part in build_book.MATHJAX_PARTS:
        path = es5 / part
        if part.endswith(".js"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("// js")
        else:
            path.mkdir(parents=True)
            (path / "x.js").write_text("// js")
    (es5 / "sre").mkdir()  # never served
    monkeypatch.setattr(build_book, "MATHJAX", es5)
    return es5


def test_mathjax_is_staged_outside_static(fake_mathjax: Path, tmp_path: Path):
    stage = tmp_path / "stage"
    assert build_book.stage_mathjax(stage, strict=True)
    served = stage / "_mathjax" / "mathjax"
    assert (served / "tex-chtml.js").is_file() and (served / "input/tex/x.js").is_file()
    assert not (served / "sre").exists() and not (stage / "_static").exists()


def test_strict_build_refuses_a_cdn_mathjax(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(build_book, "MATHJAX", tmp_path / "absent")
    monkeypatch.setattr(build_book.shutil, "which", lambda name: None)  # no npm
    with pytest.raises(SystemExit, match="npm"):
        build_book.stage_mathjax(tmp_path / "stage", strict=True)
    assert build_book.stage_mathjax(tmp_path / "stage", strict=False) is False


def test_widget_state_is_dropped(tmp_path: Path):
    import nbformat

    kernel = {"name": "python3", "display_name": "Python 3"}
    nb = nbformat.v4.new_notebook(metadata={"widgets": {"state": {}}, "kernelspec": kernel})
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    build_book.drop_widget_state(path)
    assert nbformat.read(path, as_version=4).metadata == {"kernelspec": kernel}


def test_kernels_wait_passively_unless_told_otherwise():
    env = {}
    run_notebooks.quiet_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    run_notebooks.quiet_openmp(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "OMP_NUM_THREADS" not in env  # the thread count, and so the numbers, stay put


def test_book_hides_injected_parameters_and_vendors_the_badge(tmp_path: Path):
    import nbformat

    badge = f"[![Open In Colab]({build_book.COLAB_BADGE})]({BADGE})"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# T\n\n{badge}"),
        nbformat.v4.new_code_cell("profile = 'auto'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('profile = "smoke"',
                                  metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    build_book.adapt_cells(path)
    cells = nbformat.read(path, as_version=4).cells
    assert cells[2].metadata["tags"] == ["injected-parameters", "remove-cell"]
    assert cells[2].source == 'profile = "smoke"'  # kept in the notebook, hidden on the page
    assert cells[1].metadata["tags"] == ["parameters"] and "tags" not in cells[3].metadata
    assert build_book.COLAB_BADGE not in cells[0].source
    assert f"]({build_book.VENDORED_BADGE})]({BADGE})" in cells[0].source  # link unchanged
    vendored = (ROOT / "notebooks" / build_book.VENDORED_BADGE).resolve()
    import xml.etree.ElementTree as ET
    assert ET.parse(vendored).getroot().tag.endswith("svg")
    build_book.adapt_cells(path)  # a second pass changes nothing
    assert nbformat.read(path, as_version=4).cells[2].metadata["tags"].count("remove-cell") == 1


def test_pages_workflow_caches_wheels_node_modules_and_models():
    """The Pages build restores what the last run built, keyed so that a change rebuilds it."""
    import re

    import yaml

    root = Path(__file__).resolve().parent.parent
    flow = yaml.safe_load((root / ".github/workflows/pages.yml").read_text())
    triggers = flow.get("on", flow.get(True))  # PyYAML reads the key `on` as True
    crons = [entry["cron"] for entry in triggers["schedule"]]
    assert len(crons) == 1 and re.fullmatch(r"\d+ \d+ \* \* [0-6]", crons[0]), crons  # weekly
    assert "push" in triggers
    build = flow["jobs"]["build"]
    steps = build["steps"]
    caches = {s["with"]["path"]: (i, s["with"]) for i, s in enumerate(steps)
              if s.get("uses", "").startswith("actions/cache@")}
    assert set(caches) == {"~/.cache/pip", "node_modules", "data/cache"}, caches
    book = next(i for i, s in enumerate(steps) if s.get("run") == "make book")
    assert all(i < book for i, _ in caches.values()), "restore the caches before the build"

    def hashed(key: str) -> list[str]:
        files = re.findall(r"hashFiles\(([^)]*)\)", key)
        assert files, f"cache key {key!r} hashes no files"
        return [f.strip().strip("'\"") for part in files for f in part.split(",")]

    pip_key = caches["~/.cache/pip"][1]["key"]
    assert {"pyproject.toml", "Makefile"} <= set(hashed(pip_key))  # Makefile pins torchattacks
    assert hashed(caches["node_modules"][1]["key"]) == ["package-lock.json"]
    models = caches["data/cache"][1]
    assert "rmd_lib/**/*.py" in hashed(models["key"]) and "${{ env.PROFILE }}" in models["key"]
    assert "restore-keys" not in models, "a model cached for other code must not be restored"
    # Every hashed pattern matches files, and the paths are the ones the build uses.
    for pattern in hashed(pip_key) + hashed(models["key"]) + ["package-lock.json"]:
        assert list(root.glob(pattern)), f"{pattern} matches no file"
    makefile = (root / "Makefile").read_text()
    assert build["env"]["PROFILE"] == "standard" and "PROFILE ?= standard" in makefile
    assert "node_modules/mathjax" in makefile
    # The models land in data/cache: the repository's data/ is the data folder when
    # RMD_DATA_DIR is unset, and the model cache is its cache/.
    assert (root / "data").is_dir() and "RMD_DATA_DIR" not in build["env"]
    assert 'default_data_dir() / "cache"' in (root / "rmd_lib" / "training.py").read_text()
