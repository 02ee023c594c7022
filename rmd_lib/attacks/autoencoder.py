"""The autoencoder substitute for the inversion: a differentiable stand-in for INC.

The projection z*(x) = argmin_z ||G(z) - x|| has no useful gradient, but a network E can be
trained to approximate it, G(E(x)) ~ G(z*(x)). Then C(G(E(x))) is an ordinary differentiable
model that mimics INC on natural images, and any first-order attack runs on it. The catch,
which the chapter measures: E only matches the projection where it was trained, on natural
images, and an attack that fools C∘G∘E usually does so by leading E astray, which the true
projection does not follow.
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_images, check_positive_int, model_device
from ..models import Encoder
from ..training import fit_adam, seeded

__all__ = ["train_encoder", "EncoderSubstitute"]


def train_encoder(G: nn.Module, x: torch.Tensor, z_star: torch.Tensor, *, epochs: int = 20,
                  latent_weight: float = 0.1, encoder: nn.Module | None = None,
                  batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                  progress: bool = False) -> nn.Module:
    """Train E so that G(E(x)) matches G(z*) for the projections z* of x.

    x: (N, C, H, W) in [0, 1]; z_star: (N, latent_dim), e.g. ``project(G, x).z``. The loss is
    the per-pixel MSE between G(E(x)) and G(z*), plus ``latent_weight`` times the MSE between
    E(x) and z* (which keeps E near the projection's own latents). G is not changed.
    """
    check_images(x, "x")
    epochs = check_positive_int(epochs, "epochs")
    d = getattr(G, "latent_dim", None)
    if z_star.ndim != 2 or z_star.shape[0] != len(x) or (d is not None and z_star.shape[1] != d):
        raise ValueError(f"z_star must have shape ({len(x)}, {d}) (one latent per image), "
                         f"got {tuple(z_star.shape)}; pass project(G, x).z.")
    device = model_device(G) or x.device
    if encoder is None:
        with seeded(seed):  # seeded weights, and the caller's random state left as it was
            encoder = Encoder(z_star.shape[1], x.shape[1], x.shape[-1])
    encoder = encoder.to(device)
    # G is frozen while E trains, then gets back each parameter's own flag (some may be frozen).
    trainable = [p.requires_grad for p in G.parameters()]
    for p in G.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        target = G(z_star.to(device))
    z_star = z_star.to(device)

    def batch_loss(idx):
        z = encoder(x[idx].to(device))
        return ((G(z) - target[idx]).pow(2).mean()
                + latent_weight * (z - z_star[idx]).pow(2).mean())

    try:
        fit_adam(encoder, len(x), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr,
             seed=seed, desc="encoder", progress=progress)
    finally:
        for p, flag in zip(G.parameters(), trainable):
            p.requires_grad_(flag)
    return encoder


class EncoderSubstitute(nn.Module):
    """C(G(E(x))): the differentiable substitute of INC. Takes x (N, C, H, W) in [0, 1] and
    returns the classifier's logits; ``reconstruct(x)`` gives G(E(x))."""

    def __init__(self, encoder: nn.Module, G: nn.Module, classifier: nn.Module):
        super().__init__()
        self.encoder, self.G, self.classifier = encoder, G, classifier

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.G(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.reconstruct(x))
