"""Interactive explorers (ipywidgets), each with a static figure from the same computation.

Each explorer has three layers:

- a **model**, computed once and in batches, that holds everything the explorer can show:
  :func:`attack_sweep` (an attack at a few budgets and INC's projections of the results),
  :func:`latent_grid` (G and the classifier on a grid over a 2-D slice of latent space) and
  :func:`pair_paths` (min-max pairs and the straight latent path between their two latents);
- a **live widget** built on the model, whose sliders only index its cached tensors:
  :func:`attack_explorer`, :func:`latent_walk`, :func:`pair_explorer`;
- a **static figure** from the same model, for pages where no kernel runs the widget:
  :func:`attack_explorer_figure`, :func:`latent_walk_figure`, :func:`pair_explorer_figure`.

The models and figures need only torch and matplotlib; the widgets need ipywidgets, which
works without a frontend, so building and displaying one under papermill is harmless. Each
widget carries its plain-Python side as ``widget.explorer`` (:class:`ExplorerView`): the
controls, the state currently shown and the ``update`` callback the controls trigger.
"""
from __future__ import annotations

import html
import io
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from matplotlib.figure import Figure
from torch import nn

from rmd_lib.attacks import ATTACKS, MinMaxPairs, divergence
from rmd_lib.checks import check_eps, check_images, check_labels, check_positive_int, model_device
from rmd_lib.evaluation import predict
from rmd_lib.plotting import image_grid
from rmd_lib.projection import InvertAndClassify, latent_dim, project

__all__ = ["AttackSweep", "attack_sweep", "attack_explorer", "attack_explorer_figure",
           "LatentGrid", "latent_grid", "latent_walk", "latent_walk_figure",
           "PairPaths", "pair_paths", "pair_explorer", "pair_explorer_figure", "ExplorerView"]

# The first-order attacks whose eps is an L-inf budget here; cw_l2 has no budget to slide.
EXPLORER_ATTACKS = ("fgsm", "bim", "pgd")


# ----------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------

def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as exc:  # pragma: no cover - ipywidgets is installed with the book
        raise ImportError(
            "The live explorers need ipywidgets: pip install ipywidgets (or the book's extras, "
            "pip install 'rmd_lib[book]'). The static *_figure functions work without it."
        ) from exc
    return ipywidgets


def _class_names(classes, k: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(k)]
    names = [str(c) for c in classes]
    if len(names) != k:
        raise ValueError(f"classes has {len(names)} names but the classifier has {k} outputs; "
                         "pass the dataset's class list (data.classes) or None.")
    return names


def _top(probs: torch.Tensor, names: list[str]) -> tuple[int, str, float]:
    """(index, name, probability) of the most probable class of one probability vector."""
    i = int(probs.argmax())
    return i, names[i], float(probs[i])


def _index(value, n: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer index, got {value!r}.")
    if not -n <= int(value) < n:
        raise IndexError(f"{name}={value} is out of range: there are {n} to choose from "
                         f"(0 to {n - 1}).")
    return int(value) % n


def _pick(which, n: int, default: int, name: str) -> list[int]:
    """Indices to draw: None (the first ``default``), a count, or a sequence of indices."""
    if which is None:
        return list(range(min(default, n)))
    if isinstance(which, numbers.Integral) and not isinstance(which, bool):
        if not 1 <= which <= n:
            raise ValueError(f"{name}={which} asks for more than the {n} available (or < 1); "
                             f"pass a count from 1 to {n} or a list of indices.")
        return list(range(int(which)))
    if isinstance(which, torch.Tensor):
        which = which.flatten().tolist()
    if not isinstance(which, Sequence) or len(which) == 0:
        raise ValueError(f"{name} must be a count or a non-empty list of indices, got {which!r}.")
    return [_index(i, n, name) for i in which]


def _check_model(model, name: str) -> nn.Module:
    if not callable(model):
        raise TypeError(f"{name} must be a model (an nn.Module mapping inputs to outputs), "
                        f"got {type(model).__name__}.")
    return model


def _show(ax, img: torch.Tensor, title: str | None = None) -> None:
    """Draw one (C, H, W) image in [0, 1] (gray for one channel, RGB for three)."""
    img = img.detach().cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)


