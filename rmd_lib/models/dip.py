"""The Deep Image Prior network (Ulyanov et al. 2018): an encoder-decoder with skip connections.

At each of ``depth`` scales the encoder halves the resolution with a strided convolution and a
narrow skip branch keeps a few channels at that resolution; the decoder upsamples bilinearly,
concatenates the skip and convolves. The paper's "skip" architecture for denoising and
inpainting uses 5 scales, 128 channels down and up and 4-channel skips; a CPU profile shrinks
``width`` and ``depth``.

``copies`` > 1 holds that many independent networks in one module, as grouped convolutions:
copy k owns the k-th block of channels of every layer, and every other operation (BatchNorm
on a batch of one, LeakyReLU, padding, upsampling, sums) acts channel by channel, so the copies
never mix. :meth:`DIPNet.stack` builds it from single networks, so each copy keeps its own
initialisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DIPNet"]


class _Pointwise(nn.Conv2d):
    """A grouped 1x1 convolution computed as a batched matrix product (same weights as Conv2d).

    On the CPU, oneDNN's grouped 1x1 convolutions run up to 1.5x slower than one
    convolution per group; a batched matmul does not.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        k = self.groups
        y = self.weight.view(k, self.out_channels // k, -1) @ x.reshape(b, k, -1, h * w)
        y = y.view(b, self.out_channels, h, w)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def _block(c_in: int, c_out: int, kernel: int, copies: int, stride: int = 1) -> nn.Sequential:
    # Reflection padding avoids the dark borders that zero padding makes the network learn.
    # No bias before BatchNorm: it would cancel in exact arithmetic, and Adam's normalisation
    # turns its round-off gradient into full-size steps, so float32 fits of the same image
    # would drift apart between a batched fit and a single one.
    # BatchNorm never tracks running statistics: a DIP network only runs in fitting mode, on
    # one image, so the statistics are always that image's.
    conv = _Pointwise if kernel == 1 else nn.Conv2d
    return nn.Sequential(
        nn.ReflectionPad2d(kernel // 2),
        conv(copies * c_in, copies * c_out, kernel, stride=stride, groups=copies, bias=False),
        nn.BatchNorm2d(copies * c_out, track_running_stats=False),
        nn.LeakyReLU(0.2),
    )


class _Up(nn.Module):
    """One decoder scale: BatchNorm, 3x3 convolution of [skip, upsampled], BatchNorm, LeakyReLU, 1x1 block."""

    def __init__(self, skip: int, width: int, copies: int):
        super().__init__()
        k = copies
        self.norm_s = nn.BatchNorm2d(k * skip, track_running_stats=False)
        self.norm_h = nn.BatchNorm2d(k * width, track_running_stats=False)
        self.pad = nn.ReflectionPad2d(1)
        self.conv_s = nn.Conv2d(k * skip, k * width, 3, groups=k, bias=False)
        self.conv_h = nn.Conv2d(k * width, k * width, 3, groups=k, bias=False)
        self.post = nn.Sequential(nn.BatchNorm2d(k * width, track_running_stats=False),
                                  nn.LeakyReLU(0.2), _block(width, width, 1, k))

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # Ulyanov et al. normalise and convolve the concatenation [s, h]. BatchNorm acts per
        # channel and a convolution of a concatenation is the sum of two convolutions, so this
        # is the same map; split, it avoids odd channel counts (4 + 128) that make grouped
        # convolutions on the CPU about 1.5x slower, and it never interleaves the copies.
        return self.post(self.conv_s(self.pad(self.norm_s(s))) + self.conv_h(self.pad(self.norm_h(h))))


class DIPNet(nn.Module):
    """Map noise z (B, copies * in_channels, H, W) to images (B, copies * out_channels, H, W) in [0, 1].

    H and W must be multiples of ``2**depth`` and at least ``2**(depth + 1)``, so the deepest
    scale is at least 2x2. With ``copies`` > 1, use B = 1: BatchNorm's statistics are then
    those of each copy's own image.
    """

    def __init__(self, in_channels: int = 32, out_channels: int = 3, width: int = 128,
                 skip: int = 4, depth: int = 5, copies: int = 1):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("width", width), ("skip", skip), ("depth", depth), ("copies", copies)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DIPNet's {name} must be an integer >= 1, got {v!r}.")
        self.config = dict(in_channels=in_channels, out_channels=out_channels, width=width,
                           skip=skip, depth=depth)
        self.copies, self.depth = copies, depth
        self.skips, self.down, self.up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c, k = in_channels, copies
        for _ in range(depth):
            self.skips.append(_block(c, skip, 1, k))
            self.down.append(nn.Sequential(_block(c, width, 3, k, stride=2), _block(width, width, 3, k)))
            self.up.append(_Up(skip, width, k))
            c = width
        self.out = _Pointwise(k * width, k * out_channels, 1, groups=k)

    @classmethod
    def stack(cls, nets: list["DIPNet"]) -> "DIPNet":
        """One module holding copies of the single networks ``nets``, with their weights."""
        if not nets or any(n.copies != 1 or n.config != nets[0].config for n in nets):
            raise ValueError("DIPNet.stack needs single networks (copies=1) of one configuration.")
        with torch.device("meta"):  # no initialisation: every weight comes from nets
            stacked = cls(**nets[0].config, copies=len(nets))
        states = [n.state_dict() for n in nets]
        # Grouped convolutions and BatchNorm keep copy k's channels in the k-th block along
        # dim 0, so concatenating the single networks' tensors gives the stacked ones.
        stacked.load_state_dict({key: torch.cat([s[key] for s in states]) for key in states[0]},
                                assign=True)
        return stacked

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        skips, h = [], z
        for skip, down in zip(self.skips, self.down):
            skips.append(skip(h))
            h = down(h)
        # The decoder runs from the deepest scale up; up[i] serves the scale of skips[i].
        for i in reversed(range(self.depth)):
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = self.up[i](skips[i], h)
        return torch.sigmoid(self.out(h))
