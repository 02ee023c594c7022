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
# # The overpowered attack: adversarial examples inside the range
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/06_overpowered_attack.ipynb)
#
# ```{admonition} In this chapter
# :class: note
# **You will learn** to write the paper's min-max objective and the two variants that
# code uses in its place; to solve a constrained search by a Lagrange multiplier and dual
# ascent, in a short loop you can read and in the library's batched version; why a pair
# found inside the range defeats every projection onto that range; and how to report such
# a search with intervals.
#
# **You need** {doc}`01_generative_models` (the generator $G$ and its prior) and
# {doc}`02_invert_and_classify` (the projection and INC); the KL divergence and entropy of
# two discrete distributions; Lagrange multipliers for one inequality constraint.
#
# **Time:** about 40 minutes to read. Running it takes about a minute in `smoke`,
# {glue:text}`time_standard` in `standard`; `colab` is sized for 10 minutes on a Colab
# T4, not yet measured there; `paper` takes hours on one 80 GB GPU (an estimate). The
# banner of a run gives its own time.
#
# **Practice:** assignment {doc}`/assignments/a3_minmax` has you write the divergence and
# this search yourself, graded by tests.
# ```
#
# Every attack so far started from a real image and perturbed it; INC's projection then had
# a chance to undo the perturbation. The paper's central new idea {cite:p}`ilyas2017robust`
# removes that chance. It looks for two images that *both* lie in the generator's range,
# close to each other and classified as differently as possible. The paper writes the
# search with the Kullback–Leibler divergence of the classifier's two softmax outputs
# $p_i = \mathrm{softmax}(C(G(z_i)))$:
#
# $$
# \max_{z_1, z_2}\; \mathrm{KL}\big(C(G(z_1)) \,\Vert\, C(G(z_2))\big)
# \quad\text{subject to}\quad \lVert G(z_1) - G(z_2) \rVert_2 \le \varepsilon ,
# \qquad \mathrm{KL}(p_1 \Vert p_2) = \sum_k p_1(k) \log \frac{p_1(k)}{p_2(k)} .
# $$
#
# The attacker may pick both points, which is what makes the attack *overpowered*: it
# is not an attack on a given image but a search for places where the
# classifier is fragile on the manifold itself.
#
# Why it matters for INC: the projection of an image that is already in the range is that
# image. A pair found here is, by construction, a pair of inputs that INC cannot tell apart
# any better than the bare classifier can, so **no projection onto this generator can defend
# against it**. The only remedy is a classifier that is robust on the range, the subject of
# the next chapter.
#
# ## Three divergences, and the one this book uses
#
# Code written for the search, the authors' and ours, replaces the paper's KL by a
# relative of it. Writing $H(p_1) = -\sum_k p_1(k) \log p_1(k)$ for the entropy,
#
# $$
# \underbrace{-\sum_k p_1(k) \log p_2(k)}_{\mathrm{CE}(p_1, p_2)}
# \;=\; H(p_1) + \mathrm{KL}(p_1 \Vert p_2),
# \qquad
# D_{\mathrm{sym}}(p_1, p_2) = \mathrm{KL}(p_1 \Vert p_2) + \mathrm{KL}(p_2 \Vert p_1)
# = \sum_k \big(p_1(k) - p_2(k)\big)\big(\log p_1(k) - \log p_2(k)\big).
# $$
#
# The cross-entropy (CE) is the form in the authors' code (`kind="ce"` here). It differs
# from the paper's KL only by $H(p_1)$, which does not depend on $z_2$: the two objectives
# give $z_2$ the same gradient, and when $z_1$ is held fixed (the manifold neighbours
# below) they are the same search. When $z_1$ moves too, the CE adds a bonus for an
# *uncertain* first image, which makes the objective grow without making the two labels
# any more different. The symmetric KL ($D_{\mathrm{sym}}$, `kind="sym_kl"`, the book's
# default) treats the two images alike: a pair $\{z_1, z_2\}$ has no first element when
# both move, and with it the objective does not depend on which one is called $z_1$. It is
# zero exactly when $p_1 = p_2$ and has no entropy bonus. We therefore use $D_{\mathrm{sym}}$
# for the pairs, and write $D$ for whichever divergence a search uses.
#
# ## The search: a Lagrange multiplier and dual ascent
#
# The constraint is held by a multiplier $\lambda_i \ge 0$ per pair. With a small penalty
# $\gamma \lVert z \rVert^2 / d$ that keeps the $d$-dimensional latents where the prior
# puts its mass, pair $i$ minimises the Lagrangian
#
# $$
# \mathcal{L}_i(z_1, z_2; \lambda_i) = -D\big(p_1, p_2\big)
# + \lambda_i \big(\lVert G(z_1) - G(z_2) \rVert_2 - \varepsilon\big)_+
# + \frac{\gamma}{d}\big(\lVert z_1 \rVert^2 + \lVert z_2 \rVert^2\big)
# $$
#
# over $(z_1, z_2)$ by a step of Adam (the primal step), and then raises the multiplier by
# dual ascent on the constraint,
#
# $$
# \lambda_i \leftarrow \max\Big(0,\; \lambda_i + \eta\,\big(\lVert G(z_1) - G(z_2)
# \rVert_2 - \varepsilon\big)\Big),
# $$
#
# so that $\lambda_i$ grows while the pair is too far apart and shrinks again once it is
# inside the budget. The search starts at $z_1$ drawn from the prior and $z_2 = z_1 + 0.1\,u$
# with $u$ another prior draw.

