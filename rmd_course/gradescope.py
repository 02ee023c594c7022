"""Gradescope autograders and nbgrader-style folders for the course assignments.

``python -m rmd_course.course release`` calls :func:`write_autograders` and
:func:`write_nbgrader`. Each ``gradescope/<name>.zip`` follows Gradescope's layout for a
custom autograder: ``setup.sh`` (run once, as root, when Gradescope builds the image) and
``run_autograder`` at the top, next to the grading tests, hidden ones included, and the
book's packages (``lib/``), which ``setup.sh`` installs. On Gradescope the zip is unpacked
into ``/autograder/source``, the student's upload lies in ``/autograder/submission`` and
``run_autograder`` must leave ``/autograder/results/results.json``; ``AUTOGRADER_ROOT``
moves that root elsewhere (the tests use a temporary folder).

``run_autograder`` calls ``python -m rmd_course.gradescope run``, which grades as the CSV
route does (:func:`rmd_course.course.assess`): the points come from a collection run that
loads no submission; the submission runs in a pytest process of its own, and its results
are read from that process's report file after it has exited; only then, and only here,
is ``results.json`` written, over anything the submission left there.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from . import course

ROOT = course.ROOT

SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image (Ubuntu).
set -euo pipefail
apt-get update -q && apt-get install -y -q python3 python3-pip python3-venv
python3 -m venv /autograder/venv
# CPU wheels of torch: the toy models of the assignments need no GPU.
/autograder/venv/bin/pip install -q --index-url https://download.pytorch.org/whl/cpu \\
  torch torchvision
/autograder/venv/bin/pip install -q /autograder/source/lib pytest nbformat
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for every submission. AUTOGRADER_ROOT (default /autograder) holds
# source/ (this zip), submission/ (the upload) and results/ (where results.json goes);
# RMD_PYTHON is the Python that has the book's library (default: setup.sh's venv).
set -euo pipefail
root="${{AUTOGRADER_ROOT:-/autograder}}"
python="${{RMD_PYTHON:-$root/venv/bin/python}}"
mkdir -p "$root/results"
cd "$root/source"
exec "$python" -m rmd_course.gradescope run --assignment {name} \\
  --submission "$root/submission" --grading "$root/source/grading" \\
  --results "$root/results/results.json" --timeout {timeout:g}
"""

