"""Training loops, and the one call that loads a checkpoint or trains and caches a model.

``pretrained_or_train`` is the only way the chapters get a model: a checkpoint (local file or
URL with SHA-256) and training from scratch go through the same call, and a trained model is
cached under a hash of its configuration, so a second run of a notebook reuses it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .checks import check_labels, count_classes
from .data import Dataset, default_data_dir, download_url
from .models import VAE, BEGANDiscriminator, BEGANGenerator, MnistClassifier, WGANCritic, WGANGenerator
from .profiles import Profile, resolve_device

__all__ = [
    "fit_adam",
    "set_seed", "seeded", "train_classifier", "train_vae", "train_wgan_gp", "train_began",
    "wgan_gp_critic_loss",
    "pretrained_or_train", "save_checkpoint", "load_checkpoint", "model_config", "CACHE_FORMAT", "training_environment",
    "trained_with",
]

# Bump when a change to the models or loops makes old cached checkpoints wrong.
CACHE_FORMAT = 1


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with every RNG seeded as by ``set_seed(seed)``, then give the caller back
    its own Python, NumPy and torch (CPU and CUDA) random states.

    For a library function that needs the global RNG, e.g. to initialise a module's weights
    (nn.Module constructors draw from it): the weights depend on the seed alone, and the
    caller's random stream is not moved as a side effect.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    # torch.manual_seed also seeds every GPU (lazily, when CUDA is not yet started): fork
    # them all where there is CUDA, as torch.random.fork_rng does by default.
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=gpus):
            set_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def fit_adam(model: nn.Module, n: int, batch_loss, *, epochs: int, batch_size: int, lr: float,
         seed: int, desc: str, progress: bool) -> list[float]:
    """Adam over ``epochs`` shuffled passes; ``batch_loss(idx)`` is the mean loss of a batch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for _ in bar:
        total = 0.0
        for idx in _batches(n, batch_size, g):
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / n)
        bar.set_postfix(loss=f"{history[-1]:.4g}")
    model.eval()
    return history


def train_classifier(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                     batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                     progress: bool = True) -> list[float]:
    """Cross-entropy training with Adam; x (N, C, H, W) in [0, 1], y (N,). Returns epoch losses."""
    device = next(net.parameters()).device
    # A label without a logit would fail deep inside cross-entropy ("Target 12 is out of bounds").
    check_labels(y, len(x), "y", num_classes=count_classes(net, x[:1].to(device)))
    return fit_adam(net, len(x), lambda idx: F.cross_entropy(net(x[idx].to(device)), y[idx].to(device)),
                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, desc="classifier",
                progress=progress)


def train_vae(vae: VAE, x: torch.Tensor, *, epochs: int, batch_size: int = 100, lr: float = 1e-3,
              seed: int = 0, progress: bool = True) -> list[float]:
    """Maximises the ELBO with Adam; x (N, 1, 28, 28) in [0, 1]. Returns per-image losses by epoch."""
    device = next(vae.parameters()).device
    g_dev = torch.Generator(device=device).manual_seed(seed + 1)  # the reparameterisation noise
    return fit_adam(vae, len(x), lambda idx: vae.loss(x[idx].to(device), generator=g_dev),
                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, desc="VAE",
                progress=progress)


def wgan_gp_critic_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, *,
                        gp_weight: float = 10.0,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The WGAN-GP critic's loss (Gulrajani et al. 2017, eq. 3) on one batch, and the
    Wasserstein estimate E[D(real)] - E[D(fake)] inside it.

    real, fake: (B, C, H, W) in [0, 1], as many of each; ``generator`` draws the B mixing
    weights a ~ U[0, 1] of the interpolates a * real + (1 - a) * fake, on real's device.
    The loss is -(E[D(real)] - E[D(fake)]) + gp_weight * E[(||grad D(x_hat)||_2 - 1)^2];
    the penalty's graph is kept (create_graph), so the loss trains D.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}; draw as many fakes as real images.")
    w_dist = D(real).mean() - D(fake).mean()
    a = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device=real.device,
                   dtype=real.dtype)
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return -w_dist + gp_weight * penalty, w_dist


