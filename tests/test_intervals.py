"""Interval cells and error bars for the chapters' tables and plots."""
from __future__ import annotations

import numpy as np
import pytest

from rmd_lib.evaluation import paired_difference
from rmd_lib.intervals import difference_text, error_bars, interval_text, with_intervals


def test_interval_text_is_the_wilson_interval():
    # 5 of 10: Wilson's 95% interval is (0.2366, 0.7634)
    assert interval_text(0.5, 10) == "0.50 [0.24, 0.76]"
    assert interval_text(0.0, 10, digits=3) == "0.000 [0.000, 0.278]"
    assert interval_text(float("nan"), 10) == "n/a"
    assert interval_text(0.5, 0) == "n/a"


def test_with_intervals_changes_only_the_named_columns():
    rows = [{"eps": 1.0, "valid": 0.5, "n": 10}, {"eps": 2.0, "valid": 1.0, "n": 4}]
    out = with_intervals(rows, ["valid"], 10)
    assert out[0] == {"eps": 1.0, "valid": "0.50 [0.24, 0.76]", "n": 10}
    assert rows[0]["valid"] == 0.5  # the input rows are not modified
    per_row = with_intervals(rows, ["valid"], "n")
    assert per_row[1]["valid"] == interval_text(1.0, 4)
    dashed = with_intervals([{"Square": "–", "valid": 0.5}], ["Square", "valid"], 10)
    assert dashed == [{"Square": "–", "valid": "0.50 [0.24, 0.76]"}]
    with pytest.raises(KeyError, match="no column 'success'"):
        with_intervals(rows, ["success"], 10)
    with pytest.raises(KeyError, match="count"):
        with_intervals(rows, ["valid"], "count")


def test_error_bars_reach_the_interval_ends():
    values = [0.0, 0.5, 1.0]
    bars = error_bars(values, 10)
    assert bars.shape == (2, 3)
    assert (bars >= 0).all()
    np.testing.assert_allclose(bars[:, 1], [0.5 - 0.2366, 0.7634 - 0.5], atol=1e-4)
    assert bars[0, 0] == 0.0 and bars[1, 2] == 0.0  # the interval stays inside [0, 1]


def test_difference_text_is_the_paired_mean_and_its_interval():
    a = np.array([0, 0, 0, 1, 0, 1, 0, 0], dtype=float)
    b = np.array([1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    d = paired_difference(a, b)
    text = difference_text(d)
    assert text.startswith("+0.50 [") and text == (
        f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]")
    with pytest.raises(KeyError, match="paired_difference"):
        difference_text({"mean": 0.1})
