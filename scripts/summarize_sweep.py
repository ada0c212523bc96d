"""Summarise a sweep: an Optuna study (trials from its storage) or a plain Hydra multirun.

    python scripts/summarize_sweep.py logs/optuna/loss_search.db          # a study (SQLite file)
    python scripts/summarize_sweep.py journal:/shared/optuna/loss.log --out reports/
    python scripts/summarize_sweep.py postgresql://user@host/optuna --study loss_search
    python scripts/summarize_sweep.py logs/multiruns/2026-11-23_20-15-00   # a multirun folder
    python scripts/summarize_sweep.py MULTIRUN_DIR --metric val/iou --mode max --out reports/

**A study** (a storage URL, an SQLite/journal file, or the folder of a sweep run by
``hparams_search=optuna``, whose ``optimization_results.yaml`` names the study): one row per
trial with its state, value, parameters, duration, validations reported and run folder, best
first (complete, then pruned, then failed and unfinished trials; trials refused at start-up
listed apart, see below), written into ``--out``
(default: the sweep folder, or ``<study>_summary/`` next to a study file) as ``summary.md``,
``summary.csv`` and three plots: ``history.png`` (value per trial and best so far),
``importances.png`` (which parameters mattered) and ``parallel.png`` (parameters of every
trial, coloured by value). Trials that lost a race for the last slot of a parallel sweep (never
run) are left out.

**A plain multirun** (``python train.py -m ...`` without Optuna): for every job folder (a folder
holding ``.hydra/overrides.yaml``) it reads the overrides and the
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

**Refused at start-up**: a job (or trial) whose ``failure.yaml`` says ``stage: startup`` never
trained -- its config or data was refused (a bad key swept over all jobs, a missing folder). It
is not ranked among the failed jobs, so that a sweep over a bad key does not read as 20 diverged
runs: ``summary.md`` (also printed) lists it under the table as ``refused at start-up (config or
data error): <job>: <first line of the message>``; ``summary.csv`` keeps it as a last row with
status ``refused`` (``REFUSED`` for a trial) and that line's message as its error; the plots
leave it out.

**The comparison** (``report/``, for a multirun and for a study's run folders): the finished runs
grouped by configuration (their overrides minus ``data.fold``), mean +- standard deviation over
folds of every evaluation metric (per class too), the best configuration by ``--metric`` (default
``dice``; a name without ``val/`` such as ``hd95`` ranks the comparison alone, in its own
direction) and a paired Wilcoxon test of every other configuration against it, as
``comparison.md`` (also printed), ``comparison.csv`` and ``comparison.png``. Failed, refused and
(in a study) unfinished runs are left out of it. Read docs/sweeps.md, "Choosing a loss".
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Run from a checkout: segtrain and report import from the repository root beside this script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report.compare import finite_number  # noqa: E402 -- the one "finite float or None" reader of CSV cells

FAILURE_FILE = "failure.yaml"  # written by segtrain.sweep.record_failure
REFUSED = "refused at start-up (config or data error)"


def startup_failure(job_dir: Path | str) -> str | None:
    """The first line of the message in ``job_dir``'s ``failure.yaml`` if it says ``stage: startup``; else None."""
    failure = Path(job_dir) / FAILURE_FILE
    if not failure.is_file():
        return None
    info = yaml.safe_load(failure.read_text()) or {}
    if info.get("stage") != "startup":
        return None
    lines = str(info.get("message") or info.get("error_type") or "").strip().splitlines()
    return lines[0] if lines else ""


def refused_lines(refused: list[tuple[str, str]]) -> list[str]:
    """``refused at start-up (config or data error): <job>: <message>`` for each ``(job, message)``."""
    return [f"{REFUSED}: {name}: {message}" for name, message in refused]


