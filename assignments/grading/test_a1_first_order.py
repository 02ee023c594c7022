"""Public grading tests of assignment 1 (first-order attacks). ``sub`` is the submission."""
import pytest
import torch
from torch.nn import functional as F

from rmd_course.toys import RippleClassifier, toy_classifier, toy_images

NORMS = ["linf", "l2"]


@pytest.fixture(scope="module")
def toy():
    x, y = toy_images(320, seed=0)
    model = RippleClassifier(toy_classifier(x[:256], y[:256]), shape=(1, 8, 8), classes=3)
    return model, x[256:], y[256:]


def size(delta, norm):
    return delta.flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)


def loss(model, x, y):
    return F.cross_entropy(model(x), y).item()


def accuracy(model, x, y):
    return (model(x).argmax(dim=1) == y).float().mean().item()


def reference_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


@pytest.mark.points(2)
def test_loss_gradient_matches_autograd(sub, toy):
    model, x, y = toy
    x0 = x.clone()
    g = sub.loss_gradient(model, x, y)
    assert g.shape == x.shape
    assert not g.requires_grad, "return a detached gradient"
    assert torch.allclose(g, reference_gradient(model, x, y), atol=1e-6), \
        "not the gradient of the summed cross-entropy"
    assert torch.equal(x, x0) and x.grad is None, "x must be left untouched"


@pytest.mark.points(1)
def test_loss_gradient_is_per_image(sub, toy):
    model, x, y = toy
    together = sub.loss_gradient(model, x[:5], y[:5])
    alone = sub.loss_gradient(model, x[2:3], y[2:3])
    assert torch.allclose(together[2:3], alone, atol=1e-6), \
        "an image's gradient must not depend on the batch (sum the loss, do not average it)"


@pytest.mark.points(2)
def test_steepest_direction(sub):
    g = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    g[3] = 0.0
    assert torch.equal(sub.steepest_direction(g, "linf"), g.sign())
    u = sub.steepest_direction(g, "l2")
    assert torch.allclose(u[:3].flatten(1).norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(u[:3], g[:3] / g[:3].flatten(1).norm(dim=1).view(-1, 1, 1, 1), atol=1e-6)
    assert torch.equal(u[3], torch.zeros_like(u[3])), "a zero gradient has direction 0, not NaN"


@pytest.mark.points(2)
def test_project_ball(sub):
    d = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(sub.project_ball(d, 0.3, "linf"), d.clamp(-0.3, 0.3))
    norms = d.flatten(1).norm(dim=1)
    eps = float(norms.median())
    p = sub.project_ball(d, eps, "l2")
    inside = norms <= eps
    assert torch.allclose(p[inside], d[inside]), "perturbations inside the L2 ball stay unchanged"
    assert torch.allclose(p[~inside].flatten(1).norm(dim=1), torch.tensor(eps), atol=1e-5)
    assert torch.allclose(p[~inside] / eps, d[~inside] / norms[~inside].view(-1, 1, 1, 1), atol=1e-5), \
        "the L2 projection only rescales"


@pytest.mark.points(2)
def test_fgsm_linf_is_eps_times_gradient_sign(sub, toy):
    model, x, y = toy
    eps = 0.05
    x = x.clamp(eps, 1 - eps)
    x0 = x.clone()
    x_adv = sub.fgsm(model, x, y, eps, norm="linf")
    assert torch.equal(x, x0), "fgsm must not modify x"
    assert torch.allclose(x_adv - x, eps * reference_gradient(model, x, y).sign(), atol=1e-6)
    assert loss(model, x_adv, y) > loss(model, x, y)


@pytest.mark.points(2)
def test_fgsm_l2_has_norm_eps_along_the_gradient(sub, toy):
    model, x, y = toy
    eps = 0.3
    x = x.clamp(0.25, 0.75)
    delta = sub.fgsm(model, x, y, eps, norm="l2") - x
    assert torch.allclose(size(delta, "l2"), torch.tensor(eps), atol=1e-5)
    cos = F.cosine_similarity(delta.flatten(1), reference_gradient(model, x, y).flatten(1))
    assert (cos > 1 - 1e-5).all(), "the L2 step must point along the gradient"
    assert loss(model, x + delta, y) > loss(model, x, y)


@pytest.mark.points(1)
@pytest.mark.parametrize("norm", NORMS)
def test_fgsm_stays_in_unit_box(sub, toy, norm):
    model, x, y = toy
    x = (x > 0.5).float()  # every pixel on the boundary of [0, 1]
    x_adv = sub.fgsm(model, x, y, 0.1 if norm == "linf" else 1.0, norm=norm)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.points(2)
@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.6)])
def test_pgd_stays_in_ball_and_box(sub, toy, norm, eps):
    model, x, y = toy
    x = torch.cat([x, (x > 0.5).float()])
    y = torch.cat([y, y])
    x_adv = sub.pgd(model, x, y, eps, norm=norm, steps=10)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (size(x_adv - x, norm) <= eps + 1e-5).all(), "PGD left the eps-ball"
    assert x_adv.min() >= 0 and x_adv.max() <= 1, "PGD left [0, 1]"


@pytest.mark.points(2)
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_pgd_one_step_from_x_is_fgsm(sub, toy, norm, eps):
    model, x, y = toy
    one = sub.pgd(model, x, y, eps, norm=norm, steps=1, alpha=eps, random_start=False)
    assert torch.allclose(one, sub.fgsm(model, x, y, eps, norm=norm), atol=1e-6)


@pytest.mark.points(3)
@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.6)])
def test_pgd_beats_fgsm(sub, toy, norm, eps):
    model, x, y = toy
    x_f = sub.fgsm(model, x, y, eps, norm=norm)
    x_p = sub.pgd(model, x, y, eps, norm=norm, steps=20)
    assert loss(model, x_p, y) > 1.2 * loss(model, x_f, y), "PGD should find a much larger loss than FGSM"
    assert accuracy(model, x_p, y) < accuracy(model, x_f, y)


@pytest.mark.points(1)
def test_pgd_random_start_is_seeded(sub, toy):
    model, x, y = toy
    a = sub.pgd(model, x, y, 0.05, steps=2, seed=3)
    b = sub.pgd(model, x, y, 0.05, steps=2, seed=3)
    c = sub.pgd(model, x, y, 0.05, steps=2, seed=4)
    assert torch.equal(a, b), "the same seed must give the same attack"
    assert not torch.equal(a, c), "another seed must give another random start"
