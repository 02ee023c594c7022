"""Adversarial training on the manifold, its PGD baseline, and the measurements of the
chapter that compares them (rmd_lib.manifold_training)."""
from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from rmd_lib.attack_tables import pair_table
from rmd_lib.attacks import divergence, minmax_pairs, pgd
from rmd_lib.evaluation import accuracy
import rmd_lib.manifold_training as mt
from rmd_lib.manifold_training import (compare_pairs, confidence_path, early_stop_mix,
                                       finetune_config, pair_scores,
                                       manifold_adversarial_training, pair_loss,
                                       pair_statistics, path_endpoints, path_statistics,
                                       pgd_adversarial_training, robust_classifier,
                                       start_class_probability)
from rmd_lib.manifold_training import PairTerm
from rmd_lib.profiles import dry_run, get_profile
from rmd_lib.training import train_classifier


def labelled_range(G, C, n=256, seed=0):
    """n images of G's range with the labels C gives them: data that C fits exactly."""
    z = G.sample_latent(n, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x = G(z)
        return x, C(x).argmax(1)


def sharp_net(make_net, scale=8.0):
    """A tiny MLP with scaled-up output weights: confident, with sharp boundaries."""
    net = make_net()
    with torch.no_grad():
        net[-1].weight.mul_(scale)
    return net


def test_pair_loss_masks_each_invalid_pair_before_the_sum(make_net):
    net = make_net()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(6, 1, 6, 6, generator=g), torch.rand(6, 1, 6, 6, generator=g)
    valid = torch.tensor([True, False, True, False, False, True])
    loss = pair_loss(net, x1, x2, valid)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    # The same as the mean over the valid pairs alone: invalid ones add neither value nor gradient.
    alone = divergence(net(x1[valid]), net(x2[valid])).mean()
    grads_alone = torch.autograd.grad(alone, list(net.parameters()))
    assert torch.allclose(loss, alone)
    for a, b in zip(grads, grads_alone):
        assert torch.allclose(a, b, atol=1e-6)
    # Changing an invalid pair's images changes nothing.
    x2_moved = x2.clone()
    x2_moved[1] = 1 - x2_moved[1]
    assert torch.allclose(pair_loss(net, x1, x2_moved, valid), loss)
    # No valid pair: zero loss, zero gradient, no NaN.
    none = pair_loss(net, x1, x2, torch.zeros(6, dtype=torch.bool))
    assert none.item() == 0.0
    assert all(torch.equal(gr, torch.zeros_like(gr))
               for gr in torch.autograd.grad(none, list(net.parameters()), allow_unused=True)
               if gr is not None)


def test_pair_loss_bad_input(make_net):
    net, x = make_net(), torch.rand(4, 1, 6, 6)
    with pytest.raises(ValueError, match="one row per pair"):
        pair_loss(net, x, x[:3], torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool mask"):
        pair_loss(net, x, x, torch.ones(4))


def gap_problem(G, make_net, n=400):
    """Two classes of G's range separated by a gap that holds no training image (|z_0| > 1,
    labelled by the sign of z_0), as digits of two classes are, and a classifier trained on
    them to 100%: confident on the data and free to be sharp in the gap."""
    z = G.sample_latent(2000, generator=torch.Generator().manual_seed(0))
    z = z[z[:, 0].abs() > 1.0][:n]
    with torch.no_grad():
        x = G(z)
    y = (z[:, 0] > 0).long()
    base = make_net(num_classes=2)
    train_classifier(base, x, y, epochs=30, batch_size=64, lr=3e-3, progress=False)
    return x, y, base


def test_manifold_training_lowers_the_divergence_of_pairs_and_keeps_accuracy(tiny_generator, make_net):
    G = tiny_generator
    x, y, base = gap_problem(G, make_net)
    assert accuracy(base, x, y) == 1.0
    divergences = {}
    for weight in (0.0, 1.0):  # weight 0: the same fine-tuning on the data alone, the control
        net = copy.deepcopy(base)
        hist = manifold_adversarial_training(net, G, x, y, steps=200, eps=0.5, weight=weight,
                                             regen_every=10, n_pairs=32, pair_steps=30,
                                             lr=3e-3, batch_size=64, seed=0, progress=False)
        assert len(hist["cross_entropy"]) == 200 and len(hist["valid_pairs"]) == 20
        assert min(hist["valid_pairs"]) > 0.5  # the pair term is not empty
        assert not net.training
        stats = pair_statistics(G, net, 0.5, 64, steps=60, seed=5, early_stop=False)
        divergences[weight] = stats["mean divergence (valid)"]
        assert accuracy(net, x, y) >= 0.98
    before = pair_statistics(G, base, 0.5, 64, steps=60, seed=5, early_stop=False)
    assert divergences[1.0] < 0.5 * before["mean divergence (valid)"]
    assert divergences[1.0] < 0.2 * divergences[0.0]


def test_manifold_training_is_deterministic(tiny_generator, make_net):
    G = tiny_generator
    x, y = labelled_range(G, make_net(), n=64)
    nets = [make_net() for _ in range(2)]
    for net in nets:
        manifold_adversarial_training(net, G, x, y, steps=6, eps=1.0, regen_every=3,
                                      n_pairs=8, pair_steps=5, batch_size=16, progress=False)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(nets[0].parameters(), make_net().parameters()))


def test_pgd_training_raises_accuracy_under_pgd(tiny_generator, make_net):
    G, base = tiny_generator, sharp_net(make_net)
    x, y = labelled_range(G, base, n=512)
    x_test, y_test = labelled_range(G, base, n=200, seed=1)
    eps = 0.6

    def robust(net):
        return accuracy(net, pgd(net, x_test, y_test, eps, norm="l2", steps=10), y_test)

    net = sharp_net(make_net)
    hist = pgd_adversarial_training(net, x, y, steps=150, eps=eps, norm="l2", attack_steps=5,
                                    batch_size=64, lr=3e-3, progress=False)
    assert len(hist["cross_entropy"]) == 150
    assert robust(net) > robust(base) + 0.1


@pytest.mark.parametrize("call, match", [
    (lambda net, G, x, y: manifold_adversarial_training(net, G, x[0], y, steps=1, eps=1.0), "must be"),
    (lambda net, G, x, y: manifold_adversarial_training(net, G, x, y[:2], steps=1, eps=1.0), "one label"),
    (lambda net, G, x, y: manifold_adversarial_training(net, G, x, y, steps=0, eps=1.0), "steps"),
    (lambda net, G, x, y: pgd_adversarial_training(net, x, y, steps=1, eps=1.0, norm="l1"), "norm"),
    (lambda net, G, x, y: pgd_adversarial_training("net", x, y, steps=1, eps=1.0), "nn.Module"),
])
def test_training_bad_input(tiny_generator, make_net, call, match):
    x, y = torch.rand(8, 1, 6, 6), torch.zeros(8, dtype=torch.long)
    with pytest.raises((ValueError, TypeError), match=match):
        call(make_net(), tiny_generator, x, y)


def test_confidence_path_runs_from_a_to_b(tiny_generator, make_net):
    G, C = tiny_generator, make_net()
    z_a, z_b = torch.randn(3, 4), torch.randn(3, 4)
    images, probs = confidence_path(G, C, z_a, z_b, n=5)
    assert images.shape == (3, 5, 1, 6, 6) and probs.shape == (3, 5, 3)
    with torch.no_grad():
        assert torch.allclose(probs[:, 0], C(G(z_a)).softmax(1), atol=1e-6)
        assert torch.allclose(probs[:, -1], C(G(z_b)).softmax(1), atol=1e-6)
        assert torch.allclose(images[:, 2], G((z_a + z_b) / 2), atol=1e-6)
    assert torch.allclose(probs.sum(2), torch.ones(3, 5))
    with pytest.raises(ValueError, match="both be"):
        confidence_path(G, C, z_a, z_b[:2])
    with pytest.raises(ValueError, match="n >= 2"):
        confidence_path(G, C, z_a, z_b, n=1)


def test_path_statistics_tell_a_step_from_a_ramp():
    n = 11
    t = torch.linspace(0, 1, n)
    ramp = torch.stack([1 - t, t], dim=1).unsqueeze(0)           # (1, n, 2)
    step = torch.zeros(1, n, 2)
    step[0, :6, 0], step[0, 6:, 1] = 1.0, 1.0
    assert path_statistics(ramp).max_slope == pytest.approx(1.0, abs=1e-5)
    assert path_statistics(step).max_slope == pytest.approx(n - 1)
    assert path_statistics(step).uncertain == 0.0
    # The ramp's top probability is below 0.9 where t lies in (0.1, 0.9): 7 of 11 points
    # (t = 0.1 and 0.9 give exactly 0.9, which is not below it).
    assert path_statistics(ramp).uncertain == pytest.approx(7 / 11, abs=1e-6)
    with pytest.raises(ValueError, match="paths, points"):
        path_statistics(torch.zeros(4, 2))
    # The start class is the first point's top class, followed along the path.
    assert torch.allclose(start_class_probability(ramp)[0], 1 - t)
    assert torch.allclose(start_class_probability(ramp.flip(2))[0], 1 - t)


def test_path_endpoints_pair_neighbours_of_different_classes():
    z = torch.arange(12.0).view(6, 2)
    y = torch.tensor([0, 0, 1, 1, 2, 0])
    z_a, z_b = path_endpoints(z, y, 10)
    # Differing neighbours: (1, 2), (3, 4), (4, 5); (5, 0) has the same label.
    assert torch.equal(z_a, z[[1, 3, 4]]) and torch.equal(z_b, z[[2, 4, 5]])
    assert len(path_endpoints(z, y, 2)[0]) == 2
    with pytest.raises(ValueError, match="same label"):
        path_endpoints(z, torch.zeros(6, dtype=torch.long), 3)


def test_pair_table_and_summary(tiny_generator, make_net):
    G, C = tiny_generator, sharp_net(make_net)
    rows, searches = pair_table(G, C, [0.2, 2.0], 32, steps=40, seed=1)
    assert [r["eps"] for r in rows] == [0.2, 2.0] and set(searches) == {0.2, 2.0}
    for r in rows:
        p = searches[r["eps"]]
        assert r["valid"] == pytest.approx(float(p.valid.float().mean()))
        assert r["valid and different"] == pytest.approx(float((p.valid & p.different).float().mean()))
        assert r["mean divergence (valid)"] == pytest.approx(float(p.divergence[p.valid].mean()))
    assert rows[1]["valid and different"] >= rows[0]["valid and different"]
    stats = pair_statistics(G, C, 2.0, 32, steps=40, seed=1)
    assert stats == {"eps": 2.0, **rows[1]}
    # No valid pair: the divergence and the share among valid pairs are undefined (NaN).
    never = minmax_pairs(G, C, 1e-9, 4, steps=1, seed=0, init_scale=1.0).summary()
    assert never["valid"] == 0.0 and never["mean divergence (valid)"] != never["mean divergence (valid)"]


def test_robust_classifier_trains_once_then_loads_the_same_weights(tmp_path, tiny_generator, make_net):
    G, base = tiny_generator, make_net()
    x, y = labelled_range(G, base, n=64)
    data = types.SimpleNamespace(name="toy", x_train=x, y_train=y)
    P = get_profile("smoke").with_(at_steps=3, at_regen_every=2, at_pairs=4, at_pair_steps=3,
                                   pgd_at_attack_steps=2, batch_size=16)
    before = [p.clone() for p in base.parameters()]
    for method in ("manifold", "pgd"):
        first = robust_classifier(method, base, data, P, G=G, cache_dir=tmp_path, progress=False)
        again = robust_classifier(method, base, data, P, G=G, cache_dir=tmp_path, progress=False)
        assert first.provenance.startswith("trained now") and again.provenance.startswith("cache")
        assert first.history["cross_entropy"] and again.history == first.history
        for a, b in zip(first.parameters(), again.parameters()):
            assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))  # base untouched
    assert len(list(tmp_path.glob("classifier-*-toy-*.safetensors"))) == 2
    # Anything that changes the result changes the cache key.
    cfg = finetune_config("manifold", base, P, 0, G)
    assert finetune_config("manifold", base, P.with_(at_weight=2.0), 0, G) != cfg
    assert finetune_config("manifold", base, P, 1, G) != cfg
    assert finetune_config("manifold", make_net(seed=3), P, 0, G) != cfg
    with pytest.raises(ValueError, match="needs the generator"):
        finetune_config("manifold", base, P, 0)
    with pytest.raises(ValueError, match="method must be one of"):
        finetune_config("trades", base, P, 0, G)


