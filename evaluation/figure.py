"""``confusion.png``: the confusion matrix as a picture, normalised per target class, counts printed.

Why row-normalised: pixel counts span orders of magnitude (background dwarfs everything), so
raw counts colour one cell; per target row, each cell reads "of this class's pixels, the share
predicted as that class", which shows which classes are confused for which. The counts stay
printed under the shares. Drawn on a bare matplotlib ``Figure`` (Agg canvas): no pyplot state,
no backend switched for the process that called it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Labels per row of the multilabel grid (one small 2x2 matrix each).
GRID_COLUMNS = 4


def compact(count: int) -> str:
    """``1234`` -> ``1234``, ``123456`` -> ``123k``, ``12345678`` -> ``12.3M``: fits a cell."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")):
        if count >= limit:
            value = count / (limit if limit != 1e4 else 1e3)
            return f"{value:.3g}{suffix}"
    return str(int(count))


def _normalised(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=-1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)


def _draw(ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], fontsize: float) -> object:
    shares = _normalised(matrix)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, j in np.ndindex(*matrix.shape):
        if matrix[i, j] == 0:
            continue  # an empty cell stays blank: 400 "0%" would hide the few confusions that matter
        colour = "white" if shares[i, j] > 0.55 else "black"
        share = "<1%" if shares[i, j] < 0.005 else f"{100 * shares[i, j]:.0f}%"
        ax.text(j, i, f"{share}\n{compact(int(matrix[i, j]))}", ha="center", va="center", color=colour,
                fontsize=fontsize, linespacing=1.15)
    ax.set_xticks(range(len(cols)), labels=cols, rotation=45 if len(cols) > 2 else 0,
                  ha="right" if len(cols) > 2 else "center", rotation_mode="anchor", fontsize=fontsize + 1)
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=fontsize + 1)
    if not matrix.any():
        ax.text((len(cols) - 1) / 2, (len(rows) - 1) / 2, "no labelled\npixels", ha="center", va="center",
                color="grey", fontsize=fontsize + 1)
    ax.set_xlabel("predicted", fontsize=fontsize + 2)
    ax.set_ylabel("target", fontsize=fontsize + 2)
    ax.tick_params(length=0)
    ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def confusion_png(matrix: np.ndarray, names: Sequence[str], multilabel: bool = False) -> bytes:
    """The PNG bytes of the picture of a confusion matrix.

    Args:
        matrix: ``[C, C]`` counts (rows = target, columns = predicted), or ``[C, 2, 2]`` for multilabel.
        names: one per row of ``matrix`` (class names, or label names for multilabel).
        multilabel: draw one small 2x2 matrix (absent / present) per label, in a grid.
    """
    if multilabel:
        return _label_grid(matrix, names)
    n = len(names)
    fontsize, cell = (10.0, 0.85) if n <= 6 else (8.0, 0.62) if n <= 12 else (7.0, 0.5)  # inches per cell
    longest = max(len(str(name)) for name in names)
    margin = min(2.5, 0.4 + 0.0095 * longest * (fontsize + 1))  # room for the rotated / left labels
    side = max(2.5, cell * n)
    fig = Figure(figsize=(side + margin + 1.6, side + margin + 0.6), layout="constrained")
    ax = fig.add_subplot()
    image = _draw(ax, matrix, names, names, fontsize)
    fig.colorbar(image, ax=ax, shrink=0.7, label="share of the target class's pixels")
    ax.set_title(f"Confusion matrix ({compact(int(matrix.sum()))} pixels; rows sum to 100%)", fontsize=fontsize + 3)
    return _png(fig)


def _label_grid(matrix: np.ndarray, names: Sequence[str]) -> bytes:
    n = len(names)
    cols = min(n, GRID_COLUMNS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.7 * cols + 0.8, 2.6 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        image = _draw(ax, matrix[k], ["absent", "present"], ["absent", "present"], 8.0)
        ax.set_title(str(names[k]), fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.6, label="share of the target row's pixels")
    fig.suptitle("Confusion per label (rows: target, columns: predicted; rows sum to 100%)", fontsize=11)
    return _png(fig)
