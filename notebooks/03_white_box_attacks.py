# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # White-box attacks on invert-and-classify
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/03_white_box_attacks.ipynb)
#
# The previous chapter attacked only the classifier and fed the result to INC. An attacker
# who knows the whole defense, generator and projection included, can do better in
# principle. This chapter tries the two obvious white-box routes and measures what they
# buy:
#
# 1. the **Carlini–Wagner attack** {cite:p}`carlini2017towards`, an optimisation attack on
#    the classifier alone, with a confidence margin $\kappa$ that makes its examples
#    survive more processing;
# 2. **differentiating through the projection**: run a fresh $k$-step latent-space descent
#    inside the attacked model, keep all $k$ steps in the autograd graph, and
#    back-propagate through them.
#
# A projection of thousands of steps is costly to differentiate through, and it is
# tempting to read that cost as robustness. This chapter measures, at our budget, what
# differentiating through the projection costs and what it buys against INC
# {cite:p}`ilyas2017robust`. It first writes the first-order attacks of
# {doc}`02_invert_and_classify`, CW and the unrolled projection as short functions, each
# checked against the library.
#
# ```{admonition} In this chapter
# :class: note
# **You will learn** FGSM, BIM and PGD in $L_\infty$ and $L_2$ as a dozen lines each; the
# Carlini–Wagner objective with its change of variables; how to differentiate through an
# optimisation loop (unrolling) and what it costs; and how to compare a white-box and a
# transfer attack on the same images.
#
# **You need** {doc}`02_invert_and_classify` (INC and the first-order attacks); the chain
# rule through an iterative algorithm, and the Adam update.
#
# **Time:** about 40 minutes to read. Running it takes under a minute in `smoke` and
# {glue:text}`time_standard` in `standard` (CW and the unrolled gradients are most of
# it). `colab` is sized for 10 minutes on a Colab T4 and `paper` takes hours on one 80
# GB GPU (both estimates, not yet measured). The banner of a run gives its own time.
#
# **Practice:** assignment 1 (`assignments/source/a1_first_order.py`) has you write FGSM
# and PGD in both norms, graded by tests.
# ```

# %% tags=["remove-cell"]
# On Colab, install the book's library first (locally, `make book` has installed it).
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+https://github.com/rmd-course/robust-manifold-defense-book"],
                   check=True)

# %% tags=["parameters"]
profile = "auto"   # "smoke" (CI), "standard" (CPU), "colab" (a T4), "paper"; "auto"
seed = 0
dataset = "all"    # "mnist", "fashion_mnist", a comma-separated list, or "all"
device = "auto"    # "auto", "cpu" or "cuda"
data_dir = None    # None: $RMD_DATA_DIR, else the repository's data/ folder
results_dir = None  # None: the repository's results/ folder
cache_dir = None   # None: <data_dir>/cache; trained models are reused from here
generator = "vae"  # the generator INC projects onto: "vae" or "gan"

# %%
import copy
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from rmd_lib.attack_tables import cw_table, unrolled_table
from rmd_lib.attacks import UnrolledINC, bim, cw_l2, fgsm, input_gradient, pgd
from rmd_lib.attacks.first_order import ball_sample
from rmd_lib.data import dataset_names
from rmd_lib.evaluation import markdown_table, paired_difference, start_run
from rmd_lib.experiment import prepare
from rmd_lib.intervals import difference_text, error_bars, interval_text, with_intervals
from rmd_lib.plotting import image_grid, set_style
from rmd_lib.projection import sample_prior
from rmd_lib.randomness import per_image

try:
    from myst_nb import glue  # the book pastes these values into the text
except ImportError:  # on Colab the book's extras are not installed
    def glue(name, value, display=True):
        pass

set_style()
run = start_run("white_box_attacks", profile, seed, device, results_dir)
P, dev = run.profile, run.device
names = dataset_names(dataset)
setups = prepare(run, names, generator=generator, data_dir=data_dir,
                 cache_dir=cache_dir)
