"""Graded assignments: one source per assignment, student and solution releases, an autograder.

Each assignment is written once, as a jupytext percent script ``assignments/source/<name>.py``.
Inside a code cell, a solution is a region between two marker lines::

    ### BEGIN SOLUTION: one signed gradient step of size eps, then clamp to [0, 1]
    ...the instructor's code...
    ### END SOLUTION

The student version replaces each region by ``raise NotImplementedError("<hint>")`` at the
marker's indentation; the solution version only drops the marker lines. Both are written as
a notebook and as an importable module of the graded definitions (see :func:`module_source`)::

    python -m rmd_course.course release   # -> _build/assignments/{student,solution,gradescope,nbgrader}/
    python -m rmd_course.course grade SUBMISSIONS --out grades.csv

Submissions are laid out as ``SUBMISSIONS/<student>/<assignment>.ipynb`` (or ``.py``, or
nbgrader's ``<student>/<assignment>/<assignment>.ipynb``). The grader runs
``assignments/grading/test_<assignment>.py`` and ``hidden/test_<assignment>_hidden.py`` on
each in its own pytest process with a timeout; every test carries
``@pytest.mark.points(n)`` and a submission earns the points of the tests it passes. The
points come from a collection run that loads no submission; a submission's results are read
from its process's report after that process has exited, and a test with two results there
scores 0. A submission that imports the library's reference implementation of a graded
function (``assignments/grading/references.json``) scores 0 on the tests that call it.

The toy models and data that the assignments and their tests share are in
:mod:`rmd_course.toys`.
"""
from __future__ import annotations

import argparse
import ast
import copy
import csv
import importlib
import json
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import types
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "assignments" / "source"
GRADING_DIR = ROOT / "assignments" / "grading"
RELEASE_DIR = ROOT / "_build" / "assignments"
VERSIONS = ("student", "solution")

STUDENT_README = """\
# Course assignments

Each notebook <name>.ipynb asks you to write the bodies of a few functions; until you do,
they raise NotImplementedError with a hint. Only your imports, functions, classes and
upper-case constants are graded, not the cells that run them.

Check your work with the public tests (needs pytest and the book's library, rmd_lib):

    pytest grading/test_<name>.py --submission <name>.ipynb

The grade also counts further tests that are not in this folder. Hand in <name>.ipynb.
"""

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?::[ \t]*(?P<hint>.*?))?[ \t]*$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")


class SubmissionError(Exception):
    """A submission that cannot be turned into a module (unreadable file, syntax error)."""


# ----------------------------------------------------------------------------------------
# Student and solution versions
# ----------------------------------------------------------------------------------------

