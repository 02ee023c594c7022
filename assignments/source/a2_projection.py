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
# # Assignment 2: projection onto a generator's range
#
# Invert-and-classify (INC) replaces an image $x$ by the closest image the generator $G$ can
# make, and classifies that. Finding it is an optimisation in latent space,
#
# $$z^\star = \arg\min_z \; \ell(z), \qquad \ell(z) = \tfrac{1}{P}\,\|G(z) - x\|_2^2 ,$$
#
# with $P$ the number of pixels. $\ell$ is not convex: gradient descent from one start can stop
# in a local minimum, so the projection runs from $R$ random starts and keeps the best. You
# will write it the way it must run on a GPU: every restart of every image in **one** tensor of
# latents, one forward pass of $G$ per step, no Python loop over images or restarts.
#
# Read `rmd_lib/projection.py` for the book's version (with pruning and early stopping); do
# not call it.
#
# **Grading.** Write the bodies of the functions marked *graded*; each is tested on its own.
# Only your imports, functions, classes and upper-case constants are graded, not the cells
# that run them. Public tests: save the notebook and run
# `pytest grading/test_a2_projection.py --submission a2_projection.ipynb` in the release
# folder. Submit this notebook as `a2_projection.ipynb`.

# %%
# On Colab, install the book's library first.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+https://github.com/rmd-course/robust-manifold-defense-book"], check=True)

# %%
import torch

from rmd_course.toys import ToyGenerator, toy_range_classifier

# %% [markdown]
# ## 1. The loss, one value per row (graded)
#
# Row $b$ of `z` is scored against row $b$ of `x`. Keeping the loss per row, rather than one
# number for the batch, is what lets a single batch hold many independent problems.

# %%
def latent_mse(G, z, x):
    """Per-row mean squared pixel error between G(z) and x.

    G: maps (B, d) latents to (B, C, H, W) images. z: (B, d); x: (B, C, H, W).
    Returns (B,): row b is ||G(z_b) - x_b||^2 / (C * H * W). Differentiable in z.
    """
    ### BEGIN SOLUTION: (G(z) - x) squared, flattened per row, then the mean over each row
    return (G(z) - x).flatten(1).pow(2).mean(dim=1)
    ### END SOLUTION


# %% [markdown]
# ## 2. Adam on a batch of independent problems (graded)
#
# Minimise $\sum_b \ell_b(z_b)$: since row $b$'s loss depends on $z_b$ only, its gradient with
# respect to $z_b$ is that of $\ell_b$ alone, and Adam, which works coordinate by coordinate,
# then runs every row exactly as if it were alone. Use `torch.optim.Adam` (default betas) on a
# copy of `z0`. Compute the gradient with respect to the latents only (`torch.autograd.grad`),
# so that a generator's own parameters never collect gradients.

# %%
def descend(G, x, z0, steps=200, lr=0.1):
    """Adam on all rows at once, minimising the sum over rows of latent_mse(G, z, x).

    x: (B, C, H, W) targets; z0: (B, d) starting latents (left unchanged); ``steps`` Adam
    steps of learning rate ``lr``, one call of G each. Returns the final latents (B, d),
    detached.
    """
    ### BEGIN SOLUTION: z = z0 copy with requires_grad; torch.optim.Adam([z], lr); each step set z.grad from torch.autograd.grad(latent_mse(...).sum(), z) and opt.step()
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            z.grad, = torch.autograd.grad(latent_mse(G, z, x).sum(), z)
            opt.step()
    return z.detach()
    ### END SOLUTION


# %% [markdown]
# ## 3. Projection with random restarts (graded)
#
# For $N$ images and $R$ restarts, draw the $N R$ starting latents as one
# `torch.randn(N * R, d, generator=torch.Generator().manual_seed(seed))` (on the CPU, then
# moved to `x`'s device), let row $iR + r$ be restart $r$ of image $i$ (`repeat_interleave`
# gives the matching targets), run **your** `descend` once on all of them, and keep for each
# image the restart with the lowest final loss.