inc = {name: s.inc(P, seed) for name, s in setups.items()}
xy = {name: s.test_images(P.n_adaptive, dev) for name, s in setups.items()}

# %% tags=["remove-input"]
run.banner()

# %% [markdown]
# ## The first-order attacks, on the page
#
# {doc}`02_invert_and_classify` wrote the iteration that FGSM, BIM and PGD share:
# $x^{t+1} = \Pi_{\mathcal B_\varepsilon(x) \cap [0, 1]^n}\big(x^t + \alpha\,
# u(\nabla_x \ell(C(x^t), y))\big)$, with $u(g) = \operatorname{sign}(g)$ in $L_\infty$
# and $u(g) = g / \lVert g \rVert_2$ in $L_2$. The projection onto the ball is
#
# $$
# \Pi_\infty(\delta) = \operatorname{clip}(\delta, -\varepsilon, \varepsilon), \qquad
# \Pi_2(\delta) = \delta \cdot \min\!\big(1, \varepsilon / \lVert \delta \rVert_2\big),
# $$
#
# applied to $\delta = x^{t+1} - x$, then a clip to $[0, 1]$. PGD's random start is a
# point drawn uniformly from the ball: uniform in the cube for $L_\infty$; for $L_2$ a
# uniform direction times a radius $\varepsilon\, U^{1/D}$ in $D$ dimensions, since the
# volume within radius $r$ grows as $r^D$. Written for reading, with each image's start
# drawn from its own random stream:

# %%
def loss_gradient(model, x, y):
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)[0]


def unit(g, norm):
    """The steepest-ascent direction of unit norm: sign(g) (L-inf), g / ||g||_2 (L2)."""
    if norm == "linf":
        return g.sign()
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def project_ball(delta, eps, norm):
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale.view(-1, 1, 1, 1)


def fgsm_reference(model, x, y, eps, norm="linf"):
    return (x + eps * unit(loss_gradient(model, x, y), norm)).clamp(0, 1)


def pgd_reference(model, x, y, eps, norm="linf", steps=10, start=None):
    """PGD from x + start (start (N, ...) in the eps-ball); BIM is start=None."""
    alpha = 2.5 * eps / steps
    x_adv = x if start is None else (x + start).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv + alpha * unit(loss_gradient(model, x_adv, y), norm)
        x_adv = (x + project_ball(x_adv - x, eps, norm)).clamp(0, 1)
    return x_adv


# %% [markdown]
# The check runs these and the library's `fgsm`, `bim` and `pgd` on a few test images in
# double precision, at budgets of both norms, with PGD's starts drawn from the same
# per-image streams (`per_image` and `ball_sample`, as the library draws them). The two
# compute the same operations in the same order, so they should agree to the last bit
# but for rounding; the tolerance on the largest pixel difference, $10^{-9}$, is far
# below a single step of size $\alpha$.

# %%
s0 = setups[names[0]]
C64 = copy.deepcopy(s0.classifier).double()
x_chk, y_chk = (v[:4] for v in xy[names[0]])
x_chk = x_chk.double()
n_chk, k_chk = len(x_chk), P.bim_steps
fo_gaps = {}
for norm, eps in (("linf", 0.3), ("l2", 3.0)):
    start = eps * per_image(lambda g: ball_sample(x_chk.shape[1:], norm, g), seed,
                            torch.arange(n_chk)).to(dev, torch.float64)
    pairs = {
        "FGSM": (fgsm(C64, x_chk, y_chk, eps, norm=norm),
                 fgsm_reference(C64, x_chk, y_chk, eps, norm)),
        "BIM": (bim(C64, x_chk, y_chk, eps, norm=norm, steps=k_chk),
                pgd_reference(C64, x_chk, y_chk, eps, norm, k_chk)),
        "PGD": (pgd(C64, x_chk, y_chk, eps, norm=norm, steps=k_chk, seed=seed),
                pgd_reference(C64, x_chk, y_chk, eps, norm, k_chk, start)),
    }
    for attack, (lib, ref) in pairs.items():
        fo_gaps[attack, norm] = (lib - ref).abs().max().item()
        print(f"{attack} {norm} {eps:g}: largest pixel difference, reference vs "
              f"library {fo_gaps[attack, norm]:.1e}")