def _png(draw: Callable[[Figure], None], size: tuple[float, float]) -> bytes:
    # A bare Figure, not pyplot's: nothing keeps it alive or shows it at the end of a cell.
    fig = Figure(figsize=size, dpi=80, layout="constrained")
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _gray_only(images: torch.Tensor, what: str) -> None:
    if images.shape[-3] != 1:
        raise ValueError(f"{what} draws with rmd_lib.plotting.image_grid, which shows "
                         f"one-channel images; these have {images.shape[-3]} channels. Use the "
                         "live widget, which shows RGB, or draw them yourself.")


class ExplorerView:
    """The plain-Python side of an explorer widget: ``controls`` (name -> widget), ``state``
    (a dict: what is shown now), ``image`` (an ipywidgets.Image, PNG) and ``text`` (HTML).

    ``update()`` reads the controls, recomputes ``state`` from the cached model and redraws;
    every control calls it when its value changes.
    """

    def __init__(self, controls: dict, state_of: Callable[..., dict],
                 draw: Callable[[Figure, dict], None], describe: Callable[[dict], str],
                 size: tuple[float, float]):
        W = _ipywidgets()
        self.controls = controls
        self.state: dict = {}
        self._state_of, self._draw, self._describe, self._size = state_of, draw, describe, size
        self.image = W.Image(format="png")
        self.text = W.HTML()
        for control in controls.values():
            control.observe(self.update, names="value")

    def update(self, change=None) -> dict:
        """Redraw for the controls' current values; returns the new state."""
        self.state = self._state_of(**{k: c.value for k, c in self.controls.items()})
        self.image.value = _png(lambda fig: self._draw(fig, self.state), self._size)
        self.text.value = self._describe(self.state)
        return self.state


def _assemble(title: str | None, view: ExplorerView):
    W = _ipywidgets()
    parts = [W.HTML(f"<b>{html.escape(title)}</b>")] if title else []
    parts += [W.HBox(list(view.controls.values())), view.image, view.text]
    box = W.VBox(parts)
    box.explorer = view
    view.update()
    return box


def _selection(W, values, fmt: str, description: str, value: int = 0):
    """A slider over cached values: each option shows the value, its payload is the index."""
    return W.SelectionSlider(options=[(format(float(v), fmt), i) for i, v in enumerate(values)],
                             value=value, description=description, continuous_update=True,
                             style={"description_width": "initial"})


# ----------------------------------------------------------------------------------------
# 1. An attack at a few budgets, and what INC's projection makes of it
# ----------------------------------------------------------------------------------------

@dataclass
class AttackSweep:
    """An L-inf attack on N images at E budgets and INC's projections of the results.

    eps: (E,) budgets, ascending (0 gives the clean images); x (N, C, H, W) and y (N,) the
    images and labels; x_adv and x_proj (E, N, C, H, W): the adversarial images and their
    projections G(z*); z (E, N, d) the latents; mse (E, N) the per-pixel projection error;
    clf_probs and inc_probs (E, N, K): the classifier's softmax on x_adv and on x_proj (INC).
    All tensors are on the CPU (the widget draws from them).
    """

    eps: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor
    x_proj: torch.Tensor
    z: torch.Tensor
    mse: torch.Tensor
    clf_probs: torch.Tensor
    inc_probs: torch.Tensor
    attack: str
    classes: list[str]

    def state(self, eps_index: int, image: int) -> dict:
        """Everything the explorer shows for budget ``eps[eps_index]`` and image ``image``."""
        e = _index(eps_index, len(self.eps), "eps_index")
        i = _index(image, len(self.x), "image")
        x, x_adv = self.x[i], self.x_adv[e, i]
        return {"eps_index": e, "eps": float(self.eps[e]), "image": i,
                "true": self.classes[int(self.y[i])], "x": x, "x_adv": x_adv,
                "x_proj": self.x_proj[e, i], "linf": float((x_adv - x).abs().max()),
                "mse": float(self.mse[e, i]),
                "classifier": _top(self.clf_probs[e, i], self.classes),
                "inc": _top(self.inc_probs[e, i], self.classes)}


