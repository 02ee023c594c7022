"""Latent-space projection and invert-and-classify, on a fixed random generator sigmoid(W z + b)."""
from __future__ import annotations

import pytest
import torch

from rmd_lib.projection import DEFENSE_GAN, EXHAUSTIVE, InvertAndClassify, Projection, project

N, R, D = 5, 4, 4  # images, restarts, latent dimension


@pytest.fixture
def target(tiny_generator):
    """Images that lie exactly on the range of G, and their latents."""
    z0 = torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return tiny_generator(z0), z0


def per_pixel_mse(a, b):
    return (a - b).flatten(1).pow(2).mean(dim=1)


def test_recovers_images_on_the_range(tiny_generator, target):
    x, z0 = target
    p = project(tiny_generator, x, steps=200, restarts=R, **EXHAUSTIVE)
    assert isinstance(p, Projection)
    assert float(p.mse.max()) < 1e-4
    assert torch.allclose(p.x_hat, x, atol=1e-2)
    assert torch.allclose(p.z, z0, atol=0.05)  # W has full column rank: z is identifiable


def test_default_settings_also_recover(tiny_generator, target):
    x, _ = target
    p = project(tiny_generator, x, steps=300, restarts=R)
    assert float(p.mse.max()) < 1e-3


def test_shapes(tiny_generator, target):
    x, _ = target
    p = project(tiny_generator, x, steps=10, restarts=R)
    assert p.z.shape == (N, D)
    assert p.x_hat.shape == x.shape
    assert p.mse.shape == (N,)
    assert p.restart_mse.shape == (N, R)
    assert not p.z.requires_grad and not p.x_hat.requires_grad


