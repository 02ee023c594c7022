"""The explorers: their cached models compute the right things, their widgets redraw when a
slider moves, their static figures have the expected layout, and bad arguments fail clearly."""
from __future__ import annotations

import ipywidgets as W
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rmd_lib.attacks import divergence, minmax_pairs  # noqa: E402
from rmd_course.explorers import (AttackSweep, LatentGrid, PairPaths, attack_explorer,  # noqa: E402
                               attack_explorer_figure, attack_sweep, latent_grid, latent_walk,
                               latent_walk_figure, pair_explorer, pair_explorer_figure,
                               pair_paths)
from rmd_lib.projection import InvertAndClassify, latent_path, project  # noqa: E402

EPS = (0.0, 0.05, 0.1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def inc(tiny_generator, tiny_net):
    return InvertAndClassify(tiny_generator, tiny_net, seed=0, steps=6, restarts=2)


@pytest.fixture
def sweep(inc, tiny_batch):
    x, y = tiny_batch
    return attack_sweep(inc, x[:4], y[:4], EPS, attack="fgsm", seed=3)


# ----------------------------------------------------------------------------------------
# attack explorer
# ----------------------------------------------------------------------------------------

def test_sweep_shapes_and_clean_budget(sweep, tiny_batch):
    x = tiny_batch[0][:4]
    assert isinstance(sweep, AttackSweep)
    assert sweep.x_adv.shape == sweep.x_proj.shape == (3, 4, 1, 6, 6)
    assert sweep.clf_probs.shape == sweep.inc_probs.shape == (3, 4, 3)
    assert torch.equal(sweep.x_adv[0], x), "eps = 0 must show the clean image itself"


@pytest.mark.parametrize("attack", ["fgsm", "bim", "pgd"])
def test_perturbation_stays_within_the_sliders_eps(inc, tiny_batch, attack):
    x, y = tiny_batch
    sw = attack_sweep(inc, x, y, (0.1, 0.0, 0.03), attack=attack, steps=3)
    assert sw.eps.tolist() == pytest.approx([0.0, 0.03, 0.1]), "budgets are sorted"
    linf = (sw.x_adv - x).abs().flatten(2).max(dim=2).values  # (E, N)
    assert (linf <= sw.eps[:, None] + 1e-6).all()
    # The attack really ran at each budget: some pixel moved by (almost) the full eps.
    assert (linf.max(dim=1).values >= 0.9 * sw.eps).all()
    for e in range(len(sw.eps)):
        assert sw.state(e, 1)["linf"] <= sw.state(e, 1)["eps"] + 1e-6


def test_cached_projection_equals_a_direct_projection(sweep, inc, tiny_net):
    flat = sweep.x_adv.flatten(0, 1)
    direct = project(inc.G, flat, seed=3, **inc.projection)
    assert torch.allclose(sweep.x_proj.flatten(0, 1), direct.x_hat, atol=1e-6)
    assert torch.allclose(sweep.z.flatten(0, 1), direct.z, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(sweep.inc_probs.flatten(0, 1), tiny_net(direct.x_hat).softmax(1), atol=1e-6)
        assert torch.allclose(sweep.clf_probs.flatten(0, 1), tiny_net(flat).softmax(1), atol=1e-6)


def test_sweep_leaves_incs_random_stream_alone(inc, tiny_batch):
    x, y = tiny_batch
    before = (inc.draws.offset, inc.draws.call)
    attack_sweep(inc, x[:2], y[:2], EPS)
    assert (inc.draws.offset, inc.draws.call) == before


def test_sweep_state_reports_labels_and_confidences(sweep):
    s = sweep.state(2, 1)
    probs = sweep.clf_probs[2, 1]
    assert s["eps"] == pytest.approx(0.1)
    assert s["classifier"] == (int(probs.argmax()), str(int(probs.argmax())), pytest.approx(float(probs.max())))
    assert s["inc"][0] == int(sweep.inc_probs[2, 1].argmax())
    assert torch.equal(s["x_proj"], sweep.x_proj[2, 1])
    assert s["true"] == str(int(sweep.y[1]))


def test_attack_explorer_slider_changes_what_is_shown(sweep):
    ui = attack_explorer(sweep, title="tiny")
    assert isinstance(ui, W.Widget)
    view = ui.explorer
    assert view.state["eps"] == 0.0 and view.state["image"] == 0
    png0, text0 = bytes(view.image.value), view.text.value
    assert png0.startswith(b"\x89PNG")
    view.controls["eps_index"].value = 2  # the observer redraws
    assert view.state["eps"] == pytest.approx(0.1)
    assert torch.equal(view.state["x_adv"], sweep.x_adv[2, 0])
    assert bytes(view.image.value) != png0 and view.text.value != text0
    view.controls["image"].value = 3
    state = view.update()  # the callback, called directly, agrees with the observer
    assert state["image"] == 3 and torch.equal(state["x_proj"], sweep.x_proj[2, 3])


def test_explorer_displays_without_a_frontend(sweep):
    # What papermill's kernel does with the widget: ask for its display data.
    bundle = attack_explorer(sweep)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("VBox(")


def test_attack_explorer_figure_layout(sweep):
    fig = attack_explorer_figure(sweep, images=2)
    assert len(fig.axes) == 2 * 2 * len(EPS)
    fig = attack_explorer_figure(sweep, images=[3])
    assert len(fig.axes) == 2 * len(EPS)


def test_attack_sweep_rejects_bad_arguments(inc, tiny_batch, tiny_net):
    x, y = tiny_batch
    with pytest.raises(TypeError, match="InvertAndClassify"):
        attack_sweep(tiny_net, x, y)
    with pytest.raises(ValueError, match="attack must be one of"):
        attack_sweep(inc, x, y, attack="cw")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        attack_sweep(inc, x, y, (0.0, -0.1))
    with pytest.raises(TypeError, match="list of budgets"):
        attack_sweep(inc, x, y, 0.1)
    with pytest.raises(ValueError, match="eps is empty"):
        attack_sweep(inc, x, y, ())
    with pytest.raises(ValueError, match="shape \\(8,\\)"):
        attack_sweep(inc, x, y[:3])
    with pytest.raises(ValueError, match="y must lie in \\[0, 2\\]"):
        attack_sweep(inc, x, y + 5)
    with pytest.raises(ValueError, match="max_images"):
        attack_sweep(inc, x, y, EPS, max_images=10)
    with pytest.raises(TypeError, match="AttackSweep"):
        attack_explorer(x)
    sweep = attack_sweep(inc, x[:2], y[:2], EPS)
    with pytest.raises(IndexError, match="out of range"):
        sweep.state(0, 5)
    with pytest.raises(ValueError, match="images=3"):
        attack_explorer_figure(sweep, images=3)
    with pytest.raises(ValueError, match="classes has 2 names"):
        attack_sweep(inc, x[:2], y[:2], EPS, classes=["a", "b"])


# ----------------------------------------------------------------------------------------
# latent walk
# ----------------------------------------------------------------------------------------

def test_walk_images_are_g_of_the_sliders_latent(tiny_generator, tiny_net):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, generator=g)
    grid = latent_grid(tiny_generator, tiny_net, origin=z[0],
                       directions=torch.stack([z[1] - z[0], z[2] - z[0]]), span=(-0.5, 1.5), n=9)
    assert isinstance(grid, LatentGrid)
    assert grid.images.shape == (9, 9, 1, 6, 6) and grid.probs.shape == (9, 9, 3)
    # coords -0.5, -0.25, 0, ..., 1.5: (0, 0), (1, 0) and (0, 1) are the three latents.
    assert torch.allclose(grid.z(2, 2), z[0], atol=1e-6)
    assert torch.allclose(grid.z(6, 2), z[1], atol=1e-6)
    assert torch.allclose(grid.z(2, 6), z[2], atol=1e-6)
    with torch.no_grad():
        for i, j in [(0, 0), (2, 6), (8, 3)]:
            zij = grid.z(i, j)
            assert torch.allclose(grid.images[i, j], tiny_generator(zij[None])[0], atol=1e-6)
            assert torch.allclose(grid.probs[i, j], tiny_net(grid.images[i, j][None]).softmax(1)[0],
                                  atol=1e-6)


def test_walk_over_a_2d_latent_uses_its_coordinates(make_generator, tiny_net):
    G = make_generator(latent_dim=2)
    grid = latent_grid(G, tiny_net, span=(-1, 1), n=5)
    assert torch.allclose(grid.z(0, 4), torch.tensor([-1.0, 1.0]))
    assert torch.allclose(grid.z(3, 1), torch.tensor([0.5, -0.5]))


def test_latent_walk_slider_changes_what_is_shown(tiny_generator, tiny_net):
    grid = latent_grid(tiny_generator, tiny_net, n=7)
    ui = latent_walk(grid)
    assert isinstance(ui, W.Widget)
    view = ui.explorer
    assert view.state["i"] == view.state["j"] == 3  # starts in the middle: the origin
    png0 = bytes(view.image.value)
    view.controls["i"].value = 6
    assert view.state["a"] == pytest.approx(2.0)
    with torch.no_grad():
        shown = tiny_generator(view.state["z"][None])[0]
    assert torch.allclose(view.state["image"], shown, atol=1e-6)
    assert bytes(view.image.value) != png0
    assert view.state["label"][0] == int(grid.probs[6, 3].argmax())


def test_latent_walk_figure_layout(tiny_generator, tiny_net):
    grid = latent_grid(tiny_generator, tiny_net, n=9)
    fig = latent_walk_figure(grid, n_show=4)
    assert len(fig.axes) == 16
    assert fig.axes[-1].get_xlabel() == "a = 2.00"


def test_latent_grid_rejects_bad_arguments(tiny_generator, tiny_net):
    u = torch.ones(4)
    with pytest.raises(ValueError, match="not parallel"):
        latent_grid(tiny_generator, tiny_net, directions=torch.stack([u, 2 * u]))
    with pytest.raises(ValueError, match="shape \\(2, 4\\)"):
        latent_grid(tiny_generator, tiny_net, directions=torch.ones(3, 4))
    with pytest.raises(ValueError, match="origin must be a latent of shape \\(4,\\)"):
        latent_grid(tiny_generator, tiny_net, origin=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="low < high"):
        latent_grid(tiny_generator, tiny_net, span=(1.0, -1.0))
    with pytest.raises(ValueError, match="2 to 51"):
        latent_grid(tiny_generator, tiny_net, n=1)
    with pytest.raises(TypeError, match="latent_dim"):
        latent_grid(torch.nn.Identity(), tiny_net)
    grid = latent_grid(tiny_generator, tiny_net, n=3)
    with pytest.raises(ValueError, match="n_show=4"):
        latent_walk_figure(grid, n_show=4)
    with pytest.raises(TypeError, match="LatentGrid"):
        latent_walk(None)


# ----------------------------------------------------------------------------------------
# pair explorer
# ----------------------------------------------------------------------------------------

@pytest.fixture
def pairs(tiny_generator, tiny_net):
    # this setting gives both successes and failures (6 and 2), so the ranking is tested
    return minmax_pairs(tiny_generator, tiny_net, eps=2.0, n=8, steps=15, lr=0.2, seed=0)


def test_pair_paths_end_at_the_pairs_images(tiny_generator, tiny_net, pairs):
    paths = pair_paths(tiny_generator, tiny_net, pairs, n_path=5, eps=2.0)
    assert isinstance(paths, PairPaths)
    rows = paths.index
    assert paths.images.shape == (8, 5, 1, 6, 6)
    assert torch.allclose(paths.images[:, 0], pairs.x1[rows], atol=1e-6)
    assert torch.allclose(paths.images[:, -1], pairs.x2[rows], atol=1e-6)
    norms = (paths.images[:, 0] - paths.images[:, -1]).flatten(1).norm(dim=1)
    assert torch.allclose(paths.distance, norms)
    assert torch.allclose(paths.distance, pairs.distance[rows], atol=1e-5)
    assert torch.allclose(paths.divergence, pairs.divergence[rows], atol=1e-5)
    assert torch.equal(paths.different, pairs.different[rows])
    for p in range(len(rows)):  # the batched paths are latent_path's lines
        assert torch.allclose(paths.images[p], latent_path(tiny_generator, paths.z1[p], paths.z2[p], n=5),
                              atol=1e-6)


def test_pair_paths_rank_successes_first_by_divergence(tiny_generator, tiny_net, pairs):
    paths = pair_paths(tiny_generator, tiny_net, pairs, n_path=3)
    success = (pairs.valid & pairs.different)[paths.index]
    assert success.any() and not success.all(), "the fixture should mix successes and failures"
    assert not (~success[:-1] & success[1:]).any(), "a success after a failure"
    for group in (success, ~success):
        div = paths.divergence[group]
        assert (div[:-1] >= div[1:] - 1e-6).all()
    chosen = pair_paths(tiny_generator, tiny_net, pairs, n_path=3, index=[4, 1])
    assert chosen.index.tolist() == [4, 1]
    assert len(pair_paths(tiny_generator, tiny_net, pairs, n_path=3, max_pairs=2).index) == 2


def test_pair_explorer_sliders_change_what_is_shown(tiny_generator, tiny_net, pairs):
    paths = pair_paths(tiny_generator, tiny_net, pairs, n_path=5, eps=2.0)
    ui = pair_explorer(paths)
    assert isinstance(ui, W.Widget)
    view = ui.explorer
    assert view.state["t"] == 0.0 and torch.equal(view.state["x_t"], view.state["x1"])
    png0 = bytes(view.image.value)
    view.controls["step"].value = 4
    assert view.state["t"] == 1.0 and torch.equal(view.state["x_t"], view.state["x2"])
    assert view.state["from_x1"] == pytest.approx(view.state["distance"], abs=1e-5)
    assert bytes(view.image.value) != png0
    view.controls["pair"].value = 2
    s = view.update()
    assert s["pair"] == 2 and s["row"] == int(paths.index[2])
    assert s["distance"] == pytest.approx(float(pairs.distance[paths.index[2]]), abs=1e-5)
    assert s["valid"] == bool(pairs.valid[paths.index[2]])


def test_pair_explorer_figure_layout(tiny_generator, tiny_net, pairs):
    paths = pair_paths(tiny_generator, tiny_net, pairs, n_path=4)
    assert len(pair_explorer_figure(paths, n_pairs=3).axes) == 3 * 4
    assert len(pair_explorer_figure(paths).axes) == 4 * 4


def test_pair_paths_rejects_bad_arguments(tiny_generator, tiny_net, make_generator, pairs):
    with pytest.raises(TypeError, match="MinMaxPairs"):
        pair_paths(tiny_generator, tiny_net, pairs.z1)
    with pytest.raises(ValueError, match="n_path=1"):
        pair_paths(tiny_generator, tiny_net, pairs, n_path=1)
    with pytest.raises(ValueError, match="latents but G takes 2"):
        pair_paths(make_generator(latent_dim=2), tiny_net, pairs)
    with pytest.raises(IndexError, match="index=9"):
        pair_paths(tiny_generator, tiny_net, pairs, index=[0, 9])
    with pytest.raises(ValueError, match="kind must be"):
        pair_paths(tiny_generator, tiny_net, pairs, kind="kl")
    with pytest.raises(TypeError, match="PairPaths"):
        pair_explorer(pairs)


def test_pair_paths_divergence_kind(tiny_generator, tiny_net, pairs):
    paths = pair_paths(tiny_generator, tiny_net, pairs, n_path=3, kind="ce")
    with torch.no_grad():
        want = divergence(tiny_net(pairs.x1[paths.index]), tiny_net(pairs.x2[paths.index]), "ce")
    assert torch.allclose(paths.divergence, want, atol=1e-5)