def test_compare_pairs_is_paired_and_runs_every_search_to_the_end(tiny_generator, make_net):
    G, sharp, soft = tiny_generator, sharp_net(make_net), make_net()
    rows, paired = compare_pairs(G, {"sharp": sharp, "soft": soft}, 0.5, 24, steps=15, seed=3)
    assert [r["classifier"] for r in rows] == ["sharp", "soft"]
    # the same search, from the same starts, run by hand against each classifier
    for r, clf in zip(rows, (sharp, soft)):
        pairs = minmax_pairs(G, clf, 0.5, 24, steps=15, seed=3, early_stop=False)
        assert bool((pairs.steps == 15).all())  # no search stopped early
        success, score = pair_scores(pairs)
        assert r["valid and different"] == pytest.approx(float(success.mean()))
        assert r["mean score"] == pytest.approx(float(score.mean()))
        assert r["success low"] <= r["valid and different"] <= r["success high"]
    assert list(paired) == ["soft"]  # the first classifier is the baseline
    s_sharp = pair_scores(minmax_pairs(G, sharp, 0.5, 24, steps=15, seed=3, early_stop=False))
    s_soft = pair_scores(minmax_pairs(G, soft, 0.5, 24, steps=15, seed=3, early_stop=False))
    d = paired["soft"]["score"]
    assert d["mean"] == pytest.approx(float((s_soft[1] - s_sharp[1]).mean()), abs=1e-6)
    assert d["low"] <= d["mean"] <= d["high"] and d["n"] == 24
    # the per-search scores come back on request, the same ones that were paired
    again = compare_pairs(G, {"sharp": sharp, "soft": soft}, 0.5, 24, steps=15, seed=3,
                          return_scores=True)
    assert again[:2] == (rows, paired)
    for label, mine in (("sharp", s_sharp), ("soft", s_soft)):
        assert all(torch.equal(a, b) for a, b in zip(again[2][label], mine))
    with pytest.raises(ValueError, match="early_stop"):
        compare_pairs(G, {"a": sharp}, 0.5, 4, steps=2, early_stop=True)
    with pytest.raises(ValueError, match="baseline"):
        compare_pairs(G, {"a": sharp}, 0.5, 4, steps=2, baseline="b")


