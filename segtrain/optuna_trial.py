"""The job's side of an Optuna trial: the storage, the link from a job to its trial, pruning.

The sweeper (``hydra_plugins/segtrain_optuna_sweeper``) and the jobs it launches may run in
different processes or on different machines (submitit/SLURM, DDP ranks), so a job reaches its
trial through the *storage*, never through Python objects. The sweeper hands every job one
environment variable through ``hydra.job.env_set`` (Hydra sets it for the job's duration; DDP
ranks started by Lightning inherit it): ``SEGTRAIN_OPTUNA_TRIAL``, a JSON object with the
storage (see :func:`open_storage`), the study name, the trial number and the pruner's config
(null: no pruning).

With them the job records its folder on the trial (user attribute ``job_dir``) and, when a
pruner is configured, :class:`OptunaPruning` reports the monitored metric after every
validation and stops training when the pruner says so (user attribute ``pruned_at_step``, which
the sweeper reads to tell the trial PRUNED). A job that fails raises :class:`SweepJobFailed`
(``segtrain/sweep.py``) and the sweeper tells the trial FAIL with the error as user attribute
``error``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

#: The environment variable that links a job to its trial (JSON, see :class:`TrialLink`).
ENV_TRIAL = "SEGTRAIN_OPTUNA_TRIAL"

#: User attributes written on a trial (read by the sweeper and scripts/summarize_sweep.py).
ATTR_JOB_DIR = "job_dir"
ATTR_ERROR = "error"
ATTR_PRUNED = "pruned_at_step"
ATTR_RETRY_OF = "retry_of"
ATTR_SURPLUS = "surplus"

#: Prefix of a journal-file storage: ``journal:PATH`` (Optuna's JournalFileBackend).
JOURNAL_PREFIX = "journal:"


class SweepJobFailed(RuntimeError):
    """A job of an Optuna sweep failed; the message is ``"<ErrorType>: <message>"``.

    Raised by ``segtrain.sweep.sweep_safe`` after ``failure.yaml`` was written, so that the
    sweeper sees a failed job (Hydra's ``JobReturn.status``) and tells the trial FAIL. It holds
    no traceback of the training frames (their tensors are freed before it is raised).
    """


def describe_storage(spec: str) -> str:
    """``spec`` with any password masked, for logs and error messages."""
    if "://" in spec and "@" in spec:
        try:
            from sqlalchemy.engine import make_url

            return make_url(spec).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 -- a URL sqlalchemy cannot parse: mask by hand
            head, _, tail = spec.rpartition("@")
            scheme, _, _ = head.partition("://")
            return f"{scheme}://***@{tail}"
    return spec


def storage_path(spec: str) -> Path | None:
    """The local file of an SQLite (``sqlite:///PATH``) or journal (``journal:PATH``) storage."""
    if spec.startswith(JOURNAL_PREFIX):
        return Path(spec[len(JOURNAL_PREFIX):])
    if spec.startswith("sqlite:///") and spec != "sqlite:///:memory:":
        return Path(spec[len("sqlite:///"):])
    return None


def normalize_storage(spec: str) -> str:
    """The same storage with an absolute file path (jobs may start in another folder)."""
    path = storage_path(spec)
    if path is None:
        return spec
    prefix = JOURNAL_PREFIX if spec.startswith(JOURNAL_PREFIX) else "sqlite:///"
    return prefix + str(path.expanduser().resolve())


_STORAGES: dict[str, Any] = {}


def _rdb_storage(url: str, attempts: int = 5) -> Any:
    import time

    import optuna

    # SQLite: wait for a busy database instead of failing (several workers write to one file).
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as err:  # noqa: BLE001
            # Workers started together race to create the tables and the schema version row: the
            # loser sees them "already exist" or a unique constraint fail; the next try finds them.
            races = ("already exists", "locked", "UNIQUE constraint", "duplicate key")
            if attempt + 1 == attempts or not any(s in str(err) for s in races):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(spec: str, key: str = "hydra.sweeper.storage") -> Any:
    """Open (once per process) the Optuna storage ``spec``.

    Args:
        spec: ``sqlite:///PATH``, any SQLAlchemy URL Optuna's RDBStorage takes
            (``postgresql://user@host/db``, ``mysql+pymysql://...``) or ``journal:PATH``
            (a journal file, for clusters with a shared file system).
        key: the config key named in the error message.

    Raises:
        ValueError: the storage cannot be opened (naming ``key``, the storage and the cause).
    """
    if spec in _STORAGES:
        return _STORAGES[spec]
    import optuna

    path = storage_path(spec)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if spec.startswith(JOURNAL_PREFIX):
            from optuna.storages.journal import JournalFileBackend

            storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        else:
            storage = _rdb_storage(spec)
    except Exception as err:  # noqa: BLE001 -- every cause (driver, host, path, scheme) gets the same advice
        raise ValueError(
            f"{key}: cannot open the Optuna storage {describe_storage(spec)!r}: "
            f"{type(err).__name__}: {err}. Use sqlite:///PATH (one machine), journal:PATH (a "
            "shared file system) or a database URL such as postgresql://user@host/db (the "
            "server must be running and its driver, e.g. psycopg2, installed)."
        ) from None
    _STORAGES[spec] = storage
    return storage


@dataclass(frozen=True)
class TrialLink:
    """Where the current job's trial lives: storage, study name, trial number, pruner config."""

    storage: str
    study: str
    number: int
    pruner: Mapping[str, Any] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrialLink | None:
        """The link the sweeper set for this job, or None outside an Optuna sweep."""
        text = (os.environ if environ is None else environ).get(ENV_TRIAL)
        if not text:
            return None
        try:
            d = json.loads(text)
            return cls(str(d["storage"]), str(d["study"]), int(d["number"]), d.get("pruner"))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{ENV_TRIAL} must be the JSON the sweeper writes "
                             f"({{storage, study, number, pruner}}), got {text!r}: {err}") from None

    def env(self) -> dict[str, str]:
        """The environment that carries this link."""
        d = {"storage": self.storage, "study": self.study, "number": self.number, "pruner": self.pruner}
        return {ENV_TRIAL: json.dumps(d)}

    def set_user_attr(self, key: str, value: Any) -> None:
        """Write a user attribute on the trial (straight to the storage: no Study is built)."""
        storage = open_storage(self.storage, ENV_TRIAL)
        study_id = storage.get_study_id_from_name(self.study)
        storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, self.number), key, value)

    def trial(self) -> Any:
        """The trial as an ``optuna.Trial`` (report, should_prune, set_user_attr)."""
        import optuna

        storage = open_storage(self.storage, ENV_TRIAL)
        pruner = build_pruner(self.pruner) if self.pruner else optuna.pruners.NopPruner()
        # RandomSampler: the job samples nothing, and TPE would model the history at Trial().
        study = optuna.load_study(study_name=self.study, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.RandomSampler())
        study_id = storage.get_study_id_from_name(self.study)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        return optuna.trial.Trial(study, trial_id)


