"""First-order attacks: the eps-ball, [0, 1], FGSM against a hand computation, and strength."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rmd_lib.attacks import ATTACKS, NORMS, bim, fgsm, input_gradient, pgd, project_ball

EPS = {"linf": 0.1, "l2": 0.5}


def dist(a, b, norm):
    d = (a - b).flatten(1)
    return d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)


def total_loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="sum").item()


@pytest.fixture
def curved_net(make_net):
    """A random net with large weights, so that its loss is far from linear in x."""
    net = make_net(seed=0)
    with torch.no_grad():
        net[1].weight.mul_(6)
        net[3].weight.mul_(3)
    return net


@pytest.fixture
def mid_batch(curved_net):
    """Images away from 0 and 1 (so clipping plays no part), labelled as the net predicts them."""
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(32, 1, 6, 6, generator=g)
    with torch.no_grad():
        return x, curved_net(x).argmax(1)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_output_in_eps_ball_and_unit_interval(name, norm, tiny_net, tiny_batch):
    x, y = tiny_batch  # uniform in [0, 1]: many pixels are near an edge, so clipping is exercised
    eps = EPS[norm]
    x_adv = ATTACKS[name](tiny_net, x, y, eps, norm=norm)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert (dist(x_adv, x, norm) <= eps + 1e-6).all()
    assert (dist(x_adv, x, norm) > 0.5 * eps).all()  # and it does move: most of the budget is used


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_eps_zero_returns_x(name, norm, tiny_net, tiny_batch):
    x, y = tiny_batch
    assert torch.equal(ATTACKS[name](tiny_net, x, y, 0.0, norm=norm), x)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_do_not_change_their_inputs(name, tiny_net, tiny_batch):
    x, y = tiny_batch
    x0, y0 = x.clone(), y.clone()
    ATTACKS[name](tiny_net, x, y, 0.1)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def hand_gradient(W, b, x_flat, y):
    """dL/dx of L = cross-entropy(W x + b, y), from the softmax formula: W^T (softmax - onehot)."""
    logits = x_flat @ W.T + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p @ W


@pytest.fixture
def linear_problem():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(2, 36)).astype(np.float32)
    b = np.array([0.3, -0.2], dtype=np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(W))
        model[1].bias.copy_(torch.from_numpy(b))
    x = (0.3 + 0.4 * rng.random((6, 1, 6, 6))).astype(np.float32)
    y = np.array([0, 1, 0, 1, 1, 0])
    g = hand_gradient(W.astype(np.float64), b.astype(np.float64), x.reshape(6, -1).astype(np.float64), y)
    return model, torch.from_numpy(x), torch.from_numpy(y), g


def test_input_gradient_matches_the_hand_computation(linear_problem):
    model, x, y, g = linear_problem
    got = input_gradient(model, x, y).flatten(1).double().numpy()
    np.testing.assert_allclose(got, g, rtol=1e-4, atol=1e-6)


def test_fgsm_linf_is_the_sign_step(linear_problem):
    model, x, y, g = linear_problem
    eps = 0.05
    expected = x.numpy().reshape(6, -1) + eps * np.sign(g)
    got = fgsm(model, x, y, eps, norm="linf").flatten(1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_fgsm_l2_is_the_normalised_gradient_step(linear_problem):
    model, x, y, g = linear_problem
    eps = 0.2
    expected = x.numpy().reshape(6, -1) + eps * g / np.linalg.norm(g, axis=1, keepdims=True)
    got = fgsm(model, x, y, eps, norm="l2").flatten(1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_iterative_attacks_beat_one_step(norm, curved_net, mid_batch):
    x, y = mid_batch
    eps = {"linf": 0.15, "l2": 1.0}[norm]
    clean = total_loss(curved_net, x, y)
    one = total_loss(curved_net, fgsm(curved_net, x, y, eps, norm=norm), y)
    it_bim = total_loss(curved_net, bim(curved_net, x, y, eps, norm=norm, steps=10), y)
    it_pgd = total_loss(curved_net, pgd(curved_net, x, y, eps, norm=norm, steps=10), y)
    assert one > clean
    assert it_bim >= one and it_pgd >= one


def test_attacks_lower_accuracy(curved_net, mid_batch):
    x, y = mid_batch  # the net gets all of them right
    x_adv = pgd(curved_net, x, y, 0.15, steps=10)
    with torch.no_grad():
        acc = (curved_net(x_adv).argmax(1) == y).float().mean().item()
    assert acc < 0.5


def test_pgd_random_start_is_seeded(tiny_net, tiny_batch):
    x, y = tiny_batch
    a = pgd(tiny_net, x, y, 0.1, steps=2, seed=7)
    b = pgd(tiny_net, x, y, 0.1, steps=2, seed=7)
    c = pgd(tiny_net, x, y, 0.1, steps=2, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bim_is_pgd_without_random_start(tiny_net, tiny_batch):
    x, y = tiny_batch
    assert torch.equal(bim(tiny_net, x, y, 0.1, steps=4),
                       pgd(tiny_net, x, y, 0.1, steps=4, random_start=False, seed=None))


def test_pgd_default_step_size(tiny_net, tiny_batch):
    x, y = tiny_batch
    # The default alpha is 2.5 eps / steps: 0.05 for eps 0.1 and 5 steps.
    default = pgd(tiny_net, x, y, 0.1, steps=5, seed=1)
    assert torch.equal(default, pgd(tiny_net, x, y, 0.1, steps=5, alpha=0.05, seed=1))
    assert not torch.equal(default, pgd(tiny_net, x, y, 0.1, steps=5, alpha=0.01, seed=1))
    # One step from x moves no pixel by more than alpha.
    one = pgd(tiny_net, x, y, 0.1, steps=1, random_start=False, alpha=0.02)
    assert float((one - x).abs().max()) == pytest.approx(0.02, abs=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_project_ball(norm):
    g = torch.Generator().manual_seed(0)
    delta = 3 * torch.randn(10, 1, 4, 4, generator=g)
    small = 1e-3 * delta
    p = project_ball(delta, 0.5, norm)
    assert (dist(p, torch.zeros_like(p), norm) <= 0.5 + 1e-6).all()
    assert torch.allclose(project_ball(small, 0.5, norm), small)  # inside points stay put
    if norm == "l2":  # the L2 projection only rescales
        cos = F.cosine_similarity(p.flatten(1), delta.flatten(1))
        assert torch.allclose(cos, torch.ones(10), atol=1e-5)
