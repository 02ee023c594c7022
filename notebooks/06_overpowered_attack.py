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
# # The overpowered attack: adversarial examples inside the range
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/06_overpowered_attack.ipynb)
#
# Every attack so far started from a real image and perturbed it; INC's projection then had
# a chance to undo the perturbation. The paper's central new idea {cite:p}`ilyas2017robust`
# removes that chance. It looks for two images that *both* lie in the generator's range,
# close to each other and classified as differently as possible:
#
# $$
# \max_{z_1, z_2}\; D\big(C(G(z_1)),\, C(G(z_2))\big)
# \quad\text{subject to}\quad \lVert G(z_1) - G(z_2) \rVert_2 \le \varepsilon ,
# $$
#
# with $D$ a divergence between the classifier's two softmax outputs (we use the symmetric
# KL divergence; the authors' code used a cross-entropy form, available as `kind="ce"`).
# The paper calls it *overpowered* because the attacker may pick both points: it is not an
# attack on a given image but a search for places where the classifier is fragile on the
# manifold itself.
#
# Why it matters for INC: the projection of an image that is already in the range is that
# image. A pair found here is, by construction, a pair of inputs that INC cannot tell apart
# any better than the bare classifier can, so **no projection onto this generator can defend
# against it**. The only remedy is a classifier that is robust on the range, the subject of
# the next chapter.
#
# How we solve it: Adam on $z_1$ and $z_2$ together, the constraint held by a Lagrange
# multiplier $\lambda \ge 0$ per pair that grows by dual ascent while the pair is too far
# apart, and a small penalty on $\lVert z \rVert^2$ that keeps the latents where the prior
# puts its mass. All pairs form one batch. A pair stops as soon as it is valid (within
# $\varepsilon$) and its two images get different labels; it then leaves the batch, so the
# remaining steps are spent on the pairs still searching.

# %%
# On Colab, install the book's library first (locally, `make book` has installed it).
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+https://github.com/rmd-course/robust-manifold-defense-book"], check=True)

# %% tags=["parameters"]
profile = "auto"      # "smoke" (CI), "standard" (CPU), "colab" (a T4), "paper"; "auto": colab on CUDA
seed = 0
dataset = "all"       # "mnist", "fashion_mnist", a comma-separated list, or "all"
device = "auto"       # "auto", "cpu" or "cuda"
data_dir = None       # None: $RMD_DATA_DIR, else the repository's data/ folder
results_dir = None    # None: the repository's results/ folder
cache_dir = None      # None: <data_dir>/cache; trained models are reused from here
generator = "vae"     # the generator whose range is searched: "vae" or "gan"

# %%
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from rmd_lib.attacks import minmax_pairs
from rmd_lib.data import dataset_names
from rmd_lib.evaluation import markdown_table, start_run
from rmd_lib.experiment import prepare
from rmd_course.explorers import pair_explorer, pair_explorer_figure, pair_paths
from rmd_lib.attack_tables import pair_table
from rmd_lib.plotting import image_grid, set_style

set_style()
run = start_run("overpowered_attack", profile, seed, device, results_dir)
P, dev = run.profile, run.device
names = dataset_names(dataset)
setups = prepare(run, names, generator=generator, data_dir=data_dir, cache_dir=cache_dir)
EPS = list(P.minmax_eps)
# the budget of the figures and checks below: the one adversarial training uses next chapter
EPS_SHOW = P.at_eps if P.at_eps in EPS else EPS[-1]

# %% [markdown]
# ## How often a close, differently classified pair exists
#
# For each budget $\varepsilon$ (an $L_2$ distance between images in $[0, 1]$; a typical
# MNIST digit has $\lVert x \rVert_2 \approx 9$), the search runs on `P.minmax_n` pairs
# drawn from the prior. A pair is **valid** when it ends within $\varepsilon$, and a
# **success** when it is valid and the classifier labels its two images differently. The
# table also gives the mean divergence over valid pairs and the mean number of steps a pair
# needed.

