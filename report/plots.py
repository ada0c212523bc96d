"""comparison.png: one panel per metric, one horizontal box per configuration, each run (fold) a point.

Why boxes with the points on top: with 3-5 folds a box alone hides how few values it summarises;
the points show them, and two configurations whose points interleave are visibly not apart.
Horizontal, with the configurations named once per row of panels: labels of several overrides
(``loss=dice_focal optimizer.lr=0.001``) stay readable however many configurations there are.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from .compare import Comparison, Group


def box_plots(groups: list[Group], rows: list[Comparison], better: dict[str, bool], path: Path,
              columns: int = 3) -> Path | None:
    """Draw the panels of every ranked metric into ``path``; None when there is nothing to draw.

    Configurations keep one order in every panel (the first metric's ranking, best first) so a
    reader can follow one across panels; each panel's best is drawn in orange.
    """
    metrics = list(dict.fromkeys(c.metric for c in rows if c.cls is None))
    if not metrics or not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    first = {c.group: c.rank for c in rows if c.metric == metrics[0] and c.cls is None}
    order = sorted(groups, key=lambda g: first.get(g.label) or math.inf)
    labels = ["\n".join(textwrap.wrap(g.label, 40, break_long_words=False)[:2]) for g in order]
    starred = {(c.metric, c.group) for c in rows if c.cls is None and c.significant}
    columns = min(columns, len(metrics))
    lines = math.ceil(len(metrics) / columns)
    label_width = 0.07 * max(len(line) for label in labels for line in label.split("\n"))  # inches, at 9 pt
    height = 0.5 * len(order) * max(label.count("\n") + 1 for label in labels) + 1.0
    fig, axes = plt.subplots(lines, columns, figsize=(label_width + 3.6 * columns, height * lines + 0.4),
                             squeeze=False, sharey=True)
    y = {g.label: len(order) - i for i, g in enumerate(order)}  # the first metric's best at the top
    for ax, metric in zip(axes.flat, metrics):
        best = next((c.group for c in rows if c.metric == metric and c.cls is None and c.best), None)
        present = [g for g in order if g.values(metric)]
        boxes = ax.boxplot([g.values(metric) for g in present], positions=[y[g.label] for g in present],
                           widths=0.5, patch_artist=True, showfliers=False, medianprops={"color": "black"},
                           **_horizontal())
        for patch, g in zip(boxes["boxes"], present):
            patch.set_facecolor("tab:orange" if g.label == best else "tab:blue")
            patch.set_alpha(0.35)
        for g in present:
            values = g.values(metric)
            spread = [0.0] if len(values) == 1 else [(k / (len(values) - 1) - 0.5) * 0.25 for k in range(len(values))]
            ax.scatter(values, [y[g.label] + s for s in spread], s=16, color="black", zorder=3)
            if (metric, g.label) in starred:
                ax.annotate("*", (1.0, y[g.label]), xycoords=("axes fraction", "data"), xytext=(3, -4),
                            textcoords="offset points", fontsize=12, color="tab:red")
        ax.set_yticks(list(y.values()), labels, fontsize=9)
        ax.set_ylim(0.4, len(order) + 0.6)
        ax.set_title(f"{metric} ({'higher' if better[metric] else 'lower'} is better)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # 4-decimal ticks would run into each other
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle("One box per configuration, one point per run (fold); orange: the panel's best; "
                 "red *: significantly worse than it (Wilcoxon, Holm, alpha 0.05)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight": the stars right of the last column too
    plt.close(fig)
    return path


def _horizontal() -> dict:
    """Horizontal boxes: ``orientation`` from matplotlib 3.10, ``vert=False`` before (deprecated since)."""
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}
