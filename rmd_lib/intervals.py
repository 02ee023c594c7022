"""95% Wilson intervals for the accuracies and shares the chapters show: table cells and
error bars, added at display time to rows whose values are fractions of n items."""
from __future__ import annotations

import numbers

import numpy as np

from .evaluation import wilson_interval

__all__ = ["interval_text", "with_intervals", "error_bars", "difference_text"]


def interval_text(value: float, n: int, digits: int = 2) -> str:
    """``value`` (a fraction of ``n`` items) with its 95% Wilson interval, as
    ``"0.45 [0.38, 0.52]"``; ``"n/a"`` when n is 0 or the value is missing."""
    if value is None or n == 0 or value != value:  # no item, or NaN: no share to report
        return "n/a"
    low, high = wilson_interval(value * n, int(n))
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def with_intervals(rows: list[dict], columns, n, digits: int = 2) -> list[dict]:
    """Copies of ``rows`` in which each of ``columns`` reads "value [low, high]".

    ``n`` is the number of items behind every value (an int), or the name of a column that
    holds each row's own count. Other columns, and cells that hold no number (a dash for
    an attack that did not run), are left as they are.
    """
    out = []
    for row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise KeyError(f"rows have no column {missing[0]!r}; they have {list(row)}.")
        if isinstance(n, str):
            if n not in row:
                raise KeyError(f"n names the column {n!r}, which the rows lack; "
                               f"they have {list(row)}.")
            count = int(row[n])
        else:
            count = int(n)
        out.append({k: interval_text(v, count, digits) if k in columns and _number(v)
                    else v for k, v in row.items()})
    return out


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def error_bars(values, n: int) -> np.ndarray:
    """Matplotlib's ``yerr`` for fractions ``values`` of ``n`` items each: the distances
    (2, len(values)) from each value down and up to its 95% Wilson interval."""
    values = np.asarray(values, dtype=float)
    bounds = np.array([wilson_interval(v * n, int(n)) for v in values]).reshape(-1, 2)
    return np.clip(np.stack([values - bounds[:, 0], bounds[:, 1] - values]), 0.0, None)


def difference_text(diff: dict, digits: int = 2) -> str:
    """A paired difference from :func:`~rmd_lib.evaluation.paired_difference` as
    ``"+0.35 [+0.25, +0.45]"``: the mean of b - a over the pairs and its 95% interval."""
    missing = {"mean", "low", "high"} - set(diff)
    if missing:
        raise KeyError(f"diff lacks {sorted(missing)}; pass what paired_difference returns.")
    return (f"{diff['mean']:+.{digits}f} [{diff['low']:+.{digits}f}, "
            f"{diff['high']:+.{digits}f}]")
