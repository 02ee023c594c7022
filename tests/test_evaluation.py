"""Accuracy, attack tables, Markdown tables, and the Run that writes a chapter's results file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rmd_lib.attacks import fgsm, pgd
from rmd_lib.evaluation import (Run, accuracy, attack_table, markdown_table, paired_difference,
                                predict, start_run, strict_claims, wilson_interval)


def test_accuracy_of_fixed_logits(fixed_logits):
    always_one = fixed_logits([0.0, 2.0, 1.0])  # predicts class 1 for every image
    x = torch.rand(10, 1, 6, 6)
    y = torch.tensor([1, 1, 1, 0, 2, 1, 0, 0, 2, 2])
    assert accuracy(always_one, x, y) == pytest.approx(0.4)
    assert accuracy(always_one, x, torch.ones(10, dtype=torch.long)) == 1.0
    assert accuracy(always_one, x, torch.zeros(10, dtype=torch.long)) == 0.0


def test_predict_batches_like_one_call(tiny_net, tiny_batch):
    x, _ = tiny_batch
    with torch.no_grad():
        assert torch.allclose(predict(tiny_net, x, batch_size=3), tiny_net(x), atol=1e-6)


def test_predict_checks_its_input(tiny_net):
    with pytest.raises(ValueError, match="unsqueeze"):
        predict(tiny_net, torch.rand(1, 6, 6))


def test_attack_table(tiny_net, fixed_logits):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = tiny_net(x).argmax(1)  # the classifier is right on every clean image
    constant = fixed_logits([5.0, 0.0, 0.0])  # a 'defense' that always says 0
    attacks = {"fgsm": (fgsm, {}), "pgd": (pgd, {"steps": 3})}
    defenses = {"const": constant, "same": tiny_net}  # 'same' defends nothing: it is the classifier
    got = {}
    rows = attack_table(tiny_net, defenses, x, y, attacks, [0, 0.3], norm="linf",
                        outcomes=got)
    assert len(rows) == 4
    assert len(got) == 4 * 3  # every (attack, eps) row, for the classifier and each defense
    for r in rows:
        for m in ("classifier", "const", "same"):
            ok = got[r["attack"], r["eps"], m]
            assert ok.dtype == torch.bool and ok.shape == (16,)
            assert r[m] == pytest.approx(ok.float().mean().item())
    assert torch.equal(got["fgsm", 0.0, "const"], y == 0)
    assert [list(r) for r in rows] == [["attack", "norm", "eps", "classifier", "const", "same"]] * 4
    assert all(r["same"] == r["classifier"] for r in rows)  # defenses see the adversarial images
    assert [(r["attack"], r["eps"]) for r in rows] == [("fgsm", 0.0), ("fgsm", 0.3),
                                                       ("pgd", 0.0), ("pgd", 0.3)]
    assert all(r["norm"] == "linf" for r in rows)
    clean = [r for r in rows if r["eps"] == 0]
    attacked = [r for r in rows if r["eps"] > 0]
    assert all(r["classifier"] == 1.0 for r in clean)
    assert all(r["classifier"] < 1.0 for r in attacked)
    expected_const = (y == 0).float().mean().item()
    assert all(r["const"] == pytest.approx(expected_const) for r in rows)


def test_markdown_table_format():
    rows = [{"attack": "fgsm", "eps": 0.1, "acc": 0.98765},
            {"attack": "pgd", "eps": 0.3, "acc": 0.5}]
    assert markdown_table(rows).splitlines() == [
        "| attack | eps | acc |",
        "|---|---|---|",
        "| fgsm | 0.100 | 0.988 |",
        "| pgd | 0.300 | 0.500 |",
    ]
    # Chosen columns, other rounding, and a missing entry left blank.
    assert markdown_table(rows, columns=["acc", "other"], digits=1).splitlines() == [
        "| acc | other |", "|---|---|", "| 1.0 |  |", "| 0.5 |  |"]


@pytest.fixture
def run(tmp_path):
    return start_run("99_test_chapter", profile="smoke", seed=3, device="cpu", results_dir=tmp_path)


def test_start_run_settings(run, tmp_path):
    assert isinstance(run, Run)
    assert run.profile.name == "smoke" and run.seed == 3
    assert run.device == torch.device("cpu")
    assert run.results_dir == tmp_path


def test_claims_pass_and_fail(run):
    assert run.claim("accuracy high", 0.9, ">=", 0.8) is True
    assert run.claim("strict", 0.8, ">", 0.8) is False
    assert run.claim("mse small", 0.01, "<", 0.1) is True
    assert run.claim("mse at most", 0.1, "<=", 0.1) is True
    assert run.claim("nan never passes", float("nan"), "<=", 1.0) is False
    assert [c["passed"] for c in run.claims] == [True, False, True, True, False]
    assert run.claims[0] == {"name": "accuracy high", "value": 0.9, "op": ">=",
                             "threshold": 0.8, "passed": True, "why": None, "detail": None}
    with pytest.raises(ValueError, match="op must be one of"):
        run.claim("bad op", 1.0, "==", 1.0)


def test_assert_claims(run):
    run.claim("fine", 1.0, ">=", 0.5)
    run.assert_claims()  # all pass: no error
    run.claim("robust accuracy", 0.12, ">=", 0.6)
    with pytest.raises(AssertionError) as err:
        run.assert_claims()
    msg = str(err.value)
    assert "robust accuracy" in msg and "0.12 >= 0.6" in msg
    assert "1 claim(s)" in msg and "99_test_chapter" in msg and "smoke" in msg
    assert "fine" not in msg


def test_report_claims_shows_a_failure_and_raises_only_when_strict(run, monkeypatch, capsys):
    run.claim("robust accuracy", 0.12, ">=", 0.6, why="the paper's figure", detail="n = 200")
    run.claim("fine", 1.0, ">=", 0.5)
    monkeypatch.delenv("RMD_STRICT", raising=False)
    run.report_claims()  # a reader's build: reported, not raised
    box = capsys.readouterr().out
    assert "What this run shows: 1 of 2 claims hold" in box and ":class: warning" in box
    assert "| **FAIL** | robust accuracy | 0.12 (n = 200) | >= 0.6 | the paper's figure |" in box
    assert "| **PASS** | fine | 1 | >= 0.5 |  |" in box
    monkeypatch.setenv("RMD_STRICT", "1")
    with pytest.raises(AssertionError, match="robust accuracy"):
        run.report_claims()
    monkeypatch.setenv("RMD_STRICT", "yes")
    with pytest.raises(ValueError, match="RMD_STRICT must be 0 or 1"):
        strict_claims()


def test_claims_box_when_all_hold_or_none_is_checked(run):
    assert "0 of 0 claims hold" in run.claims_markdown() and "checks no claim" in run.claims_markdown()
    run.claim("a|b", 1.0, ">=", 0.5)
    box = run.claims_markdown()
    assert ":class: tip" in box and "1 of 1 claims hold" in box
    assert "a\\|b" in box  # a pipe in a name does not break the table


def test_wilson_interval_known_values():
    # Wilson (1927); 95%: 0 of 10 gives [0, 0.2775], 5 of 10 gives [0.2366, 0.7634].
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(873, 1000)
    assert low < 0.873 < high and high - low == pytest.approx(0.0413, abs=1e-3)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n must be"):
        wilson_interval(0, 0)


def test_paired_difference_means_intervals_and_mcnemar():
    a = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 0, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(-0.3) and d["n"] == 10
    assert d["low"] < -0.3 < d["high"]
    # three discordant pairs, all lost: the exact two-sided binomial p is 2 / 2**3
    assert d["p_mcnemar"] == pytest.approx(0.25)
    # a constant shift has no spread: the interval is the shift itself
    x = np.linspace(0, 1, 20)
    d = paired_difference(x, x - 0.5)
    assert d["low"] == pytest.approx(-0.5) and d["high"] == pytest.approx(-0.5)
    assert "p_mcnemar" not in d
    with pytest.raises(ValueError, match="paired"):
        paired_difference(x, x[:5])


def test_write_results_file(run, tmp_path, tiny_mnist):
    run.record_data(tiny_mnist)

    class Model:
        provenance = "cache classifier-abc.safetensors"

    run.record_model("classifier", Model())
    with run.timer("attack"):
        sum(range(1000))
    run.claim("clean accuracy", 0.97, ">=", 0.9)
    path = run.write({"clean_accuracy": 0.97, "n": 5}, table=[{"eps": np.float32(0.1),
                                                               "acc": torch.tensor(0.5)}])
    assert path == tmp_path / "99_test_chapter.json"
    assert not list(tmp_path.glob("*.part"))
    out = json.loads(path.read_text())
    assert out["chapter"] == "99_test_chapter" and out["profile"] == "smoke"
    prov = out["provenance"]
    for key in ("data_source", "seed", "device", "versions", "timings"):
        assert key in prov
    assert prov["data_source"] == {"mnist": tiny_mnist.source}
    assert prov["models"] == {"classifier": "cache classifier-abc.safetensors"}
    assert prov["seed"] == 3 and prov["device"] == "cpu" and prov["profile"] == "smoke"
    assert prov["versions"]["torch"] == torch.__version__ and "rmd_lib" in prov["versions"]
    assert prov["timings"]["attack"] >= 0 and prov["timings"]["total"] >= prov["timings"]["attack"]
    assert out["headline"] == {"clean_accuracy": 0.97, "n": 5}
    assert out["claims"] == run.claims
    assert out["tables"]["table"][0]["eps"] == pytest.approx(0.1)
    assert out["tables"]["table"][0]["acc"] == 0.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.9", None])
def test_write_refuses_non_finite_headline(run, tmp_path, bad):
    with pytest.raises(ValueError, match="robust_accuracy"):
        run.write({"clean_accuracy": 0.9, "robust_accuracy": bad})
    assert not (tmp_path / "99_test_chapter.json").exists()


def test_unrecorded_model_provenance_is_unknown(run):
    run.record_model("mystery", object())
    assert run.models["mystery"] == "unknown"


def test_start_run_seeds_everything(tmp_path):
    start_run("a", profile="smoke", seed=5, device="cpu", results_dir=tmp_path)
    first = (torch.rand(3), np.random.rand(3))
    start_run("a", profile="smoke", seed=5, device="cpu", results_dir=tmp_path)
    again = (torch.rand(3), np.random.rand(3))
    start_run("a", profile="smoke", seed=6, device="cpu", results_dir=tmp_path)
    other = torch.rand(3)
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not torch.equal(first[0], other)


@pytest.mark.parametrize("seed", ["1", 1.0, True, None])
def test_start_run_rejects_bad_seed(seed, tmp_path):
    with pytest.raises(TypeError, match="seed must be an integer"):
        start_run("a", profile="smoke", seed=seed, device="cpu", results_dir=tmp_path)


def test_results_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RMD_RESULTS_DIR", str(tmp_path / "res"))
    r = start_run("env_chapter", profile="smoke", device="cpu")
    path = r.write({"x": 1.0})
    assert path == tmp_path / "res" / "env_chapter.json" and path.exists()


def test_write_accepts_numpy_scalars(run):
    # np.float32 is not a Python float, but it is a finite number and must be written as one.
    path = run.write({"acc": np.float32(0.75), "n": np.int64(3), "mse": np.float64(0.5)})
    assert json.loads(path.read_text())["headline"] == {"acc": 0.75, "n": 3, "mse": 0.5}
    with pytest.raises(ValueError, match="acc"):
        run.write({"acc": np.float32("nan")})


# ---------------------------------------------------------------------------------------
# The banner that opens each chapter, and the run's wall time in its claims box.
# ---------------------------------------------------------------------------------------
def test_banner_names_profile_device_data_with_sizes_and_seed(run, tiny_mnist):
    import types

    run.record_data(tiny_mnist)
    photos = types.SimpleNamespace(x=torch.zeros(20, 3, 128, 96),
                                   source="foolbox /opt/venv/lib/site-packages/foolbox/data")
    run.record_data(photos, name="imagenet")
    box = run.banner_markdown()
    assert box.startswith("```{admonition} This run: profile smoke, cpu, seed 3\n")
    assert ":class: note rmd-banner" in box and box.endswith("\n```")
    assert "**Profile** `smoke`" in box and "at most 90 s on 2 CPU cores" in box
    threads = torch.get_num_threads()
    assert "**Device**: cpu (" in box and f"{threads} thread{'s' * (threads != 1)})" in box
    assert ("**MNIST**: 64 training and 32 test images, not the full 60,000/10,000; "
            "from made by the test (random images)") in box
    # an image set: its count and size; no machine's folders on the page
    assert "**ImageNet photos**: 20 images at 128×96; from foolbox .../data" in box
    assert "/opt/venv" not in box
    assert "**Seed**: 3." in box
    assert run.provenance()["data_sizes"] == {
        "mnist": {"train": 64, "test": 32}, "imagenet": {"images": 20, "shape": [3, 128, 96]}}


def test_banner_marks_only_a_subset_as_not_the_full_set(tmp_path, tiny_mnist):
    import types

    full = types.SimpleNamespace(name="fashion_mnist", x_train=range(60_000),
                                 x_test=range(10_000), source="torchvision download")
    run = start_run("99_x", profile="standard", seed=0, device="cpu", results_dir=tmp_path)
    run.record_data(full)
    box = run.banner_markdown()
    assert "**Fashion-MNIST**: 60,000 training and 10,000 test images; from torchvision" in box
    assert "not the full" not in box and "at most 18 min on 2 CPU cores" in box
    run.record_data(types.SimpleNamespace(source="s"), name="celeba")  # no sizes known
    assert "**CelebA**: sizes not recorded; from s" in run.banner_markdown()
    with pytest.raises(ValueError, match="name="):
        run.record_data(types.SimpleNamespace(source="s"))


def test_banner_is_shown_and_records_keyword_data(run, tiny_mnist, capsys):
    run.banner(mnist=tiny_mnist)  # outside a notebook it is printed
    out = capsys.readouterr().out
    assert "rmd-banner" in out and "**MNIST**: 64 training" in out
    assert run.data_sources == {"mnist": tiny_mnist.source}


def test_claims_box_gives_the_wall_time_against_the_budget(run, monkeypatch):
    import rmd_lib.evaluation as ev

    run.claim("fine", 1.0, ">=", 0.5)
    monkeypatch.setattr(run, "elapsed", lambda: 75.2)
    box = run.claims_markdown()
    assert ":class: tip rmd-claims" in box
    assert "This run took 1 min 15 s from its start to this box, within the `smoke` " \
           "budget of 1 min 30 s per chapter." in box
    monkeypatch.setattr(run, "elapsed", lambda: 3725.0)
    assert "took 1 h 2 min" in run.claims_markdown() and "over the `smoke`" in run.claims_markdown()
    assert ev._duration(12.4) == "12 s"
    run.claims.clear()
    assert "checks no claim" in run.claims_markdown() and "This run took" in run.claims_markdown()


def test_time_budgets_are_the_runners():
    import importlib.util
    from pathlib import Path

    from rmd_lib.evaluation import EXPECTED_TIME, TIME_BUDGET_S
    from rmd_lib.profiles import PROFILES

    path = Path(__file__).resolve().parent.parent / "scripts" / "run_notebooks.py"
    spec = importlib.util.spec_from_file_location("run_notebooks_budgets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.BUDGET_PER_NOTEBOOK == TIME_BUDGET_S
    assert set(EXPECTED_TIME) == set(PROFILES)


def test_expected_time_per_chapter_says_how_it_was_obtained(tmp_path, capsys,
                                                              monkeypatch):
    import re
    from pathlib import Path

    from rmd_lib import evaluation as ev
    from rmd_lib.evaluation import Run, expected_time, start_run
    from rmd_lib.profiles import PROFILES

    root = Path(__file__).resolve().parent.parent
    # the chapter names are the ones the notebooks open their runs with
    names = [re.search(r'start_run\("(\w+)"', p.read_text()).group(1)
             for p in sorted((root / "notebooks").glob("[0-9][0-9]_*.py"))]
    assert tuple(names) == ev.CHAPTERS
    for chapter in ev.CHAPTERS:
        colab = expected_time("colab", chapter)
        assert "an estimate, not yet run on a GPU" in colab and "10 min" in colab
        assert "75 s on an H200" in colab and "1/8" in colab
        assert "an estimate" in expected_time("paper", chapter)
        standard = expected_time("standard", chapter)
        took = ev.STANDARD_MEASURED_S[chapter]
        if took:  # a measurement, with its seconds, and flagged when over the budget
            assert f"(measured alone: {took:.0f} s" in standard
            assert ("over the 18-min budget" in standard) == (took > 18 * 60)
        else:
            assert "the profile's budget, not a measurement" in standard
    # every chapter has an entry, and the book's total exists only when all are measured
    assert set(ev.STANDARD_MEASURED_S) == set(ev.CHAPTERS)
    complete = all(ev.STANDARD_MEASURED_S.values())
    assert (ev.STANDARD_BOOK_MIN is not None) == complete
    ev.STANDARD_MEASURED_S["faces"], saved = 1200.0, ev.STANDARD_MEASURED_S["faces"]
    try:
        assert "about 20 min on 2 CPU cores (measured alone: 1200 s, over the 18-min budget"\
            in expected_time("standard", "faces")
        assert "8: 20" in ev.standard_summary()
    finally:
        ev.STANDARD_MEASURED_S["faces"] = saved
    # the banner and the start of a run carry the chapter's line
    run = Run("adaptive_attacks", PROFILES["colab"], 0, torch.device("cpu"), tmp_path)
    assert expected_time("colab", "adaptive_attacks") in run.banner_markdown()
    # and the banner glues the standard time that every chapter's opening box quotes
    import myst_nb

    glued = {}
    monkeypatch.setattr(myst_nb, "glue",
                        lambda name, value, display=True: glued.update({name: value}))
    run.banner()
    assert glued == {"time_standard": expected_time("standard", "adaptive_attacks")}
    start_run("faces", "standard", 0, "cpu", tmp_path)
    assert expected_time("standard", "faces") in capsys.readouterr().out
    # once gpu_check.sh has measured colab, the estimate wording goes
    ev.COLAB_MEASURED = True
    try:
        assert "estimate" not in expected_time("colab", "faces")
    finally:
        ev.COLAB_MEASURED = False
    # README states the same figures, and that colab has not run on a GPU
    readme = (root / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `colab`"))
    assert "not yet run on a GPU" in row and "estimate" in row
    row = next(line for line in readme.splitlines() if line.startswith("| `standard`"))
    assert ev.standard_summary() in row
