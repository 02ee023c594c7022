"""Carlini-Wagner L2 and BPDA(+EOT): the attacks that look through a projection defense."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from rmd_lib.attacks import BPDA, cw_l2, input_gradient, pgd
from rmd_lib.projection import InvertAndClassify


def test_unbounded_cw_fools_the_undefended_classifier_everywhere(tiny_net, tiny_batch):
    x, y = tiny_batch
    x_adv = cw_l2(tiny_net, x, y, steps=100, binary_steps=6, lr=0.05)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (tiny_net(x_adv).argmax(1) != y).all()


def test_cw_confidence_kappa_is_reached(tiny_net, tiny_batch):
    x, y = tiny_batch
    kappa = 0.5  # the tiny net's largest reachable margins are about 0.8 to 1.3
    x_adv = cw_l2(tiny_net, x, y, kappa=kappa, steps=150, binary_steps=6, lr=0.05)
    with torch.no_grad():
        logits = tiny_net(x_adv)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    found = (x_adv != x).flatten(1).any(dim=1)
    assert found.all()
    assert (other - true)[found].min() >= kappa - 1e-4


def test_cw_prefers_small_perturbations_over_a_large_budget(tiny_net, tiny_batch):
    x, y = tiny_batch
    x_cw = cw_l2(tiny_net, x, y, steps=100, binary_steps=6, lr=0.05)
    x_pgd = pgd(tiny_net, x, y, 3.0, norm="l2", steps=40)
    fooled = (tiny_net(x_pgd).argmax(1) != y)
    d_cw = (x_cw - x).flatten(1).norm(dim=1)
    d_pgd = (x_pgd - x).flatten(1).norm(dim=1)
    # CW minimises the distance; PGD only stays inside its ball.
    assert (d_cw[fooled] <= d_pgd[fooled] + 1e-6).all()


def test_cw_respects_a_finite_budget_and_rejects_bad_input(tiny_net, tiny_batch):
    x, y = tiny_batch
    x_adv = cw_l2(tiny_net, x, y, 0.05, steps=20, binary_steps=2)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.05 + 1e-6
    with pytest.raises(ValueError, match="norm must be 'l2'"):
        cw_l2(tiny_net, x, y, norm="linf")
    with pytest.raises(ValueError, match="eps"):
        cw_l2(tiny_net, x, y, -1.0)


@pytest.fixture
def inc(tiny_generator):
    from conftest import make_tiny_net  # the same tiny classifier as tiny_net
    return InvertAndClassify(tiny_generator, make_tiny_net(), seed=3, steps=30, restarts=3)


def test_bpda_forward_is_inc_and_backward_is_the_classifier_at_the_projection(inc, tiny_batch):
    x, y = tiny_batch
    inc.reset()
    logits_inc = inc(x)
    x_hat = inc.last.x_hat
    inc.reset()
    out = BPDA(inc)(x)
    assert torch.allclose(out, logits_inc.log_softmax(1), atol=1e-6)
    inc.reset()
    g_bpda = input_gradient(BPDA(inc), x, y)
    g_clf = input_gradient(inc.classifier, x_hat, y)
    assert torch.allclose(g_bpda, g_clf, atol=1e-6) and g_bpda.abs().sum() > 0


def test_bpda_eot_returns_log_mean_probabilities(inc, tiny_batch):
    x, _ = tiny_batch
    out = BPDA(inc, samples=4)(x)
    assert torch.allclose(out.exp().sum(1), torch.ones(len(x)), atol=1e-5)


def test_pgd_through_bpda_raises_the_defended_loss(inc, tiny_batch):
    x, y = tiny_batch
    model = BPDA(inc, samples=2)
    x_adv = pgd(model, x, y, 0.3, norm="linf", steps=10)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    inc.reset()
    with torch.no_grad():
        clean = F.cross_entropy(inc(x), y)
        inc.reset()
        attacked = F.cross_entropy(inc(x_adv), y)
    assert attacked > clean


def test_bpda_wraps_only_invert_and_classify(tiny_net):
    with pytest.raises(TypeError, match="InvertAndClassify"):
        BPDA(tiny_net)


# ----------------------------------------------------------------------------------------
# The unrolled projection and the latent-space attack
# ----------------------------------------------------------------------------------------
from rmd_lib.attacks import UnrolledINC, fgsm, latent_space_attack, unrolled_project  # noqa: E402


def test_unrolled_projection_fits_the_range_and_is_differentiable(tiny_generator, tiny_batch):
    G = tiny_generator
    z = torch.randn(8, G.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = G(z)
    x_hat = unrolled_project(G, x, steps=150, restarts=2, seed=0)
    assert x_hat.shape == x.shape
    assert (x_hat - x).pow(2).mean() < 0.2 * (G(torch.zeros_like(z)) - x).pow(2).mean()
    # Same seed, same function: two calls agree exactly.
    assert torch.equal(x_hat, unrolled_project(G, x, steps=150, restarts=2, seed=0))
    # The gradient through the unrolled loop matches a finite difference of the same map.
    x0 = tiny_batch[0][:2].double()
    Gd = tiny_generator.double()
    f = lambda v: unrolled_project(Gd, v, steps=5, restarts=1, lr=0.05, seed=0).sum()  # noqa: E731
    x_req = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        grad, = torch.autograd.grad(f(x_req), x_req)
    direction = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=x0.dtype)
    h = 1e-5
    numeric = (f(x0 + h * direction) - f(x0 - h * direction)) / (2 * h)
    assert abs(numeric - (grad * direction).sum()) < 1e-5 * max(1.0, abs(numeric))
    assert grad.abs().sum() > 0


def test_unrolled_inc_is_a_model_that_gradient_attacks_run_on(tiny_generator, tiny_batch):
    from conftest import make_tiny_net
    x, y = tiny_batch
    model = UnrolledINC(tiny_generator, make_tiny_net(), steps=10, restarts=2)
    x_adv = fgsm(model, x, y, 0.1)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)
    with torch.no_grad():  # evaluation keeps no graph but gives the same logits
        assert torch.allclose(model(x), model(x.clone().requires_grad_(True)).detach(), atol=1e-6)
    with pytest.raises(ValueError, match="lr"):
        UnrolledINC(tiny_generator, make_tiny_net(), steps=10, lr=-1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
def test_latent_attack_stays_in_budget_and_fools_inc_more_than_noise(inc, tiny_batch, norm, eps):
    x, y = tiny_batch
    inc.reset()
    with torch.no_grad():
        y = inc(x).argmax(1)  # labels INC gets right, so that any flip is the attack's doing
    x_adv = latent_space_attack(inc, x, y, eps, norm=norm, steps=100, lr=0.1)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    inc.reset()
    with torch.no_grad():
        fooled = (inc(x_adv).argmax(1) != y).float().mean()
    assert fooled >= 0.5


def test_latent_attack_needs_the_defense_itself(tiny_net, tiny_batch):
    x, y = tiny_batch
    with pytest.raises(TypeError, match="InvertAndClassify"):
        latent_space_attack(tiny_net, x, y, 0.1)


class AffineGenerator(torch.nn.Module):
    """G(z) = W z + b: its projection is least squares, so dG(z*)/dx is known exactly."""

    def __init__(self, latent_dim=3, shape=(1, 4, 4), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.latent_dim, self.shape = latent_dim, shape
        self.register_buffer("W", 0.3 * torch.randn(math.prod(shape), latent_dim, generator=g))
        self.register_buffer("b", 0.5 + 0.05 * torch.randn(math.prod(shape), generator=g))

    def forward(self, z):
        return (z @ self.W.T + self.b).view(-1, *self.shape)

    def sample_latent(self, n, generator=None, device=None):
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


def test_tangent_bpda_gradient_is_that_of_the_exact_projection():
    from conftest import make_tiny_net
    G = AffineGenerator()
    clf = make_tiny_net(image_shape=(1, 4, 4))
    inc = InvertAndClassify(G, clf, seed=0, steps=400, restarts=1, lr=0.05, early_stop=False)
    x = 0.5 + 0.1 * torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1])
    # Exact: INC(x) = C(P (x - b) + b) with P = W (W^T W)^-1 W^T.
    W, b = G.W, G.b
    P = W @ torch.linalg.solve(W.T @ W, W.T)

    def exact(v):
        return clf(((v.flatten(1) - b) @ P.T + b).view_as(v))

    g_exact = input_gradient(exact, x, y)
    g_tangent = input_gradient(BPDA(inc, backward="tangent", damping=0.0), x, y)
    g_identity = input_gradient(BPDA(inc), x, y)
    assert torch.allclose(g_tangent, g_exact, atol=1e-4)
    assert not torch.allclose(g_identity, g_exact, atol=1e-3)


def test_generator_jacobian_matches_autograd(tiny_generator):
    from rmd_lib.attacks import generator_jacobian
    z = torch.randn(3, tiny_generator.latent_dim, generator=torch.Generator().manual_seed(0))
    J = generator_jacobian(tiny_generator, z)
    ref = torch.autograd.functional.jacobian(lambda v: tiny_generator(v[None]).flatten(), z[1])
    assert J.shape == (3, 36, tiny_generator.latent_dim)
    assert torch.allclose(J[1], ref, atol=1e-6)


def test_bpda_rejects_an_unknown_backward(inc):
    with pytest.raises(ValueError, match="backward must be one of"):
        BPDA(inc, backward="exact")


# ----------------------------------------------------------------------------------------
# No gradient bookkeeping on the models' weights, and bad options
# ----------------------------------------------------------------------------------------
from torch import nn  # noqa: E402
from torch.func import jacfwd, vmap  # noqa: E402


class ParamGenerator(nn.Module):
    """G(z) = sigmoid(Linear(z)) on 1x6x6 images, with trainable weights (unlike the buffers of
    the conftest generator), so that a stray graph through G's weights would show."""

    def __init__(self, latent_dim=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.latent_dim = latent_dim
        self.lin = nn.Linear(latent_dim, 36)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(36, latent_dim, generator=g))
            self.lin.bias.copy_(0.1 * torch.randn(36, generator=g))

    def forward(self, z):
        return torch.sigmoid(self.lin(z)).view(-1, 1, 6, 6)

    def sample_latent(self, n, generator=None, device=None):
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