def attack_sweep(inc: InvertAndClassify, x: torch.Tensor, y: torch.Tensor,
                 eps: Sequence[float] = (0.0, 0.1, 0.2, 0.3), *, attack: str = "fgsm",
                 steps: int = 10, seed: int = 0, classes: Sequence[str] | None = None,
                 max_images: int = 512) -> AttackSweep:
    """Run ``attack`` (L-inf, crafted on ``inc.classifier``) on x at every budget of ``eps``
    and project all E x N results with INC's projection settings in one batched call.

    x: (N, C, H, W) in [0, 1] on the classifier's device; y: (N,) labels; eps: budgets >= 0
    (sorted, duplicates dropped; 0 keeps the clean image). ``attack`` is ``"fgsm"``, ``"bim"``
    or ``"pgd"`` (``steps`` iterations for the last two, PGD's random start drawn with
    ``seed``). The projection is :func:`rmd_lib.projection.project` with ``inc.projection``
    and restarts drawn with ``seed``, so it does not advance ``inc``'s own random stream.

    Cost: E attack runs on N images (one gradient each for FGSM, ``steps`` for BIM/PGD) and
    one projection of E x N images, i.e. what INC costs on E x N images. With the paper's
    MNIST VAE, FGSM at 4 budgets x 6 images took 0.3 s on one CPU thread at the smoke budget
    (40 steps, 2 restarts) and 0.8 s at the standard one (200 steps, 10 restarts).
    ``max_images`` caps E x N so that a slip cannot start an hour-long projection.
    """
    if not isinstance(inc, InvertAndClassify):
        raise TypeError(f"inc must be an InvertAndClassify (the defense whose projection is "
                        f"shown), got {type(inc).__name__}; build one with "
                        "InvertAndClassify(G, classifier, steps=..., restarts=...).")
    clf = inc.classifier
    check_images(x, "x", device=clf)
    k = predict(clf, x[:1]).shape[1]
    y = check_labels(y, x.shape[0], "y", num_classes=k)
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}; move y with y.to(x.device).")
    attack = attack.lower() if isinstance(attack, str) else attack
    if attack not in EXPLORER_ATTACKS:
        raise ValueError(f"attack must be one of {EXPLORER_ATTACKS} (L-inf, with a budget to "
                         f"slide over), got {attack!r}.")
    if isinstance(eps, numbers.Real) or (isinstance(eps, torch.Tensor) and eps.ndim == 0):
        raise TypeError(f"eps must be a list of budgets, e.g. (0.0, 0.1, 0.3), got {eps!r}.")
    if isinstance(eps, torch.Tensor):
        eps = eps.tolist()
    budgets = sorted({check_eps(e) for e in eps})
    if not budgets:
        raise ValueError("eps is empty; pass at least one budget, e.g. (0.0, 0.1, 0.3).")
    steps = check_positive_int(steps, "steps")
    n, n_eps = x.shape[0], len(budgets)
    if n * n_eps > check_positive_int(max_images, "max_images"):
        raise ValueError(f"{n_eps} budgets x {n} images = {n * n_eps} projections exceed "
                         f"max_images={max_images}; the explorer shows a few images, so pass "
                         "fewer (x[:8]) or raise max_images knowingly.")
    options = {} if attack == "fgsm" else {"steps": steps}
    if attack == "pgd":
        options["seed"] = seed
    x_adv = torch.stack([x if e == 0 else ATTACKS[attack](clf, x, y, e, norm="linf", **options)
                         for e in budgets])
    flat = x_adv.flatten(0, 1)
    proj = project(inc.G, flat, seed=seed, **inc.projection)
    clf_probs = predict(clf, flat).softmax(1)
    inc_probs = predict(clf, proj.x_hat).softmax(1)

    def grid(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().reshape(n_eps, n, *t.shape[1:])

    return AttackSweep(torch.tensor(budgets), x.detach().cpu(), y.cpu(), x_adv.detach().cpu(),
                       grid(proj.x_hat), grid(proj.z), grid(proj.mse), grid(clf_probs),
                       grid(inc_probs), attack, _class_names(classes, k))


def _check_sweep(sweep) -> AttackSweep:
    if not isinstance(sweep, AttackSweep):
        raise TypeError(f"expected an AttackSweep, got {type(sweep).__name__}; build one with "
                        "attack_sweep(inc, x, y, eps).")
    return sweep


def attack_explorer(sweep: AttackSweep, *, title: str | None = None):
    """A widget over an :class:`AttackSweep`: an eps slider and an image selector, showing the
    clean image, the adversarial one and its projection G(z*), with the classifier's label and
    confidence on the adversarial image and INC's. Returns an ipywidgets.VBox."""
    sweep = _check_sweep(sweep)
    W = _ipywidgets()
    controls = {
        "eps_index": _selection(W, sweep.eps.tolist(), "g", "eps (L-inf)"),
        "image": W.Dropdown(options=[(f"image {i} (true: {sweep.classes[int(c)]})", i)
                                     for i, c in enumerate(sweep.y.tolist())],
                            value=0, description="image"),
    }

    def draw(fig: Figure, s: dict) -> None:
        axes = fig.subplots(1, 3)
        c, inc = s["classifier"], s["inc"]
        _show(axes[0], s["x"], f"clean (true {s['true']})")
        _show(axes[1], s["x_adv"], f"{sweep.attack.upper()} eps {s['eps']:g}\n"
                                   f"classifier: {c[1]} ({c[2]:.2f})")
        _show(axes[2], s["x_proj"], f"projection G(z*)\nINC: {inc[1]} ({inc[2]:.2f})")

    def describe(s: dict) -> str:
        c, inc = s["classifier"], s["inc"]
        y = int(sweep.y[s["image"]])
        mark = {True: "correct", False: "wrong"}
        return (f"eps {s['eps']:g}, measured L-inf {s['linf']:.3f}; projection MSE "
                f"{s['mse']:.4f}<br>classifier on the adversarial image: "
                f"<b>{html.escape(c[1])}</b> ({c[2]:.2f}, {mark[c[0] == y]}); "
                f"INC: <b>{html.escape(inc[1])}</b> ({inc[2]:.2f}, {mark[inc[0] == y]})")

    view = ExplorerView(controls, sweep.state, draw, describe, size=(7.5, 2.8))
    return _assemble(title, view)


def attack_explorer_figure(sweep: AttackSweep, images=None, *, title: str | None = None):
    """The static counterpart of :func:`attack_explorer`: for each image (a count, or a list
    of indices; default the first 3), one row of adversarial images over the budgets,
    captioned with the classifier's label and confidence, and one row of their projections
    with INC's. Returns the figure (2 x images rows, E columns)."""
    sweep = _check_sweep(sweep)
    _gray_only(sweep.x, "attack_explorer_figure")
    idx = _pick(images, len(sweep.x), 3, "images")
    rows, labels, titles = [], [], []
    for i in idx:
        states = [sweep.state(e, i) for e in range(len(sweep.eps))]
        rows += [torch.stack([s["x_adv"] for s in states]),
                 torch.stack([s["x_proj"] for s in states])]
        labels += [f"#{i} (true {states[0]['true']})\nattacked", f"#{i}\nG(z*)"]
        titles += [[f"eps {s['eps']:g}\n{s['classifier'][1]} ({s['classifier'][2]:.2f})"
                    for s in states],
                   [f"INC\n{s['inc'][1]} ({s['inc'][2]:.2f})" for s in states]]
    head = title or (f"{sweep.attack.upper()} (L-inf) on the classifier, and the projections "
                     "INC classifies")
    return image_grid(rows, row_labels=labels, titles=titles, scale=1.5, suptitle=head)


# ----------------------------------------------------------------------------------------
# 2. A walk over a 2-D slice of latent space
# ----------------------------------------------------------------------------------------

@dataclass
class LatentGrid:
    """G and the classifier on an S x S grid over the plane z = origin + a u + b v.

    origin: (d,); directions: (2, d), rows u and v; coords: (S,) the values a and b take;
    images: (S, S, C, H, W) with images[i, j] = G(origin + coords[i] u + coords[j] v);
    probs: (S, S, K) the classifier's softmax on them. Tensors are on the CPU.
    """

    origin: torch.Tensor
    directions: torch.Tensor
    coords: torch.Tensor
    images: torch.Tensor
    probs: torch.Tensor
    classes: list[str]

    def z(self, i: int, j: int) -> torch.Tensor:
        """The latent at grid point (i, j): (d,)."""
        i = _index(i, len(self.coords), "i")
        j = _index(j, len(self.coords), "j")
        return self.origin + self.coords[i] * self.directions[0] + self.coords[j] * self.directions[1]

    def state(self, i: int, j: int) -> dict:
        """What the walk shows at grid point (i, j): a, b, z, G(z), the probabilities, the label."""
        z = self.z(i, j)
        i, j = i % len(self.coords), j % len(self.coords)
        return {"i": i, "j": j, "a": float(self.coords[i]), "b": float(self.coords[j]), "z": z,
                "image": self.images[i, j], "probs": self.probs[i, j],
                "label": _top(self.probs[i, j], self.classes)}


def latent_grid(G: nn.Module, classifier: nn.Module, origin: torch.Tensor | None = None,
                directions: torch.Tensor | None = None, *, span: tuple[float, float] = (-2.0, 2.0),
                n: int = 11, classes: Sequence[str] | None = None) -> LatentGrid:
    """Decode and classify an n x n grid over the plane z = origin + a u + b v, a and b from
    ``span[0]`` to ``span[1]``, in one batch.

    G maps (B, d) latents to images; classifier maps images to logits. origin: (d,), default
    the prior's mean 0. directions: (2, d), rows u and v (not parallel); default the first
    two coordinate axes (for a 2-D latent, the whole latent space). For a slice through
    three latents z0, z1, z2, pass origin=z0 and directions=stack([z1 - z0, z2 - z0]): then
    (0, 0), (1, 0) and (0, 1) are the three points. Cost: G and the classifier on n^2
    latents (121 by default), well under a second on a CPU for the book's models.
    """
    d = latent_dim(G)
    _check_model(classifier, "classifier")
    n = check_positive_int(n, "n")
    if not 2 <= n <= 51:
        raise ValueError(f"n={n} grid points per direction: use 2 to 51 (the grid has n^2 points).")
    try:
        lo, hi = (float(s) for s in span)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"span must be a pair of numbers (low, high), got {span!r}.") from exc
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"span must be finite with low < high, got {span!r}.")
    device = model_device(G) or torch.device("cpu")
    origin = torch.zeros(d) if origin is None else origin
    if not isinstance(origin, torch.Tensor) or origin.shape != (d,):
        got = tuple(origin.shape) if isinstance(origin, torch.Tensor) else type(origin).__name__
        raise ValueError(f"origin must be a latent of shape ({d},), got {got}; for a batch of "
                         "latents pick one row, e.g. z[0].")
    if directions is None:
        if d < 2:
            raise ValueError(f"G has a {d}-dimensional latent; a 2-D walk needs at least two.")
        directions = torch.eye(2, d)
    if not isinstance(directions, torch.Tensor) or directions.shape != (2, d):
        got = tuple(directions.shape) if isinstance(directions, torch.Tensor) else type(directions).__name__
        raise ValueError(f"directions must have shape (2, {d}), one direction per row, got {got}.")
    origin, directions = origin.detach().float().cpu(), directions.detach().float().cpu()
    if not (torch.isfinite(origin).all() and torch.isfinite(directions).all()):
        raise ValueError("origin and directions must be finite.")
    u, v = directions
    # |cos| near 1: the two sliders would move along (almost) the same line.
    if float(u.norm()) == 0 or float(v.norm()) == 0 or \
            abs(float(u @ v)) >= (1 - 1e-6) * float(u.norm() * v.norm()):
        raise ValueError("the two directions must be non-zero and not parallel, or the walk "
                         "covers a line, not a plane; pick two different latents.")
    coords = torch.linspace(lo, hi, n)
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    z = origin + a.reshape(-1, 1) * u + b.reshape(-1, 1) * v
    with torch.no_grad():
        images = G(z.to(device))
        probs = predict(classifier, images).softmax(1)
    return LatentGrid(origin, directions, coords, images.cpu().reshape(n, n, *images.shape[1:]),
                      probs.cpu().reshape(n, n, -1), _class_names(classes, probs.shape[1]))


