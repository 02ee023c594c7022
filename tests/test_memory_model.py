"""The memory model, checked on the CPU at the `colab` and `paper` sizes.

For each function whose memory grows with images x restarts x steps, this test measures
what one more row costs: the bytes of the tensors autograd saves and still holds at the end
of the forward pass (counted with ``torch.autograd.graph.saved_tensors_hooks``, every saved
tensor at its full size, so shared storages count twice: an upper bound) for a computation
on one row and on two, with
the real architectures at the profile's widths and resolutions (random weights: memory does
not depend on their values). It then asks the library which chunk it would pick on the GPU
the profile is for, with the GPU's budget set through RMD_MEMORY_GB, and checks that

    chunk x 2 x (saved bytes per row) + the fixed part + parameters + the data

stays under 12 GiB (colab: a 15 GiB T4) and 70 GiB (paper: an 80 GiB card). The factor 2
counts the backward pass's temporaries, at most the size of what was saved. The library
measures differently (three times one row's bytes, each storage once; a chain of k steps
from one step and two), so a wrong measurement or extrapolation there fails here.
"""
from __future__ import annotations

import math
import weakref

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rmd_lib.attacks import BPDA
from rmd_lib.attacks.first_order import pgd_chunk
from rmd_lib.attacks.latent import latent_attack_chunk
from rmd_lib.attacks.minmax import divergence, minmax_chunk
from rmd_lib.attacks.unrolled import _unroll, unrolled_chunk
from rmd_lib.dip import dip_chunk
from rmd_lib.evaluation import predict_chunk
from rmd_lib.memory import CUDA_SHARE
from rmd_lib.models import BEGANGenerator, MnistClassifier
from rmd_lib.models.dip import DIPNet
from rmd_lib.models.gan import WGANGenerator
from rmd_lib.models.vae import VAEDecoder
from rmd_lib.profiles import PROFILES
from rmd_lib.projection import InvertAndClassify, projection_chunk

GiB = 2**30
# The GPU each profile is for (its memory, GiB) and the peak the profile may reach there.
GPUS = {"colab": (15.0, 12.0), "paper": (80.0, 70.0)}


def saved(fn) -> int:
    """Bytes of every tensor autograd saved while fn() ran and still holds when it ends
    (what the backward pass needs; an inner loop's steps, such as the projection inside
    BPDA, are freed on the way and bounded by that loop's own chunk), each at its full
    size, except the models' own weights (resident anyway, counted as parameters)."""
    kept = []

    def pack(t):
        kept.append(weakref.ref(t))
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()  # held until the count: its graph is what a backward pass would use
    total = 0
    for t in (r() for r in kept):
        if t is None:
            continue
        try:
            is_weight = t.untyped_storage().data_ptr() in WEIGHTS
        except (RuntimeError, NotImplementedError):  # a functorch wrapper: never a weight
            is_weight = False
        if not is_weight:
            total += t.numel() * t.element_size()
    del out
    return total


WEIGHTS: set[int] = set()


def weights(*modules):
    """Mark the modules' parameters and buffers as weights for :func:`saved`."""
    WEIGHTS.update(t.untyped_storage().data_ptr() for m in modules
                   for t in (*m.parameters(), *m.buffers()))
    return modules


def per_row(fn) -> tuple[int, int]:
    """(bytes per row, fixed bytes) from fn(1) and fn(2) (fn(k) runs the computation on k
    rows)."""
    one, two = saved(lambda: fn(1)), saved(lambda: fn(2))
    return max(two - one, 1), max(2 * one - two, 0)


def nbytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """x's first row repeated n times without memory: the library sees N images."""
    return x[:1].expand(n, *x.shape[1:])


@pytest.fixture(params=["colab", "paper"])
def sized(request, monkeypatch):
    """The profile and the GPU budget the library would see on its card."""
    gpu_gib, limit_gib = GPUS[request.param]
    # addresses of weights freed by an earlier test may now hold activations
    WEIGHTS.clear()
    monkeypatch.setenv("RMD_MEMORY_GB", str(CUDA_SHARE * gpu_gib))
    torch.manual_seed(0)
    return PROFILES[request.param], limit_gib * GiB