# Gradescope's results.json, as far as this autograder writes it (the documented keys and
# their types; "status" is optional there and always written here).
RESULTS_SCHEMA = {
    "type": "object",
    "required": ["score", "tests"],
    "properties": {
        "score": {"type": "number", "minimum": 0},
        "execution_time": {"type": "number", "minimum": 0},
        "output": {"type": "string"},
        "visibility": {"enum": ["hidden", "after_due_date", "after_published", "visible"]},
        "stdout_visibility": {"enum": ["hidden", "after_due_date", "after_published", "visible"]},
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "score", "max_score", "status", "output"],
                "properties": {
                    "name": {"type": "string"},
                    "score": {"type": "number", "minimum": 0},
                    "max_score": {"type": "number", "minimum": 0},
                    "status": {"enum": ["passed", "failed"]},
                    "output": {"type": "string"},
                    "visibility": {"enum": ["hidden", "after_due_date", "after_published",
                                            "visible"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}

# What the zip's lib/ holds: enough for `pip install lib/` to install the book's packages.
LIB_FILES = ("pyproject.toml", "README.md")
LIB_PACKAGES = ("rmd_lib", "rmd_course")


def _add_tree(zf: zipfile.ZipFile, folder: Path, arcname: str) -> None:
    for f in sorted(folder.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
            zf.write(f, f"{arcname}/{f.relative_to(folder).as_posix()}")


def _add_text(zf: zipfile.ZipFile, arcname: str, text: str, executable: bool = False) -> None:
    info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = (0o100755 if executable else 0o100644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, text)


def write_autograder(name: str, out_dir: Path, grading_dir: Path = course.GRADING_DIR,
                     timeout: float = 600) -> Path:
    """Write ``out_dir/<name>.zip``, the Gradescope autograder of one assignment."""
    grading_dir = Path(grading_dir)
    tests = course.test_files(name, grading_dir)
    if not tests:
        raise FileNotFoundError(f"no grading tests of {name} in {grading_dir}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        _add_text(zf, "setup.sh", SETUP_SH, executable=True)
        _add_text(zf, "run_autograder", RUN_AUTOGRADER.format(name=name, timeout=timeout),
                  executable=True)
        for f in ["conftest.py", "pytest.ini", "references.json"]:
            if (grading_dir / f).exists():
                zf.write(grading_dir / f, f"grading/{f}")
        for f in tests:
            zf.write(f, f"grading/{f.relative_to(grading_dir).as_posix()}")
        for f in LIB_FILES:
            zf.write(ROOT / f, f"lib/{f}")
        for package in LIB_PACKAGES:
            _add_tree(zf, ROOT / package, f"lib/{package}")
    return path


def write_autograders(out_dir: Path, names: list[str],
                      grading_dir: Path = course.GRADING_DIR) -> list[Path]:
    """One autograder zip per assignment that has grading tests."""
    graded = set(course.grading_names(grading_dir))
    return [write_autograder(n, out_dir, grading_dir) for n in names if n in graded]


def write_nbgrader(out_dir: Path, student_dir: Path, solution_dir: Path,
                   names: list[str]) -> list[Path]:
    """nbgrader's course layout under ``out_dir``: ``source/<name>/<name>.ipynb`` (the
    solution), ``release/<name>/<name>.ipynb`` (the student version) and an empty
    ``submitted/`` that ``python -m rmd_course.course grade out_dir/submitted`` grades."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    written = []
    for kind, folder in (("source", solution_dir), ("release", student_dir)):
        for name in names:
            (out_dir / kind / name).mkdir(parents=True)
            written.append(Path(shutil.copy2(Path(folder) / f"{name}.ipynb", out_dir / kind / name)))
    (out_dir / "submitted").mkdir()
    return written


# ----------------------------------------------------------------------------------------
# Inside the autograder
# ----------------------------------------------------------------------------------------

def find_upload(folder: Path, name: str) -> Path | None:
    """The uploaded notebook: ``<name>.ipynb`` (or ``.py``), else the only notebook there."""
    folder = Path(folder)
    for f in (folder / f"{name}.ipynb", folder / f"{name}.py"):
        if f.is_file():
            return f
    notebooks = sorted(folder.rglob("*.ipynb")) if folder.is_dir() else []
    return notebooks[0] if len(notebooks) == 1 else None


def results_json(name: str, assessed: dict, points: dict[str, int]) -> dict:
    """Gradescope's results.json for one assessed submission (see :func:`course.assess`)."""
    tests = []
    for test, pts in points.items():
        r = assessed["results"].get(test) or {"outcome": "not run", "message": "",
                                               "exception": None}
        passed = r["outcome"] == "passed"
        if passed:
            output = ""
        elif r.get("exception"):
            output = f"{r['exception']}: {r.get('message', '')}".rstrip(": ")
        else:
            output = r["outcome"]
        tests.append({
            "name": test,
            "score": pts if passed else 0,
            "max_score": pts,
            "status": "passed" if passed else "failed",
            "output": output,
            # Hidden cases are shown once the instructor publishes the grades.
            "visibility": "after_published" if test.startswith("hidden/") else "visible",
        })
    summary = f"{name}: {assessed['points']}/{assessed['max_points']} points"
    if assessed["reason"]:
        summary += f". {assessed['reason']}"
    return {"score": assessed["points"], "output": summary, "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}


def run(name: str, submission: Path, results: Path, grading_dir: Path,
        timeout: float = 600) -> dict:
    """Grade the upload in ``submission`` and write Gradescope's ``results`` file."""
    grading_dir = Path(grading_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="rmd-gradescope-") as tmp:
        work = Path(tmp)
        points = course.collect_points(name, work / "collect", grading_dir)
        upload = find_upload(submission, name)
        assessed = course.assess(upload, name, work / "submission", grading_dir, timeout, points)
    if upload is None:
        assessed["reason"] = (f"no {name}.ipynb in the upload; upload the notebook "
                              f"{name}.ipynb (or exactly one .ipynb)")
    out = results_json(name, assessed, points)
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = results.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(out, indent=1))
    tmp_out.replace(results)  # replaces whatever the submission may have written there
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmd_course.gradescope",
                                 description="Grade one upload inside a Gradescope autograder.")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="grade SUBMISSION into Gradescope's results.json")
    r.add_argument("--assignment", required=True)
    r.add_argument("--submission", type=Path, required=True, help="the upload's folder")
    r.add_argument("--results", type=Path, required=True, help="results.json to write")
    r.add_argument("--grading", type=Path, default=course.GRADING_DIR)
    r.add_argument("--timeout", type=float, default=600, help="seconds for the submission")
    args = ap.parse_args(argv)
    out = run(args.assignment, args.submission, args.results, args.grading, args.timeout)
    print(out["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
