"""The black-box attacker's own networks: a substitute classifier and a latent encoder."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SubstituteNet", "Encoder"]


class SubstituteNet(nn.Module):
    """A small CNN the attacker trains to mimic a black box (Papernot et al. 2017, model A's
    shape): conv 3x3x32, conv 3x3x32, max-pool, conv 3x3x64, max-pool, FC 200, FC classes.

    Deliberately not the defended classifier's architecture: the attacker does not know it.
    Takes images (N, C, H, W) in [0, 1]; returns logits (N, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 200), nn.ReLU(),
                                  nn.Linear(200, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Encoder(nn.Module):
    """E: images (N, C, H, W) in [0, 1] to latents (N, latent_dim), trained so that G(E(x))
    is close to the projection of x (the autoencoder substitute for the inversion)."""

    def __init__(self, latent_dim: int, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.latent_dim = latent_dim
        side = image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(64 * side * side, 512), nn.LeakyReLU(0.2),
            nn.Linear(512, latent_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
