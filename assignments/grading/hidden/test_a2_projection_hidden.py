"""Hidden grading cases of assignment 2: other latent sizes, image shapes, seeds."""
import pytest
import torch

from rmd_course.toys import ToyGenerator

SHAPE = (3, 4, 4)


def sample(G, n, seed):
    z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return z, G(z)


@pytest.mark.points(1)
def test_shapes_and_consistency_on_color_images(sub):
    G = ToyGenerator(latent_dim=3, shape=SHAPE, wiggle=0.5, seed=21)
    _, x = sample(G, 5, 22)
    z, mse = sub.project(G, x, restarts=3, steps=20)
    assert z.shape == (5, 3) and mse.shape == (5,)
    with torch.no_grad():
        assert torch.allclose(mse, ((G(z) - x) ** 2).flatten(1).mean(dim=1), atol=1e-7)


@pytest.mark.points(1)
def test_project_is_seeded(sub):
    G = ToyGenerator(latent_dim=2, wiggle=1.0, seed=23)
    _, x = sample(G, 6, 24)
    a, _ = sub.project(G, x, restarts=2, steps=10, seed=1)
    b, _ = sub.project(G, x, restarts=2, steps=10, seed=1)
    c, _ = sub.project(G, x, restarts=2, steps=10, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.points(1)
def test_descend_matches_adam_at_another_rate(sub):
    G = ToyGenerator(latent_dim=4, shape=SHAPE, seed=25)
    _, x = sample(G, 3, 26)
    z0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(27))
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.03)
    for _ in range(15):
        opt.zero_grad()
        ((G(z) - x) ** 2).flatten(1).mean(dim=1).sum().backward()
        opt.step()
    assert torch.allclose(sub.descend(G, x, z0, steps=15, lr=0.03), z.detach(), atol=1e-4)


@pytest.mark.points(2)
def test_restarts_beat_a_single_restart_elsewhere(sub):
    G = ToyGenerator(latent_dim=2, wiggle=0.5, freq=6.0, seed=28)
    _, x = sample(G, 24, 29)
    _, one = sub.project(G, x, restarts=1, steps=200, seed=3)
    _, many = sub.project(G, x, restarts=16, steps=200, seed=3)
    assert many.mean() < 0.5 * one.mean()


@pytest.mark.points(1)
def test_single_image_single_restart(sub):
    G = ToyGenerator(latent_dim=2, seed=30)
    z_true, x = sample(G, 1, 31)
    z, mse = sub.project(G, x, restarts=1, steps=300)
    assert z.shape == (1, 2) and mse.shape == (1,)
    assert mse.item() < 1e-5


@pytest.mark.points(1)
def test_latent_mse_is_differentiable_in_z(sub):
    G = ToyGenerator(latent_dim=2, seed=32)
    _, x = sample(G, 4, 33)
    z = torch.zeros(4, 2, requires_grad=True)
    sub.latent_mse(G, z, x).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
