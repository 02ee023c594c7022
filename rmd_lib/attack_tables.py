"""The attack chapters' experiments as tables: one row per setting, batched over images.

Each function runs attacks on the first images of a test set and returns rows (dicts) that
``evaluation.markdown_table`` prints and ``Run.write`` stores. Accuracies are fractions of
the images passed in.
"""
from __future__ import annotations

import time

import torch

from .attacks import UnrolledINC, cw_l2, input_gradient, minmax_pairs, pgd
from .evaluation import predict
from .randomness import randomised

__all__ = ["adaptive_eps", "cw_table", "unrolled_table", "transfer_table",
           "robust_accuracy_table", "pair_table", "correct", "worst_case_with",
           "robust_outcomes", "costly_columns"]


def adaptive_eps(P) -> dict[str, list[float]]:
    """The adaptive chapter's budgets by norm, as chapter 5 and ``rmd_lib.evaluate`` both
    use them: ``{"linf": [...], "l2": [...]}`` from the profile ``P``."""
    return {"linf": list(P.adaptive_eps_linf), "l2": list(P.adaptive_eps_l2)}


def _synchronize(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def correct(model, x: torch.Tensor, y: torch.Tensor,
            batch_size: int | None = None) -> torch.Tensor:
    """Per image, whether ``model`` classifies it as y: (N,) bool. ``batch_size`` as in
    :func:`~rmd_lib.evaluation.predict` (None: from the memory budget)."""
    return predict(model, x, batch_size).argmax(1) == y.to(x.device)


def cw_table(classifier, inc, x, y, kappas, *, steps: int, binary_steps: int,
             outcomes: dict | None = None) -> list[dict]:
    """CW L2 crafted on ``classifier`` at each confidence kappa; accuracy of the classifier and
    of INC on the examples, and, among the images the classifier got right before the
    attack, the share for which CW found an example it misclassifies (``found``) and the
    median L2 distance of those. An image the classifier already gets wrong needs no attack,
    and counting it would add examples of distance about 0 that were never searched for.
    ``outcomes``, a dict, receives the per-image results behind the two accuracies:
    ``outcomes[kappa, "classifier"]`` and ``outcomes[kappa, "INC"]``, (N,) bool tensors."""
    right = correct(classifier, x, y)
    rows = []
    for kappa in kappas:
        x_adv = cw_l2(classifier, x, y, kappa=float(kappa), steps=steps, binary_steps=binary_steps)
        dist = (x_adv - x).flatten(1).norm(dim=1)
        ok = {"classifier": correct(classifier, x_adv, y), "INC": correct(inc, x_adv, y)}
        found = right & ~ok["classifier"]
        if outcomes is not None:
            outcomes.update({(float(kappa), m): v.cpu() for m, v in ok.items()})
        rows.append({"kappa": float(kappa), "classifier": ok["classifier"].float().mean().item(),
                     "INC": ok["INC"].float().mean().item(),
                     "median L2": float(dist[found].median()) if found.any() else 0.0,
                     "found": float(found.sum()) / max(int(right.sum()), 1)})
    return rows


def unrolled_table(G, classifier, inc, x, y, ks, *, eps: float, restarts: int, pgd_steps: int,
                   norm: str = "linf", seed: int = 0,
                   outcomes: dict | None = None) -> list[dict]:
    """PGD through the k-step unrolled projection, for each k of ``ks``: accuracy of the
    unrolled model on its own examples and of the full ``inc`` on them, the wall time of one
    gradient and the median L2 norm of that gradient per image. ``outcomes``, a dict,
    receives the per-image results: ``outcomes[k, "unrolled model"]`` and
    ``outcomes[k, "INC"]``, (N,) bool tensors."""
    rows = []
    for k in ks:
        model = UnrolledINC(G, classifier, steps=k, restarts=restarts, seed=seed)
        _synchronize(x)
        t0 = time.perf_counter()
        grad = input_gradient(model, x, y)
        _synchronize(x)  # CUDA runs asynchronously: wait for the kernels before the clock
        seconds = time.perf_counter() - t0
        x_adv = pgd(model, x, y, eps, norm=norm, steps=pgd_steps, seed=seed)
        ok = {"unrolled model": correct(model, x_adv, y), "INC": correct(inc, x_adv, y)}
        if outcomes is not None:
            outcomes.update({(int(k), m): v.cpu() for m, v in ok.items()})
        rows.append({"k": int(k), "unrolled model": ok["unrolled model"].float().mean().item(),
                     "INC": ok["INC"].float().mean().item(), "seconds per gradient": seconds,
                     "gradient norm": float(grad.flatten(1).norm(dim=1).median())})
    return rows


def transfer_table(source, targets: dict, x, y, attacks: dict, eps_list, *,
                   norm: str = "linf", outcomes: dict | None = None) -> list[dict]:
    """Examples crafted on ``source`` (a substitute), given to ``source`` itself and to each
    model of ``targets``; ``attacks`` maps a name to ``(attack_fn, options)``. ``outcomes``,
    a dict, receives the per-image results behind each accuracy:
    ``outcomes[attack, eps, model]``, an (N,) bool tensor, model being ``"substitute"`` or a
    target's name."""
    rows = []
    for name, (attack, options) in attacks.items():
        for eps in eps_list:
            x_adv = attack(source, x, y, eps, norm=norm, **options)
            row = {"attack": name, "eps": float(eps)}
            for m_name, model in {"substitute": source, **targets}.items():
                ok = correct(model, x_adv, y)
                row[m_name] = ok.float().mean().item()
                if outcomes is not None:
                    outcomes[name, float(eps), m_name] = ok.cpu()
            rows.append(row)
    return rows


def robust_accuracy_table(defense, x, y, attacks: dict, eps_list, *, norm: str,
                          progress: bool = False, costly: dict | None = None,
                          costly_n: int | None = None, costly_eps: float | None = None
                          ) -> list[dict]:
    """Accuracy of ``defense`` under each attack at each eps, and under the worst case.

    ``attacks`` maps a name to a function ``(x, y, eps, norm) -> x_adv``. The ``worst case``
    column counts an image as robust only if the defense classifies it correctly when clean
    and under every attack: the accuracy against an adversary who tries them all and keeps
    what works. A randomised defense scores every input on the same draw of its randomness
    (its streams are reset before each scoring), so the worst case ANDs outcomes of one
    defense, not of different draws; ``clean`` is the defense's accuracy on that draw.

    ``costly`` maps names to attacks of the same signature that are too slow for the whole
    grid (a gradient-free attack such as Square): each runs on the first ``costly_n``
    images only, at ``costly_eps`` only (default: the largest eps). The rows then gain the
    columns ``"first n"`` (that count), one per costly attack (its accuracy on those
    images), ``"worst case, first n"`` (the worst case above, restricted to those images)
    and ``worst_case_with(costly)`` (the worst case over every attack, costly ones included,
    on those images); at other budgets these cells are NaN. The first n images are scored
    on the draw the whole set is scored on (image i's draw depends on its index, not on
    the batch), so the costly columns are paired with the others, image by image.
    """
    from tqdm.auto import tqdm

    costly = dict(costly or {})
    eps_list = [float(e) for e in eps_list]
    if costly:
        if (isinstance(costly_n, bool) or not isinstance(costly_n, int)
                or not 1 <= costly_n <= len(x)):
            raise ValueError(f"costly_n must be an integer in 1..{len(x)} (the images "
                             f"passed in) when costly attacks are given, got {costly_n!r}.")
        costly_eps = max(eps_list) if costly_eps is None else float(costly_eps)
        if costly_eps not in eps_list:
            raise ValueError(f"costly_eps={costly_eps:g} is not one of eps_list "
                             f"{eps_list}; the costly attacks run at one of its budgets.")
        clash = sorted(set(costly) & (set(attacks) | {"clean", "worst case", "first n"}))
        if clash:
            raise ValueError(f"costly attack names {clash} are already columns; rename them.")
    draws = randomised(defense)

    def score(x_in, y_in):
        for d in draws:
            d.reset()
        return correct(defense, x_in, y_in)

    clean = score(x, y)
    rows = []
    for eps in tqdm(eps_list, desc=f"robust accuracy ({norm})", disable=not progress):
        row, robust = {"norm": norm, "eps": eps, "clean": float(clean.float().mean())}, clean.clone()
        for name, attack in attacks.items():
            ok = score(attack(x, y, eps, norm), y)
            row[name] = float(ok.float().mean())
            robust &= ok
        row["worst case"] = float(robust.float().mean())
        if costly:
            row.update(_costly_columns(costly, costly_n, x, y, eps, norm, robust, score)
                       if eps == costly_eps else
                       {"first n": costly_n, **{c: float("nan") for c in
                                                ["worst case, first n", *costly,
                                                 worst_case_with(costly)]}})
        rows.append(row)
    return rows


def worst_case_with(costly) -> str:
    """The name of :func:`robust_accuracy_table`'s column that ANDs the costly attacks too."""
    return f"worst case with {', '.join(costly)}, first n"


def _costly_columns(costly, n, x, y, eps, norm, robust, score) -> dict:
    x_n, y_n = x[:n], y[:n]
    cols, robust_n = {"first n": n}, robust[:n].clone()
    cols["worst case, first n"] = float(robust_n.float().mean())
    for name, attack in costly.items():
        ok = score(attack(x_n, y_n, eps, norm), y_n)
        cols[name] = float(ok.float().mean())
        robust_n &= ok
    cols[worst_case_with(costly)] = float(robust_n.float().mean())
    return cols


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


def robust_outcomes(defense, x, y, attacks: dict, eps_list, *, norm: str, offset: int = 0,
                    progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Per image, whether ``defense`` classifies it correctly when clean and under each
    attack at each eps: the outcomes behind :func:`robust_accuracy_table`'s accuracies.

    x: (N, C, H, W) in [0, 1], the images ``offset, ..., offset + N - 1`` of the global
    numbering; y: (N,). ``attacks`` maps a name to ``(x, y, eps, norm) -> x_adv``; an attack
    that draws randomness must draw it for those same global indices. The defense's
    streams start over at ``offset`` before each scoring, so a shard of images gets the
    outcomes that one call on all of them would give. Returns ``clean`` (N,) bool and
    ``{eps: {attack: (N,) bool}}``.
    """
    from tqdm.auto import tqdm

    draws = randomised(defense)

    def score(x_in):
        for d in draws:
            d.offset, d.call = int(offset), 0
        return correct(defense, x_in, y)

    clean = score(x)
    outcomes = {}
    for eps in tqdm(eps_list, desc=f"robust outcomes ({norm})", disable=not progress):
        outcomes[float(eps)] = {name: score(attack(x, y, eps, norm))
                                for name, attack in attacks.items()}
    return clean, outcomes


def costly_columns(costly: dict, n: int, x, y, eps: float, norm: str, robust: torch.Tensor,
                   score) -> dict:
    """The costly attacks' columns of one :func:`robust_accuracy_table` row, for a row whose
    other outcomes come from elsewhere (a results file of ``rmd_lib.evaluate``): ``robust``
    (N,) bool is the worst case over the other attacks, ``score(x, y)`` the defense's
    per-image correctness on the table's draw."""
    return _costly_columns(costly, n, x, y, eps, norm, robust, score)
