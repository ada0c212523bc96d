"""Summarise a Hydra multirun: one row per job, its overrides and best validation metrics, sorted.

    python scripts/summarize_sweep.py logs/multiruns/2026-11-23_20-15-00
    python scripts/summarize_sweep.py MULTIRUN_DIR --metric val/iou --mode max --out reports/

For every job folder (a folder holding ``.hydra/overrides.yaml``) it reads the overrides and the
job's ``metrics.csv`` (Lightning's CSVLogger, anywhere below the job folder), takes the epoch at
which the monitored metric was best and reports every ``val/*`` metric of that epoch. Jobs that
left a ``failure.yaml`` (see ``segtrain/sweep.py``) are listed as failed with their error; jobs
with neither metrics nor a failure file as incomplete. Writes, into ``--out`` (default: the
multirun folder):

- ``summary.md``  -- Markdown table (overrides shared by all jobs listed once above it),
- ``summary.csv`` -- the same rows, one column per override key and metric,
- ``summary.png`` -- best monitored value per job (bars) and its validation curve per epoch.

The monitored metric and its direction default to the ones in the jobs' config (top-level
``monitor``/``monitor_mode``, else a checkpoint callback's ``monitor``/``mode``), else val/dice, max.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FAILURE_FILE = "failure.yaml"  # written by segtrain.sweep.record_failure


@dataclass
class Job:
    """One job of the multirun: where it is, what it overrode, how it ended."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: str = "ok"  # ok | failed | incomplete
    error: str = ""
    best: dict[str, float] = field(default_factory=dict)  # val metrics at the best epoch (+ "epoch")
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, monitored value)


def _job_sort_key(path: Path) -> tuple:
    # Hydra names job folders 0, 1, ... 10: sort numerically where the names are numbers.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def find_jobs(multirun_dir: Path) -> list[Path]:
    """Job folders below ``multirun_dir`` (those holding ``.hydra/overrides.yaml``), in job order."""
    found = [p.parent.parent for p in multirun_dir.rglob(".hydra/overrides.yaml")]
    return sorted(found, key=lambda p: _job_sort_key(p.relative_to(multirun_dir)))


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """``["loss=dice", "+x.y=2"]`` -> ``{"loss": "dice", "x.y": "2"}`` (``+``/``~`` prefixes dropped)."""
    out: dict[str, str] = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        out[key.lstrip("+~")] = value
    return out


def monitor_from_config(cfg: dict[str, Any]) -> tuple[str, str] | None:
    """``(metric, mode)`` the run monitored, from its saved config, or None when not found."""
    if isinstance(cfg.get("monitor"), str):  # conf/train.yaml: monitor, monitor_mode
        return cfg["monitor"], str(cfg.get("monitor_mode", cfg.get("mode", "max")))
    callbacks = cfg.get("callbacks") or {}
    for cb in callbacks.values() if isinstance(callbacks, dict) else []:
        if isinstance(cb, dict) and isinstance(cb.get("monitor"), str) and "checkpoint" in str(cb.get("_target_", "")).lower():
            return cb["monitor"], str(cb.get("mode", "min"))
    return None


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_metrics(job_dir: Path, metric: str, mode: str) -> tuple[dict[str, float], list[tuple[int, float]]] | None:
    """Best-epoch validation metrics and the monitored curve from the job's ``metrics.csv``.

    Returns None when there is no ``metrics.csv`` or it never logged ``metric``.
    """
    files = sorted(job_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    with open(files[-1], newline="") as f:
        rows = [r for r in csv.DictReader(f) if _float(r.get(metric, "")) is not None]
    if not rows:
        return None
    curve = [(int(float(r.get("epoch") or i)), _float(r[metric])) for i, r in enumerate(rows)]
    pick = max if mode == "max" else min
    best_row = pick(rows, key=lambda r: _float(r[metric]))
    best = {k: _float(v) for k, v in best_row.items() if k.startswith("val") and _float(v) is not None}
    if best_row.get("epoch"):
        best["epoch"] = int(float(best_row["epoch"]))
    return best, curve


def load_job(job_dir: Path, root: Path, metric: str, mode: str) -> Job:
    """Read one job folder (overrides, failure file, metrics)."""
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    job = Job(name=str(job_dir.relative_to(root)), path=job_dir, overrides=parse_overrides(overrides))
    failure = job_dir / FAILURE_FILE
    if failure.exists():
        info = yaml.safe_load(failure.read_text()) or {}
        job.status = "failed"
        job.error = f"{info.get('error_type', 'Error')}: {info.get('message', '')}".strip()
    metrics = read_metrics(job_dir, metric, mode)
    if metrics is not None:
        job.best, job.curve = metrics
    elif job.status == "ok":
        job.status = "incomplete"
        job.error = f"no {metric} in a metrics.csv"
    return job


def sort_jobs(jobs: list[Job], metric: str, mode: str) -> list[Job]:
    """Finished jobs best first by ``metric``; failed and incomplete jobs after them, in job order."""
    sign = -1.0 if mode == "max" else 1.0
    done = [j for j in jobs if j.status == "ok"]
    rest = [j for j in jobs if j.status != "ok"]
    return sorted(done, key=lambda j: sign * j.best[metric]) + rest


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, str) and any(c in value for c in ".eE"):
        try:  # a swept float override (Optuna samples 17 digits): 4 significant digits in the table
            return f"{float(value):.4g}"
        except ValueError:
            pass
    return "" if value is None else str(value)


