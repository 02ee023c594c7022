"""The course assignments: both releases, the autograder and the two book audiences.

The solution version must earn every point of every grading test (public and hidden); the
student version must fail every one of them with the NotImplementedError of its stubs; the
student release must hold neither hidden cases nor solution code.
"""
from __future__ import annotations

import ast
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from rmd_course import course

ROOT = Path(__file__).resolve().parent.parent
NAMES = course.source_names()


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("releases")
    course.release(out)
    return out


def graded(submission: Path, report: Path) -> tuple[dict, dict]:
    proc = course.run_tests(submission, NAMES, report, timeout=240)
    assert proc is not None, "the grading run timed out"
    points, results = course.read_report(report)
    assert points, f"no tests were collected:\n{proc.stdout[-3000:]}"
    return points, results


def hints() -> set[str]:
    found = set()
    for name in NAMES:
        for line in (course.SOURCE_DIR / f"{name}.py").read_text().splitlines():
            m = course.BEGIN.match(line)
            if m:
                found.add(m["hint"].strip()[:300])  # the report keeps 300 characters
    return found


def test_every_assignment_has_public_and_hidden_tests():
    assert NAMES == course.grading_names() == ["a1_first_order", "a2_projection", "a3_minmax", "a4_bpda"]
    for name in NAMES:
        files = course.test_files(name)
        assert [f.parent.name for f in files] == ["grading", "hidden"], f"{name}: public or hidden tests missing"


def test_solution_version_earns_every_point(releases, tmp_path):
    points, results = graded(releases / "solution", tmp_path / "report.jsonl")
    failed = {t: r.get("message") for t, r in results.items() if r["outcome"] != "passed"}
    assert not failed, f"the solution fails: {failed}"
    assert set(results) == set(points)
    for name in NAMES:
        mine = [t for t in points if f"test_{name}" in t]
        hidden = [t for t in mine if t.startswith("hidden/")]
        assert len(mine) - len(hidden) >= 8 and len(hidden) >= 4, f"{name}: too few grading tests"


def test_student_version_fails_every_test_with_its_stub(releases, tmp_path):
    points, results = graded(releases / "student", tmp_path / "report.jsonl")
    assert set(results) == set(points)
    wrong = {t: (r["outcome"], r["exception"]) for t, r in results.items()
             if r["outcome"] != "failed" or r["exception"] != "NotImplementedError"}
    assert not wrong, f"student stubs must fail each test with NotImplementedError: {wrong}"
    stray = {r["message"] for r in results.values()} - hints()
    assert not stray, f"failures that are not the stubs' hints: {stray}"


def student_texts(release: Path) -> dict[Path, str]:
    """Every file of the student release; a notebook as its cells' sources."""
    texts = {}
    for f in (release / "student").rglob("*"):
        if f.suffix == ".ipynb":
            texts[f] = "\n".join(c.source for c in nbformat.read(f, as_version=4).cells)
        elif f.is_file():
            texts[f] = f.read_text()
    return texts


