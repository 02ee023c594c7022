"""Chunked equals unchunked: every function whose memory grows with images (times restarts,
steps or samples) gives the same result in 1 chunk, 2 chunks and one chunk per image. In
float64 to 1e-12 (the per-image random streams make the draws identical; what is left is
the rounding of another batch shape), in float32 to 1e-6. A memory budget below one row is
a clear error that names the function, the row's size and the budget."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import LinearGenerator, make_tiny_net
from rmd_lib.attack_tables import correct
from rmd_lib.attacks import BPDA, latent_space_attack, minmax_pairs, pgd
from rmd_lib.attacks.latent import latent_attack_chunk
from rmd_lib.attacks.unrolled import UnrolledINC, unrolled_chunk, unrolled_project
from rmd_lib.dip import DIPBPDA, DIPDefense, deep_image_prior
from rmd_lib.evaluation import accuracy, confidence, predict, predict_chunk
from rmd_lib.models import BEGANGenerator
from rmd_lib.projection import InvertAndClassify, project

N = 5
CHUNKS = (N, math.ceil(N / 2), 1)  # batch sizes giving 1, 2 and N chunks
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}
# Searches driven by Adam (the min-max pairs, the DIP fit) amplify float32 rounding: Adam
# divides by sqrt(v), so a rounding-level change in a gradient component near zero can move
# that coordinate by a good part of a step, and later steps carry it. In float64 they meet
# the 1e-12 above; in float32 their images must agree to half an 8-bit grey level, below
# anything a result reads.
ADAM_TOL = {torch.float64: 1e-12, torch.float32: 0.5 / 255}
DIP_TINY = dict(width=8, depth=2, skip=2, noise_channels=4)


@pytest.fixture(autouse=True)
def large_budget(monkeypatch):
    # The unchunked reference runs in one chunk whatever the machine's default budget.
    monkeypatch.setenv("RMD_MEMORY_GB", "1000")


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request):
    torch.set_default_dtype(request.param)
    try:
        yield request.param
    finally:
        torch.set_default_dtype(torch.float32)


def close(a, b, dtype, tol=TOL):
    assert a.shape == b.shape
    assert float((a - b).detach().abs().max()) <= tol[dtype]


def models(dtype):
    G = LinearGenerator().to(dtype)
    C = make_tiny_net().to(dtype)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        x = G(torch.randn(N, G.latent_dim, generator=g, dtype=dtype))
    x = (x + 0.05 * torch.rand(x.shape, generator=g, dtype=dtype)).clamp(0, 1)
    return G, C, x, torch.arange(N) % 3


def each_chunking(run, dtype, tol=TOL):
    """run(batch_size) for None (the budget's pick: one chunk here) and every entry of
    CHUNKS; every result equal to the first."""
    results = [run(b) for b in (None, *CHUNKS)]
    for r in results[1:]:
        close(r, results[0], dtype, tol)
    return results


def test_project_and_inc(dtype):
    G, C, x, y = models(dtype)
    runs = each_chunking(lambda b: project(G, x, steps=20, restarts=3, seed=1,
                                           batch_size=b).z, dtype)
    assert runs[0].dtype == dtype

    def inc_logits(b):
        inc = InvertAndClassify(G, C, seed=2, steps=20, restarts=3, batch_size=b)
        return inc(x)
    each_chunking(inc_logits, dtype)


def test_began_projection_and_sweep(dtype):
    # the faces chapter: INC's projection on the BEGAN and the sweep with every restart
    # kept and the curve recorded
    torch.manual_seed(0)
    G = BEGANGenerator(latent_dim=8, width=4, resolution=8, channels=3).to(dtype).eval()
    x = torch.rand(N, 3, 8, 8)
    each_chunking(lambda b: project(G, x, steps=6, restarts=2, seed=0, batch_size=b).mse,
                  dtype)
    sweeps = [project(G, x, steps=6, restarts=2, seed=0, record_at=(2, 6), prune=(),
                      early_stop=False, batch_size=b) for b in CHUNKS]
    for s in sweeps[1:]:
        for t in (2, 6):
            close(s.history[t], sweeps[0].history[t], dtype)
        assert s.curve(2) == pytest.approx(sweeps[0].curve(2), abs=TOL[dtype], rel=0)


@pytest.mark.parametrize("backward,samples", [("identity", 1), ("tangent", 1),
                                              ("identity", 3)])
def test_pgd_on_bpda_and_eot(dtype, backward, samples):
    G, C, x, y = models(dtype)

    def attack(b):
        inc = InvertAndClassify(G, C, seed=0, steps=8, restarts=2)
        out = pgd(BPDA(inc, samples=samples, backward=backward), x, y, 0.1, steps=2, seed=4,
                  batch_size=b)
        assert inc.draws.call == 2  # one call per PGD step, whatever the chunks
        return out
    each_chunking(attack, dtype)


def test_latent_space_attack(dtype):
    G, C, x, y = models(dtype)

    def attack(b):
        inc = InvertAndClassify(G, C, seed=0, steps=8, restarts=2)
        return latent_space_attack(inc, x, y, 0.5, steps=6, batch_size=b)
    each_chunking(attack, dtype)


def test_unrolled_projection_values_and_gradients(dtype):
    G, C, x, y = models(dtype)
    each_chunking(lambda b: unrolled_project(G, x, 5, 2, seed=3, batch_size=b), dtype)

    def gradient(b):
        xr = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(
            UnrolledINC(G, C, steps=5, restarts=2, seed=3, batch_size=b)(xr), y)
        return torch.autograd.grad(loss, xr)[0]
    grads = each_chunking(gradient, dtype)
    assert float(grads[0].abs().max()) > 0  # the chain carries a gradient through the chunks
    each_chunking(lambda b: pgd(UnrolledINC(G, C, steps=3, restarts=2, batch_size=b), x, y,
                                0.1, steps=2, seed=1), dtype)


def test_minmax_pairs(dtype):
    G, C, _, _ = models(dtype)
    each_chunking(lambda b: minmax_pairs(G, C, 1.0, N, steps=8, seed=6, early_stop=False,
                                         batch_size=b).x2, dtype, ADAM_TOL)


def test_dip_fit_defense_and_bpda(dtype):
    g = torch.Generator().manual_seed(0)
    x = nn.functional.interpolate(torch.rand(N, 3, 4, 4, generator=g), size=8,
                                  mode="bilinear")
    each_chunking(lambda b: deep_image_prior(x, 3, seed=2, batch_size=b, **DIP_TINY).final,
                  dtype, ADAM_TOL)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 3)).to(dtype)
    y = torch.arange(N) % 3

    def defended(b):
        return DIPDefense(clf, 3, seed=1, batch_size=b, **DIP_TINY)(x)
    each_chunking(defended, dtype, ADAM_TOL)

    def bpda(b):  # the DIP fit chunks under PGD's chunks: both are varied
        defense = DIPDefense(clf, 2, seed=1, batch_size=b, **DIP_TINY)
        return pgd(DIPBPDA(defense, samples=2), x, y, 4 / 255, steps=2, seed=0, batch_size=b)
    each_chunking(bpda, dtype, ADAM_TOL)


def test_predict_accuracy_confidence_correct(dtype):
    G, C, x, y = models(dtype)
    each_chunking(lambda b: predict(C, x, b), dtype)

    def scores(b):
        inc = InvertAndClassify(G, C, seed=0, steps=8, restarts=2)
        out = [predict(inc, x, b), confidence(inc, x, y, b), correct(inc, x, y, b).to(dtype),
               torch.tensor(accuracy(inc, x, y, b), dtype=dtype)]
        assert inc.draws.call == 4  # each scoring is one call, whatever the chunks
        return torch.cat([o.flatten() for o in out])
    each_chunking(scores, dtype)


def test_the_budget_picks_several_chunks_with_the_same_results(monkeypatch):
    G, C, x, y = models(torch.float32)
    inc = InvertAndClassify(G, C, seed=0, steps=8, restarts=2)
    whole = latent_space_attack(inc, x, y, 0.5, steps=6)
    z0 = inc.project(x).z
    one = latent_attack_chunk(inc, x[:1], y[:1], z0[:1], 0.5)  # capped at one image: 1
    assert one == 1
    # a budget of about two images' steps: the attack runs in chunks of two, as the
    # helper says, and gives the same examples
    per_image = 1000 * 2**30 / latent_attack_chunk(inc, x[:1].expand(10**9, -1, -1, -1),
                                                    y[:1].expand(10**9), z0, 0.5)
    monkeypatch.setenv("RMD_MEMORY_GB", str(2.5 * per_image / 2**30))
    assert latent_attack_chunk(inc, x, y, z0, 0.5) == 2
    inc.reset()
    close(latent_space_attack(inc, x, y, 0.5, steps=6), whole, torch.float32)
    # the unrolled chain: a budget of two images' chains gives two per chunk, with the same
    # gradient as one chunk
    xr = x.clone().requires_grad_(True)
    monkeypatch.setenv("RMD_MEMORY_GB", "1000")
    big = unrolled_chunk(G, xr[:1].expand(10**9, -1, -1, -1), 5, 2)
    monkeypatch.setenv("RMD_MEMORY_GB", str(2.5 * 1000 / big))
    assert unrolled_chunk(G, xr, 5, 2) == 2

    def grad():
        out = unrolled_project(G, xr, 5, 2, seed=3)
        return torch.autograd.grad(out.sum(), xr)[0]
    chunked_grad = grad()
    monkeypatch.setenv("RMD_MEMORY_GB", "1000")
    close(chunked_grad, grad(), torch.float32)


@pytest.mark.parametrize("name", ["predict", "latent_space_attack", "unrolled_project",
                                  "project", "minmax_pairs", "pgd", "deep_image_prior"])
def test_a_budget_below_one_row_is_a_clear_error(monkeypatch, name):
    G, C, x, y = models(torch.float32)
    inc = InvertAndClassify(G, C, seed=0, steps=2, restarts=2)
    calls = {
        "predict": lambda: predict(C, x),
        "latent_space_attack": lambda: latent_space_attack(inc, x, y, 0.5, steps=2,
                                                           z0=torch.zeros(N, G.latent_dim)),
        "unrolled_project": lambda: unrolled_project(G, x.requires_grad_(True), 3),
        "project": lambda: project(G, x, steps=2, restarts=2),
        "minmax_pairs": lambda: minmax_pairs(G, C, 1.0, N, steps=2),
        "pgd": lambda: pgd(C, x, y, 0.1, steps=1),
        "deep_image_prior": lambda: deep_image_prior(torch.rand(2, 3, 8, 8), 2, **DIP_TINY),
    }
    monkeypatch.setenv("RMD_MEMORY_GB", "1e-9")  # about one byte
    with pytest.raises(ValueError, match=rf"^{name} .*one row needs about \d+ MiB but the "
                                         r"memory budget is 0 MiB; .*raise RMD_MEMORY_GB"):
        calls[name]()


@pytest.mark.parametrize("bad", ["0", "-1", "eight", "inf"])
def test_a_bad_memory_setting_is_a_clear_error(monkeypatch, bad):
    G, C, x, y = models(torch.float32)
    monkeypatch.setenv("RMD_MEMORY_GB", bad)
    for call in (lambda: predict(C, x), lambda: unrolled_project(G, x, 2),
                 lambda: predict_chunk(C, x)):
        with pytest.raises(ValueError, match="RMD_MEMORY_GB must be a positive number"):
            call()
    assert predict(C, x, batch_size=2).shape == (N, 3)  # an explicit batch needs no budget
