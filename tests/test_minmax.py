"""The overpowered min-max attack: pairs in the generator's range, close and differently
classified (Ilyas et al. 2017)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rmd_lib.attacks import divergence, minmax_pairs


class Affine(nn.Module):
    """G(z) = W z + b on 1x4x4 images (not clipped: the tests need exact geometry only)."""

    def __init__(self, latent_dim=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.latent_dim = latent_dim
        self.register_buffer("W", 0.5 * torch.randn(16, latent_dim, generator=g))
        self.register_buffer("b", 0.5 * torch.ones(16))

    def forward(self, z):
        return (z @ self.W.T + self.b).view(-1, 1, 4, 4)

    def sample_latent(self, n, generator=None, device=None):
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


def linear_classifier(seed=1, scale=5.0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        net[1].weight.mul_(scale)
    return net.eval()


def test_divergences():
    a = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    kl = divergence(a, b)
    assert kl[1] == 0 and kl[0] > 0
    assert torch.allclose(kl, divergence(b, a))
    p, q = a.softmax(1), b.softmax(1)
    assert torch.allclose(kl, (p * (p / q).log()).sum(1) + (q * (q / p).log()).sum(1))
    ce = divergence(a, b, "ce")
    assert torch.allclose(ce, -(p * q.log()).sum(1))
    assert torch.allclose(divergence(b[1:], b[1:], "ce"), torch.tensor([math.log(3)]))
    with pytest.raises(ValueError, match="divergence must be one of"):
        divergence(a, b, "js")


def test_pairs_are_valid_differently_classified_and_stop_early():
    G, C = Affine(), linear_classifier()
    r = minmax_pairs(G, C, 1.0, n=64, steps=300, lr=0.05)
    assert r.z1.shape == r.z2.shape == (64, 3) and r.x1.shape == (64, 1, 4, 4)
    assert torch.allclose(r.distance, (G(r.z1) - G(r.z2)).flatten(1).norm(dim=1))
    assert torch.equal(r.valid, r.distance <= 1.0 + 1e-6)
    assert torch.equal(r.different, C(r.x1).argmax(1) != C(r.x2).argmax(1))
    assert r.success.float().mean() >= 0.9
    # A pair that was found stopped there: fewer steps than the budget.
    assert (r.steps[r.success] < 300).all()


def test_a_tighter_budget_finds_fewer_and_closer_pairs():
    G, C = Affine(), linear_classifier()
    wide = minmax_pairs(G, C, 1.0, n=64, steps=200, early_stop=False)
    tight = minmax_pairs(G, C, 0.05, n=64, steps=200, early_stop=False)
    assert tight.distance[tight.valid].max() <= 0.05 + 1e-6
    assert tight.success.float().mean() < wide.success.float().mean()
    assert tight.divergence.mean() < wide.divergence.mean()


def test_fixed_first_latent_and_batching_gives_each_pair_its_own_search():
    G, C = Affine(), linear_classifier()
    z1 = torch.randn(5, 3, generator=torch.Generator().manual_seed(4))
    batch = minmax_pairs(G, C, 0.5, z1=z1, steps=50, seed=9)
    assert torch.equal(batch.z1, z1)
    # Pair 0 alone, with the same seed, draws the same start and must end in the same place.
    one = minmax_pairs(G, C, 0.5, z1=z1[:1], steps=50, seed=9)
    assert torch.allclose(one.z2, batch.z2[:1], atol=1e-3)  # float order differs in a batch
    assert torch.equal(one.steps, batch.steps[:1])


def test_same_seed_same_pairs_and_bad_input():
    G, C = Affine(), linear_classifier()
    a = minmax_pairs(G, C, 0.5, n=8, steps=20, seed=3)
    b = minmax_pairs(G, C, 0.5, n=8, steps=20, seed=3)
    assert torch.equal(a.z1, b.z1) and torch.equal(a.z2, b.z2)
    with pytest.raises(ValueError, match="kind must be one of"):
        minmax_pairs(G, C, 0.5, kind="kl")
    with pytest.raises(ValueError, match="z1 must have shape"):
        minmax_pairs(G, C, 0.5, z1=torch.zeros(4, 7))
    with pytest.raises(ValueError, match="eps"):
        minmax_pairs(G, C, -1.0)


@pytest.mark.parametrize("kw, message", [
    (dict(lr=0.0), r"lr must be a finite number > 0, got 0\.0\. .*no pair moves"),
    (dict(lr=-0.05), r"lr must be a finite number > 0, got -0\.05\."),
    (dict(lam_rate=0.0), r"lam_rate must be a finite number > 0, got 0\.0\. .*never enforced"),
    (dict(lam_rate=float("nan")), r"lam_rate must be a finite number > 0, got nan\."),
])
def test_zero_step_or_multiplier_rate_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        minmax_pairs(Affine(), linear_classifier(), 0.5, n=4, steps=5, **kw)