# %%
tables, searches = {}, {}
with run.timer("pairs"):
    for name, s in setups.items():
        tables[name], searches[name] = pair_table(s.G, s.classifier, EPS, P.minmax_n,
                                                  steps=P.minmax_steps, seed=seed)
        display(Markdown(f"**{name}** ({P.minmax_n} pairs per budget, {P.minmax_steps} steps "
                         "at most)\n\n" + markdown_table(tables[name])))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for k, name in enumerate(names):
    rows = tables[name]
    axes[0].plot([r["eps"] for r in rows], [r["valid and different"] for r in rows], "o-",
                 color=f"C{k}", label=name)
    mid = searches[name][EPS_SHOW]
    axes[1].hist(mid.divergence[mid.valid].cpu().numpy(), bins=30, alpha=0.6, color=f"C{k}",
                 label=f"{name}, $\\varepsilon$ = {EPS_SHOW:g}")
axes[0].set_xlabel(r"$\varepsilon$ ($L_2$)"), axes[0].set_ylabel("valid and classified differently")
axes[0].set_ylim(0, 1.02), axes[0].legend()
axes[1].set_xlabel("symmetric KL divergence of a valid pair"), axes[1].set_ylabel("pairs")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The search stops a pair as soon as its labels differ, so most valid divergences sit just
# past the decision boundary, and the long tail holds the pairs that crossed it with both
# images confidently classified.
#
# ## What the pairs look like
#
# The pairs of largest divergence among the successes, at the budget adversarial training
# uses in the next chapter. Each column is one pair: $G(z_1)$ above, $G(z_2)$ below, each
# with the classifier's label and its confidence in that label.

# %%
for name, s in setups.items():
    pairs = searches[name][EPS_SHOW]
    ok = pairs.success.nonzero().flatten()
    top = ok[pairs.divergence[ok].argsort(descending=True)][:10]
    if len(top) == 0:
        print(f"{name}: no successful pair at eps {EPS_SHOW:g}")
        continue
    with torch.no_grad():
        p1, p2 = s.classifier(pairs.x1[top]).softmax(1), s.classifier(pairs.x2[top]).softmax(1)
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
# latent with a nearly identical image. For the successful pairs at the middle budget we run
# the full defense on both images and count the pairs that INC, too, labels differently.

# %%
inc_agree = {}
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
        inc_agree[name] = {
            "dataset": name, "eps": EPS_SHOW, "successful pairs checked": len(ok),
            "INC labels them differently": float((l1 != l2).float().mean()) if len(ok) else float("nan"),
            "INC keeps both labels": float(((l1 == c1) & (l2 == c2)).float().mean()) if len(ok) else float("nan"),
        }
display(Markdown(markdown_table(list(inc_agree.values()))))

# %% [markdown]
# Where INC's share is below one, its projection moved one of the two images across the
# boundary: the pairs sit right on the boundary, where a tiny change of image can flip the
# label. That is no defense. The attacker can keep only the pairs the defense also
# separates, and the share above says how many remain.
#
# ## Manifold neighbours of real images
#
# The second mode of the search fixes $z_1$ to the inversion $z^\ast$ of a real test image
# and moves only $z_2$: a differently classified image of the range within $\varepsilon$ of
# the test image's projection. These are the adversarial examples that INC's own projection
# would hand to the classifier if the attacker could nudge the input along the range.

# %%
neighbours = {}
with run.timer("neighbours"):
    for name, s in setups.items():
        x, y = s.test_images(min(P.minmax_n, P.n_adaptive), dev)
        proj = s.inc(P, seed).project(x)
        found = minmax_pairs(s.G, s.classifier, EPS_SHOW, z1=proj.z, steps=P.minmax_steps,
                             seed=seed)
        neighbours[name] = (x, y, found)
        show = found.success.nonzero().flatten()[:8]
        with torch.no_grad():
            lab1 = s.classifier(found.x1[show]).argmax(1).tolist()
            lab2 = s.classifier(found.x2[show]).argmax(1).tolist()
        if len(show):
            image_grid([x[show], found.x1[show], found.x2[show]],
                       row_labels=["test image", "its projection", "neighbour"],
                       titles=[[str(v) for v in y[show].tolist()], [str(v) for v in lab1],
                               [str(v) for v in lab2]],
                       suptitle=f"{name}: neighbours in the range, $L_2$ at most {EPS_SHOW:g}")
            plt.show()
        print(f"{name}: {float(found.success.float().mean()):.1%} of {len(x)} test images have "
              f"a differently classified neighbour within {EPS_SHOW:g} of their projection")

