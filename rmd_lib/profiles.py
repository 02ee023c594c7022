"""Compute budgets, in one place: ``smoke`` (CI), ``standard`` (CPU book build), ``colab``
(a free Colab GPU, the GPU default), ``paper`` (the paper's scale on one large GPU), and
``colab-dryrun`` (colab's sizes with every iteration count cut to 2, for a CPU check).

Every notebook takes ``profile`` as a parameter and reads all of its sizes from here, so a
chapter never hard-codes how long it runs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

__all__ = ["Profile", "PROFILES", "get_profile", "resolve_device", "dry_run",
           "square_seconds_h200"]


@dataclass(frozen=True)
class Profile:
    """Sizes and step counts for one budget; every field is read by some chapter."""

    name: str
    # data: caps on the number of images used (None = all that the source has)
    n_train: int | None
    n_test: int
    # classifier (the authors' MNIST CNN)
    classifier_epochs: int
    # VAE (the paper's 784-500-500-20 model)
    vae_epochs: int
    # WGAN-GP generator (Defense-GAN's second generator)
    gan_iters: int
    gan_width: int
    # invert-and-classify: the projection used by the defense
    proj_steps: int
    proj_restarts: int
    # how many test images the attack tables use
    n_attack: int
    # BIM/PGD iterations
    bim_steps: int
    # grids for the "projection MSE against steps and restarts" figure
    sweep_steps: tuple[int, ...] = (10, 50, 200)
    sweep_restarts: tuple[int, ...] = (1, 4, 10)
    n_sweep: int = 100
    batch_size: int = 128
    # Attack chapters. White-box and adaptive attacks run on the first n_adaptive test images.
    n_adaptive: int = 200
    # Carlini-Wagner: Adam steps per constant, binary-search rounds, confidences kappa
    cw_steps: int = 100
    cw_binary_steps: int = 4
    cw_kappas: tuple[float, ...] = (0.0, 5.0, 20.0)
    # the unrolled attack: how many projection steps are differentiated through
    unroll_steps: tuple[int, ...] = (10, 50, 200)
    unroll_restarts: int = 2
    # adaptive attacks: PGD steps through BPDA, EOT samples, and the (steps, restarts) of the
    # cheaper projection the attacker runs inside each step; latent-space attack steps
    adaptive_steps: int = 20
    eot_samples: int = 4
    attack_proj: tuple[int, int] = (50, 4)
    latent_steps: int = 100
    # black-box chapter: test images the transfer tables use
    n_transfer: int = 300
    # substitute models: seed images, augmentation rounds, epochs per round, query budget
    sub_seed: int = 150
    sub_rounds: int = 5
    sub_epochs: int = 6
    sub_budget: int = 4000
    # autoencoder substitute: projected training images, encoder epochs
    enc_train: int = 2000
    enc_epochs: int = 20
    # the least drop, in accuracy points, from INC's first-order (transfer) accuracy to its
    # accuracy under adaptive attacks at the largest budget of each norm (checked outside
    # smoke). Measured in standard over 200 images: L-inf 0.3, 19.5 (MNIST) and 28.5 points
    # (Fashion-MNIST); L2 3.0, 44.5 and 47.0 points.
    adaptive_drop_linf: float = 0.15
    adaptive_drop_l2: float = 0.30
    # Square Attack, the gradient-free check of the adaptive chapter: it runs on the first
    # square_n of the n_adaptive images, at the largest budget of each norm, with at most
    # square_queries queries per image, each one a call of the full defense (every query
    # projects the images still running with the defense's whole budget). Measured on
    # standard's MNIST INC (200 steps, 10 restarts), 1 CPU thread, 20 images and 100
    # queries: 31 s at L-inf 0.3 and 48 s at L2 3.0. Standard runs 10 images, about 40 s
    # per dataset, to keep the chapter within the profile's 18-minute budget.
    # On a GPU the same arithmetic holds: see SQUARE_QUERY_S_H200 below; colab and paper
    # are sized by it, not by the paper's 10,000 queries, which no chapter could afford.
    square_n: int = 10
    square_queries: int = 100
    # the adaptive chapter's budgets: unnormalised L-inf and L2 norms on images in [0, 1]
    adaptive_eps_linf: tuple[float, ...] = (0.1, 0.2, 0.3)
    adaptive_eps_l2: tuple[float, ...] = (1.0, 2.0, 3.0)
    # the overpowered attack chapter: min-max pairs searched per dataset and budget (L2 eps on
    # images in [0, 1]), and Adam steps per search
    minmax_eps: tuple[float, ...] = (1.0, 2.0, 3.0)
    minmax_n: int = 256
    minmax_steps: int = 200
    # adversarial training on the manifold: fine-tuning steps (batches of batch_size), the
    # pairs' budget, the pair term's weight, pairs renewed every at_regen_every steps
    # (at_pairs pairs of at_pair_steps search steps), Adam's learning rate
    at_steps: int = 150
    at_eps: float = 2.0
    at_weight: float = 1.0
    at_regen_every: int = 10
    at_pairs: int = 64
    at_pair_steps: int = 50
    at_lr: float = 1e-4
    # the PGD-trained baseline (Madry et al.; the authors' MNIST code: L2 1.5, 40 steps),
    # fine-tuned for the same at_steps steps
    pgd_at_eps: float = 1.5
    pgd_at_attack_steps: int = 10
    # the authors' variant: PGD training resumed from the PGD classifier for
    # at_authors_steps steps (None: at_steps), plus the pair term (pairs as above) with
    # this weight (the authors' code: 1e-2), masked on the pairs that are valid and
    # labelled differently
    at_authors_steps: int | None = None
    at_authors_weight: float = 1e-2
    # latent paths drawn for the confidence-along-a-path figure
    n_paths: int = 64
    # test images of chapter 7's INC and white-box PGD evaluations (None: n_adaptive)
    n_at_eval: int | None = None
    # BEGAN, the faces chapter's generator: iterations, width n, output resolution, batch.
    # Standard: 1,200 iterations at n = 32 and 32x32, batch 16; measured 0.35-0.38 s of CPU
    # per iteration on one thread (7-7.6 min), less with 2 threads. Paper: n = 128 at 64x64.
    began_iters: int = 1200
    began_width: int = 32
    began_resolution: int = 32
    began_batch: int = 16
    # the faces chapter: test images of its INC evaluations, INC's projection there (steps,
    # restarts), FGSM budgets (L-inf), the substitute (seed images, augmentation rounds) and
    # the manifold fine-tuning (steps, pairs, pair search steps)
    n_faces: int = 100
    face_proj: tuple[int, int] = (100, 4)
    face_eps: tuple[float, ...] = (0.05, 0.1, 0.2)
    face_sub: tuple[int, int] = (60, 2)
    face_at: tuple[int, int, int] = (100, 16, 30)
    # the Deep Image Prior chapter: images (up to the 20 offline ones) and their side, the DIP
    # network's width and depth, fitting steps, the steps recorded for the curve and the one
    # the defense stops at, BIM budgets (L-inf on [0, 1]) and steps, and the BPDA attack's
    # PGD steps and EOT samples
    n_dip: int = 20
    dip_size: int = 224
    dip_width: int = 16
    dip_depth: int = 5
    dip_steps: int = 300
    dip_record: tuple[int, ...] = (25, 50, 100, 150, 200, 300)
    dip_stop: int = 100
    dip_lr: float = 0.01
    dip_eps: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255)
    dip_bim_steps: int = 10
    dip_bpda_eps: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255)
    dip_bpda_steps: int = 5
    dip_eot: int = 1
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "Profile":
        """A copy with some fields changed (for exercises and tests)."""
        return replace(self, **changes)


PROFILES: dict[str, Profile] = {
    # CI: each notebook within 90 s on 2 CPU cores; numbers only sanity-checked.
    "smoke": Profile(
        name="smoke", n_train=1000, n_test=200,
        classifier_epochs=3, vae_epochs=20, gan_iters=40, gan_width=16,
        proj_steps=40, proj_restarts=2, n_attack=48, bim_steps=5,
        sweep_steps=(5, 20, 40), sweep_restarts=(1, 2), n_sweep=24,
        n_adaptive=24, cw_steps=20, cw_binary_steps=2, cw_kappas=(0.0, 5.0),
        unroll_steps=(2, 5), unroll_restarts=1, adaptive_steps=3, eot_samples=2,
        attack_proj=(10, 1), latent_steps=10, square_n=8, square_queries=10,
        sub_seed=30, sub_rounds=2, sub_epochs=3,
        sub_budget=200, enc_train=200, enc_epochs=3, n_transfer=24,
        minmax_eps=(1.0, 3.0), minmax_n=32, minmax_steps=30, at_steps=6, at_regen_every=3,
        at_pairs=16, at_pair_steps=10, pgd_at_attack_steps=2, n_paths=8,
        began_iters=30, began_width=16, began_resolution=32, began_batch=16,
        n_faces=8, face_proj=(10, 1), face_sub=(8, 1), face_at=(3, 4, 5),
        n_dip=4, dip_size=64, dip_width=8, dip_depth=3, dip_steps=20, dip_record=(5, 10, 20),
        dip_stop=10, dip_bim_steps=3, dip_bpda_steps=2,
    ),
    # CPU book build: real numbers; sized for 18 min a notebook on 2 cores.
    # rmd_lib.evaluation.STANDARD_MEASURED_S holds each chapter's measured time.
    "standard": Profile(
        name="standard", n_train=20000, n_test=1000,
        classifier_epochs=4, vae_epochs=100, gan_iters=1200, gan_width=32,
        proj_steps=200, proj_restarts=10, n_attack=1000, bim_steps=20,
        sweep_steps=(10, 25, 50, 100, 200, 400), sweep_restarts=(1, 2, 5, 10), n_sweep=100,
        eot_samples=2,
        # The attacker's projection runs every restart to the end (Setup.attacker_inc).
        # Measured on the MNIST VAE, 200 test images: 2 restarts unpruned cost 100
        # gradient evaluations per image and reach a 90th-percentile MSE of 0.0308, the
        # default's 4 pruned restarts 80 and 0.0310, 4 unpruned 200 and 0.0291; 2 keeps
        # the adaptive chapter within its time.
        attack_proj=(50, 2),
        # DIP on 2 CPU cores: at 224x224 one step of a width-16 network costs 0.1 s per
        # image, and 150 steps of a width-8 one left the classifier at 0% on the clean
        # reconstructions, so standard fits 128x128 images (the classifier resizes them to
        # its 224 inside): 0.027 s per image and step at width 16. lr 0.02 fitted worse
        # than the paper's 0.01 (measured). BPDA: 2 PGD steps at the largest budget only.
        dip_size=128, dip_steps=300, dip_record=(25, 50, 100, 150, 200, 300), dip_stop=300,
        dip_eps=(4 / 255, 8 / 255), dip_bpda_eps=(8 / 255,), dip_bpda_steps=2,
        # Chapter 7's authors' variant, resumed from the PGD classifier: measured on one
        # loaded CPU thread, 2.4 s per step (PGD examples and the pair term), 355 s for
        # at_steps' 150, and 162 s to evaluate one more classifier per dataset; 20 steps
        # keep the chapter's extra time near 7 minutes for two datasets on that thread.
        at_authors_steps=20,
        # To bring the CPU book nearer its time budget: the adaptive chapter runs the
        # smallest and largest budget of each norm (the claims and Square use the largest),
        # and chapter 7 evaluates INC and white-box PGD on 100 images (its claims rest on
        # the pair searches and the full test set, not on these).
        adaptive_eps_linf=(0.1, 0.3), adaptive_eps_l2=(1.0, 3.0), n_at_eval=100,
    ),
    # A free Colab GPU (a 16 GB T4), the GPU default: every chapter within about 10 minutes
    # and 12 GB of GPU memory, with numbers at least as meaningful as standard's: full
    # training sets, at least 1,000 test images wherever an accuracy is reported, and
    # Defense-GAN's projection budget (200 steps, 10 restarts). These sizes are estimates
    # scaled from the CPU timings and the H200 benchmarks; scripts/gpu_check.sh measures
    # each chapter's time and peak memory against that budget on a GPU.
    "colab": Profile(
        name="colab", n_train=None, n_test=10000,
        classifier_epochs=10, vae_epochs=50, gan_iters=5000, gan_width=64,
        proj_steps=200, proj_restarts=10, n_attack=1000, bim_steps=20,
        sweep_steps=(10, 25, 50, 100, 200, 400), sweep_restarts=(1, 2, 5, 10), n_sweep=500,
        batch_size=256, n_adaptive=1000, cw_binary_steps=5, eot_samples=4,
        # Square on 16 images x 100 queries: at most 30 s on an H200 (square_seconds_h200),
        # where 1,000 images x 5,000 queries would take about a day.
        square_n=16, square_queries=100,
        n_transfer=1000, minmax_n=1000, at_steps=500,
        began_iters=3000, began_width=64, began_resolution=32, began_batch=64,
        n_faces=1000, face_proj=(200, 10), face_sub=(150, 4), face_at=(500, 64, 50),
        # DIP at the classifier's 224x224, with a narrower network than the paper's (64
        # channels, not 128) so that 20 photos reach the early-stopping region (about 1,000
        # steps at width 128 on an H200) within the chapter's budget; BPDA at the largest
        # budget only.
        n_dip=20, dip_size=224, dip_width=64, dip_depth=5, dip_steps=1000,
        dip_record=(50, 100, 200, 300, 500, 750, 1000), dip_stop=750,
        dip_eps=(4 / 255, 8 / 255), dip_bpda_eps=(8 / 255,), dip_bpda_steps=5,
    ),
    # GPU: the paper's scale; full datasets, thousands of projection steps.
    "paper": Profile(
        name="paper", n_train=None, n_test=10000,
        classifier_epochs=20, vae_epochs=200, gan_iters=20000, gan_width=64,
        proj_steps=2000, proj_restarts=10, n_attack=2000, bim_steps=40,
        sweep_steps=(10, 50, 200, 500, 1000, 2000, 4000), sweep_restarts=(1, 2, 5, 10, 20),
        n_sweep=500, batch_size=256,
        n_adaptive=1000, cw_steps=1000, cw_binary_steps=9, cw_kappas=(0.0, 5.0, 10.0, 20.0, 40.0),
        unroll_steps=(10, 50, 200, 1000), unroll_restarts=4, adaptive_steps=100,
        eot_samples=10, attack_proj=(200, 10), latent_steps=500, square_n=100,
        square_queries=1000, sub_seed=150, sub_rounds=6,
        sub_epochs=10, sub_budget=10000, enc_train=20000, enc_epochs=50, n_transfer=2000,
        minmax_eps=(0.5, 1.0, 2.0, 3.0, 4.0), minmax_n=1000, minmax_steps=500, at_steps=2000,
        at_pairs=128, at_pair_steps=100, pgd_at_attack_steps=40, n_paths=256,
        began_iters=100000, began_width=128, began_resolution=64, began_batch=16,
        n_faces=1000, face_proj=(2000, 10), face_sub=(150, 6), face_at=(2000, 128, 100),
        # DIP at the paper's size, measured on an H200 (20 photos, EfficientNet-Lite0 at 85%
        # clean, 0.10 s per step for 40 images): accuracy on the reconstructions of clean /
        # BIM 8/255 inputs was 0.30/0.35 at 500 steps, 0.65/0.50 at 1,000 and 0.60/0.40 at
        # 1,500 and 2,000, so the defense stops at 1,000. Like the paper's, this step count
        # is tuned on the evaluation photos themselves.
        dip_width=128, dip_depth=5, dip_steps=2000,
        dip_record=(50, 100, 200, 300, 500, 750, 1000, 1500, 2000), dip_stop=1000,
        dip_bpda_steps=20, dip_eot=4,
    ),
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None picks CUDA when present, else CPU; anything else must be a usable device."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device name; use 'auto', 'cpu' or 'cuda'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asks for CUDA but this machine has none; "
            "use device='auto' or 'cpu'."
        )
    return dev


# The fields that count iterations (epochs, steps, rounds): a dry run cuts each to 2.
_ITERATIONS = ("classifier_epochs", "vae_epochs", "gan_iters", "proj_steps", "bim_steps",
               "cw_steps", "cw_binary_steps", "adaptive_steps", "latent_steps", "sub_rounds",
               "sub_epochs", "enc_epochs", "minmax_steps", "at_steps", "at_pair_steps",
               "pgd_at_attack_steps", "began_iters", "dip_steps", "dip_bim_steps",
               "dip_bpda_steps", "square_queries")


def dry_run(profile: Profile) -> Profile:
    """``profile`` with every iteration count cut to 2 and every size kept: the same images,
    widths, resolutions and batches, so a CPU run finds shape and memory errors in minutes."""
    two = {f: 2 for f in _ITERATIONS}
    return profile.with_(
        name=f"{profile.name}-dryrun", **two, sweep_steps=(1, 2), unroll_steps=(1, 2),
        attack_proj=(2, profile.attack_proj[1]), at_regen_every=1, sub_budget=profile.sub_budget,
        face_proj=(2, profile.face_proj[1]), face_at=(2, profile.face_at[1], 2),
        dip_record=(1, 2), dip_stop=2,
        # None follows at_steps, cut above
        at_authors_steps=None if profile.at_authors_steps is None else 2,
    )


PROFILES["colab-dryrun"] = dry_run(PROFILES["colab"])


# What one Square query costs on a GPU: a full projection of the image. The library's
# default projection (200 steps, 10 restarts, MNIST VAE) ran at 444 images/s on an H200
# (python -m rmd_lib.bench projection, 10,000 images), before its pruning was moved to
# start at 20% of the steps, which made it 0.48x as fast on the CPU. So about 213 images/s,
# 4.7 ms per image and query, now: an estimate until scripts/gpu_check.sh times it.
SQUARE_QUERY_S_H200 = 1 / (444 * 0.48)


def square_seconds_h200(p: Profile, datasets: int = 2, norms: int = 2) -> float:
    """Square's worst case on an H200 in profile ``p``: every image of the first
    ``square_n`` runs all its queries, at each dataset and norm, each query a projection of
    ``proj_steps`` x ``proj_restarts`` (scaled from the default 200 x 10). An estimate."""
    scale = p.proj_steps * p.proj_restarts / 2000
    return datasets * norms * p.square_n * p.square_queries * SQUARE_QUERY_S_H200 * scale


def get_profile(name: str | Profile = "auto", device: str | torch.device | None = "auto") -> Profile:
    """Look a profile up by name; ``"auto"`` gives ``colab`` when CUDA is present (a free
    Colab GPU is the common one), else ``standard``; ``paper`` runs only when asked for."""
    if isinstance(name, Profile):
        return name
    if not isinstance(name, str):
        raise TypeError(f"profile must be a name such as 'smoke', got {type(name).__name__}.")
    key = name.strip().lower()
    if key == "auto":
        key = "colab" if resolve_device(device).type == "cuda" else "standard"
    if key not in PROFILES:
        raise ValueError(
            f"Unknown profile {name!r}; choose one of {sorted(PROFILES)} or 'auto'."
        )
    return PROFILES[key]
