"""The two packages' boundary: rmd_lib (what the chapters teach) never imports rmd_course
(the book's machinery), and no module imports another module's private names."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p for pkg in ("rmd_lib", "rmd_course") for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """(absolute module, imported names) of every import in a file, relative ones resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module, [a.name for a in node.names]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_imports(path):
    importlib.import_module(module_name(path))
    for module, names in imports(path):
        if module_name(path).startswith("rmd_lib"):
            assert not module.startswith("rmd_course"), f"rmd_lib must not import {module}"
        if module.split(".")[0] in ("rmd_lib", "rmd_course"):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{module_name(path)} imports private {private} from {module}"


def test_the_split():
    lib = {module_name(p) for p in MODULES if module_name(p).startswith("rmd_lib")}
    assert not lib & {"rmd_lib.report", "rmd_lib.course", "rmd_lib.explorers", "rmd_lib.gradescope"}
    course = {module_name(p) for p in MODULES if module_name(p).startswith("rmd_course")}
    assert {"rmd_course.report", "rmd_course.course", "rmd_course.explorers",
            "rmd_course.gradescope", "rmd_course.toys"} <= course
    toml = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["rmd_lib*", "rmd_course*"]' in toml


def test_callers_use_the_new_home():
    stale = ("rmd_lib.course", "rmd_lib.report", "rmd_lib.explorers", "rmd_lib.gradescope",
             "rmd_lib/report.py", "rmd_lib/course.py")
    files = [ROOT / "Makefile", ROOT / "README.md", ROOT / "DESIGN.md"]
    for folder, pattern in (("book", "*.md"), ("scripts", "*.py"), ("notebooks", "*.py"),
                            ("notebooks", "*.ipynb"), ("assignments", "*.py"), ("tests", "*.py")):
        files += sorted((ROOT / folder).rglob(pattern))
    found = [(f.name, s) for f in files if f.name != "test_layout.py"
             for s in stale if s in f.read_text()]
    assert not found, found
