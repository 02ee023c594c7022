"""Square Attack: it breaks a defense that masks gradients where PGD cannot; the eps-ball,
exact query counts, batch invariance, and a cross-check against torchattacks' Square."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from rmd_lib.attacks import input_gradient, pgd, square_attack, square_attack_with_stats
from rmd_lib.attacks.square import margin_loss, p_schedule
from rmd_lib.projection import InvertAndClassify
from rmd_lib.randomness import chunked

from conftest import make_tiny_net

NORMS = ("linf", "l2")
EPS = {"linf": 0.1, "l2": 0.5}


def dist(a, b, norm):
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class Quantised(nn.Module):
    """x -> classifier(round(4 x) / 4): round's derivative is 0, so the input gradient is 0."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class NoGrad(nn.Module):
    """A classifier run under torch.no_grad: its output carries no gradient at all."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        with torch.no_grad():
            return self.net(x)


class Recorder(nn.Module):
    """Passes images to ``net`` and keeps every batch it was asked about."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x):
        self.calls.append(x.detach().clone())
        return self.net(x)


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 1.0)])
@pytest.mark.parametrize("masking", ["quantised", "no_grad"])
def test_square_breaks_gradient_masking_that_stops_pgd(masking, norm, eps):
    net = make_tiny_net(3, (1, 8, 8), seed=1)
    defense = Quantised(net) if masking == "quantised" else NoGrad(net)
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = defense(x).argmax(1)  # labelled as the defense sees them: clean accuracy 100%
    if masking == "quantised":
        # The gradient is exactly zero, so PGD (without a random start, which alone could
        # cross a rounding step) never moves, and the accuracy stays at 100%.
        assert float(input_gradient(defense, x, y).abs().max()) == 0.0
        x_pgd = pgd(defense, x, y, eps, norm=norm, steps=20, random_start=False)
        assert torch.equal(x_pgd, x) and accuracy(defense, x_pgd, y) == 1.0
    else:
        with pytest.raises(TypeError, match="no gradient"):
            pgd(defense, x, y, eps, norm=norm, steps=20)
    x_adv = square_attack(defense, x, y, eps, norm=norm, queries=100)
    assert (dist(x_adv, x, norm) <= eps + 1e-6).all()
    assert accuracy(defense, x_adv, y) <= 0.5  # measured: 3% (L-inf) and 25% (L2) quantised


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", NORMS)
def test_output_in_eps_ball_and_unit_interval(norm, dtype, tiny_net):
    g = torch.Generator().manual_seed(1)
    # Uniform pixels, and a quarter of them exactly 0 or 1, so clipping is exercised.
    x = torch.rand(16, 1, 6, 6, generator=g)
    edge = torch.rand(x.shape, generator=g)
    x = torch.where(edge < 0.125, 0.0, torch.where(edge > 0.875, 1.0, x)).to(dtype)
    tiny_net.to(dtype)
    with torch.no_grad():
        y = tiny_net(x).argmax(1)
    x_adv = square_attack(tiny_net, x, y, EPS[norm], norm=norm, queries=50)
    assert x_adv.shape == x.shape and x_adv.dtype == dtype and not x_adv.requires_grad
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert (dist(x_adv, x, norm) <= EPS[norm] + 1e-6).all()
    assert (dist(x_adv, x, norm) > 0.5 * EPS[norm]).all()  # it does use the budget


