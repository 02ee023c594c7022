#!/usr/bin/env python3
"""Draw the book's pipeline diagrams as SVG files in book/figures/.

    python scripts/draw_diagrams.py [--out book/figures] [--check]

Four diagrams: invert-and-classify, the min-max (overpowered) attack, adversarial training
on the manifold and the Deep Image Prior defense. Each is a row of boxes joined by arrows,
drawn with matplotlib; the text stays text in the SVG, and the files carry no date, so
drawing them twice gives the same bytes. The SVGs are committed; ``--check`` exits 1 when
a committed file's size and text differ from what this script draws (``tests/test_book.py``
runs it; the outlines are not compared, since another matplotlib may draw them otherwise).
"""
from __future__ import annotations

import argparse
import io
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "book" / "figures"
# Fill colours by role: data, a fixed model, an optimisation, the output.
FILL = {"data": "#e8f1fb", "model": "#eeeeee", "search": "#fff1d6", "out": "#e6f4ea"}
EDGE = "#444444"


@dataclass
class Box:
    key: str
    x: float  # centre, in axes units (the figure is 10 x 3 units)
    y: float
    text: str
    role: str = "model"
    w: float = 1.7
    h: float = 0.9


def _draw(title: str, boxes: list[Box], arrows: list[tuple], width: float = 10.0,
          height: float = 3.0):
    """boxes, then arrows (from key, to key, label, curve) on one figure."""
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.set_title(title, fontsize=12, loc="left")
    where = {}
    for b in boxes:
        ax.add_patch(FancyBboxPatch((b.x - b.w / 2, b.y - b.h / 2), b.w, b.h,
                                    boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=FILL[b.role], edgecolor=EDGE, linewidth=1.0))
        ax.text(b.x, b.y, b.text, ha="center", va="center", fontsize=9.5)
        where[b.key] = b
    for src, dst, label, curve in arrows:
        a, b = where[src], where[dst]
        start, end = _edge_point(a, b), _edge_point(b, a)
        arrow = FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12,
                                color=EDGE, linewidth=1.1,
                                connectionstyle=f"arc3,rad={curve}")
        ax.add_patch(arrow)
        if label:
            mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            # a curved arrow bends to its right (rad > 0): put its label on the bulge
            dx, dy = end[0] - start[0], end[1] - start[1]
            off = 0.5 * curve
            ax.text(mx + off * dy, my - off * dx + (0.16 if curve == 0 else 0), label,
                    ha="center", va="bottom" if curve == 0 else "center", fontsize=8.5,
                    color="#333333")
    fig.tight_layout()
    return fig


def _edge_point(a: Box, b: Box) -> tuple[float, float]:
    """Where the line from a's centre towards b's centre leaves a's box."""
    dx, dy = b.x - a.x, b.y - a.y
    sx = (a.w / 2) / abs(dx) if dx else float("inf")
    sy = (a.h / 2) / abs(dy) if dy else float("inf")
    s = min(sx, sy)
    return a.x + s * dx, a.y + s * dy


def inc():
    boxes = [Box("x", 0.9, 0.9, "input image\n$x$", "data", w=1.3),
             Box("proj", 3.5, 0.9, "projection ($L$ steps, $R$ restarts)\n"
                 r"$z^\ast = \arg\min_z \|G(z) - x\|_2^2$", "search", w=3.3),
             Box("G", 6.3, 0.9, "generator\n$G(z^\\ast)$", "model", w=1.5),
             Box("C", 8.6, 0.9, "classifier\n$\\hat y = \\arg\\max\\, C(G(z^\\ast))$",
                 "out", w=2.4)]
    arrows = [("x", "proj", "", 0), ("proj", "G", "$z^\\ast$", 0), ("G", "C", "", 0)]
    return _draw("Invert-and-classify (INC)", boxes, arrows, height=2.0)