def _check_grid(grid) -> LatentGrid:
    if not isinstance(grid, LatentGrid):
        raise TypeError(f"expected a LatentGrid, got {type(grid).__name__}; build one with "
                        "latent_grid(G, classifier, ...).")
    return grid


def latent_walk(grid: LatentGrid, *, title: str | None = None):
    """A widget over a :class:`LatentGrid`: sliders for a and b, showing G(z) and the
    classifier's class probabilities as bars. Returns an ipywidgets.VBox."""
    grid = _check_grid(grid)
    W = _ipywidgets()
    middle = len(grid.coords) // 2
    controls = {"i": _selection(W, grid.coords.tolist(), ".2f", "a (direction u)", middle),
                "j": _selection(W, grid.coords.tolist(), ".2f", "b (direction v)", middle)}

    def draw(fig: Figure, s: dict) -> None:
        ax_img, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
        idx, name, conf = s["label"]
        _show(ax_img, s["image"], f"G(z): {name} ({conf:.2f})")
        colors = ["C3" if k == idx else "C0" for k in range(len(grid.classes))]
        ax_bar.bar(range(len(grid.classes)), s["probs"].numpy(), color=colors)
        ax_bar.set_xticks(range(len(grid.classes)), grid.classes, rotation=45, ha="right",
                          fontsize=8)
        ax_bar.set_ylim(0, 1)
        ax_bar.set_ylabel("probability")

    def describe(s: dict) -> str:
        _, name, conf = s["label"]
        return (f"z = origin + {s['a']:.2f} u + {s['b']:.2f} v (||z|| = {float(s['z'].norm()):.2f}); "
                f"classifier: <b>{html.escape(name)}</b> ({conf:.2f})")

    view = ExplorerView(controls, grid.state, draw, describe, size=(6.5, 2.6))
    return _assemble(title, view)


