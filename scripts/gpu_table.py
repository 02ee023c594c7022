#!/usr/bin/env python3
"""The colab profile's table: chapter, seconds, peak GPU memory, and a verdict.

    python scripts/gpu_table.py _build/colab/timings.json

The budget is a free Colab GPU's (a 16 GB T4): each chapter within 10 minutes and 12 GB.
Measured on a faster GPU, the time is scaled by that GPU's speed relative to a T4:
``--speedup`` (default 8, an H200 against a T4 in fp32), so 75 s on an H200 is the limit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

T4_SECONDS = 600.0
PEAK_GB = 12.0


def table(timings: dict, speedup: float) -> list[str]:
    limit = T4_SECONDS / speedup
    lines = [f"| chapter | seconds | peak GB | verdict (at most {limit:.0f} s here, "
             f"{PEAK_GB:g} GB) |", "|---|---|---|---|"]
    for name, row in timings.get("notebooks", {}).items():
        seconds, peak = row.get("seconds"), row.get("peak_gpu_gb")
        problems = []
        if row.get("status", "ok") != "ok":
            problems.append(row["status"])
        if seconds is not None and seconds > limit:
            problems.append(f"over time ({seconds / limit:.1f}x)")
        if peak is None:
            problems.append("no GPU peak recorded")
        elif peak > PEAK_GB:
            problems.append(f"over memory ({peak:.1f} GB)")
        verdict = "within budget" if not problems else "; ".join(problems)
        peak_text = "-" if peak is None else f"{peak:.2f}"
        lines.append(f"| {name} | {seconds:.1f} | {peak_text} | {verdict} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("timings", type=Path)
    ap.add_argument("--speedup", type=float, default=8.0,
                    help="this GPU's fp32 speed over a T4's (default 8: an H200)")
    args = ap.parse_args(argv)
    if not args.timings.exists():
        print(f"error: {args.timings} does not exist; run the chapters first", file=sys.stderr)
        return 2
    print("\n".join(table(json.loads(args.timings.read_text()), args.speedup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