# %% tags=["remove-cell"]
# On Colab, install the book's library first (locally, `make book` has installed it).
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+https://github.com/rmd-course/robust-manifold-defense-book"],
                   check=True)

# %% tags=["parameters"]
profile = "auto"      # "smoke" (CI), "standard" (CPU), "colab" (a T4), "paper";
                      # "auto": colab on CUDA
seed = 0
dataset = "all"       # "mnist", "fashion_mnist", a comma-separated list, or "all"
device = "auto"       # "auto", "cpu" or "cuda"
data_dir = None       # None: $RMD_DATA_DIR, else the repository's data/ folder
results_dir = None    # None: the repository's results/ folder
cache_dir = None      # None: <data_dir>/cache; trained models are reused from here
generator = "vae"     # the generator whose range is searched: "vae" or "gan"

# %%
import copy

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from myst_nb import glue

from rmd_lib.attack_tables import pair_table
from rmd_lib.attacks import divergence, minmax_pairs
from rmd_lib.data import dataset_names
from rmd_lib.evaluation import (markdown_table, paired_difference, start_run,
                                wilson_interval)
from rmd_lib.experiment import prepare
from rmd_course.explorers import pair_explorer, pair_explorer_figure, pair_paths
from rmd_lib.intervals import (difference_text, error_bars, interval_text,
                               with_intervals)
from rmd_lib.plotting import image_grid, set_style
from rmd_lib.randomness import stream

set_style()
run = start_run("overpowered_attack", profile, seed, device, results_dir)
P, dev = run.profile, run.device
names = dataset_names(dataset)
setups = prepare(run, names, generator=generator, data_dir=data_dir,
                 cache_dir=cache_dir)
EPS = list(P.minmax_eps)
# the budget of the figures and checks below:
# the one adversarial training uses next chapter
EPS_SHOW = P.at_eps if P.at_eps in EPS else EPS[-1]
glue("n_pairs", P.minmax_n, display=False)
glue("max_steps", P.minmax_steps, display=False)
glue("eps_show", f"{EPS_SHOW:g}", display=False)
glue("eps_list", ", ".join(f"{e:g}" for e in EPS), display=False)

# %% tags=["remove-input"]
run.banner()

