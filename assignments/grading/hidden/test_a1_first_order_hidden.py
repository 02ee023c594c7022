"""Hidden grading cases of assignment 1: other shapes, seeds, budgets and edge cases."""
import pytest
import torch
from torch.nn import functional as F

from rmd_course.toys import RippleClassifier, toy_classifier, toy_images

SHAPE = (3, 5, 7)


@pytest.fixture(scope="module")
def color_toy():
    x, y = toy_images(200, shape=SHAPE, classes=4, seed=11)
    model = RippleClassifier(toy_classifier(x[:160], y[:160], seed=11), shape=SHAPE, classes=4, seed=11)
    return model, x[160:], y[160:]


def grad_of(model, x, y):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


@pytest.mark.points(1)
def test_fgsm_linf_exact_on_color_images(sub, color_toy):
    model, x, y = color_toy
    eps = 0.02
    x = x.clamp(eps, 1 - eps)
    assert torch.allclose(sub.fgsm(model, x, y, eps) - x, eps * grad_of(model, x, y).sign(), atol=1e-6)


@pytest.mark.points(1)
def test_fgsm_l2_exact_on_color_images(sub, color_toy):
    model, x, y = color_toy
    x = x.clamp(0.3, 0.7)
    g = grad_of(model, x, y)
    expected = x + 0.2 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(sub.fgsm(model, x, y, 0.2, norm="l2"), expected, atol=1e-5)


@pytest.mark.points(1)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_budget_returns_x(sub, color_toy, norm):
    model, x, y = color_toy
    assert torch.allclose(sub.fgsm(model, x, y, 0.0, norm=norm), x)
    assert torch.allclose(sub.pgd(model, x, y, 0.0, norm=norm, steps=3), x)


@pytest.mark.points(1)
def test_unknown_norm_is_a_value_error(sub, color_toy):
    model, x, y = color_toy
    with pytest.raises(ValueError):
        sub.fgsm(model, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError):
        sub.pgd(model, x, y, 0.1, norm="l1", steps=2)


@pytest.mark.points(1)
@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_pgd_single_image_in_budget(sub, color_toy, norm, eps):
    model, x, y = color_toy
    x_adv = sub.pgd(model, x[:1], y[:1], eps, norm=norm, steps=5)
    p = float("inf") if norm == "linf" else 2
    assert x_adv.shape == x[:1].shape
    assert (x_adv - x[:1]).flatten(1).norm(p=p, dim=1).item() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.points(2)
@pytest.mark.parametrize("norm,eps", [("linf", 0.04), ("l2", 0.8)])
def test_pgd_default_step_beats_fgsm_on_color_images(sub, color_toy, norm, eps):
    model, x, y = color_toy
    ce = lambda a: F.cross_entropy(model(a), y).item()
    assert ce(sub.pgd(model, x, y, eps, norm=norm, steps=20)) > 1.1 * ce(sub.fgsm(model, x, y, eps, norm=norm))


@pytest.mark.points(1)
def test_pgd_without_random_start_is_deterministic_and_in_place_safe(sub, color_toy):
    model, x, y = color_toy
    x0 = x.clone()
    a = sub.pgd(model, x, y, 0.03, steps=4, random_start=False, seed=1)
    b = sub.pgd(model, x, y, 0.03, steps=4, random_start=False, seed=2)
    assert torch.equal(a, b), "without a random start the seed must not matter"
    assert torch.equal(x, x0), "pgd must not modify x"
