"""Runs read from their folders, grouped by configuration, and each group tested against the best.

Why this shape: a sweep over losses with ``data.folds=K data.fold=0,..,K-1`` trains every
configuration K times on different splits. A configuration is its overrides minus ``data.fold``
(a seed stays a key: another seed is another configuration, not a repeat); its spread over folds
is what separates a real difference from noise. Each group is compared with the best group of a
metric by a paired Wilcoxon signed-rank test (scipy): over folds (pairs matched by fold index)
when there are at least :data:`MIN_FOLD_PAIRS`, else over images (pairs matched by image and
class, averaged over classes per image) -- with 5 folds the smallest two-sided exact p-value is
2/2^5 = 0.0625, so folds alone can never reach 0.05. The p-values of one metric are
Holm-corrected over its comparisons with the best.

Inputs per run folder (written by the end-of-fit evaluation): ``evaluation/summary.json``
(``metrics``, ``per_class``) and ``evaluation/per_image.csv``; a run without them falls back to
the best-epoch ``val/*`` metrics the caller read from ``metrics.csv`` (no per-image data).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: The override that repeats a configuration on another split; every other key tells groups apart.
FOLD_KEY = "data.fold"
#: Below this many matched folds the test pairs images instead (5 folds: p >= 0.0625).
MIN_FOLD_PAIRS = 6
ALPHA = 0.05
#: per_image.csv columns that are not metrics.
_ID_COLUMNS = {"image", "class", "class_name", "gt_pixels", "pred_pixels"}


def higher_is_better() -> dict[str, bool]:
    """``{metric: True when higher is better}``: the evaluation package's table (evaluation/names.py, no torch)."""
    from evaluation.names import HIGHER_IS_BETTER

    return dict(HIGHER_IS_BETTER)


