"""Optuna sweeps end to end (``train.py -m`` subprocesses, tiny trials): resume after SIGKILL,
two workers on one study, pruning, failing trials, a bad setting on the command line."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy.exc
import pytest
import yaml
from optuna.trial import TrialState
from reliability_helpers import TINY
from test_sweep import ROOT, run_train
from test_summarize_sweep import summarize_sweep

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _popen(args, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def _trials(storage, study="loss_search"):
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage[len("journal:"):]))
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def _states(trials):
    return sorted(t.state.name for t in trials)


def _overrides(job_dir) -> dict[str, str]:
    lines = yaml.safe_load((Path(job_dir) / ".hydra" / "overrides.yaml").read_text())
    return dict(line.lstrip("+").split("=", 1) for line in lines)


def test_sigkill_then_the_same_command_resumes_to_n_trials(tmp_path):
    """2 of 4 trials finished, the 3rd running: SIGKILL. The same command ends with 4 finished."""
    db = tmp_path / "optuna" / "loss_search.db"
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=3", f"paths.log_dir={tmp_path}", *TINY]
    first = _popen([*args, f"hydra.sweep.dir={tmp_path / 'first'}"], tmp_path / "first.log")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            try:
                trials = _trials(f"sqlite:///{db}") if db.exists() else []
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):
                # The file is there, the study not yet; or the sweep is creating the schema right now:
                # this poll's own storage would race it (UNIQUE constraint on alembic_version).
                trials = []
            states = [t.state for t in trials]
            if states.count(TrialState.COMPLETE) == 2 and TrialState.RUNNING in states:
                break
            time.sleep(0.2)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    killed = [t for t in _trials(f"sqlite:///{db}") if t.state == TrialState.RUNNING]
    assert len(killed) == 1

    run_train([*args, f"hydra.sweep.dir={tmp_path / 'second'}"])
    trials = _trials(f"sqlite:///{db}")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4 and _states(trials) == ["COMPLETE"] * 4 + ["FAIL"]
    interrupted = next(t for t in trials if t.state == TrialState.FAIL)
    assert interrupted.number == killed[0].number and "error" not in interrupted.user_attrs
    retry = next(t for t in done if t.user_attrs.get("retry_of") == interrupted.number)
    assert retry.params == interrupted.params  # its parameters were queued again
    for t in done:  # each trial leads to its folder, where the sampled values were trained with
        job_dir = Path(t.user_attrs["job_dir"])
        config = yaml.safe_load((job_dir / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == pytest.approx(t.params["optimizer.lr"])
        assert float(_overrides(job_dir)["loss.terms.focal.gamma"]) == pytest.approx(t.params["loss.terms.focal.gamma"])
        assert 0.0 <= t.value <= 1.0
    assert {Path(t.user_attrs["job_dir"]).parent.name for t in done} == {"first", "second"}
    assert yaml.safe_load((tmp_path / "second" / "optimization_results.yaml").read_text())["n_finished"] == 4


def test_two_workers_share_a_journal_study_and_prune(tmp_path):
    """Two sweeps at once on one journal file: exactly n_trials trials, distinct numbers and
    parameters; a pruner no trial passes stops every trial after its first validation."""
    journal = tmp_path / "study.log"
    args = ["hparams_search=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=5",
            f"hydra.sweeper.storage=journal:{journal}", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}",
            f"paths.log_dir={tmp_path}", *TINY, "trainer.max_epochs=3"]
    workers = [_popen([*args, f"hydra.sweep.dir={tmp_path / f'w{i}'}"], tmp_path / f"w{i}.log") for i in (0, 1)]
    for i, w in enumerate(workers):
        assert w.wait(timeout=400) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    trials = _trials(f"journal:{journal}")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 3, _states(trials)
    # Anything else can only be a surplus trial (lost a race for the last slot), never run.
    assert all(t.user_attrs.get("surplus") for t in trials if t.state != TrialState.PRUNED)
    assert len({t.number for t in pruned}) == 3 and len({t.user_attrs["job_dir"] for t in pruned}) == 3
    assert len({tuple(t.params.values()) for t in pruned}) == 3  # same seed, distinct draws
    for t in pruned:
        assert list(t.intermediate_values) == [0] and t.user_attrs["pruned_at_step"] == 0
        with open(Path(t.user_attrs["job_dir"]) / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert {r["epoch"] for r in rows if r["val/dice"]} == {"0"}  # stopped after epoch 0 of 3
        assert {r["epoch"] for r in rows} <= {"0", ""}  # "": the learning-rate monitor's row


def test_failing_trial_is_fail_and_the_grid_goes_on(tmp_path):
    """loss=ce cannot serve the binary task: that trial is FAIL with the error, the others run."""
    run_train(["hparams_search=optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=0",
               "hydra.sweeper.params=null", "loss=bce,ce,dice", f"hydra.sweep.dir={tmp_path / 'grid'}",
               f"paths.log_dir={tmp_path}", *TINY])
    trials = _trials(f"sqlite:///{tmp_path / 'optuna' / 'loss_search.db'}")
    by_loss = {t.params["loss"]: t for t in trials}
    assert sorted(by_loss) == ["bce", "ce", "dice"] and len(trials) == 3  # n_trials capped at the grid
    failed = by_loss["ce"]
    assert failed.state == TrialState.FAIL and failed.user_attrs["error"].startswith("ValueError:")
    assert failed.number < max(t.number for t in trials)  # the study went on after it
    assert by_loss["bce"].state == by_loss["dice"].state == TrialState.COMPLETE
    for t in trials:
        job_dir = Path(t.user_attrs["job_dir"])
        assert _overrides(job_dir)["loss"] == t.params["loss"]
    assert (Path(failed.user_attrs["job_dir"]) / "failure.yaml").exists()
    # scripts/summarize_sweep.py finds the study from the sweep folder: best first, the trial refused at
    # start-up (failure.yaml says stage: startup) last, listed apart.
    assert summarize_sweep.main([str(tmp_path / "grid")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "grid" / "summary.csv")))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "REFUSED"] and rows[2]["loss"] == "ce"
    assert float(rows[0]["value"]) >= float(rows[1]["value"]) and float(rows[0]["duration_s"]) > 0
    assert "cannot serve task=binary" in rows[2]["error"] and Path(rows[0]["run_folder"]).is_dir()
    md = (tmp_path / "grid" / "summary.md").read_text()
    assert f"refused at start-up (config or data error): trial {failed.number}: " in md


def test_bad_setting_fails_before_any_trial(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "hparams_search=optuna", "hydra.sweeper.direction=minimize",
                           f"paths.log_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "hydra.sweeper.direction=minimize contradicts monitor_mode=max" in proc.stderr
    assert not (tmp_path / "optuna").exists()


def test_ddp_trial_is_pruned_on_every_rank(tmp_path):
    """Two CPU DDP ranks: rank 0 reports and decides, both stop after the first validation."""
    run_train(["hparams_search=optuna", "hydra.sweeper.n_trials=1", *TINY, "trainer=ddp_cpu", "trainer.devices=2",
               "trainer.max_epochs=3", "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}",
               f"hydra.sweep.dir={tmp_path / 'ddp'}", f"paths.log_dir={tmp_path}"])
    (trial,) = _trials(f"sqlite:///{tmp_path / 'optuna' / 'loss_search.db'}")
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    job_dir = Path(trial.user_attrs["job_dir"])
    with open(job_dir / "metrics.csv", newline="") as f:
        assert {r["epoch"] for r in csv.DictReader(f)} <= {"0", ""}
    assert "pruned at validation 0" in (job_dir / "train.log").read_text()
    assert "pruned at" not in (job_dir / "train_ddp_process_1.log").read_text()  # rank 1 only followed
