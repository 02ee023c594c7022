# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assignment 1: first-order attacks
#
# You will write the two attacks that every later chapter uses, the fast gradient method
# (FGSM) and projected gradient descent (PGD), each for an $L_\infty$ and an $L_2$ budget,
# and see on a toy classifier why the iterative attack is the one to trust.
#
# **Conventions** (the book's, see `rmd_lib/attacks/first_order.py`, which you may read but
# not call): images are float tensors `(N, C, H, W)` with values in $[0, 1]$; a model maps
# them to logits `(N, K)`; labels `y` are `(N,)` int64; `eps` is the budget.
#
# **Grading.** Write the bodies of the functions marked *graded*; each is tested on its own,
# so every working function earns its points. Only your imports, functions, classes and
# constants are graded: the self-check cells and anything else that runs in this notebook are
# not, so a graded function must not use a variable that a self-check cell defines. To run the
# public tests, save the notebook and, in the release folder, run
# `pytest grading/test_a1_first_order.py --submission a1_first_order.ipynb`.
# Submit this notebook as `a1_first_order.ipynb`.

# %%
# On Colab, install the book's library first.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+https://github.com/rmd-course/robust-manifold-defense-book"], check=True)

# %%
import torch
from torch.nn import functional as F

from rmd_course.toys import RippleClassifier, toy_classifier, toy_images

# %% [markdown]
# ## The attacker's problem
#
# Given a correctly classified image $x$ with label $y$ and the loss
# $L(x') = \mathrm{CE}(f(x'), y)$, the attacker looks for
#
# $$x^\star = \arg\max_{x' \in S(x)} L(x'), \qquad
#   S(x) = \{x' : \|x' - x\| \le \epsilon\} \cap [0, 1]^n .$$
#
# First-order attacks only use $g = \nabla_{x'} L$. To first order,
# $L(x + \delta) \approx L(x) + g^\top \delta$, and the $\delta$ of norm $\epsilon$ that
# maximises $g^\top \delta$ is $\epsilon\,u(g)$ with the *steepest-ascent direction*
#
# $$u_\infty(g) = \operatorname{sign}(g), \qquad u_2(g) = g / \|g\|_2 .$$
#
# ## 1. The loss gradient (graded)
#
# Sum the cross-entropy over the batch rather than averaging it: then each image's gradient
# is the gradient of its own loss, the same whatever else is in the batch.

# %%
def loss_gradient(model, x, y):
    """Gradient of the summed cross-entropy loss with respect to the input images.

    model: maps (N, C, H, W) images to (N, K) logits. x: (N, C, H, W) float in [0, 1];
    y: (N,) int64 labels. Returns a detached tensor shaped like x. Leaves x and the
    parameters' .grad untouched.
    """
    ### BEGIN SOLUTION: make a leaf copy of x that requires grad, sum F.cross_entropy over the batch, use torch.autograd.grad
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        grad, = torch.autograd.grad(loss, x)
    return grad
    ### END SOLUTION


# %% [markdown]
# ## 2. Steepest direction and projection (graded)
#
# PGD keeps its iterate in the budget by projecting: for $L_\infty$ the projection of a
# perturbation $\delta$ onto the ball clamps every pixel to $[-\epsilon, \epsilon]$; for $L_2$
# it rescales $\delta$ to norm $\epsilon$ when it is longer and leaves it alone otherwise.
# Everything is per image: image $i$'s direction and norm use row $i$ only.

# %%
def steepest_direction(g, norm):
    """Unit-norm steepest-ascent direction of each image's gradient.

    g: (N, ...) gradients. norm "linf": sign(g); "l2": g / ||g||_2 per image, and 0 for an
    image whose gradient is 0 (never NaN). Returns a tensor shaped like g. Raises ValueError
    for any other norm.
    """
    ### BEGIN SOLUTION: sign(g) for "linf"; for "l2" divide each row by its norm (clamp the norm away from 0); ValueError otherwise
    if norm == "linf":
        return g.sign()
    if norm == "l2":
        norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
        return g / norms.view(-1, *[1] * (g.ndim - 1))
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    ### END SOLUTION


def project_ball(delta, eps, norm):
    """Project each perturbation onto the eps-ball of the given norm.

    delta: (N, ...) perturbations; eps >= 0. "linf": clamp to [-eps, eps]; "l2": rows with
    ||delta||_2 > eps are scaled to norm eps, the others are returned unchanged. Returns a
    tensor shaped like delta. Raises ValueError for any other norm.
    """
    ### BEGIN SOLUTION: clamp for "linf"; for "l2" multiply each row by min(1, eps / ||row||_2); ValueError otherwise
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        return delta * (eps / norms).clamp(max=1.0).view(-1, *[1] * (delta.ndim - 1))
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    ### END SOLUTION


# %% [markdown]
# ## 3. FGSM (graded)
#
# One step of size $\epsilon$: $x' = \operatorname{clip}_{[0,1]}(x + \epsilon\,u(g))$ with $g$
# the loss gradient at $x$.

