"""The build scripts' own logic, on small trees the tests make themselves."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
        f"git clone {OLD}.git\nsee {OLD}.\nnot ours: https://github.com/old-owner/old-book-2\n")
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


def test_set_repo_url_rejects_non_github_urls(tree: Path):
    with pytest.raises(ValueError):
        set_repo_url.rewrite(tree, "https://example.org/a/b")


def test_chapter_name_drops_the_number_prefix():
    assert run_notebooks.chapter_name(Path("01_generative_models.ipynb")) == "generative_models"
    assert run_notebooks.chapter_name(Path("12_a_b.ipynb")) == "a_b"
    assert run_notebooks.chapter_name(Path("appendix.ipynb")) == "appendix"



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