def test_pair_scores_count_an_invalid_search_as_zero(tiny_generator, make_net):
    pairs = minmax_pairs(tiny_generator, make_net(), 0.5, 16, steps=5, seed=0, early_stop=False)
    pairs.valid[:4] = False
    success, score = pair_scores(pairs)
    assert torch.equal(score[:4], torch.zeros(4)) and not success[:4].any()
    assert torch.equal(score[4:], pairs.divergence[4:].cpu())


def test_early_stop_mix_splits_the_mean(tiny_generator, make_net):
    G, net = tiny_generator, sharp_net(make_net)
    pairs = minmax_pairs(G, net, 1.0, 64, steps=40, seed=0)  # early stopping, as the attacker
    mix = early_stop_mix(pairs, 40)
    stopped = (pairs.steps < 40) & pairs.valid
    assert mix["stopped at a flip"] == pytest.approx(float(stopped.float().mean()))
    assert 0 < mix["stopped at a flip"] < 1, "the example should mix both kinds of search"
    # the mean over valid searches is the share-weighted mean of the two parts
    share = float(stopped.sum()) / float(pairs.valid.sum())
    mixed = share * mix["mean divergence (stopped)"] + (1 - share) * mix["mean divergence (ran to the end)"]
    assert mix["mean divergence (valid)"] == pytest.approx(mixed, rel=1e-5)