def latent_walk_figure(grid: LatentGrid, n_show: int = 5, *, title: str | None = None):
    """The static counterpart of :func:`latent_walk`: G(z) at n_show x n_show evenly spaced
    points of the grid (b down the rows, from its largest value; a across the columns), each
    captioned with the classifier's label and confidence. Returns the figure."""
    grid = _check_grid(grid)
    _gray_only(grid.images, "latent_walk_figure")
    s = len(grid.coords)
    n_show = check_positive_int(n_show, "n_show")
    if not 2 <= n_show <= s:
        raise ValueError(f"n_show={n_show} must be from 2 to the grid's {s} points per direction.")
    pick = torch.linspace(0, s - 1, n_show).round().long().tolist()
    rows, titles, labels = [], [], []
    for j in reversed(pick):  # the largest b on top, as on a plot's y-axis
        states = [grid.state(i, j) for i in pick]
        rows.append(torch.stack([st["image"] for st in states]))
        titles.append([f"{st['label'][1]}\n{st['label'][2]:.2f}" for st in states])
        labels.append(f"b = {float(grid.coords[j]):.2f}")
    fig = image_grid(rows, row_labels=labels, titles=titles, scale=1.3,
                     suptitle=title or "G(origin + a u + b v) and the classifier's label")
    for ax, i in zip(fig.axes[-n_show:], pick):
        ax.set_xlabel(f"a = {float(grid.coords[i]):.2f}", fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# 3. Min-max pairs and the latent path between their two latents
# ----------------------------------------------------------------------------------------

@dataclass
class PairPaths:
    """P min-max pairs and T points on the straight latent path between z1 and z2 of each.

    index: (P,) the pairs' rows in the MinMaxPairs searched; z1, z2: (P, d); t: (T,) from 0
    to 1; images: (P, T, C, H, W), images[p, k] = G((1 - t_k) z1 + t_k z2), so images[:, 0] is
    G(z1) and images[:, -1] G(z2); probs: (P, T, K) the classifier's softmax on them;
    distance: (P,) ||G(z1) - G(z2)||_2; divergence: (P,) D(C(G(z1)), C(G(z2))) of ``kind``;
    different: (P,) whether the two labels differ; eps: the search's budget, or None.
    Tensors are on the CPU.
    """

    index: torch.Tensor
    z1: torch.Tensor
    z2: torch.Tensor
    t: torch.Tensor
    images: torch.Tensor
    probs: torch.Tensor
    distance: torch.Tensor
    divergence: torch.Tensor
    different: torch.Tensor
    eps: float | None
    kind: str
    classes: list[str]

    def state(self, pair: int, step: int) -> dict:
        """What the explorer shows for pair ``pair`` at path point ``step``."""
        p = _index(pair, len(self.index), "pair")
        k = _index(step, len(self.t), "step")
        ends = self.images[p, [0, -1]]
        return {"pair": p, "row": int(self.index[p]), "step": k, "t": float(self.t[k]),
                "x1": ends[0], "x2": ends[1], "x_t": self.images[p, k],
                "distance": float(self.distance[p]), "divergence": float(self.divergence[p]),
                "from_x1": float((self.images[p, k] - ends[0]).norm()),
                "valid": None if self.eps is None else bool(self.distance[p] <= self.eps + 1e-6),
                "label1": _top(self.probs[p, 0], self.classes),
                "label2": _top(self.probs[p, -1], self.classes),
                "label_t": _top(self.probs[p, k], self.classes),
                "path_probs": self.probs[p]}


def pair_paths(G: nn.Module, classifier: nn.Module, pairs: MinMaxPairs, n_path: int = 9, *,
               index=None, max_pairs: int = 8, eps: float | None = None, kind: str = "sym_kl",
               classes: Sequence[str] | None = None) -> PairPaths:
    """Decode and classify n_path points on the straight latent path of each chosen pair, all
    pairs in one batch (the path of :func:`rmd_lib.projection.latent_path`).

    pairs: the output of :func:`rmd_lib.attacks.minmax_pairs` for this G and classifier.
    ``index`` picks the pairs (a list of rows); by default the first ``max_pairs`` in the
    order successes first, then the rest, each by decreasing divergence. ``eps`` is the
    search's budget (shown, and used to call a pair valid); ``kind`` the divergence it used.
    Cost: G and the classifier on P x n_path latents (72 by default): milliseconds.
    """
    if not isinstance(pairs, MinMaxPairs):
        raise TypeError(f"pairs must be the MinMaxPairs that minmax_pairs returns, got "
                        f"{type(pairs).__name__}.")
    d = latent_dim(G)
    _check_model(classifier, "classifier")
    if pairs.z1.shape[1] != d:
        raise ValueError(f"the pairs have {pairs.z1.shape[1]}-dimensional latents but G takes "
                         f"{d}; pass the generator the pairs were searched with.")
    n_path = check_positive_int(n_path, "n_path")
    if not 2 <= n_path <= 65:
        raise ValueError(f"n_path={n_path}: use 2 to 65 points (both ends included).")
    if kind not in ("sym_kl", "ce"):
        raise ValueError(f"kind must be 'sym_kl' or 'ce' (the divergence the search used), got {kind!r}.")
    if eps is not None:
        eps = check_eps(eps)
    n_pairs = len(pairs.z1)
    if index is None:
        max_pairs = check_positive_int(max_pairs, "max_pairs")
        div = pairs.divergence.detach().cpu().nan_to_num(nan=-math.inf)
        success = (pairs.valid & pairs.different).cpu()
        # successes first, each group by divergence: sort on a key that puts them apart
        order = sorted(range(n_pairs), key=lambda r: (not bool(success[r]), -float(div[r])))
        rows = order[:max_pairs]
    else:
        rows = _pick(index, n_pairs, n_pairs, "index")
    rows_t = torch.tensor(rows, dtype=torch.long)
    device = model_device(G) or torch.device("cpu")
    z1 = pairs.z1.detach().cpu()[rows_t].float()
    z2 = pairs.z2.detach().cpu()[rows_t].float()
    t = torch.linspace(0, 1, n_path)
    # All paths as one batch: row p * T + k is point k of pair p, the same line as latent_path.
    z = ((1 - t)[None, :, None] * z1[:, None] + t[None, :, None] * z2[:, None]).reshape(-1, d)
    with torch.no_grad():
        images = G(z.to(device))
        logits = predict(classifier, images)
    images = images.reshape(len(rows), n_path, *images.shape[1:])
    logits = logits.reshape(len(rows), n_path, -1)
    distance = (images[:, 0] - images[:, -1]).flatten(1).norm(dim=1)
    div = divergence(logits[:, 0], logits[:, -1], kind)
    different = logits[:, 0].argmax(1) != logits[:, -1].argmax(1)
    return PairPaths(rows_t, z1, z2, t, images.cpu(), logits.softmax(-1).cpu(), distance.cpu(),
                     div.cpu(), different.cpu(), eps, kind,
                     _class_names(classes, logits.shape[-1]))


def _check_paths(paths) -> PairPaths:
    if not isinstance(paths, PairPaths):
        raise TypeError(f"expected a PairPaths, got {type(paths).__name__}; build one with "
                        "pair_paths(G, classifier, minmax_pairs(...)).")
    return paths


def pair_explorer(paths: PairPaths, *, title: str | None = None):
    """A widget over :class:`PairPaths`: a slider over pairs and one along the latent path,
    showing G(z1), the point on the path, G(z2), the probabilities of both end labels along
    the path, ||G(z1) - G(z2)||, the divergence and the labels. Returns an ipywidgets.VBox."""
    paths = _check_paths(paths)
    W = _ipywidgets()
    controls = {"pair": W.IntSlider(value=0, min=0, max=len(paths.index) - 1, description="pair",
                                    continuous_update=True),
                "step": _selection(W, paths.t.tolist(), ".2f", "t (z1 to z2)")}

    def draw(fig: Figure, s: dict) -> None:
        axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 1.8]})
        (i1, n1, c1), (i2, n2, c2), (_, nt, ct) = s["label1"], s["label2"], s["label_t"]
        _show(axes[0], s["x1"], f"G(z1): {n1} ({c1:.2f})")
        _show(axes[1], s["x_t"], f"t = {s['t']:.2f}: {nt} ({ct:.2f})")
        _show(axes[2], s["x2"], f"G(z2): {n2} ({c2:.2f})")
        ax = axes[3]
        t = paths.t.numpy()
        ax.plot(t, s["path_probs"][:, i1].numpy(), "o-", ms=3, color="C0", label=f"p({n1})")
        if i2 != i1:
            ax.plot(t, s["path_probs"][:, i2].numpy(), "s-", ms=3, color="C3", label=f"p({n2})")
        ax.axvline(s["t"], color="k", lw=1, alpha=0.5)
        ax.set_ylim(0, 1.02), ax.set_xlabel("t"), ax.legend(fontsize=8)

    def describe(s: dict) -> str:
        budget = "" if paths.eps is None else (
            f" (budget {paths.eps:g}: {'valid' if s['valid'] else 'NOT valid'})")
        return (f"pair {s['pair']} (row {s['row']} of the search): ||G(z1) - G(z2)||_2 = "
                f"{s['distance']:.3f}{budget}; divergence ({paths.kind}) {s['divergence']:.3f}"
                f"<br>labels: <b>{html.escape(s['label1'][1])}</b> ({s['label1'][2]:.2f}) and "
                f"<b>{html.escape(s['label2'][1])}</b> ({s['label2'][2]:.2f}); at t = "
                f"{s['t']:.2f}, ||G(z_t) - G(z1)||_2 = {s['from_x1']:.3f}")

    view = ExplorerView(controls, paths.state, draw, describe, size=(9.0, 2.4))
    return _assemble(title, view)


