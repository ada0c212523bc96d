"""The sweep loop: ask trials, launch their jobs, tell the outcome; resume and share a study.

Counting (the same in every worker): a trial is *finished* when COMPLETE, PRUNED, or FAIL with
an ``error`` attribute (the job failed: a result too). A FAIL without it was interrupted (its
worker died or was stopped) or surplus, and does not count. Every worker:

1. fails the stale trials of dead workers (RUNNING, no heartbeat for ``grace_period`` s) and
   queues their parameters again (``retry_of``); Optuna's own heartbeat exists for RDB storages
   only, so the heartbeat is a system attribute that every storage (journal files too) holds.
   Each trial also records its worker's host and process id (``WORKER_ATTR``): a worker on this
   host whose process is gone (SIGKILL, a crash) has its trials re-queued at once, without
   waiting out the grace period, which stays for workers on other hosts;
2. stops once ``n_trials`` trials are finished; waits while the rest run in other workers
   (queued trials are taken first by the next ask);
3. asks up to ``n_jobs`` trials and checks each against the budget by trial number (numbers are
   given out atomically by the storage): a trial with ``n_trials`` counted trials below it lost a
   race with another worker and is told FAIL (``surplus``) without running;
4. launches them (job overrides + the trial's environment, ``segtrain/optuna_trial.py``) with a
   heartbeat thread, and tells each: FAIL (job raised, with ``error``), PRUNED (the job's
   pruning callback set ``pruned_at_step``), else COMPLETE with the returned metric.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from segtrain.optuna_trial import (
    ATTR_ERROR, ATTR_JOB_DIR, ATTR_PRUNED, ATTR_RETRY_OF, ATTR_SURPLUS, SweepJobFailed, TrialLink,
    build_pruner, describe_storage, open_storage,
)

from segtrain.run_folder import pid_alive

from ._settings import Settings, read_settings

log = logging.getLogger(__name__)

#: System attribute: the time (``time.time()``) of the trial's latest heartbeat.
HEARTBEAT_ATTR = "segtrain:heartbeat"
#: System attribute: ``{"host": ..., "pid": ...}`` of the sweep process that runs the trial.
WORKER_ATTR = "segtrain:worker"


def is_finished(t: FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and ATTR_ERROR in t.user_attrs)


def is_active(t: FrozenTrial) -> bool:
    return t.state in (TrialState.RUNNING, TrialState.WAITING)


def _last_sign_of_life(t: FrozenTrial) -> float:
    beat = t.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    return t.datetime_start.timestamp() if t.datetime_start else time.time()


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def dead_local_worker(t: FrozenTrial) -> int | None:
    """The process id of ``t``'s worker when it ran on this host and is gone; else ``None``.

    Another host's processes cannot be seen from here: their trials wait out the grace period.
    """
    worker = t.system_attrs.get(WORKER_ATTR)
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return None
    pid = int(worker.get("pid", 0))
    return pid if pid > 0 and not pid_alive(pid) else None


def quote(value: str) -> str:
    """``value`` as a single-quoted string of Hydra's override grammar (round trip tested)."""
    out, backslashes = [], 0
    for ch in value:
        if ch == "\\":
            backslashes += 1
            continue
        if ch == "'":
            out.append("\\" * (2 * backslashes) + "\\'")
        elif ch == "{" and out and out[-1].endswith("$") and not backslashes:
            out[-1] = out[-1][:-1] + "\\${"  # no interpolation inside the value
        else:
            out.append("\\" * backslashes + ch)
        backslashes = 0
    out.append("\\" * (2 * backslashes))
    return "'" + "".join(out) + "'"


def env_overrides(s: Settings, number: int) -> list[str]:
    """Overrides that give a job the environment linking it to trial ``number``."""
    link = TrialLink(s.storage, s.study_name, number, s.pruner_conf)
    return [f"++hydra.job.env_set.{k}={quote(v)}" for k, v in link.env().items()]


