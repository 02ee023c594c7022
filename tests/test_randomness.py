"""Per-image random streams: every randomised result is the same whatever the batch size,
the chunk, the shard's offset or the device (rmd_lib.randomness and its users)."""
from __future__ import annotations

import pytest
import torch

from rmd_lib.attacks import BPDA, minmax_pairs, pgd
from rmd_lib.attacks.first_order import ball_sample
from rmd_lib.attacks.unrolled import UnrolledINC
from rmd_lib.evaluation import predict
from rmd_lib.projection import InvertAndClassify, project
from rmd_lib.randomness import Draws, chunked, per_image, randomised, stream, stream_seed

N = 11


@pytest.fixture
def images(tiny_generator):
    """N images near the range of the tiny generator."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        x = tiny_generator(torch.randn(N, tiny_generator.latent_dim, generator=g))
    return (x + 0.05 * torch.rand(x.shape, generator=g)).clamp(0, 1)


def same(a, b):
    # The random draws are identical; the arithmetic is equal up to float rounding, because
    # the CPU's BLAS may pick another kernel (another summation order) for another batch
    # shape, e.g. a matrix-vector product for a single row.
    return torch.allclose(a, b, atol=1e-5, rtol=0)


def near(a, b):
    # The min-max search steps with Adam, whose first steps are about lr * sign(gradient): a
    # gradient component near zero whose sign another summation order flips moves that
    # coordinate by a whole step, and later steps carry it. In float32 the pairs of two batch
    # shapes then differ by up to about 2e-4 (measured: 1.9e-4 at batch size 1 against 12);
    # in float64 the same comparison gives 4e-15 (test ..._exactly_in_double below).
    return torch.allclose(a, b, atol=2e-3, rtol=0)


def test_streams_are_distinct_and_reproducible():
    seeds = {stream_seed(0, i, c, s) for i in range(20) for c in range(5) for s in range(3)}
    assert len(seeds) == 300 and all(0 <= v < 2**63 for v in seeds)
    assert stream_seed(0, 1, 0) != stream_seed(0, 0, 1) != stream_seed(1, 0, 0)
    assert torch.equal(torch.rand(3, generator=stream(7, 2, 1)), torch.rand(3, generator=stream(7, 2, 1)))
    rows = per_image(lambda g: torch.rand(2, generator=g), 7, torch.tensor([4, 2]), 1)
    assert torch.equal(rows[1], torch.rand(2, generator=stream(7, 2, 1)))
    with pytest.raises(ValueError, match="one value per image"):
        per_image(lambda g: torch.rand(1, generator=g), 0, torch.arange(3), torch.arange(2))


@pytest.mark.parametrize("batch_size", [1, 7, N])
def test_projection_does_not_depend_on_the_batch(tiny_generator, images, batch_size):
    whole = project(tiny_generator, images, steps=30, restarts=3, seed=2)
    part = project(tiny_generator, images, steps=30, restarts=3, seed=2, batch_size=batch_size)
    assert same(whole.z, part.z) and same(whole.restart_mse, part.restart_mse)


def test_a_shard_at_offset_k_is_rows_k_on_of_the_whole(tiny_generator, images):
    whole = project(tiny_generator, images, steps=30, restarts=3, seed=2)
    k = 4
    shard = project(tiny_generator, images[k:], steps=30, restarts=3, seed=2,
                    indices=torch.arange(k, N))
    assert same(shard.z, whole.z[k:]) and same(shard.mse, whole.mse[k:])
    # without the indices the shard would draw the first images' restarts
    wrong = project(tiny_generator, images[k:], steps=30, restarts=3, seed=2)
    assert not same(wrong.z, whole.z[k:])


def test_inc_predictions_do_not_depend_on_the_batch_and_calls_draw_afresh(
        tiny_generator, tiny_net, images):
    C = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    runs = {}
    for bs in (1, 7, N):
        inc = InvertAndClassify(tiny_generator, C, seed=3, steps=20, restarts=2)
        first, second = predict(inc, images, batch_size=bs), predict(inc, images, batch_size=bs)
        assert inc.draws.call == 2 and inc.draws.offset == 0
        runs[bs] = (first, second)
    for bs in (1, 7):
        assert same(runs[bs][0], runs[N][0]) and same(runs[bs][1], runs[N][1])
    assert not same(runs[N][0], runs[N][1])  # the second call drew other restarts
    inc = InvertAndClassify(tiny_generator, C, seed=3, steps=20, restarts=2)
    predict(inc, images)
    inc.reset()  # the same draws again: two evaluations scored on the same restarts
    assert same(predict(inc, images), runs[N][0])


def test_unrolled_inc_scores_every_image_with_its_own_starts(tiny_generator, images):
    C = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    model = UnrolledINC(tiny_generator, C, steps=5, restarts=2, seed=1)
    whole = predict(model, images, batch_size=N)
    assert torch.allclose(predict(model, images, batch_size=4), whole, atol=1e-6, rtol=0)
    # rows 4.. of the whole equal the unrolled model run on them with their own indices
    model.draws.offset = 4
    assert torch.allclose(model(images[4:]).detach(), whole[4:], atol=1e-6, rtol=0)


def test_bpda_eot_chunked_equals_whole(tiny_generator, images):
    C = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    y = torch.arange(N) % 3

    def attack(batch):
        inc = InvertAndClassify(tiny_generator, C, seed=0, steps=10, restarts=2)
        model = BPDA(inc, samples=3)
        parts = chunked(model, N, batch, lambda rows: pgd(
            model, images[rows], y[rows], 0.1, steps=3, seed=4,
            indices=torch.arange(rows.start, rows.stop)))
        return torch.cat(parts), inc.draws.call

    (whole, calls), (parts, calls_parts) = attack(N), attack(4)
    assert torch.allclose(whole, parts, atol=1e-6, rtol=0)
    assert calls == calls_parts == 3  # one forward per PGD step


def test_pgd_random_start_per_image(tiny_net, tiny_batch):
    x, y = tiny_batch
    whole = pgd(tiny_net, x, y, 0.1, steps=1, alpha=0.0, seed=9)  # alpha 0: the start itself
    shard = pgd(tiny_net, x[3:], y[3:], 0.1, steps=1, alpha=0.0, seed=9,
                indices=torch.arange(3, len(x)))
    assert same(shard, whole[3:])


def test_l2_random_start_is_uniform_in_the_ball():
    g = torch.Generator().manual_seed(0)
    D = 8
    radii = torch.stack([ball_sample((D,), "l2", g).norm() for _ in range(4000)])
    assert float(radii.max()) <= 1.0 + 1e-6
    # P(radius <= r) = r^D for a uniform point of the D-ball; the cube sample pushed onto the
    # ball had radius 1 almost always.
    for r in (0.7, 0.9):
        assert abs(float((radii <= r).float().mean()) - r ** D) < 0.03
    cube = ball_sample((D,), "linf", g)
    assert float(cube.abs().max()) <= 1.0


def test_minmax_pairs_do_not_depend_on_how_many_run_together(tiny_generator, tiny_net):
    whole = minmax_pairs(tiny_generator, tiny_net, 1.0, 12, steps=15, seed=6, early_stop=False)
    shard = minmax_pairs(tiny_generator, tiny_net, 1.0, 5, steps=15, seed=6, early_stop=False,
                         indices=torch.arange(7, 12))
    assert near(shard.z1, whole.z1[7:]) and near(shard.z2, whole.z2[7:])


def test_chunked_restores_the_counts_of_one_call(tiny_generator):
    inc = InvertAndClassify(tiny_generator, torch.nn.Flatten(), seed=0, steps=2, restarts=1)
    model = BPDA(inc)
    assert randomised(model) == [inc.draws]
    seen = []
    chunked(model, 10, 4, lambda rows: seen.append((inc.draws.next(rows.stop - rows.start))))
    assert [int(i[0]) for i, _ in seen] == [0, 4, 8] and {c for _, c in seen} == {0}
    assert inc.draws == Draws(0, 0, 1)


def test_pinned_draws_name_any_subset_and_are_released():
    d = Draws(3, offset=10, call=5)
    with d.pin(torch.tensor([12, 17]), call=40):
        idx, call = d.next(2)
        assert idx.tolist() == [12, 17] and call == 40 and d.call == 41
        with pytest.raises(ValueError, match="pinned to 2 images"):
            d.next(3)
    assert d.pinned is None and d.next(2)[0].tolist() == [10, 11]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_projection_on_cuda_matches_the_cpu(tiny_generator, images):
    cpu = project(tiny_generator, images, steps=30, restarts=3, seed=2)
    G = tiny_generator.to("cuda")
    gpu = project(G, images.cuda(), steps=30, restarts=3, seed=2)
    assert torch.allclose(gpu.mse.cpu(), cpu.mse, atol=1e-5)
    assert torch.allclose(gpu.z.cpu(), cpu.z, atol=1e-3)


def test_projection_chunked_by_the_memory_budget_equals_one_chunk(tiny_generator, images,
                                                                  monkeypatch):
    from rmd_lib.memory import saved_bytes
    monkeypatch.setenv("RMD_MEMORY_GB", "1000")
    whole = project(tiny_generator, images, steps=30, restarts=3, seed=2)
    # a budget of about three images' rows forces several chunks
    z = torch.zeros(1, tiny_generator.latent_dim, requires_grad=True)
    row = 3 * saved_bytes(lambda: (tiny_generator(z) - images[:1]).pow(2).mean())
    monkeypatch.setenv("RMD_MEMORY_GB", str(3.5 * 3 * row / 2**30))
    chunked_run = project(tiny_generator, images, steps=30, restarts=3, seed=2)
    assert same(chunked_run.z, whole.z) and same(chunked_run.mse, whole.mse)
    monkeypatch.setenv("RMD_MEMORY_GB", str(0.1 * row / 2**30))
    with pytest.raises(ValueError, match="project .*one row needs"):
        project(tiny_generator, images, steps=3, restarts=3, seed=2)


@pytest.mark.parametrize("early_stop", [True, False])
def test_minmax_pairs_in_chunks_equal_one_batch(tiny_generator, tiny_net, early_stop):
    whole = minmax_pairs(tiny_generator, tiny_net, 1.0, 12, steps=15, seed=6, early_stop=early_stop)
    part = minmax_pairs(tiny_generator, tiny_net, 1.0, 12, steps=15, seed=6, early_stop=early_stop,
                        batch_size=5)
    for field in ("z1", "z2", "distance", "divergence"):
        assert near(getattr(part, field), getattr(whole, field)), field
    assert torch.equal(part.steps, whole.steps) and torch.equal(part.success, whole.success)


def test_minmax_pairs_in_chunks_equal_one_batch_exactly_in_double(tiny_generator, tiny_net):
    # In float64 the rounding that Adam amplifies is gone: chunks and shards give the whole
    # batch's pairs to 1e-10, so the draws and the search really are per pair.
    G, C = tiny_generator.double(), tiny_net.double()
    torch.set_default_dtype(torch.float64)
    try:
        whole = minmax_pairs(G, C, 1.0, 12, steps=15, seed=6, early_stop=False)
        part = minmax_pairs(G, C, 1.0, 12, steps=15, seed=6, early_stop=False, batch_size=1)
        shard = minmax_pairs(G, C, 1.0, 5, steps=15, seed=6, early_stop=False,
                             indices=torch.arange(7, 12))
    finally:
        torch.set_default_dtype(torch.float32)
    assert whole.z1.dtype == torch.float64
    for field in ("z1", "z2", "distance", "divergence"):
        assert torch.allclose(getattr(part, field), getattr(whole, field), atol=1e-10, rtol=0)
        assert torch.allclose(getattr(shard, field), getattr(whole, field)[7:], atol=1e-10, rtol=0)


def test_pgd_on_bpda_in_chunks_equals_one_batch(tiny_generator, images, monkeypatch):
    C = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    y = torch.arange(N) % 3

    def attack(**kw):
        inc = InvertAndClassify(tiny_generator, C, seed=0, steps=10, restarts=2)
        out = pgd(BPDA(inc, samples=2), images, y, 0.1, steps=3, seed=4, **kw)
        return out, inc.draws.call

    monkeypatch.setenv("RMD_MEMORY_GB", "1000")
    (whole, calls), (part, calls_part) = attack(), attack(batch_size=3)
    assert same(whole, part) and calls == calls_part == 3  # the budget's probe left no trace