def check(name, chunk, n, row, fixed, params, data, limit, temporaries=None):
    """The peak of ``chunk`` rows: what they save, the backward pass's temporaries (by
    default as much again), the fixed part, the parameters and the data."""
    assert 1 <= chunk <= n
    temporaries = row if temporaries is None else temporaries
    peak = chunk * (row + temporaries) + fixed + params + data
    text = (f"{name}: chunk {chunk} of {n} x {(row + temporaries) / 2**20:.2f} MiB + "
            f"{(fixed + params + data) / GiB:.2f} GiB = {peak / GiB:.2f} GiB")
    print(text)  # shown with pytest -s: the model's numbers
    assert peak <= limit, text
    return peak


def mnist_models(P, generator):
    G = VAEDecoder() if generator == "vae" else WGANGenerator(width=P.gan_width)
    return weights(G.eval(), MnistClassifier().eval())


def face_models(P):
    G = BEGANGenerator(latent_dim=64, width=P.began_width, resolution=P.began_resolution)
    C = MnistClassifier(num_classes=2, in_channels=3, image_size=P.began_resolution)
    return weights(G.eval(), C.eval())


@pytest.mark.parametrize("case", ["vae", "gan", "began"])
def test_projection(sized, case):
    # chapters 2-5 (INC's projection of every test image) and 8 (the BEGAN's, and its sweep)
    P, limit = sized
    if case == "began":
        G, _ = face_models(P)
        restarts, n = P.face_proj[1], P.n_faces
    else:
        G, _ = mnist_models(P, case)
        restarts, n = P.proj_restarts, P.n_test
    x = G(G.sample_latent(1)).detach()

    def step(k):
        z = G.sample_latent(k * restarts).requires_grad_(True)
        return (G(z) - x).pow(2).flatten(1).mean(1).sum()
    row, fixed = per_row(step)
    chunk = projection_chunk(G, rows(x, n), restarts)
    check(f"project {case}", chunk, n, row, fixed, nbytes(G), n * x[0].nbytes, limit)


@pytest.mark.parametrize("case", ["vae", "began"])
def test_minmax_pairs(sized, case):
    # chapter 6 (pairs on MNIST) and chapter 8 (pairs on faces)
    P, limit = sized
    G, C = face_models(P) if case == "began" else mnist_models(P, "vae")
    n = P.n_faces if case == "began" else P.minmax_n

    def step(k):
        a = G.sample_latent(k).requires_grad_(True)
        b = G.sample_latent(k).requires_grad_(True)
        xa, xb = G(a), G(b)
        return divergence(C(xa), C(xb), "sym_kl").sum() + (xa - xb).norm()
    row, fixed = per_row(step)
    z = G.sample_latent(1)
    chunk = minmax_chunk(G, C, rows(z, n), rows(z, n))
    check(f"minmax_pairs {case}", chunk, n, row, fixed, nbytes(G, C), 0, limit)


@pytest.mark.parametrize("case,backward", [("vae", "identity"), ("gan", "tangent")])
def test_pgd_on_bpda_with_eot(sized, case, backward):
    # chapter 5: PGD through BPDA (identity or tangent) with EOT, on the attack's projection
    P, limit = sized
    G, C = mnist_models(P, case)
    samples, restarts, n = P.eot_samples, P.attack_proj[1], P.n_adaptive
    # two projection steps: the memory of a step does not depend on how many there are
    inc = InvertAndClassify(G, C, seed=0, steps=2, restarts=restarts)
    model = BPDA(inc, samples, backward=backward)
    x = G(G.sample_latent(2)).detach()
    y = torch.zeros(2, dtype=torch.long)

    def step(k):
        xk = x[:k].clone().requires_grad_(True)
        return F.cross_entropy(model(xk), y[:k])
    row, fixed = per_row(step)
    chunk = pgd_chunk(model, rows(x, n), rows(y[:, None], n)[:, 0], "pgd")
    check(f"pgd on BPDA {backward} {case}", chunk, n, row, fixed, nbytes(G, C),
          n * x[0].nbytes, limit)


def test_latent_space_attack(sized):
    P, limit = sized
    G, C = mnist_models(P, "vae")
    n = P.n_adaptive
    inc = InvertAndClassify(G, C, seed=0, steps=2, restarts=1)

    def step(k):
        z = G.sample_latent(k).requires_grad_(True)
        x_g = G(z)
        return (C(x_g).logsumexp(1) + (x_g - x_g.detach()).flatten(1).norm(dim=1)).sum()
    row, fixed = per_row(step)
    z = G.sample_latent(1)
    x = G(z).detach()
    chunk = latent_attack_chunk(inc, rows(x, n), torch.zeros(n, dtype=torch.long),
                                rows(z, n), 3.0)
    check("latent_space_attack", chunk, n, row, fixed, nbytes(G, C), n * x[0].nbytes, limit)


