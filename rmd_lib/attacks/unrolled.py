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
from ..memory import budget_bytes, rows_per_chunk, saved_bytes
from ..projection import latent_dim, sample_prior
from ..randomness import Draws, as_indices, per_image

__all__ = ["UnrolledINC", "unrolled_project", "unrolled_chunk"]


def unrolled_project(G: nn.Module, x: torch.Tensor, steps: int, restarts: int = 1,
                     lr: float = 0.1, *, seed: int = 0, betas=(0.9, 0.999),
                     indices=None, batch_size: int | None = None) -> torch.Tensor:
    """G(z_k) after ``steps`` Adam steps on ||G(z) - x||^2 from ``restarts`` prior draws, kept
    differentiable in x; the restart with the lowest final error is returned per image.

    x: (N, C, H, W) in [0, 1]. Image i's starts come from its own stream, (seed,
    ``indices[i]``), the same on every call, so the map x -> G(z_k) is a fixed
    differentiable function of each image, whatever batch it is in. Returns (N, C, H, W).
    ``batch_size`` caps the images unrolled at once; None picks it from the memory budget
    (:mod:`rmd_lib.memory`) and what one image's chain of ``steps`` steps keeps for the
    backward pass (:func:`unrolled_chunk`). Chunks give the same images and gradients.
    """
    steps = check_positive_int(steps, "steps")
    restarts = check_positive_int(restarts, "restarts")
    check_positive(lr, "lr", "It is Adam's step size in latent space; the default is 0.1.")
    check_betas(betas)
    check_images(x, "x")
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    n, d = x.shape[0], latent_dim(G)
    z = per_image(lambda g: sample_prior(G, restarts, g), seed, as_indices(indices, n))
    z = z.view(n * restarts, d).to(x.device, x.dtype)
    if batch_size is None:
        batch_size = unrolled_chunk(G, x, steps, restarts, z[:restarts])
    if batch_size >= n:
        return _unroll(G, x, z, steps, restarts, lr, betas)
    # Several chunks: each is checkpointed, its chain rebuilt in the backward pass one chunk
    # at a time, so only one chunk's graph is ever held (a plain loop over chunks would keep
    # every chunk's graph until the caller's backward pass).
    parts = []
    for i in range(0, n, batch_size):
        args = (G, z[i * restarts:(i + batch_size) * restarts], steps, restarts, lr, betas)
        xi = x[i:i + batch_size]
        parts.append(_Checkpointed.apply(xi, *args) if xi.requires_grad
                     else _unroll(G, xi, *args[1:]))
    return torch.cat(parts)


class _Checkpointed(torch.autograd.Function):
    """One chunk of the unrolled projection: the forward pass keeps no graph; the backward
    pass runs the same chain again with its graph and back-propagates through it. The
    operations are the same, so the value and the gradient with respect to x are those of
    the plain chain. G's weights get no gradient (attacks need only x's)."""

    @staticmethod
    def forward(ctx, x, G, z, steps, restarts, lr, betas):
        ctx.save_for_backward(x)
        ctx.args = (G, z, steps, restarts, lr, betas)
        return _unroll(G, x.detach(), z, steps, restarts, lr, betas)

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        G, z, steps, restarts, lr, betas = ctx.args
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            x_hat = _unroll(G, x_req, z, steps, restarts, lr, betas)
            grad_x, = torch.autograd.grad(x_hat, x_req, grad_out)
        return grad_x, None, None, None, None, None, None


def unrolled_chunk(G: nn.Module, x: torch.Tensor, steps: int, restarts: int = 1,
                   z: torch.Tensor | None = None) -> int:
    """Images per chunk of :func:`unrolled_project` under the memory budget.

    When x needs a gradient, an image keeps the tensors of every one of its ``steps``
    steps for the backward pass: the bytes saved by a chain of one step and of two steps
    (measured on x's first image) give the cost of the first step and of each further one.
    The row is that chain with half again as margin (the other functions take three times
    what one row saves against the two that the forward pass's tensors and the backward
    pass's temporaries need), plus twice one step for the temporaries of the backward
    pass, which go through the chain a step at a time. Without a gradient only one step is
    held at a time: three times its bytes, as for :func:`~rmd_lib.projection.project`.
    """
    if z is None:
        z = sample_prior(G, restarts, torch.Generator().manual_seed(0)).to(x.device, x.dtype)
    x1 = x[:1].detach().clone().requires_grad_(x.requires_grad)
    one = saved_bytes(lambda: _unroll(G, x1, z, 1, restarts, 0.1, (0.9, 0.999)),
                      exclude=G)
    if x.requires_grad:
        two = saved_bytes(lambda: _unroll(G, x1, z, 2, restarts, 0.1, (0.9, 0.999)),
                          exclude=G)
        per_step = max(two - one, 0)
        row = 1.5 * (one + (steps - 1) * per_step) + 2 * max(per_step, one)
    else:
        row = 3 * one
    what = f"unrolled_project ({steps} steps, {restarts} restarts per image)"
    return min(x.shape[0], rows_per_chunk(row, budget_bytes(x.device), what))


def _unroll(G, x, z, steps, restarts, lr, betas) -> torch.Tensor:
    """One chunk of :func:`unrolled_project`: x (n, C, H, W), z (n * restarts, d)."""
    n = x.shape[0]
    z = z.detach().clone().requires_grad_(True)  # a leaf, so create_graph has something to build on
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
    a differentiable model that any first-order attack of the library runs on.
    ``batch_size`` goes to :func:`unrolled_project` (None: picked from the memory budget)."""

    def __init__(self, G: nn.Module, classifier: nn.Module, steps: int, restarts: int = 1,
                 lr: float = 0.1, seed: int = 0, batch_size: int | None = None):
        super().__init__()
        if batch_size is not None:
            check_positive_int(batch_size, "batch_size")
        self.batch_size = batch_size
        self.G, self.classifier = G, classifier
        self.steps, self.restarts, self.lr, self.seed = steps, restarts, lr, seed
        # Only the offset is used: the starts are fixed per image, whatever the call.
        self.draws = Draws(seed)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = self.draws.indices(x.shape[0])
        x_hat = unrolled_project(self.G, x, self.steps, self.restarts, self.lr, seed=self.seed,
                                 indices=indices, batch_size=self.batch_size)
        return self.classifier(x_hat)
