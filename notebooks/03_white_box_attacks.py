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
# # White-box attacks on invert-and-classify
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/03_white_box_attacks.ipynb)
#
# The previous chapter attacked only the classifier and fed the result to INC. An attacker
# who knows the whole defense, generator and projection included, can do better in
# principle. This chapter tries the two obvious white-box routes and measures what they
# buy:
#
# 1. the **Carlini–Wagner attack** {cite:p}`carlini2017towards`, the strongest attack on
#    the classifier alone, with a confidence margin $\kappa$ that makes its examples
#    survive more processing;
# 2. **differentiating through the projection**: keep $k$ steps of the latent-space descent
#    in the autograd graph and back-propagate through all of them.
#
# The paper's claim {cite:p}`ilyas2017robust` is that INC resists both in practice, the
# second because a projection of thousands of steps is too long to differentiate through.
# This chapter tests that claim at our budget, and measures what differentiating through the
# projection costs and what it buys.

# %% tags=["remove-cell"]
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
generator = "vae"     # the generator INC projects onto: "vae" or "gan"

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from rmd_lib.attacks import UnrolledINC, cw_l2, pgd
from rmd_lib.data import dataset_names
from rmd_lib.evaluation import markdown_table, start_run
from rmd_lib.experiment import prepare
from rmd_lib.plotting import image_grid, set_style
from rmd_lib.attack_tables import cw_table, unrolled_table

set_style()
run = start_run("white_box_attacks", profile, seed, device, results_dir)
P, dev = run.profile, run.device
names = dataset_names(dataset)
setups = prepare(run, names, generator=generator, data_dir=data_dir, cache_dir=cache_dir)
inc = {name: s.inc(P, seed) for name, s in setups.items()}
xy = {name: s.test_images(P.n_adaptive, dev) for name, s in setups.items()}

# %% tags=["remove-input"]
run.banner()

# %% [markdown]
# ## Carlini–Wagner against the classifier and against INC
#
# CW looks for the *smallest* $L_2$ perturbation that changes the label,
#
# $$ \min_{w}\; \lVert x' - x \rVert_2^2 + c\, \max\!\big(Z(x')_y - \max_{i\ne y} Z(x')_i,\; -\kappa\big),
#    \qquad x' = \tfrac12(\tanh w + 1), $$
#
# where $Z$ are the classifier's logits, and a binary search per image picks the smallest
# constant $c$ that succeeds. With $\kappa = 0$ the example only just crosses the decision
# boundary; a larger $\kappa$ demands that the wrong class win by a margin, at the price of
# a larger perturbation. The examples are crafted on the classifier and given to INC: the
# projection has to move them back across the boundary. Look at the INC column as
# $\kappa$ grows, and at the distance it costs.

# %%
cw = {}
with run.timer("cw"):
    for name in names:
        cw[name] = cw_table(setups[name].classifier, inc[name], *xy[name], P.cw_kappas,
                            steps=P.cw_steps, binary_steps=P.cw_binary_steps)
for name in names:
    display(Markdown(f"**{name}** ({P.n_adaptive} test images; CW $L_2$, {P.cw_steps} steps "
                     f"x {P.cw_binary_steps} binary-search rounds)\n\n" + markdown_table(cw[name])))

# %% [markdown]
# What the projection does to a CW example: the original, its CW image at the largest
# $\kappa$, and INC's projection of that. Titles give the predicted labels.

# %%
for name in names:
    x0, y0 = xy[name][0][:8], xy[name][1][:8]
    x_cw = cw_l2(setups[name].classifier, x0, y0, kappa=max(P.cw_kappas), steps=P.cw_steps,
                 binary_steps=P.cw_binary_steps)
    x_proj = inc[name].project(x_cw).x_hat
    rows = [x0, x_cw, x_proj]
    preds = [setups[name].classifier(r).argmax(1).tolist() for r in rows]
    titles = [[str(p) for p in row] for row in preds]
    image_grid(rows, row_labels=["original", f"CW, kappa {max(P.cw_kappas):g}", "projection"],
               titles=titles, suptitle=f"{name}: the classifier's label of each image")
    plt.show()

# %% [markdown]
# ## Differentiating through the projection
#
# The projection is a loop, $z_{t+1} = z_t - \eta\, \mathrm{Adam}(\nabla_z \lVert G(z_t) -
# x\rVert^2)$, and every step is differentiable in $x$. Keeping the last $k$ of them in the
# autograd graph gives an exact gradient of $C(G(z_k(x)))$: the **unrolled attack**. Below,
# PGD ($L_\infty$, $\varepsilon = 0.3$, the previous chapter's largest budget) runs on the
# unrolled model for several $k$, and its examples are then given to the full INC, which
# projects with its own budget and fresh random restarts. The table gives, per $k$, the
# accuracy of the unrolled model on its own adversarial examples (white-box success), that
# of INC, the seconds one gradient costs, and the median norm of that gradient.

# %%
EPS_UNROLL = 0.3
unrolled = {}
with run.timer("unrolled"):
    for name in names:
        unrolled[name] = unrolled_table(setups[name].G, setups[name].classifier, inc[name],
                                        *xy[name], P.unroll_steps, eps=EPS_UNROLL,
                                        restarts=P.unroll_restarts, pgd_steps=P.adaptive_steps)
