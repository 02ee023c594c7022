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
# # Assignment 4: evaluating a defense adaptively with BPDA
#
# Many defenses put a non-differentiable step $d$ in front of the classifier $C$: a projection
# onto a generator's range, a denoiser, or here **quantisation**, rounding each pixel to one of
# a few levels. The defended model is $x \mapsto C(d(x))$, and its gradient is useless: zero
# almost everywhere for rounding, not even defined for a projection run to convergence.
#
# Two attacks that look reasonable both overrate such a defense:
#
# - a **white-box attack on the defended model**, which gets zero gradients and does not move;
# - a **transfer attack**, crafted on $C$ alone and then fed to $C \circ d$, which ignores
#   the defense entirely.
#
# BPDA (backward-pass differentiable approximation, Athalye et al. 2018) keeps the true forward
# pass and replaces $d$'s Jacobian by the identity on the way back, since $d(x) \approx x$:
#
# $$\text{forward: } d(x), \qquad \text{backward: } \frac{\partial d(x)}{\partial x} := I .$$
#
# The attack's gradient is then $\nabla C$ evaluated at $d(x)$, the point that is actually
# classified. Read `rmd_lib/attacks/adaptive.py` for the book's version (on INC); do not call it.
#
# **Grading.** Write the bodies of the functions marked *graded*; each is tested on its own.
# Only your imports, functions, classes and upper-case constants are graded. Public tests: save
# the notebook and run `pytest grading/test_a4_bpda.py --submission a4_bpda.ipynb` in the
# release folder. Submit this notebook as `a4_bpda.ipynb`.

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

from rmd_course.toys import OffGridClassifier, quantize, toy_classifier, toy_images

# %% [markdown]
# ## 1. The BPDA wrapper (graded)
#
# One line does it: $x + \operatorname{stopgrad}(d(x) - x)$ has the value $d(x)$, and its
# derivative with respect to $x$ is that of $x$, the identity.

# %%
def bpda(defense, x):
    """Apply ``defense`` with the identity as its backward pass.

    defense: any function of images (N, C, H, W) to images of the same shape, differentiable
    or not. x: (N, C, H, W). Returns a tensor equal to defense(x) whose gradient with respect
    to x is the incoming gradient unchanged.
    """
    ### BEGIN SOLUTION: x + (defense(x) - x).detach()
    return x + (defense(x) - x).detach()
    ### END SOLUTION


# %% [markdown]
# ## 2. An L-infinity PGD for any model (graded)
#
# Like assignment 1's, without random start (so that the comparison below is deterministic):
# from $x_0 = x$, $x_{t+1} = \operatorname{clip}_{[0,1]}(\operatorname{clip}_{[x-\epsilon, x+\epsilon]}
# (x_t + \alpha \operatorname{sign} g_t))$ with $g_t$ the gradient of the summed cross-entropy
# at $x_t$ and $\alpha = 2.5\,\epsilon / T$ by default.

# %%
def pgd_linf(model, x, y, eps, steps=20, alpha=None):
    """L-infinity PGD without random start against any differentiable ``model`` (images to logits).

    x: (N, C, H, W) in [0, 1]; y: (N,) labels; ``steps`` signed steps of size ``alpha``
    (default 2.5 * eps / steps). Returns x_adv with |x_adv - x| <= eps per pixel and values in
    [0, 1], detached. Does not modify x.
    """
    ### BEGIN SOLUTION: loop: gradient of the summed cross-entropy at x_adv, step alpha * sign, clamp to [x - eps, x + eps] and to [0, 1]
    alpha = 2.5 * eps / steps if alpha is None else alpha
    x = x.detach()
    x_adv = x.clone()
    for _ in range(steps):
        x_req = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
        x_adv = x_adv + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()
    ### END SOLUTION


# %% [markdown]
# ## 3. The attack through the defense, and the evaluation (graded)

# %%
def bpda_attack(defense, classifier, x, y, eps, steps=20, alpha=None):
    """PGD (pgd_linf) on the defended model x -> classifier(bpda(defense, x)).

    Shapes as pgd_linf. Returns x_adv within eps of x (L-infinity) and in [0, 1].
    """
    ### BEGIN SOLUTION: pgd_linf on lambda a: classifier(bpda(defense, a))
    return pgd_linf(lambda a: classifier(bpda(defense, a)), x, y, eps, steps, alpha)
    ### END SOLUTION


def defended_accuracy(defense, classifier, x, y):
    """Share of images whose defended prediction classifier(defense(x)) is y: a float in [0, 1]."""
    ### BEGIN SOLUTION: argmax of classifier(defense(x)) compared with y, mean as a Python float, without gradients
    with torch.no_grad():
        return (classifier(defense(x)).argmax(dim=1) == y).float().mean().item()
    ### END SOLUTION


def evaluate_defense(defense, classifier, x, y, eps, steps=20):
    """Accuracy of the defended model on clean images and under two attacks of budget eps.

    Returns {"clean": ..., "transfer": ..., "bpda": ...}, floats in [0, 1]: defended accuracy
    on x, on pgd_linf crafted on the classifier alone, and on bpda_attack.
    """
    ### BEGIN SOLUTION: three defended_accuracy calls: on x, on pgd_linf(classifier, ...), on bpda_attack(...)
    return {"clean": defended_accuracy(defense, classifier, x, y),
            "transfer": defended_accuracy(defense, classifier, pgd_linf(classifier, x, y, eps, steps), y),
            "bpda": defended_accuracy(defense, classifier, bpda_attack(defense, classifier, x, y, eps, steps), y)}
    ### END SOLUTION


# %% [markdown]
# ## Self-checks
#
# The defense rounds pixels to 5 levels (`rmd_course.toys.quantize`). Its classifier was fit to
# quantised images only, so nothing constrains it between grid points;
# `rmd_course.toys.OffGridClassifier` makes that concrete with a term that vanishes, with its
# gradient, on the grid and dominates off it. Behind the defense the term is invisible. The
# cells raise `NotImplementedError` until your functions exist.

# %%
LEVELS = 5
x, y = toy_images(320, spread=0.15, noise=0.15, seed=0)
base = toy_classifier(quantize(x[:256], LEVELS), y[:256])
classifier = OffGridClassifier(base, shape=(1, 8, 8), classes=3, levels=LEVELS)
x_test, y_test = x[256:], y[256:]


def defense(a):
    return quantize(a, LEVELS)


probe = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
out = bpda(defense, probe)
assert torch.allclose(out, defense(probe)), "the forward pass must be the defense"
weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
(out * weights).sum().backward()
assert torch.allclose(probe.grad, weights), "the backward pass must be the identity"
print("BPDA wrapper: ok")

# %%
eps = 0.2
naive = pgd_linf(lambda a: classifier(defense(a)), x_test, y_test, eps)  # zero gradients
print(f"naive white-box attack moved the images by {(naive - x_test).abs().max():.2f}")
for name, acc in evaluate_defense(defense, classifier, x_test, y_test, eps).items():
    print(f"defended accuracy, {name:8s}: {acc:.2f}")

# %% [markdown]
# The transfer attack leaves most images correctly classified, and a report based on it would
# call the defense robust. BPDA, with the same budget and the same number of steps, brings the
# accuracy near zero: the defense never was robust, it only hid its gradient. Evaluate every
# defense with an attack that knows it.
