"""The Deep Image Prior: fitting, batching, recording, early stopping and the defense wrappers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmd_lib.attacks.adaptive import BPDA
from rmd_lib.dip import DIPBPDA, DIPDefense, deep_image_prior
from rmd_lib.models import DIPNet

TINY = dict(width=8, depth=2, skip=2, noise_channels=4)


def smooth_images(n, size=16, seed=0):
    """Smooth random images in [0, 1]: what a DIP network fits quickly."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bilinear")


def test_fit_mse_decreases():
    x = smooth_images(1, 32)
    r = deep_image_prior(x, 60, record_at=[1, 20, 60], width=16, depth=3, skip=2)
    assert r.steps == [1, 20, 60] and r.images.shape == (3, 1, 3, 32, 32)
    mse = r.mse[:, 0]
    assert mse[0] > mse[1] > mse[2] and mse[2] < 0.3 * mse[0]
    assert r.images.min() >= 0 and r.images.max() <= 1


def test_batched_equals_single_fits():
    # Image i's networks come from its own streams (seed, global index), so a single fit that
    # names image i's index is the same fit as row i of the batch.
    x = smooth_images(3).double()
    batched = deep_image_prior(x, 15, record_at=[5, 15], seed=7, **TINY)
    for i in range(3):
        single = deep_image_prior(x[i:i + 1], 15, record_at=[5, 15], seed=7, indices=[i], **TINY)
        # float64: measured identical (difference 0.0).
        torch.testing.assert_close(single.images[:, 0], batched.images[:, i], rtol=0, atol=1e-10)
    # float32 agrees to round-off over a few steps (measured about 1e-6).
    x32 = x.float()
    b32 = deep_image_prior(x32, 5, seed=7, **TINY)
    s32 = deep_image_prior(x32[1:2], 5, seed=7, indices=[1], **TINY)
    assert (b32.final[1] - s32.final[0]).abs().max() < 1e-4
    # other keys, other networks
    other = deep_image_prior(x32[1:2], 5, seed=7, indices=[1], call=1, **TINY)
    assert (other.final[0] - s32.final[0]).abs().max() > 1e-3


def test_defense_calls_fit_fresh_networks_and_reset_pairs_them():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5))
    x = smooth_images(4)
    defense = DIPDefense(clf, 4, seed=2, **TINY)
    first, second = defense.purify(x), defense.purify(x)
    assert defense.draws.call == 2 and not torch.equal(first, second)
    defense.reset()
    assert torch.equal(defense.purify(x), first)  # same networks: two inputs scored paired
    # a chunk of the call, with its images' global indices, is the same fit
    defense.reset()
    part = defense.purify(x[2:], indices=torch.arange(2, 4), call=0)
    assert (part - first[2:]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="both indices and call"):
        defense.purify(x, indices=torch.arange(4))


def test_a_longer_recorded_fit_holds_the_defenses_reconstruction_at_its_stop_step():
    # Chapter 9 reads the defense's verdict on the BIM images from its accuracy curve: a
    # fit of clean and adversarial images with indices 0..n-1 in each group, recorded at the
    # defense's stop step, must be what the defense's first call after reset() returns.
    x = smooth_images(3).double()
    adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1),
                                  dtype=x.dtype)).clamp(0, 1)
    curve = deep_image_prior(torch.cat([x, adv]), 12, record_at=[4, 8, 12], seed=5,
                             indices=torch.arange(3).repeat(2), **TINY)
    defense = DIPDefense(nn.Identity(), 8, seed=5, **TINY)
    defense.purify(x)  # a call before, as the chapter's defense may have had
    defense.reset()
    torch.testing.assert_close(defense.purify(adv), curve.images[1][3:], rtol=0, atol=1e-10)
    # without the repeated indices, the adversarial images get other networks
    plain = deep_image_prior(torch.cat([x, adv]), 8, seed=5, **TINY)
    assert (plain.final[3:] - curve.images[1][3:]).abs().max() > 1e-3


def test_bpda_eot_fits_fresh_networks_at_every_step():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5))
    x = smooth_images(2)
    attacker = DIPBPDA(DIPDefense(clf, 3, seed=5, **TINY), samples=2)
    a, b = attacker(x), attacker(x)
    assert attacker.defense.draws.call == 2
    assert not torch.allclose(a, b)  # the second step averaged over other networks


def test_stacked_net_is_its_copies():
    torch.manual_seed(0)
    nets = [DIPNet(4, 3, 8, 2, 2) for _ in range(3)]
    z = torch.rand(3, 4, 16, 16)
    stacked = DIPNet.stack(nets)(z.view(1, 12, 16, 16)).view(3, 3, 16, 16)
    for i, net in enumerate(nets):
        torch.testing.assert_close(stacked[i], net(z[i:i + 1])[0], atol=1e-6, rtol=1e-5)