def _reference_tangent_bpda(inc, damping, samples):
    """BPDA(backward="tangent") as it was first written: the Jacobian keeps its autograd graph
    through G's weights."""
    def model(x):
        xs = x.repeat(samples, *[1] * (x.ndim - 1))
        idx, call = inc.draws.next(x.shape[0])  # the same restarts as BPDA's EOT copies
        sample = torch.arange(samples).repeat_interleave(x.shape[0])
        proj = inc.project(xs.detach(), indices=idx.repeat(samples), call=call, sample=sample)
        J = vmap(jacfwd(lambda zi: inc.G(zi.unsqueeze(0)).flatten()))(proj.z.detach())
        JtJ = J.transpose(1, 2) @ J
        mu = damping * JtJ.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
        JtJ = JtJ + mu[:, None, None] * torch.eye(J.shape[2], device=J.device, dtype=J.dtype)
        delta = (xs - xs.detach()).flatten(1).unsqueeze(2)
        move = J @ torch.linalg.solve(JtJ, J.transpose(1, 2) @ delta)
        x_lin = proj.x_hat + move.view_as(xs)
        log_probs = inc.classifier(x_lin).log_softmax(dim=1).view(samples, x.shape[0], -1)
        return torch.logsumexp(log_probs, dim=0) - math.log(samples)
    return model


