"""Errors a person can read (segtrain/errors.py): a data or config error prints its message, not a
traceback; a DataLoader worker's error keeps its own message; failure.yaml says whether the run
failed at start-up or while training, and the sweep summary and ``ckpt_path=latest`` act on it.

Two ``train.py`` subprocesses (slow: Python + torch each); the rest in-process, the worker errors
from a real DataLoader with one worker process.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from reliability_helpers import ROOT, load_script

from segtrain.errors import (
    ReadableError,
    TrainingStarted,
    failure_stage,
    note_traceback_file,
    readable_errors,
    reset_training_started,
    training_started,
    unwrap_worker_error,
)
from segtrain.optuna_trial import SweepJobFailed
from segtrain.resume import find_latest_checkpoint, resolve_ckpt_path
from segtrain.run_log import record_failed_run
from segtrain.sweep import FAILURE_FILE, record_failure, run_sweep_job

TRACEBACK = "Traceback (most recent call last)"

# --------------------------------------------------------------------- train.py on the console -----


def _train_py(tmp_path: Path, *overrides: str, full_error: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(ROOT)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    args = [sys.executable, "train.py", *overrides, "trainer.accelerator=cpu", f"paths.log_dir={tmp_path / 'logs'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


BAD_BATCH = "data.batch_size=0 must be >= 1"


@pytest.mark.slow
def test_a_config_error_prints_its_message_and_no_traceback(tmp_path):
    proc = _train_py(tmp_path, "data.batch_size=0", full_error=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console
    assert TRACEBACK not in console
    assert f"Error: Bad value(s) on the command line or in the config: {BAD_BATCH}" in proc.stderr
    log = tmp_path / "run" / "train.log"
    assert f"(The traceback is in {log}.)" in proc.stderr and "HYDRA_FULL_ERROR=1" in proc.stderr
    assert TRACEBACK in log.read_text() and "ValueError: Bad value(s)" in log.read_text()
    failure = yaml.safe_load((tmp_path / "run" / FAILURE_FILE).read_text())
    assert failure["stage"] == "startup" and BAD_BATCH in failure["message"] and TRACEBACK in failure["traceback"]


@pytest.mark.slow
def test_hydra_full_error_prints_the_traceback(tmp_path):
    proc = _train_py(tmp_path, "data.batch_size=0", full_error=True)
    assert proc.returncode == 1
    assert TRACEBACK in proc.stderr
    assert f"ValueError: Bad value(s) on the command line or in the config: {BAD_BATCH}" in proc.stderr
    assert "ReadableError" not in proc.stderr


# ------------------------------------------------------------------------ readable_errors -----


def test_data_and_config_errors_leave_as_one_readable_message(tmp_path, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    log = tmp_path / "train.log"
    with pytest.raises(ReadableError) as info:
        with readable_errors():
            error = FileNotFoundError("data.root /x does not exist: pass data.root=/path/to/dataset")
            note_traceback_file(error, log)  # as console_log does
            raise error
    assert str(info.value) == ("Error: data.root /x does not exist: pass data.root=/path/to/dataset\n"
                               f"(The traceback is in {log}.)")
    assert isinstance(info.value.error, FileNotFoundError)
    # A bug keeps its traceback (passes unchanged); so does everything under HYDRA_FULL_ERROR=1.
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        with readable_errors():
            raise RuntimeError("CUDA out of memory")
    with pytest.raises(AssertionError):
        with readable_errors():
            raise AssertionError("a bug")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="bad"):
        with readable_errors():
            raise ValueError("bad")


# ---------------------------------------------------------- errors from a DataLoader worker -----

# Lines of its own that look like a traceback's: an indented one, one starting with the type's name.
MULTI_LINE = "Mask /data/a.png has values {7} that fit no class:\n  with num_classes=4 ...\nValueError: not a new error"


class _Failing(torch.utils.data.Dataset):
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        if self.kind == "key":
            return {}["image"]
        try:
            {}["mask"]
        except KeyError as cause:
            raise ValueError(MULTI_LINE) from cause  # a chained cause: its block comes first in the text


def _raised_in_worker(kind: str) -> BaseException:
    batches = iter(torch.utils.data.DataLoader(_Failing(kind), num_workers=1))
    try:
        next(batches)
    except Exception as error:  # noqa: BLE001 -- the error is what the test is about
        return error
    finally:
        batches._shutdown_workers()  # now, rather than a 5 s join timeout at garbage collection
    raise AssertionError("the worker raised nothing")


@pytest.fixture(scope="module")
def worker_error() -> BaseException:
    return _raised_in_worker("value")


def test_worker_error_is_unwrapped(worker_error):
    assert str(worker_error).startswith("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback")
    error = unwrap_worker_error(worker_error)
    assert type(error) is ValueError and str(error) == MULTI_LINE
    assert error.worker == "DataLoader worker process 0"
    assert "__getitem__" in error.worker_traceback and "KeyError: 'mask'" in error.worker_traceback
    assert error.__traceback__ is worker_error.__traceback__  # where the main process met it
    key = unwrap_worker_error(_raised_in_worker("key"))
    assert type(key) is KeyError and key.args == ("image",)
    plain = ValueError("not from a worker")
    assert unwrap_worker_error(plain) is plain


def test_worker_error_is_reported_by_its_message(worker_error, tmp_path, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(ReadableError) as info:
        with readable_errors():
            raise worker_error
    assert str(info.value) == f"Error: {MULTI_LINE}"

    def fail(cfg):
        raise worker_error

    # failure.yaml of a single run and of a sweep job (an Optuna trial): the message alone, the traceback whole.
    with pytest.raises(ValueError):
        record_failed_run(fail)(OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}}))
    with pytest.raises(SweepJobFailed) as failed:
        run_sweep_job(fail, None, mode="max", output_dir=tmp_path / "job", multirun=True, optuna_trial=True)
    assert str(failed.value) == f"ValueError: {MULTI_LINE}"
    for folder in ("run", "job"):
        failure = yaml.safe_load((tmp_path / folder / FAILURE_FILE).read_text())
        assert failure["error_type"] == "ValueError" and failure["message"] == MULTI_LINE
        assert "DataLoader worker process 0" in failure["traceback"] and "__getitem__" in failure["traceback"]


# -------------------------------------------------------------------- start-up or training -----


class _Tiny(L.LightningModule):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.layer, self.fail_at = torch.nn.Linear(2, 1), fail_at

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise ValueError(f"bad sample in batch {batch_idx}")
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(fail_at: int) -> float:
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[TrainingStarted()])
    trainer.fit(_Tiny(fail_at), torch.utils.data.DataLoader(torch.ones(4, 2), batch_size=1))
    return 0.0


@pytest.mark.parametrize(("fail_at", "stage"), [(0, "startup"), (2, "training")])
def test_failure_yaml_says_startup_or_training(tmp_path, fail_at, stage):
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    with pytest.raises(ValueError, match="bad sample"):
        record_failed_run(lambda c: _fit(fail_at))(cfg)
    assert yaml.safe_load((tmp_path / FAILURE_FILE).read_text())["stage"] == stage


def test_each_run_counts_its_own_start(tmp_path):
    """A sweep job that fails before training is a start-up failure, even after an earlier job of the
    same process trained; a job that returned a NaN metric had trained."""
    TrainingStarted().on_train_batch_end(None, None, None, None, 0)
    assert training_started() and failure_stage() == "training"

    def refused(cfg):
        raise ValueError("loss ce cannot serve task binary")

    run_sweep_job(refused, None, mode="max", output_dir=tmp_path / "0", multirun=True)
    assert yaml.safe_load((tmp_path / "0" / FAILURE_FILE).read_text())["stage"] == "startup"
    run_sweep_job(lambda cfg: float("nan"), None, mode="max", output_dir=tmp_path / "1", multirun=True)
    assert yaml.safe_load((tmp_path / "1" / FAILURE_FILE).read_text())["stage"] == "training"
    reset_training_started()


def test_latest_never_picks_a_run_refused_at_startup(tmp_path):
    runs = tmp_path / "logs" / "runs"
    trained = runs / "2026-01-01_10-00-00" / "checkpoints" / "last.ckpt"
    trained.parent.mkdir(parents=True)
    trained.write_bytes(b"checkpoint")
    refused = runs / "2026-01-02_10-00-00"  # newer, as the folder a failed `ckpt_path=latest` run left
    (refused / "checkpoints").mkdir(parents=True)  # even with a checkpoints/ folder, empty
    (refused / "train.log").write_text("Traceback ...\n")
    reset_training_started()
    record_failure(refused, ValueError("data.root /x does not exist"))
    assert yaml.safe_load((refused / FAILURE_FILE).read_text())["stage"] == "startup"
    os.utime(trained, (1_000_000, 1_000_000))
    assert find_latest_checkpoint(runs) == str(trained)
    assert resolve_ckpt_path("latest", runs_root=runs, current_run_dir=runs / "new") == str(trained)


# ------------------------------------------------------------------- scripts/summarize_sweep.py -----


def _job(root: Path, name: str, overrides: list[str], failure: dict | None = None, dice: float | None = None) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"monitor": "val/dice", "monitor_mode": "max"}))
    if dice is not None:
        (job / "metrics.csv").write_text(f"epoch,step,val/dice\n0,9,{dice}\n")
    if failure is not None:
        (job / FAILURE_FILE).write_text(yaml.safe_dump({"status": "failed", "error_type": "ValueError", **failure}))


REFUSED = "refused at start-up (config or data error)"


def test_summary_lists_startup_failures_apart(tmp_path, capsys):
    summarize_sweep = load_script("summarize_sweep")
    root = tmp_path / "multirun"
    _job(root, "0", ["loss=dice"], dice=0.7)
    _job(root, "1", ["loss=bce"], failure={"stage": "training", "message": "Training diverged at global step 3"})
    _job(root, "2", ["loss=ce"],
         failure={"stage": "startup", "message": "loss term 'ce' cannot serve task=binary\nUse loss=bce_dice"})
    _job(root, "3", ["loss=focal"], failure={"message": "an old failure.yaml without a stage"})
    assert summarize_sweep.main([str(root), "--out", str(tmp_path / "out")]) == 0
    console = capsys.readouterr().out
    md = (tmp_path / "out" / "summary.md").read_text()
    line = f"{REFUSED}: 2: loss term 'ce' cannot serve task=binary"
    for text in (console, md):
        assert line in text and "Use loss=bce_dice" not in text  # the first line of the message only
        assert "3 jobs, sorted by val/dice (max); 1 more refused at start-up" in text
    table = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| job")]
    assert table == ["0", "1", "3"]  # ranked: trained, then the failed trials; not the refused job
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed"), ("3", "failed"), ("2", "refused")]
    assert rows[3]["error"] == "loss term 'ce' cannot serve task=binary"


def test_summary_of_a_sweep_over_a_bad_key(tmp_path, capsys):
    summarize_sweep = load_script("summarize_sweep")
    root = tmp_path / "multirun"
    for i in range(3):
        _job(root, str(i), [f"data.crop_size={100 + i}"],
             failure={"stage": "startup", "message": f"data.crop_size={100 + i} is not a multiple of 32"})
    assert summarize_sweep.main([str(root)]) == 0
    md = (root / "summary.md").read_text()
    assert md.startswith("Sweep summary: 0 jobs, sorted by val/dice (max); 3 more refused at start-up")
    assert "| job |" not in md and "diverged" not in md
    assert [ln for ln in md.splitlines() if ln.startswith("- ")] == [
        f"- {REFUSED}: {i}: data.crop_size={100 + i} is not a multiple of 32" for i in range(3)]
    assert (root / "summary.png").stat().st_size > 0


def test_study_summary_lists_startup_failures_apart(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    summarize_sweep = load_script("summarize_sweep")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", direction="maximize")
    dists = {"optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    for i, (state, value, stage) in enumerate([(TrialState.COMPLETE, 0.6, None), (TrialState.FAIL, None, "startup"),
                                               (TrialState.FAIL, None, "training")]):
        job = tmp_path / "runs" / str(i)
        job.mkdir(parents=True)
        if stage:
            (job / FAILURE_FILE).write_text(yaml.safe_dump({"stage": stage, "message": f"failed at {stage}"}))
        study.add_trial(create_trial(state=state, value=value, params={"optimizer.lr": 1e-3}, distributions=dists,
                                     user_attrs={"job_dir": str(job), "error": f"ValueError: failed at {stage}"}))
    out = tmp_path / "out"
    summarize_sweep.summarize_study(f"sqlite:///{db}", out_dir=out)
    md = (out / "summary.md").read_text()
    assert f"- {REFUSED}: trial 1: failed at startup" in md and "| 1 |" not in md and "| 2 | FAIL |" in md
    assert "1 refused" in md
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("2", "FAIL"), ("1", "REFUSED")]