def pair_explorer_figure(paths: PairPaths, n_pairs: int | Sequence[int] | None = None, *,
                         title: str | None = None):
    """The static counterpart of :func:`pair_explorer`: one row per pair (a count, or a list
    of indices into ``paths``; default the first 4) with the T images of its latent path,
    G(z1) first and G(z2) last, captioned with label and confidence; each row names its
    distance ||G(z1) - G(z2)||_2 and divergence. Returns the figure (pairs x T axes)."""
    paths = _check_paths(paths)
    _gray_only(paths.images, "pair_explorer_figure")
    idx = _pick(n_pairs, len(paths.index), 4, "n_pairs")
    rows, labels, titles = [], [], []
    for p in idx:
        rows.append(paths.images[p])
        labels.append(f"pair {p}\ndist {float(paths.distance[p]):.2f}\n"
                      f"div {float(paths.divergence[p]):.2f}")
        titles.append([f"{paths.classes[int(q.argmax())]}\n{float(q.max()):.2f}"
                       for q in paths.probs[p]])
    budget = "" if paths.eps is None else f", budget {paths.eps:g}"
    head = title or f"min-max pairs: the latent path from G(z1) to G(z2){budget}"
    return image_grid(rows, row_labels=labels, titles=titles, scale=1.2, suptitle=head)