@pytest.mark.parametrize("samples", [1, 2])
def test_tangent_bpda_gradient_is_unchanged_and_leaves_g_without_grad(tiny_batch, samples):
    from conftest import make_tiny_net
    x, y = tiny_batch
    G = ParamGenerator()
    inc = InvertAndClassify(G, make_tiny_net(), seed=2, steps=15, restarts=2)
    g_ref = input_gradient(_reference_tangent_bpda(inc, 1e-3, samples), x, y)
    assert all(p.grad is None for p in G.parameters())  # input_gradient takes d/dx only
    inc.reset()
    bpda = BPDA(inc, samples=samples, backward="tangent")
    g_new = input_gradient(bpda, x, y)
    assert torch.equal(g_new, g_ref)
    # A full backward pass reaches x and the classifier, but not G: J is a constant.
    inc.reset()
    x_req = x.clone().requires_grad_(True)
    with torch.enable_grad():
        F.cross_entropy(bpda(x_req), y).backward()
    assert x_req.grad is not None and x_req.grad.abs().sum() > 0
    assert all(p.grad is None for p in G.parameters())
    # The first version did give G gradients, and so kept the graph that holds them.
    inc.reset()
    reference = _reference_tangent_bpda(inc, 1e-3, samples)
    with torch.enable_grad():
        F.cross_entropy(reference(x.clone().requires_grad_(True)), y).backward()
    assert all(p.grad is not None for p in G.parameters())


