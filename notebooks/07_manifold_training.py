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
# # Adversarial training on the manifold
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/07_manifold_training.ipynb)
#
# ```{admonition} In this chapter
# :class: note
# **You will learn** to write adversarial training on the generator's range as a min-max
# objective, and how one training step approximates it by a mean over the valid pairs of
# the latest pair search; to write that step's loss in a few lines, checked against the
# library's training code; how it differs from PGD training in input space and from the
# variant of the authors' code; and how to measure a softer decision boundary with paired
# differences over the same pair searches and with the confidence along latent paths.
#
# **You need** {doc}`06_overpowered_attack` (the min-max pair search and the symmetric
# KL), {doc}`02_invert_and_classify` (INC), {doc}`03_white_box_attacks` (PGD in $L_2$)
# and {doc}`05_adaptive_attacks` (BPDA and EOT, in the robustness table); the maths:
# cross-entropy, the KL divergence, min-max objectives, and paired differences with
# their intervals.
#
# **Time:** about 40 minutes to read. Running it takes about a minute in `smoke` and
# {glue:text}`time_standard` in `standard`; `colab` is sized for 10 minutes on a Colab
# T4, not yet measured there; `paper` takes hours on one 80 GB GPU (an estimate). The
# banner of a run gives its own time.
# ```
#
# The previous chapter found, inside the generator's range, pairs of nearby images that the
# classifier labels differently; no projection can defend against them. The paper's fix
# {cite:p}`ilyas2017robust` is to train the classifier on those pairs, as a min-max game:
#
# $$
# \min_{\theta}\; \mathbb{E}_{(x, y)}\big[\ell_{\mathrm{CE}}(C_\theta(x), y)\big]
# \;+\; w \cdot \mathbb{E}_{z_0 \sim p(z)} \Big[
# \max_{(z_1, z_2):\ \lVert G(z_1) - G(z_2) \rVert_2 \le \varepsilon}
# D\big(C_\theta(G(z_1)),\, C_\theta(G(z_2))\big) \Big].
# $$
#
# The inner max is the attacker's: over pairs of latents whose images lie within the
# budget, the pair the classifier tells apart most. Nobody can compute it exactly; the
# min-max search of the previous chapter approximates it, starting from $z_0$ drawn from
# the prior and holding the budget by dual ascent, so the expectation is over the
# search's starting points. In a training step the expectation becomes a mean over the
# pairs of the latest search, run against the *current* classifier and renewed every few
# steps:
#
# $$
# \min_{\theta}\; \mathbb{E}_{(x, y)}\big[\ell_{\mathrm{CE}}(C_\theta(x), y)\big]
# \;+\; w \cdot \frac{1}{|V|} \sum_{(z_1, z_2) \in V}
# D\big(C_\theta(G(z_1)),\, C_\theta(G(z_2))\big),
# $$
#
# where $V$ holds only the **valid** pairs, those the search ended within the budget,
# $\lVert G(z_1) - G(z_2) \rVert_2 \le \varepsilon$. Each pair's divergence is masked
# before the sum and the sum is divided by the number of valid pairs; the authors' code
# summed before masking, which lets invalid pairs into the loss. Here the search runs
# without early stopping: the classifier should see the most divergent pairs, not the first
# that cross its boundary.
#
# The claim is that this **softens the decision boundary on the range**: near a boundary,
# nearby images should get nearby probabilities rather than two confident, different labels.
# We compare four classifiers. The first three start from the same trained weights and
# see the same training images for the same number of steps:
#
# - **standard**: the classifier of the earlier chapters, not fine-tuned;
# - **manifold**: fine-tuned with the loss above;
# - **PGD**: fine-tuned by adversarial training in input space {cite:p}`madry2018pgd`,
#   on $L_2$ PGD examples, the baseline the authors ran (their MNIST code: $\varepsilon$ 1.5,
#   40 steps). Its objective has an inner max too, over the $L_2$ ball around each
#   image, which PGD approximates:
#
#   $$
#   \min_{\theta}\; \mathbb{E}_{(x, y)}\Big[
#   \max_{\lVert \delta \rVert_2 \le \varepsilon_{\mathrm{PGD}}}
#   \ell_{\mathrm{CE}}\big(C_\theta(x + \delta), y\big)\Big];
#   $$
#
# - **authors**: the variant of the authors' code, PGD training *resumed from the PGD
#   classifier* with a small pair term added; it has had more training steps than the
#   others, and its own section below gives its objective and how it differs.

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
generator = "vae"     # the generator of the pairs and of INC: "vae" or "gan"

# %%
import copy

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from torch.nn import functional as F

