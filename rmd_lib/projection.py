"""Latent-space projection, z* = argmin_z ||G(z) - x||^2, and invert-and-classify (INC).

All images and all their random restarts are one batched tensor problem: row ``i * R + r`` of
the latent batch is restart ``r`` of image ``i``. The optimisers are written out on tensors
(rather than ``torch.optim``) so rows can leave the batch: restarts that are clearly losing are
pruned (successive halving) and images whose fit has converged stop early. Every restart still
starts at a random point of the prior, which is what makes the defense randomised. Image i's
restarts come from its own random stream (:mod:`rmd_lib.randomness`), so they do not depend
on the batch or chunk the image is projected in.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import (check_betas, check_images, check_in_range, check_positive, check_positive_int,
                     model_device)
from .memory import budget_bytes, rows_per_chunk, saved_bytes
from .randomness import Draws, as_indices, per_image

__all__ = ["Projection", "project", "projection_chunk", "InvertAndClassify", "latent_path", "latent_dim", "sample_prior", "DEFENSE_GAN", "EXHAUSTIVE",
           "MIN_PRUNE_FRACTION", "DEFAULT_PRUNE"]

# Defense-GAN's setting (Samangouei et al. 2018): momentum SGD, lr 10, x0.1 at 0.8 L,
# every restart run for every step. Kept as the reference the benchmark compares against.
DEFENSE_GAN = dict(optimizer="sgd", lr=10.0, momentum=0.7, decay_at=0.8, decay=0.1,
                   prune=(), early_stop=False)
# Pruning never starts before this fraction of the steps: a restart that starts far away can
# still come from behind in the first steps, and dropping it early loses the best fit.
MIN_PRUNE_FRACTION = 0.2
# The default schedule: each image keeps its best 20% of restarts after 20% of the steps, and
# its best one after 30%.
DEFAULT_PRUNE = ((0.2, 0.2), (0.3, 0.1))
# The library default with pruning and early stopping switched off (for sweeps that need every
# restart to run every step).
EXHAUSTIVE = dict(prune=(), early_stop=False)


@dataclass
class Projection:
    """Result of :func:`project` for N images with R restarts.

    z: (N, d) best latent per image; x_hat: G(z), shaped like x; mse: (N,) per-pixel MSE of the
    best restart; restart_mse: (N, R) best MSE each restart reached; latent_steps: how many
    (row, step) gradient evaluations ran, the cost measure of the benchmark.
    """

    z: torch.Tensor
    x_hat: torch.Tensor
    mse: torch.Tensor
    restart_mse: torch.Tensor
    latent_steps: int
    history: dict[int, torch.Tensor] | None = None

    def curve(self, restarts: int) -> dict[int, float]:
        """Median over images of the best MSE among the first ``restarts`` restarts, after each
        step listed in ``record_at`` (needs a run with ``record_at``)."""
        if not self.history:
            raise ValueError("This projection recorded no history; pass record_at=(...) to project().")
        return {t: float(h[:, :restarts].min(dim=1).values.median()) for t, h in self.history.items()}


def latent_dim(G: nn.Module) -> int:
    """G's latent dimension (its ``latent_dim``), or a TypeError that says what G lacks."""
    d = getattr(G, "latent_dim", None)
    if not isinstance(d, int):
        raise TypeError(
            f"G ({type(G).__name__}) needs an integer attribute latent_dim; the generators in "
            "rmd_lib.models have one (for a VAE, pass vae.decoder)."
        )
    return d


