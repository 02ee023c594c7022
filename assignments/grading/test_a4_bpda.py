"""Public grading tests of assignment 4 (BPDA). ``sub`` is the submission."""
import pytest
import torch

from rmd_course.toys import OffGridClassifier, quantize, toy_classifier, toy_images

LEVELS = 5
EPS = 0.2


def defense(x):
    return quantize(x, LEVELS)


@pytest.fixture(scope="module")
def toy():
    x, y = toy_images(320, spread=0.15, noise=0.15, seed=0)
    base = toy_classifier(quantize(x[:256], LEVELS), y[:256])
    classifier = OffGridClassifier(base, shape=(1, 8, 8), classes=3, levels=LEVELS)
    return base, classifier, x[256:], y[256:]


def defended(classifier, x, y):
    with torch.no_grad():
        return (classifier(defense(x)).argmax(dim=1) == y).float().mean().item()


def check_budget(x_adv, x, eps):
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6, "left the eps-ball"
    assert x_adv.min() >= 0 and x_adv.max() <= 1, "left [0, 1]"


@pytest.mark.points(1)
def test_bpda_forward_is_the_defense(sub):
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sub.bpda(defense, x), defense(x), atol=1e-6)


@pytest.mark.points(2)
def test_bpda_backward_is_the_identity(sub):
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    w = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    (sub.bpda(defense, x) * w).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, w), "the gradient must pass through unchanged"


@pytest.mark.points(1)
def test_bpda_ignores_a_differentiable_defense_gradient(sub):
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    out = sub.bpda(lambda a: 0.5 * a ** 2, x)
    assert torch.allclose(out, 0.5 * x.detach() ** 2, atol=1e-6)
    out.sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x)), "BPDA replaces the defense's Jacobian by I"


@pytest.mark.points(2)
def test_pgd_linf_stays_in_budget(sub, toy):
    base, _, x, y = toy
    x0 = x.clone()
    check_budget(sub.pgd_linf(base, x, y, EPS, steps=10), x, EPS)
    edge = (x > 0.5).float()
    check_budget(sub.pgd_linf(base, edge, y, EPS, steps=10), edge, EPS)
    assert torch.equal(x, x0), "pgd_linf must not modify x"


@pytest.mark.points(2)
def test_pgd_linf_fools_an_undefended_classifier(sub, toy):
    base, _, x, y = toy
    x_adv = sub.pgd_linf(base, x, y, 0.15, steps=20)
    with torch.no_grad():
        before = (base(x).argmax(1) == y).float().mean()
        after = (base(x_adv).argmax(1) == y).float().mean()
    assert before > 0.9 and after < 0.5


@pytest.mark.points(3)
def test_bpda_attack_breaks_the_defense(sub, toy):
    _, classifier, x, y = toy
    x_adv = sub.bpda_attack(defense, classifier, x, y, EPS, steps=20)
    check_budget(x_adv, x, EPS)
    assert defended(classifier, x, y) > 0.9
    assert defended(classifier, x_adv, y) < 0.2, "BPDA should bring the defended accuracy near 0"


@pytest.mark.points(1)
def test_defended_accuracy(sub, toy):
    _, classifier, x, y = toy
    y_half = y.clone()
    y_half[::2] = (y_half[::2] + 1) % 3  # half the labels wrong
    for labels in (y, y_half):
        got = sub.defended_accuracy(defense, classifier, x, labels)
        assert isinstance(got, float) and abs(got - defended(classifier, x, labels)) < 1e-6


@pytest.mark.points(3)
def test_evaluation_shows_bpda_beats_transfer(sub, toy):
    _, classifier, x, y = toy
    report = sub.evaluate_defense(defense, classifier, x, y, EPS, steps=20)
    assert set(report) == {"clean", "transfer", "bpda"}
    assert abs(report["clean"] - defended(classifier, x, y)) < 1e-6
    assert report["transfer"] > 0.7, "the transfer attack should leave most images correct"
    assert report["bpda"] < report["transfer"] - 0.5
