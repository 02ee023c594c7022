"""The overpowered min-max attack: pairs of images in the generator's range that lie within
eps of each other and are classified as differently as possible (Ilyas et al. 2017).

Both images are outputs of G, so a projection onto the range returns them unchanged: a
pair found here defeats invert-and-classify by construction. Per pair, over (z1, z2):

    maximise  D(C(G(z1)), C(G(z2)))  subject to  ||G(z1) - G(z2)||_2 <= eps,

with D the symmetric KL divergence of the two softmax outputs (or the authors' cross-entropy
form), the constraint held by a Lagrange multiplier lambda >= 0 raised by dual ascent, and a
small penalty on ||z||^2 that keeps the latents where the prior puts its mass. All pairs are
one batch; a pair stops as soon as it is valid and its two images get different labels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_eps, check_positive, check_positive_int, model_device
from ..memory import budget_bytes, rows_per_chunk, saved_bytes
from ..projection import latent_dim, sample_prior
from ..randomness import as_indices, per_image

__all__ = ["MinMaxPairs", "minmax_pairs", "minmax_chunk", "divergence", "DIVERGENCES"]

DIVERGENCES = ("sym_kl", "ce")


def divergence(logits1: torch.Tensor, logits2: torch.Tensor, kind: str = "sym_kl") -> torch.Tensor:
    """Per-row divergence between two classifiers' outputs, logits (N, K) each: ``"sym_kl"``
    is KL(p1 || p2) + KL(p2 || p1); ``"ce"`` is the cross-entropy -sum p1 log p2."""
    if kind not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {kind!r}.")
    lp1, lp2 = logits1.log_softmax(dim=1), logits2.log_softmax(dim=1)
    if kind == "ce":
        return -(lp1.exp() * lp2).sum(dim=1)
    return ((lp1.exp() - lp2.exp()) * (lp1 - lp2)).sum(dim=1)


@dataclass
class MinMaxPairs:
    """N pairs: latents ``z1``, ``z2`` (N, d); images ``x1``, ``x2``; ``distance`` (N,) =
    ||G(z1) - G(z2)||_2; ``divergence`` (N,); ``valid`` (distance <= eps); ``different``
    (the classifier's labels differ); ``steps`` (N,) gradient steps each pair ran."""

    z1: torch.Tensor
    z2: torch.Tensor
    x1: torch.Tensor
    x2: torch.Tensor
    distance: torch.Tensor
    divergence: torch.Tensor
    valid: torch.Tensor
    different: torch.Tensor
    steps: torch.Tensor

    @property
    def success(self) -> torch.Tensor:
        """Valid pairs whose two images are classified differently: (N,) bool."""
        return self.valid & self.different

    def summary(self) -> dict[str, float]:
        """Shares of valid pairs, of successes and of differently classified pairs among the
        valid ones, the mean divergence over valid pairs (NaN when none is valid) and the mean
        number of steps a pair ran."""
        valid, any_valid = self.valid, bool(self.valid.any())
        nan = float("nan")
        return {"valid": float(valid.float().mean()),
                "valid and different": float(self.success.float().mean()),
                "different among valid": float(self.different[valid].float().mean()) if any_valid else nan,
                "mean divergence (valid)": float(self.divergence[valid].mean()) if any_valid else nan,
                "mean steps": float(self.steps.float().mean())}


def _beats(diff_a, div_a, diff_b, div_b) -> torch.Tensor:
    # Pair state a is better than b: labels that differ first, then the larger divergence.
    return (diff_a & ~diff_b) | ((diff_a == diff_b) & (div_a > div_b))


def minmax_pairs(G: nn.Module, C: nn.Module, eps: float, n: int = 256, *, steps: int = 200,
                 lr: float = 0.05, lam_init: float = 1.0, lam_rate: float = 1.0,
                 latent_penalty: float = 1e-3, kind: str = "sym_kl",
                 z1: torch.Tensor | None = None, init_scale: float = 0.1,
                 early_stop: bool = True, keep_best: bool = True, seed: int | None = 0,
                 generator: torch.Generator | None = None, indices=None,
                 batch_size: int | None = None, progress: bool = False) -> MinMaxPairs:
    """Search ``n`` pairs (z1, z2) with ||G(z1) - G(z2)||_2 <= eps whose classifications by C
    differ most, by Adam on both latents (batched) and dual ascent on one lambda per pair.

    G maps (B, d) latents to images in [0, 1]; C maps images to logits. z1 starts from the
    prior and z2 at z1 plus ``init_scale`` times prior noise. Pair i's draws come from its
    own stream, (seed, ``indices[i]``), ``indices`` defaulting to 0..n-1, so a pair's search
    does not depend on how many others run beside it; an explicit ``generator`` instead
    draws all pairs from that one generator in order. Passing ``z1`` (n, d), e.g.
    the inversions of real test images, fixes it: only z2 moves, and the pairs are manifold
    neighbours of those images. ``kind`` is the divergence (see :func:`divergence`).
    With ``keep_best``, a pair ends at the most divergent valid iterate it visited (if it
    visited one) rather than at its last, which may have drifted out of the budget; an
    iterate whose labels differ beats one whose labels agree, whatever their divergences.
    ``batch_size`` caps the pairs searched at once; None picks it from the memory budget
    (:mod:`rmd_lib.memory`). Chunks give the same pairs.
    """
    eps = check_eps(eps)
    steps = check_positive_int(steps, "steps")
    check_positive(lr, "lr", "It is Adam's step size on the latents; with 0 no pair moves. "
                   "The default is 0.05.")
    check_positive(lam_rate, "lam_rate", "It is the dual-ascent step of the multiplier that holds "
                   "each pair within eps; with 0 the budget is never enforced. The default is 1.0.")
    if kind not in DIVERGENCES:
        raise ValueError(f"kind must be one of {DIVERGENCES}, got {kind!r}.")
    d = latent_dim(G)
    device = model_device(G) or torch.device("cpu")
    fixed = z1 is not None
    if fixed:
        if z1.ndim != 2 or z1.shape[1] != d:
            raise ValueError(f"z1 must have shape (n, {d}), got {tuple(z1.shape)}.")
        n = z1.shape[0]
    else:
        n = check_positive_int(n, "n")
    if generator is None and seed is not None:  # per pair: its start, then its offset
        draws = per_image(lambda g: sample_prior(G, 2, g), seed, as_indices(indices, n))
        start, offset = draws[:, 0], draws[:, 1]
    else:
        start = None if fixed else sample_prior(G, n, generator)
        offset = sample_prior(G, n, generator)
    z1 = z1.detach().to(device) if fixed else start.to(device)
    z2 = z1 + init_scale * offset.to(device)
    options = dict(eps=eps, steps=steps, lr=lr, lam_init=lam_init, lam_rate=lam_rate,
                   latent_penalty=latent_penalty, kind=kind, early_stop=early_stop,
                   keep_best=keep_best, progress=progress)
    if batch_size is None:
        batch_size = minmax_chunk(G, C, z1, z2, kind)
    else:
        batch_size = check_positive_int(batch_size, "batch_size")
    parts = [_search(G, C, z1[i:i + batch_size], z2[i:i + batch_size], fixed, **options)
             for i in range(0, n, batch_size)]
    if len(parts) == 1:
        return parts[0]
    return MinMaxPairs(*(torch.cat([getattr(p, f.name) for p in parts])
                         for f in fields(MinMaxPairs)))


def _search(G, C, z1, z2, fixed, *, eps, steps, lr, lam_init, lam_rate, latent_penalty, kind,
            early_stop, keep_best, progress) -> MinMaxPairs:
    """The search of :func:`minmax_pairs` for one chunk of pairs, from their starts."""
    n, d, device = z1.shape[0], z1.shape[1], z1.device
    if not fixed:
        z1 = z1.clone()
    moved = [z2] if fixed else [z1, z2]
    m = [torch.zeros_like(z) for z in moved]
    v = [torch.zeros_like(z) for z in moved]
    lam = torch.full((n,), float(lam_init), device=device)
    ran = torch.zeros(n, dtype=torch.long, device=device)
    live = torch.arange(n, device=device)  # pairs still searching; finished ones leave the batch
    # the best valid iterate of each pair: whether its labels differed, and its divergence
    best = torch.full((n,), -math.inf, device=device)
    best_diff = torch.zeros(n, dtype=torch.bool, device=device)
    best_z = [z.clone() for z in moved]
    b1, b2 = 0.9, 0.999
    for t in tqdm(range(steps), desc="min-max pairs", disable=not progress):
        req = [z[live].requires_grad_(True) for z in moved]
        a, b = (z1[live], req[0]) if fixed else (req[0], req[1])
        with torch.enable_grad():
            xa, xb = G(a), G(b)
            la, lb = C(xa), C(xb)
            dist = (xa - xb).flatten(1).norm(dim=1)
            prior = (b.pow(2).sum(1) + (0 if fixed else a.pow(2).sum(1))) / d
            loss = (-divergence(la, lb, kind) + lam[live] * (dist - eps).clamp(min=0)
                    + latent_penalty * prior)
            grads = torch.autograd.grad(loss.sum(), req)
        with torch.no_grad():
            if keep_best:  # the iterate just evaluated, before this step moves it
                div, diff = divergence(la, lb, kind), la.argmax(1) != lb.argmax(1)
                better = (dist <= eps) & _beats(diff, div, best_diff[live], best[live])
                rows_b = live[better]
                best[rows_b], best_diff[rows_b] = div[better], diff[better]
                for i, z in enumerate(req):
                    best_z[i][rows_b] = z.detach()[better]
            go = torch.ones_like(dist, dtype=torch.bool)
            if early_stop:  # valid and classified differently: this pair is found
                go = ~((dist <= eps) & (la.argmax(1) != lb.argmax(1)))
            ran[live] += go.long()
            rows = live[go]
            for i, g in enumerate(grads):
                g = g[go]
                m[i][rows] = b1 * m[i][rows] + (1 - b1) * g
                v[i][rows] = b2 * v[i][rows] + (1 - b2) * g * g
                m_hat = m[i][rows] / (1 - b1 ** (t + 1))
                v_hat = v[i][rows] / (1 - b2 ** (t + 1))
                moved[i][rows] = moved[i][rows] - lr * m_hat / (v_hat.sqrt() + 1e-8)
            # Dual ascent: lambda grows while the pair is too far apart, never below zero.
            lam[rows] = (lam[rows] + lam_rate * (dist[go] - eps)).clamp(min=0)
            live = rows
            if live.numel() == 0:
                break
    with torch.no_grad():
        if keep_best:  # a pair's final iterate unless a valid one diverged more
            xa, xb = G(z1 if fixed else moved[0]), G(moved[-1])
            la, lb = C(xa), C(xb)
            final_ok = (xa - xb).flatten(1).norm(dim=1) <= eps
            final_better = final_ok & ~_beats(best_diff, best, la.argmax(1) != lb.argmax(1),
                                              divergence(la, lb, kind))
            use = torch.isfinite(best) & ~final_better
            for i in range(len(moved)):
                moved[i][use] = best_z[i][use]
    z2 = moved[0] if fixed else moved[1]
    if not fixed:
        z1 = moved[0]
    with torch.no_grad():
        x1, x2 = G(z1), G(z2)
        l1, l2 = C(x1), C(x2)
        dist = (x1 - x2).flatten(1).norm(dim=1)
        return MinMaxPairs(z1.detach(), z2.detach(), x1, x2, dist, divergence(l1, l2, kind),
                           dist <= eps + 1e-6, l1.argmax(1) != l2.argmax(1), ran)


def minmax_chunk(G: nn.Module, C: nn.Module, z1: torch.Tensor, z2: torch.Tensor,
                 kind: str = "sym_kl") -> int:
    """Pairs per chunk of :func:`minmax_pairs` under the memory budget: one step holds both
    images' forward and backward passes for every pair, three times the bytes autograd
    saves for one pair (measured on the first pair of z1, z2), as for the projection."""
    device = model_device(G) or torch.device("cpu")

    def one_pair():
        a = z1[:1].detach().to(device).clone().requires_grad_(True)
        b = z2[:1].detach().to(device).clone().requires_grad_(True)
        xa, xb = G(a), G(b)
        return divergence(C(xa), C(xb), kind).sum() + (xa - xb).norm()
    row = 3 * saved_bytes(one_pair, exclude=(G, C))
    return min(z1.shape[0], rows_per_chunk(row, budget_bytes(device), "minmax_pairs (one pair)"))
