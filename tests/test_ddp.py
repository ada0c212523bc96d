"""DDP from the Hydra entry point (segtrain/distributed.py) and mixed precision.

Unit tests of the start-up rules run in-process (milliseconds). The end-to-end tests start
``train.py`` in subprocesses on CPU (gloo), because re-launching the script per rank is the
point: a single DDP run (one folder, only rank 0 writes), DDP inside a multirun (each job's
children run that job, not the sweep), the two-process validation Dice equal to the
one-process value, and a bf16-mixed run.
"""

from __future__ import annotations

import json

import pytest

from segtrain import distributed as D

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
