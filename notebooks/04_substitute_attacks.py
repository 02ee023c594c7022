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
# # Black-box attacks: substitute models
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/04_substitute_attacks.ipynb)
#
# If the defense cannot be differentiated, replace it by something that can. A **substitute
# model** is the attacker's own network, trained to imitate the defense from the labels the
# defense returns; adversarial examples crafted on it are then sent to the real thing
# {cite:p}`papernot2017practical`. The paper {cite:p}`ilyas2017robust` tries three versions
# against INC, and this chapter rebuilds them:
#
# 1. the **plain substitute**, trained from a few natural images labelled by INC and grown by
#    Jacobian-based dataset augmentation;
# 2. a **stronger variant** whose training set also holds adversarial examples of INC's
#    inner classifier, labelled by INC: it learns how INC answers exactly the inputs an
#    attacker will send;
# 3. the **autoencoder substitute** for the inversion: an encoder $E$ trained so that
#    $G(E(x)) \approx G(z^\ast)$, giving the differentiable pipeline $C \circ G \circ E$.
#
# Throughout, INC is the defense of the previous chapters: the paper's VAE, ten restarts.

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
import torch
from IPython.display import Markdown, display

from rmd_lib.attack_tables import transfer_table
from rmd_lib.attacks import EncoderSubstitute, bim, fgsm, train_encoder, train_substitute
from rmd_lib.data import dataset_names
from rmd_lib.evaluation import accuracy, attack_table, markdown_table, predict, start_run
from rmd_lib.experiment import prepare
from rmd_lib.plotting import image_grid, set_style

set_style()
run = start_run("substitute_attacks", profile, seed, device, results_dir)
P, dev = run.profile, run.device
names = dataset_names(dataset)
setups = prepare(run, names, generator=generator, data_dir=data_dir, cache_dir=cache_dir)
EPS = [0.1, 0.2, 0.3]
ATTACKS = {"FGSM": (fgsm, {}), "BIM": (bim, {"steps": P.bim_steps})}
inc = {name: s.inc(P, seed) for name, s in setups.items()}
# Attacks are judged on the first test images; the attacker's seed images are the last
# ones, so the two never overlap.
xy = {name: s.test_images(P.n_transfer, dev) for name, s in setups.items()}
seeds = {name: s.test_images(P.sub_seed, dev, offset=len(s.data.x_test) - P.sub_seed)
         for name, s in setups.items()}

# %% tags=["remove-input"]
run.banner()

# %% [markdown]
# ## The baseline: attacks crafted on the classifier itself
#
# The upper end of what transfer can do is an attacker who has the inner classifier $C$
# itself, which is the foundation chapter's setting. Its row is repeated here, on this
# chapter's test images, as the reference for the substitutes: the classifier column is the
# unprotected classifier under a *white-box* attack.

# %%
baseline = {}
with run.timer("baseline"):
    for name in names:
        baseline[name] = attack_table(setups[name].classifier, {"INC": inc[name]}, *xy[name],
                                      ATTACKS, EPS)
for name in names:
    display(Markdown(f"**{name}**, crafted on the classifier\n\n" + markdown_table(baseline[name])))

# %% [markdown]
# ## Substitutes trained on INC's labels
#
# Papernot et al.'s procedure: label the seed images by querying INC, train the substitute
# (a small CNN of a different architecture from $C$), then add for every training image $x$
# the point $x + \lambda \operatorname{sign} \nabla_x F_{o(x)}(x)$, where $o(x)$ is INC's
# label and $F$ the substitute, label the new points by querying INC, and repeat. Each round
# doubles the set, within a query budget.
#
# The variant also gives INC the seed images' FGSM examples against $C$, at each budget of
# the tables below, and trains on INC's answers. Those are the inputs a combined attacker
# will send, so that is where the substitute must imitate INC best.

