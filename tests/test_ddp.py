"""DDP from the Hydra entry point (segtrain/distributed.py) and mixed precision.

Unit tests of the start-up rules run in-process (milliseconds). The end-to-end tests start
``train.py`` in subprocesses on CPU (gloo), because re-launching the script per rank is the
point: a single DDP run (one folder, only rank 0 writes), DDP inside a multirun (each job's
children run that job, not the sweep), the two-process validation Dice equal to the
one-process value, and a bf16-mixed run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability_helpers import TINY

from segtrain import distributed as D

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- start-up rules (unit) -----


def test_plain_run_keeps_argv():
    argv = ["train.py", "loss=dice"]
    assert D.startup_argv(argv, {}) == argv
    assert D.startup_argv(["train.py", "-m", "loss=bce,dice"], {}) == ["train.py", "-m", "loss=bce,dice"]


def test_multirun_child_gets_the_jobs_own_command_line():
    job = ["loss=dice", 'hydra.run.dir="/runs/multi/1"', "hydra.output_subdir=null"]
    # What Lightning hands a child inside a multirun: the sweep's argv plus its own overrides.
    sweep_argv = ["train.py", "-m", "loss=bce,dice", 'hydra.run.dir="outputs/x"',
                  "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    env = {D.RELAUNCH_ENV: json.dumps(job), "LOCAL_RANK": "1"}
    assert D.startup_argv(sweep_argv, env) == ["train.py", *job, "hydra.job.name=train_ddp_process_1"]
    # The job's own process (rank 0) is not rewritten.
    env0 = {D.RELAUNCH_ENV: json.dumps(job), "LOCAL_RANK": "0"}
    assert D.startup_argv(sweep_argv, env0) == sweep_argv


def test_multirun_under_torchrun_or_srun_is_refused():
    torchrun = {"TORCHELASTIC_RUN_ID": "1", "WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0"}
    with pytest.raises(ValueError, match="whole sweep.*hydra/launcher=slurm"):
        D.startup_argv(["train.py", "-m", "loss=bce,dice"], torchrun)
    srun = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NAME": "train"}
    with pytest.raises(ValueError, match="whole sweep"):
        D.startup_argv(["train.py", "--multirun", "loss=bce,dice"], srun)


def test_external_launch_needs_one_explicit_run_dir():
    torchrun = {"TORCHELASTIC_RUN_ID": "1", "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    with pytest.raises(ValueError, match="hydra.run.dir"):
        D.startup_argv(["train.py", "trainer=ddp"], torchrun)
    with pytest.raises(ValueError, match="hydra.run.dir"):
        D.startup_argv(["train.py"], {"NODE_RANK": "1", "MASTER_ADDR": "node0"})
    # With the folder given, rank 1 neither copies the config nor shares rank 0's log file.
    out = D.startup_argv(["train.py", "hydra.run.dir=outputs/two_node"], torchrun)
    assert out == ["train.py", "hydra.run.dir=outputs/two_node", "hydra.output_subdir=null",
                   "hydra.job.name=train_rank1"]
    rank0 = dict(torchrun, RANK="0", LOCAL_RANK="0")
    assert D.startup_argv(["train.py", "hydra.run.dir=o"], rank0) == ["train.py", "hydra.run.dir=o"]
    # An interactive SLURM shell (job name "bash") is not a multi-process launch.
    interactive = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NAME": "bash"}
    assert D.startup_argv(["train.py"], interactive) == ["train.py"]


def test_job_argv_recreates_the_multirun_job(tmp_path):
    """What a multirun job hands its DDP children: its own overrides, primary-config flags,
    logging overrides and folder -- never the sweep's values or -m."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["loss=dice", "hydra/job_logging=disabled"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "multi" / "3")
    HydraConfig.instance().set_config(cfg)
    try:
        assert D.is_multirun()
        argv = D.job_argv(["train.py", "-m", "--config-name", "train", "loss=dice,bce"])
    finally:
        HydraConfig.instance().cfg = None
    assert argv == ["--config-name", "train", "hydra/job_logging=disabled", "loss=dice",
                    f'hydra.run.dir="{tmp_path / "multi" / "3"}"', "hydra.output_subdir=null", "hydra.mode=RUN"]
    assert not D.is_multirun()


