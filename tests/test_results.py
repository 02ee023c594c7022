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
def check_generative_models(res: dict) -> None:
    head, sources = res["headline"], res["provenance"]["data_source"]
    assert len(sources) == 2, f"expected the modelled and the other dataset, got {sources}"
    for gen in ("vae", "wgangp"):
        values = {k: v for k, v in head.items() if k.startswith(f"{gen}_median_mse_")}
        assert len(values) == 3, f"{gen}: expected three projection errors, got {sorted(values)}"
        assert all(0 < v < 1 for v in values.values()), f"{gen}: per-pixel MSE outside (0, 1): {values}"
    # The VAE fits the data it was trained on better than noise, in every profile.
    own = [v for k, v in head.items() if k.startswith("vae_median_mse_") and not k.endswith("noise")]
    assert min(own) < head["vae_median_mse_noise"], head
    for model in ("vae", "gan"):
        assert res["provenance"]["models"].get(model), f"no provenance for the {model}"


def check_invert_and_classify(res: dict) -> None:
    head, tables = res["headline"], res["tables"]
    names = sorted(tables["attack_tables"])
    assert names, "no attack tables"
    for name in names:
        for key in ("clean_classifier", "clean_inc", "fgsm_0.3_classifier", "fgsm_0.3_inc",
                    "bim_0.3_classifier", "bim_0.3_inc"):
            v = head[f"{name}_{key}"]
            assert 0.0 <= v <= 1.0, f"{name}_{key} = {v} is not an accuracy"
        # Chance is 0.1 on ten classes: a trained classifier must be well above it.
        assert head[f"{name}_clean_classifier"] > 0.5, head
        rows = tables["attack_tables"][name]
        clean = [r for r in rows if r["eps"] == 0.0]
        assert {r["attack"] for r in clean} == {"FGSM", "BIM"}
        assert len({r["classifier"] for r in clean}) == 1, "eps = 0 must give the same clean accuracy"
        for att in ("FGSM", "BIM"):
            eps = [r["eps"] for r in rows if r["attack"] == att]
            assert eps == sorted(eps) and eps[0] == 0.0 and eps[-1] == 0.3, eps
        # The best MSE after t steps among the first R restarts can only fall with t and R.
        curves = tables["sweep"][name]["curves"]
        restarts = sorted(curves, key=int)
        for r in restarts:
            vals = [curves[r][t] for t in sorted(curves[r], key=int)]
            assert all(b <= a + 1e-12 for a, b in zip(vals, vals[1:])), (name, r, vals)
        for r_small, r_big in zip(restarts, restarts[1:]):
            for t in curves[r_big]:
                assert curves[r_big][t] <= curves[r_small][t] + 1e-12, (name, t, r_small, r_big)
        # pruning against every restart run to the end, on the same images and starts
        t = tables["projection_tail"][name]
        for k in ("p90 MSE, default", "p90 MSE, every restart", "median MSE, default",
                  "median MSE, every restart"):
            assert 0 < t[k] < 1, (name, k, t)
        assert t["p90 MSE, default"] >= t["median MSE, default"], t
        assert 0.0 <= t["share of images 1% worse"] <= 1.0, t
        # pruning only ever removes rows: it never costs more gradient evaluations
        assert (0 < t["gradient evaluations per image, default"]
                <= t["gradient evaluations per image, every restart"]), t


def _accuracies(rows, columns):
    for r in rows:
        for c in columns:
            assert 0.0 <= r[c] <= 1.0, f"{c} = {r[c]} is not an accuracy (row {r})"


def check_white_box_attacks(res: dict) -> None:
    tables = res["tables"]
    assert tables["cw_tables"], "no CW tables"
    for name, rows in tables["cw_tables"].items():
        kappas = [r["kappa"] for r in rows]
        assert kappas == sorted(kappas) and kappas[0] == 0.0, kappas
        _accuracies(rows, ("classifier", "INC", "found"))
        assert all(r["median L2"] >= 0 for r in rows)
        for key in ("cw_kappa0_classifier", "cw_kappa0_inc", "cw_kappa_max_inc"):
            assert f"{name}_{key}" in res["headline"], key
    for name, rows in tables["unrolled_tables"].items():
        ks = [r["k"] for r in rows]
        assert ks == sorted(ks) and len(ks) >= 2, ks
        _accuracies(rows, ("unrolled model", "INC"))
        assert all(r["seconds per gradient"] > 0 for r in rows)
        assert all(res["headline"][f"{name}_unrolled_{k}_inc"] == r["INC"] for k, r in zip(ks, rows))


