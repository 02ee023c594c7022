"""Input checks shared by the library: bad input gets an error that names the problem and the fix."""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

__all__ = ["check_images", "check_labels", "check_eps", "check_positive_int", "check_in_range",
           "check_positive", "check_betas", "count_classes", "model_device"]


def model_device(model: nn.Module) -> torch.device | None:
    """The device of a module's first parameter or buffer (None for a parameter-free module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def check_images(x, name: str = "x", *, ndim: int | None = 4, device=None) -> torch.Tensor:
    """Check a batch of images in [0, 1]: a floating tensor, of shape (N, C, H, W), finite.

    ``device`` (a module or a device) must match when given.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of images in [0, 1], got {type(x).__name__}; "
            "convert with torch.as_tensor(arr, dtype=torch.float32)."
        )
    if not x.is_floating_point():
        hint = " (uint8 pixels? divide by 255)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}{hint}.")
    if ndim is not None and x.ndim != ndim:
        want = "(N, C, H, W)" if ndim == 4 else f"{ndim} dimensions"
        fix = " Add the batch dimension with x.unsqueeze(0)." if x.ndim == ndim - 1 else ""
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}.{fix}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}).")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; check what produced it.")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
            "undo any normalisation (the models normalise inside) or divide by 255."
        )
    if device is not None:
        want_dev = model_device(device) if isinstance(device, nn.Module) else torch.device(device)
        if want_dev is not None and x.device != want_dev:
            raise ValueError(
                f"{name} is on {x.device} but the model is on {want_dev}; "
                f"move it with {name}.to({str(want_dev)!r})."
            )
    return x


def check_labels(y, n: int, name: str = "y", num_classes: int | None = None) -> torch.Tensor:
    """Check integer class labels of shape (n,)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}.")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}; use .long().")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {tuple(y.shape)}.")
    if num_classes is not None and n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = sorted(set(y[(y < 0) | (y >= num_classes)].tolist()))
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise ValueError(
            f"{name} must lie in [0, {num_classes - 1}] (the model has {num_classes} classes), got "
            f"{shown} (all of {name} in [{int(y.min())}, {int(y.max())}]); pass the labels of the "
            "dataset this model was trained on."
        )
    return y.long()


def check_eps(eps, name: str = "eps") -> float:
    """An attack budget: a finite number >= 0."""
    if isinstance(eps, torch.Tensor) and eps.numel() == 1:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a number, got {eps!r}.")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}.")
    return value


def check_positive_int(value, name: str, hint: str = "") -> int:
    """A count such as steps or restarts: an integer >= 1. ``hint`` (the fix) ends the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}."
                         + (f" {hint}" if hint else ""))
    return value


def check_in_range(value, name: str, low: float, high: float, *, low_open: bool = False,
                   high_open: bool = False, hint: str = ""):
    """A finite real number between ``low`` and ``high`` (each end closed unless ``*_open``).

    A one-element tensor counts as its number. Returns ``value`` itself, unconverted, so a
    check never changes what the caller computes with. ``hint`` (the fix) ends the message.
    """
    number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}." + (f" {hint}" if hint else ""))
    number = float(number)
    if math.isinf(high):
        where = f"{'>' if low_open else '>='} {low:g}"
    else:
        where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    inside = ((number > low if low_open else number >= low)
              and (number < high if high_open else number <= high))
    if not (math.isfinite(number) and inside):
        raise ValueError(f"{name} must be a finite number {where}, got {value!r}."
                         + (f" {hint}" if hint else ""))
    return value


def check_positive(value, name: str, hint: str = ""):
    """A finite real number > 0, such as a step size; returned unchanged."""
    return check_in_range(value, name, 0.0, math.inf, low_open=True, hint=hint)


def check_betas(betas, name: str = "betas"):
    """Adam's two moment decays (beta1, beta2), each in [0, 1); returned unchanged."""
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"{name} must be Adam's two moment decays (beta1, beta2), got {betas!r}; "
                         "the default is (0.9, 0.999).")
    for i, beta in enumerate(betas):
        check_in_range(beta, f"{name}[{i}]", 0.0, 1.0, high_open=True,
                       hint="Adam's moment decays lie in [0, 1); the default is (0.9, 0.999).")
    return betas


def count_classes(model, x: torch.Tensor) -> int | None:
    """The number of classes ``model`` scores: the width K of its logits on x[:1].

    One forward pass on one image, without gradient, that leaves everything as it was: the
    modules run in eval mode (no batch-norm statistics move, no dropout) and get their own
    modes back, and the global random state is restored. A projection defense
    (InvertAndClassify, or BPDA around one) is probed through its classifier, whose logits
    it returns, so no projection runs and the defense's random stream is not drawn from;
    so are the unrolled projection and the Deep Image Prior defense (and BPDA around it).
    None when the output is not a (1, K) batch of logits.
    """
    # imported here: those modules import this one
    from .attacks.adaptive import BPDA
    from .attacks.unrolled import UnrolledINC
    from .dip import DIPBPDA, DIPDefense
    from .projection import InvertAndClassify

    if isinstance(model, BPDA):
        model = model.inc
    if isinstance(model, DIPBPDA):
        model = model.defense
    if isinstance(model, (InvertAndClassify, UnrolledINC, DIPDefense)):
        model = model.classifier
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    modes = [m.training for m in modules]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        for m in modules:
            m.training = False
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            out = model(x[:1])
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 1:
        return int(out.shape[1])
    return None
