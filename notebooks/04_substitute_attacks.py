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
# # Black-box attacks: substitute models
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/04_substitute_attacks.ipynb)
#
# If the defense cannot be differentiated, replace it by something that can. In the
# black-box setting the attacker has an **oracle** $O$: a model it can query with inputs
# of its choice and that answers with a label, $O(x) = \arg\max_k \mathrm{INC}(x)_k$,
# while its weights, its gradients and its randomness stay hidden. The oracle here is INC.
# A **substitute model** is the attacker's own network $F$, trained to imitate the oracle
# from the labels it returns; adversarial examples crafted on $F$ are then sent to the real
# thing {cite:p}`papernot2017practical`. This chapter builds three substitutes for INC
# {cite:p}`ilyas2017robust`:
#
# 1. the **plain substitute**, trained from a few natural images labelled by the oracle and
#    grown by Jacobian-based dataset augmentation;
# 2. a **variant** whose training set also holds adversarial examples of INC's inner
#    classifier, labelled by the oracle: it learns how INC answers exactly the inputs an
#    attacker will send;
# 3. the **autoencoder substitute** for the inversion: an encoder $E$ trained so that
#    $G(E(x)) \approx G(z^\ast)$, giving the differentiable pipeline $C \circ G \circ E$.
#    It is not a black-box attack (it needs $G$ and $C$), but it asks the same question: does
#    an imitation of the projection carry attacks to the real one?
#
# Throughout, INC is the defense of the previous chapters, with this profile's projection
# budget ({glue:text}`inc_budget`).
#
# ```{admonition} In this chapter
# :class: note
# **You will learn** what an oracle and a substitute are; Papernot et al.'s Jacobian-based
# dataset augmentation as a formula and as a short function checked against the library;
# how an encoder can stand in for the projection, and why its attacks transfer poorly; and
# how to compare attacks on the same images with paired differences.
#
# **You need** {doc}`02_invert_and_classify` (INC, FGSM and BIM) and
# {doc}`03_white_box_attacks`; the Jacobian of a network's outputs with respect to its
# input.
#
# **Time:** about 30 minutes to read. Running it takes under a minute in `smoke` and
# {glue:text}`time_standard` in `standard` (the oracle's projections are most of it).
# `colab` is sized for 10 minutes on a Colab T4 and `paper` takes hours on one 80 GB GPU
# (both estimates, not yet measured). The banner of a run gives its own time.
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
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from rmd_lib.attack_tables import transfer_table
from rmd_lib.attacks import (EncoderSubstitute, bim, fgsm, jacobian_augment,
                             train_encoder, train_substitute)
from rmd_lib.data import dataset_names
from rmd_lib.evaluation import (accuracy, attack_table, markdown_table,
                                paired_difference, predict, start_run)
from rmd_lib.experiment import prepare
from rmd_lib.intervals import difference_text, interval_text, with_intervals
from rmd_lib.models import SubstituteNet
from rmd_lib.plotting import image_grid, set_style
from rmd_lib.training import seeded

try:
    from myst_nb import glue  # the book pastes these values into the text
except ImportError:  # on Colab the book's extras are not installed
    def glue(name, value, display=True):
        pass

set_style()
run = start_run("substitute_attacks", profile, seed, device, results_dir)
P, dev = run.profile, run.device
names = dataset_names(dataset)
setups = prepare(run, names, generator=generator, data_dir=data_dir,
                 cache_dir=cache_dir)
EPS = [0.1, 0.2, 0.3]
ATTACKS = {"FGSM": (fgsm, {}), "BIM": (bim, {"steps": P.bim_steps})}
inc = {name: s.inc(P, seed) for name, s in setups.items()}
# Attacks are judged on the first test images; the attacker's seed images are the last
# ones, so the two never overlap.
xy = {name: s.test_images(P.n_transfer, dev) for name, s in setups.items()}
seeds = {name: s.test_images(P.sub_seed, dev, offset=len(s.data.x_test) - P.sub_seed)
         for name, s in setups.items()}

glue("inc_budget", f"{P.proj_steps} steps from {P.proj_restarts} restarts",
     display=False)

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
baseline, base_ok = {}, {}
with run.timer("baseline"):
    for name in names:
        base_ok[name] = {}
        baseline[name] = attack_table(setups[name].classifier, {"INC": inc[name]},
                                      *xy[name], ATTACKS, EPS, outcomes=base_ok[name])
for name in names:
    shown = with_intervals(baseline[name], ["classifier", "INC"], P.n_transfer)
    display(Markdown(f"**{name}**, crafted on the classifier ({P.n_transfer} test "
                     "images)\n\n" + markdown_table(shown)))

