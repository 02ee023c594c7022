"""Public grading tests of assignment 3 (min-max pairs). ``sub`` is the submission."""
import math

import pytest
import torch
from torch import nn

from rmd_course.toys import ToyGenerator, random_pairs_at_budget, toy_range_classifier


class Counting(nn.Module):
    """Wraps a generator and counts its calls."""

    def __init__(self, G):
        super().__init__()
        self.G, self.latent_dim, self.calls = G, G.latent_dim, 0

    def forward(self, z):
        self.calls += 1
        return self.G(z)

    def sample_latent(self, n, generator=None, device=None):
        return self.G.sample_latent(n, generator=generator, device=device)


def sym_kl_ref(l1, l2):
    p1, p2 = l1.softmax(dim=1).double(), l2.softmax(dim=1).double()
    return ((p1 * (p1 / p2).log()).sum(1) + (p2 * (p2 / p1).log()).sum(1)).float()


def distance(G, z1, z2):
    with torch.no_grad():
        return (G(z1) - G(z2)).flatten(1).norm(dim=1)


def divergence(G, C, z1, z2):
    with torch.no_grad():
        return sym_kl_ref(C(G(z1)), C(G(z2)))


@pytest.fixture(scope="module")
def toy():
    G = ToyGenerator(latent_dim=2, seed=1)
    return G, toy_range_classifier(G)


@pytest.fixture(scope="module")
def found(sub, toy):
    G, C = toy
    return sub.minmax_pairs(G, C, 0.6, n=64, steps=200)


@pytest.mark.points(2)
def test_sym_kl_values(sub):
    g = torch.Generator().manual_seed(0)
    a, b = 3 * torch.randn(8, 5, generator=g), 3 * torch.randn(8, 5, generator=g)
    d = sub.sym_kl(a, b)
    assert d.shape == (8,)
    assert torch.allclose(d, sym_kl_ref(a, b), atol=1e-5)
    assert torch.allclose(d, sub.sym_kl(b, a), atol=1e-6), "the divergence is symmetric"
    assert torch.allclose(sub.sym_kl(a, a), torch.zeros(8), atol=1e-6)
    two = sub.sym_kl(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]))
    assert math.isclose(two.item(), 0.25 * math.log(3.0), rel_tol=1e-5)  # p = (1/2, 1/2), q = (3/4, 1/4)


@pytest.mark.points(1)
def test_sym_kl_is_stable_for_confident_logits(sub):
    a = torch.tensor([[200.0, 0.0, -200.0]])
    b = torch.tensor([[-200.0, 0.0, 200.0]])
    d = sub.sym_kl(a, b)
    assert torch.isfinite(d).all(), "use log_softmax: softmax then log underflows"
    assert math.isclose(d.item(), 800.0, rel_tol=1e-4)
    assert torch.allclose(sub.sym_kl(a + 7.0, b - 2.0), d), "logits shifted by a constant give the same softmax"


@pytest.mark.points(2)
def test_pair_terms(sub, toy):
    G, C = toy
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(6, 2, generator=g).requires_grad_(True)
    z2 = torch.randn(6, 2, generator=g)
    dist, div = sub.pair_terms(G, C, z1, z2)
    assert dist.shape == (6,) and div.shape == (6,)
    assert torch.allclose(dist, distance(G, z1, z2), atol=1e-6)
    assert torch.allclose(div, divergence(G, C, z1, z2), atol=1e-4)
    (dist + div).sum().backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0, "both terms must be differentiable in z1"


@pytest.mark.points(3)
def test_pairs_satisfy_the_budget(found, toy):
    G, _ = toy
    z1, z2 = found
    assert z1.shape == (64, 2) and z2.shape == (64, 2)
    assert not z1.requires_grad and not z2.requires_grad
    assert distance(G, z1, z2).max() <= 0.6 + 1e-5, "every returned pair must be within eps"


@pytest.mark.points(3)
def test_pairs_diverge_more_than_random_pairs(found, toy):
    G, C = toy
    z1, z2 = found
    r1, r2 = random_pairs_at_budget(G, 0.6, 64, seed=9)
    ours, theirs = divergence(G, C, z1, z2).mean(), divergence(G, C, r1, r2).mean()
    assert ours > 3 * theirs, f"mean divergence {ours:.2f} vs {theirs:.2f} for random pairs at the budget"


@pytest.mark.points(2)
def test_more_pairs_change_label_than_random_pairs(found, toy):
    G, C = toy
    z1, z2 = found
    r1, r2 = random_pairs_at_budget(G, 0.6, 64, seed=9)
    with torch.no_grad():
        flips = lambda a, b: (C(G(a)).argmax(1) != C(G(b)).argmax(1)).float().mean()
        assert flips(z1, z2) > flips(r1, r2) + 0.1


@pytest.mark.points(2)
def test_pairs_are_one_batch(sub, toy):
    G, C = toy
    G = Counting(G)
    sub.minmax_pairs(G, C, 0.6, n=16, steps=20)
    assert G.calls <= 2 * 20 + 6, f"G was called {G.calls} times for 20 steps: no loop over pairs"


@pytest.mark.points(1)
def test_minmax_is_seeded(sub, toy):
    G, C = toy
    a = sub.minmax_pairs(G, C, 0.6, n=8, steps=10, seed=5)
    b = sub.minmax_pairs(G, C, 0.6, n=8, steps=10, seed=5)
    c = sub.minmax_pairs(G, C, 0.6, n=8, steps=10, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