# %% [markdown]
# ## The search in twenty lines
#
# The loop below is the search as the equations above write it, for a batch of pairs: the
# Lagrangian, one Adam step on both latents, one dual-ascent step on the multipliers. It
# runs every pair for all its steps and returns the last iterate.

# %%
def minmax_reference(G, C, z1, z2, eps, steps, lr=0.05, lam_rate=1.0, gamma=1e-3):
    """Min-max pairs from starts z1, z2 (N, d): Adam on the Lagrangian, dual ascent on
    one multiplier per pair. Returns the last iterates (z1, z2)."""
    z1 = z1.detach().clone().requires_grad_(True)
    z2 = z2.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z1, z2], lr=lr)
    lam = torch.ones(len(z1), dtype=z1.dtype, device=z1.device)
    d = z1.shape[1]
    for _ in range(steps):
        x1, x2 = G(z1), G(z2)
        dist = (x1 - x2).flatten(1).norm(dim=1)
        lp1, lp2 = C(x1).log_softmax(1), C(x2).log_softmax(1)
        sym_kl = ((lp1.exp() - lp2.exp()) * (lp1 - lp2)).sum(1)  # KL(p1|p2) + KL(p2|p1)
        prior = (z1.pow(2).sum(1) + z2.pow(2).sum(1)) / d
        lagrangian = -sym_kl + lam * (dist - eps).clamp(min=0) + gamma * prior
        opt.zero_grad()
        lagrangian.sum().backward()  # pairs are independent: the sum separates them
        opt.step()  # primal step on (z1, z2)
        lam = (lam + lam_rate * (dist.detach() - eps)).clamp(min=0)  # dual ascent
    return z1.detach(), z2.detach()


# %% [markdown]
# The library's `minmax_pairs` runs the same iteration with its own Adam, batched and
# chunked by a memory budget, and adds early stopping and the best valid iterate; with
# both turned off it must reach the same latents from the same starts. Each pair's start
# comes from its own random stream, $(\text{seed}, i)$, so the check below draws the
# starts exactly as the library does. It runs in double precision: the two loops then
# differ only in the order of floating-point operations, a relative error near $10^{-16}$
# per operation that Adam's division by $\sqrt{\hat v}$ amplifies over the steps but
# leaves far below the tolerance $10^{-6}$. A slip in the algorithm (a missing bias
# correction, the multiplier raised before the step) moves a latent by about the step
# size, $0.05$, at once.

# %%
name0 = names[0]
G64 = copy.deepcopy(setups[name0].G).double()
C64 = copy.deepcopy(setups[name0].classifier).double()
n_check, steps_check = 8, min(P.minmax_steps, 20)
default_dtype = torch.get_default_dtype()
# the library draws its starts in the default dtype
torch.set_default_dtype(torch.float64)
try:
    lib = minmax_pairs(G64, C64, EPS_SHOW, n_check, steps=steps_check, seed=seed,
                       early_stop=False, keep_best=False)
    starts = torch.stack([G64.sample_latent(2, generator=stream(seed, i), device="cpu")
                          for i in range(n_check)]).to(dev)
finally:
    torch.set_default_dtype(default_dtype)
ref1, ref2 = minmax_reference(G64, C64, starts[:, 0], starts[:, 0] + 0.1 * starts[:, 1],
                              EPS_SHOW, steps_check)
gap = max((ref1 - lib.z1).abs().max().item(), (ref2 - lib.z2).abs().max().item())
print(f"{name0}: {n_check} pairs, {steps_check} steps: largest latent difference, "
      f"reference vs library: {gap:.2e}")
assert gap < 1e-6, f"the reference and the library's search disagree by {gap:.2e}"
glue("check_pairs", n_check, display=False)
glue("check_steps", steps_check, display=False)
glue("check_gap", f"{gap:.1e}", display=False)