assert max(fo_gaps.values()) < 1e-9, f"reference and library attacks differ: {fo_gaps}"
glue("fo_gap", f"{max(fo_gaps.values()):.1e}", display=False)
glue("n_chk", n_chk, display=False)

# %% [markdown]
# On {glue:text}`n_chk` test images the largest pixel difference over the three attacks
# and two norms is {glue:text}`fo_gap`.

# %% [markdown]
# ## Carlini–Wagner against the classifier and against INC
#
# CW looks for the *smallest* $L_2$ perturbation that changes the label,
#
# $$ \min_{w}\; \lVert x' - x \rVert_2^2 + c\, \max\!\big(Z(x')_y - \max_{i\ne y} Z(x')_i,\; -\kappa\big),
#    \qquad x' = \tfrac12(\tanh w + 1), $$
#
# where $Z$ are the classifier's logits {cite:p}`carlini2017towards`. The change of
# variables $x' = \tfrac12(\tanh w + 1)$ keeps every pixel in $[0, 1]$ without clipping,
# so plain Adam on $w$ solves the problem for a fixed $c$; a binary search per image then
# looks for the smallest $c$ that succeeds (here: multiply by 10 while no success is
# known, then halve the interval). With $\kappa = 0$ the example only just crosses the
# decision boundary; a larger $\kappa$ demands that the wrong class win by a margin, at
# the price of a larger perturbation. For one fixed $c$, written for reading:

# %%
def cw_fixed_c(model, x, y, c, kappa=0.0, steps=100, lr=0.05):
    """CW L2 for one constant c: the adversarial x' of least L2 found, else x itself."""
    w = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    best, best_l2 = x.clone(), torch.full((len(x),), math.inf, dtype=x.dtype)
    for _ in range(steps):
        x_adv = (torch.tanh(w) + 1) / 2
        logits = model(x_adv)
        l2 = (x_adv - x).flatten(1).pow(2).sum(1)
        other = logits.scatter(1, y[:, None], -math.inf).amax(1)  # max over i != y
        margin = (logits.gather(1, y[:, None]).squeeze(1) - other).clamp(min=-kappa)
        opt.zero_grad()
        (l2 + c * margin).sum().backward()
        opt.step()
        with torch.no_grad():  # keep the closest x' adversarial with margin kappa
            hit = (logits.argmax(1) != y) & (margin <= -kappa + 1e-12) & (l2 < best_l2)
            best[hit], best_l2[hit] = x_adv[hit], l2[hit]
    return best.detach()


# %% [markdown]
# The library's `cw_l2` with a single round of the binary search at $c = 1$ is this
# function; the check compares the two on the same images in double precision (same
# tolerance as above, $10^{-9}$ on pixels, for the same reason). Then the table runs the
# library with the binary search. The examples are crafted on the classifier and given
# to INC: the projection has to move them back across the boundary. Look at the INC
# column as $\kappa$ grows, and at the distance it costs; accuracies carry their 95%
# Wilson intervals, and `found` is the share of the images the classifier got right for
# which CW found an adversarial example.

# %%
cw_gap = 0.0
for kappa in P.cw_kappas:
    lib = cw_l2(C64, x_chk, y_chk, kappa=kappa, steps=P.cw_steps, binary_steps=1,
                c_init=1.0)
    ref = cw_fixed_c(C64, x_chk, y_chk, 1.0, kappa=kappa, steps=P.cw_steps)
    cw_gap = max(cw_gap, (lib - ref).abs().max().item())
print(f"CW, c = 1: largest pixel difference, reference vs library {cw_gap:.1e}")
assert cw_gap < 1e-9, f"reference and library CW differ by {cw_gap:.1e}"
glue("cw_gap", f"{cw_gap:.1e}", display=False)