def test_cw_leaves_no_grad_on_the_model(tiny_net, tiny_batch):
    x, y = tiny_batch
    assert all(p.requires_grad for p in tiny_net.parameters())
    cw_l2(tiny_net, x, y, steps=5, binary_steps=2)
    assert all(p.grad is None for p in tiny_net.parameters())


def test_latent_attack_leaves_no_grad_on_g_or_the_classifier(tiny_batch):
    from conftest import make_tiny_net
    x, y = tiny_batch
    G, clf = ParamGenerator(), make_tiny_net()
    inc = InvertAndClassify(G, clf, seed=0, steps=10, restarts=2)
    latent_space_attack(inc, x, y, 1.0, steps=5)
    assert all(p.grad is None for p in [*G.parameters(), *clf.parameters()])


@pytest.mark.parametrize("kw, message", [
    (dict(c_init=0.0), r"c_init must be a finite number > 0, got 0\.0\. .*no image moves"),
    (dict(c_init=-1), r"c_init must be a finite number > 0, got -1\."),
    (dict(lr=0.0), r"lr must be a finite number > 0, got 0\.0\."),
])
def test_cw_refuses_a_zero_constant_or_step(tiny_net, tiny_batch, kw, message):
    x, y = tiny_batch
    with pytest.raises(ValueError, match=message):
        cw_l2(tiny_net, x, y, steps=2, binary_steps=1, **kw)


@pytest.mark.parametrize("kw, message", [
    (dict(lam_rate=0.0), r"lam_rate must be a finite number > 0, got 0\.0\. .*never enforced"),
    (dict(lam_rate=-1.0), r"lam_rate must be a finite number > 0, got -1\.0\."),
    (dict(lr=0), r"lr must be a finite number > 0, got 0\."),
])
def test_latent_attack_refuses_a_zero_rate(inc, tiny_batch, kw, message):
    x, y = tiny_batch
    with pytest.raises(ValueError, match=message):
        latent_space_attack(inc, x, y, 0.5, steps=2, **kw)


@pytest.mark.parametrize("damping, error, message", [
    (-1e-3, ValueError, r"damping must be a finite number >= 0, got -0\.001\. .*default is 1e-3"),
    (float("nan"), ValueError, r"damping must be a finite number >= 0, got nan\."),
    ("small", TypeError, r"damping must be a number, got 'small'\."),
])
def test_bpda_refuses_negative_damping(inc, damping, error, message):
    with pytest.raises(error, match=message):
        BPDA(inc, backward="tangent", damping=damping)
    BPDA(inc, backward="tangent", damping=0)  # undamped is allowed


@pytest.mark.parametrize("kw, message", [
    (dict(lr=0.0), r"lr must be a finite number > 0, got 0\.0\."),
    (dict(betas=(0.9, 1.0)), r"betas\[1\] must be a finite number in \[0, 1\), got 1\.0\."),
    (dict(betas=(0.9,)), r"betas must be Adam's two moment decays"),
])
def test_unrolled_projection_refuses_bad_options(tiny_generator, tiny_batch, kw, message):
    with pytest.raises(ValueError, match=message):
        unrolled_project(tiny_generator, tiny_batch[0], steps=2, **kw)