from rmd_lib.attack_tables import robust_accuracy_table
from rmd_lib.attacks import BPDA, fgsm, pgd
from rmd_lib.data import dataset_names
from rmd_lib.evaluation import accuracy, markdown_table, start_run
from rmd_lib.experiment import prepare
from rmd_lib.manifold_training import (compare_pairs, confidence_path, pair_loss,
                                       path_endpoints, path_statistics,
                                       robust_classifier, start_class_probability)
from rmd_lib.plotting import image_grid, set_style
from rmd_lib.projection import latent_dim

try:
    from myst_nb import glue  # the book pastes these values into the text
except ImportError:  # on Colab the book's extras are not installed
    def glue(name, value, display=True):
        pass

set_style()
run = start_run("manifold_training", profile, seed, device, results_dir)
P, dev = run.profile, run.device
names = dataset_names(dataset)
setups = prepare(run, names, generator=generator, data_dir=data_dir,
                 cache_dir=cache_dir)
CLASSIFIERS = ("standard", "manifold", "PGD")

# %% tags=["remove-input"]
run.banner()


# %% [markdown]
# ## One step's loss, written out
#
# The second equation above is what a training step minimises. With $N$ training images
# $(x_n, y_n)$ in the batch, $M$ pairs $(G(z_{1,i}), G(z_{2,i}))$ from the latest search,
# $v_i = 1$ when pair $i$ is valid and $0$ otherwise, and $D$ the symmetric KL of
# {doc}`06_overpowered_attack`, it reads
#
# $$
# \mathcal{L}(\theta) = \frac{1}{N} \sum_{n=1}^{N}
# \ell_{\mathrm{CE}}\big(C_\theta(x_n), y_n\big)
# \;+\; w \cdot \frac{\sum_{i=1}^{M} v_i\, D\big(C_\theta(G(z_{1,i})),\,
# C_\theta(G(z_{2,i}))\big)}{\max\big(1, \sum_{i=1}^{M} v_i\big)} .
# $$
#
# Each pair's divergence is multiplied by its $v_i$ *before* the sum, so an invalid pair
# adds exactly zero, to the loss and to its gradient; the denominator is $|V|$, and a
# step with no valid pair has no pair term. The authors' variant sets $v_i = 1$ only for
# a valid pair whose two images the classifier labels differently, and its data term is
# the cross-entropy on PGD examples instead of clean images. The function below is that
# formula line by line; the library's `pair_loss` computes the pair term for both
# training loops, batched and with checks on its arguments.

# %%
def manifold_loss(net, x, y, x1, x2, valid, w, only_different=False):
    """One step's loss of manifold training (the formula above): the cross-entropy of
    net on the batch x (N, C, H, W) in [0, 1] with labels y (N,), plus w times the
    mean symmetric KL of net's outputs over the kept pairs (x1[i], x2[i]), each
    (M, C, H, W) in [0, 1]. valid (M,) bool marks the pairs within the budget;
    only_different also drops pairs that net labels alike (the authors' V_ne)."""
    data_term = F.cross_entropy(net(x), y)
    log_p1, log_p2 = net(x1).log_softmax(1), net(x2).log_softmax(1)
    # D_sym(p1, p2) = sum_k (p1(k) - p2(k)) (log p1(k) - log p2(k)), one per pair
    d = ((log_p1.exp() - log_p2.exp()) * (log_p1 - log_p2)).sum(1)
    keep = valid
    if only_different:  # labels from this same forward pass
        keep = keep & (log_p1.argmax(1) != log_p2.argmax(1))
    # mask each pair before the sum, then divide by the number kept, |V|
    kept_sum = torch.where(keep, d, torch.zeros_like(d)).sum()
    return data_term + w * kept_sum / keep.sum().clamp(min=1)


# %% [markdown]
# The check builds a small batch in double precision: a few training images, and pairs
# whose first latent is drawn from the prior and whose second lies a growing distance
# away, so that some pairs are labelled alike and some not. The validity mask is set by
# hand, so that both kinds of pair occur among the valid and the invalid ones. It then
# compares the loss and its gradient with respect to every weight of the classifier,
# for the book's manifold model and for the authors' variant, with what the library's
# training loops add up: `F.cross_entropy` plus the weight times `pair_loss`. The two
# compute the same operations, so they should agree up to rounding; the tolerance,
# $10^{-10}$, is far above double precision's rounding and far below any difference
# that a misplaced mask would make.