def table(jobs: list[Job], metric: str, all_keys: bool) -> tuple[list[str], list[list[Any]], dict[str, str]]:
    """Header, rows and the overrides shared by every job (left out of the rows unless ``all_keys``)."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    shared = {k: jobs[0].overrides[k] for k in keys if all(j.overrides.get(k) == jobs[0].overrides.get(k) for j in jobs)}
    shown = keys if all_keys else [k for k in keys if k not in shared]
    metrics = list(dict.fromkeys([metric] + sorted(k for j in jobs for k in j.best if k not in ("epoch", metric))))
    header = ["job", "status", *shown, "best_epoch", *metrics, "error"]
    rows = [
        [j.name, j.status, *(j.overrides.get(k, "") for k in shown), j.best.get("epoch"),
         *(j.best.get(m) for m in metrics), j.error]
        for j in jobs
    ]
    return header, rows, shared


def to_markdown(header: list[str], rows: list[list[Any]], shared: dict[str, str], metric: str, mode: str) -> str:
    """The Markdown report: title line, shared overrides, the table."""
    lines = [f"Sweep summary: {len(rows)} jobs, sorted by {metric} ({mode}).", ""]
    if shared:
        lines += ["Shared overrides: " + " ".join(f"`{k}={v}`" for k, v in shared.items()), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(jobs: list[Job], metric: str, mode: str, path: Path, keys: list[str] | None = None) -> None:
    """Bars of each job's best ``metric`` (failed jobs marked) and each finished job's curve.

    ``keys``: the override keys that label a job (default: all; pass the ones that vary).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(13, 0.45 * len(jobs) + 2.5))
    from matplotlib.ticker import MaxNLocator

    labels = [f"{j.name}: " + " ".join(f"{k}={v}" for k, v in j.overrides.items() if keys is None or k in keys)[:60]
              for j in jobs]
    values = [j.best.get(metric, 0.0) if j.status == "ok" else 0.0 for j in jobs]
    colors = ["tab:blue" if j.status == "ok" else "tab:red" for j in jobs]
    y = list(range(len(jobs)))[::-1]  # best at the top
    ax_bar.barh(y, values, color=colors)
    for yi, j, v in zip(y, jobs, values):
        ax_bar.text(v, yi, f" {v:.4f}" if j.status == "ok" else f" {j.status}", va="center", fontsize=8)
    ax_bar.set_yticks(y, labels, fontsize=8)
    ax_bar.set_xlabel(f"best {metric} ({mode})")
    ax_bar.set_title("Jobs, best first (red: failed/incomplete)")
    for j in jobs:
        if j.curve:
            ax_curve.plot([e for e, _ in j.curve], [v for _, v in j.curve], marker="o", label=j.name)
    ax_curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel(metric)
    ax_curve.set_title("Validation curve per job")
    if any(j.curve for j in jobs):
        ax_curve.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(multirun_dir: Path, out_dir: Path | None = None, metric: str | None = None,
              mode: str | None = None) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv`` and ``summary.png``; return their paths.

    Args:
        multirun_dir: the multirun folder (Hydra's ``hydra.sweep.dir``).
        out_dir: where to write (default ``multirun_dir``).
        metric: monitored metric (default: from the jobs' config, else ``val/dice``).
        mode: ``max`` or ``min`` (default: from the jobs' config, else ``max``).
    """
    multirun_dir = Path(multirun_dir)
    if not multirun_dir.is_dir():
        raise FileNotFoundError(f"Multirun folder {multirun_dir} does not exist: pass the folder Hydra "
                                "printed for the sweep (hydra.sweep.dir).")
    job_dirs = find_jobs(multirun_dir)
    if not job_dirs:
        raise FileNotFoundError(f"No job folders (with .hydra/overrides.yaml) under {multirun_dir}: is "
                                "it a multirun folder, and did any job start?")
    if metric is None or mode is None:
        found = None
        for d in job_dirs:
            cfg_file = d / ".hydra" / "config.yaml"
            if cfg_file.exists():
                found = monitor_from_config(yaml.safe_load(cfg_file.read_text()) or {})
                if found:
                    break
        metric = metric or (found[0] if found else "val/dice")
        mode = mode or (found[1] if found else "max")
    if mode not in ("max", "min"):
        raise ValueError(f"--mode must be max or min, got {mode!r}")
    jobs = sort_jobs([load_job(d, multirun_dir, metric, mode) for d in job_dirs], metric, mode)
    out_dir = Path(out_dir) if out_dir is not None else multirun_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "summary.md", "csv": out_dir / "summary.csv", "png": out_dir / "summary.png"}
    header, rows, shared = table(jobs, metric, all_keys=False)
    paths["md"].write_text(to_markdown(header, rows, shared, metric, mode))
    plot(jobs, metric, mode, paths["png"], keys=[k for k in header if k not in shared])
    header, rows, _ = table(jobs, metric, all_keys=True)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[("" if c is None else c) for c in row] for row in rows])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="the multirun folder (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the multirun folder)")
    parser.add_argument("--metric", default=None, help="monitored metric (default: from the jobs' config)")
    parser.add_argument("--mode", choices=("max", "min"), default=None, help="its direction")
    args = parser.parse_args(argv)
    try:
        paths = summarize(args.multirun_dir, args.out, args.metric, args.mode)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
