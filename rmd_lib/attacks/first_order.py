"""First-order attacks: FGSM and BIM/PGD, in L-infinity and L2.

Every attack has one signature, ``attack(model, x, y, eps, **options) -> x_adv``: ``model``
maps images in [0, 1] to logits, ``x`` is (N, C, H, W) in [0, 1], ``y`` (N,) the true labels
and ``eps`` the budget. The output always lies in the eps-ball around x and in [0, 1].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..checks import check_eps, check_images, check_labels, check_positive_int, count_classes

__all__ = ["fgsm", "bim", "pgd", "project_ball", "input_gradient", "NORMS"]

NORMS = ("linf", "l2")


def _check(model, x, y, eps, norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    check_images(x, "x", device=model if isinstance(model, nn.Module) else None)
    y = check_labels(y, x.shape[0], "y")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}; move y with y.to(x.device).")
    eps = check_eps(eps)
    # A label the model has no logit for would fail deep inside cross-entropy or gather.
    check_labels(y, x.shape[0], "y", num_classes=count_classes(model, x))
    return y, eps


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


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf") -> torch.Tensor:
    """Fast gradient (sign) method: one step of size eps along the loss gradient's direction."""
    y, eps = _check(model, x, y, eps, norm)
    step = eps * _unit(input_gradient(model, x, y), norm)
    return (x + step).clamp(0.0, 1.0).detach()


def pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
        steps: int = 40, alpha: float | None = None, random_start: bool = True,
        seed: int | None = 0) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): ``steps`` steps of size ``alpha`` (default
    2.5 eps / steps), each projected back onto the eps-ball and [0, 1]; an optional uniform
    random start inside the ball (drawn with ``seed``)."""
    y, eps = _check(model, x, y, eps, norm)
    steps = check_positive_int(steps, "steps")
    alpha = 2.5 * eps / steps if alpha is None else check_eps(alpha, "alpha")
    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = torch.rand(x.shape, generator=g).to(x.device) * 2 - 1
        delta = project_ball(noise * eps, eps, norm)
    x_adv = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv + alpha * _unit(input_gradient(model, x_adv, y), norm)
        x_adv = (x + project_ball(x_adv - x, eps, norm)).clamp(0.0, 1.0)
    return x_adv.detach()


def bim(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
        steps: int = 10, alpha: float | None = None) -> torch.Tensor:
    """Basic iterative method (Kurakin et al.): PGD from x itself, without a random start."""
    return pgd(model, x, y, eps, norm=norm, steps=steps, alpha=alpha, random_start=False)
