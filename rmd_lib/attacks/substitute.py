"""Black-box attacks through a substitute model (Papernot et al. 2017).

The attacker sees only the labels a defense returns. It trains its own network, the
substitute, on images labelled by queries to that oracle, growing the set by Jacobian-based
dataset augmentation: each round adds, for every image x, the point
x + lambda * sign(dF_o(x)/dx), where o is the oracle's label of x and F the substitute. The
new points lie where the substitute's decision is changing fastest, which is where the
oracle's labels teach it most. Adversarial examples crafted on the trained substitute are
then sent to the defense.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_eps, check_images, check_labels, check_positive_int, count_classes
from ..evaluation import predict
from ..models import SubstituteNet
from ..training import seeded, train_classifier

__all__ = ["Substitute", "jacobian_augment", "train_substitute"]


@dataclass
class Substitute:
    """A trained substitute: ``net`` (logits), the oracle-labelled images it saw (``x``, ``y``),
    the number of oracle ``queries`` spent, and the training-set size after each round."""

    net: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    queries: int
    sizes: list[int]


def jacobian_augment(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, lam: float) -> torch.Tensor:
    """Papernot's augmentation: x + lam * sign of the gradient of the logit of ``labels``.

    x: (N, C, H, W) in [0, 1]; labels: (N,) the oracle's labels; lam may be negative (the
    periodic sign flip). Returns (N, C, H, W), clipped to [0, 1].
    """
    check_labels(labels, x.shape[0], "labels", num_classes=count_classes(net, x))
    x_req = x.detach().requires_grad_(True)
    with torch.enable_grad():
        picked = net(x_req).gather(1, labels.view(-1, 1)).sum()
        grad, = torch.autograd.grad(picked, x_req)
    return (x + lam * grad.sign()).clamp(0.0, 1.0).detach()


def _oracle_labels(oracle, x: torch.Tensor, batch_size: int, num_classes) -> torch.Tensor:
    logits = predict(oracle, x, batch_size)
    y = logits.argmax(dim=1)
    if num_classes is not None and int(y.max()) >= num_classes:
        raise ValueError(
            f"The oracle labelled an image {int(y.max())} (it scores {logits.shape[1]} classes) "
            f"but the substitute has only {num_classes} classes; pass num_classes="
            f"{logits.shape[1]} (or a net with {logits.shape[1]} outputs)."
        )
    return y


def train_substitute(oracle, x_seed: torch.Tensor, *, rounds: int = 4, lam: float = 0.1,
                     tau: int = 3, epochs: int = 10, query_budget: int | None = None,
                     x_extra: torch.Tensor | None = None, num_classes: int = 10,
                     net: nn.Module | None = None, seed: int = 0, batch_size: int = 128,
                     query_batch: int = 256, progress: bool = False) -> Substitute:
    """Train a substitute of ``oracle`` from its labels alone, with ``rounds`` rounds of
    Jacobian-based augmentation.

    oracle: any model returning logits (only its argmax is used: a label-only black box);
    x_seed: (N, C, H, W) in [0, 1], the attacker's few natural images. Each round trains the
    substitute for ``epochs`` epochs, then doubles the set with :func:`jacobian_augment`
    (step ``lam``, its sign flipped every ``tau`` rounds). ``x_extra`` are further images the
    oracle labels once at the start: the paper's stronger variant passes adversarial
    examples of the inner classifier here. ``query_budget`` caps the oracle's labels; a
    round that would exceed it keeps a random subset of its new points. ``net`` defaults to
    a :class:`~rmd_lib.models.SubstituteNet`, built with ``seed``.
    """
    check_images(x_seed, "x_seed")
    rounds = check_positive_int(rounds, "rounds")
    epochs = check_positive_int(epochs, "epochs")
    check_eps(abs(lam), "lam")
    if query_budget is not None and query_budget < len(x_seed):
        raise ValueError(f"query_budget ({query_budget}) is smaller than the {len(x_seed)} seed "
                         "images, which must all be labelled; raise it or pass fewer seeds.")
    device = x_seed.device
    with contextlib.ExitStack() as rng:
        if net is None:
            # Seeded weights, and the whole run on the seeded global stream as before (a
            # randomised oracle may draw from it); the caller's random state comes back after.
            rng.enter_context(seeded(seed))
            net = SubstituteNet(num_classes, x_seed.shape[1], x_seed.shape[-1])
        net = net.to(device)
        x = x_seed.detach()
        if x_extra is not None:
            check_images(x_extra, "x_extra")
            if x_extra.shape[1:] != x_seed.shape[1:]:
                raise ValueError(f"x_extra has images of shape {tuple(x_extra.shape[1:])}, the "
                                 f"seeds {tuple(x_seed.shape[1:])}; both must be images of the "
                                 "oracle's kind.")
            x = torch.cat([x, x_extra.to(device).detach()])
        if query_budget is not None:
            x = x[:query_budget]
        classes = count_classes(net, x)
        y = _oracle_labels(oracle, x, query_batch, classes)
        queries, sizes = len(x), []
        gen = torch.Generator().manual_seed(seed)
        for rho in tqdm(range(rounds), desc="substitute", disable=not progress):
            train_classifier(net, x, y, epochs=epochs, batch_size=batch_size, seed=seed + rho,
                             progress=False)
            sizes.append(len(x))
            if rho == rounds - 1:
                break
            room = None if query_budget is None else query_budget - queries
            if room is not None and room <= 0:
                break
            # lambda_rho = lambda * (-1)^floor(rho / tau): Papernot et al.'s periodic step size.
            step = lam * (-1) ** (rho // tau)
            x_new = jacobian_augment(net, x, y, step)
            if room is not None and room < len(x_new):
                x_new = x_new[torch.randperm(len(x_new), generator=gen)[:room].to(device)]
            y_new = _oracle_labels(oracle, x_new, query_batch, classes)
            queries += len(x_new)
            x, y = torch.cat([x, x_new]), torch.cat([y, y_new])
        net.eval()
    return Substitute(net, x, y, queries, sizes)
