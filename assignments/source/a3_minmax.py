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
# # Assignment 3: the overpowered min-max attack
#
# A projection defense returns an image of the generator's range unchanged. So if two images
# of the range, $G(z_1)$ and $G(z_2)$, are close but classified differently, no projection can
# save the classifier: an attacker who starts at one may move to the other. The overpowered
# attack searches for such pairs, per pair solving
#
# $$\max_{z_1, z_2} \; D\big(C(G(z_1)), C(G(z_2))\big) \quad \text{subject to} \quad
#   \|G(z_1) - G(z_2)\|_2 \le \epsilon ,$$
#
# with $D$ the symmetric KL divergence of the two softmax outputs,
# $D(p, q) = \mathrm{KL}(p\|q) + \mathrm{KL}(q\|p) = \sum_k (p_k - q_k)(\log p_k - \log q_k)$.
#
# You will handle the constraint with a Lagrange multiplier $\lambda \ge 0$ per pair: Adam
# *descends* on $-D + \lambda\,\max(0, \|G(z_1) - G(z_2)\|_2 - \epsilon)$ in $(z_1, z_2)$, and
# after each step $\lambda$ *ascends*, $\lambda \leftarrow \max(0, \lambda + \rho\,(d - \epsilon))$,
# growing while the pair is too far apart and shrinking when it is inside the budget. All
# pairs are one batch. Read `rmd_lib/attacks/minmax.py` for the book's version; do not call it.
#
# **Grading.** Write the bodies of the functions marked *graded*; each is tested on its own.
# Only your imports, functions, classes and upper-case constants are graded. Public tests:
# save the notebook and run `pytest grading/test_a3_minmax.py --submission a3_minmax.ipynb`
# in the release folder. Submit this notebook as `a3_minmax.ipynb`.

# %%
# On Colab, install the book's library first.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+https://github.com/rmd-course/robust-manifold-defense-book"], check=True)

# %%
import torch

from rmd_course.toys import ToyGenerator, random_pairs_at_budget, toy_range_classifier

# %% [markdown]
# ## 1. The divergence (graded)
#
# Compute it from `log_softmax`, never from `softmax` followed by `log`: a confident
# classifier's small probabilities underflow to 0 and their log to $-\infty$.

# %%
def sym_kl(logits1, logits2):
    """Symmetric KL divergence KL(p1 || p2) + KL(p2 || p1) of the softmax of two logit rows.

    logits1, logits2: (N, K). Returns (N,), >= 0, 0 where the two distributions are equal;
    differentiable; finite for any finite logits.
    """
    ### BEGIN SOLUTION: lp = log_softmax of each; sum over classes of (exp(lp1) - exp(lp2)) * (lp1 - lp2)
    lp1, lp2 = logits1.log_softmax(dim=1), logits2.log_softmax(dim=1)
    return ((lp1.exp() - lp2.exp()) * (lp1 - lp2)).sum(dim=1)
    ### END SOLUTION


# %% [markdown]
# ## 2. The two terms of a pair (graded)

# %%
def pair_terms(G, C, z1, z2):
    """Distance and divergence of the pairs (G(z1), G(z2)).

    G: (N, d) latents to (N, C, H, W) images; C: images to (N, K) logits; z1, z2: (N, d).
    Returns (distance, divergence), each (N,): ||G(z1) - G(z2)||_2 per pair (over all pixels)
    and sym_kl(C(G(z1)), C(G(z2))). Both differentiable in z1 and z2.
    """
    ### BEGIN SOLUTION: x1, x2 = G(z1), G(z2); the per-row L2 norm of x1 - x2; sym_kl of C(x1), C(x2)
    x1, x2 = G(z1), G(z2)
    return (x1 - x2).flatten(1).norm(dim=1), sym_kl(C(x1), C(x2))
    ### END SOLUTION


# %% [markdown]
# ## 3. The search (graded)
#
# Start each pair at $z_1$ from the prior and $z_2 = z_1 + 0.01\,n$ (prior noise $n$), so that
# it starts inside the budget. The last iterate of a pair may sit slightly outside the budget
# (the multiplier only pushes back once it is out), so keep each pair's **best valid iterate**:
# the one of largest divergence among those with distance $\le \epsilon$. The pair
# $(z_1, z_1)$ is always valid (distance 0), which makes a sensible initial "best".

