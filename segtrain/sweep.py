"""Sweep jobs that fail without taking the sweep down.

Hydra's basic sweeper re-raises the first failed job's exception after its batch, which ends the
multirun (later batches never start), and the Optuna sweeper counts an exception as a failed
trial and aborts the study when more than ``max_failure_rate`` of a batch failed (default 0).
A sweep of losses and weights *expects* some jobs to fail (a loss that diverges to NaN, a
batch size that runs out of memory), so inside a multirun :func:`run_sweep_job`:

- catches the job's exception (any ``Exception``; ``KeyboardInterrupt`` still stops everything),
  and treats a non-finite returned metric, or a NaN/inf loss in the job's ``metrics.csv`` (a
  diverged run that no guard stopped), the same way;
- logs it with the traceback and writes ``failure.yaml`` in the job's folder (error type,
  message, traceback, the job's overrides, the value returned, and ``stage``: ``startup`` when
  the job was refused before a training batch ended, a config or data error, else
  ``training``) -- ``scripts/summarize_sweep.py`` lists such jobs as failed, or as refused at
  start-up; an error raised in a DataLoader worker is reported with its own message
  (``segtrain.errors.unwrap_worker_error``), not torch's wrapper;
- frees cached GPU memory (after an out-of-memory error the next job would otherwise start with
  the failed job's cache);
- returns the worst value for the optimisation direction (``-inf`` when maximising, ``+inf`` when
  minimising) as a float, so Hydra's basic sweeper goes on;
- except in a trial of our Optuna sweeper (``hparams_search=optuna``), where it raises
  :class:`~segtrain.optuna_trial.SweepJobFailed` instead: the sweeper sees the failed job and
  tells the trial FAIL, with the error as its ``error`` attribute, rather than a fake worst
  value that would mislead the sampler.

A single run (no ``-m``) is not wrapped: its exception propagates, with the original message.

Debug knob: :class:`InjectNaN` poisons the network's weights at a chosen step, to check the
whole NaN path (``DivergenceGuard`` raises, the sweep records the failure) on a tiny run::

    python train.py -m +callbacks.inject_nan._target_=segtrain.sweep.InjectNaN \
        +callbacks.inject_nan.at_step=0,null     # job 0 diverges, job 1 trains
"""

from __future__ import annotations

import gc
import logging
import math
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from .errors import TRAINING, failure_stage, reset_training_started, unwrap_worker_error
from .optuna_trial import SweepJobFailed, TrialLink, record_job_dir

log = logging.getLogger(__name__)

#: Name of the file a failed sweep job leaves in its folder.
FAILURE_FILE = "failure.yaml"


def worst_value(mode: str) -> float:
    """The value a failed job reports: ``-inf`` for ``mode="max"``, ``+inf`` for ``mode="min"``.

    Args:
        mode: the monitored metric's direction, ``"max"`` or ``"min"`` (as in ``ModelCheckpoint``).
    """
    if mode == "max":
        return float("-inf")
    if mode == "min":
        return float("inf")
    raise ValueError(f"mode must be 'max' or 'min' (the monitored metric's direction), got {mode!r}")


def record_failure(
    output_dir: str | Path,
    error: BaseException | str,
    overrides: Sequence[str] = (),
    returned: float | None = None,
    error_type: str = "NonFiniteMetric",
    stage: str | None = None,
) -> Path:
    """Write ``failure.yaml`` into ``output_dir`` and return its path.

    Args:
        output_dir: the job's folder.
        error: the exception the job raised, or a message (e.g. for a NaN metric). An error
            re-raised from a DataLoader worker is recorded with its own message; the traceback
            keeps torch's whole text (the worker's traceback included).
        overrides: the job's overrides (``hydra.overrides.task``), to reproduce it.
        returned: the value reported to the sweeper instead.
        error_type: the type recorded when ``error`` is a message.
        stage: ``"startup"`` or ``"training"``; default :func:`segtrain.errors.failure_stage`.
    """
    if isinstance(error, BaseException):
        info = {
            "error_type": type(error).__name__,
            "message": str(unwrap_worker_error(error)),
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        }
    else:
        info = {"error_type": error_type, "message": str(error), "traceback": ""}
    record = {"status": "failed", "stage": stage or failure_stage(), **info, "overrides": list(overrides),
              "returned": returned}
    path = Path(output_dir) / FAILURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Plain floats: yaml writes -inf as -.inf, which yaml.safe_load reads back as float.
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    return path