def test_pair_loss_only_different_keeps_valid_pairs_labelled_differently(make_net):
    net = sharp_net(make_net)
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(12, 1, 6, 6, generator=g)
    x2 = torch.rand(12, 1, 6, 6, generator=g)
    # the first four pairs nearly coincide, so the classifier labels them alike
    x2[:4] = (x1[:4] + 0.01 * torch.rand(4, 1, 6, 6, generator=g)).clamp(0, 1)
    valid = torch.tensor([True, False] * 6)
    with torch.no_grad():
        different = net(x1).argmax(1) != net(x2).argmax(1)
    keep = valid & different
    assert keep.any() and (valid & ~different).any(), "the example needs both kinds"
    loss = pair_loss(net, x1, x2, valid, only_different=True)
    alone = divergence(net(x1[keep]), net(x2[keep])).mean()
    assert torch.allclose(loss, alone)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    for a, b in zip(grads, torch.autograd.grad(alone, list(net.parameters()))):
        assert torch.allclose(a, b, atol=1e-6)
    # validity alone also counts the valid pairs labelled alike: a different mean
    assert not torch.allclose(pair_loss(net, x1, x2, valid), loss)
    # (the invalid pairs, some labelled differently, count for neither mask: `alone`)
    assert (~valid & different).any(), "the example needs an invalid, different pair"
    # no valid pair labelled differently: zero, not NaN
    same = pair_loss(net, x1, x1, torch.ones(12, dtype=torch.bool), only_different=True)
    assert same.item() == 0.0


