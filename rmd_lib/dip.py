"""The Deep Image Prior defense: fit an untrained network to the input, stop early, classify.

A convolutional network fits natural images long before it fits noise (Ulyanov et al. 2018),
so stopping the fit early keeps the image and leaves out much of an adversarial perturbation.
:func:`deep_image_prior` fits every image of a batch with its own :class:`DIPNet` at once:
the networks become the copies of one grouped-convolution :class:`DIPNet` (see
:meth:`DIPNet.stack`), and one Adam over its parameters is exactly one Adam per network, since
Adam acts elementwise and each network's loss touches only its own parameters.

:class:`DIPDefense` is the defended classifier; it passes no gradient to its input.
:class:`DIPBPDA` is the adaptive attacker's view of it (Athalye et al. 2018): the true forward
pass, and on the way back the DIP step replaced by the identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .checks import check_images, check_positive_int
from .memory import budget_bytes, rows_per_chunk, saved_bytes
from .models.dip import DIPNet
from .randomness import Draws, as_indices, stream_seed
from .training import seeded

__all__ = ["DIPResult", "deep_image_prior", "dip_chunk", "DIPDefense", "DIPBPDA"]


@dataclass
class DIPResult:
    """What one fit recorded.

    steps: the recorded step counts, ascending; images: (len(steps), N, 3, H, W) in [0, 1];
    mse: (len(steps), N), each recorded image's MSE to its input. With an MSE threshold,
    early: (N, 3, H, W), each image's reconstruction at ``early_step`` (N,), the first step
    whose MSE fell below the threshold (the last step where it never did; ``reached`` says which).
    """

    steps: list[int]
    images: torch.Tensor
    mse: torch.Tensor
    early: torch.Tensor | None = None
    early_step: torch.Tensor | None = None
    reached: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        """The reconstruction at the last recorded step, (N, 3, H, W)."""
        return self.images[-1]

    def at(self, step: int) -> torch.Tensor:
        """The reconstruction recorded at ``step``, (N, 3, H, W)."""
        if step not in self.steps:
            raise KeyError(f"step {step} was not recorded; recorded steps are {self.steps}.")
        return self.images[self.steps.index(step)]


# The three streams of one image's fit: the network's initialisation, its fixed noise input
# and the jitter added to that input at every step. They must not share a stream, or the input
# would repeat the first layer's weights.
_INIT, _INPUT, _JITTER = 0, 1, 2


def _check_options(x, steps, record_at, depth, ema, lr, input_jitter):
    check_images(x, "x")
    if x.shape[1] != 3:
        raise ValueError(f"x must have 3 colour channels, got shape {tuple(x.shape)}.")
    steps = check_positive_int(steps, "steps")
    check_positive_int(depth, "depth")
    unit = 2 ** depth
    for dim, size in (("height", x.shape[2]), ("width", x.shape[3])):
        if size % unit or size < 2 * unit:
            ok = max(2 * unit, round(size / unit) * unit)
            raise ValueError(
                f"x's {dim} {size} does not suit a DIP network of depth {depth}: it must be a "
                f"multiple of 2**depth = {unit} and at least {2 * unit}. Resize or crop to {ok}, "
                "or use a smaller depth."
            )
    record_at = (steps,) if record_at is None else record_at
    if isinstance(record_at, int):
        record_at = (record_at,)
    record = sorted({check_positive_int(int(s) if isinstance(s, (np.integer,)) else s, "record_at")
                     for s in record_at})
    if record[-1] > steps:
        raise ValueError(f"record_at asks for step {record[-1]} but the fit runs {steps} steps; "
                         f"raise steps to {record[-1]} or drop that entry.")
    if ema is not None and not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be None or a weight in [0, 1), e.g. 0.99, got {ema!r}.")
    if not lr > 0 or not input_jitter >= 0:
        raise ValueError(f"lr must be > 0 and input_jitter >= 0, got {lr!r} and {input_jitter!r}.")
    return steps, record


def deep_image_prior(x: torch.Tensor, steps: int, *, record_at=None, mse_threshold=None,
                     lr: float = 0.01, noise_channels: int = 32, input_jitter: float = 1 / 30,
                     ema: float | None = None, width: int = 128, depth: int = 5, skip: int = 4,
                     seed: int = 0, indices=None, call=0, sample=0,
                     batch_size: int | None = None, progress: bool = False) -> DIPResult:
    """Fit one DIP network per image of x (N, 3, H, W) in [0, 1] for ``steps`` Adam steps.

    H and W must be multiples of 2**depth. ``record_at`` lists the step counts to keep
    (default: only ``steps``). The image recorded at step t is the output that step t fits:
    that of the network after t - 1 updates, on the jittered noise input (Ulyanov et al.'s
    convention), or its exponential average with weight ``ema`` (e.g. 0.99) when given.
    ``mse_threshold`` also keeps each image's first reconstruction with an MSE below it.
    Image i's network and noise come from its own streams, keyed by (seed, ``indices[i]``,
    ``call``, ``sample``) (see :mod:`rmd_lib.randomness`; ``indices`` default to 0..N-1,
    ``call`` and ``sample`` are ints or one value per image), so a fit does not depend on
    the batch it runs in. The initial weights and the fixed input are drawn on the CPU and
    are the same on every device; the per-step jitter is drawn on x's device, from a
    generator seeded by the image's stream. Runs on x's device. ``batch_size`` caps the
    images fitted at once; None picks it from the memory budget (:mod:`rmd_lib.memory`) and
    what one image's network costs. Chunks give the same fits.
    """
    steps, record = _check_options(x, steps, record_at, depth, ema, lr, input_jitter)
    check_positive_int(noise_channels, "noise_channels")
    n = x.shape[0]
    idx = as_indices(indices, n).tolist()
    keys = [k.flatten().tolist() if isinstance(k, torch.Tensor) else [int(k)] * n
            for k in (call, sample)]
    if any(len(k) != n for k in keys):
        raise ValueError(f"call and sample must be ints or hold one value per image ({n}).")
    streams = [(seed, i, c, s) for i, c, s in zip(idx, *keys)]
    net_options = (noise_channels, width, skip, depth)
    if batch_size is None:
        batch_size = dip_chunk(x, net_options)
    else:
        batch_size = check_positive_int(batch_size, "batch_size")
    parts = [_fit(x[i:i + batch_size], streams[i:i + batch_size], steps, record, net_options,
                  lr, input_jitter, ema, mse_threshold, progress)
             for i in range(0, n, batch_size)]
    if len(parts) == 1:
        return parts[0]
    cat = (lambda name, dim: None if getattr(parts[0], name) is None
           else torch.cat([getattr(p, name) for p in parts], dim=dim))
    return DIPResult(record, cat("images", 1), cat("mse", 1), cat("early", 0),
                     cat("early_step", 0), cat("reached", 0))


def dip_chunk(x: torch.Tensor, net_options) -> int:
    """How many images of x (N, 3, H, W) :func:`deep_image_prior` fits at once under the
    memory budget, for networks of ``net_options`` (noise_channels, width, skip, depth):
    one image's network costs its parameters four times (weights, gradients, Adam's two
    moments) plus the activations its forward pass saves, twice (the backward pass's
    temporaries)."""
    noise_channels, width, skip, depth = net_options
    with torch.random.fork_rng(devices=[]):
        net = DIPNet(noise_channels, 3, width, skip, depth).to(x.device, x.dtype)
    z = torch.zeros(1, noise_channels, *x.shape[2:], device=x.device, dtype=x.dtype)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    row = 4 * params + 2 * saved_bytes(lambda: net(z), exclude=net)
    return min(x.shape[0], rows_per_chunk(row, budget_bytes(x.device), "deep_image_prior (one image)"))


def _fit(x, streams, steps, record, net_options, lr, input_jitter, ema, mse_threshold,
         progress) -> DIPResult:
    """One chunk of :func:`deep_image_prior`: the images of x fitted together."""
    noise_channels, width, skip, depth = net_options
    n, _, h, w = x.shape
    dev, x = x.device, x.detach()

    nets = []
    for key in streams:
        with seeded(stream_seed(*key, _INIT)):  # leave the caller's random state (GPUs' too) alone
            nets.append(DIPNet(noise_channels, 3, width, skip, depth))
    net = DIPNet.stack(nets).to(dev, x.dtype)
    # Ulyanov et al.'s input: uniform noise scaled by 1/10, fixed for the whole fit.
    z = torch.cat([torch.rand(noise_channels, h, w, dtype=x.dtype,
                              generator=torch.Generator().manual_seed(stream_seed(*key, _INPUT)))
                   for key in streams]).unsqueeze(0).to(dev) / 10
    gens = [torch.Generator(device=dev).manual_seed(stream_seed(*key, _JITTER)) for key in streams]

    def jitter():  # image i's jitter comes from its own generator: (1, N * C, H, W)
        return torch.cat([torch.randn(noise_channels, h, w, generator=g, device=dev, dtype=x.dtype)
                          for g in gens]).unsqueeze(0)

    opt = torch.optim.Adam(net.parameters(), lr=lr)

    images, mses, avg = [], [], None
    early = early_step = reached = None
    if mse_threshold is not None:
        early, early_step = x.clone(), torch.full((n,), steps, dtype=torch.long)
        reached = torch.zeros(n, dtype=torch.bool)
    bar = range(1, steps + 1)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc=f"DIP on {n} images", leave=False)
    with torch.enable_grad():  # the fit needs autograd even when the caller runs under no_grad
        for t in bar:
            # A fresh perturbation of the input at each step regularises the fit.
            z_t = z + input_jitter * jitter() if input_jitter > 0 else z
            out = net(z_t).view_as(x)
            per_image = (out - x).pow(2).flatten(1).mean(1)
            opt.zero_grad(set_to_none=True)
            per_image.sum().backward()  # the sum keeps each network's gradient its own MSE's
            opt.step()

            out = out.detach()
            avg = out if (ema is None or avg is None) else ema * avg + (1 - ema) * out
            mse = (avg - x).pow(2).flatten(1).mean(1)
            if t in record:
                images.append(avg)
                mses.append(mse)
            if mse_threshold is not None:
                new = (mse < mse_threshold).cpu() & ~reached
                if new.any():
                    early[new.to(dev)] = avg[new.to(dev)]
                    early_step[new] = t
                    reached |= new
                if t == steps:
                    early[~reached.to(dev)] = avg[~reached.to(dev)]
            if progress:
                bar.set_postfix(mse=f"{float(mse.mean()):.2e}")
    return DIPResult(record, torch.stack(images), torch.stack(mses).cpu(), early, early_step, reached)


class DIPDefense(nn.Module):
    """The DIP-protected classifier: logits of ``classifier`` on the DIP reconstruction of x.

    x: (N, 3, H, W) in [0, 1]. ``dip_options`` go to :func:`deep_image_prior`; with an
    ``mse_threshold`` the classifier sees each image's early-stopped reconstruction. Image
    i's networks come from its own streams, keyed by its global index and the defense's call
    count (``self.draws``), so successive calls fit fresh networks, chunking a call changes
    nothing, and ``reset()`` scores two inputs with the same networks per image (paired).
    The output carries no gradient to x: attack it through :class:`DIPBPDA`.
    """

    def __init__(self, classifier: nn.Module, steps: int, *, seed: int = 0, **dip_options):
        super().__init__()
        self.classifier = classifier
        self.steps = check_positive_int(steps, "steps")
        dip_options.pop("record_at", None)
        self.dip_options = dip_options
        self.draws = Draws(seed)

    def reset(self) -> None:
        """Start the defense's random streams over, from its first call."""
        self.draws.reset()

    def purify(self, x: torch.Tensor, *, indices=None, call=None, sample=0) -> torch.Tensor:
        """The reconstruction the classifier sees, (N, 3, H, W) in [0, 1], without gradient.
        By default one call of the defense's streams; ``indices`` and ``call`` (both) name
        the streams instead, and ``sample`` adds a key (an EOT copy)."""
        if (indices is None) != (call is None):
            raise ValueError("pass both indices and call, or neither.")
        if indices is None:
            indices, call = self.draws.next(x.shape[0])
        r = deep_image_prior(x.detach(), self.steps, seed=self.draws.seed, indices=indices,
                             call=call, sample=sample, **self.dip_options)
        return r.final if r.early is None else r.early

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purify(x))