# %% [markdown]
# On those {glue:text}`check_pairs` pairs and {glue:text}`check_steps` steps the largest
# difference between the two loops' latents is {glue:text}`check_gap`. The identity
# $\mathrm{CE} = H(p_1) + \mathrm{KL}(p_1 \Vert p_2)$ is checked the same way, on the
# classifier's outputs for those pairs, with the library's two divergences:

# %%
with torch.no_grad():
    lp1 = C64(G64(lib.z1)).log_softmax(1)
    lp2 = C64(G64(lib.z2)).log_softmax(1)
entropy = -(lp1.exp() * lp1).sum(1)
kl_12 = (lp1.exp() * (lp1 - lp2)).sum(1)
kl_21 = (lp2.exp() * (lp2 - lp1)).sum(1)
ce_gap = (divergence(lp1, lp2, "ce") - (entropy + kl_12)).abs().max().item()
sym_gap = (divergence(lp1, lp2, "sym_kl") - (kl_12 + kl_21)).abs().max().item()
print(f"|CE - (H + KL)| at most {ce_gap:.1e}; "
      f"|sym KL - (KL12 + KL21)| at most {sym_gap:.1e}")
assert ce_gap < 1e-9 and sym_gap < 1e-9  # float64 sums of ten terms

# %% [markdown]
# The rest of the chapter uses the library's version: it runs all pairs as one batch and
# drops a pair from the batch as soon as it is valid (within $\varepsilon$) and its two
# images get different labels, so the remaining steps go to the pairs still searching.
#
# ## How often a close, differently classified pair exists
#
# For each budget $\varepsilon$ in {glue:text}`eps_list` (an $L_2$ distance between images
# in $[0, 1]$; for scale, the test images' mean $\lVert x \rVert_2$ is
# {glue:text}`typical_norm`), the search
# runs on {glue:text}`n_pairs` pairs drawn from the prior, for at most
# {glue:text}`max_steps` steps. A pair is **valid** when it ends within $\varepsilon$, and a
# **success** when it is valid and the classifier labels its two images differently.
# Every budget starts from the same latents, so the budgets differ in nothing else. The
# table gives each share with its 95% Wilson interval, the mean divergence over valid pairs
# and the mean number of steps a pair needed.

# %%
tables, searches = {}, {}
SHARES = ["valid", "valid and different"]
norms = []
for name, s in setups.items():
    norm_mean = s.data.x_test.flatten(1).norm(dim=1).mean().item()
    norms.append(f"{norm_mean:.1f} ({name})")
glue("typical_norm", ", ".join(norms), display=False)
with run.timer("pairs"):
    for name, s in setups.items():
        tables[name], searches[name] = pair_table(s.G, s.classifier, EPS, P.minmax_n,
                                                  steps=P.minmax_steps, seed=seed)
        shown = [{**r, "valid pairs": int(searches[name][r["eps"]].valid.sum())}
                 for r in tables[name]]
        shown = with_intervals(shown, ["different among valid"], "valid pairs")
        shown = with_intervals(shown, SHARES, P.minmax_n)
        display(Markdown(f"**{name}** ({P.minmax_n} pairs per budget, {P.minmax_steps} "
                         "steps at most; 95% Wilson intervals in brackets)\n\n"
                         + markdown_table(shown)))

# %% [markdown]
# The left panel gives the share of successes against the budget, with its interval as an
# error bar; the right one the divergences of the valid pairs at $\varepsilon$ =
# {glue:text}`eps_show`. Look at where the valid divergences sit: the search stops a pair
# as soon as its labels differ, so a pair that ends there has a divergence just past the
# decision boundary, and only pairs that crossed it with both images confidently
# classified make up a tail.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for k, name in enumerate(names):
    rows = tables[name]
    success = [r["valid and different"] for r in rows]
    axes[0].errorbar([r["eps"] for r in rows], success,
                     yerr=error_bars(success, P.minmax_n), fmt="o-", capsize=3,
                     color=f"C{k}", label=name)
    mid = searches[name][EPS_SHOW]
    axes[1].hist(mid.divergence[mid.valid].cpu().numpy(), bins=30, alpha=0.6,
                 color=f"C{k}", label=f"{name}, $\\varepsilon$ = {EPS_SHOW:g}")
