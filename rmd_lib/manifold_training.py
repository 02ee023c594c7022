"""Adversarial training on the manifold (Ilyas et al. 2017), its PGD baseline (Madry et al.
2018), and the measurements that compare them: pair statistics and confidence along paths.

Both training loops fine-tune a classifier that is already trained, on the same images, for
the same number of optimiser steps, so that they differ only in what they add to the loss:

- on the manifold, the divergence between the classifier's outputs on min-max pairs
  ``(G(z1), G(z2))``, searched against the current classifier and renewed every
  ``regen_every`` steps; only pairs that respect the budget count, each one masked on its own;
- PGD training replaces each batch by its PGD adversarial examples;
- the authors' variant resumes PGD training from the PGD classifier and adds the pair
  term (a :class:`PairTerm`) with a small weight, masked on pairs that are valid *and*
  labelled differently by the current classifier.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from safetensors import safe_open
from torch.nn import functional as F
from tqdm.auto import tqdm

from .attacks import divergence, minmax_pairs, pgd
from .attacks.first_order import NORMS
from .checks import check_eps, check_positive_int, model_device
from .data import default_data_dir
from .randomness import stream_seed
from .evaluation import paired_difference, wilson_interval
from .training import (load_checkpoint, save_checkpoint, set_seed, trained_with,
                       training_environment)

__all__ = ["pair_loss", "PairTerm", "manifold_adversarial_training",
           "pgd_adversarial_training",
           "robust_classifier", "finetune_config", "METHODS",
           "pair_statistics", "pair_scores", "compare_pairs", "early_stop_mix", "confidence_path", "path_endpoints", "start_class_probability", "PathStats", "path_statistics"]


def pair_loss(classifier: nn.Module, x1: torch.Tensor, x2: torch.Tensor, valid: torch.Tensor,
              kind: str = "sym_kl", *, only_different: bool = False) -> torch.Tensor:
    """Mean divergence of ``classifier`` over the valid pairs only: each pair's divergence is
    masked before the sum, and the sum is divided by the number of valid pairs (zero, with a
    zero gradient, when none is valid). Summing first and masking after, as the authors' code
    did, lets invalid pairs into the loss.

    With ``only_different``, a pair also needs the classifier to label its two images
    differently (the top classes of this very forward pass), as in the authors' variant:
    the mask is valid AND differently labelled, and the mean is over those pairs.
    """
    if not (len(x1) == len(x2) == len(valid)):
        raise ValueError(f"x1, x2 and valid must have one row per pair; got {len(x1)}, "
                         f"{len(x2)} and {len(valid)}.")
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool mask, got dtype {valid.dtype}.")
    logits1, logits2 = classifier(x1), classifier(x2)
    per_pair = divergence(logits1, logits2, kind)
    mask = valid.to(per_pair.device)
    if only_different:
        mask = mask & (logits1.argmax(1) != logits2.argmax(1))
    kept = torch.where(mask, per_pair, torch.zeros_like(per_pair))
    return kept.sum() / mask.sum().clamp(min=1)


@dataclass(frozen=True)
class PairTerm:
    """The pair term added to a training loss: ``weight`` times :func:`pair_loss` over
    ``n_pairs`` min-max pairs of ``G`` (budget ``eps``, ``pair_steps`` search steps
    without early stopping, divergence ``kind``), searched against the current
    classifier and renewed every ``regen_every`` steps. ``only_different`` masks on
    pairs that are valid and labelled differently (the authors' variant), not on valid
    pairs alone."""

    G: nn.Module
    eps: float
    weight: float = 1.0
    regen_every: int = 10
    n_pairs: int = 64
    pair_steps: int = 50
    kind: str = "sym_kl"
    only_different: bool = False

    def __post_init__(self):
        if not isinstance(self.G, nn.Module):
            raise TypeError(f"PairTerm needs the generator G as a torch.nn.Module, got "
                            f"{type(self.G).__name__}.")
        check_eps(self.eps)
        w = self.weight
        real = isinstance(w, (int, float)) and not isinstance(w, bool)
        if not real or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {w!r}.")
        for name in ("regen_every", "n_pairs", "pair_steps"):
            check_positive_int(getattr(self, name), name)


class _PairSearch:
    """A :class:`PairTerm` at work in a training loop: the current pairs, renewed
    against ``net`` at every ``regen_every``-th step (searched in eval mode), pair j of
    the renewal at step t drawn from stream (seed + 1 + t, j)."""

    def __init__(self, term: PairTerm, seed: int, hist: dict, options: dict):
        self.term, self.seed, self.hist = term, seed, hist
        self.options = {"early_stop": False, **options}
        hist.setdefault("pair_divergence", [])
        hist.setdefault("valid_pairs", [])

    def renew(self, net: nn.Module, t: int) -> None:
        T = self.term
        if t % T.regen_every:
            return
        was_training = net.training
        net.eval()
        pairs = minmax_pairs(T.G, net, T.eps, T.n_pairs, steps=T.pair_steps,
                             kind=T.kind, seed=self.seed + 1 + t, **self.options)
        net.train(was_training)
        self.x1, self.x2, self.valid = pairs.x1.detach(), pairs.x2.detach(), pairs.valid
        self.hist["valid_pairs"].append(float(self.valid.float().mean()))

    def loss(self, net: nn.Module) -> torch.Tensor:
        T = self.term
        term = pair_loss(net, self.x1, self.x2, self.valid, T.kind,
                         only_different=T.only_different)
        self.hist["pair_divergence"].append(term.item())
        return T.weight * term


def _check_training(net, x, y, steps, batch_size):
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}.")
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"x must be (N, C, H, W) images with one label each in y; got x "
                         f"{tuple(x.shape)} and y {tuple(y.shape)}.")
    return check_positive_int(steps, "steps"), check_positive_int(batch_size, "batch_size")


def _batch_stream(n: int, batch_size: int, g: torch.Generator):
    while True:  # shuffled passes, as many as the step count needs
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i:i + batch_size]


def manifold_adversarial_training(net: nn.Module, G: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                  *, steps: int, eps: float, weight: float = 1.0,
                                  regen_every: int = 10, n_pairs: int = 64,
                                  pair_steps: int = 50, kind: str = "sym_kl",
                                  batch_size: int = 128, lr: float = 1e-4, seed: int = 0,
                                  progress: bool = True, **pair_options) -> dict[str, list]:
    """Fine-tune ``net`` in place for ``steps`` Adam steps on

        cross-entropy(net(x_batch), y_batch) + weight * mean over valid pairs of D(net(G(z1)), net(G(z2)))

    where the ``n_pairs`` pairs come from :func:`~rmd_lib.attacks.minmax_pairs` (``pair_steps``
    steps, budget ``eps``, divergence ``kind``; further keywords go to it) against the current
    ``net``, renewed every ``regen_every`` steps. Returns the history: per step the
    cross-entropy and the pair term, and per renewal the share of valid pairs.
    """
    steps, batch_size = _check_training(net, x, y, steps, batch_size)
    regen_every = check_positive_int(regen_every, "regen_every")
    pairs = PairTerm(G, check_eps(eps), weight, regen_every, n_pairs, pair_steps, kind)
    device = model_device(net) or torch.device("cpu")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    batches = _batch_stream(len(x), batch_size, g)
    hist = {"cross_entropy": []}
    search = _PairSearch(pairs, seed, hist, pair_options)
    bar = tqdm(range(steps), desc="manifold adversarial training", disable=not progress)
    for t in bar:
        search.renew(net, t)
        net.train()
        idx = next(batches)
        ce = F.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
        term = search.loss(net)
        loss = ce + term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist["cross_entropy"].append(ce.item())
        bar.set_postfix(ce=f"{ce.item():.3f}",
                        pairs=f"{hist['pair_divergence'][-1]:.3f}")
    net.eval()
    return hist


def pgd_adversarial_training(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                             eps: float, norm: str = "l2", attack_steps: int = 40,
                             batch_size: int = 128, lr: float = 1e-4, seed: int = 0,
                             progress: bool = True,
                             pair_term: PairTerm | None = None) -> dict[str, list]:
    """Madry et al.'s adversarial training: ``steps`` Adam steps of cross-entropy on the PGD
    examples (``attack_steps`` steps, random start, budget ``eps`` in ``norm``) of each
    batch, crafted against the current ``net``. Fine-tunes in place; returns the losses.

    With a :class:`PairTerm`, its weighted pair loss is added to every step's loss (the
    authors' variant), and the history also holds the pair term and the share of valid
    pairs per renewal; the pairs' starts come from a stream of their own, unrelated to
    the PGD starts."""
    steps, batch_size = _check_training(net, x, y, steps, batch_size)
    eps = check_eps(eps)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    if pair_term is not None and not isinstance(pair_term, PairTerm):
        raise TypeError(f"pair_term must be a PairTerm or None, got "
                        f"{type(pair_term).__name__}.")
    device = model_device(net) or torch.device("cpu")
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    batches = _batch_stream(len(x), batch_size, g)
    hist = {"cross_entropy": []}
    search = None if pair_term is None else _PairSearch(
        pair_term, stream_seed(seed, 1), hist, {})
    bar = tqdm(range(steps), desc="PGD adversarial training", disable=not progress)
    for t in bar:
        if search is not None:
            search.renew(net, t)
        idx = next(batches)
        xb, yb = x[idx].to(device), y[idx].to(device)
        net.eval()  # the attack sees the model as it is, without training-mode layers
        x_adv = pgd(net, xb, yb, eps, norm=norm, steps=attack_steps, seed=seed + 1 + t)
        net.train()
        ce = F.cross_entropy(net(x_adv), yb)
        loss = ce if search is None else ce + search.loss(net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist["cross_entropy"].append(ce.item())
        bar.set_postfix(ce=f"{ce.item():.3f}")
    net.eval()
    return hist


def pair_statistics(G: nn.Module, classifier: nn.Module, eps: float, n: int, *, steps: int,
                    seed: int = 0, kind: str = "sym_kl", **options) -> dict[str, float]:
    """Search ``n`` min-max pairs against ``classifier`` with budget ``eps`` and return their
    :meth:`~rmd_lib.attacks.MinMaxPairs.summary`, with ``eps``."""
    pairs = minmax_pairs(G, classifier, eps, n, steps=steps, seed=seed, kind=kind, **options)
    return {"eps": float(eps), **pairs.summary()}


def pair_scores(pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per search of a :class:`~rmd_lib.attacks.MinMaxPairs`: whether it succeeded (valid and
    classified differently) as 0/1, and its divergence where valid, else 0 (the attacker found
    nothing within the budget). Both (N,), so searches from the same starts can be paired."""
    success = pairs.success.float()
    score = torch.where(pairs.valid, pairs.divergence, torch.zeros_like(pairs.divergence))
    return success.cpu(), score.cpu()


def compare_pairs(G: nn.Module, classifiers: dict, eps: float, n: int, *, steps: int,
                  seed: int = 0, baseline: str | None = None, kind: str = "sym_kl",
                  return_scores: bool = False, **options) -> tuple:
    """The same min-max search against each classifier, paired search by search.

    Every classifier gets the same ``n`` starting latents (the same ``seed``), and every
    search runs all ``steps`` steps (no early stopping), ending at its most divergent valid
    iterate. Early stopping would end a search at the first label flip, so the mean
    divergence would mix barely-flipped pairs with fully run ones, in proportions that
    depend on the classifier; without it the divergence measures the same thing for all.

    Returns ``rows`` (one per classifier: the summary, the success share with its 95% Wilson
    interval, and the mean per-search score of :func:`pair_scores`) and ``paired``: for each
    classifier other than ``baseline`` (default: the first), the paired differences of
    success and of score against the baseline, each with its 95% interval (and McNemar's
    p-value for success), from :func:`~rmd_lib.evaluation.paired_difference`. With
    ``return_scores``, also ``scores``: per classifier, the (success, score) of
    :func:`pair_scores`, so that any two classifiers can be paired afterwards.
    """
    if not classifiers:
        raise ValueError("classifiers must map at least one name to a classifier.")
    if options.get("early_stop", False):
        raise ValueError("compare_pairs runs every search to the end; do not pass early_stop=True.")
    options.pop("early_stop", None)
    baseline = baseline if baseline is not None else next(iter(classifiers))
    if baseline not in classifiers:
        raise ValueError(f"baseline {baseline!r} is not one of {list(classifiers)}.")
    rows, scores = [], {}
    for label, clf in classifiers.items():
        pairs = minmax_pairs(G, clf, eps, n, steps=steps, seed=seed, kind=kind,
                             early_stop=False, **options)
        success, score = pair_scores(pairs)
        scores[label] = (success, score)
        low, high = wilson_interval(float(success.sum()), len(success))
        rows.append({"classifier": label, "eps": float(eps), **pairs.summary(),
                     "success low": low, "success high": high,
                     "mean score": float(score.mean())})
    paired = {}
    for label, (success, score) in scores.items():
        if label != baseline:
            base_success, base_score = scores[baseline]
            paired[label] = {"success": paired_difference(base_success, success),
                             "score": paired_difference(base_score, score)}
    return (rows, paired, scores) if return_scores else (rows, paired)


def early_stop_mix(pairs, steps: int) -> dict[str, float]:
    """What an early-stopped search's mean divergence is made of: the share of searches that
    stopped at a label flip before ``steps``, the mean divergence of those, and of the valid
    searches that ran all ``steps``; last, their mix, the mean over all valid searches."""
    steps = check_positive_int(steps, "steps")
    nan = float("nan")
    stopped = (pairs.steps < steps) & pairs.valid
    full = (pairs.steps >= steps) & pairs.valid

    def mean(mask):
        return float(pairs.divergence[mask].mean()) if bool(mask.any()) else nan

    return {"stopped at a flip": float(stopped.float().mean()),
            "mean divergence (stopped)": mean(stopped),
            "mean divergence (ran to the end)": mean(full),
            "mean divergence (valid)": mean(pairs.valid)}


def confidence_path(G: nn.Module, classifier: nn.Module, z_a: torch.Tensor, z_b: torch.Tensor,
                    n: int = 33) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's softmax along straight latent paths: for P paths from ``z_a`` to
    ``z_b`` (each (P, d)), the images (P, n, C, H, W) and probabilities (P, n, K) at ``n``
    evenly spaced points, all paths in one batch."""
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"z_a and z_b must both be (P, d); got {tuple(z_a.shape)} and "
                         f"{tuple(z_b.shape)}.")
    n = check_positive_int(n, "n")
    if n < 2:
        raise ValueError("a path needs n >= 2 points.")
    t = torch.linspace(0, 1, n, device=z_a.device).view(1, n, 1)
    z = ((1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)).flatten(0, 1)
    with torch.no_grad():
        images = G(z)
        probs = classifier(images).softmax(1)
    P = len(z_a)
    return images.view(P, n, *images.shape[1:]), probs.view(P, n, -1)


def path_endpoints(z: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Endpoints of up to ``n`` latent paths between images of different classes: image i
    and image i + 1 (cyclically) wherever their labels differ, in order. ``z`` (N, d) holds
    the images' latents (e.g. their projections), ``y`` (N,) their labels."""
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"z must be (N, d) with one label per row in y; got z {tuple(z.shape)} "
                         f"and y {tuple(y.shape)}.")
    nxt = torch.roll(torch.arange(len(y), device=y.device), -1)
    start = (y != y[nxt]).nonzero().flatten()[:check_positive_int(n, "n")]
    if len(start) == 0:
        raise ValueError("all images have the same label: no path crosses a class boundary.")
    return z[start], z[nxt[start]]