def direction(metric: str, mode: str | None = None) -> bool:
    """True when ``metric`` is better higher; ``mode`` (max/min) is needed only for a metric not in the table."""
    table = higher_is_better()
    if mode not in (None, "max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    if metric in table:
        if mode is not None and (mode == "max") != table[metric]:
            raise ValueError(f"{metric} is better {'higher' if table[metric] else 'lower'}, but the mode given is "
                             f"{mode}: leave --mode out (the direction of {metric} is known)")
        return table[metric]
    if mode is None:
        raise ValueError(f"the direction of metric {metric!r} is unknown (known: {', '.join(table)}): "
                         "pass --mode max or --mode min")
    return mode == "max"


@dataclass
class Run:
    """One finished run: its configuration, fold and scores (``source`` says where they came from)."""

    name: str
    path: Path
    overrides: dict[str, str]
    fold: int | None
    source: str  # "evaluation" (evaluation/summary.json) | "metrics.csv" (best-epoch val/* fallback)
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # class name -> metric -> value
    #: metric -> (image, class) -> value, from evaluation/per_image.csv
    per_image: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (a CSV cell, a JSON value); else None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _finite_values(mapping: Any) -> dict[str, float]:
    """The finite numbers of a JSON object (a NaN or a missing value is no score)."""
    items = mapping.items() if isinstance(mapping, dict) else []
    return {str(k): f for k, v in items if (f := finite_number(v)) is not None}


def _fold(path: Path, overrides: dict[str, str]) -> int | None:
    """The run's fold: its ``data.fold`` override, else the resolved config's ``data.fold`` (null: no folds)."""
    value: Any = overrides.get(FOLD_KEY)
    if value is None:
        for cfg_file in (path / "config.yaml", path / ".hydra" / "config.yaml"):
            if cfg_file.is_file():
                data = (yaml.safe_load(cfg_file.read_text()) or {}).get("data") or {}
                value = data.get("fold") if isinstance(data, dict) else None
                break
    if value in (None, "null", "None", ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: data.fold is {value!r}, not a fold index; fix the run's overrides") from None


def _per_image(csv_file: Path) -> dict[str, dict[tuple[str, str], float]]:
    out: dict[str, dict[tuple[str, str], float]] = {}
    with open(csv_file, newline="") as f:
        for row in csv.DictReader(f):
            key = (row.get("image", ""), row.get("class", row.get("class_name", "")))
            for metric, text in row.items():
                if metric not in _ID_COLUMNS and metric is not None and (value := finite_number(text)) is not None:
                    out.setdefault(metric, {})[key] = value
    return out


def load_run(name: str, path: Path, overrides: dict[str, str], val_metrics: dict[str, float]) -> Run | None:
    """A run from ``path/evaluation/``, else from ``val_metrics`` (``val/`` stripped); None with neither.

    ``val_metrics``: the best-epoch ``val/*`` values the summary read from ``metrics.csv``
    (``val/dice_<class>`` of a known metric becomes that class's value).
    """
    path = Path(path)
    fold = _fold(path, overrides)
    summary = path / "evaluation" / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{summary} is not valid JSON ({err}): rerun the evaluation or delete the file") from None
        metrics = _finite_values(data.get("metrics"))
        per_class = {str(c): _finite_values(m) for c, m in (data.get("per_class") or {}).items()}
        per_image_csv = path / "evaluation" / "per_image.csv"
        per_image = _per_image(per_image_csv) if per_image_csv.is_file() else {}
        return Run(name, path, overrides, fold, "evaluation", metrics, per_class, per_image)
    known = higher_is_better()
    metrics, per_class = {}, {}
    for key, value in val_metrics.items():
        key = key.removeprefix("val/")
        if (value := finite_number(value)) is None:
            continue
        head, _, cls = key.partition("_")
        if cls and head in known:
            per_class.setdefault(cls, {})[head] = value  # val/dice_<class name or class<c>>
        else:
            metrics[key] = value
    if not metrics:
        return None
    return Run(name, path, overrides, fold, "metrics.csv", metrics, per_class)


@dataclass
class Group:
    """The runs of one configuration (same overrides but the fold)."""

    label: str
    overrides: dict[str, str]
    runs: list[Run]

    def values(self, metric: str, cls: str | None = None) -> list[float]:
        """The metric of each run (its class's value when ``cls`` is given), runs lacking it left out."""
        found = [(r.per_class.get(cls, {}) if cls is not None else r.metrics).get(metric) for r in self.runs]
        return [v for v in found if v is not None]

    def by_fold(self, metric: str) -> dict[int, float]:
        """``{fold: value}`` (runs of one fold averaged; runs without a fold left out)."""
        folds: dict[int, list[float]] = {}
        for r in self.runs:
            if r.fold is not None and metric in r.metrics:
                folds.setdefault(r.fold, []).append(r.metrics[metric])
        return {k: sum(v) / len(v) for k, v in sorted(folds.items())}

    def by_image_class(self, metric: str) -> dict[tuple[str, str], float]:
        """``{(image, class): value}`` over the group's runs (an image seen by several runs: their mean)."""
        seen: dict[tuple[str, str], list[float]] = {}
        for r in self.runs:
            for key, value in r.per_image.get(metric, {}).items():
                seen.setdefault(key, []).append(value)
        return {k: sum(v) / len(v) for k, v in seen.items()}


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by their overrides other than ``data.fold``, in order of first appearance.

    A group's label is made of the keys that vary between groups (the value alone when one key
    varies, ``key=value`` pairs otherwise; ``all runs`` for a single group).
    """
    groups: dict[tuple, Group] = {}
    for run in runs:
        config = {k: v for k, v in run.overrides.items() if k != FOLD_KEY}
        key = tuple(sorted(config.items()))
        groups.setdefault(key, Group("", config, [])).runs.append(run)
    found = list(groups.values())
    keys = list(dict.fromkeys(k for g in found for k in g.overrides))
    varying = [k for k in keys if len({g.overrides.get(k) for g in found}) > 1]
    for g in found:
        if len(varying) == 1:
            g.label = str(g.overrides.get(varying[0], "(unset)"))
        else:
            g.label = " ".join(f"{k}={g.overrides.get(k, '(unset)')}" for k in varying) or "all runs"
        g.runs.sort(key=lambda r: (r.fold is None, r.fold or 0, r.name))
    return found


def varying_keys(groups: list[Group]) -> tuple[list[str], dict[str, str]]:
    """The override keys that tell the groups apart, and the ones all groups share (with their values)."""
    keys = list(dict.fromkeys(k for g in groups for k in g.overrides))
    shared = {k: groups[0].overrides[k] for k in keys
              if all(g.overrides.get(k) == groups[0].overrides.get(k) for g in groups)}
    return [k for k in keys if k not in shared], shared


def wilcoxon(a: list[float], b: list[float]) -> tuple[float, str]:
    """Two-sided paired Wilcoxon signed-rank p-value (scipy's defaults) and a note.

    All differences zero: p = 1.0 (scipy cannot rank nothing). Zero differences or ties among the
    rest: scipy's p-value for tied data (a permutation test for a few pairs, the normal
    approximation for many: noted, as its exactness differs). A test scipy refuses: p = 1.0 with
    its reason.
    """
    try:
        from scipy import stats
    except ImportError:
        raise ImportError("the comparison's tests need scipy: pip install scipy") from None
    diffs = [x - y for x, y in zip(a, b)]
    if all(d == 0 for d in diffs):
        return 1.0, "all differences zero"
    nonzero = [abs(d) for d in diffs if d != 0]
    note = "zero or tied differences: scipy's tie-corrected p-value" if (
        len(nonzero) < len(diffs) or len(set(nonzero)) < len(nonzero)) else ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's warnings about ties and zeros are the note above
        try:
            p = float(stats.wilcoxon(a, b).pvalue)
        except ValueError as err:
            return 1.0, f"not testable ({err})"
    if not math.isfinite(p):
        return 1.0, "p undefined (too few non-zero differences)"
    return p, note


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (family: the comparisons of one metric)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Comparison:
    """One group on one metric (``cls`` None: over classes); the test fields empty where none was run."""

    group: str
    metric: str
    cls: str | None
    mean: float
    std: float | None  # sample standard deviation over the runs (None with one run)
    n_folds: int
    best: bool = False
    rank: int | None = None
    test: str = ""  # "folds" | "images" | "" (not tested)
    n_pairs: int | None = None
    p_value: float | None = None
    p_holm: float | None = None
    significant: bool | None = None
    note: str = ""


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_test(best: Group, other: Group, metric: str) -> tuple[str, int, float | None, str]:
    """``(test, pairs, p, note)`` of ``other`` against ``best``: folds when >= MIN_FOLD_PAIRS match, else images."""
    fb, fo = best.by_fold(metric), other.by_fold(metric)
    folds = [k for k in fb if k in fo]
    if len(folds) >= MIN_FOLD_PAIRS:
        return ("folds", len(folds), *wilcoxon([fb[k] for k in folds], [fo[k] for k in folds]))
    ib, io = best.by_image_class(metric), other.by_image_class(metric)
    per_image: dict[str, list[tuple[float, float]]] = {}
    for key in ib.keys() & io.keys():  # (image, class) both groups evaluated
        per_image.setdefault(key[0], []).append((ib[key], io[key]))
    if len(per_image) >= 2:
        images = sorted(per_image)
        a = [sum(x for x, _ in per_image[i]) / len(per_image[i]) for i in images]
        b = [sum(y for _, y in per_image[i]) / len(per_image[i]) for i in images]
        return ("images", len(images), *wilcoxon(a, b))
    if len(folds) >= 2:
        p, note = wilcoxon([fb[k] for k in folds], [fo[k] for k in folds])
        few = f"only {len(folds)} folds and no per-image data: p >= {2 / 2 ** len(folds):.3g}"
        return "folds", len(folds), p, few + (f"; {note}" if note else "")
    return "", 0, None, "no matched folds or images"


def compare(groups: list[Group], metrics: list[str], better: dict[str, bool], alpha: float = ALPHA) -> list[Comparison]:
    """Mean +- std per group and metric (and per class), ranked, each group tested against the metric's best.

    A pair of groups is tested only when both trained at least twice (a single training's
    image-level differences mix the loss with that run's luck).
    """
    out: list[Comparison] = []
    for metric in metrics:
        rows = []
        for g in groups:
            values = g.values(metric)
            if values:
                rows.append((g, Comparison(g.label, metric, None, *_mean_std(values), n_folds=len(values))))
        sign = -1.0 if better[metric] else 1.0
        rows.sort(key=lambda gc: sign * gc[1].mean)  # stable: ties keep group order
        for rank, (_, c) in enumerate(rows, 1):
            c.rank = rank
        if rows:
            best_group, best = rows[0]
            best.best = True
            tested = []
            for g, c in rows[1:]:
                if len(g.runs) < 2 or len(best_group.runs) < 2:
                    c.note = "not tested: " + ("trained once" if len(g.runs) < 2 else "the best trained once")
                    continue
                c.test, c.n_pairs, c.p_value, c.note = paired_test(best_group, g, metric)
                if c.p_value is not None:
                    tested.append(c)
            for c, adjusted in zip(tested, holm([c.p_value for c in tested])):
                c.p_holm, c.significant = adjusted, adjusted < alpha
        out += [c for _, c in rows]
        classes = list(dict.fromkeys(cls for g in groups for r in g.runs for cls in r.per_class))
        for cls in classes:
            for g in groups:
                if values := g.values(metric, cls):
                    out.append(Comparison(g.label, metric, cls, *_mean_std(values), n_folds=len(values)))
    return out
