"""Carlini-Wagner L2 and BPDA(+EOT): the attacks that look through a projection defense."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from rmd_lib.attacks import BPDA, cw_l2, input_gradient, pgd
from rmd_lib.projection import InvertAndClassify


def test_unbounded_cw_fools_the_undefended_classifier_everywhere(tiny_net, tiny_batch):
    x, y = tiny_batch
    x_adv = cw_l2(tiny_net, x, y, steps=100, binary_steps=6, lr=0.05)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (tiny_net(x_adv).argmax(1) != y).all()


def test_cw_confidence_kappa_is_reached(tiny_net, tiny_batch):
    x, y = tiny_batch
    kappa = 0.5  # the tiny net's largest reachable margins are about 0.8 to 1.3
    x_adv = cw_l2(tiny_net, x, y, kappa=kappa, steps=150, binary_steps=6, lr=0.05)
    with torch.no_grad():
        logits = tiny_net(x_adv)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    found = (x_adv != x).flatten(1).any(dim=1)
    assert found.all()
    assert (other - true)[found].min() >= kappa - 1e-4


def test_cw_prefers_small_perturbations_over_a_large_budget(tiny_net, tiny_batch):
    x, y = tiny_batch
    x_cw = cw_l2(tiny_net, x, y, steps=100, binary_steps=6, lr=0.05)
    x_pgd = pgd(tiny_net, x, y, 3.0, norm="l2", steps=40)
    fooled = (tiny_net(x_pgd).argmax(1) != y)
    d_cw = (x_cw - x).flatten(1).norm(dim=1)
    d_pgd = (x_pgd - x).flatten(1).norm(dim=1)
    # CW minimises the distance; PGD only stays inside its ball.
    assert (d_cw[fooled] <= d_pgd[fooled] + 1e-6).all()


def test_cw_respects_a_finite_budget_and_rejects_bad_input(tiny_net, tiny_batch):
    x, y = tiny_batch
    x_adv = cw_l2(tiny_net, x, y, 0.05, steps=20, binary_steps=2)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.05 + 1e-6
    with pytest.raises(ValueError, match="norm must be 'l2'"):
        cw_l2(tiny_net, x, y, norm="linf")
    with pytest.raises(ValueError, match="eps"):
        cw_l2(tiny_net, x, y, -1.0)


@pytest.fixture
def inc(tiny_generator):
    from conftest import make_tiny_net  # the same tiny classifier as tiny_net
    return InvertAndClassify(tiny_generator, make_tiny_net(), seed=3, steps=30, restarts=3)


def test_bpda_forward_is_inc_and_backward_is_the_classifier_at_the_projection(inc, tiny_batch):
    x, y = tiny_batch
    inc.reset()
    logits_inc = inc(x)
    x_hat = inc.last.x_hat
    inc.reset()
    out = BPDA(inc)(x)
    assert torch.allclose(out, logits_inc.log_softmax(1), atol=1e-6)
    inc.reset()
    g_bpda = input_gradient(BPDA(inc), x, y)
    g_clf = input_gradient(inc.classifier, x_hat, y)
    assert torch.allclose(g_bpda, g_clf, atol=1e-6) and g_bpda.abs().sum() > 0


def test_bpda_eot_returns_log_mean_probabilities(inc, tiny_batch):
    x, _ = tiny_batch
    out = BPDA(inc, samples=4)(x)
    assert torch.allclose(out.exp().sum(1), torch.ones(len(x)), atol=1e-5)


def test_pgd_through_bpda_raises_the_defended_loss(inc, tiny_batch):
    x, y = tiny_batch
    model = BPDA(inc, samples=2)
    x_adv = pgd(model, x, y, 0.3, norm="linf", steps=10)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    inc.reset()
    with torch.no_grad():
        clean = F.cross_entropy(inc(x), y)
        inc.reset()
        attacked = F.cross_entropy(inc(x_adv), y)
    assert attacked > clean


def test_bpda_wraps_only_invert_and_classify(tiny_net):
    with pytest.raises(TypeError, match="InvertAndClassify"):
        BPDA(tiny_net)
