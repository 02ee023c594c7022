"""The unrolled projection: differentiate through k steps of the inversion itself.

INC's projection is a loop of gradient steps on z. Nothing stops an attacker from keeping
the whole loop in the autograd graph (each step's gradient taken with ``create_graph``) and
back-propagating from the classifier's loss to x through all k steps. It is exact, but the
cost grows with k in time and memory, and through hundreds of steps the gradient tends to
vanish or explode: the reason a long projection "resists naive differentiation".
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_betas, check_images, check_positive, check_positive_int
from ..projection import latent_dim, sample_prior
from ..randomness import Draws, as_indices, per_image

__all__ = ["UnrolledINC", "unrolled_project"]


def unrolled_project(G: nn.Module, x: torch.Tensor, steps: int, restarts: int = 1,
                     lr: float = 0.1, *, seed: int = 0, betas=(0.9, 0.999),
                     indices=None) -> torch.Tensor:
    """G(z_k) after ``steps`` Adam steps on ||G(z) - x||^2 from ``restarts`` prior draws, kept
    differentiable in x; the restart with the lowest final error is returned per image.

    x: (N, C, H, W) in [0, 1]. Image i's starts come from its own stream, (seed,
    ``indices[i]``), the same on every call, so the map x -> G(z_k) is a fixed
    differentiable function of each image, whatever batch it is in. Returns (N, C, H, W).
    """
    steps = check_positive_int(steps, "steps")
    restarts = check_positive_int(restarts, "restarts")
    check_positive(lr, "lr", "It is Adam's step size in latent space; the default is 0.1.")
    check_betas(betas)
    check_images(x, "x")
    n, d = x.shape[0], latent_dim(G)
    z = per_image(lambda g: sample_prior(G, restarts, g), seed, as_indices(indices, n))
    z = z.view(n * restarts, d).to(x.device, x.dtype)
    z = z.requires_grad_(True)  # a leaf, so that create_graph has something to build on
    target = x.repeat_interleave(restarts, dim=0)
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    b1, b2 = betas
    # Keep the graph of every step only when someone will differentiate with respect to x.
    keep = x.requires_grad
    with torch.enable_grad():
        for t in range(steps):
            loss = (G(z) - target).flatten(1).pow(2).mean(dim=1)
            grad, = torch.autograd.grad(loss.sum(), z, create_graph=keep)
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
            # sqrt(v + 1e-16) rather than sqrt(v) + eps: finite derivative where v = 0.
            z = z - lr * m_hat / (v_hat + 1e-16).sqrt()
        x_hat = G(z)
        err = (x_hat - target).flatten(1).pow(2).mean(dim=1).view(n, restarts)
    best = err.argmin(dim=1)
    return x_hat.view(n, restarts, *x.shape[1:])[torch.arange(n, device=x.device), best]


class UnrolledINC(nn.Module):
    """C(G(z_k(x))) with the k-step projection of :func:`unrolled_project` kept in the graph:
    a differentiable model that any first-order attack of the library runs on."""

    def __init__(self, G: nn.Module, classifier: nn.Module, steps: int, restarts: int = 1,
                 lr: float = 0.1, seed: int = 0):
        super().__init__()
        self.G, self.classifier = G, classifier
        self.steps, self.restarts, self.lr, self.seed = steps, restarts, lr, seed
        # Only the offset is used: the starts are fixed per image, whatever the call.
        self.draws = Draws(seed)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = torch.arange(self.draws.offset, self.draws.offset + x.shape[0])
        x_hat = unrolled_project(self.G, x, self.steps, self.restarts, self.lr, seed=self.seed,
                                 indices=indices)
        return self.classifier(x_hat)