@dataclass
class Job:
    """One job of the multirun: where it is, what it overrode, how it ended."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: str = "ok"  # ok | failed | incomplete | refused (failed at start-up)
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


def read_metrics(job_dir: Path, metric: str, mode: str) -> tuple[dict[str, float], list[tuple[int, float]]] | None:
    """Best-epoch validation metrics and the monitored curve from the job's ``metrics.csv``.

    Returns None when there is no ``metrics.csv`` or it never logged ``metric``.
    """
    files = sorted(job_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    with open(files[-1], newline="") as f:
        rows = [r for r in csv.DictReader(f) if finite_number(r.get(metric, "")) is not None]
    if not rows:
        return None
    curve = [(int(float(r.get("epoch") or i)), finite_number(r[metric])) for i, r in enumerate(rows)]
    pick = max if mode == "max" else min
    best_row = pick(rows, key=lambda r: finite_number(r[metric]))
    best = {k: finite_number(v) for k, v in best_row.items() if k.startswith("val") and finite_number(v) is not None}
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
        if (refused := startup_failure(job_dir)) is not None:
            job.status, job.error = "refused", refused
            return job
    metrics = read_metrics(job_dir, metric, mode)
    if metrics is not None:
        job.best, job.curve = metrics
    elif job.status == "ok":
        job.status = "incomplete"
        job.error = f"no {metric} in a metrics.csv"
    return job


def sort_jobs(jobs: list[Job], metric: str, mode: str) -> list[Job]:
    """Finished jobs best first by ``metric``; failed and incomplete jobs after them, in job order;
    jobs refused at start-up last."""
    sign = -1.0 if mode == "max" else 1.0
    done = [j for j in jobs if j.status == "ok"]
    rest = [j for j in jobs if j.status not in ("ok", "refused")]
    refused = [j for j in jobs if j.status == "refused"]
    return sorted(done, key=lambda j: sign * j.best[metric]) + rest + refused


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


def to_markdown(header: list[str], rows: list[list[Any]], shared: dict[str, str], metric: str, mode: str,
                refused: list[tuple[str, str]] = ()) -> str:
    """The Markdown report: title line, shared overrides, the table, the jobs refused at start-up."""
    title = f"Sweep summary: {len(rows)} jobs, sorted by {metric} ({mode})"
    lines = [title + (f"; {len(refused)} more refused at start-up, listed below." if refused else "."), ""]
    if shared:
        lines += ["Shared overrides: " + " ".join(f"`{k}={v}`" for k, v in shared.items()), ""]
    if rows:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    if refused:
        lines += ["", *(f"- {line}" for line in refused_lines(list(refused)))]
    return "\n".join(lines) + "\n"


def plot(jobs: list[Job], metric: str, mode: str, path: Path, keys: list[str] | None = None) -> list[str]:
    """Bars of each job's best ``metric`` (failed jobs marked) and each finished job's curve.

    ``keys``: the override keys that label a job (default: all; pass the ones that vary). Bars and
    curves carry the same label, the job's number and those overrides; returns the curves' legend.
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
    legend = []
    for j, label in zip(jobs, labels):
        if j.curve:
            ax_curve.plot([e for e, _ in j.curve], [v for _, v in j.curve], marker="o", label=label)
            legend.append(label)
    ax_curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel(metric)
    ax_curve.set_title("Validation curve per job")
    if any(j.curve for j in jobs):
        ax_curve.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return legend


