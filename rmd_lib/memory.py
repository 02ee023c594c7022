"""Memory budgets: how many rows (images, restarts, pairs) one chunk of a computation may hold.

A function whose memory grows with the number of rows measures what one row costs (the
tensors autograd saves for the backward pass, by :func:`saved_bytes`), and
:func:`rows_per_chunk` turns that into a chunk size under the budget: on CUDA a share of the
device's free memory, on a CPU ``RMD_MEMORY_GB`` gigabytes (default 4). Chunking changes no
result, because each row's randomness comes from its own stream (:mod:`rmd_lib.randomness`).
"""
from __future__ import annotations

import math
import os
import weakref
from typing import Callable

import torch

__all__ = ["budget_bytes", "saved_bytes", "rows_per_chunk", "DEFAULT_CPU_GB", "CUDA_SHARE"]

DEFAULT_CPU_GB = 4.0
# The share of the free CUDA memory one chunk may take: the rest is for the allocator's
# fragmentation, cuDNN's workspaces and what the caller already holds.
CUDA_SHARE = 0.6


def budget_bytes(device) -> int:
    """The memory one chunk may use on ``device``: CUDA_SHARE of the free memory on CUDA,
    ``$RMD_MEMORY_GB`` gigabytes (default 4) elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(CUDA_SHARE * free)
    raw = os.environ.get("RMD_MEMORY_GB")
    if raw is None or not raw.strip():
        return int(DEFAULT_CPU_GB * 2**30)
    try:
        gb = float(raw)
    except ValueError:
        gb = float("nan")
    if not (math.isfinite(gb) and gb > 0):
        raise ValueError(f"RMD_MEMORY_GB must be a positive number of gigabytes, e.g. 8, got {raw!r}.")
    return int(gb * 2**30)


def saved_bytes(fn: Callable[[], object], exclude=()) -> int:
    """Bytes of the tensors that autograd keeps for the backward pass once ``fn()`` has run,
    each storage counted once, plus those of ``fn``'s tensor output.

    A tensor saved by a graph that ``fn`` itself freed on the way (an inner optimisation's
    step, say, such as the projection inside BPDA, which chunks itself) is not counted: it
    is not held when the backward pass runs. The parameters and buffers of the modules in
    ``exclude`` are left out too: a layer saves its weight for the input's gradient, but the
    weight is in memory anyway, once, whatever the number of rows, so counting it in one
    row's cost would shrink every chunk by it."""
    if isinstance(exclude, torch.nn.Module):
        exclude = (exclude,)
    weights = {(t.untyped_storage().data_ptr(), t.device) for m in exclude
               if isinstance(m, torch.nn.Module) for t in (*m.parameters(), *m.buffers())}
    saved = []

    def pack(t: torch.Tensor):
        saved.append(weakref.ref(t))
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    alive = [t for t in (r() for r in saved) if t is not None]
    if isinstance(out, torch.Tensor):
        alive.append(out)
    seen, total = set(weights), 0
    for t in alive:
        try:
            storage = t.untyped_storage()
            key, size = (storage.data_ptr(), t.device), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            # a tensor without a plain storage (a functorch wrapper, say): its own size
            key, size = id(t), t.numel() * t.element_size()
        if key not in seen:
            seen.add(key)
            total += size
    return total


def rows_per_chunk(bytes_per_row: float, budget: int, what: str) -> int:
    """How many rows of ``bytes_per_row`` fit in ``budget`` bytes (at least one), or a clear
    error naming ``what`` when not even one row fits."""
    if bytes_per_row > budget:
        raise ValueError(
            f"{what}: one row needs about {bytes_per_row / 2**20:.0f} MiB but the memory budget "
            f"is {budget / 2**20:.0f} MiB; free memory on the device, raise RMD_MEMORY_GB "
            "(on a CPU), or use a smaller model or image size."
        )
    return max(1, int(budget // max(bytes_per_row, 1)))
