"""The book's figure helpers."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from rmd_lib.plotting import STYLE, image_grid, set_style  # noqa: E402


def test_image_grid_lays_out_rows_and_titles():
    rows = [torch.rand(3, 1, 8, 8), torch.rand(2, 1, 8, 8)]
    titles = [["a", "b", "c"], ["d", "e"]]
    fig = image_grid(rows, row_labels=["top", "bottom"], titles=titles, suptitle="grid")
    axes = fig.get_axes()
    assert len(axes) == 6  # 2 rows x 3 columns, the short row padded with an empty axis
    assert [ax.get_title() for ax in axes] == ["a", "b", "c", "d", "e", ""]
    assert len(axes[5].images) == 0 and all(len(ax.images) == 1 for ax in axes[:5])
    assert axes[0].get_ylabel() == "top" and axes[3].get_ylabel() == "bottom"
    shown = axes[4].images[0].get_array()
    assert torch.allclose(torch.as_tensor(shown.data), rows[1][1, 0])
    plt.close(fig)


def test_set_style_applies_the_book_style():
    plt.rcdefaults()
    set_style()
    assert all(plt.rcParams[k] == v for k, v in STYLE.items())
    plt.rcdefaults()
