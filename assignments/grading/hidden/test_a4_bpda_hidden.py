"""Hidden grading cases of assignment 4: other quantisation levels, shapes and seeds."""
import pytest
import torch

from rmd_course.toys import OffGridClassifier, quantize, toy_classifier, toy_images

SHAPE = (3, 4, 4)


def toy(levels, seed):
    x, y = toy_images(240, shape=SHAPE, classes=4, spread=0.15, noise=0.15, seed=seed)
    base = toy_classifier(quantize(x[:200], levels), y[:200], seed=seed)
    return OffGridClassifier(base, shape=SHAPE, classes=4, levels=levels, seed=seed), x[200:], y[200:]


@pytest.mark.points(2)
@pytest.mark.parametrize("levels,eps", [(5, 0.2), (9, 0.15)])
def test_bpda_beats_transfer_at_other_levels(sub, levels, eps):
    classifier, x, y = toy(levels, seed=50 + levels)
    defense = lambda a: quantize(a, levels)
    report = sub.evaluate_defense(defense, classifier, x, y, eps, steps=20)
    assert report["clean"] > 0.9
    assert report["bpda"] < report["transfer"] - 0.5


@pytest.mark.points(1)
def test_bpda_gradient_through_a_model(sub):
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 4)
    x = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(60)).requires_grad_(True)
    lin(sub.bpda(lambda a: quantize(a, 3), x).flatten(1)).sum().backward()
    expected = lin.weight.sum(dim=0).view(1, *SHAPE).expand(2, *SHAPE)
    assert torch.allclose(x.grad, expected, atol=1e-6)


@pytest.mark.points(1)
def test_pgd_linf_default_step_and_determinism(sub):
    classifier, x, y = toy(5, seed=61)
    a = sub.pgd_linf(classifier.base, x, y, 0.05)
    b = sub.pgd_linf(classifier.base, x, y, 0.05)
    assert torch.equal(a, b), "pgd_linf has no randomness"
    assert (a - x).abs().max() <= 0.05 + 1e-6 and (a - x).abs().max() > 0.04, \
        "with the default step the attack should reach the edge of the ball"


@pytest.mark.points(1)
def test_bpda_attack_single_image(sub):
    classifier, x, y = toy(5, seed=62)
    x_adv = sub.bpda_attack(lambda a: quantize(a, 5), classifier, x[:1], y[:1], 0.2, steps=5)
    assert x_adv.shape == x[:1].shape and (x_adv - x[:1]).abs().max() <= 0.2 + 1e-6
