"""First-order attacks: FGSM and BIM/PGD, in L-infinity and L2.

Every attack has one signature, ``attack(model, x, y, eps, **options) -> x_adv``: ``model``
maps images in [0, 1] to logits, ``x`` is (N, C, H, W) in [0, 1], ``y`` (N,) the true labels
and ``eps`` the budget. The output always lies in the eps-ball around x and in [0, 1].
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..checks import check_eps, check_positive_int
from ..memory import budget_bytes, rows_per_chunk, saved_bytes
from ..randomness import as_indices, chunked, per_image, randomised
from .common import NORMS, check_attack_args

__all__ = ["fgsm", "bim", "pgd", "pgd_chunk", "project_ball", "ball_sample", "input_gradient", "NORMS"]

def input_gradient(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy with respect to the input images."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if not logits.requires_grad:
            raise TypeError(
                f"{type(model).__name__}'s output carries no gradient to its input, so a "
                "gradient attack cannot run on it. Invert-and-classify is such a model: craft "
                "the attack on the classifier and transfer it, or use BPDA."
            )
        loss = F.cross_entropy(logits, y, reduction="sum")
        grad, = torch.autograd.grad(loss, x)
    return grad


def _unit(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: sign(g) for L-inf, g/||g||_2 for L2."""
    if norm == "linf":
        return g.sign()
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.ndim - 1))


def project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations (N, ...) onto the eps-ball of the given norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / norms).clamp(max=1.0).view(-1, *[1] * (delta.ndim - 1))


def ball_sample(shape, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """One point drawn uniformly from the unit ball of ``norm`` in ``shape`` dimensions: the
    cube [-1, 1]^D for L-inf; for L2 a uniform direction times a radius U^(1/D), since the
    volume within radius r grows as r^D (a cube sample pushed onto the ball would land on
    its surface almost always)."""
    if norm == "linf":
        return torch.rand(shape, generator=generator) * 2 - 1
    direction = torch.randn(shape, generator=generator)
    direction = direction / direction.norm().clamp_min(1e-12)
    radius = torch.rand((), generator=generator) ** (1.0 / direction.numel())
    return direction * radius


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf") -> torch.Tensor:
    """Fast gradient (sign) method: one step of size eps along the loss gradient's direction."""
    y, eps = check_attack_args(model, x, y, eps, norm)
    step = eps * _unit(input_gradient(model, x, y), norm)
    return (x + step).clamp(0.0, 1.0).detach()


def pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
        steps: int = 40, alpha: float | None = None, random_start: bool = True,
        seed: int | None = 0, indices=None, batch_size: int | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): ``steps`` steps of size ``alpha`` (default
    2.5 eps / steps), each projected back onto the eps-ball and [0, 1]; an optional random
    start drawn uniformly from the ball. Image i's start comes from its own stream, (seed,
    ``indices[i]``), ``indices`` being the images' global indices (default 0..N-1), so it
    does not depend on the batch (``seed=None``: the global RNG). ``batch_size`` caps the
    images attacked at once; None picks it from the memory budget (:mod:`rmd_lib.memory`)
    and what one image's gradient costs. A randomised model (BPDA on INC, DIP) sees each
    chunk as part of one call on all images, so chunks give the same examples."""
    y, eps = check_attack_args(model, x, y, eps, norm)
    steps = check_positive_int(steps, "steps")
    alpha = 2.5 * eps / steps if alpha is None else check_eps(alpha, "alpha")
    idx = as_indices(indices, len(x))
    if batch_size is None:
        batch_size = pgd_chunk(model, x, y, "pgd")
    else:
        batch_size = check_positive_int(batch_size, "batch_size")
    parts = chunked(model, len(x), batch_size, lambda rows: _pgd(
        model, x[rows], y[rows], eps, norm, steps, alpha, random_start, seed, idx[rows]))
    return torch.cat(parts)


def pgd_chunk(model, x: torch.Tensor, y: torch.Tensor, what: str = "pgd") -> int:
    """Images per chunk under the memory budget: three times the bytes that one image's
    loss saves for its gradient. The probe leaves a randomised model's streams as it found
    them, so it changes no later draw."""
    draws = randomised(model)
    state = [(d.offset, d.call) for d in draws]
    row = 3 * saved_bytes(
        lambda: F.cross_entropy(model(x[:1].detach().requires_grad_(True)), y[:1]),
        exclude=model if isinstance(model, torch.nn.Module) else ())
    for d, (offset, call) in zip(draws, state):
        d.offset, d.call = offset, call
    return min(len(x), rows_per_chunk(row, budget_bytes(x.device), f"{what} (one image)"))


def _pgd(model, x, y, eps, norm, steps, alpha, random_start, seed, indices) -> torch.Tensor:
    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        if seed is None:
            noise = torch.stack([ball_sample(x.shape[1:], norm) for _ in range(len(x))])
        else:
            noise = per_image(lambda g: ball_sample(x.shape[1:], norm, g), seed, indices)
        delta = eps * noise.to(x.device, x.dtype)
    x_adv = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv + alpha * _unit(input_gradient(model, x_adv, y), norm)
        x_adv = (x + project_ball(x_adv - x, eps, norm)).clamp(0.0, 1.0)
    return x_adv.detach()


def bim(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
        steps: int = 10, alpha: float | None = None) -> torch.Tensor:
    """Basic iterative method (Kurakin et al.): PGD from x itself, without a random start."""
    return pgd(model, x, y, eps, norm=norm, steps=steps, alpha=alpha, random_start=False)
