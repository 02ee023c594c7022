"""Per-image random streams: every random draw about image i depends on the seed, on i's
global index and on how many times the defense or attack has been called, and on nothing
else. Not on the batch the image sits in, the chunk, the device or the process.

That is what lets an evaluation be chunked to fit memory, or sharded over processes, and
still give the numbers of one unchunked run. Each stream is a small CPU generator, seeded
from (seed, index, call, ...) by a 64-bit mix; the draws are made on the CPU and moved to
the device, so a CUDA run starts from the same random numbers as a CPU run.

A randomised module (invert-and-classify, the Deep Image Prior defense, the attacks built on
them) owns a :class:`Draws`: where its next call's images start in the global numbering,
and how many calls it has made. :func:`chunked` runs a function over chunks of images so
that each chunk sees the indices and call numbers it would have seen in one whole call.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["stream_seed", "stream", "per_image", "Draws", "randomised", "chunked", "as_indices"]

_MASK = (1 << 64) - 1


def _mix(h: int) -> int:
    # SplitMix64's finaliser: every input bit flips about half of the output bits.
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK
    return h ^ (h >> 31)


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by ``seed`` and the integer ``keys`` (image index,
    call count, sample...): distinct keys give unrelated streams."""
    h = _mix((int(seed) + 0x9E3779B97F4A7C15) & _MASK)
    for k in keys:
        h = _mix((h ^ (int(k) & _MASK)) + 0x9E3779B97F4A7C15 & _MASK)
    return h >> 1  # torch's manual_seed takes values below 2**63 without complaint


def stream(seed: int, *keys: int) -> torch.Generator:
    """The CPU generator of one stream (see :func:`stream_seed`)."""
    return torch.Generator().manual_seed(stream_seed(seed, *keys))


def as_indices(indices, n: int) -> torch.Tensor:
    """Global image indices as a (n,) int64 CPU tensor; None means 0..n-1."""
    if indices is None:
        return torch.arange(n)
    idx = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
    if idx.numel() != n:
        raise ValueError(f"indices must give one global index per image ({n}), got {idx.numel()}.")
    if n and int(idx.min()) < 0:
        raise ValueError("indices must be >= 0.")
    return idx


def per_image(draw: Callable[[torch.Generator], torch.Tensor], seed: int, indices,
              *keys) -> torch.Tensor:
    """Stack ``draw(g)`` over images, g the stream of (seed, index, *keys): (N, ...) on the CPU.

    ``indices`` (N,) are the images' global indices. Each key is an int (the same for every
    image) or an (N,) tensor (one per image), e.g. the call count, or an EOT sample.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).flatten()
    cols = [k.flatten().tolist() if isinstance(k, torch.Tensor) else [int(k)] * len(idx)
            for k in keys]
    if any(len(c) != len(idx) for c in cols):
        raise ValueError("each per-image key must have one value per image.")
    rows = [draw(stream(seed, i, *(c[j] for c in cols))) for j, i in enumerate(idx.tolist())]
    if not rows:
        raise ValueError("per_image needs at least one image.")
    return torch.stack(rows)


@dataclass
class Draws:
    """The position of a randomised module in its random streams.

    ``offset``: the global index of the first image of the next call; ``call``: the number
    of the next call. Each call takes images ``offset, offset + 1, ...`` and one call
    number, so successive calls on the same images draw afresh. :meth:`reset` goes back to
    the start, so that two evaluations can be scored on the same draws (paired).
    """

    seed: int
    offset: int = 0
    call: int = 0
    pinned: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def indices(self, n: int) -> torch.Tensor:
        """The global indices (n,) of a call on n images: ``offset, offset + 1, ...``, or
        the indices pinned by :meth:`pin`."""
        if self.pinned is None:
            return torch.arange(self.offset, self.offset + n)
        if len(self.pinned) != n:
            raise ValueError(f"the draws are pinned to {len(self.pinned)} images, but the call "
                             f"has {n}; pass the images the indices were pinned for.")
        return self.pinned

    def next(self, n: int) -> tuple[torch.Tensor, int]:
        """Indices (n,) and the call number for a call on n images; advances the call count."""
        idx = self.indices(n)
        call, self.call = self.call, self.call + 1
        return idx, call

    @contextmanager
    def pin(self, indices: torch.Tensor, call: int) -> Iterator[None]:
        """Calls made inside take these global indices (any subset of the images, in any
        order) and start counting from call number ``call``; afterwards the indices are
        unpinned. An attack that queries a changing subset of its images (a random search
        dropping the images it has fooled) uses this so that each image's draws follow its
        own index and the query number, not its place among the images still running."""
        previous = self.pinned
        self.pinned = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
        self.call = int(call)
        try:
            yield
        finally:
            self.pinned = previous

    def reset(self) -> None:
        self.offset, self.call = 0, 0


def randomised(model) -> list[Draws]:
    """The :class:`Draws` of every randomised part of ``model`` (itself and its submodules)."""
    parts = model.modules() if isinstance(model, nn.Module) else [model]
    found, seen = [], set()
    for m in parts:
        d = getattr(m, "draws", None)
        if isinstance(d, Draws) and id(d) not in seen:
            seen.add(id(d))
            found.append(d)
    return found


def chunked(model, n: int, chunk: int, fn: Callable[[slice], object]) -> list:
    """Run ``fn(rows)`` for consecutive slices of ``n`` images, ``chunk`` at a time, so that
    the randomised parts of ``model`` give each chunk the global indices and call numbers
    that one call on all n images would have given: every chunk starts from the same call
    count, its images keep their global indices, and afterwards the counts stand where
    that one call would have left them. Returns the list of ``fn``'s results."""
    draws = randomised(model)
    entry = [(d.offset, d.call) for d in draws]
    out, ends = [], [d.call for d in draws]
    for start in range(0, n, chunk):
        for d, (offset, call) in zip(draws, entry):
            d.offset, d.call = offset + start, call
        out.append(fn(slice(start, min(n, start + chunk))))
        ends = [d.call for d in draws]
    for d, (offset, _), end in zip(draws, entry, ends):
        d.offset, d.call = offset, end
    return out
