"""Adaptive attacks on a projection defense: BPDA and BPDA+EOT (Athalye et al. 2018).

INC's output carries no gradient to its input. BPDA (backward-pass differentiable
approximation) keeps the true forward pass, the classifier on the projection, and replaces
the projection's Jacobian on the way back by something computable:

- ``backward="identity"``: Athalye et al.'s choice, dG(z*)/dx ~ I, as if the projection
  returned x;
- ``backward="tangent"``: the derivative of a *converged* projection. At a minimum of
  ||G(z) - x||^2 the implicit function theorem, with the Gauss-Newton approximation of the
  Hessian, gives dz*/dx = (J^T J)^-1 J^T with J = dG/dz at z*, so dG(z*)/dx = J (J^T J)^-1 J^T:
  the orthogonal projector onto the tangent space of the range at G(z*). Only the part of a
  perturbation along the range moves the projection, and this backward pass knows it.

EOT (expectation over transformation) averages over the projection's randomness: each
forward pass projects ``samples`` times with fresh random restarts and the model returns the
log of the mean of the classifier's probabilities, so an attack's loss is that of the
expected prediction.

The wrapped model has the ordinary ``model(x) -> logits`` form, so every first-order attack
of the library runs through it unchanged: ``pgd(BPDA(inc), x, y, eps)``.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.func import jacfwd, vmap

from ..checks import check_in_range, check_positive_int
from ..projection import InvertAndClassify

__all__ = ["BPDA", "generator_jacobian", "BACKWARDS"]

# torch.func's first call trips an internal deprecation warning of torch.jit.script that says
# nothing about this code; keep it out of the chapters' output.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)

BACKWARDS = ("identity", "tangent")


def generator_jacobian(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """dG/dz at each row of z (B, d), batched with forward-mode autodiff: (B, pixels, d).

    A constant: no autograd graph through G's weights is recorded (forward-mode autodiff
    does not need one), so it holds no memory for a backward pass and gives G no ``.grad``.
    """
    with torch.no_grad():
        return vmap(jacfwd(lambda zi: G(zi.unsqueeze(0)).flatten()))(z.detach())


class BPDA(nn.Module):
    """Differentiable surrogate of an :class:`InvertAndClassify` module.

    Forward: the classifier's logits on G(z*) (with ``samples`` > 1, the log of the mean
    softmax over that many independent projections). Backward: the projection's Jacobian is
    replaced by the identity or, with ``backward="tangent"``, by the projector onto the
    range's tangent space at G(z*), damped by ``damping`` times the mean eigenvalue of
    J^T J (Levenberg-Marquardt) where the range is nearly flat in some direction.
    """

    def __init__(self, inc: InvertAndClassify, samples: int = 1, backward: str = "identity",
                 damping: float = 1e-3):
        super().__init__()
        if not isinstance(inc, InvertAndClassify):
            raise TypeError(f"BPDA wraps an InvertAndClassify module, got {type(inc).__name__}.")
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}.")
        self.inc = inc
        self.samples = check_positive_int(samples, "samples")
        check_in_range(damping, "damping", 0.0, math.inf,
                       hint="It is the Levenberg-Marquardt damping of the tangent backward pass, "
                            "a share of J^T J's mean eigenvalue: 0 is the undamped projector, "
                            "the default is 1e-3.")
        self.backward, self.damping = backward, float(damping)

    def _tangent(self, xs: torch.Tensor, z: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        # Value G(z*); derivative J (J^T J + mu I)^-1 J^T applied to the change in x.
        J = generator_jacobian(self.inc.G, z)                       # (B, P, d)
        JtJ = J.transpose(1, 2) @ J
        mu = self.damping * JtJ.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
        JtJ = JtJ + mu[:, None, None] * torch.eye(J.shape[2], device=J.device, dtype=J.dtype)
        delta = (xs - xs.detach()).flatten(1).unsqueeze(2)        # zero, carries d/dx
        move = J @ torch.linalg.solve(JtJ, J.transpose(1, 2) @ delta)
        return x_hat + move.view_as(xs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # All EOT samples are one batched projection: x repeated, each copy with fresh restarts
        # from its own stream (image, call, sample), so chunking the images changes nothing.
        xs = x.repeat(self.samples, *[1] * (x.ndim - 1))
        if self.inc.draws is None:
            proj = self.inc.project(xs.detach())
        else:
            idx, call = self.inc.draws.next(x.shape[0])
            sample = torch.arange(self.samples).repeat_interleave(x.shape[0])
            proj = self.inc.project(xs.detach(), indices=idx.repeat(self.samples), call=call,
                                    sample=sample)
        if self.backward == "tangent":
            x_lin = self._tangent(xs, proj.z, proj.x_hat)
        else:
            # Value G(z*), gradient of the identity: x + (G(z*) - x) with the difference detached.
            x_lin = xs + (proj.x_hat - xs).detach()
        log_probs = self.inc.classifier(x_lin).log_softmax(dim=1)
        log_probs = log_probs.view(self.samples, x.shape[0], -1)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.samples)