def minmax():
    boxes = [Box("z", 0.9, 2.0, "latent pair\n$(z_1, z_2)$", "data", w=1.4),
             Box("G", 2.9, 2.0, "generator\n$G(z_1),\\ G(z_2)$", w=1.7),
             Box("C", 5.1, 2.0, "classifier\n$C(G(z_1)),\\ C(G(z_2))$", w=2.0),
             Box("loss", 8.0, 2.0, "Lagrangian\n$-D + \\lambda\\,\\max(0, d - \\varepsilon)$\n"
                 "$d = \\|G(z_1) - G(z_2)\\|_2$", "search", w=2.7, h=1.05),
             Box("step", 5.1, 0.55, "Adam step on $(z_1, z_2)$;\n"
                 "dual ascent on $\\lambda$", "search", w=2.6, h=0.8),
             Box("out", 8.0, 0.55, "valid pair ($d \\leq \\varepsilon$),\nlabels differ",
                 "out", w=2.4, h=0.8)]
    arrows = [("z", "G", "", 0), ("G", "C", "", 0), ("C", "loss", "$D$", 0),
              ("loss", "step", "gradients", 0), ("step", "z", "next iterate", -0.2),
              ("loss", "out", "best valid iterate", 0)]
    return _draw("The min-max (overpowered) attack", boxes, arrows)


def manifold_training():
    boxes = [Box("data", 0.9, 2.0, "training batch\n$(x, y)$", "data", w=1.5),
             Box("C", 3.3, 2.0, "classifier $C$\n(weights being trained)", w=2.2),
             Box("search", 3.3, 0.55, "min-max search\nagainst the current $C$", "search",
                 w=2.3, h=0.8),
             Box("loss", 6.5, 1.3, "loss\n$\\mathrm{CE}(C(x), y)$\n"
                 "$+\\ w \\cdot$ mean pair term $D$ over $V$", "search", w=2.6, h=1.1),
             Box("step", 9.0, 1.3, "Adam step\non $C$'s weights", "out", w=1.6)]
    arrows = [("data", "C", "", 0), ("C", "loss", "logits", 0),
              ("C", "search", "", 0), ("search", "loss", "valid pairs $V$", 0),
              ("loss", "step", "", 0), ("step", "C", "updated $C$", 0.35)]
    return _draw("Adversarial training on the manifold", boxes, arrows)


def dip():
    boxes = [Box("x", 0.9, 0.9, "input image\n$x$", "data", w=1.3),
             Box("fit", 3.6, 0.9, "fit a fresh network\n"
                 "$\\min_\\theta \\|f_\\theta(u) - x\\|_2^2$\nfor $t$ steps, then stop",
                 "search", w=2.9, h=1.1),
             Box("xhat", 6.3, 0.9, "reconstruction\n$\\hat x = f_\\theta(u)$", w=1.9),
             Box("C", 8.7, 0.9, "classifier\n$\\arg\\max\\, C(\\hat x)$", "out", w=2.0)]
    arrows = [("x", "fit", "", 0), ("fit", "xhat", "", 0), ("xhat", "C", "", 0)]
    return _draw("The Deep Image Prior defense", boxes, arrows, height=2.0)


DIAGRAMS = {"pipeline_inc.svg": inc, "pipeline_minmax.svg": minmax,
            "pipeline_manifold_training.svg": manifold_training,
            "pipeline_dip.svg": dip}


def render(draw) -> bytes:
    """The SVG bytes of one diagram, reproducible: no date, fixed ids, text as text."""
    with plt.rc_context({"svg.hashsalt": "rmd-book", "svg.fonttype": "none",
                         "font.family": "DejaVu Sans"}):
        fig = draw()
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    return buf.getvalue()


def signature(svg: bytes) -> tuple:
    """What --check compares: the drawing's size and every piece of text in it."""
    root = ET.fromstring(svg)
    drawn = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "text"]
    texts = tuple(t.strip() for el in drawn for t in el.itertext() if t.strip())
    return root.get("width"), root.get("height"), tuple(sorted(texts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true",
                    help="compare with the files in --out instead of writing them")
    args = ap.parse_args(argv)
    stale = []
    for name, draw in DIAGRAMS.items():
        path = args.out / name
        svg = render(draw)
        if args.check:
            if not path.exists() or signature(path.read_bytes()) != signature(svg):
                stale.append(name)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_bytes(svg)
        print(f"wrote {path}")
    if stale:
        print(f"error: {', '.join(stale)} in {args.out} differ from what "
              "scripts/draw_diagrams.py draws; run it and commit the SVGs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