@dataclass
class PathStats:
    """How sharply a classifier's decision changes along paths: ``max_slope`` is the largest
    change of the start class's probability between neighbouring points, per unit of path
    (a step boundary gives n - 1, a linear ramp 1); ``uncertain`` is the share of points
    where the top probability is below ``threshold``. Both are means over paths."""

    max_slope: float
    uncertain: float
    threshold: float


def start_class_probability(probs: torch.Tensor) -> torch.Tensor:
    """Along each path of probabilities (P, n, K) from :func:`confidence_path`, the
    probability of the path's start class (the top class at its first point): (P, n)."""
    if probs.ndim != 3 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (paths, points >= 2, classes), got {tuple(probs.shape)}.")
    start = probs[:, 0].argmax(1)
    return probs.gather(2, start.view(-1, 1, 1).expand(-1, probs.shape[1], 1)).squeeze(2)


def path_statistics(probs: torch.Tensor, threshold: float = 0.9) -> PathStats:
    """:class:`PathStats` of probabilities (P, n, K) from :func:`confidence_path`."""
    p = start_class_probability(probs)
    n = probs.shape[1]
    slope = (p[:, 1:] - p[:, :-1]).abs().amax(1) * (n - 1)
    uncertain = (probs.amax(2) < threshold).float().mean(1)
    return PathStats(float(slope.mean()), float(uncertain.mean()), float(threshold))


