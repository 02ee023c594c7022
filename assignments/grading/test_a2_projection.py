"""Public grading tests of assignment 2 (projection with restarts). ``sub`` is the submission."""
import pytest
import torch
from torch import nn

from rmd_course.toys import ToyGenerator, toy_range_classifier


class Counting(nn.Module):
    """Wraps a generator and records the batch size of every call."""

    def __init__(self, G):
        super().__init__()
        self.G, self.latent_dim, self.batches = G, G.latent_dim, []

    def forward(self, z):
        self.batches.append(z.shape[0])
        return self.G(z)


def mse_ref(G, z, x):
    with torch.no_grad():
        return ((G(z) - x) ** 2).flatten(1).mean(dim=1)


def points_of(G, n, seed):
    z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return z, G(z)


def adam_ref(G, x, z0, steps, lr):
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ((G(z) - x) ** 2).flatten(1).mean(dim=1).sum().backward()
        opt.step()
    return z.detach()


@pytest.mark.points(2)
def test_latent_mse(sub):
    G = ToyGenerator(latent_dim=3, seed=0)
    z, x = points_of(G, 5, 1)
    z_other = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    got = sub.latent_mse(G, z_other, x)
    assert got.shape == (5,)
    assert torch.allclose(got, mse_ref(G, z_other, x), atol=1e-7)
    assert torch.allclose(sub.latent_mse(G, z, x), torch.zeros(5), atol=1e-7)


@pytest.mark.points(3)
def test_descend_is_adam(sub):
    G = ToyGenerator(latent_dim=2, seed=3)
    _, x = points_of(G, 6, 4)
    z0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(5))
    z0_copy = z0.clone()
    z = sub.descend(G, x, z0, steps=40, lr=0.1)
    assert z.shape == z0.shape and not z.requires_grad
    assert torch.equal(z0, z0_copy), "descend must not change z0"
    assert torch.allclose(z, adam_ref(G, x, z0, 40, 0.1), atol=1e-4), \
        "not 40 steps of torch.optim.Adam on the summed per-row loss"


@pytest.mark.points(2)
def test_descend_rows_are_independent(sub):
    G = ToyGenerator(latent_dim=2, wiggle=1.0, seed=3)
    _, x = points_of(G, 6, 6)
    z0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(7))
    together = sub.descend(G, x, z0, steps=30)
    alone = sub.descend(G, x[2:3], z0[2:3], steps=30)
    assert torch.allclose(together[2:3], alone, atol=1e-4), \
        "a row's result must not depend on the other rows of the batch"


@pytest.mark.points(2)
def test_descend_calls_G_once_per_step(sub):
    G = Counting(ToyGenerator(latent_dim=2, seed=3))
    _, x = points_of(G.G, 7, 8)
    sub.descend(G, x, torch.zeros(7, 2), steps=25)
    assert len(G.batches) <= 26 and max(G.batches) == 7, \
        f"G was called {len(G.batches)} times with batches of {sorted(set(G.batches))}: batch all rows"


@pytest.mark.points(3)
def test_project_keeps_each_images_best_restart(sub, monkeypatch):
    G = ToyGenerator(latent_dim=2, wiggle=1.0, seed=0)
    _, x = points_of(G, 4, 9)
    seen = {}

    def fake_descend(G, x_rows, z0, steps=200, lr=0.1):
        seen.update(x=x_rows.clone(), z=z0.clone())
        return z0.clone()  # "no optimisation": project must pick the best of the starts

    monkeypatch.setattr(sub, "descend", fake_descend)
    z, mse = sub.project(G, x, restarts=5, steps=3)
    assert seen, "project must call descend (once, on all rows)"
    assert seen["z"].shape == (20, 2), "descend must get all N * restarts starts in one batch"
    assert z.shape == (4, 2) and mse.shape == (4,)
    row_mse = mse_ref(G, seen["z"], seen["x"])
    for i in range(4):
        rows = [r for r in range(20) if torch.equal(seen["x"][r], x[i])]
        assert len(rows) == 5, f"image {i} should have 5 restarts, got {len(rows)}"
        best = min(rows, key=lambda r: row_mse[r].item())
        assert torch.allclose(z[i], seen["z"][best]), f"image {i}: not its best restart"
        assert torch.isclose(mse[i], row_mse[best], atol=1e-7)


@pytest.mark.points(3)
def test_project_recovers_a_point_of_the_range(sub):
    G = ToyGenerator(latent_dim=3, seed=2)
    z_true, x = points_of(G, 16, 10)
    z, mse = sub.project(G, x, restarts=4, steps=200)
    assert mse.max() < 1e-6, f"worst MSE {mse.max():.1e}: a point of the range should be recovered"
    assert (z - z_true).norm(dim=1).max() < 1e-2
    assert torch.allclose(mse, mse_ref(G, z, x), atol=1e-7), "mse must be latent_mse of the returned z"


@pytest.mark.points(3)
def test_restarts_beat_a_single_restart(sub):
    G = ToyGenerator(latent_dim=2, wiggle=1.0, seed=1)
    _, x = points_of(G, 32, 5)
    _, one = sub.project(G, x, restarts=1, steps=200)
    _, many = sub.project(G, x, restarts=16, steps=200)
    assert many.mean() < 0.25 * one.mean(), \
        f"mean MSE {many.mean():.1e} with 16 restarts vs {one.mean():.1e} with 1"


@pytest.mark.points(2)
def test_project_is_one_batch(sub):
    G = Counting(ToyGenerator(latent_dim=2, seed=3))
    _, x = points_of(G.G, 6, 11)
    sub.project(G, x, restarts=4, steps=30)
    assert len(G.batches) <= 33, f"G was called {len(G.batches)} times for 30 steps: no loop per image"
    assert max(G.batches) == 24, "all 6 x 4 restarts must be one batch"


@pytest.mark.points(2)
def test_invert_and_classify_on_the_range(sub):
    G = ToyGenerator(latent_dim=3, seed=2)
    classifier = toy_range_classifier(G)
    _, x = points_of(G, 24, 12)
    labels = sub.invert_and_classify(G, classifier, x, restarts=4, steps=200)
    assert labels.shape == (24,) and labels.dtype == torch.int64
    agree = (labels == classifier(x).argmax(dim=1)).float().mean()
    assert agree >= 0.95, "on images of the range, INC should give the classifier's own labels"