def nonfinite_losses(output_dir: str | Path) -> str | None:
    """The first NaN/inf loss the job logged in ``<output_dir>/metrics.csv``, described; else None.

    A diverged run that nothing stopped (no ``DivergenceGuard`` among the callbacks) still ends
    "successfully", with a metric computed from NaN weights; its logged losses give it away.
    Looks at every column whose name contains ``loss`` (``train/loss``, ``val/loss_dice`` ...).
    """
    path = Path(output_dir) / "metrics.csv"
    if not path.exists():
        return None
    import csv

    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, text in row.items():
                if key and "loss" in key and text not in (None, ""):
                    try:
                        value = float(text)
                    except ValueError:
                        continue
                    if not math.isfinite(value):
                        return f"{key} was {value} at epoch {row.get('epoch', '?')} (training diverged)"
    return None


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_sweep_job(
    train_fn: Callable[[Any], float],
    cfg: Any,
    *,
    mode: str,
    output_dir: str | Path,
    multirun: bool,
    overrides: Sequence[str] = (),
    optuna_trial: bool = False,
) -> float:
    """Run ``train_fn(cfg)``; inside a multirun turn a failure into a recorded worst value.

    Args:
        train_fn: the training function, returning the monitored metric.
        cfg: its config.
        mode: direction of the monitored metric, ``"max"`` or ``"min"``.
        output_dir: the job's folder (where ``failure.yaml`` goes).
        multirun: True inside a Hydra multirun; False runs ``train_fn`` unwrapped.
        overrides: the job's overrides, recorded in ``failure.yaml``.
        optuna_trial: the job is a trial of our Optuna sweeper: a failure raises
            :class:`SweepJobFailed` (after ``failure.yaml`` is written) instead of returning.

    Returns:
        The metric, or :func:`worst_value` of ``mode`` for a failed job of a multirun.
    """
    worst = worst_value(mode)  # validate mode up front, also for single runs
    if not multirun:
        return train_fn(cfg)
    returned = None if optuna_trial else worst
    reported = "failing the trial" if optuna_trial else f"reporting {worst} to the sweeper"
    reset_training_started()  # this job's stage, not an earlier job's of the same process
    try:
        value = train_fn(cfg)
    except Exception as err:  # noqa: BLE001 -- a sweep must survive any failure of one job
        # A DataLoader worker's error by its own message; the logged traceback keeps torch's whole text.
        message = f"{type(err).__name__}: {unwrap_worker_error(err)}"
        log.error("Sweep job failed (%s); %s. Overrides: %s", message, reported, " ".join(overrides), exc_info=err)
        path = record_failure(output_dir, err, overrides, returned)
        log.error("Failure recorded in %s", path)
        del err  # drop the traceback's frames (and their tensors) before freeing memory
        _free_memory()
        if optuna_trial:
            raise SweepJobFailed(message)
        return worst
    message, kind = None, "NonFiniteMetric"
    if value is None or not math.isfinite(float(value)):
        message = f"the monitored metric is {value} (not a finite number)"
    elif (diverged := nonfinite_losses(output_dir)) is not None:
        message, kind = diverged, "NonFiniteLoss"
    if message is not None:
        log.error("Sweep job failed: %s; %s. Overrides: %s", message, reported, " ".join(overrides))
        # It returned a metric: it trained (whether or not TrainingStarted watched).
        record_failure(output_dir, message, overrides, returned, error_type=kind, stage=TRAINING)
        if optuna_trial:
            raise SweepJobFailed(f"{kind}: {message}")
        return worst
    return float(value)


def sweep_safe(train_fn: Callable[[Any], float], cfg: Any) -> float:
    """:func:`run_sweep_job` with everything read from the Hydra job: what ``train.py`` calls.

    ``mode`` is ``cfg.monitor_mode``, the folder ``cfg.paths.output_dir``, the overrides
    ``hydra.overrides.task``; multirun or not from Hydra's run mode; an Optuna trial when the
    sweeper set the trial's environment (``segtrain/optuna_trial.py``), whose folder is then
    recorded on the trial first.

    Args:
        train_fn: ``segtrain.run.train``.
        cfg: the composed config.
    """
    from hydra.core.hydra_config import HydraConfig

    from .distributed import is_multirun

    from .distributed import is_global_zero

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    multirun = is_multirun()
    optuna_trial = multirun and TrialLink.from_env() is not None
    if optuna_trial and is_global_zero():
        # First thing: even a job killed later leads from its trial to its folder.
        record_job_dir(cfg.paths.output_dir)
    return run_sweep_job(train_fn, cfg, mode=str(cfg.monitor_mode), output_dir=str(cfg.paths.output_dir),
                         multirun=multirun, overrides=overrides, optuna_trial=optuna_trial)


class InjectNaN(L.Callback):
    """Debug knob: set every weight of the network to NaN before training step ``at_step``.

    Only for testing the failure path of sweeps and the divergence guard; never in real runs.
    Sweepable: ``+callbacks.inject_nan.at_step=0,null`` gives one poisoned and one clean job.

    Args:
        at_step: the global step before which the weights are poisoned; ``None``: never.
    """

    def __init__(self, at_step: int | None = 0) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.at_step is not None and trainer.global_step == self.at_step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))