@pytest.mark.parametrize("norm", NORMS)
def test_query_counts_are_exact(norm, tiny_net):
    x = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    eps, budget = {"linf": 0.05, "l2": 0.3}[norm], 30
    with torch.no_grad():
        logits = tiny_net(x)
    # Images 6 and 7 are labelled with their least likely class: wrong from the start.
    y = torch.cat([logits[:6].argmax(1), logits[6:].argmin(1)])
    model = Recorder(tiny_net)
    x_adv, used = square_attack_with_stats(model, x, y, eps, norm=norm, queries=budget)
    assert used.dtype == torch.long and used.shape == (8,)
    assert (used >= 1).all() and (used <= budget).all()
    assert used[6:].tolist() == [1, 1]
    assert (used < budget).any() and (used == budget).any()  # some fooled early, some never
    # Which image each queried row is: the only one within eps of it (the images are far
    # apart); then call k must hold exactly the images that used more than k queries.
    assert len(model.calls) == int(used.max())
    for k, batch in enumerate(model.calls):
        d = torch.cdist(batch.flatten(1), x.flatten(1), p=float("inf") if norm == "linf" else 2.0)
        near = d <= eps + 1e-5
        assert (near.sum(1) == 1).all()
        assert sorted(near.float().argmax(1).tolist()) == (used > k).nonzero().flatten().tolist()
    # An image stops as soon as it is fooled, and only then.
    fooled = margin_loss(tiny_net(x_adv), y) < 0
    assert fooled[used < budget].all()


@pytest.mark.parametrize("norm", NORMS)
def test_eps_zero_evaluates_once_and_returns_x(norm, tiny_net, tiny_batch):
    x, y = tiny_batch
    x_adv, used = square_attack_with_stats(tiny_net, x, y, 0.0, norm=norm, queries=20)
    assert torch.equal(x_adv, x) and (used == 1).all()


@pytest.mark.parametrize("norm", NORMS)
def test_a_shard_gets_the_whole_batch_result(norm, tiny_net, tiny_batch):
    x, _ = tiny_batch
    with torch.no_grad():
        y = tiny_net(x).argmax(1)
    k, n = 3, len(x)
    x_all, q_all = square_attack_with_stats(tiny_net, x, y, EPS[norm], norm=norm, queries=40)
    x_shard, q_shard = square_attack_with_stats(tiny_net, x[k:], y[k:], EPS[norm], norm=norm,
                                                queries=40, indices=torch.arange(k, n))
    x_head, q_head = square_attack_with_stats(tiny_net, x[:k], y[:k], EPS[norm], norm=norm,
                                              queries=40)
    torch.testing.assert_close(x_shard, x_all[k:], atol=1e-6, rtol=0)
    torch.testing.assert_close(x_head, x_all[:k], atol=1e-6, rtol=0)
    assert torch.equal(q_shard, q_all[k:]) and torch.equal(q_head, q_all[:k])
    other = square_attack(tiny_net, x, y, EPS[norm], norm=norm, queries=40, seed=1)
    assert not torch.allclose(other, x_all)  # the seed does choose the streams


@pytest.mark.parametrize("norm", NORMS)
def test_runs_on_randomised_invert_and_classify(norm, tiny_generator, tiny_net, tiny_batch):
    x, y = tiny_batch
    inc = InvertAndClassify(tiny_generator, tiny_net, seed=0, steps=5, restarts=2)
    x_adv, used = square_attack_with_stats(inc, x, y, EPS[norm], norm=norm, queries=4,
                                          progress=True)
    assert (dist(x_adv, x, norm) <= EPS[norm] + 1e-6).all()
    # One defense call per query, and the count moves on by the budget, stopped early or not.
    assert (used <= 4).all() and inc.draws.call == 4


@pytest.mark.parametrize("norm", NORMS)
def test_randomised_defense_draws_follow_the_image_not_the_batch(norm, tiny_generator,
                                                                 tiny_net, tiny_batch):
    # Images stop as they are fooled, so a query's batch changes from step to step; the
    # defense's restarts must still come from each image's own index and the query number.
    x, y = tiny_batch
    inc = InvertAndClassify(tiny_generator, tiny_net, seed=0, steps=5, restarts=2)
    whole, used = square_attack_with_stats(inc, x, y, EPS[norm], norm=norm, queries=6)
    assert inc.draws.call == 6
    inc.reset()
    parts = chunked(inc, len(x), 3, lambda rows: square_attack_with_stats(
        inc, x[rows], y[rows], EPS[norm], norm=norm, queries=6,
        indices=torch.arange(rows.start, rows.stop)))
    assert inc.draws.call == 6
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), whole, atol=1e-6, rtol=0)
    assert torch.equal(torch.cat([p[1] for p in parts]), used)
    assert (used > 1).any()  # the attack did run past its first query