def test_mse_is_the_mse_of_x_hat_and_of_the_best_restart(tiny_generator, target):
    x, _ = target
    x = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    p = project(tiny_generator, x, steps=30, restarts=R)
    assert torch.allclose(p.mse, per_pixel_mse(p.x_hat, x), rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        assert torch.allclose(p.x_hat, tiny_generator(p.z))
    assert torch.equal(p.mse, p.restart_mse.min(dim=1).values)
    best = p.restart_mse.argmin(dim=1)
    assert torch.equal(p.restart_mse[torch.arange(N), best], p.mse)
    assert float(p.mse.min()) > 0  # noisy images are off the range


def test_same_seed_same_result(tiny_generator, target):
    x, _ = target
    a = project(tiny_generator, x, steps=20, restarts=R, seed=11)
    b = project(tiny_generator, x, steps=20, restarts=R, seed=11)
    assert torch.equal(a.z, b.z) and torch.equal(a.restart_mse, b.restart_mse)
    assert a.latent_steps == b.latent_steps


def test_different_seeds_different_restarts(tiny_generator, target):
    x, _ = target
    a = project(tiny_generator, x, steps=3, restarts=R, seed=1, **EXHAUSTIVE)
    b = project(tiny_generator, x, steps=3, restarts=R, seed=2, **EXHAUSTIVE)
    assert not torch.allclose(a.restart_mse, b.restart_mse)
    # The restarts of one image differ from each other too.
    assert (a.restart_mse.max(dim=1).values > a.restart_mse.min(dim=1).values).all()


def test_global_rng_when_seed_is_none(tiny_generator, target):
    x, _ = target
    torch.manual_seed(0)
    a = project(tiny_generator, x, steps=3, restarts=2, seed=None)
    torch.manual_seed(0)
    b = project(tiny_generator, x, steps=3, restarts=2, seed=None)
    c = project(tiny_generator, x, steps=3, restarts=2, seed=None)
    assert torch.equal(a.restart_mse, b.restart_mse)
    assert not torch.equal(b.restart_mse, c.restart_mse)


def test_exhaustive_runs_every_restart_every_step(tiny_generator, target):
    x, _ = target
    p = project(tiny_generator, x, steps=25, restarts=R, **EXHAUSTIVE)
    assert p.latent_steps == N * R * 25


def test_pruning_saves_latent_steps_and_keeps_the_fit(tiny_generator, target):
    x, _ = target
    full = project(tiny_generator, x, steps=200, restarts=R, **EXHAUSTIVE)
    pruned = project(tiny_generator, x, steps=200, restarts=R, prune=((0.2, 0.5),), early_stop=False)
    # Each image runs R restarts for 20 steps, then R/2 for the other 180.
    assert pruned.latent_steps == N * (R * 40 + R // 2 * 160)
    assert pruned.latent_steps < full.latent_steps
    assert pruned.x_hat.shape == full.x_hat.shape
    assert torch.allclose(pruned.x_hat, full.x_hat, atol=1e-2)  # the same images come back
    assert float(pruned.mse.max()) < 1e-4
    # A pruned restart keeps the best MSE it reached before it left the batch.
    assert torch.isfinite(pruned.restart_mse).all()


def test_early_stopping_saves_latent_steps(tiny_generator, target):
    x, _ = target
    full = project(tiny_generator, x, steps=200, restarts=R, **EXHAUSTIVE)
    early = project(tiny_generator, x, steps=200, restarts=R, prune=(), early_stop=True, tol=1e-2)
    assert early.latent_steps < full.latent_steps
    assert torch.isfinite(early.mse).all()


def test_batch_size_chunks_give_the_same_result(tiny_generator, target):
    x, _ = target
    for opts in (EXHAUSTIVE, {}):
        whole = project(tiny_generator, x, steps=40, restarts=R, seed=3, **opts)
        chunked = project(tiny_generator, x, steps=40, restarts=R, seed=3, batch_size=2, **opts)
        assert torch.allclose(whole.restart_mse, chunked.restart_mse, rtol=1e-4, atol=1e-7)
        assert torch.allclose(whole.z, chunked.z, atol=1e-4)
        assert whole.latent_steps == chunked.latent_steps


def test_defense_gan_preset_runs_and_improves(tiny_generator, target):
    x, _ = target
    z_init = torch.randn(N * 2, D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        start = per_pixel_mse(tiny_generator(z_init), x.repeat_interleave(2, dim=0)).view(N, 2)
    p = project(tiny_generator, x, steps=30, restarts=2, z_init=z_init, **DEFENSE_GAN)
    assert p.latent_steps == N * 2 * 30  # Defense-GAN runs every restart for every step
    assert torch.isfinite(p.mse).all()
    assert (p.restart_mse <= start + 1e-7).all()
    assert float(p.mse.mean()) < 0.5 * float(start.min(dim=1).values.mean())


def test_z_init_is_honoured(tiny_generator, target):
    x, z0 = target
    z_init = z0.repeat_interleave(2, dim=0)  # row i * R + r is restart r of image i
    p = project(tiny_generator, x, steps=1, restarts=2, z_init=z_init)
    assert torch.equal(p.z, z0)  # the start is already exact, so it is the best iterate
    assert float(p.mse.max()) < 1e-12
    # A z_init far from the answer gives a poor fit after one step: the starts were used.
    far = project(tiny_generator, x, steps=1, restarts=2, z_init=z_init + 3.0)
    assert float(far.mse.min()) > 1e-3


def test_invert_and_classify_logits(tiny_generator, tiny_net, tiny_batch):
    x, _ = tiny_batch
    inc = InvertAndClassify(tiny_generator, tiny_net, seed=0, steps=10, restarts=2)
    logits = inc(x)
    assert logits.shape == (len(x), 3)
    assert not logits.requires_grad
    # It classifies the projections, which it keeps in .last.
    assert inc.last.x_hat.shape == x.shape
    with torch.no_grad():
        assert torch.allclose(logits, tiny_net(inc.last.x_hat))


def test_invert_and_classify_is_seeded_and_resettable(tiny_generator, tiny_net, tiny_batch):
    x, _ = tiny_batch
    opts = dict(seed=5, steps=5, restarts=2, **EXHAUSTIVE)
    a = InvertAndClassify(tiny_generator, tiny_net, **opts)
    b = InvertAndClassify(tiny_generator, tiny_net, **opts)
    first = a(x)
    first_z = a.last.z
    assert torch.equal(first, b(x))  # two fresh modules with the same seed agree
    a(x)
    assert not torch.equal(a.last.z, first_z)  # a second call draws fresh restarts
    a.reset()
    assert torch.equal(a(x), first) and torch.equal(a.last.z, first_z)


def test_invert_and_classify_on_the_range_keeps_the_prediction(tiny_generator, tiny_net, target):
    x, _ = target
    inc = InvertAndClassify(tiny_generator, tiny_net, steps=200, restarts=R, **EXHAUSTIVE)
    with torch.no_grad():
        assert torch.equal(inc(x).argmax(1), tiny_net(x).argmax(1))


# Every numeric option out of its range, and the start of the message: the option, its
# range and the value it got.
BAD_OPTIONS = [
    ("patience", 0, r"patience must be an integer >= 1, got 0\."),
    ("patience", 2.5, r"patience must be an integer >= 1, got 2\.5\."),
    ("decay", 0.0, r"decay must be a finite number in \(0, 1\], got 0\.0\."),
    ("decay", 1.5, r"decay must be a finite number in \(0, 1\], got 1\.5\."),
    ("decay_at", 0.0, r"decay_at must be a finite number in \(0, 1\], got 0\.0\."),
    ("decay_at", 1.2, r"decay_at must be a finite number in \(0, 1\], got 1\.2\."),
    ("momentum", 1.0, r"momentum must be a finite number in \[0, 1\), got 1\.0\."),
    ("momentum", -0.1, r"momentum must be a finite number in \[0, 1\), got -0\.1\."),
    ("betas", (1.0, 0.999), r"betas\[0\] must be a finite number in \[0, 1\), got 1\.0\."),
    ("betas", (0.9, -0.5), r"betas\[1\] must be a finite number in \[0, 1\), got -0\.5\."),
    ("betas", (0.9,), r"betas must be Adam's two moment decays \(beta1, beta2\), got \(0\.9,\)"),
    ("tol", -1e-3, r"tol must be a finite number >= 0, got -0\.001\."),
    ("tol", float("nan"), r"tol must be a finite number >= 0, got nan\."),
    ("lr", 0.0, r"lr must be a finite number > 0, got 0\.0\."),
    ("lr", float("inf"), r"lr must be a finite number > 0, got inf\."),
]


@pytest.mark.parametrize("key, value, message", BAD_OPTIONS)
def test_project_refuses_options_out_of_range(tiny_generator, target, key, value, message):
    x, _ = target
    with pytest.raises(ValueError, match=message) as err:
        project(tiny_generator, x, steps=5, restarts=2, **{key: value})
    assert "default" in str(err.value)  # and says what to use instead


@pytest.mark.parametrize("key, value, message", BAD_OPTIONS)
def test_invert_and_classify_refuses_options_out_of_range_when_built(tiny_generator, tiny_net, key,
                                                                     value, message):
    with pytest.raises(ValueError, match=message):
        InvertAndClassify(tiny_generator, tiny_net, steps=5, **{key: value})


def test_patience_zero_is_refused_with_the_reason(tiny_generator, target):
    # It used to stop every image after its first step.
    with pytest.raises(ValueError, match="patience must be an integer >= 1, got 0") as err:
        project(tiny_generator, target[0], steps=50, restarts=2, patience=0)
    assert "one step" in str(err.value) and "default is 20" in str(err.value)


def test_the_ends_of_each_range_that_are_allowed_still_run(tiny_generator, target):
    x, _ = target
    ends = dict(patience=1, decay=1.0, decay_at=1.0, momentum=0.0, betas=(0.0, 0.0), tol=0.0)
    p = project(tiny_generator, x, steps=5, restarts=2, optimizer="sgd", lr=1.0, **ends)
    assert p.z.shape == (N, D)
    InvertAndClassify(tiny_generator, None, **ends)


def test_invert_and_classify_refuses_unknown_options_when_built(tiny_generator, tiny_net):
    with pytest.raises(TypeError, match=r"unknown projection option\(s\) \['restart', 'step'\]") as err:
        InvertAndClassify(tiny_generator, tiny_net, step=10, restart=2)
    msg = str(err.value)
    assert "steps" in msg and "restarts" in msg and "patience" in msg  # the accepted names
    with pytest.raises(TypeError, match=r"\['generator'\]"):  # the module owns its random stream
        InvertAndClassify(tiny_generator, tiny_net, generator=torch.Generator())