axes[0].set_xlabel(r"$\varepsilon$ ($L_2$)")
axes[0].set_ylabel("valid and classified differently")
axes[0].set_ylim(0, 1.02), axes[0].legend()
axes[1].set_xlabel("symmetric KL divergence of a valid pair")
axes[1].set_ylabel("pairs")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What the pairs look like
#
# The pairs of largest divergence among the successes, at the budget adversarial training
# uses in the next chapter, $\varepsilon$ = {glue:text}`eps_show`. Each column is one pair:
# $G(z_1)$ above, $G(z_2)$ below, each with the classifier's label and its confidence in
# that label.

# %%
for name, s in setups.items():
    pairs = searches[name][EPS_SHOW]
    ok = pairs.success.nonzero().flatten()
    top = ok[pairs.divergence[ok].argsort(descending=True)][:10]
    if len(top) == 0:
        print(f"{name}: no successful pair at eps {EPS_SHOW:g}")
        continue
    with torch.no_grad():
        p1 = s.classifier(pairs.x1[top]).softmax(1)
        p2 = s.classifier(pairs.x2[top]).softmax(1)
    caption = [[f"{c} ({v:.2f})" for v, c in zip(*p.max(1))] for p in (p1, p2)]
    image_grid([pairs.x1[top], pairs.x2[top]], row_labels=["$G(z_1)$", "$G(z_2)$"],
               titles=caption,
               suptitle=f"{name}: min-max pairs, $L_2$ distance at most {EPS_SHOW:g}")
    plt.show()

# %% [markdown]
# ## Does INC see the same thing?
#
# "By construction" deserves a check. INC does not receive $z_1$; it receives the image
# $G(z_1)$ and runs its own projection with random restarts, which may land on a different
# latent with a nearly identical image. For the successful pairs at $\varepsilon$ =
# {glue:text}`eps_show` (at most {glue:text}`n_checked_max` of them) we run the full
# defense on both images and count the pairs that INC, too, labels differently.

# %%
inc_agree = {}
SHARE_INC = ["INC labels them differently", "INC keeps both labels"]
glue("n_checked_max", P.n_adaptive, display=False)
with run.timer("inc_check"):
    for name, s in setups.items():
        pairs = searches[name][EPS_SHOW]
        ok = pairs.success.nonzero().flatten()[:P.n_adaptive]
        inc = s.inc(P, seed)
        with torch.no_grad():
            l1 = inc(pairs.x1[ok]).argmax(1)
            l2 = inc(pairs.x2[ok]).argmax(1)
            c1 = s.classifier(pairs.x1[ok]).argmax(1)
            c2 = s.classifier(pairs.x2[ok]).argmax(1)
        differs, keeps = (l1 != l2).float(), ((l1 == c1) & (l2 == c2)).float()
        inc_agree[name] = {
            "dataset": name, "eps": EPS_SHOW, "successful pairs checked": len(ok),
            SHARE_INC[0]: float(differs.mean()) if len(ok) else float("nan"),
            SHARE_INC[1]: float(keeps.mean()) if len(ok) else float("nan"),
        }
rows_inc = list(inc_agree.values())
display(Markdown(markdown_table(with_intervals(rows_inc, SHARE_INC,
                                               "successful pairs checked"))))
glue("inc_differs", "; ".join(
    f"{r['dataset']}: {interval_text(r[SHARE_INC[0]], r['successful pairs checked'])} "
    f"of {r['successful pairs checked']} pairs" for r in rows_inc), display=False)