def train_wgan_gp(G: WGANGenerator, D: WGANCritic, x: torch.Tensor, *, iters: int,
                  batch_size: int = 64, n_critic: int = 5, gp_weight: float = 10.0,
                  lr: float = 1e-4, betas=(0.5, 0.9), seed: int = 0,
                  progress: bool = True) -> dict[str, list[float]]:
    """WGAN-GP: ``n_critic`` critic steps per generator step, for ``iters`` generator steps."""
    device = next(G.parameters()).device
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    g = torch.Generator().manual_seed(seed)
    g_dev = torch.Generator(device=device).manual_seed(seed + 1)
    hist = {"critic": [], "wasserstein": []}
    G.train(), D.train()
    bar = tqdm(range(iters), desc="WGAN-GP", disable=not progress)
    for _ in bar:
        for _ in range(n_critic):
            idx = torch.randint(len(x), (batch_size,), generator=g)
            real = x[idx].to(device)
            with torch.no_grad():
                fake = G(G.sample_latent(batch_size, generator=g_dev, device=device))
            loss_d, w_dist = wgan_gp_critic_loss(D, real, fake, gp_weight=gp_weight,
                                                 generator=g_dev)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        loss_g = -D(G(G.sample_latent(batch_size, generator=g_dev, device=device))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        hist["critic"].append(loss_d.item())
        hist["wasserstein"].append(w_dist.item())
        bar.set_postfix(W=f"{w_dist.item():.3f}")
    G.eval(), D.eval()
    return hist


# ----------------------------------------------------------------------------------------
# Checkpoints and the cache
# ----------------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Save a state dict as safetensors (no pickled code), written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"config": json.dumps(metadata or {}, sort_keys=True)})
    tmp.replace(path)
    return path


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from ``.safetensors`` or a ``.pt``/``.pth`` state dict (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except SafetensorError as exc:  # not safetensors at all, or cut short
            raise ValueError(
                f"{path} is not a valid safetensors file ({exc}). A .safetensors checkpoint holds "
                "a state dict written by safetensors (save_checkpoint does that); a torch.save "
                "file needs the suffix .pt. A download or cached file that fails here is corrupt "
                "or truncated: delete it and fetch it again (check its SHA-256)."
            ) from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled code or a corrupt file
            raise ValueError(
                f"{path} is not a plain state dict that loads with weights_only=True ({exc}). "
                "Save it with torch.save(model.state_dict(), path) or as safetensors."
            ) from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: {str(exc).splitlines()[0]}. "
            "Check that the checkpoint was made for this model and its sizes (width, latent_dim)."
        ) from exc
    return model


_KINDS = ("classifier", "vae", "gan", "began")


def training_environment(device) -> dict:
    """What the cache key leaves out but the weights depend on: training is bit-identical
    across runs with the same torch build, device and CPU thread count, but the order of
    floating-point sums changes with the thread count, and a long training run (the BEGAN's
    most of all) amplifies that into different weights."""
    return {"torch": torch.__version__, "device": str(device),
            "cpu_threads": torch.get_num_threads()}


def trained_with(path: Path) -> str:
    """`` (trained with torch X on cpu, N threads)`` from a cached checkpoint's metadata."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            env = json.loads((f.metadata() or {}).get("config", "{}")).get("trained_with")
    except Exception:  # noqa: BLE001 - provenance is informative only
        env = None
    if not env:
        return ""
    return f" (trained with torch {env['torch']} on {env['device']}, {env['cpu_threads']} CPU threads)"


def model_config(kind: str, dataset: Dataset, profile: Profile, seed: int) -> dict:
    """Everything that determines a trained model; its hash names the cache entry."""
    if kind not in _KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; choose one of {list(_KINDS)}.")
    # The training images themselves are fingerprinted, so a change of source or split can
    # never load a model trained on other data.
    pixels = (dataset.x_train * 255).round().to(torch.uint8).numpy().tobytes()
    labels = dataset.y_train.numpy().tobytes()
    cfg = {"kind": kind, "dataset": dataset.name, "n_train": len(dataset.x_train),
           "data_sha256": hashlib.sha256(pixels + labels).hexdigest()[:16],
           "seed": seed, "format": CACHE_FORMAT}
    channels, size = dataset.x_train.shape[1], dataset.x_train.shape[-1]
    if kind == "classifier":
        cfg.update(epochs=profile.classifier_epochs, batch_size=profile.batch_size, lr=1e-3)
        if (channels, size) != (1, 28):  # only then, so MNIST models keep their cache keys
            cfg.update(in_channels=channels, image_size=size)
    elif kind == "vae":
        cfg.update(epochs=profile.vae_epochs, latent_dim=20, hidden=500, batch_size=100, lr=1e-3)
    elif kind == "gan":
        cfg.update(iters=profile.gan_iters, width=profile.gan_width, latent_dim=128,
                   batch_size=64, n_critic=5, gp_weight=10.0, lr=1e-4)
    else:
        if size != profile.began_resolution:
            raise ValueError(
                f"The {profile.name} profile's BEGAN makes {profile.began_resolution}x"
                f"{profile.began_resolution} images but {dataset.name} has {size}x{size}: load "
                f"the data with size=profile.began_resolution."
            )
        cfg.update(iters=profile.began_iters, width=profile.began_width, resolution=size,
                   channels=channels, latent_dim=64, hidden=64, batch_size=profile.began_batch,
                   gamma=0.5, lambda_k=0.001, lr=8e-5)
    return cfg


def _build(cfg: dict, num_classes: int) -> nn.Module:
    if cfg["kind"] == "classifier":
        return MnistClassifier(num_classes=num_classes, in_channels=cfg.get("in_channels", 1),
                               image_size=cfg.get("image_size", 28))
    if cfg["kind"] == "vae":
        return VAE(latent_dim=cfg["latent_dim"], hidden=cfg["hidden"])
    if cfg["kind"] == "began":
        return BEGANGenerator(latent_dim=cfg["latent_dim"], width=cfg["width"],
                              resolution=cfg["resolution"], channels=cfg["channels"])
    return WGANGenerator(latent_dim=cfg["latent_dim"], width=cfg["width"])


def _train(model: nn.Module, cfg: dict, dataset: Dataset, device, progress: bool) -> None:
    x, y = dataset.x_train, dataset.y_train
    if cfg["kind"] == "classifier":
        train_classifier(model, x, y, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                         lr=cfg["lr"], seed=cfg["seed"], progress=progress)
    elif cfg["kind"] == "vae":
        train_vae(model, x, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                  seed=cfg["seed"], progress=progress)
    elif cfg["kind"] == "began":
        D = BEGANDiscriminator(width=cfg["width"], resolution=cfg["resolution"],
                               channels=cfg["channels"], hidden=cfg["hidden"]).to(device)
        train_began(model, D, x, iters=cfg["iters"], batch_size=cfg["batch_size"],
                    gamma=cfg["gamma"], lambda_k=cfg["lambda_k"], lr=cfg["lr"], seed=cfg["seed"],
                    progress=progress)
    else:
        critic = WGANCritic(width=cfg["width"]).to(device)
        train_wgan_gp(model, critic, x, iters=cfg["iters"], batch_size=cfg["batch_size"],
                      n_critic=cfg["n_critic"], gp_weight=cfg["gp_weight"], lr=cfg["lr"],
                      seed=cfg["seed"], progress=progress)


def pretrained_or_train(kind: str, dataset: Dataset, profile: Profile, *, seed: int = 0,
                        device="auto", cache_dir: str | Path | None = None,
                        checkpoint: str | Path | None = None, sha256: str | None = None,
                        progress: bool = True, verbose: bool = True) -> nn.Module:
    """Return a ``"classifier"``, ``"vae"``, ``"gan"`` or ``"began"`` (generator) model, in eval mode.

    With ``checkpoint`` (a path, or an http(s) URL that then needs ``sha256``; pooch
    downloads it into ``cache_dir/downloads``) it loads those weights. Otherwise it reuses the cached model trained with the same configuration, or
    trains one and caches it under ``cache_dir`` (default ``<data_dir>/cache``).
    """
    device = resolve_device(device)
    cfg = model_config(kind, dataset, profile, seed)
    with torch.random.fork_rng(devices=[]):  # weights loaded below: do not draw the caller's RNG
        model = _build(cfg, len(dataset.classes))
    if checkpoint is not None:
        ckpt = str(checkpoint)
        if ckpt.startswith(("http://", "https://")):
            if not sha256:
                raise ValueError("A checkpoint URL needs its sha256, so the download can be checked.")
            folder = Path(cache_dir or default_data_dir() / "cache") / "downloads"
            ckpt = download_url(ckpt, sha256, folder, progress=progress)
        load_checkpoint(model, ckpt)
        source = f"checkpoint {ckpt}"
    else:
        key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
        path = Path(cache_dir or default_data_dir() / "cache") / f"{kind}-{dataset.name}-{key}.safetensors"
        if path.exists():
            load_checkpoint(model, path)
            source = f"cache {path.name}{trained_with(path)}"
        else:
            with seeded(seed):  # the weights depend on the seed alone; the caller's RNG is kept
                model = _build(cfg, len(dataset.classes)).to(device)
                _train(model, cfg, dataset, device, progress)
            save_checkpoint(model, path, {**cfg, "trained_with": training_environment(device)})
            source = f"trained now, cached as {path.name}{trained_with(path)}"
    model = model.to(device).eval()
    model.provenance = source  # recorded by the results writer
    if verbose:
        print(f"{kind} ({dataset.name}): {source}")
    return model


# ----------------------------------------------------------------------------------------
# BEGAN (Berthelot et al. 2017)
# ----------------------------------------------------------------------------------------

def _reconstruction_loss(D: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """L(v) = mean |v - D(v)|, the autoencoder's L1 reconstruction loss (BEGAN's eta = 1)."""
    return (v - D(v)).abs().mean()


def train_began(G: BEGANGenerator, D: BEGANDiscriminator, x: torch.Tensor, *, iters: int,
                batch_size: int = 16, gamma: float = 0.5, lambda_k: float = 0.001,
                lr: float = 8e-5, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """BEGAN's boundary-equilibrium training; x (N, C, R, R) in [0, 1], R = G's resolution.

    Per iteration: L_D = L(x) - k_t L(G(z)), L_G = L(G(z)), then
    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1), k_0 = 0. Returns, per iteration,
    ``m_global`` (the convergence measure L(x) + |gamma L(x) - L(G(z))|), ``k`` (k_{t+1}),
    ``loss_real`` (L(x)) and ``loss_fake`` (L(G(z))). L is in [0, 1] pixel units, half the
    reference's [-1, 1] units, so k moves at half its rate for the same lambda_k.
    """
    device = next(G.parameters()).device
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    g_dev = torch.Generator(device=device).manual_seed(seed + 1)
    d_params, g_params = list(D.parameters()), list(G.parameters())
    k = 0.0
    hist = {"m_global": [], "k": [], "loss_real": [], "loss_fake": []}
    G.train(), D.train()
    bar = tqdm(range(iters), desc="BEGAN", disable=not progress)
    for _ in bar:
        real = x[torch.randint(len(x), (batch_size,), generator=g)].to(device)
        fake = G(G.sample_latent(batch_size, generator=g_dev, device=device))
        loss_real, loss_fake = _reconstruction_loss(D, real), _reconstruction_loss(D, fake)
        opt_d.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        # As in the reference, both players step from the same forward pass: each loss is
        # differentiated only with respect to its own player's parameters.
        (loss_real - k * loss_fake).backward(inputs=d_params, retain_graph=True)
        loss_fake.backward(inputs=g_params)
        opt_d.step()
        opt_g.step()
        balance = gamma * loss_real.item() - loss_fake.item()
        k = min(max(k + lambda_k * balance, 0.0), 1.0)  # proportional control of the balance
        hist["m_global"].append(loss_real.item() + abs(balance))
        hist["k"].append(k)
        hist["loss_real"].append(loss_real.item())
        hist["loss_fake"].append(loss_fake.item())
        bar.set_postfix(M=f"{hist['m_global'][-1]:.4f}", k=f"{k:.4f}")
    G.eval(), D.eval()
    return hist
