"""Square Attack (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020, arXiv:1912.00049).

A score-based black-box attack: random search over square-shaped updates, each accepted
only if it lowers the margin loss. It needs the model's outputs and nothing else, so it
attacks a defense exactly as deployed, randomness, restarts and missing gradients
included: the gradient-free check of Carlini et al.'s (2019) evaluation checklist.

Same signature as the other attacks, ``attack(model, x, y, eps, **options) -> x_adv``.
Image i draws its random choices from its own stream (seed, ``indices[i]``), so a shard
of the images gets the same result as the whole batch (:mod:`rmd_lib.randomness`).
"""
from __future__ import annotations

import math
import numbers
from contextlib import ExitStack

import torch
from tqdm.auto import tqdm

from ..checks import check_labels, check_positive_int
from ..randomness import as_indices, randomised, stream
from .common import check_attack_args

__all__ = ["square_attack", "square_attack_with_stats", "margin_loss", "p_schedule"]

# Iterations (out of 10,000) after which p halves, as in the authors' code; another budget
# scales them (iteration i of n counts as 10,000 i / n).
MILESTONES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
P_INIT = {"linf": 0.05, "l2": 0.1}  # the paper's values on ImageNet


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The true class's logit minus the largest other logit, (N,); below 0: misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def p_schedule(p_init: float, i: int, n_iters: int) -> float:
    """The fraction of pixels changed at iteration i of n_iters: p_init halved at each
    milestone passed, the milestones scaled from 10,000 iterations to n_iters."""
    t = int(i / n_iters * 10000)
    return p_init / 2 ** sum(t > m for m in MILESTONES)


def _uniform(gens, k: int) -> torch.Tensor:
    """k uniform numbers in [0, 1) per image, each row from that image's own stream: (n, k)."""
    return torch.stack([torch.rand(k, generator=g, dtype=torch.float64) for g in gens])


def _signs(u: torch.Tensor) -> torch.Tensor:
    return torch.where(u < 0.5, -1.0, 1.0)


def _window(u_row, u_col, s: int, h: int, w: int):
    """Per image an s x s window at a uniform position in {0..h-s} x {0..w-s}: the mask
    (n, 1, h, w) and the top-left corners (n,), (n,)."""
    r = (u_row * (h - s + 1)).long().clamp(max=h - s)
    c = (u_col * (w - s + 1)).long().clamp(max=w - s)
    rows, cols = torch.arange(h, device=r.device), torch.arange(w, device=r.device)
    in_r = (rows >= r[:, None]) & (rows < r[:, None] + s)
    in_c = (cols >= c[:, None]) & (cols < c[:, None] + s)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None], r, c


def _eta_rect(a: int, b: int) -> torch.Tensor:
    """The paper's pattern eta on an a x b rectangle: nested boxes around the centre, the
    k-th adding 1/(k+1)^2, so a pixel at Chebyshev distance d holds sum_{k>=d} 1/(k+1)^2."""
    ca, cb = a // 2, b // 2
    d = torch.maximum((torch.arange(a) - ca).abs()[:, None], (torch.arange(b) - cb).abs()[None])
    box = 1.0 / torch.arange(1, max(ca, cb) + 2, dtype=torch.float64) ** 2
    return box.flip(0).cumsum(0).flip(0)[d]