def test_pgd_training_with_a_pair_term(tiny_generator, make_net):
    G = tiny_generator
    x, y = labelled_range(G, make_net(), n=64)
    settings = dict(steps=6, eps=0.5, attack_steps=2, batch_size=16, lr=1e-2,
                    progress=False)
    plain, zero, paired = make_net(), make_net(), make_net()
    pgd_adversarial_training(plain, x, y, **settings)
    # weight 0: the pairs are searched and their term computed, and nothing else changes
    hist0 = pgd_adversarial_training(
        zero, x, y, **settings,
        pair_term=PairTerm(G, 1.0, 0.0, 3, 8, 4, only_different=True))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), zero.parameters()))
    assert len(hist0["pair_divergence"]) == 6 and len(hist0["valid_pairs"]) == 2
    hist = pgd_adversarial_training(
        paired, x, y, **settings,
        pair_term=PairTerm(G, 1.0, 10.0, 3, 8, 4, only_different=True))
    assert max(hist["pair_divergence"]) > 0, "the pair term is not empty"
    assert any(not torch.equal(a, b)
               for a, b in zip(plain.parameters(), paired.parameters()))
    # the same first batch and PGD examples, before the pair term has changed anything
    assert hist["cross_entropy"][0] == hist0["cross_entropy"][0]
    assert not paired.training