# %% [markdown]
# INC labels the pairs differently in these shares ({glue:text}`inc_differs`, 95% Wilson
# intervals in brackets). Where a share is below one, INC's projection moved one of the
# two images across the boundary: the pairs sit right on the boundary, where a tiny change
# of image can flip the label. That is no defense. The attacker can keep only the pairs
# the defense also separates, and the share says how many remain.
#
# ## Manifold neighbours of real images
#
# The second mode of the search fixes $z_1$ to the inversion $z^\ast$ of a real test image
# and moves only $z_2$: a differently classified image of the range within $\varepsilon$ of
# the test image's projection. Here the paper's KL and the authors' CE are the same search,
# since $H(p_1)$ is fixed. These are the adversarial examples that INC's own projection
# would hand to the classifier if the attacker could nudge the input along the range.

# %%
neighbours = {}
with run.timer("neighbours"):
    for name, s in setups.items():
        x, y = s.test_images(min(P.minmax_n, P.n_adaptive), dev)
        proj = s.inc(P, seed).project(x)
        found = minmax_pairs(s.G, s.classifier, EPS_SHOW, z1=proj.z,
                             steps=P.minmax_steps, seed=seed)
        neighbours[name] = (x, y, found)
        show = found.success.nonzero().flatten()[:8]
        with torch.no_grad():
            lab1 = s.classifier(found.x1[show]).argmax(1).tolist()
            lab2 = s.classifier(found.x2[show]).argmax(1).tolist()
        if len(show):
            image_grid([x[show], found.x1[show], found.x2[show]],
                       row_labels=["test image", "its projection", "neighbour"],
                       titles=[[str(v) for v in y[show].tolist()],
                               [str(v) for v in lab1], [str(v) for v in lab2]],
                       suptitle=f"{name}: neighbours in the range, "
                                f"$L_2$ at most {EPS_SHOW:g}")
            plt.show()
glue("neighbour_share", "; ".join(
    f"{name}: {interval_text(float(f.success.float().mean()), len(x))} of {len(x)} "
    "test images" for name, (x, _, f) in neighbours.items()), display=False)

# %% [markdown]
# The share of test images with a differently classified neighbour within
# $\varepsilon$ = {glue:text}`eps_show` of their projection, with its 95% Wilson interval:
# {glue:text}`neighbour_share`.
#
# ## Explore: from one image of a pair to the other
#
# The explorer takes the pairs found above at $\varepsilon$ = {glue:text}`eps_show` (the
# budget of the figures), successes first and the most divergent first, and decodes the
# straight latent path from $z_1$ to $z_2$ of each, all in one batch. Along the path it
# shows the image, the classifier's label, and the probabilities of the two end labels.
# What to look for:
#
# - how little the image changes from one end to the other, against how much the
#   classifier's output does: the divergence and the distance are both given;
# - where on the path the label flips and how sharply the two probabilities cross: the
#   crossing is the decision boundary cutting through the generator's range;
# - whether the images in the middle are digits too: the range between $z_1$ and $z_2$ is
#   as much "on the manifold" as the ends, so the boundary there is the classifier's, and
#   no projection can move an input away from it.
#
# The figure shows the paths of the first four pairs; the live widget below it (in Jupyter
# or on Colab) has a slider over the pairs and one along the path.

# %%
paths = {name: pair_paths(s.G, s.classifier, searches[name][EPS_SHOW], n_path=9,
                          max_pairs=8, eps=EPS_SHOW, classes=s.data.classes)
         for name, s in setups.items()}
for name in names:
    pair_explorer_figure(paths[name], n_pairs=4,
                         title=f"{name}: latent paths of min-max pairs, "
                               f"$L_2$ budget {EPS_SHOW:g}")
    plt.show()

# %% tags=["remove-output"]
display(*(pair_explorer(paths[name], title=f"{name}: min-max pairs") for name in names))

