"""The attack chapters' experiments as tables: one row per setting, batched over images.

Each function runs attacks on the first images of a test set and returns rows (dicts) that
``evaluation.markdown_table`` prints and ``Run.write`` stores. Accuracies are fractions of
the images passed in.
"""
from __future__ import annotations

import time

import torch

from .attacks import UnrolledINC, cw_l2, input_gradient, minmax_pairs, pgd
from .evaluation import accuracy, predict
from .randomness import randomised

__all__ = ["cw_table", "unrolled_table", "transfer_table", "robust_accuracy_table", "pair_table",
           "correct"]


def _synchronize(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def correct(model, x: torch.Tensor, y: torch.Tensor,
            batch_size: int | None = None) -> torch.Tensor:
    """Per image, whether ``model`` classifies it as y: (N,) bool. ``batch_size`` as in
    :func:`~rmd_lib.evaluation.predict` (None: from the memory budget)."""
    return predict(model, x, batch_size).argmax(1) == y.to(x.device)


def cw_table(classifier, inc, x, y, kappas, *, steps: int, binary_steps: int) -> list[dict]:
    """CW L2 crafted on ``classifier`` at each confidence kappa; accuracy of the classifier and
    of INC on the examples, and, among the images the classifier got right before the
    attack, the share for which CW found an example it misclassifies (``found``) and the
    median L2 distance of those. An image the classifier already gets wrong needs no attack,
    and counting it would add examples of distance about 0 that were never searched for."""
    right = correct(classifier, x, y)
    rows = []
    for kappa in kappas:
        x_adv = cw_l2(classifier, x, y, kappa=float(kappa), steps=steps, binary_steps=binary_steps)
        dist = (x_adv - x).flatten(1).norm(dim=1)
        found = right & ~correct(classifier, x_adv, y)
        rows.append({"kappa": float(kappa), "classifier": accuracy(classifier, x_adv, y),
                     "INC": accuracy(inc, x_adv, y),
                     "median L2": float(dist[found].median()) if found.any() else 0.0,
                     "found": float(found.sum()) / max(int(right.sum()), 1)})
    return rows


def unrolled_table(G, classifier, inc, x, y, ks, *, eps: float, restarts: int, pgd_steps: int,
                   norm: str = "linf", seed: int = 0) -> list[dict]:
    """PGD through the k-step unrolled projection, for each k of ``ks``: accuracy of the
    unrolled model on its own examples and of the full ``inc`` on them, the wall time of one
    gradient and the median L2 norm of that gradient per image."""
    rows = []
    for k in ks:
        model = UnrolledINC(G, classifier, steps=k, restarts=restarts, seed=seed)
        _synchronize(x)
        t0 = time.perf_counter()
        grad = input_gradient(model, x, y)
        _synchronize(x)  # CUDA runs asynchronously: wait for the kernels before the clock
        seconds = time.perf_counter() - t0
        x_adv = pgd(model, x, y, eps, norm=norm, steps=pgd_steps, seed=seed)
        rows.append({"k": int(k), "unrolled model": accuracy(model, x_adv, y),
                     "INC": accuracy(inc, x_adv, y), "seconds per gradient": seconds,
                     "gradient norm": float(grad.flatten(1).norm(dim=1).median())})
    return rows


def transfer_table(source, targets: dict, x, y, attacks: dict, eps_list, *,
                   norm: str = "linf") -> list[dict]:
    """Examples crafted on ``source`` (a substitute), given to ``source`` itself and to each
    model of ``targets``; ``attacks`` maps a name to ``(attack_fn, options)``."""
    rows = []
    for name, (attack, options) in attacks.items():
        for eps in eps_list:
            x_adv = attack(source, x, y, eps, norm=norm, **options)
            row = {"attack": name, "eps": float(eps), "substitute": accuracy(source, x_adv, y)}
            row.update({t: accuracy(model, x_adv, y) for t, model in targets.items()})
            rows.append(row)
    return rows


def robust_accuracy_table(defense, x, y, attacks: dict, eps_list, *, norm: str,
                          progress: bool = False) -> list[dict]:
    """Accuracy of ``defense`` under each attack at each eps, and under the worst case.

    ``attacks`` maps a name to a function ``(x, y, eps, norm) -> x_adv``. The ``worst case``
    column counts an image as robust only if the defense classifies it correctly when clean
    and under every attack: the accuracy against an adversary who tries them all and keeps
    what works. A randomised defense scores every input on the same draw of its randomness
    (its streams are reset before each scoring), so the worst case ANDs outcomes of one
    defense, not of different draws; ``clean`` is the defense's accuracy on that draw.
    """
    from tqdm.auto import tqdm

    draws = randomised(defense)

    def score(x_in):
        for d in draws:
            d.reset()
        return correct(defense, x_in, y)

    clean = score(x)
    rows = []
    for eps in tqdm(eps_list, desc=f"robust accuracy ({norm})", disable=not progress):
        row, robust = {"norm": norm, "eps": float(eps), "clean": float(clean.float().mean())}, clean.clone()
        for name, attack in attacks.items():
            ok = score(attack(x, y, eps, norm))
            row[name] = float(ok.float().mean())
            robust &= ok
        row["worst case"] = float(robust.float().mean())
        rows.append(row)
    return rows


def pair_table(G, classifier, eps_list, n: int, *, steps: int, seed: int = 0,
               **options) -> tuple[list[dict], dict]:
    """Min-max pairs against ``classifier`` at each budget of ``eps_list``: ``n`` pairs per
    budget, the same seed for each, so the budgets differ in nothing else. Returns the rows
    (``eps`` and :meth:`MinMaxPairs.summary`) and the searches, keyed by eps."""
    rows, searches = [], {}
    for eps in eps_list:
        pairs = minmax_pairs(G, classifier, float(eps), n, steps=steps, seed=seed, **options)
        searches[float(eps)] = pairs
        rows.append({"eps": float(eps), **pairs.summary()})
    return rows, searches
