"""Adaptive attacks on a projection defense: BPDA and BPDA+EOT (Athalye et al. 2018).

INC's output carries no gradient to its input. BPDA (backward-pass differentiable
approximation) keeps the true forward pass, the classifier on the projection, and replaces
the projection's Jacobian by the identity on the way back. EOT (expectation over
transformation) averages over the projection's randomness: each forward pass projects
``samples`` times with fresh random restarts and the model returns the log of the mean of
the classifier's probabilities, so the loss of an attack is that of the expected prediction.

The wrapped model has the ordinary ``model(x) -> logits`` form, so every first-order attack
of the library runs through it unchanged: ``pgd(BPDA(inc), x, y, eps)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_positive_int
from ..projection import InvertAndClassify

__all__ = ["BPDA"]


class BPDA(nn.Module):
    """Straight-through surrogate of an :class:`InvertAndClassify` module.

    Forward: the classifier's logits on G(z*) (with ``samples`` > 1, the log of the mean
    softmax over that many independent projections). Backward: the projection acts as the
    identity, so the gradient is the classifier's, taken at G(z*).
    """

    def __init__(self, inc: InvertAndClassify, samples: int = 1):
        super().__init__()
        if not isinstance(inc, InvertAndClassify):
            raise TypeError(f"BPDA wraps an InvertAndClassify module, got {type(inc).__name__}.")
        self.inc = inc
        self.samples = check_positive_int(samples, "samples")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # All EOT samples are one batched projection: x repeated, each copy with fresh restarts.
        xs = x.repeat(self.samples, *[1] * (x.ndim - 1))
        x_hat = self.inc.project(xs.detach()).x_hat
        # Value G(z*), gradient of the identity: x + (G(z*) - x) with the difference detached.
        log_probs = self.inc.classifier(xs + (x_hat - xs).detach()).log_softmax(dim=1)
        log_probs = log_probs.view(self.samples, x.shape[0], -1)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.samples)