class Heartbeat:
    """Writes ``HEARTBEAT_ATTR`` on the trials in flight every ``interval`` seconds."""

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="segtrain-optuna-heartbeat")
        self._thread.start()

    def beat(self, trial_id: int) -> None:
        try:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            with self._lock:
                self.trial_ids.discard(trial_id)
            log.error("Trial id %d was failed by another worker (its heartbeat came too late: raise "
                      "hydra.sweeper.grace_period); its result will be lost", trial_id)
        except Exception as err:  # noqa: BLE001 -- a storage hiccup must not end the sweep
            log.warning("Heartbeat of trial id %d not written: %s", trial_id, err)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                self.beat(trial_id)

    def add(self, trial_id: int) -> None:
        try:  # who runs it: a dead local worker's trial is re-queued without waiting (dead_local_worker)
            self.storage.set_trial_system_attr(trial_id, WORKER_ATTR, this_worker())
        except Exception as err:  # noqa: BLE001 -- without it the trial only waits for the grace period
            log.warning("Worker of trial id %d not recorded: %s", trial_id, err)
        self.beat(trial_id)
        with self._lock:
            self.trial_ids.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class SweepRun:
    """One worker's sweep on a shared study."""

    def __init__(self, sweeper: Any, s: Settings) -> None:
        self.sweeper, self.s = sweeper, s
        self.storage = open_storage(s.storage)
        self.study = self._study()
        self.heartbeat = Heartbeat(self.storage, s.heartbeat_interval)
        self.returns: list[JobReturn] = []

    def _study(self) -> optuna.Study:
        s = self.s
        # The jobs prune; here the pruner only groups trials for the sampler (Hyperband's brackets).
        pruner = build_pruner(s.pruner_conf)
        study = optuna.create_study(study_name=s.study_name, storage=self.storage, sampler=s.make_sampler(),
                                    pruner=pruner, direction=s.direction, load_if_exists=True)
        if study.direction.name.lower() != s.direction:
            raise ValueError(f"hydra.sweeper.study_name: study {s.study_name!r} in {describe_storage(s.storage)} "
                             f"was created to {study.direction.name.lower()}, this sweep would {s.direction}: "
                             "use another study_name (or storage)")
        return study

    # ------------------------------------------------------------------ census -----
    def fail_stale(self, trials: list[FrozenTrial]) -> None:
        now = time.time()
        for t in trials:
            if t.state != TrialState.RUNNING or t._trial_id in self.heartbeat.trial_ids:
                continue
            if (pid := dead_local_worker(t)) is not None:
                self._interrupt(t.number, f"its worker, process {pid} on this host, is gone")
            elif now - _last_sign_of_life(t) > self.s.grace_period:
                self._interrupt(t.number, f"no heartbeat for {now - _last_sign_of_life(t):.0f} s")

    def _interrupt(self, number: int, why: str) -> None:
        """FAIL a trial that did not end (no ``error``: not counted) and queue its parameters again."""
        try:
            frozen = self.study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return  # finished meanwhile (by its worker or another one): nothing to redo
        self.study.enqueue_trial(frozen.params, user_attrs={ATTR_RETRY_OF: number})
        log.warning("Trial %d interrupted (%s): marked FAIL, its parameters queued again", number, why)

    def census(self) -> tuple[int, int]:
        """(finished, running) trials, after failing the stale ones. Queued (WAITING) trials are
        not "running": the next ``ask`` takes them first."""
        self.fail_stale(self.study.get_trials(deepcopy=False))
        trials = self.study.get_trials(deepcopy=False)
        return sum(map(is_finished, trials)), sum(t.state == TrialState.RUNNING for t in trials)

    def in_budget(self, trial: optuna.Trial) -> bool:
        below = [t for t in self.study.get_trials(deepcopy=False) if t.number < trial.number]
        return sum(is_finished(t) or is_active(t) for t in below) < self.s.n_trials

    # ------------------------------------------------------------------- loop -----
    def run(self) -> list[JobReturn]:
        s = self.s
        finished, running = self.census()
        log.info("Study %r in %s: %d of %d trials finished, %d running elsewhere",
                 s.study_name, describe_storage(s.storage), finished, s.n_trials, running)
        waiting_logged = False
        try:
            while True:
                finished, running = self.census()
                if finished >= s.n_trials:
                    break
                room = s.n_trials - finished - running
                if room <= 0:
                    if not waiting_logged:
                        log.info("Waiting for %d trial(s) running in other workers", running)
                        waiting_logged = True
                    time.sleep(min(s.heartbeat_interval, 5.0))
                    continue
                waiting_logged = False
                trials = self._ask(min(s.n_jobs, room))
                if trials:
                    self._launch(trials)
        finally:
            self.heartbeat.stop()
        self._write_results()
        return self.returns

    def _ask(self, n: int) -> list[optuna.Trial]:
        trials = []
        for _ in range(n):
            trial = self.study.ask(fixed_distributions=self.s.space.distributions)
            self.heartbeat.add(trial._trial_id)
            if not self.in_budget(trial):
                trial.set_user_attr(ATTR_SURPLUS, "another worker took the last trial first; not run")
                self.heartbeat.remove(trial._trial_id)
                self.study.tell(trial, state=TrialState.FAIL)
                break
            trials.append(trial)
        return trials

    def _job_overrides(self, trial: optuna.Trial) -> list[str]:
        return [*self.s.space.overrides(trial.params), *env_overrides(self.s, trial.number)]

    def _launch(self, trials: list[optuna.Trial]) -> None:
        batch = [self._job_overrides(t) for t in trials]
        try:
            returns = self.sweeper.launcher.launch(batch, initial_job_idx=trials[0].number)
        except BaseException:
            for t in trials:  # Ctrl-C, a launcher error: redo these trials on resume, without waiting
                self.heartbeat.remove(t._trial_id)
                self._interrupt(t.number, "the sweep stopped during the job")
            raise
        for trial, ret in zip(trials, returns):
            self.heartbeat.remove(trial._trial_id)
            self._tell(trial, ret)
        self.returns.extend(returns)

    def _tell(self, trial: optuna.Trial, ret: JobReturn) -> None:
        frozen = self.storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            log.error("Trial %d was already finished (%s) by another worker; result dropped",
                      trial.number, frozen.state.name)
            return
        if ATTR_JOB_DIR not in frozen.user_attrs and ret.hydra_cfg is not None:
            trial.set_user_attr(ATTR_JOB_DIR, str(Path(ret.hydra_cfg.hydra.runtime.output_dir).resolve()))
        state, value, error = self._outcome(ret, frozen)
        if error is not None:
            trial.set_user_attr(ATTR_ERROR, error)
        try:
            self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        except RuntimeError as err:
            if "Study.stop" not in str(err):  # GridSampler stops the study once the grid is done
                raise
        if state == TrialState.PRUNED:
            steps = frozen.intermediate_values
            shown = f"at validation {max(steps)} ({steps[max(steps)]:.4f})" if steps else ""
        else:
            shown = f"{value:.4f}" if value is not None else (error or "")
        log.info("Trial %d %s %s", trial.number, state.name, shown)

    @staticmethod
    def _outcome(ret: JobReturn, frozen: FrozenTrial) -> tuple[TrialState, float | None, str | None]:
        if ret.status != JobStatus.COMPLETED:
            err = ret._return_value
            if isinstance(err, optuna.TrialPruned):
                return TrialState.PRUNED, None, None
            text = str(err) if isinstance(err, SweepJobFailed) else f"{type(err).__name__}: {err}"
            return TrialState.FAIL, None, text
        if ATTR_PRUNED in frozen.user_attrs:
            return TrialState.PRUNED, None, None
        try:
            value = float(ret.return_value)
        except (TypeError, ValueError):
            return TrialState.FAIL, None, f"the job returned {ret.return_value!r}, not a number"
        if not math.isfinite(value):
            return TrialState.FAIL, None, f"the job returned {value}"
        return TrialState.COMPLETE, value, None

    def _write_results(self) -> None:
        s = self.s
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        results: dict[str, Any] = {"name": "optuna", "study_name": s.study_name,
                                   "storage": describe_storage(s.storage), "direction": s.direction,
                                   "n_finished": sum(map(is_finished, self.study.get_trials(deepcopy=False)))}
        if done:
            best = self.study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("Best trial %d: %s=%.4f %s", best.number, "value", best.value, best.params)
        sweep_dir = Path(str(self.sweeper.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def run_sweep(sweeper: Any, arguments: list[str]) -> list[JobReturn]:
    """``OptunaSweeper.sweep``: check the settings, compose one trial's config, run the loop."""
    settings = read_settings(sweeper.settings, sweeper.config, arguments)
    try:
        sweeper.validate_batch_is_legal([settings.space.example() + env_overrides(settings, 0)])
    except Exception as err:  # noqa: BLE001 -- Hydra's composition errors name the override
        raise ValueError(f"hydra.sweeper.params: the trials' overrides do not compose: {err}") from None
    return SweepRun(sweeper, settings).run()