# %% [markdown]
# ## Substitutes trained on the oracle's labels
#
# Papernot et al.'s procedure {cite:p}`papernot2017practical` starts from a small set
# $S_0$ of natural images (the attacker's *seeds*) and alternates training and
# augmentation for rounds $\rho = 0, 1, \dots$:
#
# $$
# F \leftarrow \arg\min_F \sum_{x \in S_\rho} \ell\big(F(x), O(x)\big), \qquad
# S_{\rho+1} = S_\rho \cup \Big\{\operatorname{clip}_{[0,1]}\big(x + \lambda_\rho\,
# \operatorname{sign} \nabla_x F_{O(x)}(x)\big) : x \in S_\rho \Big\}, \qquad
# \lambda_\rho = \lambda\, (-1)^{\lfloor \rho / \tau \rfloor} ,
# $$
#
# where $F_k$ is the substitute's logit of class $k$ and $\ell$ the cross-entropy. Each new
# point is a step from a training image in the direction that changes the substitute's
# score for the oracle's label fastest: near the substitute's decision boundary, where the
# oracle's labels teach it most. Each round doubles the set and costs one query per new
# point (the library caps the total at a query budget); the sign of $\lambda_\rho$ flips
# every $\tau$ rounds so that the points do not drift off in one direction. The
# augmentation step, written for reading:

# %%
def jacobian_augment_reference(F_net, x, oracle_labels, lam):
    """One round's new points: x + lam * sign(d F_{O(x)}(x) / dx), clipped to [0, 1]."""
    x = x.detach().requires_grad_(True)
    logit = F_net(x)[torch.arange(len(x)), oracle_labels]  # F_{O(x)}(x), per image
    grad, = torch.autograd.grad(logit.sum(), x)  # images are independent: one backward
    return (x + lam * grad.sign()).clamp(0, 1).detach()


# %% [markdown]
# The check compares it with the library's `jacobian_augment` on a few seed images in
# double precision, for a substitute fresh from its initialisation and for both signs of
# $\lambda$; both take the same gradient, so the tolerance on the largest pixel difference
# is $10^{-9}$, far below the step $\lambda$. Then `train_substitute` runs the whole
# procedure.
#
# The variant also gives the oracle the seed images' FGSM examples against $C$, at each
# budget of the tables below, and trains on its answers. Those are the inputs a combined
# attacker will send, so that is where the substitute must imitate INC best.

# %%
x_seed0, _ = seeds[names[0]]
x_chk = x_seed0[:4].double()
with seeded(seed):  # the library's default substitute, fresh
    F64 = SubstituteNet(10, x_chk.shape[1], x_chk.shape[-1]).to(dev).double()
# Any labels do for the check; the classifier's leave INC's random draws untouched.
labels_chk = setups[names[0]].classifier(x_chk.float()).argmax(1)
aug_gap = max(
    (jacobian_augment(F64, x_chk, labels_chk, lam)
     - jacobian_augment_reference(F64, x_chk, labels_chk, lam)).abs().max().item()
    for lam in (0.1, -0.1))
print(f"Jacobian augmentation: largest pixel difference, reference vs library "
      f"{aug_gap:.1e}")
assert aug_gap < 1e-9, f"reference and library augmentation differ by {aug_gap:.1e}"
glue("aug_gap", f"{aug_gap:.1e}", display=False)
glue("n_aug", len(x_chk), display=False)

