"""What several attacks share: the check of their common arguments, and CW's margin."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_eps, check_images, check_labels, count_classes

__all__ = ["NORMS", "check_attack_args", "cw_margin"]

NORMS = ("linf", "l2")


def check_attack_args(model, x, y, eps, norm, probe_classes: bool = True):
    """Check an attack's common arguments; return the checked (y, eps).

    x: (N, C, H, W) in [0, 1]; y: (N,) labels; eps >= 0; norm one of :data:`NORMS`.
    ``probe_classes=False`` skips the one-image forward pass that checks the labels against
    the model's classes (for an attack that counts its queries and checks them on its own
    first query).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    check_images(x, "x", device=model if isinstance(model, nn.Module) else None)
    y = check_labels(y, x.shape[0], "y")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}; move y with y.to(x.device).")
    eps = check_eps(eps)
    # A label the model has no logit for would fail deep inside cross-entropy or gather.
    if probe_classes:
        check_labels(y, x.shape[0], "y", num_classes=count_classes(model, x))
    return y, eps


def cw_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    """Carlini-Wagner's margin, eq. (6) untargeted: max(Z_y - max_{i != y} Z_i, -kappa).

    logits (N, K), y (N,); returns (N,). Positive while the true class still wins.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return (true - other).clamp(min=-kappa)