# %% [markdown]
# ## Takeaways
#
# - The paper's attack maximises $\mathrm{KL}(C(G(z_1)) \Vert C(G(z_2)))$ over pairs in
#   the range within $\varepsilon$; the authors' code maximises the cross-entropy, which is
#   that KL plus $H(p_1)$, and this book the symmetric KL, which is free of the entropy
#   bonus and of the order of the pair.
# - A Lagrange multiplier per pair, raised by dual ascent while the pair is too far apart,
#   turns the constrained search into an unconstrained one that batches over pairs.
# - A pair inside the range passes through any projection onto that range unchanged, so
#   it is an attack no projection defense can remove. In this run, the share of pairs
#   that succeeded at the largest budget, $\varepsilon$ = {glue:text}`eps_max`, was
#   {glue:text}`success_largest` (95% Wilson intervals in brackets).
# - Where INC's restarts land elsewhere, the pairs sit on the decision boundary; the remedy
#   has to be a classifier that is robust on the range.
#
# ## What this chapter measured
#
# Three claims, each stated as a prediction with the sampling error as its margin (the box
# below gives each value and its source):
#
# - on every run, a larger budget does not lower the share of successes: the searches at
#   the smallest and the largest budget start from the same latents, and the claim fails
#   only if the paired 95% interval of (largest minus smallest) lies wholly below zero;
# - in `standard` and `paper`, more than half of the pairs succeed at the largest budget,
#   and INC labels more than half of the checked successful pairs differently. One half is
#   this book's bar for "such pairs are common", not a number from the paper; each claim
#   fails only if the 95% Wilson interval lies wholly below it. (The search's bookkeeping,
#   that a valid pair is within its budget and so on, is checked by the unit tests.)

# %%
headline, largest = {}, []
for name in names:
    rows = tables[name]
    for r in rows:
        headline[f"{name}_eps{r['eps']:g}_success"] = r["valid and different"]
        headline[f"{name}_eps{r['eps']:g}_valid"] = r["valid"]
    small, big = searches[name][EPS[0]].success, searches[name][EPS[-1]].success
    diff = paired_difference(small, big)
    headline[f"{name}_success_gain_low"] = diff["low"]
    headline[f"{name}_success_gain_high"] = diff["high"]
    run.claim(f"{name}: success at eps {EPS[-1]:g} minus at eps {EPS[0]:g}, "
              "upper 95% end", diff["high"], ">=", 0.0,
              why="predicted direction: a larger budget admits what a smaller one "
                  "does; the same starts at both budgets, so the margin is the "
                  "paired interval",
              detail=f"mean [95% interval] {difference_text(diff, 3)}, "
                     f"n = {diff['n']}")
    top = rows[-1]["valid and different"]
    largest.append(f"{interval_text(top, P.minmax_n)} for {name}")
    agree = inc_agree[name]
    checked = agree["successful pairs checked"]
    if checked:  # no share to report without a successful pair
        headline[f"{name}_inc_differs"] = agree[SHARE_INC[0]]
    found = neighbours[name][2]
    headline[f"{name}_neighbour_success"] = float(found.success.float().mean())
    if P.name != "smoke":
        low, high = wilson_interval(top * P.minmax_n, P.minmax_n)
        run.claim(f"{name}: success at eps {EPS[-1]:g}, upper 95% end", high, ">=", 0.5,
                  why="prediction: such pairs are common (our bar: half); margin: the "
                      "Wilson interval of the share",
                  detail=f"{top:.3f} [{low:.3f}, {high:.3f}], n = {P.minmax_n}")
        share = agree[SHARE_INC[0]] if checked else float("nan")
        low, high = wilson_interval(share * checked, checked) if checked else (0.0, 0.0)
        run.claim(f"{name}: INC labels successful pairs differently, upper 95% end",
                  high, ">=", 0.5,
                  why="prediction: INC returns an image of the range nearly as it is "
                      "(our bar: half); margin: the Wilson interval of the share",
                  detail=f"{share:.3f} [{low:.3f}, {high:.3f}], n = {checked}")