# %% [markdown]
# ## What this chapter measured
#
# Checked on every run: the largest budget finds at least as many successes as the
# smallest, up to two pairs of noise. (The search's bookkeeping, that a valid pair is within
# its budget and so on, is checked by the unit tests.) In `standard` and `paper`, also: at
# the largest budget at least half of the pairs are successes, and INC labels at least half
# of the checked successful pairs differently, as the construction predicts. The measured values are in the results file, whatever they are.

# %%
headline = {}
for name in names:
    rows = tables[name]
    for r in rows:
        headline[f"{name}_eps{r['eps']:g}_success"] = r["valid and different"]
        headline[f"{name}_eps{r['eps']:g}_valid"] = r["valid"]
    run.claim(f"{name}: success at the largest budget minus at the smallest",
              rows[-1]["valid and different"] - rows[0]["valid and different"], ">=",
              -2 / P.minmax_n)
    agree = inc_agree[name]
    if agree["successful pairs checked"]:  # no share to report without a successful pair
        headline[f"{name}_inc_differs"] = agree["INC labels them differently"]
    headline[f"{name}_neighbour_success"] = float(neighbours[name][2].success.float().mean())
    if P.name != "smoke":
        run.claim(f"{name}: success at eps {rows[-1]['eps']:g}", rows[-1]["valid and different"],
                  ">=", 0.5)
        run.claim(f"{name}: INC labels successful pairs differently", agree["INC labels them differently"],
                  ">=", 0.5)
run.write(headline, pairs=tables, inc_check=list(inc_agree.values()))
run.report_claims()

# %% [markdown]
# ## Explore: from one image of a pair to the other
#
# The explorer takes the pairs found above at $\varepsilon$ = `EPS_SHOW` (the budget of the
# figures), successes first and the most divergent first, and decodes the straight latent
# path from $z_1$ to $z_2$ of each, all in one batch. Along the path it shows the image,
# the classifier's label, and the probabilities of the two end labels. What to look for:
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
paths = {name: pair_paths(s.G, s.classifier, searches[name][EPS_SHOW], n_path=9, max_pairs=8,
                          eps=EPS_SHOW, classes=s.data.classes)
         for name, s in setups.items()}
for name in names:
    pair_explorer_figure(paths[name], n_pairs=4,
                         title=f"{name}: latent paths of min-max pairs, $L_2$ budget {EPS_SHOW:g}")
    plt.show()

# %% tags=["remove-output"]
display(*(pair_explorer(paths[name], title=f"{name}: min-max pairs") for name in names))

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-minmax-kind
# Run the search with the authors' divergence, `kind="ce"`, at the middle budget. Compare
# the share of successes and the divergence histogram with the symmetric KL. Which one
# pushes both images to confident labels, and why?
# ```
#
# ```{solution} ex-minmax-kind
# :class: dropdown
# The cross-entropy $-\sum_k p_1(k) \log p_2(k)$ is not symmetric: it is large when $z_2$'s
# image gives low probability to what $z_1$'s image believes, whatever the confidence of
# $z_1$'s own label. Its gradient pushes $z_2$ hard and $z_1$ towards a confident label.
# The symmetric KL treats both images alike. Expect similar success rates (both stop when
# the labels differ) and a histogram with a longer tail for the cross-entropy.
# ```
#
# ```{exercise}
# :label: ex-minmax-early-stop
# Set `early_stop=False` and run `minmax_pairs` for the full number of steps. How do the
# share of valid pairs and the mean divergence change? Which setting would you want when
# the pairs are used to *train* a classifier, and which when they are used to *evaluate*
# one?
# ```
#
# ```{solution} ex-minmax-early-stop
# :class: dropdown
# Without early stopping the search keeps raising the divergence after the labels differ,
# and the constraint is held only on average by the multiplier, so fewer pairs end valid
# and the valid ones diverge far more. For evaluation, the question is whether a valid,
# differently classified pair exists, and early stopping answers it at the least cost.
# For training, the classifier should see the most divergent valid pairs, so the next
# chapter turns early stopping off.
# ```
#
# ```{exercise}
# :label: ex-minmax-gan
# Rerun with `generator = "gan"`. The WGAN-GP's latent space has 128 dimensions and its
# images are sharper. Are pairs easier or harder to find at the same budget?
# ```
#
# ```{solution} ex-minmax-gan
# :class: dropdown
# With more latent directions the search has more ways to move an image a short distance,
# so expect successes at smaller budgets. The rate also depends on how much of the GAN's
# range lies between classes: a generator that produces ambiguous digits offers the
# classifier's boundary more room to be crossed.
# ```