# ----------------------------------------------------------------------------------------
# The robust classifiers of a chapter, fine-tuned once and cached
# ----------------------------------------------------------------------------------------

METHODS = ("manifold", "pgd", "authors")


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _stored_history(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("config", "{}")).get("history", {})


def finetune_config(method: str, base: nn.Module, profile, seed: int,
                    G: nn.Module | None = None) -> dict:
    """Everything that determines a fine-tuned classifier, including digests of the
    weights it starts from and of the generator its pairs come from; its hash names the
    cache entry. For ``"authors"``, ``base`` is the PGD classifier that the training
    resumes from."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    P = profile
    cfg = {"method": method, "base": _weights_digest(base), "seed": seed, "steps": P.at_steps,
           "batch_size": P.batch_size, "lr": P.at_lr, "format": 1}
    if method in ("manifold", "authors") and G is None:
        raise ValueError(f"{method} training needs the generator G its pairs come "
                         "from; pass G=...")
    if method == "manifold":
        cfg.update(generator=_weights_digest(G), eps=P.at_eps, weight=P.at_weight,
                   regen_every=P.at_regen_every, n_pairs=P.at_pairs, pair_steps=P.at_pair_steps)
    else:
        cfg.update(eps=P.pgd_at_eps, norm="l2", attack_steps=P.pgd_at_attack_steps)
    if method == "authors":
        cfg.update(steps=P.at_authors_steps or P.at_steps, generator=_weights_digest(G),
                   pair_eps=P.at_eps, weight=P.at_authors_weight,
                   regen_every=P.at_regen_every, n_pairs=P.at_pairs,
                   pair_steps=P.at_pair_steps, mask="valid and different")
    return cfg


def robust_classifier(method: str, base: nn.Module, dataset, profile, *, G: nn.Module | None = None,
                      seed: int = 0, cache_dir=None, progress: bool = True,
                      verbose: bool = True) -> nn.Module:
    """A copy of ``base`` fine-tuned on ``dataset``'s training images by ``method``
    (``"manifold"``: :func:`manifold_adversarial_training` on G's pairs; ``"pgd"``:
    :func:`pgd_adversarial_training`; ``"authors"``: PGD training resumed from the
    ``"pgd"`` classifier of the same ``base``, with a :class:`PairTerm` of weight
    ``at_authors_weight`` masked on valid, differently labelled pairs) with the
    profile's settings. ``base`` is left as it is. The result is cached under a hash of
    :func:`finetune_config`, so a second run loads it; its ``provenance`` says which it
    was and its ``history`` holds the training losses, stored with the weights."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if method == "authors":  # resumed from the PGD baseline (trained now or loaded)
        finetune_config(method, base, profile, seed, G)  # bad settings fail before it
        base = robust_classifier("pgd", base, dataset, profile, G=G, seed=seed,
                                 cache_dir=cache_dir, progress=progress, verbose=False)
    cfg = finetune_config(method, base, profile, seed, G)
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir or default_data_dir() / "cache") / f"classifier-{method}-{dataset.name}-{key}.safetensors"
    net = copy.deepcopy(base)
    history: dict = {}
    if path.exists():
        load_checkpoint(net, path)
        history = _stored_history(path)
        source = f"cache {path.name}{trained_with(path)}"
    else:
        set_seed(seed)
        P, x, y = profile, dataset.x_train, dataset.y_train
        common = dict(steps=P.at_steps, batch_size=P.batch_size, lr=P.at_lr, seed=seed,
                      progress=progress)
        if method == "manifold":
            history = manifold_adversarial_training(
                net, G, x, y, eps=P.at_eps, weight=P.at_weight, regen_every=P.at_regen_every,
                n_pairs=P.at_pairs, pair_steps=P.at_pair_steps, **common)
        else:
            term = None
            if method == "authors":
                term = PairTerm(G, P.at_eps, P.at_authors_weight, P.at_regen_every,
                                P.at_pairs, P.at_pair_steps, only_different=True)
                common["steps"] = cfg["steps"]
            history = pgd_adversarial_training(net, x, y, eps=P.pgd_at_eps, norm="l2",
                                               attack_steps=P.pgd_at_attack_steps,
                                               pair_term=term, **common)
        save_checkpoint(net, path, {**cfg, "history": history,
                                    "trained_with": training_environment(model_device(net))})
        source = f"trained now, cached as {path.name}{trained_with(path)}"
    if method == "authors":
        source += f"; resumed from the PGD classifier ({base.provenance})"
    net.eval()
    net.provenance = source
    net.history = history
    if verbose:
        print(f"{method}-trained classifier ({dataset.name}): {source}")
    return net