# %%
s0 = setups[names[0]]
C64 = copy.deepcopy(s0.classifier).double().eval()
G64 = copy.deepcopy(s0.G).double().eval()
gen = torch.Generator().manual_seed(seed)
valid = torch.tensor([True, True, False, True, False, True, True, False], device=dev)
n_ref = len(valid)
x_ref = s0.data.x_train[:n_ref].to(dev, torch.float64)
y_ref = s0.data.y_train[:n_ref].to(dev)
z1 = torch.randn(n_ref, latent_dim(G64), generator=gen, dtype=torch.float64)
spread = torch.linspace(0.1, 2.0, n_ref, dtype=torch.float64).view(-1, 1)
z2 = z1 + spread * torch.randn(z1.shape, generator=gen, dtype=torch.float64)
with torch.no_grad():
    x1, x2 = G64(z1.to(dev)), G64(z2.to(dev))
    labelled_apart = C64(x1).argmax(1) != C64(x2).argmax(1)


def loss_and_gradient(loss):
    grads = torch.autograd.grad(loss, list(C64.parameters()))
    return torch.cat([loss.detach().view(1)] + [g_.flatten() for g_ in grads])


ref_gaps = {}
for variant, w, only in (("manifold", P.at_weight, False),
                         ("authors", P.at_authors_weight, True)):
    ref = loss_and_gradient(manifold_loss(C64, x_ref, y_ref, x1, x2, valid, w, only))
    lib = loss_and_gradient(F.cross_entropy(C64(x_ref), y_ref)
                            + w * pair_loss(C64, x1, x2, valid, only_different=only))
    ref_gaps[variant] = (ref - lib).abs().max().item()
    print(f"{variant}: w = {w:g}, largest difference in the loss and its gradient, "
          f"reference vs library {ref_gaps[variant]:.1e}")
print(f"{n_ref} pairs: {int(valid.sum())} valid, "
      f"{int((valid & labelled_apart).sum())} valid and labelled differently")
assert max(ref_gaps.values()) < 1e-10, f"reference and library differ: {ref_gaps}"
glue("n_ref", n_ref, display=False)
glue("ref_gap", f"{max(ref_gaps.values()):.1e}", display=False)

# %% [markdown]
# On {glue:text}`n_ref` pairs the largest difference between the reference and the
# library, over the loss and every component of its gradient in both variants, is
# {glue:text}`ref_gap`.
#
# ## Training
#
# Both fine-tunings run `P.at_steps` Adam steps on batches of the training images, from the
# standard classifier's weights. On the manifold, `P.at_pairs` pairs with budget
# $\varepsilon$ = `P.at_eps` are searched (`P.at_pair_steps` steps) every
# `P.at_regen_every` steps; the PGD baseline crafts `P.pgd_at_attack_steps`-step $L_2$ PGD
# examples with budget `P.pgd_at_eps` for every batch. Both are cached: a second run of
# this chapter loads them.

# %%
models = {}
with run.timer("training"):
    for name, s in setups.items():
        models[name] = {"standard": s.classifier}
        for method, label in (("manifold", "manifold"), ("pgd", "PGD")):
            net = robust_classifier(method, s.classifier, s.data, P, G=s.G, seed=seed,
                                    cache_dir=cache_dir)
            run.record_model(f"classifier_{method}_{name}", net)
            models[name][label] = net

fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.2), squeeze=False)
for ax, name in zip(axes[0], names):
    for k, label in enumerate(("manifold", "PGD")):
        hist = models[name][label].history
        if hist:
            ax.plot(hist["cross_entropy"], color=f"C{k}",
                    label=f"{label}: cross-entropy")
        if hist.get("pair_divergence"):
            ax.plot(hist["pair_divergence"], color=f"C{k}", ls="--",
                    label=f"{label}: pair divergence")
    ax.set_title(name), ax.set_xlabel("step")
    ax.set_yscale("log"), ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The curves come from the training run that made the cached weights (they are stored with
# them). The PGD curve is the loss on adversarial examples, which is why it lies above the
# others. For the manifold model, watch whether the pair divergence (dashed) falls, as the
# classifier learns to agree with itself across each pair, while its cross-entropy on the
# data stays low.
#
# ## The authors' variant
#
# The authors' code, as its MNIST README and pair search show {cite:p}`jalalcode`, does not
# add the pair term to clean training. It resumes adversarial training from the
# PGD-trained classifier, with
# the pair term added at a small weight $w_a$ = {glue:text}`authors_weight`, and counts
# a pair only when it is valid *and* the current classifier labels its two images
# differently:
#
# $$
# \min_{\theta,\ \theta \leftarrow \theta_{\mathrm{PGD}}}\;
# \mathbb{E}_{(x, y)}\Big[\max_{\lVert \delta \rVert_2 \le \varepsilon_{\mathrm{PGD}}}
# \ell_{\mathrm{CE}}\big(C_\theta(x + \delta), y\big)\Big]
# \;+\; w_a \cdot \frac{1}{|V_{\ne}|} \sum_{(z_1, z_2) \in V_{\ne}}
# D\big(C_\theta(G(z_1)),\, C_\theta(G(z_2))\big),
# $$
#
# where $\theta \leftarrow \theta_{\mathrm{PGD}}$ says where the optimisation starts,
# and $V_{\ne}$ holds the valid pairs with
# $\arg\max C_\theta(G(z_1)) \ne \arg\max C_\theta(G(z_2))$, labels taken in the
# same forward pass. Both inner maxima are the ones above: PGD over the $L_2$ ball, the
# min-max search over pairs within $\varepsilon$. Here it runs
# {glue:text}`authors_steps` steps after the PGD classifier's {glue:text}`pgd_steps`
# ({glue:text}`authors_steps_note`), on the same pairs' settings as the manifold model
# (`robust_classifier("authors", ...)`: the PGD training loop with a `PairTerm`, masked
# by `pair_loss(..., only_different=True)`).
#
# **Deviations from the authors.** The book's manifold model differs from the variant of
# the authors' code in several ways at once:
#
# - it starts from the standard classifier, not from the PGD-trained one;
# - its data term is the cross-entropy on clean images, not on PGD examples;
# - its weight is $w$ = {glue:text}`manifold_weight`, not $w_a$;
# - it masks on validity alone, not on valid and differently labelled pairs.
#
# Both models, and the book's version of the authors' variant, share the book's own
# choices, stated earlier in this chapter and the previous one:
#
# - each pair is masked before the sum, and the sum is divided by the number of pairs
#   kept; the authors' code summed before masking;
# - the pair search during training runs all its steps, without early stopping;
# - the divergence is the symmetric KL; the authors' code uses a cross-entropy
#   ({doc}`06_overpowered_attack`);
# - PGD examples take {glue:text}`pgd_attack_steps` steps in this profile; the
#   authors' MNIST code takes 40.
#
# Since the variant resumes from the PGD classifier, it has had the PGD classifier's
# steps and its own: a difference between the two measures the pair term and the extra
# PGD steps together.

# %%
glue("authors_weight", f"{P.at_authors_weight:g}", display=False)
glue("authors_steps", P.at_authors_steps or P.at_steps, display=False)
glue("authors_steps_note",
     "fewer than the other fine-tunings, to keep this profile within its time budget; "
     "so few steps can change the PGD classifier only a little"
     if (P.at_authors_steps or P.at_steps) < P.at_steps
     else "as many as each of the other fine-tunings", display=False)
glue("pgd_steps", P.at_steps, display=False)
glue("manifold_weight", f"{P.at_weight:g}", display=False)
glue("pgd_attack_steps", P.pgd_at_attack_steps, display=False)
with run.timer("training"):
    for name, s in setups.items():
        net = robust_classifier("authors", s.classifier, s.data, P, G=s.G, seed=seed,
                                cache_dir=cache_dir)
        run.record_model(f"classifier_authors_{name}", net)
        models[name]["authors"] = net
CLASSIFIERS = tuple(models[names[0]])  # standard, manifold, PGD, authors

fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.2), squeeze=False)
for ax, name in zip(axes[0], names):
    before = models[name]["PGD"].history.get("cross_entropy", [])
    hist = models[name]["authors"].history
    ax.plot(before, color="C2", label="PGD: cross-entropy")
    if hist:
        t = range(len(before), len(before) + len(hist["cross_entropy"]))
        ax.plot(t, hist["cross_entropy"], color="C3", label="authors: cross-entropy")
        ax.plot(t, hist["pair_divergence"], color="C3", ls="--",
                label="authors: pair term (before the weight)")
    ax.set_title(name), ax.set_xlabel("step")
    ax.set_yscale("log"), ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The authors' run continues the PGD run's curve, on the same loss (the cross-entropy on
# PGD examples), with the pair term dashed: the mean divergence over the valid pairs
# that the classifier labels differently, zero at a step where none is left (the log
# scale leaves such steps out). With a weight this small the pair term barely moves the
# total loss; whether it changes the classifier on the range is what the pair columns
# below measure.

# %% [markdown]
# ## Before and after, on one attack budget
#
# For each classifier:
#
# - **clean**: accuracy on the test set ({glue:text}`n_test` images), alone;
# - **pairs**: the previous chapter's search at budget $\varepsilon$ = `P.at_eps`, run
#   against this classifier from the same starting latents (the same seed) as against the
#   others, so that search $i$ is paired across classifiers. Every search runs all its
#   steps: with early stopping a search ends at the first label flip, and the mean
#   divergence would mix barely-flipped pairs with fully run ones in proportions that
#   depend on the classifier. The columns give the share of searches that end valid and
#   classified differently, that share among valid pairs, and the mean divergence over
#   valid pairs;
# - **white-box PGD**: the classifier's own accuracy under $L_2$ PGD at `P.pgd_at_eps`,
#   without INC;
# - **INC** with this classifier, clean and under transferred FGSM and PGD and tangent
#   BPDA+EOT (the strongest adaptive attack of {doc}`05_adaptive_attacks`) at the same
#   $L_2$ budget, and the worst case over the three, on {glue:text}`n_eval` test
#   images.

# %%
def attacks_for(s, clf):
    mirror = s.attacker_inc(P, seed + 1)  # the short projection, every restart run
    mirror.classifier = clf
    steps = dict(steps=P.adaptive_steps, seed=seed)
    return {
        "FGSM (transfer)": lambda x, y, e, n: fgsm(clf, x, y, e, norm=n),
        "PGD (transfer)": lambda x, y, e, n: pgd(clf, x, y, e, norm=n, **steps),
        "tangent BPDA+EOT": lambda x, y, e, n: pgd(BPDA(mirror, P.eot_samples,
                                                        backward="tangent"),
                                                   x, y, e, norm=n, **steps),
    }


EPS = P.pgd_at_eps
N_EVAL = P.n_at_eval or P.n_adaptive  # test images of the INC and white-box evaluations
glue("n_eval", N_EVAL, display=False)
glue("n_test", P.n_test, display=False)
tables, robust, paths, projections, paired, searches = {}, {}, {}, {}, {}, {}
with run.timer("evaluation"):
    for name, s in setups.items():
        x, y = s.test_images(N_EVAL, dev)
        xt, yt = s.data.x_test.to(dev), s.data.y_test.to(dev)
        # INC's projection does not depend on the classifier
        proj = s.inc(P, seed).project(x)
        projections[name] = proj
        z_a, z_b = path_endpoints(proj.z, y, P.n_paths)
        rows, robust[name], paths[name] = [], {}, {}
        pair_rows, paired[name], searches[name] = compare_pairs(
            s.G, models[name], P.at_eps, P.minmax_n, steps=P.minmax_steps, seed=seed,
            return_scores=True)
        for (label, clf), summary in zip(models[name].items(), pair_rows):
            defense = s.inc(P, seed)
            defense.classifier = clf
            table = robust_accuracy_table(defense, x, y, attacks_for(s, clf), [EPS],
                                          norm="l2")
            robust[name][label] = table[0]
            images, probs = confidence_path(s.G, clf, z_a, z_b, n=33)
            stats = path_statistics(probs)
            paths[name][label] = probs
            rows.append({
                "classifier": label, "clean": accuracy(clf, xt, yt),
                "pairs: valid and different": summary["valid and different"],
                "pairs: different among valid": summary["different among valid"],
                "pairs: mean divergence": summary["mean divergence (valid)"],
                "white-box PGD": accuracy(clf, pgd(clf, x, y, EPS, norm="l2",
                                                   steps=P.adaptive_steps,
                                                   seed=seed), y),
                "INC clean": accuracy(clf, proj.x_hat, y),
                **{f"INC {k}": v for k, v in table[0].items()
                   if k not in ("norm", "eps")},
                "path max slope": stats.max_slope, "path uncertain": stats.uncertain,
            })
        tables[name] = rows
        display(Markdown(f"**{name}**: pairs at $L_2$ {P.at_eps:g}; "
                         f"attacks at $L_2$ {EPS:g} "
                         f"({N_EVAL} images for INC and white-box PGD)\n\n"
                         + markdown_table(rows)))
        display(Markdown("Pairs, paired over the same starting latents, against the "
                         "standard classifier (mean difference and 95% interval):\n\n"
                         + "\n".join(
            f"- {label}: score {d['score']['mean']:+.3f} "
            f"({d['score']['low']:+.3f} to {d['score']['high']:+.3f}); "
            f"success {d['success']['mean']:+.3f} "
            f"({d['success']['low']:+.3f} to {d['success']['high']:+.3f}, "
            f"McNemar p = {d['success']['p_mcnemar']:.2g})"
            for label, d in paired[name].items())))

# %% [markdown]
# ## The softer boundary
#
# Take two test images of different classes, invert both, and walk the straight line
# between their latents: $G((1-t) z_a + t z_b)$ for $t$ from 0 to 1. Along the walk the
# image changes class somewhere; the plot shows each classifier's probability of the start
# class. A sharp boundary is a step; a soft one is a ramp. The table above gives two
# summaries over `P.n_paths` such walks: the **max slope** of that probability per unit of
# path (a step over one of the 32 intervals gives 32, a straight ramp 1) and the share of
# points where the classifier's top probability is below 0.9 (**uncertain**).

# %%
fig, axes = plt.subplots(len(names), 4, figsize=(13, 3 * len(names)), squeeze=False)
for i, name in enumerate(names):
    start_p = {label: start_class_probability(paths[name][label]).cpu()
               for label in CLASSIFIERS}
    t = torch.linspace(0, 1, start_p["standard"].shape[1])
    for j in range(3):
        ax = axes[i][j]
        for k, label in enumerate(CLASSIFIERS):
            ax.plot(t, start_p[label][j], color=f"C{k}", label=label)
        ax.set_ylim(-0.02, 1.02), ax.set_xlabel("t")
        ax.set_title(f"{name}, path {j + 1}")
    ax = axes[i][3]
    for k, label in enumerate(CLASSIFIERS):
        ax.plot(t, start_p[label].mean(0), color=f"C{k}", label=label)
    ax.set_ylim(-0.02, 1.02), ax.set_xlabel("t")
    ax.set_title(f"{name}: mean over paths")
    axes[i][0].set_ylabel("probability of the start class")
axes[0][3].legend(fontsize=8)
plt.tight_layout()
plt.show()

for name, s in setups.items():
    z_a, z_b = path_endpoints(projections[name].z,
                              s.test_images(N_EVAL, dev)[1], 1)
    images, _ = confidence_path(s.G, s.classifier, z_a, z_b, n=11)
    image_grid([images[0]], suptitle=f"{name}: path 1, t = 0, 0.1, ..., 1")
    plt.show()

# %% [markdown]
# ## Reading the table
#
# The changes each fine-tuning made, in accuracy points (or in the pairs' divergence), from
# the standard classifier's row of the same dataset in the first table above:

# %%
deltas = []
for name in names:
    by = {r["classifier"]: r for r in tables[name]}
    for label in CLASSIFIERS[1:]:
        r, b = by[label], by["standard"]
        deltas.append({"dataset": name, "fine-tuning": label,
                       "clean": 100 * (r["clean"] - b["clean"]),
                       "pairs: different among valid":
                           100 * (r["pairs: different among valid"]
                                  - b["pairs: different among valid"]),
                       "pairs: mean divergence":
                           r["pairs: mean divergence"] - b["pairs: mean divergence"],
                       "white-box PGD": 100 * (r["white-box PGD"] - b["white-box PGD"]),
                       "INC worst case":
                           100 * (r["INC worst case"] - b["INC worst case"])})
display(Markdown(markdown_table(deltas, digits=1)))

# %% [markdown]
# What to look for:
#
# - **On the range**, manifold training is built to lower the pairs' divergence and the
#   path's slope; the paired differences under the first table, and the claims below,
#   say whether it did. Look also at the *uncertain* column: a classifier taught to agree
#   with itself across every valid pair can buy that by being less confident on the whole
#   range, including the projections of test images, and not only near its boundaries.
#   Its clean accuracy, on real images, says whether that cost anything.
# - **Off the range**, the white-box PGD column measures the classifier alone against
#   perturbations that leave the range. That is what PGD training is built for, and
#   manifold training is not.
# - **Under INC**, the classifier only ever sees projections, which lie on the range, so a
#   classifier that is robust there should help the defense. The INC columns measure how
#   much, against attacks that do reach the projections.
# - **A softer boundary is not a wider margin.** The pairs still exist: a classifier with
#   ten classes on a connected range must change its label somewhere, and two images on
#   either side of that place are a valid, differently classified pair. What training can
#   change is how confidently the two are told apart, which is what the divergence
#   measures.

# %% [markdown]
# ## The authors' variant against its PGD baseline
#
# The tables above compare each classifier with the standard one. The authors' variant
# is PGD training continued, so the question for it is what it changed in the PGD
# classifier it resumed from. Each difference below is paired: clean accuracy on the
# same test images, white-box PGD on the same attacked images (the same attack as in the
# table), and the pair search from the same starting latents. Accuracies and the success
# share carry 95% Wilson intervals; each difference its paired 95% interval.
#
# What we predict, outside `smoke`: the pair term trains the classifier to agree with
# itself across exactly the pairs that the search counts as a success, so against the
# PGD classifier the mean pair score should fall (claimed when the upper end of its
# paired interval lies below zero). A pass does not credit the pair term alone, because
# the variant also ran more PGD steps. We make no prediction for the accuracies: the
# pair term's weight is small, and more PGD training may raise robustness and lower
# clean accuracy by amounts we have no basis to fix in advance.

# %%
from rmd_lib.attack_tables import correct
from rmd_lib.evaluation import paired_difference, wilson_interval
from rmd_lib.intervals import difference_text


def mean_text(values, share=True):
    """The mean of (N,) outcomes; for a share of 0/1 outcomes with its 95% Wilson
    interval, as 'mean (low to high)'."""
    if not share:
        return f"{float(values.mean()):.3f}"
    low, high = wilson_interval(float(values.sum()), len(values))
    return f"{float(values.mean()):.3f} ({low:.3f} to {high:.3f})"


def paired_text(d):
    p = f", McNemar p = {d['p_mcnemar']:.2g}" if "p_mcnemar" in d else ""
    return difference_text(d, 3) + p


with run.timer("evaluation"):
    for name, s in setups.items():
        x, y = s.test_images(N_EVAL, dev)
        xt, yt = s.data.x_test.to(dev), s.data.y_test.to(dev)
        outcomes = {}
        for label in ("PGD", "authors"):
            clf = models[name][label]
            x_adv = pgd(clf, x, y, EPS, norm="l2", steps=P.adaptive_steps, seed=seed)
            success, score = searches[name][label]  # the pair searches of the table
            outcomes[label] = {"clean": correct(clf, xt, yt).float().cpu(),
                               "white-box PGD": correct(clf, x_adv, y).float().cpu(),
                               "pairs: valid and different": success,
                               "pairs: mean score": score}
        rows, found = [], {}
        for what in outcomes["PGD"]:
            a, b = outcomes["PGD"][what], outcomes["authors"][what]
            found[what] = paired_difference(a, b)
            share = what != "pairs: mean score"  # the others are 0/1 outcomes
            rows.append({"measure": f"{what} (n = {len(a)})",
                         "PGD": mean_text(a, share), "authors": mean_text(b, share),
                         "authors - PGD": paired_text(found[what])})
        paired[name]["authors minus PGD"] = found
        display(Markdown(f"**{name}**: the authors' variant against the PGD classifier "
                         "(mean, 95% interval)\n\n" + markdown_table(rows)))
        if P.name != "smoke":
            d = found["pairs: mean score"]
            run.claim(f"{name}: mean pair score, authors minus PGD (upper end of the "
                      "paired 95% interval)", d["high"], "<", 0,
                      why="the authors' variant adds the pair term to PGD training; a "
                          "decrease is claimed only when the paired interval excludes "
                          "zero (the variant also ran more PGD steps)",
                      detail=f"mean [95% interval] {difference_text(d, 3)}, "
                             f"n = {d['n']}")

# %% [markdown]
# ## Takeaways
#
# - Manifold training adds to the clean cross-entropy $w$ times the mean divergence over
#   the valid min-max pairs, searched against the classifier as it is being trained and
#   renewed every few steps. Each pair is masked before the sum and the sum divided by
#   the number of valid pairs, so a pair outside the budget adds nothing to the gradient.
# - It is built to change the classifier *on the range*: how confidently it tells the two
#   images of a nearby pair apart. In this run, against the standard classifier, it moved
#   the mean pair score (the divergence a search reaches, zero where it ends outside the
#   budget) by {glue:text}`score_change`, and the clean accuracy by
#   {glue:text}`clean_change` (manifold minus standard: mean and paired 95% interval).
# - PGD training is built for the reverse, perturbations that leave the range; the
#   white-box column measures that, and the INC columns what a classifier robust on the
#   range gives the defense.
# - A softer boundary is not a wider margin: valid, differently labelled pairs still
#   exist wherever the label changes on the range, and a classifier can lower their
#   divergence by being less confident everywhere near it.
# - The authors' variant resumes PGD training with a small pair term on valid,
#   differently labelled pairs; against its PGD baseline it has also had more PGD steps,
#   so the difference measures the two together.

# %% [markdown]
# ## What this chapter measured
#
# In `standard` and `paper` the notebook checks what the paper predicts: against the
# standard classifier, manifold training lowers the divergence that the pair search
# reaches and the share of searches that end valid and classified differently (each a
# paired difference over the same starting latents, claimed only when its 95% interval
# lies below zero), and it keeps the clean accuracy (at most 2 points lost). Every
# measured value is in the results file, whether or not it holds.

# %%
headline, score_change, clean_change = {}, [], []
for name in names:
    by = {r["classifier"]: r for r in tables[name]}
    xt, yt = setups[name].data.x_test.to(dev), setups[name].data.y_test.to(dev)
    right = {label: correct(models[name][label], xt, yt).float().cpu()
             for label in ("standard", "manifold")}
    clean_diff = paired_difference(right["standard"], right["manifold"])
    clean_change.append(f"{difference_text(clean_diff, 3)} for {name}")
    score_diff = paired[name]["manifold"]["score"]
    score_change.append(f"{difference_text(score_diff, 3)} for {name}")
    for label, r in by.items():
        key = f"{name}_{label.lower()}"
        for column, short in (("clean", "clean"),
                              ("pairs: valid and different", "pair_success"),
                              ("pairs: different among valid", "pair_different"),
                              ("pairs: mean divergence", "pair_divergence"),
                              ("white-box PGD", "whitebox_pgd"),
                              ("INC clean", "inc_clean"),
                              ("INC worst case", "inc_worst_case"),
                              ("path max slope", "path_slope"),
                              ("path uncertain", "path_uncertain")):
            if r[column] == r[column]:  # NaN (no valid pair) is left out
                headline[f"{key}_{short}"] = r[column]
    base, man = by["standard"], by["manifold"]
    if P.name != "smoke":
        for key, what in (
                ("score", "mean pair score (divergence where valid, else 0)"),
                ("success", "share of searches valid and classified differently")):
            d = paired[name]["manifold"][key]
            run.claim(f"{name}: {what}, manifold minus standard "
                      "(upper end of the paired 95% interval)", d["high"], "<", 0,
                      why="the paper: training on the pairs softens the boundary; "
                          "a decrease is claimed only when the paired interval "
                          "excludes zero",
                      detail=f"mean [95% interval] {difference_text(d, 3)}, "
                             f"n = {d['n']}")
        run.claim(f"{name}: clean accuracy lost to manifold training",
                  base["clean"] - man["clean"], "<=", 0.02,
                  why="the paper: no loss of accuracy; 2 points allowed, about twice "
                      "the standard error of an accuracy near 0.9 over "
                      f"{P.n_test} images")
glue("score_change", " and ".join(score_change), display=False)
glue("clean_change", " and ".join(clean_change), display=False)
run.write(headline, comparison=tables, robust_accuracy=robust, paired_pairs=paired)
run.report_claims()

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-mat-weight
# *Medium, about 40 minutes, most of it the three fine-tunings in `standard`.* Fine-tune
# with `at_weight` 0.1, 1 and 10 (use `P.with_(at_weight=...)` and `robust_classifier`;
# the starter below has the calls). Plot clean accuracy and the pairs' mean divergence
# against the weight. Where does the trade-off bite?
# ```
#
# ```{solution} ex-mat-weight
# :class: dropdown
# A larger weight drives the divergence of the pairs down further, because the classifier
# is rewarded for agreeing with itself across every valid pair; the cheapest way to do that
# is to become less confident everywhere near the range, which costs clean accuracy. The
# weight at which the clean accuracy starts to fall is the one to report, together with
# the divergence it buys.
# ```

# %%
# Starter for the exercise above. Each weight's classifier is cached like the others.
# s = setups[names[0]]
# xt, yt = s.data.x_test.to(dev), s.data.y_test.to(dev)
# sweep = {}
# for w in (0.1, 1.0, 10.0):
#     net = robust_classifier("manifold", s.classifier, s.data, P.with_(at_weight=w),
#                             G=s.G, seed=seed, cache_dir=cache_dir)
#     rows, _ = compare_pairs(s.G, {"manifold": net}, P.at_eps, P.minmax_n,
#                             steps=P.minmax_steps, seed=seed)
#     sweep[w] = accuracy(net, xt, yt), rows[0]["mean divergence (valid)"]
# print(sweep)  # then plot both against w, with a log scale for w

# %% [markdown]
# ```{exercise}
# :label: ex-mat-mask
# *Easy, about 10 minutes.* Write the authors' version of the pair loss, which sums the
# divergences over all pairs and multiplies by the fraction of valid ones, and compare
# its gradient with `pair_loss`'s on a batch where half the pairs are invalid (the
# starter below reuses the double-precision pairs of the reference check and leaves you
# one line to write). What does the bug train the classifier to do?
# ```
#
# ```{solution} ex-mat-mask
# :class: dropdown
# Summing first puts the invalid pairs' divergences into the gradient: the classifier is
# pushed to make images that are *farther apart than the budget* look alike, which is
# ordinary over-smoothing and costs accuracy. `pair_loss` masks each pair before the sum,
# so an invalid pair contributes exactly zero; the test suite checks that its gradient on
# invalid pairs is zero. In the starter's batch the gradient norms on the invalid pairs
# are therefore zero under `pair_loss` and positive under the sum-first version, scaled
# by the share of valid pairs but not removed by it.
# ```

# %%
# Starter for the exercise above: the reference check's pairs, every other one invalid.
# from rmd_lib.attacks import divergence
# half = torch.arange(n_ref, device=dev) % 2 == 0
# x1_grad = x1.clone().requires_grad_()
#
# def authors_pair_loss(net, x1, x2, valid):
#     d = divergence(net(x1), net(x2))  # the symmetric KL, one value per pair
#     return ...  # your line: the sum over all pairs, times the share of valid ones
#
# for loss_fn in (pair_loss, authors_pair_loss):
#     grad, = torch.autograd.grad(loss_fn(C64, x1_grad, x2, half), x1_grad)
#     print(loss_fn.__name__, "gradient norm on the invalid pairs:",
#           grad[~half].flatten(1).norm(dim=1))