def test_p_schedule_halves_at_the_scaled_milestones():
    assert p_schedule(0.8, 0, 10000) == p_schedule(0.8, 10, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 501, 10000) == 0.8 / 16
    assert p_schedule(0.8, 9999, 10000) == 0.8 / 512
    assert p_schedule(0.8, 2, 1000) == 0.8 / 2  # 2 of 1,000 is 20 of 10,000
    assert margin_loss(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([2])).item() == -1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l1"}, "norm"), ({"queries": 0}, "queries"), ({"queries": 2.5}, "queries"),
    ({"p_init": 0.0}, "p_init"), ({"p_init": 1.5}, "p_init"), ({"eps": -0.1}, "eps"),
    ({"indices": [0, 1]}, "indices"), ({"seed": 0.5}, "seed"), ({"y": 3}, "y must lie"),
])
def test_bad_input_is_refused(kwargs, match, tiny_net, tiny_batch):
    x, y = tiny_batch
    args = {"eps": 0.1, "y": y}
    args.update(kwargs)
    if not isinstance(args["y"], torch.Tensor):
        args["y"] = torch.full_like(y, args["y"])  # class 3 of a 3-class model
    eps, y = args.pop("eps"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        square_attack(tiny_net, x, y, eps, queries=args.pop("queries", 5), **args)


# ----------------------------------------------------------------------------------------
# Cross-check against torchattacks' Square (a port of AutoAttack's), a test-only dependency
# installed with --no-deps (see test_torchattacks_crosscheck.py). Skipped without it, except
# under RMD_REQUIRE_TORCHATTACKS=1, where a missing torchattacks fails.
# ----------------------------------------------------------------------------------------
INSTALL = "pip install --no-deps torchattacks==3.5.1"


def _torchattacks():
    try:
        import torchattacks
        return torchattacks
    except ImportError as err:
        missing = str(err)
    if os.environ.get("RMD_REQUIRE_TORCHATTACKS") == "1":  # outside the except: a clean report
        pytest.fail(f"RMD_REQUIRE_TORCHATTACKS=1 but torchattacks does not import ({missing}). "
                    f"Install it with `{INSTALL}`.", pytrace=False)
    pytest.skip(f"torchattacks is not installed; {INSTALL}")


# 200 images, so each success rate has a standard error of at most sqrt(0.25 / 200) = 0.035;
# over seeds 0-4 we measured 0.02-0.03 for each attack here, so ours falling more than 0.1
# below torchattacks' (3 standard errors of the difference) would mean a weaker attack.
# Ours is ahead in L-inf by design, by about 0.09 (0.43 against 0.35 over five seeds): like
# the authors' code it draws a window's signs again when they would leave the image
# unchanged, where the AutoAttack port spends a query on it; without that redraw ours
# measured 0.34. Hence the wider two-sided bound of 0.2.
@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 1.0)])
def test_success_rate_matches_torchattacks_square(norm, eps):
    torchattacks = _torchattacks()
    net = make_tiny_net(10, (1, 28, 28), hidden=64, seed=0)
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    # torchattacks' n_queries counts iterations after its first evaluation: 100 + 1 queries.
    x_ours = square_attack(net, x, y, eps, norm=norm, queries=101, p_init=0.3)
    x_theirs = torchattacks.Square(net, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                                   n_queries=100, p_init=0.3, seed=0)(x, y)
    assert (dist(x_theirs, x, norm) <= eps + 1e-5).all()
    r_ours, r_theirs = 1 - accuracy(net, x_ours, y), 1 - accuracy(net, x_theirs, y)
    print(f"Square {norm} eps={eps}: rmd_lib {r_ours:.3f}, torchattacks {r_theirs:.3f}")
    assert 0.1 < r_theirs < 0.9, "a budget at which the rates can differ"
    assert r_ours >= r_theirs - 0.1 and abs(r_ours - r_theirs) <= 0.2
