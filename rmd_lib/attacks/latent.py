"""The latent-space attack on invert-and-classify: adversarial examples along the range itself.

INC classifies G(z*), so the attacker can work where INC works: start at the inversion z0 of
x and move z until the classifier gets G(z) wrong, while a Lagrange multiplier holds the move
G(z) - G(z0) within eps. The adversarial image is x + G(z) - G(z0): x carried along the range
by that move, with its own residual x - G(z0) (what the generator cannot draw) kept. When x
lies in the range this is G(z) itself, the authors' attack on Defense-GAN; when it does not,
G(z) alone would be farther than eps from x (a VAE's projections of MNIST digits are about
3 away in L2), and the carried residual is what keeps the attack inside the budget. INC's
own projection of that image lands near G(z), so the projection has nothing left to remove.

Per image: minimise margin(C(G(z)), y) + lambda * v(z) over z with Adam, where v measures how
far the move lies outside the eps-ball (L2: max(0, ||G(z) - G(z0)||_2 - eps); L-inf: the L2
norm of the per-pixel excess over eps), and raise lambda by dual ascent, lambda += rate * v.
"""
from __future__ import annotations

import math

import torch

from ..checks import check_eps, check_positive, check_positive_int
from ..memory import budget_bytes, rows_per_chunk, saved_bytes
from ..projection import InvertAndClassify
from .common import check_attack_args, cw_margin
from .first_order import project_ball

__all__ = ["latent_space_attack", "latent_attack_chunk"]


def _violation(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "l2":
        return (delta.flatten(1).norm(dim=1) - eps).clamp(min=0)
    return (delta.abs() - eps).clamp(min=0).flatten(1).norm(dim=1)


def latent_space_attack(inc: InvertAndClassify, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                        norm: str = "l2", steps: int = 200, lr: float = 0.05,
                        lam_init: float = 1.0, lam_rate: float = 1.0, kappa: float = 0.0,
                        z0: torch.Tensor | None = None,
                        batch_size: int | None = None) -> torch.Tensor:
    """Adversarial images x + G(z) - G(z0) within eps of x, batched over images.

    inc: the defense (its generator ``G``, its ``classifier`` and its projection for the
    starting point); x: (N, C, H, W) in [0, 1]; y: (N,) true labels. ``kappa`` is the margin
    by which the wrong class must win; ``z0`` (N, latent_dim) replaces the starting
    inversion. Of all the iterates whose move lies within the budget, the one with the lowest
    margin is kept; the result is x plus that move, clipped to the eps-ball and [0, 1].
    ``batch_size`` caps the images searched at once (the starting inversion chunks itself,
    see :func:`~rmd_lib.projection.project`); None picks it from the memory budget
    (:mod:`rmd_lib.memory`) and what one image's step costs. Each image's search is its
    own (Adam and the multiplier act per coordinate and per image), so chunks give the same
    examples.
    """
    if not isinstance(inc, InvertAndClassify):
        raise TypeError("latent_space_attack needs the InvertAndClassify defense itself (its "
                        f"generator and classifier), got {type(inc).__name__}.")
    y, eps = check_attack_args(inc.classifier, x, y, eps, norm)
    steps = check_positive_int(steps, "steps")
    kappa = check_eps(kappa, "kappa")
    check_positive(lr, "lr", "It is Adam's step size on z; the default is 0.05.")
    check_positive(lam_rate, "lam_rate", "It is the dual-ascent step of the multiplier that holds "
                   "the move within eps; with 0 the budget is never enforced. The default is 1.0.")
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    G, clf = inc.G, inc.classifier
    n = x.shape[0]
    if z0 is None:
        z0 = inc.project(x).z
    elif z0.ndim != 2 or z0.shape[0] != n:
        raise ValueError(f"z0 must hold one latent per image, shape ({n}, d), got "
                         f"{tuple(z0.shape)}.")
    if batch_size is None:
        batch_size = latent_attack_chunk(inc, x, y, z0, eps, norm, kappa)
    parts = [_search(G, clf, x[i:i + batch_size], y[i:i + batch_size],
                     z0[i:i + batch_size], eps, norm, steps, lr, lam_init, lam_rate, kappa)
             for i in range(0, n, batch_size)]
    return torch.cat(parts)


def latent_attack_chunk(inc: InvertAndClassify, x: torch.Tensor, y: torch.Tensor,
                        z0: torch.Tensor, eps: float, norm: str = "l2",
                        kappa: float = 0.0) -> int:
    """Images per chunk of :func:`latent_space_attack` under the memory budget: three times
    the bytes one image's step saves for its gradient (the forward pass's saved tensors,
    the backward pass's temporaries of about that size, and the output)."""
    G, clf = inc.G, inc.classifier

    def one_step():
        z = z0[:1].detach().clone().requires_grad_(True)
        x_g = G(z)
        v = _violation(x_g - x_g.detach(), eps, norm)
        return (cw_margin(clf(x_g), y[:1], kappa) + v).sum()

    row = 3 * saved_bytes(one_step, exclude=(G, clf))
    return min(x.shape[0], rows_per_chunk(row, budget_bytes(x.device),
                                          "latent_space_attack (one image)"))


def _search(G, clf, x, y, z0, eps, norm, steps, lr, lam_init, lam_rate, kappa):
    """One chunk of :func:`latent_space_attack`: the searches of the images of x."""
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    n = x.shape[0]
    lam = torch.full((n,), float(lam_init), device=x.device)
    best_margin = torch.full((n,), math.inf, device=x.device)
    with torch.no_grad():
        anchor = G(z)
        best = anchor.clone()
    feasible_seen = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        with torch.enable_grad():
            x_g = G(z)
            v = _violation(x_g - anchor, eps, norm)
            margin = cw_margin(clf(x_g), y, kappa)
            loss = (margin + lam * v).sum()
            # The gradient of z alone: G's and the classifier's weights get no .grad.
            z.grad, = torch.autograd.grad(loss, z)
        with torch.no_grad():
            # Score this iterate (before the step moves z): feasible and lower margin wins.
            better = (v <= 1e-6 * max(eps, 1e-12)) & (margin < best_margin)
            best_margin = torch.where(better, margin, best_margin)
            best = torch.where(better.view(-1, *[1] * (x.ndim - 1)), x_g, best)
            feasible_seen |= better
            # Images never inside the budget keep their latest iterate, to be clipped below.
            best = torch.where(feasible_seen.view(-1, *[1] * (x.ndim - 1)), best, x_g)
            lam = lam + lam_rate * v
        opt.step()
    return (x + project_ball(best - anchor, eps, norm)).clamp(0.0, 1.0).detach()