for name in names:
    display(Markdown(f"**{name}** (PGD $L_\\infty$ {EPS_UNROLL}, {P.adaptive_steps} steps, "
                     f"{P.unroll_restarts} restart(s) unrolled)\n\n"
                     + markdown_table(unrolled[name], digits=3)))

# %% [markdown]
# Three things to look for.
#
# - **Cost.** The time of one gradient grows linearly with $k$, and so does the memory,
#   because every step's activations are kept for the backward pass. The paper's thousands
#   of steps from ten restarts multiply both.
# - **Gradient size.** Its norm typically falls by orders of magnitude as $k$ grows: the
#   descent forgets where it started, and $x$ acts on the end point only through the steps
#   near convergence. An attack that follows the raw gradient with a fixed step stalls; PGD
#   in $L_\infty$ follows only its sign, which a small norm does not hurt.
# - **Success against the real defense.** A short unrolled descent stops far from the
#   optimum, and the attack can exploit *where it stops*, which INC's longer projection does
#   not share: the unrolled model is fooled, INC is not. As $k$ approaches INC's own step
#   count the two maps agree more and the examples carry over.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for name in names:
    rows = unrolled[name]
    k = [r["k"] for r in rows]
    axes[0].plot(k, [r["unrolled model"] for r in rows], "o--", label=f"{name}: unrolled model")
    axes[0].plot(k, [r["INC"] for r in rows], "s-", label=f"{name}: full INC")
    axes[1].plot(k, [r["seconds per gradient"] for r in rows], "o-", label=name)
axes[0].set_xscale("log"), axes[1].set_xscale("log")
axes[0].set_xlabel("unrolled projection steps k"), axes[0].set_ylabel("accuracy under attack")
axes[0].set_ylim(0, 1.02), axes[0].legend(fontsize=8)
axes[1].set_xlabel("unrolled projection steps k"), axes[1].set_ylabel("seconds per gradient")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

lines = []
for name in names:
    last = unrolled[name][-1]
    lines.append(f"- **{name}**: unrolling {last['k']} steps (INC itself runs {P.proj_steps} steps "
                 f"from {P.proj_restarts} restarts), one gradient took "
                 f"{last['seconds per gradient']:.1f} s for {P.n_adaptive} images, and INC "
                 f"classified {last['INC']:.1%} of the attacked images correctly.")
display(Markdown("\n".join(lines)))

# %% [markdown]
# Compare the last figure with INC's accuracy under the transferred attacks of the previous
# chapter. Where it is far lower, differentiating through the projection *works* at this
# budget: what protects INC is then the cost of the gradient, not its absence, and a
# defender who counts on that cost is one faster machine away from being broken. The
# adaptive chapter attacks INC with cheaper surrogates of this gradient.

# %% [markdown]
# ## What this chapter measured
#
# Checked on every run (in `smoke`, whose models train for seconds, only that CW finds
# adversarial examples at all, and the second point):
#
# - CW at $\kappa = 0$ fools the classifier it was crafted on (accuracy at most 10%) but
#   much less of INC: INC's accuracy exceeds the classifier's by at least the profile's
#   margin.
# - White-box success is at least transfer success: the unrolled model's accuracy on its
#   own examples is never above INC's on the same examples (up to two images of noise).

# %%
headline = {}
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
    if P.name == "smoke":  # seconds of training and 20 CW steps: only check that CW works
        run.claim(f"{name}: share of images CW found an adversarial example for (kappa 0)",
                  kappa0["found"], ">", 0.0)
    else:
        run.claim(f"{name}: classifier accuracy on its own CW examples (kappa 0)",
                  kappa0["classifier"], "<=", 0.10)
        run.claim(f"{name}: INC minus classifier accuracy, CW kappa 0 (transferred)",
                  kappa0["INC"] - kappa0["classifier"], ">=", P.claim_margin)
    slack = 2 / P.n_adaptive
    run.claim(f"{name}: white-box success >= transfer (largest k: unrolled minus INC accuracy)",
              unrolled[name][-1]["unrolled model"] - unrolled[name][-1]["INC"], "<=", slack)
run.write(headline, cw_tables=cw, unrolled_tables=unrolled)
run.report_claims()

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-wb-kappa
# Plot INC's accuracy on CW examples against their median $L_2$ distance, one point per
# $\kappa$. Is a high-confidence CW example just a larger perturbation, or is it better at
# surviving the projection per unit of distance? Compare with PGD in $L_2$ at the same
# distances.
# ```
#
# ```{solution} ex-wb-kappa
# :class: dropdown
# Run `pgd(clf, x, y, eps, norm="l2")` at the median distances in the table and give the
# results to INC. In our runs the two attacks land close to one curve: what survives the
# projection is mostly a matter of how far the image was moved, and $\kappa$ is an
# indirect way of buying distance. Your numbers decide it for your models.
# ```
#
# ```{exercise}
# :label: ex-wb-restarts
# Unroll with `restarts=1` and then with the defense's own number of restarts. Which helps
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
