"""Memory budgets (rmd_lib.memory): the budget, the bytes one row saves for backward, and
the chunk size they give."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rmd_lib.memory import DEFAULT_CPU_GB, budget_bytes, rows_per_chunk, saved_bytes


def test_cpu_budget_from_the_environment(monkeypatch):
    monkeypatch.delenv("RMD_MEMORY_GB", raising=False)
    assert budget_bytes("cpu") == int(DEFAULT_CPU_GB * 2**30)
    monkeypatch.setenv("RMD_MEMORY_GB", "0.5")
    assert budget_bytes("cpu") == 2**29
    for bad in ("0", "-2", "lots", "nan"):
        monkeypatch.setenv("RMD_MEMORY_GB", bad)
        with pytest.raises(ValueError, match="RMD_MEMORY_GB must be a positive number"):
            budget_bytes("cpu")


def test_saved_bytes_counts_what_backward_keeps():
    lin = nn.Linear(100, 50)
    x = torch.randn(8, 100)
    # Linear saves its input (8 x 100 floats), which the weight's gradient needs (the input
    # needs no gradient, so the weight is not saved); the output is 8 x 50.
    got = saved_bytes(lambda: lin(x))
    assert got == 4 * (8 * 100 + 8 * 50)
    # twice the rows, twice the bytes
    assert saved_bytes(lambda: lin(torch.randn(16, 100))) - got == 4 * (8 * 100 + 8 * 50)
    with torch.no_grad():  # the count switches autograd on, as the measured step does
        assert saved_bytes(lambda: lin(x)) == got


def test_rows_per_chunk_and_its_error():
    assert rows_per_chunk(100, 1000, "f") == 10
    assert rows_per_chunk(1000, 1000, "f") == 1
    with pytest.raises(ValueError, match=r"deep_image_prior: one row needs about 2 MiB but the memory budget is 1 MiB"):
        rows_per_chunk(2 * 2**20, 2**20, "deep_image_prior")


def test_saved_bytes_through_functorch_transforms(tiny_generator, tiny_net):
    # The tangent BPDA differentiates G with vmap(jacfwd(...)); tensors saved inside such
    # transforms have no plain storage, and the count must not fail on them.
    from torch.func import jacfwd, vmap

    z = torch.randn(3, tiny_generator.latent_dim, requires_grad=True)
    assert saved_bytes(lambda: vmap(jacfwd(lambda zi: tiny_generator(zi[None]).flatten()))(z)) > 0
    from rmd_lib.attacks import BPDA, pgd
    from rmd_lib.projection import InvertAndClassify
    inc = InvertAndClassify(tiny_generator, tiny_net, seed=0, steps=3, restarts=1)
    x = torch.rand(2, 1, 6, 6)
    out = pgd(BPDA(inc, backward="tangent"), x, torch.tensor([0, 1]), 0.1, steps=1)
    assert out.shape == x.shape


def test_saved_bytes_leaves_out_the_weights_of_excluded_modules():
    lin = nn.Linear(100, 50)
    x = torch.randn(8, 100, requires_grad=True)
    # With x needing a gradient, Linear also saves its weight (50 x 100), which is in memory
    # once whatever the rows: excluded, one row's cost is the input and output alone.
    with_weight = saved_bytes(lambda: lin(x))
    assert with_weight == 4 * (8 * 100 + 8 * 50 + 50 * 100)
    assert saved_bytes(lambda: lin(x), exclude=lin) == 4 * (8 * 100 + 8 * 50)
    assert saved_bytes(lambda: lin(x), exclude=[nn.Linear(1, 1), lin]) == 4 * (8 * 100 + 8 * 50)
