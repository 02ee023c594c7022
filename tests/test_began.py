"""BEGAN: the shapes of G and D, the U(-1, 1) prior, the training loop, and the cached training call."""
from __future__ import annotations

import pytest
import torch

from rmd_lib.data import Dataset
from rmd_lib.models import BEGANDiscriminator, BEGANGenerator, MnistClassifier
from rmd_lib.profiles import get_profile
from rmd_lib.training import (_reconstruction_loss, model_config, pretrained_or_train, set_seed,
                              train_began)


def tiny_pair(seed=0, width=4, resolution=32, channels=1):
    set_seed(seed)
    return (BEGANGenerator(width=width, resolution=resolution, channels=channels),
            BEGANDiscriminator(width=width, resolution=resolution, channels=channels))


@pytest.fixture
def batch():
    """Eight fixed 1x32x32 images in [0, 1]."""
    return torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("resolution, blocks", [(32, 3), (64, 4)])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(resolution, blocks, channels):
    G, D = tiny_pair(width=4, resolution=resolution, channels=channels)
    with torch.no_grad():
        x = G(G.sample_latent(5))
    assert x.shape == (5, channels, resolution, resolution) == (5, *G.image_shape)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert D(x).shape == x.shape
    assert D.encode(x).shape == (5, 64)
    # one pair of convs per resolution 8, 16, ..., and nearest-neighbour x2 between them
    ups = [m for m in G.modules() if isinstance(m, torch.nn.Upsample)]
    assert len(ups) == blocks - 1 and all(m.mode == "nearest" for m in ups)
    # the encoder's widths grow n, 2n, ..., blocks * n down to 8x8
    assert D.encoder[-1].in_features == 8 * 8 * 4 * blocks


def test_paper_defaults():
    G = BEGANGenerator()
    assert (G.latent_dim, G.width, G.image_shape) == (64, 128, (3, 64, 64))
    assert BEGANDiscriminator().encoder[-1].out_features == 64


def test_resolution_must_be_8_times_a_power_of_2():
    with pytest.raises(ValueError, match="power of 2"):
        BEGANGenerator(resolution=48)
    with pytest.raises(ValueError, match="power of 2"):
        BEGANDiscriminator(resolution=28)


def test_latent_is_uniform_on_minus_one_one():
    G = BEGANGenerator(width=4, resolution=32)
    z = G.sample_latent(4000, generator=torch.Generator().manual_seed(1))
    assert z.shape == (4000, 64)
    assert float(z.min()) >= -1.0 and float(z.max()) <= 1.0
    assert float(z.min()) < -0.99 and float(z.max()) > 0.99  # fills the cube, not N(0, I) squashed
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1 / 3) < 0.01
    same = G.sample_latent(4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, same)


def test_output_keeps_its_gradient_when_saturated():
    # The (1 + tanh) / 2 mapping, unlike a clamp, still passes a gradient to z on a pixel
    # that is pushed far out of range, which the latent-space projection relies on.
    G, _ = tiny_pair()
    with torch.no_grad():
        G.decoder.net[-1].bias.fill_(4.0)  # every pixel near 1
    z = G.sample_latent(2).requires_grad_(True)
    x = G(z)
    assert float(x.detach().min()) > 0.99
    x.sum().backward()
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_step_lowers_the_reconstruction_loss(batch, seed):
    """D's L1 reconstruction error on a fixed real batch falls after one step (k_0 = 0)."""
    G, D = tiny_pair(seed)
    with torch.no_grad():
        before = _reconstruction_loss(D, batch).item()
    train_began(G, D, batch, iters=1, batch_size=8, seed=seed, progress=False)
    with torch.no_grad():
        after = _reconstruction_loss(D, batch).item()
    assert after < before

    # A few steps at a larger rate lower it clearly, not by rounding.
    G, D = tiny_pair(seed)
    train_began(G, D, batch, iters=5, batch_size=8, lr=1e-3, seed=seed, progress=False)
    with torch.no_grad():
        assert _reconstruction_loss(D, batch).item() < 0.97 * before


def test_history_follows_the_equations(batch):
    G, D = tiny_pair()
    gamma, lam = 0.5, 0.05
    hist = train_began(G, D, batch, iters=6, batch_size=4, gamma=gamma, lambda_k=lam, progress=False)
    assert set(hist) == {"m_global", "k", "loss_real", "loss_fake"}
    assert all(len(v) == 6 for v in hist.values())
    k = 0.0
    for m, k_next, real, fake in zip(hist["m_global"], hist["k"], hist["loss_real"], hist["loss_fake"]):
        k = min(max(k + lam * (gamma * real - fake), 0.0), 1.0)
        assert k_next == pytest.approx(k)
        assert m == pytest.approx(real + abs(gamma * real - fake))
    assert not G.training and not D.training


