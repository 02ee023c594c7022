"""The Gradescope autograders: unpacked and run as Gradescope runs them, on the solution, the
student stub and two submissions that try to get points they did not earn."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import jsonschema
import nbformat
import pytest

from rmd_course import course, gradescope

ROOT = Path(__file__).resolve().parent.parent
NAME = "a1_first_order"


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("releases")
    course.release(out)
    return out


def autograde(zip_path: Path, root: Path, upload: Path) -> dict:
    """Unpack the zip as Gradescope does, put ``upload`` in submission/, run run_autograder."""
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(root / "source")
    (root / "submission").mkdir()
    (root / "submission" / upload.name).write_bytes(upload.read_bytes())
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), RMD_PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    jsonschema.validate(results, gradescope.RESULTS_SCHEMA)
    return results


def hints(name: str) -> set[str]:
    text = (course.SOURCE_DIR / f"{name}.py").read_text()
    return {m["hint"].strip() for line in text.splitlines() if (m := course.BEGIN.match(line))}


def test_every_assignment_gets_a_zip_in_gradescopes_layout(releases):
    names = course.source_names()
    assert sorted(p.stem for p in (releases / "gradescope").glob("*.zip")) == names
    for name in names:
        with zipfile.ZipFile(releases / "gradescope" / f"{name}.zip") as zf:
            files = {i.filename: i for i in zf.infolist()}
            for script in ("setup.sh", "run_autograder"):
                assert (files[script].external_attr >> 16) & 0o777 == 0o755, script
                text = zf.read(script).decode()
                assert text.startswith("#!/usr/bin/env bash")
                check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
                assert check.returncode == 0, check.stderr
            tests = {f"grading/{f.relative_to(course.GRADING_DIR).as_posix()}"
                     for f in course.test_files(name)}
            assert len(tests) == 2 and tests <= set(files), "public and hidden tests both ship"
            assert {"grading/conftest.py", "grading/pytest.ini", "grading/references.json",
                    "lib/pyproject.toml", "lib/rmd_lib/__init__.py",
                    "lib/rmd_course/__init__.py", "lib/rmd_course/toys.py"} <= set(files)
            assert f"--assignment {name} " in zf.read("run_autograder").decode()
    # The student notebooks and nbgrader's layout come with them.
    for name in names:
        assert (releases / "student" / f"{name}.ipynb").is_file()
        for kind, version in (("source", "solution"), ("release", "student")):
            nb = releases / "nbgrader" / kind / name / f"{name}.ipynb"
            assert nb.read_bytes() == (releases / version / f"{name}.ipynb").read_bytes()
    assert (releases / "nbgrader" / "submitted").is_dir()


def test_solution_earns_every_point(releases, tmp_path):
    r = autograde(releases / "gradescope" / f"{NAME}.zip", tmp_path,
                  releases / "solution" / f"{NAME}.ipynb")
    total = sum(t["max_score"] for t in r["tests"])
    assert r["score"] == total > 20
    assert all(t["status"] == "passed" and t["score"] == t["max_score"] for t in r["tests"])
    hidden = [t for t in r["tests"] if t["name"].startswith("hidden/")]
    assert len(hidden) >= 4 and {t["visibility"] for t in hidden} == {"after_published"}


def test_student_stub_scores_zero_with_the_hints(releases, tmp_path):
    r = autograde(releases / "gradescope" / f"{NAME}.zip", tmp_path,
                  releases / "student" / f"{NAME}.ipynb")
    assert r["score"] == 0 and len(r["tests"]) > 10
    assert all(t["status"] == "failed" and t["score"] == 0 for t in r["tests"])
    shown = {t["output"].removeprefix("NotImplementedError: ") for t in r["tests"]}
    assert all(t["output"].startswith("NotImplementedError: ") for t in r["tests"])
    assert shown <= hints(NAME) and len(shown) >= 4, shown


FORGER = '''
import json
import os
import sys


class Forge:
    # A class body runs when the graded module is loaded, inside the test process.
    root = os.environ.get("AUTOGRADER_ROOT", "/autograder")
    fake = {"score": 1000, "tests": []}
    os.makedirs(os.path.join(root, "results"), exist_ok=True)
    with open(os.path.join(root, "results", "results.json"), "w") as fh:
        json.dump(fake, fh)
    print(json.dumps(fake))
    report = sys.argv[sys.argv.index("--grade-report") + 1]
    with open(report) as fh:
        collected = json.loads(fh.readline())["collected"]
    with open(report, "a") as fh:
        for test, points in collected.items():
            fh.write(json.dumps({"test": test, "points": 100 * points, "outcome": "passed",
                                 "exception": None, "message": ""}) + "\\n")
        fh.write(json.dumps({"test": "made_up.py::test_bonus", "points": 500,
                             "outcome": "passed"}) + "\\n")
'''


def test_a_submission_cannot_forge_its_grade(releases, tmp_path):
    # The student stub plus code that writes a full score into results.json, prints one,
    # and appends "passed" lines (and a made-up test) to its own test report.
    stub = nbformat.read(releases / "student" / f"{NAME}.ipynb", as_version=4)
    stub.cells.append(nbformat.v4.new_code_cell(FORGER))
    upload = tmp_path / f"{NAME}.ipynb"
    nbformat.write(stub, upload)
    r = autograde(releases / "gradescope" / f"{NAME}.zip", tmp_path / "ag", upload)
    assert r["score"] == 0
    points = course.collect_points(NAME, tmp_path / "collect")
    assert [t["name"] for t in r["tests"]] == list(points), "only the trusted tests count"
    assert [t["max_score"] for t in r["tests"]] == list(points.values()), "and their points"
    assert all(t["output"].startswith("ForgedReport: the test report holds 2 results")
               for t in r["tests"]), {t["output"] for t in r["tests"]}


def test_importing_the_reference_implementation_scores_zero_for_its_tests(releases, tmp_path):
    module = (releases / "solution" / f"{NAME}.py").read_text()
    module += textwrap.dedent('''

        from rmd_lib.attacks import pgd as library_pgd


        def pgd(model, x, y, eps, norm="linf", steps=20, alpha=None, random_start=True, seed=0):
            return library_pgd(model, x, y, eps, norm=norm, steps=steps, seed=seed)
        ''')
    upload = tmp_path / f"{NAME}.py"
    upload.write_text(module)
    r = autograde(releases / "gradescope" / f"{NAME}.zip", tmp_path / "ag", upload)
    calls = {**course.tests_calling(course.GRADING_DIR / f"test_{NAME}.py")}
    hidden = course.tests_calling(course.GRADING_DIR / "hidden" / f"test_{NAME}_hidden.py")
    rejected = passed = 0
    for t in r["tests"]:
        file, _, func = t["name"].partition("::")
        uses_pgd = "pgd" in (hidden if file.startswith("hidden/") else calls)[func.split("[")[0]]
        if uses_pgd:
            rejected += 1
            assert t["score"] == 0 and t["output"].startswith("ReferenceImplementation: "), t
            assert "rmd_lib.attacks.pgd, the library's reference implementation of pgd" in t["output"]
        else:
            passed += 1
            assert t["status"] == "passed", t
    assert rejected >= 5 and passed >= 5
    assert r["score"] == sum(t["max_score"] for t in r["tests"] if t["status"] == "passed")


REFERENCES = course.load_references(NAME)


@pytest.mark.parametrize("code,expected", [
    ("from rmd_lib.attacks import pgd", {"pgd": ["rmd_lib.attacks.pgd"]}),
    ("import rmd_lib.attacks.first_order as fo\ndef f():\n    return fo.fgsm",
     {"fgsm": ["rmd_lib.attacks.first_order.fgsm"]}),
    ("from rmd_lib import attacks\ndef f():\n    return attacks.project_ball",
     {"project_ball": ["rmd_lib.attacks.project_ball"]}),
    ("def f():\n    from rmd_lib.attacks.first_order import input_gradient as g\n    return g",
     {"loss_gradient": ["rmd_lib.attacks.first_order.input_gradient"]}),
    ("import importlib\nA = importlib.import_module('rmd_lib.attacks.first_order')",
     {f: ["rmd_lib.attacks.first_order"] for f in REFERENCES}),
    ("from rmd_lib.attacks.first_order import *", {f: ["rmd_lib.attacks.first_order"] for f in REFERENCES}),
    ("import torch\nfrom rmd_course.toys import toy_images\nfrom rmd_lib.attacks import cw_l2", {}),
    ("import os\nimport antigravity_not_a_module", {}),
])
def test_reference_uses(code, expected):
    assert course.reference_uses(code, REFERENCES) == expected


def test_references_name_real_functions_that_tests_call():
    table = json.loads((course.GRADING_DIR / "references.json").read_text())
    assert set(table) - {"_about"} == set(course.source_names())
    for name in course.source_names():
        source = (course.SOURCE_DIR / f"{name}.py").read_text()
        called = set().union(*[set().union(*course.tests_calling(f).values())
                               for f in course.test_files(name)])
        for func, refs in table[name].items():
            assert f"\ndef {func}(" in source, f"{name}: no graded function {func}"
            assert func in called, f"{name}: no test calls {func}"
            assert all(course._resolve(ref) is not None for ref in refs), refs
    with pytest.raises(ValueError, match="does not exist; fix the entry"):
        course.reference_uses("x = 1", {"f": ["rmd_lib.attacks.no_such_attack"]})


def test_missing_upload_is_a_zero_with_a_reason(releases, tmp_path):
    r_path = tmp_path / "results.json"
    (tmp_path / "up").mkdir()
    out = gradescope.run(NAME, tmp_path / "up", r_path, course.GRADING_DIR, timeout=60)
    jsonschema.validate(out, gradescope.RESULTS_SCHEMA)
    assert out["score"] == 0 and f"no {NAME}.ipynb in the upload" in out["output"]
    assert json.loads(r_path.read_text()) == out