def test_deterministic_for_a_seed_and_leaves_global_rng():
    x = smooth_images(2)
    torch.manual_seed(123)
    a = deep_image_prior(x, 5, **TINY).final
    after = torch.rand(1)
    torch.manual_seed(123)
    b = deep_image_prior(x, 5, **TINY).final
    assert torch.equal(a, b) and torch.equal(after, torch.rand(1))
    assert not torch.equal(a, deep_image_prior(x, 5, seed=1, **TINY).final)


def test_mse_threshold_stops_each_image():
    x = smooth_images(3)
    r = deep_image_prior(x, 30, record_at=range(1, 31), mse_threshold=0.01, **TINY)
    for i in range(3):
        below = (r.mse[:, i] < 0.01).nonzero()
        if r.reached[i]:
            step = int(below[0]) + 1
            assert int(r.early_step[i]) == step
            assert torch.equal(r.early[i], r.at(step)[i])
        else:
            assert len(below) == 0 and int(r.early_step[i]) == 30
    assert r.reached.any()
    assert deep_image_prior(x, 3, **TINY).early is None


def test_ema_averages_the_outputs():
    x = smooth_images(1)
    plain = deep_image_prior(x, 3, record_at=[1, 2, 3], **TINY).images
    avg = deep_image_prior(x, 3, record_at=[1, 2, 3], ema=0.9, **TINY).images
    expect = 0.9 * (0.9 * plain[0] + 0.1 * plain[1]) + 0.1 * plain[2]
    torch.testing.assert_close(avg[2], expect, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("x, kwargs, match", [
    (torch.rand(3, 16, 16), {}, "shape"),
    (torch.rand(1, 1, 16, 16), {}, "3 colour channels"),
    (torch.rand(1, 3, 16, 16) * 2, {}, r"\[0, 1\]"),
    (torch.rand(1, 3, 18, 16), {}, "Resize or crop to 16"),
    (torch.rand(1, 3, 4, 4), {}, "at least 8"),
    (torch.rand(1, 3, 16, 16), {"steps": 0}, "steps"),
    (torch.rand(1, 3, 16, 16), {"record_at": [5, 20]}, "raise steps to 20"),
    (torch.rand(1, 3, 16, 16), {"ema": 1.5}, "ema"),
])
def test_bad_input(x, kwargs, match):
    kwargs = {"steps": 10, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        deep_image_prior(x, kwargs.pop("steps"), **kwargs, **TINY)


def test_defense_and_bpda():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5))
    defense = DIPDefense(clf, 5, **TINY)
    x = smooth_images(2).requires_grad_(True)
    logits = defense(x)
    assert logits.shape == (2, 5)
    assert torch.autograd.grad(logits.sum(), x, allow_unused=True)[0] is None  # no gradient to x
    with pytest.raises(TypeError, match="InvertAndClassify"):
        BPDA(defense)  # the library's BPDA needs a projection; DIPBPDA is its counterpart
    y = torch.tensor([1, 3])
    defense.reset()
    loss = F.cross_entropy(DIPBPDA(defense)(x), y)
    grad, = torch.autograd.grad(loss, x)
    # Identity backward: the classifier's gradient at the reconstruction (the same networks:
    # both are the defense's first call).
    defense.reset()
    x_hat = defense.purify(x).requires_grad_(True)
    expect, = torch.autograd.grad(F.cross_entropy(clf(x_hat), y), x_hat)
    torch.testing.assert_close(grad, expect)
    assert DIPBPDA(defense, samples=3)(x).shape == (2, 5)


def test_chunks_give_the_same_fits(monkeypatch):
    x = smooth_images(3).double()
    monkeypatch.setenv("RMD_MEMORY_GB", "1000")
    whole = deep_image_prior(x, 6, record_at=[3, 6], mse_threshold=0.05, seed=4, **TINY)
    for batch in (1, 2):
        part = deep_image_prior(x, 6, record_at=[3, 6], mse_threshold=0.05, seed=4,
                                batch_size=batch, **TINY)
        torch.testing.assert_close(part.images, whole.images, rtol=0, atol=1e-10)
        assert torch.equal(part.early_step, whole.early_step)
        assert torch.equal(part.reached, whole.reached)
    # the memory budget picks the chunk by itself; too small a budget is a clear error
    monkeypatch.setenv("RMD_MEMORY_GB", "0.000001")
    with pytest.raises(ValueError, match="deep_image_prior .*one row needs"):
        deep_image_prior(x, 2, seed=4, **TINY)
