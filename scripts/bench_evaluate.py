"""Time ``rmd_lib.evaluate robust-accuracy`` on one machine: one process with T threads
against T torchrun ranks with one thread each, and one process with one thread, on the same
images; check that the three results tables are identical.

    python scripts/bench_evaluate.py --count 200 --ranks 2 --out /tmp/bench

Prints the wall times, the ratio (one process / ranks), and the parallel efficiency of the
ranks, (time of one thread) / (ranks x time of the ranks). Models are trained into the cache
(or found there) first, outside the timings.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--no-single-thread", action="store_true",
                   help="skip the one-thread run (no efficiency then)")
    args, extra = p.parse_known_args()
    out = Path(args.out)
    task = ["-m", "rmd_lib.evaluate", "--task", "robust-accuracy", "--profile", args.profile,
            "--chunk", str(args.chunk), "--device", "cpu", *extra]
    py = [sys.executable]
    run(py + task + ["--count", "1", "--out", str(out / "warmup")], args.ranks)
    common = task + ["--count", str(args.count)]
    times = {"threads": run(py + common + ["--out", str(out / "threads")], args.ranks),
             "ranks": run(py + ["-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={args.ranks}"] + common
                          + ["--out", str(out / "ranks")], 1)}
    if not args.no_single_thread:
        times["one"] = run(py + common + ["--out", str(out / "one")], 1)
    tables = {k: json.loads((out / k / "robust-accuracy.json").read_text())["tables"]
              for k in times}
    for t in tables.values():
        t.pop("evaluate")
    same = all(t == tables["ranks"] for t in tables.values())
    print(f"{args.count} images, profile {args.profile}, {os.cpu_count()} CPU cores")
    print(f"1 process x {args.ranks} threads: {times['threads']:.1f} s")
    print(f"{args.ranks} ranks x 1 thread:      {times['ranks']:.1f} s")
    print(f"ratio (1 process / ranks): {times['threads'] / times['ranks']:.2f}")
    if "one" in times:
        print(f"1 process x 1 thread:       {times['one']:.1f} s")
        print(f"parallel efficiency of the ranks: "
              f"{times['one'] / (args.ranks * times['ranks']):.2f}")
    print(f"results tables identical: {same}")


if __name__ == "__main__":
    main()