def check_substitute_attacks(res: dict) -> None:
    tables, head = res["tables"], res["tables"]["transfer"]
    assert head, "no transfer tables"
    for name, by_source in tables["transfer"].items():
        assert set(by_source) == {"plain", "with adversarial inputs", "autoencoder"}, set(by_source)
        for rows in by_source.values():
            _accuracies(rows, ("substitute", "classifier", "INC"))
            assert {r["attack"] for r in rows} == {"FGSM", "BIM"}
        _accuracies(tables["baseline"][name], ("classifier", "INC"))
    for row in tables["substitutes"]:
        sizes = [int(v) for v in row["training set by round"].split(", ")]
        assert sizes == sorted(sizes) and sizes[-1] <= row["oracle queries"], row
        _accuracies([row], ("accuracy", "agreement with INC"))
    for row in tables["autoencoder"]:
        assert 0 < row["per-pixel MSE, G(E(x)) vs INC's projection"] < 1, row


def check_adaptive_attacks(res: dict) -> None:
    tables = res["tables"]["robust_accuracy"]
    attacks = ("FGSM (transfer)", "PGD (transfer)", "BPDA", "BPDA+EOT", "tangent BPDA+EOT",
               "latent")
    for name, by_norm in tables.items():
        assert set(by_norm) == {"linf", "l2"}, set(by_norm)
        for norm, rows in by_norm.items():
            eps = [r["eps"] for r in rows]
            assert eps == sorted(eps) and eps[0] > 0, eps
            _accuracies(rows, attacks + ("worst case",))
            for r in rows:  # an image robust to all attacks is robust to each one
                assert r["worst case"] <= min(r[a] for a in attacks) + 1e-12, r
            # Square Attack: at the largest budget only, on the first n images
            top, rest = rows[-1], rows[:-1]
            wide = "worst case with Square, first n"
            assert all(r["Square"] is None and r[wide] is None for r in rest), rest
            _accuracies([top], ("Square", "worst case, first n", wide))
            assert isinstance(top["first n"], int) and top["first n"] >= 1, top
            # the AND over more attacks can only be lower, image by image
            assert top[wide] <= min(top["Square"], top["worst case, first n"]) + 1e-12, top
            key = f"{name}_{norm}_{top['eps']:g}"
            assert res["headline"][f"{key}_square"] == top["Square"]
            assert res["headline"][f"{key}_worst_case_with_square"] == top[wide]
    for row in res["tables"]["summary"]:
        assert abs(row["drop"] - (row["first-order"] - row["adaptive"])) < 1e-9, row
        assert row["worst case, all attacks"] <= row["adaptive"] + 1e-12, row
    for row in res["tables"]["square"]:
        n = row["first n"]
        only = row["other attacks"] - row["all, with Square"]
        assert abs(row["broken by Square only"] - only * n) < 1e-6, row


def _share(v) -> bool:
    return v is None or 0.0 <= v <= 1.0  # None: undefined (no valid pair to take a share of)


def check_overpowered_attack(res: dict) -> None:
    head, tables = res["headline"], res["tables"]["pairs"]
    assert tables, "no pair tables"
    for name, rows in tables.items():
        eps = [r["eps"] for r in rows]
        assert eps == sorted(eps) and len(eps) >= 2 and eps[0] > 0, eps
        for r in rows:
            for c in ("valid", "valid and different", "different among valid"):
                assert _share(r[c]), f"{name}: {c} = {r[c]} is not a share (row {r})"
            # a success is a valid pair classified differently: never more than the valid ones
            assert r["valid and different"] <= r["valid"] + 1e-12, r
            assert r["mean divergence (valid)"] is None or r["mean divergence (valid)"] >= 0, r
            assert head[f"{name}_eps{r['eps']:g}_success"] == r["valid and different"]
        assert 0.0 <= head[f"{name}_neighbour_success"] <= 1.0
    for row in res["tables"]["inc_check"]:
        assert row["successful pairs checked"] >= 0
        for c in ("INC labels them differently", "INC keeps both labels"):
            assert _share(row[c]), row