cw, cw_outcomes = {}, {}
with run.timer("cw"):
    for name in names:
        cw_outcomes[name] = {}
        cw[name] = cw_table(setups[name].classifier, inc[name], *xy[name], P.cw_kappas,
                            steps=P.cw_steps, binary_steps=P.cw_binary_steps,
                            outcomes=cw_outcomes[name])
for name in names:
    shown = with_intervals(cw[name], ["classifier", "INC"], P.n_adaptive)
    display(Markdown(f"**{name}** ({P.n_adaptive} test images; CW $L_2$, {P.cw_steps} "
                     f"steps x {P.cw_binary_steps} binary-search rounds)\n\n"
                     + markdown_table(shown)))

# %% [markdown]
# The largest pixel difference between reference and library, over the budgets of
# $\kappa$, is {glue:text}`cw_gap`. INC and the classifier see the same CW images, so
# their comparison is paired: INC's outcome minus the classifier's, per image, with its
# 95% interval.

# %%
cw_paired = {}
for name in names:
    for kappa in P.cw_kappas:
        ok = cw_outcomes[name]
        cw_paired[name, kappa] = paired_difference(ok[kappa, "classifier"],
                                                   ok[kappa, "INC"])
display(Markdown(markdown_table(
    [{"dataset": name, "kappa": kappa,
      "INC minus classifier [95% CI]": difference_text(d),
      "McNemar p": d["p_mcnemar"], "n": d["n"]}
     for (name, kappa), d in cw_paired.items()])))

# %% [markdown]
# What the projection does to a CW example: the original, its CW image at the largest
# $\kappa$, and INC's projection of that. Titles give the predicted labels.

# %%
for name in names:
    x0, y0 = xy[name][0][:8], xy[name][1][:8]
    x_cw = cw_l2(setups[name].classifier, x0, y0, kappa=max(P.cw_kappas),
                 steps=P.cw_steps, binary_steps=P.cw_binary_steps)
    x_proj = inc[name].project(x_cw).x_hat
    rows = [x0, x_cw, x_proj]
    preds = [setups[name].classifier(r).argmax(1).tolist() for r in rows]
    titles = [[str(p) for p in row] for row in preds]
    image_grid(rows,
               row_labels=["original", f"CW, kappa {max(P.cw_kappas):g}", "projection"],
               titles=titles, suptitle=f"{name}: the classifier's label of each image")
    plt.show()

# %% [markdown]
# ## Differentiating through the projection
#
# The projection is a loop, and every step of it is differentiable in $x$. The **unrolled
# attack** replaces INC by a model it can differentiate: on every call it runs a *fresh*
# projection of $k$ steps from fixed starts $z_0$ (drawn once per image from the prior),
# keeps all $k$ steps in the autograd graph, and classifies the end point,
#
# $$
# f_k(x) = C\big(G(z_k(x))\big), \qquad
# z_{t+1}(x) = z_t(x) - \eta\, \frac{\hat m_{t+1}}{\sqrt{\hat v_{t+1} + 10^{-16}}},
# \qquad z_0(x) = z_0 ,
# $$
#
# with $\hat m$, $\hat v$ Adam's bias-corrected moments of the gradients
# $\nabla_z \tfrac1n \lVert G(z_t) - x \rVert^2$. (Adam's $\epsilon$ sits inside the
# root, so that the update has a finite derivative where $\hat v = 0$.) Its input gradient
# $\nabla_x \ell(f_k(x), y)$ is exact, by the chain rule through all $k$ steps; that is
# the gradient PGD follows. Nothing of the defense's own projection is reused: each
# gradient costs a new $k$-step descent, and its backward pass. Written for reading, for
# one start per image:

