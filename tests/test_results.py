"""Each notebook's results file is complete and every claim in it holds.

Reads ``$RMD_RESULTS_DIR/<chapter>.json`` (default ``_build/smoke/results``), written by a
run of scripts/run_notebooks.py. A missing file is skipped, unless ``RMD_REQUIRE_RESULTS=1``
(as in ``make test``), when it fails. With ``RMD_EXPECT_PROFILE`` set, the file's profile
must be that one.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_run_notebooks():
    # One definition of the chapter name, shared with the script that runs the notebooks.
    path = ROOT / "scripts" / "run_notebooks.py"
    spec = importlib.util.spec_from_file_location("run_notebooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chapter_name = _load_run_notebooks().chapter_name

PROVENANCE = {"data_source", "seed", "device", "versions", "timings"}
CLAIM_KEYS = {"name", "passed", "value", "threshold"}


def results_dir() -> Path:
    d = Path(os.environ.get("RMD_RESULTS_DIR", "_build/smoke/results"))
    return d if d.is_absolute() else ROOT / d


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------------
# Chapter-specific checks go here: chapter name -> function(results: dict) that asserts.
# They run after the generic checks below, on the same parsed JSON.
# ---------------------------------------------------------------------------------------
CHAPTER_CHECKS: dict[str, Callable[[dict], None]] = {
}


def load_results(ipynb: Path) -> dict:
    path = results_dir() / f"{chapter_name(ipynb)}.json"
    if not path.exists():
        msg = (f"{path} is missing: run `python scripts/run_notebooks.py --profile smoke "
               f"--out _build/smoke --only {ipynb.stem}` (or `make test`)")
        if os.environ.get("RMD_REQUIRE_RESULTS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        pytest.fail(f"{path} is not valid JSON: {exc}")


def test_results_file(ipynb: Path):
    res = load_results(ipynb)
    chapter = chapter_name(ipynb)
    assert res.get("chapter") == chapter, f"'chapter' is {res.get('chapter')!r}, expected {chapter!r}"

    assert isinstance(res.get("profile"), str) and res["profile"], "'profile' is missing"
    expected_profile = os.environ.get("RMD_EXPECT_PROFILE")
    if expected_profile:
        assert res["profile"] == expected_profile, (
            f"'profile' is {res['profile']!r}, but this run used {expected_profile!r}")

    prov = res.get("provenance")
    assert isinstance(prov, dict), "'provenance' is missing"
    assert not PROVENANCE - prov.keys(), f"'provenance' lacks {sorted(PROVENANCE - prov.keys())}"
    assert isinstance(prov["data_source"], str) and prov["data_source"]
    assert isinstance(prov["versions"], dict) and prov["versions"]
    assert isinstance(prov["timings"], dict)

    headline = res.get("headline")
    assert isinstance(headline, dict) and headline, "'headline' must be a non-empty dict"
    bad = {k: v for k, v in headline.items() if not is_number(v)}
    assert not bad, f"'headline' values must be finite numbers: {bad}"

    claims = res.get("claims")
    assert isinstance(claims, list), "'claims' must be a list"
    for claim in claims:
        assert isinstance(claim, dict) and not CLAIM_KEYS - claim.keys(), (
            f"claim {claim!r} lacks {sorted(CLAIM_KEYS - set(claim))}")
        assert isinstance(claim["passed"], bool), f"claim {claim['name']!r}: 'passed' is not a bool"
    failed = [c for c in claims if not c["passed"]]
    assert not failed, "claims that do not hold:\n" + "\n".join(
        f"  {c['name']}: value {c['value']!r}, threshold {c['threshold']!r}" for c in failed)

    check = CHAPTER_CHECKS.get(chapter)
    if check is not None:
        check(res)
