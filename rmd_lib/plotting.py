"""Figure style and the image grids the chapters use, from one place."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

__all__ = ["set_style", "image_grid"]

STYLE = {
    "figure.dpi": 100, "savefig.dpi": 150, "font.size": 10, "axes.titlesize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.frameon": False,
}


def set_style() -> None:
    """Apply the book's matplotlib style."""
    plt.rcParams.update(STYLE)


def image_grid(rows: list[torch.Tensor], row_labels: list[str] | None = None,
               titles: list[list[str]] | None = None, scale: float = 1.1, suptitle: str | None = None):
    """Show images as a grid: ``rows`` is a list of (N, 1, H, W) tensors in [0, 1], one per row.

    ``titles[i][j]`` captions image j of row i. Returns the figure.
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows + 0.3),
                             squeeze=False)
    for i, imgs in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
            for s in ax.spines.values():
                s.set_visible(False)
            if j >= len(imgs):
                continue
            ax.imshow(imgs[j].detach().cpu().squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i][j], fontsize=8)
        if row_labels is not None:
            axes[i][0].set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
