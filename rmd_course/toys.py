"""Toy models and data of the assignments: tiny, seeded, CPU-fast, nothing to download.

The assignments' notebooks and their grading tests build everything from these, so a
test and the notebook a student runs see the same models.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def toy_images(n: int = 256, shape: tuple[int, ...] = (1, 8, 8), classes: int = 3,
               spread: float = 0.1, noise: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled synthetic images: class k is a fixed random pattern around gray plus pixel noise.

    Returns x (n, *shape) in [0, 1] and y (n,) int64 cycling through 0..classes-1. The same
    seed gives the same patterns, so train and test sets are slices of one call.
    """
    g = torch.Generator().manual_seed(seed)
    patterns = 0.5 + spread * torch.randn(classes, *shape, generator=g)
    y = torch.arange(n) % classes
    x = (patterns[y] + noise * torch.randn(n, *shape, generator=g)).clamp(0.0, 1.0)
    return x, y


def toy_classifier(x: torch.Tensor, y: torch.Tensor, hidden: int = 32, steps: int = 200,
                   lr: float = 0.02, seed: int = 0) -> nn.Module:
    """A one-hidden-layer tanh MLP fit to (x, y) by full-batch Adam; frozen, in eval mode."""
    # Seeded weights without touching the caller's RNG; torch.manual_seed seeds the GPUs
    # too, so their states are forked as well where there are any.
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), hidden), nn.Tanh(),
                            nn.Linear(hidden, int(y.max()) + 1)).to(x.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval().requires_grad_(False)


class RippleClassifier(nn.Module):
    """A classifier plus a small high-frequency ripple on its logits:
    ``base(x) + amp * sin(freq * x.flatten(1) @ U)``.

    The ripple barely moves the predictions but dominates the local gradient, the kind of
    surface that FGSM adversarial training leaves behind: one gradient step is misled, many
    small ones are not. Logits (N, K) for x (N, *shape) in [0, 1].
    """

    def __init__(self, base: nn.Module, shape: tuple[int, ...], classes: int,
                 amp: float = 0.5, freq: float = 50.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pixels = math.prod(shape)
        self.base, self.amp, self.freq = base, amp, freq
        self.register_buffer("U", torch.randn(pixels, classes, generator=g) / math.sqrt(pixels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.amp * torch.sin(self.freq * x.flatten(1) @ self.U)


class ToyGenerator(nn.Module):
    """G(z) = sigmoid(W z + b + wiggle * V sin(freq * z)): latents (B, latent_dim) to images
    (B, *shape) in (0, 1).

    With ``wiggle=0`` it is one smooth layer and the projection problem has a single basin; a
    larger ``wiggle`` folds the range so that gradient descent from one start often stops in
    a local minimum. Has ``latent_dim`` and ``sample_latent`` like the book's generators.
    """

    def __init__(self, latent_dim: int = 2, shape: tuple[int, ...] = (1, 8, 8),
                 wiggle: float = 0.0, freq: float = 3.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pixels = math.prod(shape)
        self.latent_dim, self.shape, self.wiggle, self.freq = latent_dim, tuple(shape), wiggle, freq
        self.register_buffer("W", torch.randn(pixels, latent_dim, generator=g) / math.sqrt(latent_dim))
        self.register_buffer("V", torch.randn(pixels, latent_dim, generator=g) / math.sqrt(latent_dim))
        self.register_buffer("b", 0.1 * torch.randn(pixels, generator=g))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z @ self.W.T + self.b + self.wiggle * torch.sin(self.freq * z) @ self.V.T
        return torch.sigmoid(h).view(-1, *self.shape)

    def sample_latent(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator).to(device or self.W.device)


def toy_range_classifier(G: ToyGenerator, n: int = 512, classes: int = 3, seed: int = 0) -> nn.Module:
    """A classifier of G's images whose label is the largest of the first ``classes`` latent
    coordinates (the sign of z_0 for a 1- or 2-dimensional latent)."""
    z = G.sample_latent(n, torch.Generator().manual_seed(seed))
    y = z[:, :classes].argmax(dim=1) if G.latent_dim >= 3 else (z[:, 0] > 0).long()
    with torch.no_grad():
        x = G(z)
    return toy_classifier(x, y, steps=300, seed=seed)


def random_pairs_at_budget(G: nn.Module, eps: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline latent pairs (z1, z2), each (n, latent_dim), with ||G(z1) - G(z2)||_2 = eps.

    A random start and a random latent direction per pair, scaled by bisection until the
    two images are eps apart (to 2**-40 of the search interval [0, 10]).
    """
    g = torch.Generator().manual_seed(seed)
    z1, u = torch.randn(n, G.latent_dim, generator=g), torch.randn(n, G.latent_dim, generator=g)
    lo, hi = torch.zeros(n), torch.full((n,), 10.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        with torch.no_grad():
            inside = (G(z1) - G(z1 + mid[:, None] * u)).flatten(1).norm(dim=1) <= eps
        lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
    return z1, z1 + lo[:, None] * u


def quantize(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Round pixels in [0, 1] to ``levels`` evenly spaced values: a non-differentiable defense
    (its gradient is zero almost everywhere). Same shape as x."""
    return torch.round(x * (levels - 1)) / (levels - 1)


class OffGridClassifier(nn.Module):
    """A classifier meant to sit behind :func:`quantize`: ``base(x) + strength * sin^2(pi (levels-1) x) @ R``.

    On the quantisation grid the extra term and its gradient vanish, so behind the defense it
    is ``base``. Between grid points, where a classifier trained on quantised images was never
    constrained, the term dominates both value and gradient: attacks crafted on the bare
    classifier follow it and transfer badly. Logits (N, K) for x (N, *shape).
    """

    def __init__(self, base: nn.Module, shape: tuple[int, ...], classes: int, levels: int = 5,
                 strength: float = 1.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.base, self.levels, self.strength = base, levels, strength
        self.register_buffer("R", torch.randn(math.prod(shape), classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off_grid = torch.sin(math.pi * (self.levels - 1) * x).pow(2).flatten(1)
        return self.base(x) + self.strength * off_grid @ self.R
