"""The comparison report: which configuration of a sweep wins, on which metric, by how much, beyond noise.

The last step of data -> fingerprint -> train -> evaluate -> report. Why a package of its own: a
sweep over losses exists to choose one, and one number on one split cannot tell a real
difference from noise; this groups a sweep's runs by configuration (overrides minus
``data.fold``), reports mean +- std over folds, and tests each configuration against the best
(compare.py), as comparison.md / comparison.csv (markdown.py) and comparison.png (plots.py).

It reads run folders only (``evaluation/``, ``config.yaml``) and never imports segtrain, Lightning
or Hydra; ``scripts/summarize_sweep.py`` (the one summary tool) finds the jobs, reads their
``metrics.csv`` and calls :func:`write_comparison`.
"""

from __future__ import annotations

from pathlib import Path

from .compare import (
    ALPHA,
    FOLD_KEY,
    MIN_FOLD_PAIRS,
    Comparison,
    Group,
    Run,
    compare,
    direction,
    group_runs,
    higher_is_better,
    holm,
    load_run,
    wilcoxon,
)
from .markdown import to_markdown, write_csv
from .plots import box_plots


def write_comparison(runs: list[Run], out_dir: Path, metric: str = "dice", mode: str | None = None,
                     left_out: list[tuple[str, str]] = (), alpha: float = ALPHA) -> dict[str, Path]:
    """Write comparison.md, comparison.csv and comparison.png into ``out_dir``; return the paths written.

    Args:
        runs: the finished runs (:func:`load_run`); failed and refused jobs belong in ``left_out``.
        metric: the metric that names the best configuration (``dice``, ``hd95``, ...).
        mode: ``max``/``min``, needed only for a metric whose direction is not known.
        left_out: ``(job, reason)`` of the jobs not compared, listed at the end of the Markdown.
    """
    metric = metric.removeprefix("val/")
    table = higher_is_better()
    better = {**table, metric: direction(metric, mode)}
    groups = group_runs(runs)
    present = list(dict.fromkeys(k for r in runs for k in r.metrics))
    ranked = [m for m in dict.fromkeys([metric, *table]) if m in present]
    unranked = [m for m in present if m not in ranked]
    rows = compare(groups, ranked, better, alpha)
    rank = {c.group: c.rank for c in rows if c.metric == metric and c.cls is None}
    groups.sort(key=lambda g: rank.get(g.label, len(groups) + 1))  # best first wherever groups are listed
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"comparison_md": out_dir / "comparison.md", "comparison_csv": out_dir / "comparison.csv"}
    paths["comparison_md"].write_text(to_markdown(groups, rows, metric, better, unranked, list(left_out)))
    write_csv(groups, rows, paths["comparison_csv"])
    png = out_dir / "comparison.png"
    if box_plots(groups, rows, better, png) is not None:
        paths["comparison_png"] = png
    elif png.exists():
        png.unlink()  # a picture of an earlier summary would no longer match the tables
    return paths


__all__ = ["ALPHA", "FOLD_KEY", "MIN_FOLD_PAIRS", "Comparison", "Group", "Run", "box_plots", "compare", "direction",
           "group_runs", "higher_is_better", "holm", "load_run", "to_markdown", "wilcoxon", "write_comparison",
           "write_csv"]