def strip_solutions(code: str, version: str, where: str = "cell") -> str:
    """One code cell's text in the given version ("student" or "solution")."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}.")
    out, open_at = [], None
    for i, line in enumerate(code.splitlines(), 1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_at is not None:
                raise ValueError(f"{where}, line {i}: BEGIN SOLUTION inside the region opened at "
                                 f"line {open_at}; close that one with '### END SOLUTION' first.")
            hint = (begin["hint"] or "").strip()
            if not hint:
                raise ValueError(f"{where}, line {i}: the marker has no hint; write "
                                 "'### BEGIN SOLUTION: <what the student should do>'.")
            open_at = i
            if version == "student":
                out.append(f"{begin['indent']}raise NotImplementedError({hint!r})")
        elif end:
            if open_at is None:
                raise ValueError(f"{where}, line {i}: END SOLUTION without a BEGIN SOLUTION above it.")
            open_at = None
        elif "BEGIN SOLUTION" in line or "END SOLUTION" in line:
            # A misspelt marker would otherwise leak the solution into the student version.
            raise ValueError(f"{where}, line {i}: malformed marker {line.strip()!r}; write "
                             "'### BEGIN SOLUTION: <hint>' or '### END SOLUTION' on a line of its own.")
        elif open_at is None or version == "solution":
            out.append(line)
    if open_at is not None:
        raise ValueError(f"{where}, line {open_at}: BEGIN SOLUTION is never closed; add "
                         "'### END SOLUTION' in the same cell.")
    return "\n".join(out)


def make_version(nb, version: str, name: str = "source"):
    """A copy of a source notebook (from jupytext.read) in the given version."""
    nb = copy.deepcopy(nb)
    regions = 0
    for k, cell in enumerate(nb.cells, 1):
        if cell.cell_type != "code":
            if "BEGIN SOLUTION" in cell.source or "END SOLUTION" in cell.source:
                raise ValueError(f"{name}, cell {k} ({cell.cell_type}): solution markers only work "
                                 "in code cells; move the solution into a code cell.")
            continue
        regions += sum(1 for line in cell.source.splitlines() if BEGIN.match(line))
        cell.source = strip_solutions(cell.source, version, f"{name}, cell {k}")
    if regions == 0:
        raise ValueError(f"{name} has no '### BEGIN SOLUTION: <hint>' region, so its student "
                         "version would be its solution; mark what students write.")
    nb.metadata.pop("jupytext", None)  # a release notebook is not paired with a script
    return nb


def _code_cells(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def _graded_nodes(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
                             ast.ClassDef)):
            yield node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                ast.literal_eval(node.value)
            except ValueError:
                continue
            if all(isinstance(t, ast.Name) and t.id.isupper() for t in targets):
                yield node


def module_source(cells: list[str], title: str) -> str:
    """The graded definitions of a notebook's code cells, as the text of a module.

    Only top-level imports, functions, classes and literal constants with upper-case names
    (``LEVELS = 5``) are kept: self-checks, plots and training runs in the notebook are not
    run on import. Raises :class:`SubmissionError` naming the cell of a syntax error.
    """
    future, body = [], []  # (text, is_import)
    for k, code in enumerate(cells, 1):
        # Jupyter magics and shell escapes are not Python; the grader never runs them.
        code = "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line
                         for line in code.splitlines())
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            where = f"code cell {k} has a syntax error" if len(cells) > 1 else "syntax error"
            raise SubmissionError(f"{where} at line {e.lineno}: {e.msg}; fix it (the code must "
                                  "run in Jupyter) and resubmit.") from None
        lines = code.splitlines()
        for node in _graded_nodes(tree):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            text = "\n".join(lines[start - 1:node.end_lineno])
            is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
            is_import = isinstance(node, (ast.Import, ast.ImportFrom))
            (future if is_future else body).append((text, is_import))
    pieces, out = future + body, f'"""{title}"""\n'
    for i, (text, is_import) in enumerate(pieces):
        joined_import = is_import and i > 0 and pieces[i - 1][1]  # import blocks stay together
        out += ("" if joined_import else "\n" if i == 0 else "\n\n") + text + "\n"
    return out


def submission_module(path: Path) -> str:
    """The module text of a submitted notebook (.ipynb) or percent script (.py)."""
    path = Path(path)
    try:
        if path.suffix == ".ipynb":
            import nbformat
            cells = _code_cells(nbformat.read(path, as_version=4))
        elif path.suffix == ".py":
            cells = [path.read_text(encoding="utf-8")]
        else:
            raise SubmissionError(f"{path.name} is neither a .ipynb nor a .py file; submit the notebook.")
    except SubmissionError:
        raise
    except Exception as e:  # nbformat raises several types for a damaged file
        kind = "notebook" if path.suffix == ".ipynb" else "UTF-8 text file"
        raise SubmissionError(f"{path.name} is not a readable {kind} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); save it again "
                              "from Jupyter and resubmit.") from None
    return module_source(cells, f"Graded definitions of {path.name} (generated; do not edit).")


def load_submission(path: Path, name: str) -> types.ModuleType:
    """Import a submission (.ipynb or .py) as module ``submission_<name>``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission {path} does not exist; pass the notebook or module "
                                "you want graded.")
    text = submission_module(path)
    # Tracebacks then show the lines of the generated module, not of the notebook's JSON.
    filename = f"{path} (graded definitions)"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    code = compile(text, filename, "exec")
    module = types.ModuleType(f"submission_{name}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses and pickling look modules up here
    exec(code, module.__dict__)
    return module


def _select(names: list[str] | None, known: list[str], which: str) -> list[str]:
    """``names`` (default: all of ``known``), refusing any that ``known`` lacks."""
    names = names or known
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown assignment(s) {unknown}; {which} {known}.")
    return names


def source_names(source_dir: Path = SOURCE_DIR) -> list[str]:
    """The assignment names: the stems of ``source_dir/a*.py``."""
    return sorted(p.stem for p in Path(source_dir).glob("a*.py"))


def release(out_dir: Path = RELEASE_DIR, source_dir: Path = SOURCE_DIR,
            grading_dir: Path = GRADING_DIR, names: list[str] | None = None) -> dict[str, list[Path]]:
    """Write each assignment's student and solution versions under ``out_dir/<version>/``.

    Per assignment and version: ``<name>.ipynb`` (unexecuted) and ``<name>.py`` (the graded
    definitions, importable). The student folder also gets ``grading/`` with the public tests
    only (never ``hidden/``) and a README. Also writes ``gradescope/<name>.zip``, the
    Gradescope autograders, and ``nbgrader/``, nbgrader's folder layout
    (:mod:`rmd_course.gradescope`). Returns the written files per version and per route.
    """
    import jupytext

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    known = source_names(source_dir)
    if not known:
        raise FileNotFoundError(f"no assignment sources (a*.py) in {source_dir}; pass --source.")
    names = _select(names, known, "the sources are")
    written = {v: [] for v in VERSIONS}
    for version in VERSIONS:
        folder = out_dir / version
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name in names:
            nb = make_version(jupytext.read(source_dir / f"{name}.py"), version, f"{name}.py")
            jupytext.write(nb, folder / f"{name}.ipynb", fmt="ipynb")
            title = f"{name}, {version} version: its graded definitions (generated; do not edit)."
            (folder / f"{name}.py").write_text(module_source(_code_cells(nb), title))
            written[version] += [folder / f"{name}.ipynb", folder / f"{name}.py"]
    (out_dir / "student" / "README.md").write_text(STUDENT_README)
    written["student"].append(out_dir / "student" / "README.md")
    public = out_dir / "student" / "grading"
    public.mkdir()
    for f in sorted(Path(grading_dir).iterdir()):
        if f.is_file() and (f.suffix == ".py" or f.name == "pytest.ini"):
            shutil.copy2(f, public / f.name)
            written["student"].append(public / f.name)
    from . import gradescope  # it imports this module

    gs = out_dir / "gradescope"
    if gs.exists():
        shutil.rmtree(gs)
    written["gradescope"] = gradescope.write_autograders(gs, names, grading_dir)
    written["nbgrader"] = gradescope.write_nbgrader(out_dir / "nbgrader", out_dir / "student",
                                                    out_dir / "solution", names)
    return written


# ----------------------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------------------

def grading_names(grading_dir: Path = GRADING_DIR) -> list[str]:
    """Assignments that have public grading tests ``test_<name>.py``."""
    return sorted(p.stem[len("test_"):] for p in Path(grading_dir).glob("test_*.py"))


def test_files(name: str, grading_dir: Path = GRADING_DIR) -> list[Path]:
    """The public and (where present) hidden grading tests of one assignment."""
    grading_dir = Path(grading_dir)
    files = [grading_dir / f"test_{name}.py", grading_dir / "hidden" / f"test_{name}_hidden.py"]
    return [f for f in files if f.exists()]


def run_tests(submission: Path | None, names: str | list[str], report: Path, *,
              grading_dir: Path = GRADING_DIR, timeout: float = 300, cwd: Path | None = None,
              extra: list[str] = ()) -> subprocess.CompletedProcess | None:
    """Run the grading tests of one or more assignments on ``submission`` in a fresh pytest process.

    ``submission``: a .ipynb or .py, or a folder of ``<name>.ipynb`` / ``<name>.py``. Results
    go to ``report`` (JSON lines, see assignments/grading/conftest.py). Returns the finished
    process, or None when it ran past ``timeout`` seconds and was killed.
    """
    grading_dir = Path(grading_dir).resolve()
    cmd = [sys.executable, "-m", "pytest", "-c", str(grading_dir / "pytest.ini"),
           "--rootdir", str(grading_dir), "-q", "--grade-report", str(Path(report).resolve()),
           *[str(f) for n in ([names] if isinstance(names, str) else names)
             for f in test_files(n, grading_dir)], *extra]
    if submission is not None:
        cmd += ["--submission", str(Path(submission).resolve())]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # no __pycache__ in the grading folder
    env.setdefault("OMP_NUM_THREADS", "1")  # toy models; parallel jobs must not oversubscribe
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session holds whatever the submission started
        proc.communicate()
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def read_report(report: Path) -> tuple[dict[str, int], dict[str, dict]]:
    """(points per collected test, result per finished test) from a grading report.

    A test with more than one result line was written to by someone besides the harness
    (which writes one line per test): it gets the outcome "rejected".
    """
    points, results, seen = {}, {}, Counter()
    if Path(report).exists():
        for line in Path(report).read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a damaged line proves nothing; its test counts as not run
            if not isinstance(entry, dict):
                continue
            if "collected" in entry:
                points.update(entry["collected"])
            elif isinstance(entry.get("test"), str):
                seen[entry["test"]] += 1
                results[entry["test"]] = entry
    for test, n in seen.items():
        if n > 1:
            results[test] = dict(test=test, outcome="rejected", exception="ForgedReport",
                                 message=f"the test report holds {n} results for this test, "
                                 "so something besides the grader wrote to it")
    return points, results


def collect_points(name: str, work: Path, grading_dir: Path = GRADING_DIR,
                   timeout: float = 300) -> dict[str, int]:
    """Points per grading test of one assignment, from a run that loads no submission.

    Grades are computed from this table, never from the points a submission's own test
    run reports. Raises RuntimeError when the tests cannot be collected.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    report = work / f"collect-{name}.jsonl"
    report.unlink(missing_ok=True)
    proc = run_tests(None, name, report, grading_dir=Path(grading_dir), timeout=timeout,
                     cwd=work, extra=["--collect-only"])
    points = read_report(report)[0]
    if not points:
        tail = " | ".join((proc.stdout if proc else "timed out").strip().splitlines()[-3:])
        raise RuntimeError(f"could not collect the grading tests of {name}: {tail}")
    return points


# ----------------------------------------------------------------------------------------
# The library's reference implementations are off limits
# ----------------------------------------------------------------------------------------

LIBRARIES = ("rmd_lib",)  # packages whose names a submission's imports are resolved in


def load_references(name: str, grading_dir: Path = GRADING_DIR) -> dict[str, list[str]]:
    """{graded function: dotted names of the library's reference implementations} of one
    assignment, from ``grading_dir/references.json`` (empty when there is none)."""
    path = Path(grading_dir) / "references.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get(name, {})


def _resolve(path: str):
    """The library object a dotted name stands for, or None. Only names inside
    :data:`LIBRARIES` are imported: a submission must not make the grader import anything."""
    parts = path.split(".")
    if parts[0] not in LIBRARIES:
        return None
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _used_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(dotted names a module's code imports or reaches through imported names, modules it
    star-imports or imports by a string)."""
    bound, used, whole = {}, set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                used.add(a.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name == "*":
                    whole.add(node.module)
                else:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
                    used.add(f"{node.module}.{a.name}")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and (
                    (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            whole.add(node.args[0].value)
    for node in ast.walk(tree):
        chain, n = [], node
        while isinstance(n, ast.Attribute):
            chain.append(n.attr)
            n = n.value
        if chain and isinstance(n, ast.Name) and n.id in bound:
            used.add(".".join([bound[n.id], *reversed(chain)]))
    return used, whole


def reference_uses(module_text: str, references: dict[str, list[str]]) -> dict[str, list[str]]:
    """{graded function: the reference implementations of it that a submission imports}.

    ``module_text`` is the submission's graded module (:func:`module_source`);
    ``references`` is :func:`load_references`'s table. An import counts wherever it is
    (inside a function too) and under any name that reaches the same object, re-exports
    included (``rmd_lib.attacks.pgd`` is ``rmd_lib.attacks.first_order.pgd``); a star
    import or an import by a string counts for every reference inside that module. A name
    built at run time (``getattr`` with a computed string) is not seen.
    """
    targets: dict[int, list[tuple[str, str]]] = {}
    for func, names in references.items():
        for ref in names:
            obj = _resolve(ref)
            if obj is None:
                raise ValueError(f"references.json names {ref} for {func}, which does not "
                                 "exist; fix the entry.")
            targets.setdefault(id(obj), []).append((func, ref))
    used, whole = _used_names(ast.parse(module_text))
    found: dict[str, set[str]] = {}
    for path in used:
        obj = _resolve(path)
        for func, _ in targets.get(id(obj), []) if obj is not None else []:
            found.setdefault(func, set()).add(path)
    for module in whole:
        for func, names in references.items():
            for ref in names:
                if ref.startswith(module + ".") and module.split(".")[0] in LIBRARIES:
                    found.setdefault(func, set()).add(module)
    return {f: sorted(p) for f, p in sorted(found.items())}


def _sub_names(node: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "sub"}


def tests_calling(test_file: Path) -> dict[str, set[str]]:
    """{test function: the submission's names it uses}, through the file's fixtures too."""
    tree = ast.parse(Path(test_file).read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    memo: dict[str, set[str]] = {}

    def names(f: str, seen: frozenset = frozenset()) -> set[str]:
        if f not in memo:
            node = funcs[f]
            out = _sub_names(node)
            for arg in node.args.args:
                if arg.arg in funcs and arg.arg not in seen:
                    out |= names(arg.arg, seen | {f})
            memo[f] = out
        return memo[f]

    return {f: names(f) for f in funcs if f.startswith("test_")}


def reject_reference_uses(results: dict[str, dict], points: dict[str, int],
                          uses: dict[str, list[str]], grading_dir: Path = GRADING_DIR) -> dict[str, dict]:
    """``results`` with every test that calls a function whose reference the submission
    imports turned into a failure that says so."""
    if not uses:
        return results
    results, calls = dict(results), {}
    for test in points:
        file, _, func = test.partition("::")
        if file not in calls:
            path = Path(grading_dir) / file
            calls[file] = tests_calling(path) if path.exists() else {}
        hit = sorted(set(calls[file].get(func.split("[")[0], ())) & set(uses))
        if hit:
            why = "; ".join(f"it imports {', '.join(uses[h])}, the library's reference "
                            f"implementation of {h}" for h in hit)
            results[test] = dict(test=test, outcome="rejected", exception="ReferenceImplementation",
                                 message=f"scored 0: {why}. Write {', '.join(hit)} yourself.")
    return results


def _summary(points: dict[str, int], results: dict[str, dict]) -> tuple[str, str]:
    """(per-test column, reason) of a graded row."""
    cells, failures = [], []
    for test, pts in points.items():
        r = results.get(test)
        if r is not None and r["outcome"] == "passed":
            cells.append(f"{test}={pts}/{pts}")
            continue
        r = r or {"exception": "not run", "message": "", "outcome": "not run"}
        failures.append(r)
        cells.append(f"{test}=0/{pts} ({r.get('exception') or r['outcome']})")
    if not failures:
        return "; ".join(cells), ""
    messages = {(f.get("exception"), f.get("message")) for f in failures}
    if len(messages) == 1 and len(failures) == len(points):
        exc, msg = messages.pop()
        return "; ".join(cells), f"every test failed with {exc}: {msg}"
    kinds = Counter(f.get("exception") or "failed" for f in failures)
    return "; ".join(cells), (f"{len(failures)} of {len(points)} tests failed: "
                              + ", ".join(f"{k} x{n}" for k, n in kinds.most_common()))


def assess(path: Path | None, name: str, work: Path, grading_dir: Path, timeout: float,
           points: dict[str, int]) -> dict:
    """Grade one submission against the trusted points table ``points``.

    The submission runs in its own pytest process; its results are read from that process's
    report file after it has exited, checked (:func:`read_report`) and scored here. Returns
    status ("graded", "missing", "unreadable", "timeout", "error"), reason, points (earned),
    max_points, results ({test: result}) and output (the pytest output's tail).
    """
    out = dict(status="", reason="", points=0, max_points=sum(points.values()), results={},
               output="")
    if path is None:
        return dict(out, status="missing", reason=f"no {name}.ipynb or {name}.py in the student's folder")
    try:
        module = submission_module(path)
    except SubmissionError as e:
        return dict(out, status="unreadable", reason=str(e))
    uses = reference_uses(module, load_references(name, grading_dir))
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{name}.py").write_text(module)
    report = work / f"{name}.report.jsonl"
    report.unlink(missing_ok=True)
    proc = run_tests(work / f"{name}.py", name, report, grading_dir=grading_dir, timeout=timeout, cwd=work)
    reported, results = read_report(report)
    output = (proc.stdout if proc else "")[-4000:]
    if not reported and not results:
        tail = " | ".join(output.strip().splitlines()[-3:])
        why = f"ran past the {timeout:g} s limit" if proc is None else f"pytest exited {proc.returncode}: {tail}"
        return dict(out, status="timeout" if proc is None else "error", reason=why, output=output)
    results = {t: r for t, r in results.items() if t in points}  # only the trusted tests count
    results = reject_reference_uses(results, points, uses, grading_dir)
    _, reason = _summary(points, results)
    status = "graded"
    if proc is None:
        status, reason = "timeout", f"ran past the {timeout:g} s limit; unfinished tests get 0. {reason}"
    earned = sum(p for t, p in points.items() if results.get(t, {}).get("outcome") == "passed")
    return dict(out, status=status, reason=reason, points=earned, results=results, output=output)


def grade_one(path: Path | None, name: str, work: Path, grading_dir: Path, timeout: float,
              points: dict[str, int]) -> dict:
    """Grade one submission: a CSV row without the student column."""
    a = assess(path, name, work, grading_dir, timeout, points)
    tests = _summary(points, a["results"])[0] if a["status"] in ("graded", "timeout") else ""
    return dict(assignment=name, points=a["points"], max_points=a["max_points"],
                status=a["status"], reason=a["reason"], tests=tests)


def find_submissions(submissions: Path, names: list[str]) -> tuple[dict[str, dict[str, Path | None]], list[str]]:
    """{student: {assignment: file or None}} and warnings about files that were not used."""
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise FileNotFoundError(
            f"submissions folder {submissions} does not exist; pass the folder that holds one "
            "sub-folder per student: SUBMISSIONS/<student>/<assignment>.ipynb")
    found, warnings = {}, []
    for entry in sorted(submissions.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if not entry.is_dir():
            warnings.append(f"ignored {entry}: submissions go in a folder per student "
                            f"({submissions}/<student>/{entry.name})")
            continue
        files = {}
        for f in sorted(entry.iterdir()):
            if f.name.startswith("."):
                continue
            if f.is_dir() and f.name in names:
                # nbgrader's layout: submitted/<student>/<assignment>/<assignment>.ipynb
                inner = [f / f"{f.name}{ext}" for ext in (".ipynb", ".py")]
                inner = [g for g in inner if g.is_file()]
                if inner:
                    files[f.name] = inner[0]
                else:
                    warnings.append(f"ignored {f}: it holds no {f.name}.ipynb")
            elif f.stem in names and f.suffix in (".ipynb", ".py"):
                # A notebook wins over a script of the same name: it is what students edit.
                if f.stem not in files or f.suffix == ".ipynb":
                    files[f.stem] = f
            else:
                warnings.append(f"ignored {f}: not named after an assignment "
                                f"({', '.join(n + '.ipynb' for n in names)})")
        found[entry.name] = {n: files.get(n) for n in names}
    if not found:
        raise FileNotFoundError(f"no student folders in {submissions}; lay submissions out as "
                                f"{submissions}/<student>/<assignment>.ipynb")
    return found, warnings


FIELDS = ["student", "assignment", "points", "max_points", "status", "reason", "tests"]


def grade(submissions: Path, out: Path, *, names: list[str] | None = None,
          grading_dir: Path = GRADING_DIR, timeout: float = 300, jobs: int = 1,
          work: Path | None = None) -> list[dict]:
    """Grade a folder of submissions into a CSV (columns :data:`FIELDS`); return the rows."""
    known = grading_names(grading_dir)
    if not known:
        raise FileNotFoundError(f"no grading tests (test_*.py) in {grading_dir}; pass --grading.")
    names = _select(names, known, "the graded ones are")
    found, warnings = find_submissions(submissions, names)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="rmd-grade-") as tmp:
        work = Path(work or tmp)
        todo = [(s, n, f) for s, files in found.items() for n, f in files.items()]
        work.mkdir(parents=True, exist_ok=True)

        def job(task):
            student, name, path = task
            return dict(student=student, **grade_one(path, name, work / student, Path(grading_dir),
                                                     timeout, tables[name]))

        # Collection loads no submission, so the per-submission limit does not apply to it.
        tables = {n: collect_points(n, work / "_collect", Path(grading_dir))
                  for n in sorted({t[1] for t in todo})}
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            rows = list(pool.map(job, todo))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


# ----------------------------------------------------------------------------------------
# Student and instructor books
# ----------------------------------------------------------------------------------------

AUDIENCES = ("student", "instructor")


def book_audience_config(audience: str) -> dict:
    """What the book build for ``audience`` ("student" or "instructor") changes.

    ``sphinx_config``: overrides for _config.yml's ``sphinx.config`` (sphinx-exercise's
    ``hide_solutions``); ``assignments``: the release version its Assignments pages show;
    ``toc_part``: the part that the staged _toc.yml gets (the instructor guide only for
    instructors).
    """
    if audience not in AUDIENCES:
        raise ValueError(f"audience must be one of {AUDIENCES}, got {audience!r}.")
    student = audience == "student"
    chapters = ([] if student else [{"file": "book/instructors"}])
    chapters += [{"file": f"assignments/{n}"} for n in source_names()]
    return {"sphinx_config": {"hide_solutions": student},
            "assignments": "student" if student else "solution",
            "toc_part": {"caption": "Assignments", "chapters": chapters}}


def reading_page(nb) -> str:
    """An assignment notebook as a plain MyST page: prose as is, code as Python blocks.

    Not a notebook on purpose: the book's launch buttons would send readers to
    ``assignments/<name>.ipynb`` on GitHub, which exists only in the releases that
    ``python -m rmd_course.course release`` writes and instructors hand out.
    """
    blocks = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            blocks.append(cell.source)
        elif cell.cell_type == "code" and cell.source.strip():
            blocks.append(f"```python\n{cell.source}\n```")
    return "\n\n".join(blocks) + "\n"


def stage_audience(stage: Path, audience: str, source_dir: Path = SOURCE_DIR) -> list[Path]:
    """Adapt a staged book source (``_build/stage-<name>/``) to ``audience``.

    Writes the audience's assignments as reading pages to ``stage/assignments/``, sets
    the Sphinx overrides in ``stage/_config.yml`` and inserts the Assignments part into
    ``stage/_toc.yml`` before "Back matter". Returns the staged assignment pages.
    """
    import jupytext
    import yaml

    stage = Path(stage)
    cfg = book_audience_config(audience)
    folder = stage / "assignments"
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for name in source_names(source_dir):
        nb = make_version(jupytext.read(Path(source_dir) / f"{name}.py"), cfg["assignments"], name)
        page = folder / f"{name}.md"
        page.write_text(reading_page(nb), encoding="utf-8")
        staged.append(page)
    config = yaml.safe_load((stage / "_config.yml").read_text())
    config.setdefault("sphinx", {}).setdefault("config", {}).update(cfg["sphinx_config"])
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    toc = yaml.safe_load((stage / "_toc.yml").read_text())
    parts = toc.setdefault("parts", [])
    at = next((i for i, p in enumerate(parts) if p.get("caption") == "Back matter"), len(parts))
    parts.insert(at, cfg["toc_part"])
    (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    return staged


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmd_course.course",
                                 description="Release the course assignments and grade submissions.")
    sub = ap.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="write the student and solution versions of the assignments")
    rel.add_argument("--out", type=Path, default=RELEASE_DIR, help="default: _build/assignments")
    rel.add_argument("--source", type=Path, default=SOURCE_DIR, help="default: assignments/source")
    rel.add_argument("--only", nargs="+", metavar="NAME", help="these assignments only")
    gr = sub.add_parser("grade", help="grade SUBMISSIONS/<student>/<assignment>.ipynb into a CSV")
    gr.add_argument("submissions", type=Path)
    gr.add_argument("--out", type=Path, default=Path("grades.csv"), help="default: grades.csv")
    gr.add_argument("--assignments", nargs="+", metavar="NAME", help="default: all graded ones")
    gr.add_argument("--grading", type=Path, default=GRADING_DIR, help="default: assignments/grading")
    gr.add_argument("--timeout", type=float, default=300, help="seconds per submission (default 300)")
    gr.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    gr.add_argument("--work", type=Path, help="keep the generated modules and test reports here")
    args = ap.parse_args(argv)
    try:
        if args.command == "release":
            written = release(args.out, args.source, names=args.only)
            for version, files in written.items():
                print(f"{version}: {len(files)} files in {Path(args.out) / version}")
            return 0
        rows = grade(args.submissions, args.out, names=args.assignments, grading_dir=args.grading,
                     timeout=args.timeout, jobs=args.jobs, work=args.work)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['student']:<16} {r['assignment']:<16} {r['points']:>3}/{r['max_points']} {r['status']}"
              + (f"  {r['reason']}" if r["reason"] else ""))
    print(f"grades: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