# %%
def unrolled_gradient(G, C, x, y, z0, k, lr=0.1, betas=(0.9, 0.999)):
    """The input gradient of the cross-entropy of C(G(z_k(x))); z0 (N, d)."""
    x = x.detach().requires_grad_(True)
    z, m, v = z0.clone().requires_grad_(True), 0.0, 0.0
    b1, b2 = betas
    for t in range(1, k + 1):
        mse = (G(z) - x).flatten(1).pow(2).mean(1)
        g, = torch.autograd.grad(mse.sum(), z, create_graph=True)  # a function of x
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        z = z - lr * (m / (1 - b1 ** t)) / (v / (1 - b2 ** t) + 1e-16).sqrt()
    loss = F.cross_entropy(C(G(z)), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]  # back through all k steps


# %% [markdown]
# The check compares it with the input gradient of the library's `UnrolledINC` (one
# restart, the same per-image starts) in double precision, for the largest $k$ of this
# profile; the tolerance, a relative difference of $10^{-6}$, allows for rounding through
# the second derivatives of $k$ steps. Then PGD ($L_\infty$, $\varepsilon =$
# {glue:text}`eps_unroll`, the previous chapter's largest budget) runs on the unrolled
# model for several $k$, and its examples are given to the full INC, which projects with
# its own budget ({glue:text}`inc_budget`) and its own random restarts. The table gives,
# per $k$, the accuracy of the unrolled model on its own adversarial examples (white-box
# success), that of INC on the same images, the seconds one gradient costs, and the
# median norm of that gradient.

# %%
EPS_UNROLL = 0.3
glue("eps_unroll", f"{EPS_UNROLL:g}", display=False)
glue("inc_budget", f"{P.proj_steps} steps from {P.proj_restarts} restarts",
     display=False)
G64 = copy.deepcopy(s0.G).double()
k_max = max(P.unroll_steps)
z0 = per_image(lambda g: sample_prior(G64, 1, g), seed, torch.arange(n_chk))
z0 = z0.view(n_chk, -1).to(dev, torch.float64)
g_lib = input_gradient(UnrolledINC(G64, C64, steps=k_max, restarts=1, seed=seed),
                       x_chk, y_chk)
g_ref = unrolled_gradient(G64, C64, x_chk, y_chk, z0, k_max)
unroll_gap = ((g_ref - g_lib).norm() / g_lib.norm().clamp_min(1e-30)).item()
print(f"unrolled gradient, k = {k_max}: relative difference, reference vs library "
      f"{unroll_gap:.1e}")
assert unroll_gap < 1e-6, f"reference and library gradients differ: {unroll_gap}"
glue("unroll_gap", f"{unroll_gap:.1e}", display=False)
glue("k_max", k_max, display=False)

unrolled, un_outcomes = {}, {}
with run.timer("unrolled"):
    for name in names:
        un_outcomes[name] = {}
        unrolled[name] = unrolled_table(
            setups[name].G, setups[name].classifier, inc[name], *xy[name],
            P.unroll_steps, eps=EPS_UNROLL, restarts=P.unroll_restarts,
            pgd_steps=P.adaptive_steps, outcomes=un_outcomes[name])
for name in names:
    shown = with_intervals(unrolled[name], ["unrolled model", "INC"], P.n_adaptive)
    display(Markdown(f"**{name}** (PGD $L_\\infty$ {EPS_UNROLL}, {P.adaptive_steps} "
                     f"steps, {P.unroll_restarts} restart(s) unrolled, "
                     f"{P.n_adaptive} test images)\n\n"
                     + markdown_table(shown, digits=3)))

# %% [markdown]
# For $k =$ {glue:text}`k_max` the relative difference between the reference and the
# library's gradient is {glue:text}`unroll_gap`.