glue("success_largest", " and ".join(largest), display=False)
glue("eps_max", f"{EPS[-1]:g}", display=False)
run.write(headline, pairs=tables, inc_check=rows_inc)
run.report_claims()

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-minmax-kind
# *Medium, about 20 minutes.* Run the search with the authors' divergence, `kind="ce"`, at
# the budget of the figures (the starter below has the call). Compare the share of
# successes and the confidence of the two images' labels with the symmetric KL's. Which
# image does the cross-entropy treat differently, and why?
# ```
#
# ```{solution} ex-minmax-kind
# :class: dropdown
# By the identity $\mathrm{CE} = H(p_1) + \mathrm{KL}(p_1 \Vert p_2)$, the cross-entropy
# gives $z_2$ exactly the gradient of the paper's KL, and $z_1$ that gradient plus the
# gradient of $H(p_1)$. So the second image is pushed as under the paper's objective,
# while the first is also pulled towards an uncertain label. Both searches stop at the
# first valid pair whose labels differ, so the share of successes moves little (the
# stopping rule, not the objective, decides when a pair is done); the difference shows in
# the first image's confidence, lower under CE, and in the divergences, which the entropy
# bonus inflates without separating the labels more. The symmetric KL has no such bonus
# and treats the two images alike, which is why the book uses it.
# ```

# %%
# Starter for the exercise above: the same pairs with the authors' cross-entropy.
# rows_ce, searches_ce = pair_table(setups[names[0]].G, setups[names[0]].classifier,
#                                   [EPS_SHOW], P.minmax_n, steps=P.minmax_steps,
#                                   seed=seed, kind="ce")
# Compare rows_ce with tables[names[0]], and the confidences
# setups[names[0]].classifier(searches_ce[EPS_SHOW].x1).softmax(1).max(1).values
# with those of searches[names[0]][EPS_SHOW].x1.

# %% [markdown]
# ```{exercise}
# :label: ex-minmax-early-stop
# *Medium, about 20 minutes.* Set `early_stop=False` and run `minmax_pairs` for the full
# number of steps (starter below). How do the share of valid pairs and the mean divergence
# change? Which setting would you want when the pairs are used to *train* a classifier, and
# which when they are used to *evaluate* one?
# ```
#
# ```{solution} ex-minmax-early-stop
# :class: dropdown
# Without early stopping the search keeps raising the divergence after the labels differ,
# and the multiplier holds the constraint only on average, so the last iterate can drift
# out of the budget (the library keeps each pair's best valid iterate, which limits the
# loss of valid pairs) and the valid pairs diverge far more. For evaluation, the question
# is whether a valid, differently classified pair exists, and early stopping answers it at
# the least cost. For training, the classifier should see the most divergent valid pairs,
# so the next chapter turns early stopping off.
# ```

# %%
# Starter for the exercise above.
# s = setups[names[0]]
# full = minmax_pairs(s.G, s.classifier, EPS_SHOW, P.minmax_n, steps=P.minmax_steps,
#                     seed=seed, early_stop=False)
# print(full.summary(), searches[names[0]][EPS_SHOW].summary())

# %% [markdown]
# ```{exercise}
# :label: ex-minmax-gan
# *Easy to set up, about 30 minutes of reasoning and run time.* Rerun with
# `generator = "gan"` in the parameters cell. The WGAN-GP's latent space has 128
# dimensions and its images are sharper. Are pairs easier or harder to find at the same
# budget?
# ```
#
# ```{solution} ex-minmax-gan
# :class: dropdown
# Expect them to be easier, for two reasons. With more latent directions the search has
# more ways to move an image a short distance; and the WGAN-GP's range, trained
# adversarially rather than by reconstruction, also holds ambiguous images between the
# classes, where the classifier's boundary crosses the range. A successful pair then needs
# a shorter move, and the share of successes at a given budget rises. The second reason
# depends on the trained generator, so the comparison on your run is the test of it.
# ```