def sample_prior(G: nn.Module, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n draws (n, latent_dim) from G's prior (its ``sample_latent``, else N(0, I)), on the CPU."""
    # Drawn on the CPU so that a seed gives the same restarts on every device.
    if hasattr(G, "sample_latent"):
        return G.sample_latent(n, generator=generator, device="cpu")
    return torch.randn(n, latent_dim(G), generator=generator)


def _row_mse(G: nn.Module, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (G(z) - target).flatten(1).pow(2).mean(dim=1)


def _prune_schedule(prune, steps: int) -> tuple[tuple[float, float], ...]:
    """The checked prune points of :func:`project`, at most one per step (see its docstring)."""
    default = prune is None
    prune = DEFAULT_PRUNE if default else tuple(prune)
    prune_at = {}
    for frac, keep in prune:
        if not (0 < frac < 1 and 0 < keep <= 1):
            raise ValueError(f"prune entries are (fraction of steps, fraction kept) in (0, 1), got {(frac, keep)}.")
        if frac < MIN_PRUNE_FRACTION:
            raise ValueError(
                f"prune at {frac:g} of the steps is too early: restarts are pruned from "
                f"{MIN_PRUNE_FRACTION:g} of the steps on (a far start can still come from "
                "behind before that); use a later fraction, or prune=() for none.")
        at = max(1, int(round(frac * steps)))
        if at in prune_at and not default:
            raise ValueError(
                f"prune fractions {prune_at[at][0]:g} and {frac:g} both fall on step {at} of "
                f"{steps}; give fractions at least {1 / steps:.3g} apart, or fewer of them.")
        prune_at[at] = (frac, keep)
    return tuple(prune_at.values())


def _check_options(*, steps, restarts, lr, optimizer, momentum, betas, decay_at, decay, prune,
                   tol, patience, batch_size, **_) -> float:
    """Check the settings of :func:`project` that do not depend on the images (InvertAndClassify
    checks them when it is built); returns lr, its default for the optimizer filled in."""
    check_positive_int(steps, "steps")
    check_positive_int(restarts, "restarts")
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size", "None optimises all images at once.")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}.")
    if lr is None:
        lr = 0.1 if optimizer == "adam" else 10.0
    check_positive(lr, "lr", "It is the step size in latent space; the defaults are 0.1 for "
                   "'adam' and 10 for 'sgd'.")
    check_in_range(momentum, "momentum", 0.0, 1.0, high_open=True,
                   hint="It is the share of the last step that 'sgd' keeps; at 1 or above "
                        "the steps never die out. The default is 0.9 (Defense-GAN used 0.7).")
    check_betas(betas)
    check_in_range(decay_at, "decay_at", 0.0, 1.0, low_open=True,
                   hint="It is the fraction of the steps after which the step size decays; "
                        "1 never decays. The default is 0.8.")
    check_in_range(decay, "decay", 0.0, 1.0, low_open=True,
                   hint="It multiplies the step size after decay_at * steps; 1 keeps it, "
                        "0 would stop every image there. The default is 0.1.")
    _prune_schedule(prune, steps)
    check_in_range(tol, "tol", 0.0, math.inf,
                   hint="It is the relative improvement over patience steps below which an "
                        "image stops early; the default is 1e-3.")
    check_positive_int(patience, "patience",
                       "It is the number of steps an image's fit is compared over before it "
                       "stops early; with 0 every image would stop after one step. The default "
                       "is 20.")
    return lr


def project(G: nn.Module, x: torch.Tensor, steps: int = 200, restarts: int = 10,
            lr: float | None = None, *, optimizer: str = "adam", momentum: float = 0.9,
            betas: tuple[float, float] = (0.9, 0.999), decay_at: float = 0.8, decay: float = 0.1,
            prune: tuple[tuple[float, float], ...] | None = None,
            early_stop: bool = True, tol: float = 1e-3, patience: int = 20,
            z_init: torch.Tensor | None = None, seed: int | None = 0,
            generator: torch.Generator | None = None, indices=None, call=0, sample=0,
            batch_size: int | None = None, record_at: tuple[int, ...] = (),
            progress: bool = False) -> Projection:
    """Project images onto the range of G by gradient descent in latent space with restarts.

    x: (N, C, H, W) in [0, 1]; G maps (B, latent_dim) to images of x's shape. ``optimizer`` is
    ``"adam"`` (default, ``lr`` 0.1) or ``"sgd"`` with ``momentum`` (``lr`` 10, as Defense-GAN
    used on the per-pixel MSE). The step size is multiplied by ``decay`` after ``decay_at *
    steps``. ``prune`` lists (fraction of steps, fraction of restarts kept): at each point every
    image keeps only its best restarts; no fraction may be below ``MIN_PRUNE_FRACTION`` (0.2),
    and no two may fall on the same step. None is ``DEFAULT_PRUNE``, whose points merge
    (the later one wins) where a short run puts them on the same step. With ``early_stop``,
    an image stops once its best MSE improved by less than a relative ``tol`` over
    ``patience`` steps. ``z_init`` (N * R, d)
    replaces the random starts (e.g. an encoder's warm start). Otherwise, with ``seed``,
    image i's R restarts are drawn from the prior with its own stream, keyed by (seed,
    ``indices[i]``, ``call``, ``sample``): ``indices`` are the images' global indices
    (default 0..N-1; a chunk or shard passes its own), ``call`` and ``sample`` an int or one
    value per image (see :mod:`rmd_lib.randomness`). So the restarts of an image do not
    depend on the batch it is projected in. An explicit ``generator`` instead draws all
    N * R starts from that one generator, in batch order; ``seed=None`` uses the global RNG.
    ``batch_size`` caps the number of images optimised at once; None picks it from the
    memory budget (:mod:`rmd_lib.memory`): what one row's step costs, measured on the first
    image, times the restarts, against the device's budget. Chunks give the same results.
    ``record_at`` lists step counts after which every restart's best MSE is kept in
    ``Projection.history`` (for convergence curves).
    """
    lr = _check_options(steps=steps, restarts=restarts, lr=lr, optimizer=optimizer,
                        momentum=momentum, betas=betas, decay_at=decay_at, decay=decay,
                        prune=prune, tol=tol, patience=patience, batch_size=batch_size)
    device = model_device(G) or x.device
    check_images(x, "x", device=device)
    d = latent_dim(G)
    n = x.shape[0]
    if z_init is not None:
        if z_init.shape != (n * restarts, d):
            raise ValueError(f"z_init must have shape ({n * restarts}, {d}), got {tuple(z_init.shape)}.")
        z0 = z_init.detach().float().cpu()
    elif generator is None and seed is not None:
        z0 = per_image(lambda g: sample_prior(G, restarts, g), seed, as_indices(indices, n),
                       call, sample).view(n * restarts, d)
    else:
        z0 = sample_prior(G, n * restarts, generator)
    with torch.no_grad():
        probe = G(z0[:1].to(device))
    if probe.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"G makes images of shape {tuple(probe.shape[1:])} but x has {tuple(x.shape[1:])}; "
            "project images of the kind the generator was trained on."
        )

    if batch_size is None:
        chunk = projection_chunk(G, x, restarts, z0[:1])
    else:
        chunk = batch_size
    parts = []
    n_chunks = math.ceil(n / chunk)
    bar = tqdm(total=n_chunks * steps, desc="projection", disable=not progress, unit="step")
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = slice(start * restarts, stop * restarts)
        parts.append(_project_chunk(G, x[start:stop], z0[rows].to(device), steps, restarts,
                                    float(lr), optimizer, momentum, betas, decay_at, decay,
                                    _prune_schedule(prune, steps), early_stop, tol, patience,
                                    set(record_at), bar))
    bar.close()
    z = torch.cat([p[0] for p in parts])
    restart_mse = torch.cat([p[1] for p in parts])
    mse, best = restart_mse.min(dim=1)
    z_best = z.view(n, restarts, d)[torch.arange(n, device=z.device), best]
    with torch.no_grad():
        x_hat = G(z_best)
    history = {t: torch.cat([p[3][t] for p in parts]) for t in sorted(parts[0][3])}
    return Projection(z_best.detach(), x_hat.detach(), mse, restart_mse,
                      sum(p[2] for p in parts), history or None)