# %% [markdown]
# Three things to look for.
#
# - **Cost.** The time of one gradient grows linearly with $k$, and so does the memory,
#   because every step's activations are kept for the backward pass. A projection of
#   thousands of steps from several restarts multiplies both.
# - **Gradient size.** Its norm typically falls by orders of magnitude as $k$ grows: the
#   descent forgets where it started, and $x$ acts on the end point only through the steps
#   near convergence. An attack that follows the raw gradient with a fixed step stalls; PGD
#   in $L_\infty$ follows only its sign, which a small norm does not hurt.
# - **Success against the real defense.** A short unrolled descent stops far from the
#   optimum, and the attack can exploit *where it stops*, which INC's longer projection does
#   not share: the unrolled model can be fooled where INC is not. As $k$ approaches INC's
#   own step count the two maps agree more and the examples carry over.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for name in names:
    rows = unrolled[name]
    k = [r["k"] for r in rows]
    for col, fmt, label in (("unrolled model", "o--", "unrolled model"),
                            ("INC", "s-", "full INC")):
        acc = [r[col] for r in rows]
        axes[0].errorbar(k, acc, yerr=error_bars(acc, P.n_adaptive), fmt=fmt, capsize=2,
                         label=f"{name}: {label}")
    axes[1].plot(k, [r["seconds per gradient"] for r in rows], "o-", label=name)
axes[0].set_xscale("log"), axes[1].set_xscale("log")
axes[0].set_xlabel("unrolled projection steps k")
axes[0].set_ylabel("accuracy under attack")
axes[0].set_ylim(0, 1.02), axes[0].legend(fontsize=8)
axes[1].set_xlabel("unrolled projection steps k")
axes[1].set_ylabel("seconds per gradient")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

lines = []
for name in names:
    last = unrolled[name][-1]
    seconds = last["seconds per gradient"]
    acc = interval_text(last["INC"], P.n_adaptive)
    lines.append(f"- **{name}**: unrolling {last['k']} steps (INC itself runs "
                 f"{P.proj_steps} steps from {P.proj_restarts} restarts), one gradient "
                 f"took {seconds:.2g} s for {P.n_adaptive} images, and INC classified "
                 f"{acc} of the attacked images correctly.")
display(Markdown("\n".join(lines)))

# %% [markdown]
# Compare the last figure with INC's accuracy under the transferred attacks of the previous
# chapter. Where it is far lower, differentiating through the projection *works* at this
# budget: what protects INC is then the cost of the gradient, not its absence, and a
# defender who counts on that cost is one faster machine away from being broken. The
# adaptive chapter attacks INC with cheaper surrogates of this gradient.

# %% [markdown]
# ## Takeaways
#
# - FGSM, BIM and PGD are one projected-gradient iteration; they differ in the number of
#   steps, the start and the norm of the step, and each fits in a dozen lines.
# - CW trades distance against a margin loss, with $\tanh$ keeping pixels in range and a
#   binary search on $c$; crafted on the classifier, its examples must survive the
#   projection, and in this run INC's paired gain over the classifier at $\kappa = 0$ was
#   {glue:text}`cw_gain`.
# - The unrolled attack differentiates exactly through a fresh $k$-step projection; its
#   cost grows with $k$ in time and memory, and its examples fool INC only as far as the
#   short projection behaves like INC's long one.
# - What protects INC here is the cost of an exact gradient, not its absence: the
#   adaptive attacks of {doc}`05_adaptive_attacks` replace it by cheap surrogates.
#
# ## What this chapter measured
#
# Predictions, each checked on every run on the same images with paired intervals:
#
# - CW at $\kappa = 0$, crafted on the classifier, is undone in part by the projection:
#   INC is right more often than the classifier on the same CW images (the paired
#   interval of INC's outcome minus the classifier's lies above zero). The `smoke`
#   profile's models train for seconds and its CW runs few steps; there the claim is only
#   that CW finds adversarial examples at all.
# - A white-box attack does at least as well as its transfer: on PGD's examples through
#   the longest unrolled projection, the unrolled model is not right more often than INC.
#   It fails only if the paired interval of INC's outcome minus the unrolled model's lies
#   entirely below zero.