# %%
subs = {}
with run.timer("substitutes"):
    for name in names:
        (xs, ys), clf = seeds[name], setups[name].classifier
        x_extra = torch.cat([fgsm(clf, xs, ys, e) for e in EPS])
        subs[name] = {
            "plain": train_substitute(inc[name], xs, rounds=P.sub_rounds, epochs=P.sub_epochs,
                                      query_budget=P.sub_budget, seed=seed),
            "with adversarial inputs": train_substitute(
                inc[name], xs, rounds=P.sub_rounds, epochs=P.sub_epochs,
                query_budget=P.sub_budget, x_extra=x_extra, seed=seed),
        }

rows = []
for name in names:
    x, y = xy[name]
    inc_labels = predict(inc[name], x).argmax(1)
    for kind, sub in subs[name].items():
        rows.append({"dataset": name, "substitute": kind, "oracle queries": sub.queries,
                     "training set by round": ", ".join(map(str, sub.sizes)),
                     "accuracy": accuracy(sub.net, x, y),
                     "agreement with INC": accuracy(sub.net, x, inc_labels)})
display(Markdown(markdown_table(rows)))

# %% [markdown]
# Now the attack: FGSM and BIM crafted on each substitute, given to the substitute itself
# (white-box success on the stand-in), to the unprotected classifier and to INC.

# %%
transfer = {}
with run.timer("transfer"):
    for name in names:
        targets = {"classifier": setups[name].classifier, "INC": inc[name]}
        transfer[name] = {kind: transfer_table(sub.net, targets, *xy[name], ATTACKS, EPS)
                          for kind, sub in subs[name].items()}
for name in names:
    for kind, rows_t in transfer[name].items():
        display(Markdown(f"**{name}**, crafted on the {kind} substitute\n\n" + markdown_table(rows_t)))

# %% [markdown]
# ## The autoencoder substitute for the inversion
#
# Project the attacker's training images with INC's own projection, train an encoder $E$ to
# reproduce those projections, $G(E(x)) \approx G(z^\ast(x))$, and attack the differentiable
# $C \circ G \circ E$. The table's first column is that model's accuracy on its own
# adversarial examples; the last is INC's on the same images.

# %%
ae, ae_rows = {}, []
with run.timer("autoencoder"):
    for name, s in setups.items():
        x_tr = s.data.x_train[:P.enc_train].to(dev)
        z_star = s.inc(P, seed + 3).project(x_tr).z
        E = train_encoder(s.G, x_tr, z_star, epochs=P.enc_epochs, seed=seed)
        ae[name] = EncoderSubstitute(E, s.G, s.classifier)
        x, y = xy[name]
        with torch.no_grad():
            fit = (ae[name].reconstruct(x) - inc[name].project(x).x_hat).pow(2).mean().item()
        ae_rows.append({"dataset": name, "per-pixel MSE, G(E(x)) vs INC's projection": fit,
                        "accuracy of C(G(E(x)))": accuracy(ae[name], x, y)})
        targets = {"classifier": s.classifier, "INC": inc[name]}
        transfer[name]["autoencoder"] = transfer_table(ae[name], targets, x, y, ATTACKS, EPS)
display(Markdown(markdown_table(ae_rows, digits=4)))
for name in names:
    display(Markdown(f"**{name}**, crafted on $C \\circ G \\circ E$ (column 'substitute')\n\n"
                     + markdown_table(transfer[name]["autoencoder"])))

# %% [markdown]
# Why the autoencoder's examples stay home: the clean digit, the BIM example crafted on
# $C \circ G \circ E$ at the largest budget, what $E$ makes of it, and what INC's projection
# makes of it. Titles are the labels given by $C \circ G \circ E$ (third row) and by INC
# (fourth row).

