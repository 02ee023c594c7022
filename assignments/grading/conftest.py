"""Grading harness: loads the submission, checks every test has points, writes a report.

Options:
  --submission PATH    ($RMD_SUBMISSION) the .ipynb or .py to grade, or a folder holding
                       <assignment>.ipynb / <assignment>.py (the notebook is used when both are)
  --grade-report PATH  append one JSON line per test: points, outcome, exception type, message

A test module test_<assignment>.py (or hidden/test_<assignment>_hidden.py) gets that
assignment's submission from the fixture ``sub``. Only the submission's imports, functions,
classes and upper-case constants are loaded (see rmd_course.course.module_source).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rmd_course.course import load_submission

_loaded: dict[str, object] = {}
_RESULT = pytest.StashKey[dict]()  # one test's outcome, filled phase by phase


def pytest_addoption(parser):
    parser.addoption("--submission", default=os.environ.get("RMD_SUBMISSION"),
                     help="the .ipynb or .py to grade, or a folder of <assignment>.ipynb files")
    parser.addoption("--grade-report", default=None, help="write per-test results (JSON lines) here")


def _points(item) -> int | None:
    marker = item.get_closest_marker("points")
    return int(marker.args[0]) if marker and marker.args else None


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items if not _points(item) or _points(item) <= 0]
    if unmarked:
        raise pytest.UsageError(f"grading tests without @pytest.mark.points(n), n > 0: {unmarked}; "
                                "give each one its points.")
    report = config.getoption("--grade-report")
    if report:
        with open(report, "a") as fh:
            fh.write(json.dumps({"collected": {item.nodeid: _points(item) for item in items}}) + "\n")


def assignment_of(module_name: str) -> str:
    """The assignment of a test module: test_<name> and test_<name>_hidden both give <name>."""
    name = module_name.rsplit(".", 1)[-1].removeprefix("test_")
    return name.removesuffix("_hidden")


@pytest.fixture(scope="module")
def sub(request):
    """The submitted module of this test file's assignment."""
    name = assignment_of(request.module.__name__)
    given = request.config.getoption("--submission")
    if not given:
        pytest.fail("no submission to grade: pass --submission PATH (your .ipynb or .py) or set "
                    "RMD_SUBMISSION", pytrace=False)
    path = Path(given)
    if path.is_dir():
        path = next((p for p in (path / f"{name}.ipynb", path / f"{name}.py") if p.exists()),
                    path / f"{name}.ipynb")
    key = f"{name}:{path.resolve()}"
    if key not in _loaded:
        _loaded[key] = load_submission(path, name)
    return _loaded[key]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    state = item.stash.setdefault(_RESULT, {})
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        exc = call.excinfo
        text = str(exc.value).strip() if exc is not None else ""
        state.update(outcome=rep.outcome, phase=rep.when,
                     exception=exc.typename if exc is not None else None,
                     message=text.splitlines()[0][:300] if text else "")
    if rep.when == "teardown":
        report = item.config.getoption("--grade-report")
        if report:
            entry = dict(test=item.nodeid, points=_points(item), **state)
            with open(report, "a") as fh:
                fh.write(json.dumps(entry) + "\n")