# %%
def fgsm(model, x, y, eps, norm="linf"):
    """Fast gradient method: one step of size eps along the steepest-ascent direction.

    model: images to logits; x: (N, C, H, W) in [0, 1]; y: (N,) labels; eps >= 0; norm
    "linf" or "l2" (ValueError otherwise). Returns x_adv shaped like x, in [0, 1], detached.
    Does not modify x.
    """
    ### BEGIN SOLUTION: x + eps * steepest_direction(loss_gradient(...), norm), clamped to [0, 1] and detached
    step = eps * steepest_direction(loss_gradient(model, x, y), norm)
    return (x + step).clamp(0.0, 1.0).detach()
    ### END SOLUTION


# %% [markdown]
# ## 4. PGD (graded)
#
# Many small steps, each projected back onto $S(x)$:
#
# $$x_{t+1} = \operatorname{clip}_{[0,1]}\big(x + \Pi_\epsilon(x_t + \alpha\,u(g_t) - x)\big),$$
#
# with $\Pi_\epsilon$ = `project_ball` and a default step $\alpha = 2.5\,\epsilon / T$ for $T$
# steps, so that the iterate can cross the ball and still settle. An optional random start
# $x_0 = \operatorname{clip}(x + \Pi_\epsilon(\epsilon\,r))$, with $r$ uniform in $[-1, 1]$,
# draws $r$ from `torch.Generator().manual_seed(seed)` on the CPU, so one seed gives one
# attack on every device.

# %%
def pgd(model, x, y, eps, norm="linf", steps=20, alpha=None, random_start=True, seed=0):
    """Projected gradient descent: ``steps`` steps of size ``alpha`` (default 2.5 * eps / steps),
    each followed by projection onto the eps-ball around x and onto [0, 1].

    With ``random_start`` the first iterate is x + project_ball(eps * r) clamped to [0, 1],
    r uniform in [-1, 1] drawn on the CPU from a generator seeded with ``seed``. Shapes as
    fgsm; returns x_adv in the eps-ball of x and in [0, 1], detached.
    """
    ### BEGIN SOLUTION: start at x (or the random start), then loop: step along steepest_direction, project the change with project_ball, clamp to [0, 1]
    alpha = 2.5 * eps / steps if alpha is None else alpha
    delta = torch.zeros_like(x)
    if random_start:
        g = torch.Generator().manual_seed(seed)
        r = torch.rand(x.shape, generator=g).to(x.device) * 2 - 1
        delta = project_ball(eps * r, eps, norm)
    x_adv = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv + alpha * steepest_direction(loss_gradient(model, x_adv, y), norm)
        x_adv = (x + project_ball(x_adv - x, eps, norm)).clamp(0.0, 1.0)
    return x_adv.detach()
    ### END SOLUTION


# %% [markdown]
# ## Self-checks
#
# A toy problem: three classes of 8x8 images, a small MLP, and a ripple on its logits that
# hardly changes a prediction but dominates the local gradient (see
# `rmd_course.toys.RippleClassifier`). The cells below raise `NotImplementedError` until you
# have written the functions.

# %%
x, y = toy_images(320, seed=0)
model = RippleClassifier(toy_classifier(x[:256], y[:256]), shape=(1, 8, 8), classes=3)
x_test, y_test = x[256:], y[256:]


def accuracy(model, x, y):
    return (model(x).argmax(dim=1) == y).float().mean().item()


print(f"clean accuracy: {accuracy(model, x_test, y_test):.2f}")

# %%
eps = 0.05
x_inner = x_test.clamp(eps, 1 - eps)  # no pixel can be clipped at 0 or 1
delta = fgsm(model, x_inner, y_test, eps) - x_inner
assert torch.allclose(delta.abs(), torch.full_like(delta, eps), atol=1e-6), "L-inf FGSM moves every pixel by eps"
delta = fgsm(model, x_inner, y_test, eps, norm="l2") - x_inner
assert torch.allclose(delta.flatten(1).norm(dim=1), torch.tensor(eps), atol=1e-5), "L2 FGSM has norm eps"
print("FGSM: ok")

# %%
for norm, eps in [("linf", 0.06), ("l2", 0.6)]:
    x_f = fgsm(model, x_test, y_test, eps, norm=norm)
    x_p = pgd(model, x_test, y_test, eps, norm=norm)
    size = (x_p - x_test).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1).max()
    assert size <= eps + 1e-5 and 0 <= x_p.min() and x_p.max() <= 1, "PGD leaves the budget"
    print(f"{norm} eps={eps}: accuracy clean {accuracy(model, x_test, y_test):.2f}, "
          f"FGSM {accuracy(model, x_f, y_test):.2f}, PGD {accuracy(model, x_p, y_test):.2f}")

# %% [markdown]
# PGD should leave clearly fewer images correctly classified than FGSM: the ripple sends
# FGSM's single step in a direction that says little about the loss a step of size
# $\epsilon$ away, while PGD's small steps follow the loss. A defense evaluated with FGSM
# alone can look robust for this reason only.
