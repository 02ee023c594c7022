"""The paper's MNIST VAE: encoder 784-500-500-(mu, log sigma^2) of 20, decoder 20-500-500-784."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["VAE", "VAEDecoder"]


class VAEDecoder(nn.Module):
    """The generator G(z): z of shape (B, latent_dim) to images (B, 1, 28, 28) in [0, 1]."""

    def __init__(self, latent_dim: int = 20, hidden: int = 500, image_shape=(1, 28, 28)):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        n_pixels = int(torch.tensor(image_shape).prod())
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.Softplus(),
            nn.Linear(hidden, hidden), nn.Softplus(),
            nn.Linear(hidden, n_pixels),
        )

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.image_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))

    def sample_latent(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Draws from the prior the VAE was trained with, N(0, I)."""
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


class VAE(nn.Module):
    """Kingma & Welling's VAE with a Bernoulli decoder; ``decoder`` is the generator G."""

    def __init__(self, latent_dim: int = 20, hidden: int = 500, image_shape=(1, 28, 28)):
        super().__init__()
        n_pixels = int(torch.tensor(image_shape).prod())
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_pixels, hidden), nn.Softplus(),
            nn.Linear(hidden, hidden), nn.Softplus(),
            nn.Linear(hidden, 2 * latent_dim),
        )
        self.decoder = VAEDecoder(latent_dim, hidden, image_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mu, logvar), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (deterministic)."""
        return self.decoder(self.encode(x)[0])

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per image, averaged over the batch (Bernoulli likelihood + KL)."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = F.binary_cross_entropy_with_logits(self.decoder.logits(z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (rec + kl) / x.shape[0]
