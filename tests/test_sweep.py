"""Sweeps: failure handling (segtrain/sweep.py), the Optuna search config and the SLURM launcher
config (the Optuna sweeper itself: test_sweeper.py, and end to end test_sweeper_runs.py).

Unit tests run in-process. The multirun tests start ``train.py -m`` in a subprocess on tiny
settings; the multirun with a failing job is built once per session (``tiny_multirun``) and
reused by tests/test_summarize_sweep.py.
"""

from __future__ import annotations

import math

import pytest
import yaml

from segtrain import sweep


def test_worst_value_by_direction():
    assert sweep.worst_value("max") == -math.inf
    assert sweep.worst_value("min") == math.inf
    with pytest.raises(ValueError, match="'max' or 'min'"):
        sweep.worst_value("maximize")


def _boom(cfg):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_failed_job_in_multirun_records_and_returns_worst(tmp_path):
    value = sweep.run_sweep_job(_boom, None, mode="max", output_dir=tmp_path, multirun=True,
                                overrides=["loss=dice", "data.batch_size=512"])
    assert value == -math.inf and isinstance(value, float)
    record = yaml.safe_load((tmp_path / sweep.FAILURE_FILE).read_text())
    assert record["status"] == "failed"
    assert record["error_type"] == "RuntimeError"
    assert "out of memory" in record["message"]
    assert "_boom" in record["traceback"]
    assert record["overrides"] == ["loss=dice", "data.batch_size=512"]
    assert record["returned"] == -math.inf


def test_nan_metric_in_multirun_is_a_failure(tmp_path):
    value = sweep.run_sweep_job(lambda cfg: float("nan"), None, mode="min", output_dir=tmp_path, multirun=True)
    assert value == math.inf
    record = yaml.safe_load((tmp_path / sweep.FAILURE_FILE).read_text())
    assert record["error_type"] == "NonFiniteMetric" and "nan" in record["message"]


def test_diverged_losses_in_metrics_csv_make_a_failure(tmp_path):
    """A run that diverged but was not stopped returns a finite metric; its NaN loss gives it away."""
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/loss,val/dice,val/loss_dice\n0,9,0.8,,\n0,9,,0.41,0.6\n1,19,nan,,\n1,19,,0.0,nan\n"
    )
    assert "train/loss was nan at epoch 1" in sweep.nonfinite_losses(tmp_path)
    value = sweep.run_sweep_job(lambda cfg: 0.41, None, mode="max", output_dir=tmp_path, multirun=True)
    assert value == -math.inf
    record = yaml.safe_load((tmp_path / sweep.FAILURE_FILE).read_text())
    assert record["error_type"] == "NonFiniteLoss" and "diverged" in record["message"]
    # Finite losses: nothing to report.
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss,val/dice\n0,9,0.8,\n0,9,,0.41\n")
    assert sweep.nonfinite_losses(tmp_path) is None


def test_single_run_raises_and_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="out of memory"):
        sweep.run_sweep_job(_boom, None, mode="max", output_dir=tmp_path, multirun=False)
    assert not (tmp_path / sweep.FAILURE_FILE).exists()


def test_successful_job_passes_value_through(tmp_path):
    assert sweep.run_sweep_job(lambda cfg: 0.75, None, mode="max", output_dir=tmp_path, multirun=True) == 0.75
    assert not (tmp_path / sweep.FAILURE_FILE).exists()


def test_keyboard_interrupt_still_stops_the_sweep(tmp_path):
    def interrupted(cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep_job(interrupted, None, mode="max", output_dir=tmp_path, multirun=True)


# --------------------------------------------------- configs compose (in-process, fast) -----

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_composes_and_builds():
    from hydra.utils import instantiate

    cfg = _compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                    "hydra.launcher.partition=gpu", "hydra.sweep.dir=/sweeps/x"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    # One SLURM task per GPU, as many nodes as the trainer: what Lightning's SLURMEnvironment expects.
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.partition == "gpu" and launcher.submitit_folder == "/sweeps/x/.submitit/%j"
    built = instantiate(launcher)  # constructing it needs no cluster
    assert built.params["nodes"] == 2 and built.params["tasks_per_node"] == 4


def test_optuna_search_space_matches_the_config():
    cfg = _compose(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.monitor_mode == "max"  # the direction optimises the metric train.py returns
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"  # sweeps without -m
    params = dict(sweeper.params)
    assert set(params) == {"loss.terms.dice.weight", "loss.terms.focal.weight", "loss.terms.focal.gamma",
                           "loss.terms.dice.smooth", "optimizer.lr"}
    for key in params:  # every searched key exists in the composed config (else Optuna's trials fail)
        assert OmegaConf.select(cfg, key) is not None, key


# ------------------------------------------------------------ multiruns (subprocesses) -----

from reliability_helpers import TINY  # noqa: E402  (the one tiny run, as train.py arguments)


def run_train(args, timeout=420):
    """``python train.py *args`` from the repo root; fails the test with the output's tail."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"train.py {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def tiny_multirun(tmp_path_factory) -> Path:
    """``train.py -m loss=bce,dice,ce`` on tiny data, once per test session (cached on disk).

    ``ce`` cannot serve the binary task: that job fails at start-up, the two others train.
    Also used by tests/test_summarize_sweep.py.
    """
    sweep_dir = tmp_path_factory.getbasetemp() / "tiny_multirun"
    done = sweep_dir / ".done"
    if not done.exists():
        run_train(["-m", "loss=bce,dice,ce", f"hydra.sweep.dir={sweep_dir}",
                   f"paths.log_dir={sweep_dir.parent / 'tiny_multirun_logs'}", *TINY])
        done.touch()
    return sweep_dir


@pytest.fixture(scope="module")
def multirun_dir(tmp_path_factory):
    return tiny_multirun(tmp_path_factory)


@pytest.mark.slow
def test_multirun_failed_job_is_recorded_and_others_finish(multirun_dir):
    jobs = {p.name: p for p in multirun_dir.iterdir() if p.is_dir()}
    assert set(jobs) == {"0", "1", "2"}
    for name, loss in (("0", "bce"), ("1", "dice")):
        assert f"loss={loss}" in yaml.safe_load((jobs[name] / ".hydra" / "overrides.yaml").read_text())
        assert (jobs[name] / "metrics.csv").exists() and (jobs[name] / "checkpoints" / "last.ckpt").exists()
        assert not (jobs[name] / sweep.FAILURE_FILE).exists()
    failure = yaml.safe_load((jobs["2"] / sweep.FAILURE_FILE).read_text())
    assert failure["error_type"] == "ValueError" and "ce" in failure["message"]
    assert "loss=ce" in failure["overrides"] and failure["returned"] == -math.inf
    assert "Sweep job failed" in (jobs["2"] / "train.log").read_text()  # logged, in the job's log