def check_manifold_training(res: dict) -> None:
    head, tables = res["headline"], res["tables"]["comparison"]
    assert tables, "no comparison tables"
    for name, rows in tables.items():
        labels = ["standard", "manifold", "PGD", "authors"]
        assert [r["classifier"] for r in rows] == labels, rows
        for r in rows:
            _accuracies([r], ("clean", "white-box PGD", "INC clean", "INC worst case"))
            attacks = ("INC FGSM (transfer)", "INC PGD (transfer)", "INC tangent BPDA+EOT")
            _accuracies([r], attacks)
            assert r["INC worst case"] <= min(r[a] for a in attacks) + 1e-12, r
            assert _share(r["pairs: valid and different"]) and _share(r["path uncertain"]), r
            assert r["path max slope"] >= 0, r
        for label in ("standard", "manifold", "pgd", "authors"):
            assert 0.5 < head[f"{name}_{label}_clean"] <= 1.0, f"{name} {label}: clean accuracy"
        models = res["provenance"]["models"]
        for method in ("manifold", "pgd", "authors"):
            assert models.get(f"classifier_{method}_{name}"), f"no provenance for {method} ({name})"
        # the authors' variant against the PGD classifier it resumed from, paired
        versus = res["tables"]["paired_pairs"][name]["authors minus PGD"]
        assert set(versus) == {"clean", "white-box PGD", "pairs: valid and different",
                               "pairs: mean score"}, versus
        for d in versus.values():
            assert d["low"] <= d["mean"] <= d["high"], d


def check_faces(res: dict) -> None:
    head, tables = res["headline"], res["tables"]
    data, sources = tables["data"], res["provenance"]["data_source"]
    # The stand-in is labelled as one everywhere, and never called CelebA.
    assert head["stand_in"] == float(data["stand_in"]), (head["stand_in"], data)
    if data["stand_in"]:
        assert "celeba" not in data["name"].lower() and "standin" in data["name"], data
        assert data["source"].startswith("stand-in for CelebA"), data
        assert all(v.startswith("stand-in") for v in sources.values()), sources
    else:
        assert data["name"] == "celeba" and data["source"].startswith("CelebA"), data
    _accuracies(tables["fgsm"], ("classifier", "INC"))
    _accuracies(tables["cw"], ("classifier", "INC", "found"))
    _accuracies(tables["substitute"], ("substitute", "classifier", "INC"))
    assert 0.5 <= head["classifier_clean"] <= 1.0, "a two-class classifier below chance"
    assert 0 < head["projection_median_mse"] < 1
    assert [r["classifier"] for r in tables["adversarial_training"]] == ["standard", "manifold-trained"]
    for row in tables["adversarial_training"]:
        assert row["valid and different"] <= row["valid"] + 1e-12, row


def check_deep_image_prior(res: dict) -> None:
    head, tables = res["headline"], res["tables"]
    assert res["provenance"]["data_source"].get("imagenet"), "no image source recorded"
    assert "EfficientNet" in tables["classifier"] or "ResNet" in tables["classifier"], tables["classifier"]
    _accuracies(tables["bim"], ("classifier",))
    steps = [r["steps"] for r in tables["curve"]]
    assert steps == sorted(steps) and head["dip_stop"] in steps, (steps, head["dip_stop"])
    for row in tables["curve"]:
        _accuracies([row], [c for c in row if c != "steps" and not c.endswith("MSE to clean")])
        assert all(row[c] >= 0 for c in row if c.endswith("MSE to clean")), row
    _accuracies(tables["table"], ("unprotected", "DIP-protected"))
    _accuracies(tables["bpda"], ("DIP-protected, BIM on the classifier", "DIP-protected, BPDA"))
    assert len(tables["bim"]) == len(tables["table"]) - 1 and tables["bpda"], tables["bpda"]
    budgets = {r["eps (x255)"] for r in tables["bim"]}
    assert {r["eps (x255)"] for r in tables["bpda"]} <= budgets, "BPDA at a budget BIM did not use"


CHAPTER_CHECKS: dict[str, Callable[[dict], None]] = {
    "generative_models": check_generative_models,
    "invert_and_classify": check_invert_and_classify,
    "white_box_attacks": check_white_box_attacks,
    "substitute_attacks": check_substitute_attacks,
    "adaptive_attacks": check_adaptive_attacks,
    "overpowered_attack": check_overpowered_attack,
    "manifold_training": check_manifold_training,
    "faces": check_faces,
    "deep_image_prior": check_deep_image_prior,
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
    sources = prov["data_source"]
    assert isinstance(sources, dict) and sources, "provenance.data_source: dataset name -> source"
    assert all(isinstance(v, str) and v for v in sources.values()), sources
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