# %%
def project(G, x, restarts=10, steps=200, lr=0.1, seed=0):
    """Project images onto the range of G: the best of ``restarts`` Adam runs per image.

    G: (B, d) latents to images shaped like x; G.latent_dim is d. x: (N, C, H, W) in [0, 1].
    Calls descend once on all N * restarts rows. Returns z (N, d), the best restart's final
    latent per image, and mse (N,), its latent_mse.
    """
    ### BEGIN SOLUTION: draw N*R starts, repeat_interleave x, one descend call, latent_mse per row, view as (N, R), argmin per image, gather rows i*R + best
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n * restarts, G.latent_dim, generator=g).to(x.device)
    x_rep = x.repeat_interleave(restarts, dim=0)
    z = descend(G, x_rep, z0, steps, lr)
    with torch.no_grad():
        mse = latent_mse(G, z, x_rep).view(n, restarts)
    best = mse.argmin(dim=1)
    return z[torch.arange(n, device=z.device) * restarts + best], mse.min(dim=1).values
    ### END SOLUTION


# %% [markdown]
# ## 4. Invert and classify (graded)

# %%
def invert_and_classify(G, classifier, x, restarts=10, steps=200, lr=0.1, seed=0):
    """INC: the classifier's labels for the projections G(z*) of x.

    x: (N, C, H, W) in [0, 1]; the other arguments go to project. Returns (N,) int64 labels.
    """
    ### BEGIN SOLUTION: z from project(...), then classifier(G(z)).argmax(dim=1) without gradients
    z, _ = project(G, x, restarts, steps, lr, seed)
    with torch.no_grad():
        return classifier(G(z)).argmax(dim=1)
    ### END SOLUTION


# %% [markdown]
# ## Self-checks
#
# Two toy generators on 8x8 images with a 2-dimensional latent space
# (`rmd_course.toys.ToyGenerator`): a smooth one, and a folded one (`wiggle=1`) whose loss
# has many local minima. The cells raise `NotImplementedError` until your functions exist.

# %%
smooth = ToyGenerator(latent_dim=2, seed=1)
folded = ToyGenerator(latent_dim=2, wiggle=1.0, seed=1)
z_true = torch.randn(32, 2, generator=torch.Generator().manual_seed(5))

with torch.no_grad():
    x_smooth = smooth(z_true)
z, mse = project(smooth, x_smooth, restarts=4)
print(f"smooth G: median MSE {mse.median():.1e}, median latent error "
      f"{(z - z_true).norm(dim=1).median():.1e}")
assert mse.max() < 1e-6, "a point of the range should be recovered exactly"

# %%
with torch.no_grad():
    x_folded = folded(z_true)
for restarts in (1, 4, 16):
    _, mse = project(folded, x_folded, restarts=restarts)
    print(f"folded G, {restarts:2d} restarts: mean MSE {mse.mean():.1e}, "
          f"share recovered {(mse < 1e-4).float().mean():.2f}")

# %%
classifier = toy_range_classifier(smooth)
noisy = (x_smooth + 0.1 * torch.randn(x_smooth.shape, generator=torch.Generator().manual_seed(6))).clamp(0, 1)
z, _ = project(smooth, noisy, restarts=4)
with torch.no_grad():
    print(f"MSE to the clean images: noisy {((noisy - x_smooth) ** 2).mean():.1e}, "
          f"projected {((smooth(z) - x_smooth) ** 2).mean():.1e}")
    kept = invert_and_classify(smooth, classifier, noisy, restarts=4) == classifier(x_smooth).argmax(dim=1)
print(f"INC keeps the clean label of {kept.float().mean():.2f} of the noisy images")

# %% [markdown]
# With one restart most images of the folded generator are left in a local minimum; more
# restarts buy a better fit at a cost linear in $R$, which one batch pays in parallel. The
# projection of a noisy image is much closer to the clean image than the noisy image is: the
# noise that leaves the range is removed, which is what INC relies on.