def summarize(multirun_dir: Path, out_dir: Path | None = None, metric: str | None = None,
              mode: str | None = None) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv``, ``summary.png`` and the comparison; return their paths.

    Args:
        multirun_dir: the multirun folder (Hydra's ``hydra.sweep.dir``).
        out_dir: where to write (default ``multirun_dir``).
        metric: monitored metric (default: from the jobs' config, else ``val/dice``); a name
            without ``val/`` (``hd95``) ranks the comparison alone (:func:`split_metric`).
        mode: ``max`` or ``min`` (default: from the jobs' config, else ``max``).
    """
    metric, mode, report_metric, report_mode = split_metric(metric, mode)
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
    ranked = [j for j in jobs if j.status != "refused"]
    refused = [(j.name, j.error) for j in jobs if j.status == "refused"]
    out_dir = Path(out_dir) if out_dir is not None else multirun_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "summary.md", "csv": out_dir / "summary.csv", "png": out_dir / "summary.png"}
    header, rows, shared = table(ranked, metric, all_keys=False) if ranked else ([], [], {})
    paths["md"].write_text(to_markdown(header, rows, shared, metric, mode, refused))
    plot(ranked, metric, mode, paths["png"], keys=[k for k in header if k not in shared])
    header, rows, _ = table(jobs, metric, all_keys=True)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[("" if c is None else c) for c in row] for row in rows])
    paths.update(compare_jobs(jobs, out_dir, report_metric, report_mode))
    return paths


# ------------------------------------------------------------------- the comparison -----

def split_metric(metric: str | None, mode: str | None) -> tuple[str | None, str | None, str, str | None]:
    """``(summary metric, its mode, comparison metric, its mode)`` from ``--metric`` / ``--mode``.

    ``val/iou`` ranks both (the comparison by ``iou`` when its direction is known, else by
    ``dice``); a name without ``val/`` (``hd95``) is an evaluation metric: it ranks the comparison
    alone, ``--mode`` goes with it, and the summary table keeps the jobs' monitored metric.
    """
    import report

    if metric is not None and "/" not in metric:
        report.direction(metric, mode)  # a contradicting --mode or an unknown direction: the error now
        return None, None, metric, mode
    name = (metric or "").removeprefix("val/")
    return metric, mode, (name if name in report.higher_is_better() else "dice"), None


def compare_jobs(jobs: list[Job], out_dir: Path, metric: str = "dice", mode: str | None = None) -> dict[str, Path]:
    """comparison.md/.csv/.png of the finished jobs (report/); failed and refused jobs listed as left out."""
    import report

    runs, left_out = [], []
    for j in jobs:
        run = None
        if j.status in ("ok", "incomplete"):
            val = {k: v for k, v in j.best.items() if k.startswith("val/")}
            run = report.load_run(j.name, j.path, j.overrides, val)
        if run is not None:
            runs.append(run)
        else:
            why = j.error.strip().splitlines()[0][:100] if j.error.strip() else ""
            left_out.append((j.name, j.status + (f": {why}" if why and why != j.status else "")))
    return report.write_comparison(runs, out_dir, metric, mode, left_out)


# --------------------------------------------------------------------- Optuna studies -----

_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4, "REFUSED": 5}


def _open_study(storage: str, study: str | None) -> Any:
    """The study ``study`` in ``storage`` (read only use); the only one when ``study`` is None."""
    import optuna

    from segtrain.optuna_trial import describe_storage, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(storage, key="storage")
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if study is None:
        if len(names) != 1:
            raise ValueError(f"{describe_storage(storage)} holds {len(names)} studies "
                             f"({', '.join(names) or 'none'}): choose one with --study")
        study = names[0]
    if study not in names:
        raise ValueError(f"no study {study!r} in {describe_storage(storage)}; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study, storage=store)


def study_rows(study: Any) -> tuple[list[str], list[list[Any]], dict[str, int]]:
    """Header and rows (best first) of a study's trials, and the count of each state.

    A failed trial whose run folder's ``failure.yaml`` says ``stage: startup`` gets the state
    ``REFUSED`` (last), with the first line of that message as its error.
    """
    from segtrain.optuna_trial import ATTR_ERROR, ATTR_JOB_DIR, ATTR_RETRY_OF, ATTR_SURPLUS

    trials = [t for t in study.get_trials(deepcopy=False) if ATTR_SURPLUS not in t.user_attrs]
    retried = {t.user_attrs[ATTR_RETRY_OF]: t.number for t in trials if ATTR_RETRY_OF in t.user_attrs}
    refused = {t.number: message for t in trials if t.state.name == "FAIL" and t.user_attrs.get(ATTR_JOB_DIR)
               and (message := startup_failure(t.user_attrs[ATTR_JOB_DIR])) is not None}

    def state(t: Any) -> str:
        return "REFUSED" if t.number in refused else t.state.name

    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
    trials.sort(key=lambda t: (_STATE_ORDER.get(state(t), 9),
                               sign * t.value if t.value is not None else 0.0, t.number))
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    header = ["trial", "state", "value", *params, "duration_s", "validations", "run_folder", "error"]
    rows = []
    for t in trials:
        error = refused.get(t.number, t.user_attrs.get(ATTR_ERROR, ""))
        if t.state.name == "FAIL" and not error:
            error = f"interrupted (redone as trial {retried[t.number]})" if t.number in retried else "interrupted"
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append([t.number, state(t), t.value, *(t.params.get(p) for p in params), duration,
                     len(t.intermediate_values), t.user_attrs.get(ATTR_JOB_DIR, ""), error])
    counts: dict[str, int] = {}
    for t in trials:
        counts[state(t)] = counts.get(state(t), 0) + 1
    return header, rows, counts


def study_plots(study: Any, out_dir: Path) -> dict[str, Path | str]:
    """history.png, importances.png, parallel.png; a plot that cannot be drawn maps to the reason."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    def importances(s):
        return ovm.plot_param_importances(s, evaluator=optuna.importance.PedAnovaImportanceEvaluator())

    done: dict[str, Path | str] = {}
    for name, draw in (("history", ovm.plot_optimization_history), ("importances", importances),
                       ("parallel", ovm.plot_parallel_coordinate)):
        path = out_dir / f"{name}.png"
        try:
            with warnings.catch_warnings(), plt.rc_context({"figure.figsize": (10, 5.5), "font.size": 10}):
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = draw(study)
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.tight_layout()
                fig.savefig(path, dpi=110)
                plt.close(fig)
            done[name] = path
        except Exception as err:  # noqa: BLE001 -- e.g. too few complete trials for importances
            plt.close("all")
            done[name] = f"{type(err).__name__}: {err}"
    return done


def study_jobs(rows: list[list[Any]], header: list[str]) -> list[Job]:
    """The trials' run folders as jobs named ``trial <n>``; only complete trials are ``ok``.

    A pruned trial stopped early and a failed or unfinished one never ended its training: their
    scores would compare unlike with unlike, so they are marked and left out of the comparison.
    """
    col = {name: i for i, name in enumerate(header)}
    jobs = []
    for row in rows:
        number, state, folder = row[col["trial"]], row[col["state"]], row[col["run_folder"]]
        path = Path(folder) if folder else None
        if path is None or not (path / ".hydra" / "overrides.yaml").is_file():
            why = f"no run folder ({folder or 'not recorded'})"
            jobs.append(Job(f"trial {number}", path or Path(), {}, "missing", why))
            continue
        cfg_file = path / ".hydra" / "config.yaml"
        found = monitor_from_config(yaml.safe_load(cfg_file.read_text()) or {}) if cfg_file.is_file() else None
        job = load_job(path, path.parent, *(found or ("val/dice", "max")))
        job.name = f"trial {number}"
        if state != "COMPLETE":
            job.status, job.error = state.lower(), state.lower()
        jobs.append(job)
    return jobs


def summarize_study(storage: str, study_name: str | None = None, out_dir: Path | None = None,
                    sweep_dir: Path | None = None, metric: str | None = None,
                    mode: str | None = None) -> dict[str, Path]:
    """Write summary.md, summary.csv and the plots of a study; return their paths.

    Args:
        storage: an Optuna storage (``sqlite:///...``, ``postgresql://...``, ``journal:PATH``).
        study_name: the study (default: the only one in the storage).
        out_dir: where to write (default: ``sweep_dir``, else ``<study>_summary`` next to a
            study file, else in the current folder).
        sweep_dir: the sweep folder the study was named from, if any.
        metric, mode: the comparison's metric (default ``dice``) and, for a metric of unknown
            direction, its mode (see :func:`split_metric`).
    """
    from segtrain.optuna_trial import describe_storage, storage_path

    _, _, report_metric, report_mode = split_metric(metric, mode)
    study = _open_study(storage, study_name)
    if out_dir is None:
        file = storage_path(storage)
        out_dir = sweep_dir or (file.parent if file else Path.cwd()) / f"{study.study_name}_summary"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows, counts = study_rows(study)
    plots = study_plots(study, out_dir)
    direction = study.direction.name.lower()
    lines = [f"Study `{study.study_name}` ({describe_storage(storage)}), {direction}: {len(rows)} trials ("
             + ", ".join(f"{n} {state.lower()}" for state, n in counts.items()) + "), best first.", ""]
    complete = [r for r in rows if r[1] == "COMPLETE"]
    if complete:
        lines += [f"Best: trial {complete[0][0]}, value {complete[0][2]:.4f}.", ""]
    ranked = [r for r in rows if r[1] != "REFUSED"]
    if ranked:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in ranked:
        cells = [_fmt(f"{c:.4g}" if isinstance(c, float) and header[i] not in ("value",) else c)
                 for i, c in enumerate(row)]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    refused = [(f"trial {r[0]}", r[-1]) for r in rows if r[1] == "REFUSED"]
    if refused:
        lines += ["", *(f"- {line}" for line in refused_lines(refused))]
    lines.append("")
    for name, result in plots.items():
        lines.append(f"![{name}]({result.name})" if isinstance(result, Path) else f"{name}: not drawn ({result})")
    paths = {"md": out_dir / "summary.md", "csv": out_dir / "summary.csv"}
    paths["md"].write_text("\n".join(lines) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[("" if c is None else c) for c in row] for row in rows])
    paths.update({k: v for k, v in plots.items() if isinstance(v, Path)})
    paths.update(compare_jobs(study_jobs(rows, header), out_dir, report_metric, report_mode))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a study (storage URL, .db or journal file) or a sweep/multirun folder")
    parser.add_argument("--study", default=None, help="study name (default: the only study in the storage)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: see above)")
    parser.add_argument("--metric", default=None,
                        help="val/NAME: the multirun table's metric (default: from the jobs' config); NAME alone "
                             "(dice, hd95, ...): the comparison's metric (default dice)")
    parser.add_argument("--mode", choices=("max", "min"), default=None,
                        help="the direction of --metric (not needed for the evaluation metrics)")
    args = parser.parse_args(argv)
    try:
        storage = study_storage(args.source)
        if storage is not None:
            folder = Path(args.source) if Path(args.source).is_dir() else None
            paths = summarize_study(storage, args.study or study_name_in(args.source), args.out, folder,
                                    args.metric, args.mode)
        else:
            paths = summarize(Path(args.source), args.out, args.metric, args.mode)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    if "comparison_md" in paths:
        print(paths["comparison_md"].read_text())
    print("Wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


RESULTS_FILE = "optimization_results.yaml"  # written by the Optuna sweeper into the sweep folder


def study_storage(source: str) -> str | None:
    """The storage to read for ``source``; None when it is a plain multirun folder."""
    path = Path(source)
    if path.is_dir():
        results = path / RESULTS_FILE
        if results.exists():
            info = yaml.safe_load(results.read_text()) or {}
            if info.get("storage") and "***" not in str(info["storage"]):
                return str(info["storage"])
            if info.get("storage"):
                raise ValueError(f"{results} names a storage with a hidden password: pass its URL instead")
        return None
    if "://" in source or source.startswith("journal:"):
        return source
    if path.is_file():
        return f"sqlite:///{path.resolve()}" if path.suffix in (".db", ".sqlite", ".sqlite3") else f"journal:{path.resolve()}"
    raise FileNotFoundError(f"{source} does not exist: pass a multirun folder, a study file (.db, journal) "
                            "or a storage URL (sqlite:///..., postgresql://..., journal:PATH)")


def study_name_in(source: str) -> str | None:
    results = Path(source) / RESULTS_FILE
    if Path(source).is_dir() and results.exists():
        return (yaml.safe_load(results.read_text()) or {}).get("study_name")
    return None


if __name__ == "__main__":
    sys.exit(main())
