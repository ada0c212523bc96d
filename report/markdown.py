"""comparison.md and comparison.csv: the ranking a person reads, and every number for a spreadsheet.

Why two files: the Markdown answers "which configuration, by how much, beyond noise?" in one
screen, with the statistics' caveats next to the numbers they qualify; the CSV keeps one row per
group, metric and class (class empty: over classes) for anyone who wants to recompute or plot.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .compare import ALPHA, MIN_FOLD_PAIRS, Comparison, Group, varying_keys

CSV_HEADER = ["group", "overrides", "metric", "class", "mean", "std", "n_folds", "rank", "best", "test",
              "n_pairs", "p_value", "p_holm", "significant", "note"]

CAVEATS = (
    "Each cell is the mean ± sample standard deviation over a configuration's runs (one per fold), "
    "so the spread is the one between trainings on different splits. "
    "Each group is compared with the best group of that metric by a paired, two-sided Wilcoxon "
    f"signed-rank test: over folds (pairs matched by fold index) when at least {MIN_FOLD_PAIRS} folds "
    "match, else over images (pairs matched by image and class, then averaged over classes per image), "
    "because with 5 folds the smallest p-value an exact Wilcoxon can give is 2/2^5 = 0.0625: folds alone "
    "can never show significance at 0.05. "
    "The image-level test treats images as independent and does not see the spread between trainings, "
    "which overstates confidence when images come from the same patients, scenes or videos: read its "
    "p-values as optimistic. "
    f"`*` marks a difference significant at alpha = {ALPHA} after Holm's correction over the comparisons "
    "against the best of that metric; no mark means the difference was not shown, not that the two are equal."
)


def decimals(rows: list[Comparison]) -> int:
    """4 decimals for scores within [0, 1] (Dice, NSD), 2 for distances and counts (HD95 in pixels)."""
    return 4 if all(abs(c.mean) <= 1 for c in rows) else 2


def _cell(c: Comparison, places: int = 4) -> str:
    """``mean ± std`` with one number of decimals for both (std left out with one run)."""
    return f"{c.mean:.{places}f}" + (f" ± {c.std:.{places}f}" if c.std is not None else "")


def _versus(c: Comparison) -> str:
    if c.best:
        return "**best**"
    if c.p_value is None:
        return c.note
    text = f"{c.test} (n={c.n_pairs}): p={c.p_value:.3g}, Holm {c.p_holm:.3g}" + (" \\*" if c.significant else "")
    return text + (f"; {c.note}" if c.note else "")


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(_escape(c) for c in row) + " |" for row in rows)]


def why_untested(groups: list[Group]) -> str | None:
    """Why no test can run at all (one group; every group trained once), or None."""
    if len(groups) < 2:
        return ("Only one configuration: there is nothing to compare it with, so no test was run. "
                "Sweep over the setting to choose (e.g. `loss=bce_dice,dice_focal`).")
    if all(len(g.runs) < 2 for g in groups):
        return ("Each configuration trained once, so no test was run: the difference between two single "
                "trainings mixes the setting with the luck of each run, and one run shows no spread. Train "
                "each on folds to test: `data.folds=5 data.fold=0,1,2,3,4`.")
    return None


def to_markdown(groups: list[Group], rows: list[Comparison], metric: str, better: dict[str, bool],
                unranked: list[str] = (), left_out: list[tuple[str, str]] = ()) -> str:
    """The report: headline, groups, one ranking per metric, the per-class table, the caveats."""
    runs = [r for g in groups for r in g.runs]
    direction = "higher" if better.get(metric, True) else "lower"
    lines = [f"# Comparison: {len(runs)} runs in {len(groups)} configurations, by {metric} ({direction} is better)", ""]
    if not runs:
        lines += ["No finished run to compare (every job failed, was refused or never validated)."]
        lines += ["", *(f"- left out: {name} ({why})" for name, why in left_out)]
        return "\n".join(lines) + "\n"
    keys, shared = varying_keys(groups)
    if keys:
        lines.append("Configurations differ in " + ", ".join(f"`{k}`" for k in keys)
                     + "; runs of a configuration differ only in `data.fold`.")
    if shared:
        lines.append("Shared overrides: " + " ".join(f"`{k}={v}`" for k, v in shared.items()))
    best = next((c for c in rows if c.metric == metric and c.cls is None and c.best), None)
    if best is not None:
        places = decimals([c for c in rows if c.metric == metric and c.cls is None])
        lines += ["", f"**Best by {metric}: {best.group}**, {_cell(best, places)} over {best.n_folds} "
                  f"run{'s' if best.n_folds > 1 else ''}."]
    else:
        lines += ["", f"No run reports {metric}: no best configuration by it (see the other metrics below)."]
    if (reason := why_untested(groups)) is not None:
        lines += ["", reason]
    lines += ["", "## Configurations", ""]
    for g in groups:
        listed = ", ".join(r.name + (f" (fold {r.fold})" if r.fold is not None else "") for r in g.runs)
        lines.append(f"- {g.label}: {listed}")
    metrics = list(dict.fromkeys(c.metric for c in rows))
    for m in metrics:
        ranked = [c for c in rows if c.metric == m and c.cls is None]
        lines += ["", f"## {m} ({'higher' if better[m] else 'lower'} is better)", ""]
        places = decimals(ranked)
        lines += _table(["rank", "configuration", "mean ± std", "runs", "against the best"],
                        [[str(c.rank), c.group, _cell(c, places), str(c.n_folds), _versus(c)] for c in ranked])
    per_class = [c for c in rows if c.metric == metric and c.cls is not None]
    if per_class:
        classes = list(dict.fromkeys(c.cls for c in per_class))
        order = [c.group for c in rows if c.metric == metric and c.cls is None]
        places = decimals(per_class)
        cells = {(c.group, c.cls): _cell(c, places) for c in per_class}
        lines += ["", f"## {metric} per class (mean ± std over runs; every metric per class in comparison.csv)", ""]
        lines += _table(["configuration", *classes], [[g, *(cells.get((g, k), "") for k in classes)] for g in order])
    lines += ["", "## How to read this", "", CAVEATS]
    fallback = [r.name for r in runs if r.source != "evaluation"]
    if fallback:
        lines += ["", f"Read from metrics.csv (no `evaluation/`: an older run or a failed end-of-fit evaluation): "
                  f"{', '.join(fallback)}. Their values are the best epoch's `val/*` metrics, pooled over the "
                  "validation pixels rather than averaged per image, with no per-image data for the image-level test."]
    if unranked:
        lines += ["", "Not ranked (direction unknown, or a loss value, which differs in scale between losses): "
                  + ", ".join(unranked) + "."]
    if left_out:
        lines += ["", *(f"- left out: {name} ({why})" for name, why in left_out)]
    return "\n".join(lines) + "\n"


def write_csv(groups: list[Group], rows: list[Comparison], path: Path) -> None:
    """comparison.csv: one row per configuration, metric and class (class empty: over classes)."""
    overrides = {g.label: " ".join(f"{k}={v}" for k, v in g.overrides.items()) for g in groups}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for c in rows:
            writer.writerow([c.group, overrides.get(c.group, ""), c.metric, c.cls or "", c.mean,
                             "" if c.std is None else c.std, c.n_folds, "" if c.rank is None else c.rank,
                             c.best if c.cls is None else "", c.test, "" if c.n_pairs is None else c.n_pairs,
                             "" if c.p_value is None else c.p_value, "" if c.p_holm is None else c.p_holm,
                             "" if c.significant is None else c.significant, c.note])

