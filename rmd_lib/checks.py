"""Input checks shared by the library: bad input gets an error that names the problem and the fix."""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

__all__ = ["check_images", "check_labels", "check_eps", "check_positive_int", "model_device"]


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
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}], got [{int(y.min())}, {int(y.max())}].")
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


def check_positive_int(value, name: str) -> int:
    """A count such as steps or restarts: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value