class DIPBPDA(nn.Module):
    """BPDA (+EOT) surrogate of a :class:`DIPDefense`, with the model(x) -> logits form.

    Forward: the classifier's logits on the DIP reconstruction (with ``samples`` > 1, the log
    of the mean softmax over that many fits). Every call fits fresh networks (the wrapped
    defense's call count moves on), and each EOT sample has its own, so EOT averages over
    new initialisations at every attack step. Backward: the DIP step's
    Jacobian is replaced by the identity, so the gradient is the classifier's gradient at
    the reconstruction. :class:`rmd_lib.attacks.adaptive.BPDA` only wraps an
    InvertAndClassify (it calls ``project``), so a DIP defense needs this counterpart.
    """

    def __init__(self, defense: DIPDefense, samples: int = 1):
        super().__init__()
        if not isinstance(defense, DIPDefense):
            raise TypeError(f"DIPBPDA wraps a DIPDefense, got {type(defense).__name__}.")
        self.defense = defense
        self.samples = check_positive_int(samples, "samples")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # All EOT samples are one batched fit: x repeated, each copy with its own streams.
        xs = x.repeat(self.samples, 1, 1, 1)
        idx, call = self.defense.draws.next(x.shape[0])
        sample = torch.arange(self.samples).repeat_interleave(x.shape[0])
        x_hat = self.defense.purify(xs, indices=idx.repeat(self.samples), call=call,
                                    sample=sample)
        x_lin = xs + (x_hat - xs).detach()  # value: the reconstruction; gradient: the identity
        log_probs = self.defense.classifier(x_lin).log_softmax(dim=1)
        log_probs = log_probs.view(self.samples, x.shape[0], -1)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.samples)
