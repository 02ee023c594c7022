"""The attack chapters' table functions and the shared chapter setup (rmd_lib.experiment)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import LinearGenerator

from rmd_lib.attack_tables import (correct, cw_table, robust_accuracy_table, transfer_table,
                                   unrolled_table, worst_case_with)
from rmd_lib.attacks import cw_l2, fgsm
from rmd_lib.evaluation import accuracy
from rmd_lib.experiment import Setup, prepare
from rmd_lib.projection import InvertAndClassify
from rmd_lib.randomness import Draws, per_image


@pytest.fixture
def parts(tiny_generator, make_net):
    G, clf = tiny_generator, make_net()
    inc = InvertAndClassify(G, clf, seed=0, steps=20, restarts=2)
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = clf(x).argmax(1)  # labels the classifier gets right
    return G, clf, inc, x, y


def test_correct_agrees_with_accuracy(parts):
    _, clf, _, x, y = parts
    y_mixed = y.clone()
    y_mixed[:5] = (y_mixed[:5] + 1) % 3
    ok = correct(clf, x, y_mixed, batch_size=4)
    assert ok.dtype == torch.bool and ok.shape == (12,)
    assert ok.float().mean().item() == pytest.approx(accuracy(clf, x, y_mixed))
    assert not ok[:5].any() and ok[5:].all()


def test_cw_table_rows(parts):
    _, clf, inc, x, y = parts
    rows = cw_table(clf, inc, x, y, (0.0, 0.5), steps=30, binary_steps=3)
    assert [r["kappa"] for r in rows] == [0.0, 0.5]
    assert rows[0]["found"] == 1.0 and rows[0]["classifier"] == 0.0  # the tiny net is easy
    assert rows[0]["median L2"] > 0
    assert all(0 <= r["INC"] <= 1 for r in rows)


def test_cw_table_counts_only_images_the_classifier_got_right(parts):
    _, clf, inc, x, y = parts
    y_mixed = y.clone()
    y_mixed[:4] = (y_mixed[:4] + 1) % 3  # four images the classifier already gets wrong
    rows = cw_table(clf, inc, x, y_mixed, (0.0,), steps=30, binary_steps=3)
    right = correct(clf, x, y_mixed)
    x_adv = cw_l2(clf, x, y_mixed, kappa=0.0, steps=30, binary_steps=3)
    found = right & ~correct(clf, x_adv, y_mixed)
    assert int(right.sum()) == 8
    assert rows[0]["found"] == pytest.approx(float(found.sum()) / 8)
    # the median distance is over searched-for examples only, not the ~0 moves of the others
    dist = (x_adv - x).flatten(1).norm(dim=1)
    assert rows[0]["median L2"] == pytest.approx(float(dist[found].median()))


def test_worst_case_scores_every_attack_on_the_same_draw(parts):
    _, clf, inc, x, y = parts
    calls = []

    def unchanged(x, y, eps, norm):
        calls.append(inc.draws.call)
        return x

    rows = robust_accuracy_table(inc, x, y, {"a": unchanged, "b": unchanged}, [0.1], norm="l2")
    # the same inputs on the same draw: the same outcomes, so clean, a, b and the worst case agree
    r = rows[0]
    assert r["clean"] == r["a"] == r["b"] == r["worst case"]
    inc.reset()
    assert r["clean"] == pytest.approx(float(correct(inc, x, y).float().mean()))
    assert calls == [1, 1]  # each attack starts after one scoring call, from the reset streams


def test_unrolled_table_rows(parts):
    G, clf, inc, x, y = parts
    rows = unrolled_table(G, clf, inc, x, y, (1, 4), eps=0.3, restarts=1, pgd_steps=3)
    assert [r["k"] for r in rows] == [1, 4]
    for r in rows:
        assert r["seconds per gradient"] > 0 and r["gradient norm"] > 0
        assert 0 <= r["unrolled model"] <= 1 and 0 <= r["INC"] <= 1


def test_transfer_table_measures_the_source_and_each_target(parts, make_net):
    _, clf, _, x, y = parts
    source = make_net(seed=3)
    rows = transfer_table(source, {"target": clf}, x, y, {"FGSM": (fgsm, {})}, [0.1, 0.3])
    assert [(r["attack"], r["eps"]) for r in rows] == [("FGSM", 0.1), ("FGSM", 0.3)]
    x_adv = fgsm(source, x, y, 0.3)
    assert rows[1]["substitute"] == pytest.approx(accuracy(source, x_adv, y))
    assert rows[1]["target"] == pytest.approx(accuracy(clf, x_adv, y))


def test_robust_accuracy_table_worst_case_is_the_and_over_attacks(parts):
    _, clf, _, x, y = parts

    def unchanged(x, y, eps, norm):
        return x

    def half_broken(x, y, eps, norm):  # replaces the first half by images of another label
        out = x.clone()
        out[: len(x) // 2] = x[torch.roll(torch.arange(len(x)), 1)][: len(x) // 2]
        return out

    attacks = {"none": unchanged, "fgsm": lambda x, y, e, n: fgsm(clf, x, y, e, norm=n),
               "swap": half_broken}
    rows = robust_accuracy_table(clf, x, y, attacks, [0.05, 0.5], norm="linf")
    assert [r["eps"] for r in rows] == [0.05, 0.5]
    for r in rows:
        assert r["none"] == 1.0
        assert r["worst case"] <= min(r["none"], r["fgsm"], r["swap"])
        ok = correct(clf, fgsm(clf, x, y, r["eps"]), y) & correct(clf, half_broken(x, y, 0, 0), y)
        assert r["worst case"] == pytest.approx(ok.float().mean().item())


def _swap(x, y, rows):
    """x with each image at ``rows`` replaced by the first image of another label: an
    attack that breaks exactly those images, for a classifier that gets x right."""
    out = x.clone()
    for i in rows:
        other = (y != y[i]).nonzero().flatten()
        assert len(other), "the test needs images of two labels"
        out[i] = x[other[0]]
    return out


def test_costly_attacks_run_on_the_first_n_at_one_budget(parts):
    _, clf, _, x, y = parts
    seen = []

    def costly(x, y, eps, norm):  # breaks images 1 and 3 of the first n
        seen.append((len(x), eps, norm))
        return _swap(x, y, [1, 3])

    attacks = {"second half": lambda x, y, e, n: _swap(x, y, range(6, 12)),
               "image 3": lambda x, y, e, n: _swap(x, y, [3])}
    rows = robust_accuracy_table(clf, x, y, attacks, [0.1, 0.3], norm="linf",
                                 costly={"Square": costly}, costly_n=8)
    assert seen == [(8, 0.3, "linf")]  # once, on the first 8 images, at the largest budget
    wide = worst_case_with({"Square": costly})
    assert list(rows[1]) == ["norm", "eps", "clean", "second half", "image 3", "worst case",
                             "first n", "worst case, first n", "Square", wide]
    low, top = rows
    for c in ("worst case, first n", "Square", wide):
        assert math.isnan(low[c]), c  # no costly attack ran at the smaller budget
    assert low["first n"] == top["first n"] == 8
    # per image, the AND over attacks on the first 8: each attack's outcome computed here
    ok = [correct(clf, a(x, y, 0.3, "linf"), y)[:8] for a in attacks.values()]
    cheap = correct(clf, x, y)[:8] & ok[0] & ok[1]
    square = correct(clf, costly(x[:8], y[:8], 0.3, "linf"), y[:8])
    assert top["worst case, first n"] == pytest.approx(cheap.float().mean().item())
    assert top["Square"] == pytest.approx(square.float().mean().item())
    assert top[wide] == pytest.approx((cheap & square).float().mean().item())
    # image 1 is broken by Square alone, image 3 by Square and another attack: the AND
    # drops by exactly the images only Square broke, not by Square's own count
    only_square = (cheap & ~square).float().mean().item()
    assert only_square == 1 / 8 and top["Square"] == 6 / 8
    assert top["worst case, first n"] == 5 / 8 and top[wide] == 4 / 8  # 3, 6, 7; and 1
    assert top["worst case, first n"] - top[wide] == pytest.approx(only_square)
    # the whole-set worst case is untouched by the costly attack
    full = correct(clf, x, y)
    for a in attacks.values():
        full &= correct(clf, a(x, y, 0.3, "linf"), y)
    assert top["worst case"] == pytest.approx(full.float().mean().item())


class _Coin(torch.nn.Module):
    """A randomised 'defense' whose label for image i is drawn from the stream (i, call):
    whether it is right depends on the draw alone, not on the input."""

    def __init__(self):
        super().__init__()
        self.draws = Draws(0)

    def forward(self, x):
        idx, call = self.draws.next(len(x))
        label = per_image(lambda g: torch.randint(3, (1,), generator=g), 0, idx, call)
        return torch.nn.functional.one_hot(label.flatten(), 3).float()


def test_costly_columns_are_scored_on_the_same_draw_as_the_rest():
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(40, dtype=torch.long)
    coin = _Coin()

    def unchanged(x, y, eps, norm):
        coin(x)  # an attack that queries the defense moves its streams on
        return x

    rows = robust_accuracy_table(coin, x, y, {"a": unchanged}, [0.2], norm="l2",
                                 costly={"slow": unchanged}, costly_n=30)
    r = rows[0]
    coin.draws.reset()
    draw0 = correct(coin, x, y)[:30]  # images 0..29 on the draw the table scores on
    later = correct(coin, x, y)[:30]
    assert not torch.equal(draw0, later)  # another draw would give other outcomes
    # the same inputs on the same draw give the same outcomes, image by image: the AND
    # over the clean, cheap and costly columns is the clean outcome itself
    assert r["slow"] == r["worst case, first n"] == r[worst_case_with(["slow"])]
    assert r["slow"] == pytest.approx(draw0.float().mean().item())
    assert r["clean"] == r["a"] == r["worst case"]


@pytest.mark.parametrize("options, match", [
    (dict(costly_n=None), "costly_n"), (dict(costly_n=13), "costly_n"),
    (dict(costly_n=4, costly_eps=0.25), "costly_eps"),
])
def test_costly_options_are_checked(parts, options, match):
    _, clf, _, x, y = parts
    with pytest.raises(ValueError, match=match):
        robust_accuracy_table(clf, x, y, {}, [0.1, 0.3], norm="linf",
                              costly={"slow": lambda x, y, e, n: x}, **options)


def test_costly_name_may_not_shadow_a_column(parts):
    _, clf, _, x, y = parts
    same = {"a": lambda x, y, e, n: x}
    with pytest.raises(ValueError, match="already columns"):
        robust_accuracy_table(clf, x, y, same, [0.1], norm="linf", costly=same, costly_n=3)


def test_setup_builds_the_defense_and_slices_test_images(tiny_mnist, tiny_generator, make_net,
                                                         tiny_profile):
    s = Setup("mnist", tiny_mnist, make_net(num_classes=10, image_shape=(1, 28, 28)),
              tiny_generator, tiny_generator)
    inc = s.inc(tiny_profile, seed=4, restarts=1)
    assert inc.projection == {"steps": tiny_profile.proj_steps, "restarts": 1} and inc.seed == 4
    x, y = s.test_images(5, "cpu", offset=27)
    assert torch.equal(x, tiny_mnist.x_test[27:32]) and torch.equal(y, tiny_mnist.y_test[27:32])


def test_attacker_inc_runs_every_restart_of_the_short_projection(tiny_mnist, make_net,
                                                                  tiny_profile):
    G = LinearGenerator(image_shape=(1, 28, 28))
    s = Setup("mnist", tiny_mnist, make_net(num_classes=10, image_shape=(1, 28, 28)), G, G)
    P = tiny_profile.with_(attack_proj=(12, 3))
    inc = s.attacker_inc(P, seed=2)
    assert inc.projection == {"steps": 12, "restarts": 3, "prune": ()} and inc.seed == 2
    x, _ = s.test_images(4, "cpu")
    # no restart leaves early: every row takes every step (early stopping aside)
    full = s.attacker_inc(P, seed=2, early_stop=False).project(x)
    assert full.latent_steps == 4 * 3 * 12
    pruned = s.inc(P, seed=2, steps=12, restarts=3, early_stop=False).project(x)
    assert pruned.latent_steps < full.latent_steps  # the library default would prune


def test_prepare_trains_through_the_cache_and_records_the_run(tiny_mnist, tiny_profile,
                                                              tmp_path, monkeypatch):
    import rmd_lib.experiment as experiment
    from rmd_lib.evaluation import start_run

    monkeypatch.setattr(experiment, "load_dataset", lambda name, data_dir, **kw: tiny_mnist)
    run = start_run("test_chapter", tiny_profile, 0, "cpu", tmp_path)
    setups = prepare(run, ["mnist"], generator="vae", cache_dir=tmp_path)
    s = setups["mnist"]
    assert s.G is s.model.decoder and s.data is tiny_mnist
    assert set(run.models) == {"classifier_mnist", "vae_mnist"}
    assert run.data_sources == {"mnist": tiny_mnist.source}
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    with pytest.raises(ValueError, match="generator must be one of"):
        prepare(run, ["mnist"], generator="began")


def test_table_outcomes_are_the_per_image_results_behind_each_accuracy(parts, make_net):
    G, clf, inc, x, y = parts
    source = make_net(seed=3)
    got = {}
    rows = transfer_table(source, {"target": clf}, x, y, {"FGSM": (fgsm, {})}, [0.3],
                          outcomes=got)
    assert set(got) == {("FGSM", 0.3, "substitute"), ("FGSM", 0.3, "target")}
    x_adv = fgsm(source, x, y, 0.3)
    assert torch.equal(got["FGSM", 0.3, "target"], correct(clf, x_adv, y))
    assert rows[0]["substitute"] == pytest.approx(got["FGSM", 0.3, "substitute"].float().mean())
    cw_got = {}
    rows = cw_table(clf, inc, x, y, (0.0,), steps=10, binary_steps=1, outcomes=cw_got)
    assert set(cw_got) == {(0.0, "classifier"), (0.0, "INC")}
    for m in ("classifier", "INC"):
        assert cw_got[0.0, m].dtype == torch.bool and cw_got[0.0, m].shape == (12,)
        assert rows[0][m] == pytest.approx(cw_got[0.0, m].float().mean().item())
    un_got = {}
    rows = unrolled_table(G, clf, inc, x, y, (2,), eps=0.3, restarts=1, pgd_steps=2,
                          outcomes=un_got)
    assert set(un_got) == {(2, "unrolled model"), (2, "INC")}
    assert rows[0]["INC"] == pytest.approx(un_got[2, "INC"].float().mean().item())


def test_test_images_caps_at_what_the_source_has(tiny_mnist, tiny_generator, make_net,
                                                 capsys):
    from rmd_lib.experiment import Setup
    s = Setup("mnist", tiny_mnist, make_net(), tiny_generator, tiny_generator)
    have = len(tiny_mnist.x_test)
    x, y = s.test_images(have + 500, "cpu")
    assert len(x) == len(y) == have
    assert f"asked for from image 0, but the source has {have}" in capsys.readouterr().out
    x, _ = s.test_images(10, "cpu", offset=have - 3)
    assert len(x) == 3 and "using the 3 there are" in capsys.readouterr().out
    s.test_images(have, "cpu")
    assert "note" not in capsys.readouterr().out  # no note when nothing is capped
    with pytest.raises(ValueError, match="offset"):
        s.test_images(2, "cpu", offset=have)
    with pytest.raises(ValueError, match="n must"):
        s.test_images(0, "cpu")


def test_gradient_timing_waits_for_the_device_before_each_clock_reading(monkeypatch,
                                                                        tiny_generator):
    import rmd_lib.attack_tables as at

    log = []
    monkeypatch.setattr(at, "_synchronize", lambda x: log.append("sync"))
    import types
    clock = iter(range(100))
    fake_time = types.SimpleNamespace(perf_counter=lambda: log.append("clock") or next(clock))
    monkeypatch.setattr(at, "time", fake_time)  # the module's clock only, not pytest's
    monkeypatch.setattr(at, "input_gradient", lambda m, x, y: log.append("grad") or x)
    monkeypatch.setattr(at, "pgd", lambda m, x, y, e, **kw: x)
    monkeypatch.setattr(at, "correct", lambda m, x, y: torch.ones(len(x), dtype=torch.bool))
    x, y = torch.rand(2, 1, 6, 6), torch.tensor([0, 1])
    rows = at.unrolled_table(tiny_generator, torch.nn.Flatten(), None, x, y, [1], eps=0.1,
                             restarts=1, pgd_steps=1)
    assert log == ["sync", "clock", "grad", "sync", "clock"]
    assert rows[0]["seconds per gradient"] == 1


def test_run_timer_synchronises_on_cuda_only(monkeypatch, tmp_path):
    from rmd_lib.evaluation import Run
    from rmd_lib.profiles import PROFILES

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    cpu = Run("c", PROFILES["smoke"], 0, torch.device("cpu"), tmp_path)
    with cpu.timer("block"):
        pass
    assert calls == [] and "block" in cpu.timings
    gpu = Run("c", PROFILES["smoke"], 0, torch.device("cuda", 0), tmp_path)
    with gpu.timer("block"):
        calls.append("work")
    assert calls == [torch.device("cuda", 0), "work", torch.device("cuda", 0)]