# %%
def minmax_pairs(G, C, eps, n=64, steps=200, lr=0.05, lam_init=1.0, lam_rate=1.0, seed=0):
    """Search n pairs (z1, z2) with ||G(z1) - G(z2)||_2 <= eps whose classifications differ most.

    G: latents to images, with G.latent_dim and G.sample_latent(n, generator=...); C: images
    to logits. Latents are drawn with G.sample_latent and a torch.Generator seeded with
    ``seed``. Adam (learning rate ``lr``) on both latents of all pairs at once, one multiplier
    per pair starting at ``lam_init`` and raised by ``lam_rate * (distance - eps)`` after each
    step (never below 0). Returns z1, z2 (n, d), each pair's best valid iterate, detached:
    every pair satisfies the budget.
    """
    ### BEGIN SOLUTION: z1, z2 leaves with requires_grad, one Adam over both; each step: pair_terms, update the best valid pair under no_grad, grads of sum(-div + lam * relu(dist - eps)), opt.step(), dual ascent on lam; score the final iterate too
    g = torch.Generator().manual_seed(seed)
    z1 = G.sample_latent(n, generator=g)
    z2 = (z1 + 0.01 * G.sample_latent(n, generator=g)).requires_grad_(True)
    z1.requires_grad_(True)
    opt = torch.optim.Adam([z1, z2], lr=lr)
    lam = torch.full((n,), float(lam_init), device=z1.device)
    best = torch.zeros(n, device=z1.device)  # (z1, z1): distance 0, divergence 0
    best1, best2 = z1.detach().clone(), z1.detach().clone()
    with torch.enable_grad():
        for t in range(steps + 1):  # the last pass only scores the final iterate
            dist, div = pair_terms(G, C, z1, z2)
            with torch.no_grad():
                better = (dist <= eps) & (div > best)
                best = torch.where(better, div, best)
                best1[better], best2[better] = z1[better], z2[better]
            if t == steps:
                break
            loss = -div + lam * (dist - eps).clamp(min=0)
            z1.grad, z2.grad = torch.autograd.grad(loss.sum(), [z1, z2])
            opt.step()
            lam = (lam + lam_rate * (dist.detach() - eps)).clamp(min=0)
    return best1, best2
    ### END SOLUTION


# %% [markdown]
# ## Self-checks
#
# A smooth toy generator with a 2-dimensional latent space and a classifier of its images
# whose label is the sign of $z_0$ (`rmd_course.toys.toy_range_classifier`). The baseline is
# random pairs *at* the budget (`rmd_course.toys.random_pairs_at_budget`): a random start
# and a random latent direction, scaled by bisection until the two images are exactly
# $\epsilon$ apart. The cells raise `NotImplementedError` until your functions exist.

# %%
G = ToyGenerator(latent_dim=2, seed=1)
C = toy_range_classifier(G)
eps = 0.6


z1, z2 = minmax_pairs(G, C, eps)
r1, r2 = random_pairs_at_budget(G, eps, 64, seed=9)
max_dist = {}
with torch.no_grad():
    for name, (a, b) in {"min-max": (z1, z2), "random": (r1, r2)}.items():
        dist, div = pair_terms(G, C, a, b)
        max_dist[name] = dist.max().item()
        differ = (C(G(a)).argmax(1) != C(G(b)).argmax(1)).float().mean()
        print(f"{name:8s} pairs: max distance {dist.max():.3f} (eps {eps}), mean divergence "
              f"{div.mean():.2f}, labels differ {differ:.2f}")
# Your pairs, not the baseline's, must respect the budget.
assert max_dist["min-max"] <= eps + 1e-5, f"a min-max pair is {max_dist['min-max']:.4f} apart"

# %% [markdown]
# The min-max pairs use the same budget as the random ones but sit across the classifier's
# decision boundary, within the range of $G$. That the search finds them at all is the
# point: the classifier is not robust *on the manifold*, whatever projection is put in front.