def _eta(s: int) -> torch.Tensor:
    """The L2 update's s x s pattern of unit norm: eta on the top half, -eta on the bottom."""
    pattern = torch.cat([_eta_rect(s // 2, s), -_eta_rect(s - s // 2, s)])
    return pattern / pattern.norm()


def _init_linf(gens, shape) -> torch.Tensor:
    """Vertical stripes: each column of each channel +1 or -1 (the paper's L-inf start)."""
    n, c, h, w = shape
    return _signs(_uniform(gens, c * w)).view(n, c, 1, w).expand(n, c, h, w)


def _init_l2(gens, shape) -> torch.Tensor:
    """A 5 x 5 grid of squares of side min(h, w) // 5, each holding eta, randomly transposed,
    with a random sign per channel (the paper's L2 start); unit L2 norm per image."""
    n, c, h, w = shape
    s = max(min(h, w) // 5, 1)
    kh, kw = min(5, h // s), min(5, w // s)
    u = _uniform(gens, kh * kw * (1 + c)).view(n, kh * kw, 1 + c)
    eta, delta = _eta(s), torch.zeros(n, c, h, w, dtype=torch.float64)
    top, left = (h - kh * s) // 2, (w - kw * s) // 2
    for k in range(kh * kw):
        a, b = top + k // kw * s, left + k % kw * s
        square = torch.where(u[:, k, :1, None] < 0.5, eta.T, eta)  # (n, s, s)
        delta[:, :, a:a + s, b:b + s] = square[:, None] * _signs(u[:, k, 1:])[..., None, None]
    return delta / delta.flatten(1).norm(dim=1).view(n, 1, 1, 1)


def _step_linf(x, x_best, eps, p, gens):
    """Algorithm 2: one window of side about sqrt(p h w), set to x +- eps per channel. Signs
    that would leave the image unchanged (the window already there, or clipped at 0 or 1)
    are drawn again, as in the authors' code, so that no query is spent on a repeat."""
    n, c, h, w = x.shape
    s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
    u = _uniform(gens, 2 + c).to(x.device)
    mask, _, _ = _window(u[:, 0], u[:, 1], s, h, w)
    rows, u, cand = torch.arange(n, device=x.device), u[:, 2:], torch.empty_like(x)
    for _ in range(100):  # with eps > 0 one of the 2^c sign choices always changes the window
        signs = _signs(u).to(x.dtype).view(-1, c, 1, 1)
        cand[rows] = torch.where(mask[rows], (x[rows] + eps * signs).clamp(0.0, 1.0), x_best[rows])
        rows = rows[(cand[rows] == x_best[rows]).flatten(1).all(1)]
        if len(rows) == 0:
            break
        u = _uniform([gens[j] for j in rows.tolist()], c).to(x.device)
    return cand


def _step_l2(x, x_best, eps, p, gens):
    """Algorithm 3: move the mass of window W2 and window W1 into W1, as the pattern eta
    plus W1's old direction, with the unused budget; the result on the eps-sphere."""
    n, c, h, w = x.shape
    s = min(max(round(math.sqrt(p * h * w)), 3) | 1, h, w)  # odd, at least 3
    u = _uniform(gens, 5 + c).to(x.device)
    m1, r1, c1 = _window(u[:, 0], u[:, 1], s, h, w)
    m2, _, _ = _window(u[:, 2], u[:, 3], s, h, w)
    eta = _eta(s).to(x.device, x.dtype)
    eta = torch.where(u[:, 4, None, None] < 0.5, eta.T, eta)  # (n, s, s), transposed at random
    # eta placed at each image's W1: index the pattern by the pixel's offset from the corner.
    li = (torch.arange(h, device=x.device) - r1[:, None]).clamp(0, s - 1)
    lj = (torch.arange(w, device=x.device) - c1[:, None]).clamp(0, s - 1)
    eta = eta[torch.arange(n, device=x.device)[:, None, None], li[:, :, None], lj[:, None, :]]
    eta = eta[:, None] * m1
    rho = _signs(u[:, 5:]).to(x.dtype).view(n, c, 1, 1)

    def norm_hw(t):  # per image and channel
        return t.pow(2).sum((2, 3), keepdim=True).sqrt()

    nu = x_best - x  # the lines are Algorithm 3's
    unused = (eps ** 2 - nu.pow(2).sum((1, 2, 3), keepdim=True)).clamp_min(0.0)   # line 4
    temp = rho * eta + nu * m1 / (norm_hw(nu * m1) + 1e-10)                         # line 7
    avail = (norm_hw(nu * (m1 | m2)) ** 2 + unused / c).sqrt()                      # line 8
    nu = torch.where(m1 | m2, 0.0, nu) + temp / norm_hw(temp).clamp_min(1e-12) * avail  # line 9
    nu = nu * (eps / nu.flatten(1).norm(dim=1).clamp_min(1e-12)).view(n, 1, 1, 1)
    return (x + nu).clamp(0.0, 1.0)


class _Queries:
    """The model's queries, with each randomised part of it (:func:`randomised`) pinned so
    that query q of image j draws from the streams of j's global index and call number
    ``call + q * stride``: the same, whichever other images are still running, whatever
    the batch or chunk. The stride is the number of calls one query makes (measured at the
    first query), so successive queries never share a call number. At the end each call
    count stands where ``queries`` queries leave it, however many ran."""

    def __init__(self, model, base_indices: torch.Tensor, queries: int):
        self.model, self.queries = model, queries
        self.draws = randomised(model)
        self.base = base_indices
        self.start = [d.call for d in self.draws]
        self.stride: list[int] | None = None

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, q: int) -> torch.Tensor:
        with ExitStack() as stack:
            for k, d in enumerate(self.draws):
                call = self.start[k] + q * (self.stride[k] if self.stride else 0)
                idx = self.base[rows.cpu()] if self.base is not None else d.offset + rows.cpu()
                stack.enter_context(d.pin(idx, call))
            logits = _query(self.model, x)
            if self.stride is None:
                self.stride = [max(d.call - s, 1) for d, s in zip(self.draws, self.start)]
        return logits

    def finish(self) -> None:
        # the first query always runs (it scores the random start), so stride is known
        for d, s, k in zip(self.draws, self.start, self.stride):
            d.call = s + self.queries * k


def _query(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(x):
        raise ValueError(f"model must return logits of shape ({len(x)}, classes), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}.")
    return logits


def square_attack_with_stats(model, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                             norm: str = "linf", queries: int = 1000,
                             p_init: float | None = None, seed: int = 0, indices=None,
                             progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Square Attack; returns x_adv and the number of model queries each image used.

    x: (N, C, H, W) in [0, 1]; y: (N,) true labels; eps: the L-inf or L2 budget (``norm``).
    ``queries`` caps the model calls per image, the first evaluation (of the random start)
    included; an image stops as soon as its margin is below 0. ``p_init`` is the fraction of
    pixels the first windows change (default: the paper's 0.05 for L-inf, 0.1 for L2; on
    small images such as MNIST larger values, e.g. AutoAttack's 0.8, do better). Image i's
    draws come from the stream (``seed``, ``indices[i]``), ``indices`` being the images'
    global indices (default 0..N-1). Each iteration is one batched model call on the images
    still running. A randomised defense draws afresh at every query, as it would for any
    attacker: query q of image i draws from the defense's streams of i's global index
    (``indices[i]``, or the defense's offset plus i) and the q-th call after the attack
    began, so the result does not depend on which images share a batch, a chunk or a shard,
    and afterwards the defense's call count has moved on by ``queries``. Returns x_adv
    (N, C, H, W), inside the eps-ball around x and [0, 1], and the queries per image, (N,)
    int64 on the CPU, each in 1..``queries``. With eps = 0 the images are evaluated once.

    The paper's Algorithms 1-3 in full, L2 included, with two choices of our own: every image
    draws its own window positions (the authors' L2 code shares one per batch), uniform over
    all of them, {0, ..., h - s} as in the paper; and an image stops at a margin below 0,
    not at 0, so that a tie is not counted as fooled.
    """
    y, eps = check_attack_args(model, x, y, eps, norm, probe_classes=False)  # checked at the first query
    queries = check_positive_int(queries, "queries")
    if p_init is None:
        p_init = P_INIT[norm]
    elif isinstance(p_init, bool) or not isinstance(p_init, numbers.Real) or not 0 < p_init <= 1:
        raise ValueError(f"p_init must be a number in (0, 1], got {p_init!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    index = as_indices(indices, len(x))
    gens = [stream(seed, i) for i in index.tolist()]
    query = _Queries(model, None if indices is None else index, queries)
    start = (_init_linf if norm == "linf" else _init_l2)(gens, x.shape)
    x_best = (x + eps * start.to(x.device, x.dtype)).clamp(0.0, 1.0)
    logits = query(x_best, torch.arange(len(x)), 0)
    check_labels(y, len(x), "y", num_classes=logits.shape[1])
    margin = margin_loss(logits, y)
    used = torch.ones(len(x), dtype=torch.long)
    step = _step_linf if norm == "linf" else _step_l2
    bar = tqdm(range(queries - 1 if eps > 0 else 0), desc=f"Square attack ({norm})",
               disable=not progress)
    for i in bar:
        run = (margin >= 0).nonzero().flatten()
        if len(run) == 0:
            break
        bar.set_postfix(running=len(run))
        cand = step(x[run], x_best[run], eps, p_schedule(p_init, i, queries),
                    [gens[j] for j in run.tolist()])
        new = margin_loss(query(cand, run, i + 1), y[run])
        used[run.cpu()] += 1
        better = new < margin[run]  # random search: keep a candidate only if it helps
        x_best[run[better]], margin[run[better]] = cand[better], new[better]
    bar.close()
    query.finish()
    return x_best.detach(), used


def square_attack(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
                  queries: int = 1000, p_init: float | None = None, seed: int = 0,
                  indices=None, progress: bool = False) -> torch.Tensor:
    """Square Attack (score-based, gradient-free) in L-inf or L2: x_adv (N, C, H, W) in [0, 1].

    See :func:`square_attack_with_stats`, which also returns the queries each image used.
    """
    return square_attack_with_stats(model, x, y, eps, norm=norm, queries=queries, p_init=p_init,
                                    seed=seed, indices=indices, progress=progress)[0]