@pytest.mark.parametrize(
    "env, rank",
    [
        ({}, 0),
        ({"RANK": "3", "LOCAL_RANK": "1"}, 3),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}, 5),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "LOCAL_RANK": "1"}, 1),
        ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, 1),
        ({"LOCAL_RANK": "0", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, 4),
    ],
)
def test_env_global_rank(env, rank):
    assert D.env_global_rank(env) == rank


# ------------------------------------------------------------ end to end (subprocesses) -----

import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
# The tiny run on two CPU ranks. 20 samples: 12 train (6 per rank), 8 validation (4 per rank: one
# batch each, no padding by DistributedSampler, so both ranks see disjoint halves and together
# exactly the whole set).
TWO_RANKS = [*TINY, "data.num_samples=20", "data.val_fraction=0.4", "trainer.devices=2"]
# Variables a launcher may have left in the test's environment: the runs below start clean.
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE",
                "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS",
                D.RELAUNCH_ENV)


def run_train(args, timeout=420):
    """``python train.py *args`` from the repo root; fails the test with the output's tail."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM_")}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"train.py {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def last_val_row(metrics_csv: Path) -> dict[str, float]:
    import csv

    rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("val/dice")]
    assert rows, f"no validation row in {metrics_csv}"
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v != ""}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One tiny 2-process CPU DDP run from the Hydra entry point, with the default run folder
    (timestamped, under paths.log_dir) so that a second folder from rank 1 would show."""
    log_dir = tmp_path_factory.mktemp("ddp_logs")
    proc = run_train([*TWO_RANKS, "trainer.strategy=ddp", "loss=bce_dice", "loss.terms.dice.sync_dist=true",
                      f"paths.log_dir={log_dir}"])
    return log_dir, proc


@pytest.mark.slow
def test_ddp_run_uses_one_folder_and_two_ranks(ddp_run):
    log_dir, proc = ddp_run
    runs = sorted((log_dir / "runs").iterdir())
    assert len(runs) == 1, f"ranks created several run folders: {runs}"
    run = runs[0]
    assert not (log_dir / "multiruns").exists()
    # Rank 1 ran in this folder (its own log file), without a .hydra copy of its own.
    assert (run / "train_ddp_process_1.log").exists()
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    # Rank 0's files, once each.
    assert (run / ".hydra" / "config.yaml").exists() and (run / "config.yaml").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["epoch_000.png"]
    assert 0.0 <= last_val_row(run / "metrics.csv")["val/dice"] <= 1.0


@pytest.mark.slow
def test_torchrun_ranks_share_the_given_folder(tmp_path):
    """Processes started by torchrun (as on each node of a multi-node run): one folder, given by
    hydra.run.dir; rank 1 writes neither .hydra/ nor rank 0's log."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM_")}
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *TWO_RANKS, "trainer.strategy=ddp", f"hydra.run.dir={run}", f"paths.log_dir={tmp_path}",
           "callbacks.prediction_grid=null"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (run / "train_rank1.log").exists() and (run / "train.log").exists()
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    hydra_cfg = yaml_load(run / ".hydra" / "hydra.yaml")["hydra"]  # rank 0's copy (rank 1 writes none)
    assert hydra_cfg["job"]["name"] == "train"
    assert 0.0 <= last_val_row(run / "metrics.csv")["val/dice"] <= 1.0


def _validate_in_one_process(ckpt: Path, batch_size: int) -> dict[str, float]:
    """val metrics of ``ckpt`` in one process, on the run's own validation set."""
    import hydra
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from segtrain.run import build_module

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(checkpoint["config"])
    cfg.data.batch_size = batch_size
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(module, datamodule=hydra.utils.instantiate(cfg.data), verbose=False)
    return metrics