def projection_chunk(G: nn.Module, x: torch.Tensor, restarts: int,
                     z: torch.Tensor | None = None) -> int:
    """Images per chunk of :func:`project` under the memory budget (:mod:`rmd_lib.memory`):
    a step holds the forward pass's saved tensors, the backward pass's temporaries of about
    the same size, and the output, so one image costs three times the bytes one row saves
    (measured on x's first image, from the latent ``z`` (1, d) or a prior draw), times its
    ``restarts``."""
    device = model_device(G) or x.device
    if z is None:
        z = sample_prior(G, 1, torch.Generator().manual_seed(0))
    z = z[:1].to(device)
    row = 3 * saved_bytes(lambda: _row_mse(G, z.clone().requires_grad_(True), x[:1]),
                          exclude=G)
    return min(x.shape[0], rows_per_chunk(row * restarts, budget_bytes(device),
                                          f"project ({restarts} restarts per image)"))


def _project_chunk(G, x, z, steps, restarts, lr, optimizer, momentum, betas, decay_at, decay,
                   prune, early_stop, tol, patience, record_at, bar):
    """One chunk: best z per row (N*R, d), best MSE (N, R), latent steps, recorded history."""
    n, d = x.shape[0], z.shape[1]
    rows_total = n * restarts
    best_z = z.clone()
    best_mse = torch.full((rows_total,), math.inf, device=z.device)
    # The compact, "live" batch of rows still in memory. A row that is pruned or whose image
    # has converged is frozen at once (``active`` False: no update, no scoring) and dropped
    # from the batch at the next compaction; compacting only every few steps keeps the GPU
    # from waiting on the host each step, and gives the same numbers as compacting each step.
    live = torch.arange(rows_total, device=z.device)
    active = torch.ones(rows_total, dtype=torch.bool, device=z.device)
    z_live = z.clone()
    buf1 = torch.zeros_like(z_live)  # momentum, or Adam's first moment
    buf2 = torch.zeros_like(z_live)  # Adam's second moment
    prune_steps = {max(1, int(round(f * steps))): k for f, k in prune}  # distinct: checked
    history = torch.full((n, patience + 1), math.inf, device=z.device)  # best MSE per image
    check_every = max(1, patience // 4)
    latent_steps = 0
    recorded = {}
    b1, b2 = betas
    for t in range(steps):
        if live.numel() == 0:
            bar.update(steps - t)  # every image of the chunk has converged
            break
        bar.update(1)
        step_lr = lr * (decay if t >= decay_at * steps else 1.0)
        z_req = z_live.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = _row_mse(G, z_req, x[live // restarts])
            grad, = torch.autograd.grad(loss.sum(), z_req)
        latent_steps += live.numel()
        with torch.no_grad():
            cur = best_mse[live]
            improved = (loss < cur) & active
            best_mse[live] = torch.where(improved, loss, cur)
            best_z[live] = torch.where(improved[:, None], z_live, best_z[live])
            if t in record_at:  # the best after t steps: scored before step t+1 moves z
                recorded[t] = best_mse.view(n, restarts).clone()
            if optimizer == "sgd":
                buf1.mul_(momentum).add_(grad)
                z_next = z_live - step_lr * buf1
            else:
                buf1.mul_(b1).add_(grad, alpha=1 - b1)
                buf2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                m_hat = buf1 / (1 - b1 ** (t + 1))
                v_hat = buf2 / (1 - b2 ** (t + 1))
                z_next = z_live - step_lr * m_hat / (v_hat.sqrt() + 1e-8)
            z_live = torch.where(active[:, None], z_next, z_live)

            if t + 1 in prune_steps:
                # Successive halving: each image keeps its best ceil(k * R) restarts.
                k = max(1, math.ceil(prune_steps[t + 1] * restarts))
                kth = best_mse.view(n, restarts).sort(dim=1).values[:, k - 1]
                active &= best_mse[live] <= kth[live // restarts]
            if early_stop:
                history = torch.roll(history, -1, dims=1)
                history[:, -1] = best_mse.view(n, restarts).min(dim=1).values
                if t >= patience:
                    old, new = history[:, 0], history[:, -1]
                    active &= ~((old - new) <= tol * new)[live // restarts]
            if (t + 1 in prune_steps or (t + 1) % check_every == 0) and not bool(active.all()):
                keep = active
                live, z_live, buf1, buf2 = live[keep], z_live[keep], buf1[keep], buf2[keep]
                active = active[keep]
    # The last iterate of rows that ran to the end has not been scored yet.
    live, z_live = live[active], z_live[active]
    if live.numel():
        with torch.no_grad():
            loss = _row_mse(G, z_live, x[live // restarts])
            improved = loss < best_mse[live]
            best_mse[live[improved]] = loss[improved]
            best_z[live[improved]] = z_live[improved]
    for t in record_at:
        if t not in recorded and t >= steps:
            recorded[t] = best_mse.view(n, restarts).clone()
    return best_z, best_mse.view(n, restarts), latent_steps, recorded


def latent_path(G: nn.Module, z_a: torch.Tensor, z_b: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Images G(z) along the straight line from z_a to z_b (each (d,)): (n, C, H, W)."""
    t = torch.linspace(0, 1, n, device=z_a.device).unsqueeze(1)
    with torch.no_grad():
        return G((1 - t) * z_a + t * z_b)


# The keywords of project() an InvertAndClassify passes on, with their defaults (the module
# supplies G, x and the random stream itself).
_PROJECTION_OPTIONS = {name: par.default
                       for name, par in inspect.signature(project).parameters.items()
                       if name not in ("G", "x", "seed", "generator", "indices", "call",
                                       "sample")}


class InvertAndClassify(nn.Module):
    """INC: classify G(z*) where z* is the projection of x onto the range of G.

    Composes a generator, the projection settings (any keyword of :func:`project`) and a
    classifier. Takes x (N, C, H, W) in [0, 1] and returns the classifier's logits on the
    projections. With an integer ``seed`` image i's restarts come from its own stream,
    keyed by its global index and the module's call count (``self.draws``): a run is
    reproducible, successive calls draw fresh restarts, and chunking a call
    (:func:`rmd_lib.randomness.chunked`, as :func:`~rmd_lib.evaluation.predict` does)
    changes nothing. ``reset()`` starts the streams over, so that two evaluations can be
    scored on the same draws. The output carries no gradient to x: attacking INC needs
    BPDA or a substitute. Unknown or out-of-range projection settings are refused when
    the module is built. ``batch_size`` is one of them: it goes to :func:`project` (the
    default None picks the chunk from the memory budget), and changes no result.
    """

    def __init__(self, G: nn.Module, classifier: nn.Module, *, seed: int | None = 0, **projection):
        super().__init__()
        # Refused now rather than at the first call, which may come much later.
        unknown = sorted(set(projection) - set(_PROJECTION_OPTIONS))
        if unknown:
            raise TypeError(f"InvertAndClassify got unknown projection option(s) {unknown}; "
                            "it accepts seed and project()'s keywords: "
                            f"{', '.join(_PROJECTION_OPTIONS)}.")
        _check_options(**{**_PROJECTION_OPTIONS, **projection})
        self.G = G
        self.classifier = classifier
        self.projection = projection
        self.seed = seed
        self.draws = Draws(seed) if seed is not None else None
        self.last: Projection | None = None

    def reset(self) -> None:
        """Start the module's random streams over, from its first call."""
        if self.draws is not None:
            self.draws.reset()

    def project(self, x: torch.Tensor, *, indices=None, call=None, sample=0) -> Projection:
        """The projection of x with this module's settings. By default one call of the
        module's streams on images ``draws.offset, ...``; ``indices`` and ``call`` (both
        needed) name the streams instead, and ``sample`` adds a key (an EOT copy)."""
        if self.draws is None:
            return project(self.G, x, seed=None, **self.projection)
        if (indices is None) != (call is None):
            raise ValueError("pass both indices and call, or neither.")
        if indices is None:
            indices, call = self.draws.next(x.shape[0])
        return project(self.G, x, seed=self.seed, indices=indices, call=call, sample=sample,
                       **self.projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = self.project(x)
        with torch.no_grad():
            return self.classifier(self.last.x_hat)
