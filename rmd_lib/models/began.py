"""BEGAN (Berthelot et al. 2017), the paper's CelebA generator, and its autoencoder discriminator.

Both halves are plain stacks of 3x3 convolutions and ELUs, with no batch norm. The
generator and the discriminator's decoder share one architecture: a fully connected layer to
8x8xn, then one block of two conv+ELU per resolution (8, 16, ..., resolution), with a
nearest-neighbour x2 upsampling between blocks, and a last 3x3 conv to the image channels.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BEGANGenerator", "BEGANDiscriminator"]


def _n_blocks(resolution: int) -> int:
    """One block per resolution 8, 16, ..., ``resolution`` (4 blocks at 64x64, 3 at 32x32)."""
    blocks = 1
    while 8 * 2 ** (blocks - 1) < resolution:
        blocks += 1
    if 8 * 2 ** (blocks - 1) != resolution:
        raise ValueError(f"resolution must be 8 times a power of 2 (8, 16, 32, 64, 128), got {resolution}.")
    return blocks


def _conv_elu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ELU()]


class _Decoder(nn.Module):
    """z (B, in_dim) to unbounded images (B, channels, resolution, resolution)."""

    def __init__(self, in_dim: int, width: int, resolution: int, channels: int):
        super().__init__()
        self.width = width
        self.fc = nn.Linear(in_dim, 8 * 8 * width)
        layers: list[nn.Module] = []
        for i in range(_n_blocks(resolution)):
            if i > 0:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers += _conv_elu(width, width) + _conv_elu(width, width)
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, self.width, 8, 8))


class BEGANGenerator(nn.Module):
    """G(z): z (B, latent_dim) from U(-1, 1) to images (B, channels, resolution, resolution) in [0, 1].

    ``width`` is the paper's n (128); CPU profiles shrink it and use resolution 32.
    """

    def __init__(self, latent_dim: int = 64, width: int = 128, resolution: int = 64, channels: int = 3):
        super().__init__()
        self.latent_dim = latent_dim
        self.width = width
        self.image_shape = (channels, resolution, resolution)
        self.decoder = _Decoder(latent_dim, width, resolution, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # The reference leaves G's last conv linear and lets the [-1, 1] data range bound it.
        # We need images in [0, 1] for every G in the library, so we map the output with
        # (1 + tanh) / 2 rather than clamp it: near the middle grey it is the reference's
        # linear output rescaled (tanh' = 1 at 0), and unlike a clamp it never cuts the
        # gradient, which the latent-space projection needs on saturated pixels (a clamp
        # would freeze every pixel of a black background).
        return 0.5 * (1.0 + torch.tanh(self.decoder(z)))

    def sample_latent(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Draws from BEGAN's prior, U(-1, 1)^latent_dim; shape (n, latent_dim)."""
        return 2.0 * torch.rand(n, self.latent_dim, generator=generator, device=device) - 1.0


class BEGANDiscriminator(nn.Module):
    """D(x): an autoencoder; images (B, channels, R, R) in [0, 1] to reconstructions of that shape.

    The encoder has one block of two conv+ELU per resolution (R, R/2, ..., 8) with widths
    n, 2n, 3n, ..., each block but the last followed by a stride-2 conv, and a fully
    connected layer to the embedding h (``hidden``, 64 in the paper). The decoder has the
    generator's architecture. Its output is left linear, as in the reference: D is judged by
    its L1 reconstruction error only, never used as an image.
    """

    def __init__(self, width: int = 128, resolution: int = 64, channels: int = 3, hidden: int = 64):
        super().__init__()
        blocks = _n_blocks(resolution)
        layers = _conv_elu(channels, width)
        for i in range(blocks):
            c_in, c = width * max(i, 1), width * (i + 1)
            layers += _conv_elu(c_in, c) + _conv_elu(c, c)
            if i < blocks - 1:
                layers += _conv_elu(c, c, stride=2)
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 8 * width * blocks, hidden))
        self.decoder = _Decoder(hidden, width, resolution, channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding h, shape (B, hidden)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