@pytest.mark.slow
def test_two_process_validation_equals_one_process(ddp_run):
    """The DDP run's logged validation (2 ranks x 4 images, Dice loss with sync_dist) equals one
    process validating the same weights on the same 8 images in one batch of 8."""
    log_dir, _ = ddp_run
    run = next((log_dir / "runs").iterdir())
    ddp = last_val_row(run / "metrics.csv")
    one = _validate_in_one_process(run / "checkpoints" / "last.ckpt", batch_size=8)
    for key in ("val/dice", "val/iou", "val/loss", "val/loss_dice", "val/loss_bce"):
        assert one[key] == pytest.approx(ddp[key], abs=1e-5), (key, one[key], ddp[key])
    # Control: the Dice loss is one score over the (global) batch, so batches of 4 give another
    # value -- the match above is the all-reduce of sync_dist at work, not a coincidence.
    halves = _validate_in_one_process(run / "checkpoints" / "last.ckpt", batch_size=4)
    assert halves["val/dice"] == pytest.approx(ddp["val/dice"], abs=1e-6)  # metrics: batch-independent
    assert not math.isclose(halves["val/loss_dice"], ddp["val/loss_dice"], abs_tol=1e-5)


@pytest.mark.slow
def test_ddp_inside_multirun_each_job_in_its_folder(tmp_path):
    """-m with script-relaunching DDP: job 0 diverges (NaN weights) and is recorded as failed,
    job 1 then trains with DDP in its own folder; nothing else is created."""
    sweep_dir = tmp_path / "multi"
    run_train(["-m", "trainer=ddp_cpu", *TWO_RANKS, f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={sweep_dir}",
               "++callbacks.divergence_guard._target_=segtrain.guards.DivergenceGuard",
               "+callbacks.inject_nan._target_=segtrain.sweep.InjectNaN",
               "+callbacks.inject_nan.at_step=0,null"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi"]  # no runs/ from the children
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == ["0", "1"], jobs
    failure = yaml_load(sweep_dir / "0" / "failure.yaml")
    assert failure["error_type"] == "DivergenceError" and failure["returned"] == -math.inf
    assert "+callbacks.inject_nan.at_step=0" in failure["overrides"]
    job1 = sweep_dir / "1"
    assert not (job1 / "failure.yaml").exists()
    assert (job1 / "train_ddp_process_1.log").exists()  # its rank 1 ran this job, in this folder
    assert f"Run folder: {job1}" in (job1 / "train_ddp_process_1.log").read_text()
    assert 0.0 <= last_val_row(job1 / "metrics.csv")["val/dice"] <= 1.0


def yaml_load(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_bf16_mixed_trains_on_cpu_without_nan(compose, tmp_path, monkeypatch):
    """trainer.precision=bf16-mixed on CPU (autocast bfloat16): finite train and val losses.
    (16-mixed is for GPUs; on a CPU Lightning itself switches it to bf16-mixed with a warning.)"""
    import csv

    import torch

    from seglosses import CombinedLoss
    from segtrain.run import train

    seen = set()  # dtypes of the logits reaching the loss: bfloat16 proves autocast was on
    forward = CombinedLoss.forward

    def probe(self, logits, target):
        seen.add(logits.dtype)
        return forward(self, logits, target)

    monkeypatch.setattr(CombinedLoss, "forward", probe)

    cfg = compose(["trainer.precision=bf16-mixed", "loss=dice_focal", "+trainer.limit_train_batches=2",
                   "+trainer.limit_val_batches=1", "callbacks.early_stopping=null"], tmp_path)
    value = train(cfg)
    assert math.isfinite(value) and 0.0 <= value <= 1.0
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    losses = [float(r[k]) for r in rows for k in ("train/loss", "val/loss") if r.get(k)]
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses), losses
    assert torch.bfloat16 in seen, seen