# %%
headline, gains = {}, []
for name in names:
    kappa0 = cw[name][0]
    headline[f"{name}_cw_kappa0_classifier"] = kappa0["classifier"]
    headline[f"{name}_cw_kappa0_inc"] = kappa0["INC"]
    headline[f"{name}_cw_kappa0_median_l2"] = kappa0["median L2"]
    top = cw[name][-1]
    headline[f"{name}_cw_kappa_max_inc"] = top["INC"]
    for r in unrolled[name]:
        headline[f"{name}_unrolled_{r['k']}_inc"] = r["INC"]
        headline[f"{name}_unrolled_{r['k']}_model"] = r["unrolled model"]
    d_cw = cw_paired[name, P.cw_kappas[0]]
    headline[f"{name}_cw_kappa0_paired_gain"] = d_cw["mean"]
    gains.append(f"{name} {difference_text(d_cw)} (n = {d_cw['n']})")
    detail = (f"INC {interval_text(kappa0['INC'], P.n_adaptive)}, classifier "
              f"{interval_text(kappa0['classifier'], P.n_adaptive)}, paired "
              f"{difference_text(d_cw)}, n = {P.n_adaptive}")
    if P.name == "smoke":  # seconds of training, few CW steps: only that CW works
        run.claim(f"{name}: share of images CW found an adversarial example for "
                  "(kappa 0)", kappa0["found"], ">", 0.0,
                  why="smoke: a sanity check that the attack runs and succeeds at all")
    else:
        run.claim(f"{name}: INC minus classifier on the same CW images (kappa 0), "
                  "low end of the paired 95% interval", d_cw["low"], ">", 0.0,
                  detail=detail,
                  why="prediction: the projection undoes part of a perturbation "
                      "crafted off the range; the paired interval is the margin")
    k_top = unrolled[name][-1]["k"]
    d_un = paired_difference(un_outcomes[name][k_top, "unrolled model"],
                             un_outcomes[name][k_top, "INC"])
    run.claim(f"{name}: white-box success >= transfer (k = {k_top}): INC "
              "minus unrolled model, high end of the paired 95% interval",
              d_un["high"], ">=", 0.0,
              detail=f"paired {difference_text(d_un)}, n = {d_un['n']}",
              why="prediction: an attack is strongest on the model it was crafted on; "
                  "the paired interval is the margin")
glue("cw_gain", "; ".join(gains), display=False)
run.write(headline, cw_tables=cw, unrolled_tables=unrolled)
run.report_claims()

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-wb-kappa
# *Medium, about 30 minutes.* Plot INC's accuracy on CW examples against their median $L_2$ distance, one point per
# $\kappa$. Is a high-confidence CW example just a larger perturbation, or is it better at
# surviving the projection per unit of distance? Compare with PGD in $L_2$ at the same
# distances.
# ```
#
# ```{solution} ex-wb-kappa
# :class: dropdown
# Run `pgd(clf, x, y, eps, norm="l2")` at the median distances in the table and give the
# results to INC. Expect the two attacks to land close to one curve. The projection keeps
# only the part of a perturbation that lies along the range; a CW example with a larger
# $\kappa$ is pushed further into the wrong class by the classifier, but the direction it
# is pushed in is chosen for $C$, not for the range, so per unit of distance it keeps no
# more along the range than PGD's does. $\kappa$ is then an indirect way of buying
# distance. A point of CW clearly above PGD's curve would mean the margin itself helps
# survive the projection.
# ```
#
# ```{exercise}
# :label: ex-wb-restarts
# *Medium, about 30 minutes.* Unroll with `restarts=1` and then with the defense's own number of restarts. Which helps
# the attack more: more unrolled steps or more unrolled restarts? Watch the memory.
# ```
#
# ```{solution} ex-wb-restarts
# :class: dropdown
# Each restart multiplies the stored graph as much as each step does, so memory is
# proportional to $k \times R$. The full INC picks the best of its restarts, a choice the
# unrolled map only mimics when it draws the same starts; with different starts the attack
# optimises against a projection that INC does not run. Measure both with the `unrolled_table`
# call above.
# ```