def test_student_release_has_no_hidden_cases(releases):
    texts = student_texts(releases)
    assert not [f for f in texts if "hidden" in f.relative_to(releases).parts]
    hidden = course.GRADING_DIR / "hidden"
    marks = {f.stem for f in hidden.glob("*.py")}
    for f in hidden.glob("*.py"):
        marks |= {n.name for n in ast.walk(ast.parse(f.read_text()))
                  if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    leaks = {(f.name, m) for f, text in texts.items() for m in marks if m in text}
    assert not leaks, f"hidden cases named in the student release: {leaks}"


def test_student_release_has_no_solution_code(releases):
    texts = student_texts(releases)
    inside, public = {}, set()  # solution lines per assignment; lines students see anyway
    for name in NAMES:
        open_ = False
        for line in (course.SOURCE_DIR / f"{name}.py").read_text().splitlines():
            if course.BEGIN.match(line) or course.END.match(line):
                open_ = bool(course.BEGIN.match(line))
            elif line.strip():
                (inside.setdefault(name, set()) if open_ else public).add(line.strip())
    for f in course.GRADING_DIR.glob("*.py"):
        public |= {line.strip() for line in f.read_text().splitlines()}
    for name, lines in inside.items():
        secret = lines - public
        assert len(secret) >= 5, f"{name}: too few solution lines to check"
        for f, text in texts.items():
            shown = secret & {line.strip() for line in text.splitlines()}
            assert not shown, f"{f.name} shows solution lines of {name}: {sorted(shown)[:3]}"


def test_solution_release_keeps_the_source_without_markers(releases):
    for name in NAMES:
        nb = nbformat.read(releases / "solution" / f"{name}.ipynb", as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        assert "BEGIN SOLUTION" not in text and "raise NotImplementedError" not in text
        source = jupytext.read(course.SOURCE_DIR / f"{name}.py")
        assert len(nb.cells) == len(source.cells)
        module = (releases / "solution" / f"{name}.py").read_text()
        assert "raise NotImplementedError" not in module and "def " in module


def test_markers_make_both_versions():
    code = "def f(x):\n    '''Doc.'''\n    ### BEGIN SOLUTION: add one\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
    assert course.strip_solutions(code, "student") == "def f(x):\n    '''Doc.'''\n    raise NotImplementedError('add one')"
    assert course.strip_solutions(code, "solution") == "def f(x):\n    '''Doc.'''\n    y = x + 1\n    return y"


@pytest.mark.parametrize("code,problem", [
    ("### BEGIN SOLUTION: a\nx = 1\n", "never closed"),
    ("x = 1\n### END SOLUTION\n", "without a BEGIN"),
    ("### BEGIN SOLUTION: a\n### BEGIN SOLUTION: b\n### END SOLUTION\n", "inside the region"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "no hint"),
    ("# BEGIN SOLUTION: a\nx = 1\n### END SOLUTION\n", "malformed marker"),
])
def test_bad_markers_are_errors(code, problem):
    with pytest.raises(ValueError, match=problem):
        course.strip_solutions(code, "student", "a9.py, cell 3")


def test_sources_without_regions_or_with_markers_in_prose_are_errors():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    with pytest.raises(ValueError, match="no '### BEGIN SOLUTION"):
        course.make_version(nb, "student")
    nb.cells.append(nbformat.v4.new_markdown_cell("### BEGIN SOLUTION: answer\n42\n### END SOLUTION"))
    with pytest.raises(ValueError, match="only work in code cells"):
        course.make_version(nb, "student")


def test_module_keeps_only_definitions():
    cells = ["import functools\n%matplotlib inline", "LEVELS = 5\neps = 0.1\n\n@functools.cache\ndef f():\n    return LEVELS",
             "print('self-check')\nassert f() == 5", "class A:\n    pass"]
    text = course.module_source(cells, "t")
    namespace = {}
    exec(text, namespace)
    assert {"functools", "LEVELS", "f", "A"} <= set(namespace) and "eps" not in namespace
    assert "print(" not in text and namespace["f"]() == 5
    with pytest.raises(course.SubmissionError, match="code cell 2 has a syntax error"):
        course.module_source(["x = 1", "def f(:\n    pass"], "t")


def test_grade_command_writes_one_row_per_submission(releases, tmp_path):
    subs = tmp_path / "submissions"
    for student, src in [("alice", "solution"), ("bob", "student")]:
        (subs / student).mkdir(parents=True)
        shutil.copy(releases / src / "a1_first_order.ipynb", subs / student / "a1_first_order.ipynb")
    (subs / "carol").mkdir()
    (subs / "carol" / "a1_first_order.ipynb").write_text("{ not a notebook")
    (subs / "dave").mkdir()
    (subs / "dave" / "a1_first_order.py").write_text("def fgsm(model, x, y, eps:\n    pass\n")
    (subs / "erin").mkdir()
    (subs / "erin" / "homework.ipynb").write_text("{}")
    out = tmp_path / "grades.csv"
    proc = subprocess.run([sys.executable, "-m", "rmd_course.course", "grade", str(subs), "--out", str(out),
                           "--assignments", "a1_first_order", "--jobs", "2"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "ignored" in proc.stderr and "homework.ipynb" in proc.stderr
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    assert list(rows) == ["alice", "bob", "carol", "dave", "erin"]
    top = int(rows["alice"]["max_points"])
    assert rows["alice"]["status"] == "graded" and int(rows["alice"]["points"]) == top > 20
    assert rows["alice"]["reason"] == "" and "hidden/" in rows["alice"]["tests"]
    bob = rows["bob"]
    assert (bob["status"], bob["points"], int(bob["max_points"])) == ("graded", "0", top)
    assert "NotImplementedError" in bob["reason"]
    assert bob["tests"].count("=0/") == bob["tests"].count("(NotImplementedError)") > 10
    for student, why in [("carol", "not a readable notebook"), ("dave", "syntax error"),
                         ("erin", "no a1_first_order.ipynb")]:
        r = rows[student]
        assert r["points"] == "0" and int(r["max_points"]) == top and why in r["reason"], r
    assert [rows[s]["status"] for s in ("carol", "dave", "erin")] == ["unreadable", "unreadable", "missing"]


def test_grade_reports_a_timeout(releases, tmp_path):
    (tmp_path / "subs" / "slow").mkdir(parents=True)
    shutil.copy(releases / "solution" / "a4_bpda.ipynb", tmp_path / "subs" / "slow")
    # Half a second cannot even start pytest and torch: the run is killed.
    rows = course.grade(tmp_path / "subs", tmp_path / "g.csv", names=["a4_bpda"], timeout=0.5)
    assert rows[0]["status"] == "timeout" and rows[0]["points"] == 0 and "0.5 s" in rows[0]["reason"]


@pytest.mark.parametrize("args,problem", [
    (["grade", "{tmp}/nowhere"], "does not exist; pass the folder that holds one sub-folder per student"),
    (["grade", "{tmp}", "--assignments", "a9_nothing"], "unknown assignment(s) ['a9_nothing']"),
    (["grade", "{tmp}"], "no student folders in"),
    (["release", "--out", "{tmp}/r", "--only", "a9_nothing"], "unknown assignment(s) ['a9_nothing']"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, args, problem):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert course.main(args + (["--out", str(tmp_path / "g.csv")] if args[0] == "grade" else [])) == 2
    assert problem in capsys.readouterr().err


@pytest.mark.parametrize("audience", course.AUDIENCES)
def test_book_stage_for_each_audience(tmp_path, audience):
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    staged = course.stage_audience(tmp_path, audience)
    student = audience == "student"
    config = yaml.safe_load((tmp_path / "_config.yml").read_text())
    assert config["sphinx"]["config"]["hide_solutions"] is student
    assert config["sphinx"]["config"]["nb_render_markdown_format"] == "myst"  # the rest is kept
    parts = yaml.safe_load((tmp_path / "_toc.yml").read_text())["parts"]
    captions = [p["caption"] for p in parts]
    assert captions.index("Assignments") == captions.index("Back matter") - 1
    files = [c["file"] for c in parts[captions.index("Assignments")]["chapters"]]
    assert files == ([] if student else ["book/instructors"]) + [f"assignments/{n}" for n in NAMES]
    assert (ROOT / "book" / "instructors.md").exists()
    assert [p.stem for p in staged] == NAMES
    text = staged[0].read_text()
    assert staged[0].suffix == ".md" and text.startswith("# ")
    assert ("raise NotImplementedError" in text) is student
    assert ("### BEGIN SOLUTION" in text) is False
    with pytest.raises(ValueError, match="audience must be one of"):
        course.book_audience_config("teacher")


@pytest.mark.parametrize("name", NAMES)
def test_solution_notebook_runs_top_to_bottom(tmp_path, name):
    # What an instructor checks before handing out: every self-check cell of the solution
    # version runs (as a script, with a non-interactive matplotlib backend).
    nb = course.make_version(jupytext.read(course.SOURCE_DIR / f"{name}.py"), "solution", name)
    script = tmp_path / f"{name}.py"
    jupytext.write(nb, script, fmt="py:percent")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a3_self_check_rejects_the_students_pairs_not_the_baselines(tmp_path):
    # The last check of a3 must look at the pairs minmax_pairs returned: pairs twice the
    # budget apart fail it, although the random baseline's pairs are within the budget.
    nb = course.make_version(jupytext.read(course.SOURCE_DIR / "a3_minmax.py"), "solution",
                             "a3_minmax")
    script = tmp_path / "a3_minmax.py"
    jupytext.write(nb, script, fmt="py:percent")
    text = script.read_text()
    call = "z1, z2 = minmax_pairs(G, C, eps)"
    assert text.count(call) == 1
    far = "z1, z2 = random_pairs_at_budget(G, 2 * eps, 64, seed=3)  # out of budget"
    script.write_text(text.replace(call, far))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode != 0 and "a min-max pair is" in proc.stderr, proc.stderr[-2000:]
