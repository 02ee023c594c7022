#!/usr/bin/env python3
"""Execute the book's notebooks with papermill, one profile at a time.

    python scripts/run_notebooks.py --profile smoke --out _build/smoke [--only NAME]

For each ``notebooks/*.ipynb`` (sorted by name) this writes

    DIR/notebooks/<name>.ipynb   the executed notebook, outputs included
    DIR/results/<chapter>.json   written by the notebook itself (results_dir parameter)
    DIR/timings.json             wall time of each notebook

where ``<chapter>`` is the file stem without its ``NN_`` prefix. A claim that does not hold
is reported (in the chapter's box, in its results file and in the summary printed here), and
does not stop the run, unless ``RMD_STRICT=1`` (as ``make test`` sets): then the notebook
raises and counts as failed. A notebook that fails is named with the cell that raised; the
run goes on with the next ones (``--stop-early`` stops at the first) and exits 1 at the end.
Run it with the virtualenv's Python: the kernel it starts is that interpreter.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "python3"
# Per-notebook wall-time budgets (seconds) from the profiles' definitions; exceeding
# one is reported, not fatal, because CI machines differ in speed.
BUDGET_PER_NOTEBOOK = {"smoke": 90.0, "standard": 18 * 60.0}
# the book's flag; its measured time is rmd_lib.evaluation.STANDARD_BOOK_MIN
BUDGET_TOTAL = {"standard": 120 * 60.0}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def chapter_name(path: Path) -> str:
    """``01_generative_models.ipynb`` -> ``generative_models``."""
    return re.sub(r"^\d+_", "", path.stem)


def select_notebooks(only: str | None) -> list[Path]:
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not notebooks:
        sys.exit(f"error: no notebooks found in {NOTEBOOKS}")
    if only is None:
        return notebooks
    key = Path(only).name.removesuffix(".ipynb")
    chosen = [nb for nb in notebooks if key in (nb.stem, chapter_name(nb))]
    if not chosen:
        names = ", ".join(nb.stem for nb in notebooks)
        sys.exit(f"error: --only {only!r} matches no notebook; choose one of: {names}")
    return chosen


def ensure_kernel() -> None:
    """Make the ``python3`` kernel run this interpreter, not whatever Jupyter finds first.

    Jupyter searches $JUPYTER_PATH before the user's and the system's kernel folders, so
    putting this environment's share/jupyter first wins over a stray ``python3`` kernel
    registered elsewhere. The spec is (re)installed there when missing or stale.
    """
    share = Path(sys.prefix) / "share" / "jupyter"
    spec = share / "kernels" / KERNEL / "kernel.json"
    current = None
    if spec.exists():
        current = json.loads(spec.read_text()).get("argv", [None])[0]
    if current != sys.executable:
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL],
            check=True, stdout=subprocess.DEVNULL,
        )
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        p for p in (str(share), os.environ.get("JUPYTER_PATH", "")) if p
    )


def describe_failure(nb: Path, exc: Exception, output: Path) -> str:
    """A short report naming the notebook, the failing cell and the error."""
    lines = [f"FAILED: notebooks/{nb.name}"]
    ename = getattr(exc, "ename", None)
    if ename is not None:  # papermill.PapermillExecutionError
        count = getattr(exc, "exec_count", None)
        index = getattr(exc, "cell_index", None)
        lines.append(f"  cell: {index} of the executed notebook (execution count {count})")
        lines.append(f"  error: {ename}: {getattr(exc, 'evalue', '')}")
        source = (getattr(exc, "source", "") or "").strip().splitlines()
        if source:
            lines.append("  cell source (first lines):")
            lines += [f"    | {s}" for s in source[:12]]
        tb = getattr(exc, "traceback", None) or []
        if tb:
            lines.append("  traceback:")
            lines += ["    " + ANSI.sub("", t).replace("\n", "\n    ") for t in tb[-6:]]
    else:
        lines.append(f"  error: {type(exc).__name__}: {exc}")
    lines.append(f"  executed notebook, up to the error: {output}")
    return "\n".join(lines)


def peaks(results_file: Path) -> dict:
    """The chapter's peak memory in GB, resident and on the GPU, as its results file
    recorded them (None where not recorded, e.g. the GPU's on a CPU)."""
    try:
        prov = json.loads(results_file.read_text())["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        prov = {}
    return {"peak_rss_gb": prov.get("peak_rss_gb"), "peak_gpu_gb": prov.get("peak_gpu_gb")}


def claims_of(results_file: Path) -> dict | None:
    """How many of a results file's claims hold, and the names of those that do not."""
    try:
        claims = json.loads(results_file.read_text()).get("claims", [])
    except (OSError, ValueError):
        return None
    failed = [c.get("name", "?") for c in claims if not c.get("passed")]
    return {"held": len(claims) - len(failed), "total": len(claims), "failed": failed}


def print_summary(profile: str, timings: dict) -> None:
    rows = timings["notebooks"]
    width = max([len(n) for n in rows] + [8])
    budget = BUDGET_PER_NOTEBOOK.get(profile)
    print(f"\nprofile {profile}: notebook wall times and claims")
    print(f"  {'notebook':<{width}}  {'seconds':>8}  {'claims':>7}  status")
    for name, row in rows.items():
        note = row["status"]
        if budget is not None and row["seconds"] > budget:
            note += f" (over the {budget:.0f} s budget of profile {profile})"
        c = row.get("claims")
        held = f"{c['held']}/{c['total']}" if c else "-"
        mem = "  ".join(f"{label} {row[key]:.2f} GB" for key, label in
                        (("peak_rss_gb", "RSS"), ("peak_gpu_gb", "GPU")) if row.get(key) is not None)
        print(f"  {name:<{width}}  {row['seconds']:8.1f}  {held:>7}  {note}"
              + (f"  (peak {mem})" if mem else ""))
        for failed in (c or {}).get("failed", []):
            print(f"  {'':<{width}}  {'':>8}  {'FAIL':>7}  {failed}")
    total = sum(r["seconds"] for r in rows.values())
    note = ""
    if profile in BUDGET_TOTAL and total > BUDGET_TOTAL[profile]:
        note = f"  (over the {BUDGET_TOTAL[profile]:.0f} s budget of profile {profile})"
    print(f"  {'total':<{width}}  {total:8.1f}{note}")


def quiet_openmp(env) -> None:
    """Let the kernels' OpenMP threads sleep when they wait, instead of spinning.

    torch's CPU kernels use OpenMP, whose threads by default spin for a while at each
    barrier. Beside another busy process on the same cores (a second notebook, a test run)
    the spinning threads take the cores from the threads doing the work, and a chapter
    slows several times over: chapter 1 at `standard` beside one other torch process took
    2,623 s before this policy and 1,034 s with it, against 658 and 673 s alone. Kernels
    of small batches (a VAE epoch) run up to about twice as slow alone with it; DESIGN.md
    gives the measurements. The thread count
    is left as it is: the numbers a reduction gives may depend on it, and a chapter's
    numbers must not depend on the load of the machine. A value already set wins.
    """
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # GNU and LLVM OpenMP
    env.setdefault("KMP_BLOCKTIME", "0")  # Intel OpenMP (MKL builds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, help="smoke, standard, paper or auto")
    ap.add_argument("--out", required=True, type=Path, help="output folder, e.g. _build/smoke")
    ap.add_argument("--only", help="run one notebook: file name, stem or chapter name")
    ap.add_argument("--log-output", action="store_true",
                    help="also stream cell outputs to this log")
    ap.add_argument("--cell-timeout", type=int, default=None,
                    help="seconds a single cell may run (default: no limit)")
    ap.add_argument("--stop-early", action="store_true",
                    help="stop at the first notebook that fails (default: run them all)")
    args = ap.parse_args(argv)

    import papermill as pm  # imported late so that --help works without it

    notebooks = select_notebooks(args.only)
    out = args.out.resolve()
    results_dir = out / "results"
    executed_dir = out / "notebooks"
    results_dir.mkdir(parents=True, exist_ok=True)
    executed_dir.mkdir(parents=True, exist_ok=True)
    ensure_kernel()
    # Progress bars help a reader running a notebook, not a page of the book.
    os.environ.setdefault("TQDM_DISABLE", "1")
    quiet_openmp(os.environ)

    timings_path = out / "timings.json"
    timings = {"profile": args.profile, "python": sys.executable, "notebooks": {}}
    if args.only and timings_path.exists():  # keep the other notebooks' entries
        previous = json.loads(timings_path.read_text())
        if previous.get("profile") == args.profile:
            timings["notebooks"] = previous.get("notebooks", {})

    failures = []
    for nb in notebooks:
        chapter = chapter_name(nb)
        results_file = results_dir / f"{chapter}.json"
        results_file.unlink(missing_ok=True)  # a stale file must not pass for a new one
        output = executed_dir / nb.name
        print(f"==> {nb.name} (profile {args.profile})", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb), str(output),
                # Relative to the notebook folder, so no machine path shows in the book.
                parameters={"profile": args.profile,
                            "results_dir": os.path.relpath(results_dir, NOTEBOOKS)},
                kernel_name=KERNEL,
                language="python",  # notebooks made by jupytext may carry no kernelspec
                cwd=str(NOTEBOOKS),
                progress_bar=False,
                log_output=args.log_output,
                execution_timeout=args.cell_timeout,
            )
        except Exception as exc:  # noqa: BLE001 - any failure is reported, then the next runs
            seconds = time.perf_counter() - start
            timings["notebooks"][nb.stem] = {"seconds": round(seconds, 1), "status": "failed",
                                             "claims": claims_of(results_file)}
            timings_path.write_text(json.dumps(timings, indent=2) + "\n")
            report = describe_failure(nb, exc, output)
            failures.append(report)
            print("\n" + report, file=sys.stderr, flush=True)
            if args.stop_early:
                break
            continue
        seconds = time.perf_counter() - start
        status = "ok"
        if not results_file.exists():
            status = f"ok, but wrote no results/{chapter}.json"
            print(f"warning: {nb.name} did not write {results_file}", file=sys.stderr)
        claims = claims_of(results_file)
        timings["notebooks"][nb.stem] = {"seconds": round(seconds, 1), "status": status,
                                         "claims": claims, **peaks(results_file)}
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        held = f", claims {claims['held']}/{claims['total']} hold" if claims else ""
        print(f"    done in {seconds:.1f} s{held}", flush=True)

    print_summary(args.profile, timings)
    if failures:
        print(f"\n{len(failures)} notebook(s) failed:\n\n" + "\n\n".join(failures),
              file=sys.stderr)
        return 1
    print(f"\nexecuted notebooks: {executed_dir}\nresults: {results_dir}\ntimings: {timings_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
