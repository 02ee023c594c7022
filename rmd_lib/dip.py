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
from .models.dip import DIPNet
from .training import seeded

__all__ = ["DIPResult", "deep_image_prior", "DIPDefense", "DIPBPDA", "image_seeds"]


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


def image_seeds(seed: int, n: int) -> list[int]:
    """Image i of a batch uses seed + i, so a single fit with seed + i reproduces it."""
    return [seed + i for i in range(n)]


def _streams(seed: int) -> tuple[int, int]:
    # Two independent seeds from one: the network's initialisation and its noise input
    # must not share a stream, or z would repeat the first layer's weights.
    a, b = np.random.SeedSequence(seed).generate_state(2)
    return int(a), int(b)


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
                     seed: int = 0, progress: bool = False) -> DIPResult:
    """Fit one DIP network per image of x (N, 3, H, W) in [0, 1] for ``steps`` Adam steps.

    H and W must be multiples of 2**depth. ``record_at`` lists the step counts to keep
    (default: only ``steps``). The image recorded at step t is the output that step t fits:
    that of the network after t - 1 updates, on the jittered noise input (Ulyanov et al.'s
    convention), or its exponential average with weight ``ema`` (e.g. 0.99) when given.
    ``mse_threshold`` also keeps each image's first reconstruction with an MSE below it.
    Image i's initialisation and noise depend only on seed + i. Runs on x's device.
    """
    steps, record = _check_options(x, steps, record_at, depth, ema, lr, input_jitter)
    check_positive_int(noise_channels, "noise_channels")
    n, _, h, w = x.shape
    dev, x = x.device, x.detach()
    seeds = [_streams(s) for s in image_seeds(seed, n)]

    nets = []
    for init_seed, _ in seeds:
        with seeded(init_seed):  # leave the caller's random state (GPUs' too) alone
            nets.append(DIPNet(noise_channels, 3, width, skip, depth))
    net = DIPNet.stack(nets).to(dev, x.dtype)
    gens = [torch.Generator(device=dev).manual_seed(noise_seed) for _, noise_seed in seeds]

    def noise(sample):  # image i's noise comes from its own generator: (1, N * C, H, W)
        return torch.cat([sample(noise_channels, h, w, generator=g, device=dev, dtype=x.dtype)
                          for g in gens]).unsqueeze(0)

    # Ulyanov et al.'s input: uniform noise scaled by 1/10, fixed for the whole fit.
    z = noise(torch.rand) / 10
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
            z_t = z + input_jitter * noise(torch.randn) if input_jitter > 0 else z
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
    ``mse_threshold`` the classifier sees each image's early-stopped reconstruction. The
    output carries no gradient to x: attack it through :class:`DIPBPDA`.
    """

    def __init__(self, classifier: nn.Module, steps: int, **dip_options):
        super().__init__()
        self.classifier = classifier
        self.steps = check_positive_int(steps, "steps")
        dip_options.pop("record_at", None)
        self.dip_options = dip_options

    def purify(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """The reconstruction the classifier sees, (N, 3, H, W) in [0, 1], without gradient."""
        opts = dict(self.dip_options)
        if seed is not None:
            opts["seed"] = seed
        r = deep_image_prior(x.detach(), self.steps, **opts)
        return r.final if r.early is None else r.early

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purify(x))


class DIPBPDA(nn.Module):
    """BPDA (+EOT) surrogate of a :class:`DIPDefense`, with the model(x) -> logits form.

    Forward: the classifier's logits on the DIP reconstruction (with ``samples`` > 1, the log
    of the mean softmax over that many fits with different seeds). Backward: the DIP step's
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
        # All EOT samples are one batched fit: x repeated, and since image i of a batch uses
        # seed + i, every copy gets its own initialisation and noise.
        xs = x.repeat(self.samples, 1, 1, 1)
        x_hat = self.defense.purify(xs)
        x_lin = xs + (x_hat - xs).detach()  # value: the reconstruction; gradient: the identity
        log_probs = self.defense.classifier(x_lin).log_softmax(dim=1)
        log_probs = log_probs.view(self.samples, x.shape[0], -1)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.samples)