def test_robust_classifier_authors_resumes_from_the_pgd_classifier(
        tmp_path, tiny_generator, make_net, monkeypatch):
    G, base = tiny_generator, make_net()
    x, y = labelled_range(G, base, n=64)
    data = types.SimpleNamespace(name="toy", x_train=x, y_train=y)
    P = get_profile("smoke").with_(at_steps=3, at_regen_every=2, at_pairs=4,
                                   at_pair_steps=3, pgd_at_attack_steps=2,
                                   batch_size=16, at_authors_steps=4)
    starts, terms = [], []
    original = mt.pgd_adversarial_training

    def spy(net, *args, pair_term=None, **kwargs):
        starts.append([p.detach().clone() for p in net.parameters()])
        terms.append(pair_term)
        return original(net, *args, pair_term=pair_term, **kwargs)

    monkeypatch.setattr(mt, "pgd_adversarial_training", spy)
    first = robust_classifier("authors", base, data, P, G=G, cache_dir=tmp_path,
                              progress=False, verbose=False)
    pgd_net = robust_classifier("pgd", base, data, P, G=G, cache_dir=tmp_path,
                                progress=False, verbose=False)
    # trained twice: the PGD baseline from base, then the authors' run from its weights
    assert len(starts) == 2 and terms[0] is None
    assert all(torch.equal(a, b) for a, b in zip(starts[0], base.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(starts[1], pgd_net.parameters()))
    term = terms[1]
    assert term.only_different and term.weight == P.at_authors_weight == 1e-2
    assert (term.eps, term.n_pairs, term.pair_steps) == (P.at_eps, 4, 3)
    assert len(first.history["cross_entropy"]) == 4 and first.history["pair_divergence"]
    assert "resumed from the PGD classifier" in first.provenance
    assert pgd_net.provenance.startswith("cache")
    # a second run loads both from the cache, bit for bit, and trains nothing
    again = robust_classifier("authors", base, data, P, G=G, cache_dir=tmp_path,
                              progress=False, verbose=False)
    assert len(starts) == 2 and again.provenance.startswith("cache")
    assert again.history == first.history
    assert all(torch.equal(a, b)
               for a, b in zip(first.parameters(), again.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(),
                                                        pgd_net.parameters()))
    assert len(list(tmp_path.glob("classifier-authors-toy-*.safetensors"))) == 1
    assert len(list(tmp_path.glob("classifier-pgd-toy-*.safetensors"))) == 1
    # its cache key follows its own settings and the PGD weights it resumes from
    cfg = finetune_config("authors", pgd_net, P, 0, G)
    assert cfg["base"] != finetune_config("authors", base, P, 0, G)["base"]
    for changed in (P.with_(at_authors_weight=0.1), P.with_(at_authors_steps=5),
                    P.with_(at_eps=1.0), P.with_(pgd_at_eps=1.0)):
        assert finetune_config("authors", pgd_net, changed, 0, G) != cfg
    assert finetune_config("authors", pgd_net, P.with_(at_authors_steps=None), 0,
                           G)["steps"] == P.at_steps
    # a dry run cuts the variant's own step count as well; None keeps following at_steps
    assert dry_run(P.with_(at_authors_steps=50)).at_authors_steps == 2
    assert dry_run(P.with_(at_authors_steps=None)).at_authors_steps is None


@pytest.mark.parametrize("call, error, match", [
    (lambda G, net, x, y: finetune_config("authors", net, get_profile("smoke"), 0),
     ValueError, "needs the generator"),
    (lambda G, net, x, y: robust_classifier("trades", net, None, get_profile("smoke")),
     ValueError, "method must be one of"),
    (lambda G, net, x, y: robust_classifier("authors", net, None, get_profile("smoke")),
     ValueError, "needs the generator"),
    (lambda G, net, x, y: PairTerm(G, 1.0, weight=-1.0), ValueError, "weight"),
    (lambda G, net, x, y: PairTerm(G, 1.0, weight=float("nan")), ValueError, "weight"),
    (lambda G, net, x, y: PairTerm(G, -1.0), ValueError, "eps"),
    (lambda G, net, x, y: PairTerm(G, 1.0, regen_every=0), ValueError, "regen_every"),
    (lambda G, net, x, y: PairTerm("G", 1.0), TypeError, "generator G"),
    (lambda G, net, x, y: pgd_adversarial_training(net, x, y, steps=1, eps=1.0,
                                                   pair_term={"weight": 1.0}),
     TypeError, "PairTerm"),
])
def test_authors_variant_bad_input(tiny_generator, make_net, call, error, match):
    x, y = torch.rand(8, 1, 6, 6), torch.zeros(8, dtype=torch.long)
    with pytest.raises(error, match=match):
        call(tiny_generator, make_net(), x, y)
