"""A WGAN-GP generator and critic for 28x28 images (latent 128, as Defense-GAN used)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["WGANGenerator", "WGANCritic"]


class WGANGenerator(nn.Module):
    """G(z): z (B, latent_dim) from N(0, I) to images (B, 1, 28, 28) in [0, 1].

    ``width`` is the base channel count (64 at paper scale; CPU profiles shrink it).
    """

    def __init__(self, latent_dim: int = 128, width: int = 64, channels: int = 1):
        super().__init__()
        self.latent_dim = latent_dim
        self.width = width
        self.fc = nn.Sequential(nn.Linear(latent_dim, 4 * width * 7 * 7), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),  # 14x14
            nn.ConvTranspose2d(2 * width, channels, 4, stride=2, padding=1),  # 28x28
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, 4 * self.width, 7, 7))

    def sample_latent(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


class WGANCritic(nn.Module):
    """Critic D(x): images (B, 1, 28, 28) to scores (B,); no batch norm, as the gradient penalty needs."""

    def __init__(self, width: int = 64, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 5, stride=2, padding=2), nn.LeakyReLU(0.2),  # 14
            nn.Conv2d(width, 2 * width, 5, stride=2, padding=2), nn.LeakyReLU(0.2),  # 7
            nn.Conv2d(2 * width, 4 * width, 5, stride=2, padding=2), nn.LeakyReLU(0.2),  # 4
            nn.Flatten(), nn.Linear(4 * width * 4 * 4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