def build_pruner(conf: Mapping[str, Any] | None, key: str = "hydra.sweeper.pruner") -> Any:
    """An ``optuna.pruners`` object from ``{_target_: ..., **kwargs}``; NopPruner for None."""
    import optuna
    from hydra.utils import instantiate

    if conf is None:
        return optuna.pruners.NopPruner()
    if not isinstance(conf, Mapping) or "_target_" not in conf:
        raise ValueError(f"{key} must be null or a mapping with a _target_ (an optuna.pruners class), got {conf!r}")
    try:
        pruner = instantiate(dict(conf))
    except Exception as err:  # noqa: BLE001 -- Hydra wraps import and argument errors alike
        raise ValueError(f"{key}: cannot build {conf['_target_']!r}: {err}. Use a class of optuna.pruners, "
                         "e.g. optuna.pruners.MedianPruner (or hydra/sweeper/pruner=median).") from None
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ValueError(f"{key}: {conf['_target_']!r} is not an Optuna pruner (optuna.pruners.BasePruner)")
    return pruner


def record_job_dir(output_dir: str | os.PathLike) -> None:
    """Write the job's folder on its trial (user attribute ``job_dir``); no-op outside a sweep."""
    link = TrialLink.from_env()
    if link is None:
        return
    link.set_user_attr(ATTR_JOB_DIR, str(Path(output_dir).resolve()))


class OptunaPruning(L.Callback):
    """Report ``monitor`` to the trial after every validation; stop training when pruned.

    Rank 0 reports and asks the pruner; the decision is broadcast so that every DDP rank sets
    ``trainer.should_stop`` at the same validation. The step is the number of the validation
    (the epoch when validating once per epoch), the same for every trial of the sweep.

    Args:
        monitor: the logged metric the study optimises (``cfg.monitor``).
        link: the trial (default: from the environment); only rank 0 opens the storage.
    """

    def __init__(self, monitor: str, link: TrialLink | None = None) -> None:
        self.monitor = monitor
        self.link = link
        self._trial: Any = None
        self._step = 0
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        step, self._step = self._step, self._step + 1
        prune = False
        if trainer.is_global_zero:
            prune = self._report(step, trainer.callback_metrics.get(self.monitor))
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_at = step
            trainer.should_stop = True

    def _report(self, step: int, value: Any) -> bool:
        import optuna

        if value is None:
            log.warning("Pruning: %s was not logged at validation %d; nothing reported", self.monitor, step)
            return False
        value = float(value)
        if not math.isfinite(value):
            return False  # a diverging run: DivergenceGuard / the sweep's failure path handle it
        if self._trial is None:
            self._trial = (self.link or TrialLink.from_env()).trial()
        try:
            self._trial.report(value, step)
            if not self._trial.should_prune():
                return False
            self._trial.set_user_attr(ATTR_PRUNED, step)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker failed this trial (its sweeper's heartbeat stopped) and queued it again.
            log.warning("Trial %d was finished by another process; this run no longer reports to it",
                        self._trial.number)
            return False
        log.info("Trial %d pruned at validation %d (%s=%.4f)", self._trial.number, step, self.monitor, value)
        return True


def trial_callbacks(cfg: Any) -> list[L.Callback]:
    """Callbacks a job of an Optuna sweep adds to its Trainer: :class:`OptunaPruning` when the
    sweep has a pruner, else none (also outside a sweep)."""
    link = TrialLink.from_env()
    if link is None or not link.pruner:
        return []
    monitor = cfg.get("monitor") if hasattr(cfg, "get") else None
    if not monitor:
        raise ValueError("hydra.sweeper.pruner is set but the config has no `monitor` (the metric to report)")
    return [OptunaPruning(str(monitor), link)]
