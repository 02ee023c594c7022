"""Models: output shapes and ranges, and that the VAE's loss can be trained down."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from rmd_lib.models import VAE, MnistClassifier, VAEDecoder, WGANCritic, WGANGenerator


def test_vae_decoder_shape_and_range():
    torch.manual_seed(0)
    G = VAEDecoder(latent_dim=5, hidden=16)
    z = 5 * torch.randn(7, 5)  # far into the tails too
    with torch.no_grad():
        x = G(z)
    assert x.shape == (7, 1, 28, 28)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.allclose(x, torch.sigmoid(G.logits(z)))
    assert G.sample_latent(3).shape == (3, 5)


def test_sample_latent_is_seeded():
    G = VAEDecoder(latent_dim=5, hidden=8)
    a = G.sample_latent(4, generator=torch.Generator().manual_seed(1))
    b = G.sample_latent(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_vae_encode_and_reconstruct_shapes():
    torch.manual_seed(0)
    vae = VAE(latent_dim=3, hidden=16)
    x = torch.rand(4, 1, 28, 28)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (4, 3)
    with torch.no_grad():
        rec = vae(x)
    assert rec.shape == x.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1
    assert torch.equal(rec, vae(x))  # the forward pass uses the posterior mean: deterministic
    assert vae.decoder.latent_dim == 3


def test_vae_loss_is_finite_and_decreases():
    torch.manual_seed(0)
    vae = VAE(latent_dim=2, hidden=32)
    x = (torch.rand(16, 1, 28, 28) > 0.7).float()  # a fixed binary batch

    def loss():
        return vae.loss(x, generator=torch.Generator().manual_seed(0))

    start = loss().detach()
    assert start.ndim == 0 and torch.isfinite(start)
    assert float(start) > 0  # a negative ELBO of a Bernoulli model is positive
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    end = loss().detach()
    assert torch.isfinite(end)
    assert float(end) < 0.8 * float(start)


def test_vae_loss_is_reconstruction_plus_kl():
    torch.manual_seed(0)
    vae = VAE(latent_dim=3, hidden=16)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        loss = vae.loss(x, generator=torch.Generator().manual_seed(4))
        mu, logvar = vae.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn(mu.shape, generator=torch.Generator().manual_seed(4))
        rec = F.binary_cross_entropy(vae.decoder(z), x, reduction="sum") / len(x)
        kl = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum() / len(x)
    assert float(kl) > 0
    assert float(loss) == pytest.approx(float(rec + kl), rel=1e-4)


def test_wgan_generator_shape_and_range():
    torch.manual_seed(0)
    G = WGANGenerator(latent_dim=8, width=4)
    with torch.no_grad():
        x = G(G.sample_latent(5))
    assert x.shape == (5, 1, 28, 28)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert G.latent_dim == 8


def test_wgan_critic_gives_one_score_per_image():
    torch.manual_seed(0)
    D = WGANCritic(width=4)
    s = D(torch.rand(6, 1, 28, 28))
    assert s.shape == (6,)
    assert torch.isfinite(s).all()


def test_classifier_logits_shape():
    torch.manual_seed(0)
    net = MnistClassifier(num_classes=10)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert MnistClassifier(num_classes=4)(torch.rand(2, 1, 28, 28)).shape == (2, 4)
    # The architecture of the authors' code: conv 32, conv 64, FC 1024, FC 10.
    widths = [m.out_channels for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert widths == [32, 64]
    assert net.head[1].out_features == 1024