# %%
subs = {}
with run.timer("substitutes"):
    for name in names:
        (xs, ys), clf = seeds[name], setups[name].classifier
        x_extra = torch.cat([fgsm(clf, xs, ys, e) for e in EPS])
        subs[name] = {
            "plain": train_substitute(inc[name], xs, rounds=P.sub_rounds,
                                      epochs=P.sub_epochs, query_budget=P.sub_budget,
                                      seed=seed),
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
display(Markdown(markdown_table(with_intervals(
    rows, ["accuracy", "agreement with INC"], P.n_transfer))))

# %% [markdown]
# On {glue:text}`n_aug` seed images the largest difference between the reference
# augmentation and the library's is {glue:text}`aug_gap`. The table gives each substitute's accuracy and its
# agreement with INC's labels on the {glue:text}`n_transfer` test images, with 95%
# Wilson intervals.
#
# Now the attack: FGSM and BIM crafted on each substitute, given to the substitute itself
# (white-box success on the stand-in), to the unprotected classifier and to INC.

# %%
glue("n_transfer", P.n_transfer, display=False)
transfer, trans_ok = {}, {}
with run.timer("transfer"):
    for name in names:
        targets = {"classifier": setups[name].classifier, "INC": inc[name]}
        trans_ok[name] = {kind: {} for kind in subs[name]}
        transfer[name] = {
            kind: transfer_table(sub.net, targets, *xy[name], ATTACKS, EPS,
                                 outcomes=trans_ok[name][kind])
            for kind, sub in subs[name].items()}
ACC_COLUMNS = ["substitute", "classifier", "INC"]
for name in names:
    for kind, rows_t in transfer[name].items():
        shown = with_intervals(rows_t, ACC_COLUMNS, P.n_transfer)
        display(Markdown(f"**{name}**, crafted on the {kind} substitute\n\n"
                         + markdown_table(shown)))

# %% [markdown]
# ## The autoencoder substitute for the inversion
#
# Project the attacker's training images with INC's own projection, and train an encoder
# $E$ to reproduce those projections,
#
# $$
# \min_E \; \frac1N \sum_{i} \Big( \tfrac1n \big\lVert G(E(x_i)) - G(z^\ast(x_i))
# \big\rVert_2^2 + w\, \tfrac1k \big\lVert E(x_i) - z^\ast(x_i) \big\rVert_2^2 \Big),
# $$
#
# with $G$ fixed and a small weight $w$ on the latent term, which keeps $E$ near the
# projection's own latents. Then attack the differentiable $C \circ G \circ E$. The
# table's `substitute` column is that model's accuracy on its own adversarial examples;
# the last is INC's on the same images.

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
            gap = ae[name].reconstruct(x) - inc[name].project(x).x_hat
            fit = gap.pow(2).mean().item()
        ae_rows.append({"dataset": name,
                        "per-pixel MSE, G(E(x)) vs INC's projection": fit,
                        "accuracy of C(G(E(x)))": accuracy(ae[name], x, y)})
        targets = {"classifier": s.classifier, "INC": inc[name]}
        trans_ok[name]["autoencoder"] = {}
        transfer[name]["autoencoder"] = transfer_table(
            ae[name], targets, x, y, ATTACKS, EPS,
            outcomes=trans_ok[name]["autoencoder"])
display(Markdown(markdown_table(with_intervals(ae_rows, ["accuracy of C(G(E(x)))"],
                                               P.n_transfer), digits=4)))
for name in names:
    shown = with_intervals(transfer[name]["autoencoder"], ACC_COLUMNS, P.n_transfer)
    display(Markdown(f"**{name}**, crafted on $C \\circ G \\circ E$ (column "
                     "'substitute')\n\n" + markdown_table(shown)))

# %% [markdown]
# Why the autoencoder's examples stay home: the clean digit, the BIM example crafted on
# $C \circ G \circ E$ at the largest budget, what $E$ makes of it, and what INC's projection
# makes of it. Titles are the labels given by $C \circ G \circ E$ (third row) and by INC
# (fourth row); the figure's title counts how many of the shown digits each one gets
# wrong.

# %%
for name in names:
    x, y = xy[name][0][:8], xy[name][1][:8]
    x_adv = bim(ae[name], x, y, EPS[-1], steps=P.bim_steps)
    via_e = ae[name].reconstruct(x_adv).detach()
    via_inc = inc[name].project(x_adv).x_hat
    clf = setups[name].classifier
    label_e, label_inc = clf(via_e).argmax(1), clf(via_inc).argmax(1)
    wrong_e, wrong_inc = int((label_e != y).sum()), int((label_inc != y).sum())
    image_grid([x, x_adv, via_e, via_inc],
               row_labels=["clean", "BIM on C∘G∘E", "G(E(x'))", "INC's projection"],
               titles=[[str(v) for v in y.tolist()], [""] * 8,
                       [str(v) for v in label_e.tolist()],
                       [str(v) for v in label_inc.tolist()]],
               suptitle=f"{name}: wrong through the encoder {wrong_e} of {len(y)}, "
                        f"through INC's projection {wrong_inc} of {len(y)}")
    plt.show()

# %% [markdown]
# ## Takeaways
#
# - A black-box attacker sees only an oracle's labels; it trains a substitute on them and
#   transfers attacks crafted on it.
# - Jacobian-based augmentation spends queries where the substitute's score for the
#   oracle's label changes fastest, $x + \lambda \operatorname{sign} \nabla_x
#   F_{O(x)}(x)$, growing the set each round.
# - An encoder can imitate the projection on natural images, but an attack on
#   $C \circ G \circ E$ mostly leads $E$ astray, and the true projection does not follow.
# - In this run, at the largest budget, INC under the substitutes' attacks against the
#   classifier under the white-box attack, paired on the same images:
#   {glue:text}`sub_gain`. Substitutes are weaker than the white-box attacks of
#   {doc}`03_white_box_attacks` and the adaptive ones of {doc}`05_adaptive_attacks`; a
#   defense that only resists them is not shown robust.
#
# ## What this chapter measured
#
# Predictions, each checked on every run at the largest budget in $L_\infty$, on the same
# test images, with paired 95% intervals:
#
# - every substitute attack (both substitutes, FGSM and BIM) leaves INC right more often
#   than the unprotected classifier under the white-box attack of the same kind: the
#   paired interval of INC's outcome (under the substitute's example) minus the
#   classifier's (under its own white-box example) lies above zero. A substitute only
#   imitates INC, and the projection removes much of what is crafted off the range;
# - the autoencoder substitute's examples fool $C \circ G \circ E$ more than they fool
#   INC: the paired interval of INC's outcome minus $C \circ G \circ E$'s lies above zero.
#
# The `smoke` profile's models train for seconds, too short for a prediction; there each
# claim asks only that INC not do worse beyond sampling error (the interval's high end is
# not below zero).

# %%
def row_at(rows, attack, eps):
    return next(r for r in rows if r["attack"] == attack and r["eps"] == eps)


def paired_claim(label, d, detail, why):
    if P.name == "smoke":
        run.claim(f"{label}, high end of the paired 95% interval", d["high"], ">=", 0.0,
                  detail=detail,
                  why="smoke's models are too weak to predict a gain: INC must not "
                      "lose beyond sampling error")
    else:
        run.claim(f"{label}, low end of the paired 95% interval", d["low"], ">", 0.0,
                  detail=detail, why=why)


headline, top, sub_gain = {}, EPS[-1], []
for name in names:
    for att in ATTACKS:
        white = row_at(baseline[name], att, top)["classifier"]
        white_ok = base_ok[name][att, top, "classifier"]
        key0 = f"{name}_{att.lower()}_{top}"
        headline[f"{key0}_classifier_whitebox"] = white
        from_clf = row_at(baseline[name], att, top)["INC"]
        headline[f"{key0}_inc_from_classifier"] = from_clf
        for kind in transfer[name]:
            r = row_at(transfer[name][kind], att, top)
            key = f"{key0}_{kind.replace(' ', '_')}"
            headline[f"{key}_inc"] = r["INC"]
            headline[f"{key}_substitute"] = r["substitute"]
            inc_ok = trans_ok[name][kind][att, top, "INC"]
            if kind == "autoencoder":
                sub_ok = trans_ok[name][kind][att, top, "substitute"]
                d = paired_difference(sub_ok, inc_ok)
                paired_claim(f"{name} {att} {top}: INC minus C∘G∘E on the "
                             "autoencoder's examples", d,
                             f"paired {difference_text(d)}, n = {d['n']}",
                             "prediction: the projection does not follow the encoder "
                             "astray; the paired interval is the margin")
            else:
                d = paired_difference(white_ok, inc_ok)
                sub_gain.append(f"{name} {att}, {kind}: {difference_text(d)}")
                paired_claim(f"{name} {att} {top}: INC under the {kind} substitute "
                             "minus the classifier under white-box", d,
                             f"INC {interval_text(r['INC'], P.n_transfer)}, classifier "
                             f"{interval_text(white, P.n_transfer)}, paired "
                             f"{difference_text(d)}, n = {d['n']}",
                             "prediction: a substitute only imitates INC, and the "
                             "projection removes much of what is crafted off the "
                             "range; the paired interval is the margin")
            headline[f"{key}_paired_gain"] = d["mean"]
    for kind, sub in subs[name].items():
        headline[f"{name}_{kind.replace(' ', '_')}_queries"] = sub.queries
glue("sub_gain", "; ".join(sub_gain), display=False)
run.write(headline, baseline=baseline, substitutes=rows, transfer=transfer,
          autoencoder=ae_rows)
run.report_claims()

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-sub-budget
# *Medium, about 30 minutes with the run.* Double `P.sub_rounds` (and the query budget with it). Does a substitute that agrees more
# with INC on clean images produce examples that transfer better to INC?
# ```
#
# ```{solution} ex-sub-budget
# :class: dropdown
# Agreement on clean images and agreement near the decision boundary are different things.
# Jacobian augmentation spends its queries near the substitute's own boundary, which is
# where transfer is decided, so more rounds help a little; but INC's boundary is that of
# $C$ on the range of $G$, and a substitute trained on INC's labels of off-range points
# learns it only indirectly. Expect the agreement to rise more than INC's accuracy under
# the transferred attack falls; compare the two on the same images with
# `paired_difference`.
# ```
#
# ```{exercise}
# :label: ex-sub-ae
# *Easy, about 20 minutes.* Train the encoder with `latent_weight=0` and then with a large weight. Which gives the
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