@pytest.mark.parametrize("gamma, bound", [(0.0, 0.0), (50.0, 1.0)])
def test_k_stays_in_the_unit_interval(batch, gamma, bound):
    """gamma = 0 pushes k below 0 and gamma = 50 above 1 at every step; the clip holds it."""
    G, D = tiny_pair()
    hist = train_began(G, D, batch, iters=5, batch_size=4, gamma=gamma, lambda_k=1.0, progress=False)
    assert all(0.0 <= k <= 1.0 for k in hist["k"])
    assert hist["k"] == [bound] * 5
    # Without the clip, the very first update would have left [0, 1].
    raw = 1.0 * (gamma * hist["loss_real"][0] - hist["loss_fake"][0])
    assert raw < 0.0 if bound == 0.0 else raw > 1.0


def test_k_stays_in_the_unit_interval_with_the_paper_settings(batch):
    G, D = tiny_pair()
    hist = train_began(G, D, batch, iters=10, batch_size=4, progress=False)
    assert all(0.0 <= k <= 1.0 for k in hist["k"])


def test_training_is_deterministic(batch):
    def run():
        G, D = tiny_pair(seed=3)
        return G, train_began(G, D, batch, iters=3, batch_size=4, seed=3, progress=False)

    (g1, h1), (g2, h2) = run(), run()
    assert h1 == h2
    assert all(torch.equal(a, b) for a, b in zip(g1.state_dict().values(), g2.state_dict().values()))
    G, D = tiny_pair(seed=3)
    assert train_began(G, D, batch, iters=3, batch_size=4, seed=4, progress=False) != h1


@pytest.fixture
def tiny_faces():
    """A 1x32x32 two-class Dataset of random images (for the training mechanics only)."""
    g = torch.Generator().manual_seed(5)
    return Dataset("fashion_shirts_standin", torch.rand(32, 1, 32, 32, generator=g),
                   torch.arange(32) % 2, torch.rand(8, 1, 32, 32, generator=g), torch.arange(8) % 2,
                   ["T-shirt/top", "Shirt"], "made by the test (random images)")


@pytest.fixture
def tiny_began_profile():
    return get_profile("smoke").with_(began_iters=2, began_width=4, began_batch=4,
                                      classifier_epochs=1, batch_size=16)


def test_pretrained_or_train_began_trains_then_loads_from_the_cache(tiny_faces, tiny_began_profile,
                                                                    tmp_path):
    kw = dict(seed=0, device="cpu", cache_dir=tmp_path, progress=False, verbose=False)
    G = pretrained_or_train("began", tiny_faces, tiny_began_profile, **kw)
    assert isinstance(G, BEGANGenerator) and not G.training
    assert (G.width, G.image_shape) == (4, (1, 32, 32))
    assert G.provenance.startswith("trained now")
    cached = list(tmp_path.glob("began-fashion_shirts_standin-*.safetensors"))
    assert len(cached) == 1 and cached[0].name in G.provenance

    again = pretrained_or_train("began", tiny_faces, tiny_began_profile, **kw)
    assert again.provenance.startswith(f"cache {cached[0].name} (trained with torch ")
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), again.state_dict().values()))
    set_seed(0)
    fresh = BEGANGenerator(width=4, resolution=32, channels=1)
    assert not torch.equal(fresh.decoder.fc.weight, G.decoder.fc.weight)  # training moved it


def test_began_config_follows_the_profile(tiny_faces, tiny_began_profile):
    cfg = model_config("began", tiny_faces, tiny_began_profile, 0)
    assert (cfg["iters"], cfg["width"], cfg["resolution"], cfg["batch_size"]) == (2, 4, 32, 4)
    assert (cfg["latent_dim"], cfg["gamma"], cfg["lambda_k"], cfg["lr"]) == (64, 0.5, 0.001, 8e-5)
    with pytest.raises(ValueError, match="size=profile.began_resolution"):
        model_config("began", tiny_faces, tiny_began_profile.with_(began_resolution=64), 0)


def test_profiles_size_the_began():
    s, m, p = (get_profile(n) for n in ("smoke", "standard", "paper"))
    assert s.began_iters < m.began_iters < p.began_iters
    assert s.began_width <= m.began_width < p.began_width == 128
    assert p.began_resolution == 64 and m.began_resolution in (32, 64)


def test_classifier_for_face_sized_images(tiny_faces, tiny_began_profile, tmp_path, tiny_mnist):
    net = pretrained_or_train("classifier", tiny_faces, tiny_began_profile, device="cpu",
                              cache_dir=tmp_path, progress=False, verbose=False)
    assert isinstance(net, MnistClassifier)
    assert net(tiny_faces.x_test).shape == (8, 2)
    # MNIST's configuration, and so its cached models, are unchanged.
    cfg = model_config("classifier", tiny_mnist, tiny_began_profile, 0)
    assert "in_channels" not in cfg and "image_size" not in cfg