# %%
for name in names:
    x, y = xy[name][0][:8], xy[name][1][:8]
    x_adv = bim(ae[name], x, y, EPS[-1], steps=P.bim_steps)
    via_e = ae[name].reconstruct(x_adv).detach()
    via_inc = inc[name].project(x_adv).x_hat
    clf = setups[name].classifier
    image_grid([x, x_adv, via_e, via_inc],
               row_labels=["clean", "BIM on C∘G∘E", "G(E(x'))", "INC's projection"],
               titles=[[str(v) for v in y.tolist()], [""] * 8,
                       [str(v) for v in clf(via_e).argmax(1).tolist()],
                       [str(v) for v in clf(via_inc).argmax(1).tolist()]],
               suptitle=f"{name}: the encoder is fooled, the projection is not")
    plt.show()

# %% [markdown]
# ## What this chapter measured
#
# Checked on every run, at the largest budget ($\varepsilon = 0.3$, $L_\infty$):
#
# - every substitute attack (both substitutes, FGSM and BIM) leaves INC's accuracy at least
#   the profile's `substitute_margin` (15 points in `standard`) above the unprotected
#   classifier's accuracy under the white-box attack of the same kind. In the `standard`
#   runs the margin was smallest on Fashion-MNIST, whose range fits its images less well
#   than the digits' does; the claims below print every margin;
# - the autoencoder substitute is easy to fool but its examples do not transfer: INC's
#   accuracy on them exceeds that of $C \circ G \circ E$ by at least the profile's
#   `claim_margin` (25 points in `standard`).

# %%
def row_at(rows, attack, eps):
    return next(r for r in rows if r["attack"] == attack and r["eps"] == eps)


headline, top = {}, EPS[-1]
for name in names:
    for att in ATTACKS:
        white = row_at(baseline[name], att, top)["classifier"]
        headline[f"{name}_{att.lower()}_{top}_classifier_whitebox"] = white
        headline[f"{name}_{att.lower()}_{top}_inc_from_classifier"] = row_at(baseline[name], att, top)["INC"]
        for kind in transfer[name]:
            r = row_at(transfer[name][kind], att, top)
            key = f"{name}_{att.lower()}_{top}_{kind.replace(' ', '_')}"
            headline[f"{key}_inc"] = r["INC"]
            headline[f"{key}_substitute"] = r["substitute"]
            if kind == "autoencoder":
                run.claim(f"{name} {att} {top}: INC minus C∘G∘E accuracy (autoencoder substitute)",
                          r["INC"] - r["substitute"], ">=", P.claim_margin)
            else:
                run.claim(f"{name} {att} {top}: INC under the {kind} substitute minus the "
                          "classifier under white-box", r["INC"] - white, ">=", P.substitute_margin)
    for kind, sub in subs[name].items():
        headline[f"{name}_{kind.replace(' ', '_')}_queries"] = sub.queries
run.write(headline, baseline=baseline, substitutes=rows, transfer=transfer, autoencoder=ae_rows)
run.report_claims()

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-sub-budget
# Double `P.sub_rounds` (and the query budget with it). Does a substitute that agrees more
# with INC on clean images produce examples that transfer better to INC?
# ```
#
# ```{solution} ex-sub-budget
# :class: dropdown
# Agreement on clean images and agreement near the decision boundary are different things.
# Jacobian augmentation spends its queries near the substitute's own boundary, which is
# where transfer is decided, so more rounds usually help a little; but INC's boundary is
# that of $C$ on the range of $G$, and a substitute trained on INC's labels of off-range
# points learns it only indirectly. Compare the agreement and the INC column of your tables.
# ```
#
# ```{exercise}
# :label: ex-sub-ae
# Train the encoder with `latent_weight=0` and then with a large weight. Which gives the
# better substitute for attacks, and why does neither transfer to INC?
# ```
#
# ```{solution} ex-sub-ae
# :class: dropdown
# The encoder is a feed-forward map trained on natural images; its behaviour off that set
# is unconstrained, and the attack finds inputs where $E$ jumps to a latent of another
# class. The true projection minimises $\lVert G(z) - x\rVert$ from many starts and is not
# led by such inputs, because the perturbation barely changes which $G(z)$ is nearest. The
# latent weight changes how well $E$ matches on natural images, not how it behaves off them.
# ```