def test_unrolled_projection(sized):
    # chapter 3: PGD through the k-step unrolled projection, k the profile's largest; the
    # test differentiates the whole chain of k steps (not an extrapolation)
    P, limit = sized
    G, C = mnist_models(P, "vae")
    k, restarts, n = max(P.unroll_steps), P.unroll_restarts, P.n_adaptive
    x = G(G.sample_latent(2)).detach()
    z = G.sample_latent(2 * restarts)

    def chain(m):
        xm = x[:m].clone().requires_grad_(True)
        out = _unroll(G, xm, z[:m * restarts], k, restarts, 0.1, (0.9, 0.999))
        return C(out).sum()
    row, fixed = per_row(chain)
    # The backward pass through a chain frees each step's tensors as it passes them: its
    # temporaries are those of a step or two, not of the whole chain.
    step_row, _ = per_row(lambda m: _unroll(G, x[:m].clone().requires_grad_(True),
                                            z[:m * restarts], 1, restarts, 0.1,
                                            (0.9, 0.999)))
    chunk = unrolled_chunk(G, rows(x, n).requires_grad_(True), k, restarts)
    peak = check(f"unrolled k={k}", chunk, n, row, fixed, nbytes(G, C), n * x[0].nbytes,
                 limit, temporaries=4 * step_row)
    if P.name == "paper":
        # without chunks the paper's k = 1,000 over 1,000 images would not fit: the check
        # above is one that a missing chunk fails
        assert n * 2 * row > limit and peak < limit


def test_dip_fit(sized):
    # chapter 9: one network per image at 224x224; the BPDA+EOT fits samples x images
    P, limit = sized
    n = P.n_dip * max(P.dip_eot, 1)
    size = P.dip_size
    options = (32, P.dip_width, 4, P.dip_depth)

    def fit_step(k):
        net = DIPNet(32, 3, P.dip_width, 4, P.dip_depth, copies=k)
        out = net(torch.rand(1, 32 * k, size, size))
        return out.pow(2).mean()
    row, fixed = per_row(fit_step)
    params = nbytes(DIPNet(32, 3, P.dip_width, 4, P.dip_depth))
    x = torch.rand(1, 3, size, size)
    chunk = dip_chunk(rows(x, n), options)
    # each image's network: weights, gradients and Adam's two moments
    check(f"deep_image_prior width {P.dip_width}", chunk, n, row + 2 * params, fixed,
          0, n * x[0].nbytes, limit)


@pytest.mark.parametrize("case", ["mnist", "faces"])
def test_predict(sized, case):
    # accuracy() of the classifier or of INC over every test image (INC's projection
    # chunks itself, tested above; predict measures the classifier that scores it)
    P, limit = sized
    if case == "faces":
        G, C = face_models(P)
        n = P.n_faces
    else:
        G, C = mnist_models(P, "vae")
        n = P.n_test
    x = G(G.sample_latent(2)).detach()
    row, fixed = per_row(lambda k: C(x[:k].clone().requires_grad_(True)))
    inc = InvertAndClassify(G, C, seed=0, steps=2, restarts=P.proj_restarts)
    for model in (C, inc):
        chunk = predict_chunk(model, rows(x, n))
        check(f"predict {case}", chunk, n, row, fixed, nbytes(G, C), n * x[0].nbytes, limit)
    assert inc.draws.call == 0  # the probe ran no projection


def test_sizes_that_cannot_fit_are_refused(monkeypatch):
    # The budget check is real: a chain of a million unrolled steps per image, or a DIP
    # network at a budget of a few megabytes, is refused with the function's name.
    monkeypatch.setenv("RMD_MEMORY_GB", str(CUDA_SHARE * 15))
    G = VAEDecoder().eval()
    x = G(G.sample_latent(1)).detach().requires_grad_(True)
    with pytest.raises(ValueError, match=r"unrolled_project \(1000000 steps, 4 restarts per "
                                         r"image\): one row needs about \d+ MiB"):
        unrolled_chunk(G, x, 10**6, 4)
    monkeypatch.setenv("RMD_MEMORY_GB", "0.01")
    with pytest.raises(ValueError, match="deep_image_prior .*one row needs"):
        dip_chunk(torch.rand(1, 3, 224, 224), (32, 128, 4, 5))
    # and a chunk the budget allows is far below the images when memory is short
    monkeypatch.setenv("RMD_MEMORY_GB", "1")
    assert projection_chunk(G, rows(x.detach(), 10**6), 10) < 10**6
