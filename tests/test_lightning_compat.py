"""The Lightning internals and behaviours segtrain/lightning_compat.py relies on, one test each.

A failure here after a Lightning upgrade names the workaround that no longer holds (see the
module docstring for why each exists); fix or drop that workaround rather than the test.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import albumentations as A
import lightning as L
import pytest
import torch
from lightning.pytorch.strategies.launchers import subprocess_script

from datamodules import SyntheticDataModule
from segtrain import distributed as D
from segtrain import lightning_compat as compat

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------- 1. DDP re-launch inside a multirun -----


def test_launch_calls_the_observer_that_the_context_manager_replaces(monkeypatch):
    """``_SubprocessScriptLauncher.launch`` looks ``_launch_process_observer`` up at call time and
    hands it the children: what :func:`compat.replaced_child_observer` swaps is what runs."""
    assert list(inspect.signature(subprocess_script._launch_process_observer).parameters) == ["child_processes"]
    monkeypatch.delenv("LOCAL_RANK", raising=False)  # else Lightning assumes an external launcher
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # launch() would change threads
    launcher = subprocess_script._SubprocessScriptLauncher(
        L.fabric.plugins.environments.LightningEnvironment(), num_processes=2, num_nodes=1
    )
    children = ["child 1"]

    def start_no_children() -> None:  # stands in for Popen-ing the script once per rank > 0
        launcher.procs = children

    monkeypatch.setattr(launcher, "_call_children_scripts", start_no_children)
    original = subprocess_script._launch_process_observer
    seen: list = []
    with compat.replaced_child_observer(seen.append):
        assert launcher.launch(lambda: "trained") == "trained"
    assert seen == [children]
    assert subprocess_script._launch_process_observer is original  # put back after the job ...
    with pytest.raises(KeyError), compat.replaced_child_observer(seen.append):
        raise KeyError("a failing job")
    assert subprocess_script._launch_process_observer is original  # ... also after a failure


def test_a_changed_observer_is_refused_loudly(monkeypatch):
    monkeypatch.setattr(subprocess_script, "_launch_process_observer", lambda procs, main_pid: None)
    with pytest.raises(RuntimeError, match=r"changed .*_launch_process_observer.*lightning 2.6"):
        with compat.replaced_child_observer(print):
            pass
    monkeypatch.delattr(subprocess_script, "_launch_process_observer")
    with pytest.raises(RuntimeError, match="changed"):
        with compat.replaced_child_observer(print):
            pass


@pytest.mark.parametrize(
    ("strategy", "devices", "relaunch"),
    [("ddp", 2, True), ("ddp", 1, False), ("ddp_spawn", 2, False), ("auto", 1, False)],
)
def test_script_relaunch_is_detected(monkeypatch, strategy, devices, relaunch):
    """Only ``strategy=ddp`` with several devices re-runs the script (the case the scope handles)."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert compat._uses_script_relaunch(trainer) is relaunch


def test_children_command_line_is_what_startup_argv_rewrites(tmp_path, monkeypatch):
    """Lightning's child command line under Hydra is the parent's argv plus its own run.dir / job
    name overrides; startup_argv replaces it by the job's own, keeping Lightning's job name."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from lightning.fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["loss=dice"], return_hydra_config=True)
    cfg.hydra.runtime.cwd = str(tmp_path)
    cfg.hydra.run.dir = str(tmp_path / "job")
    sweep_argv = ["train.py", "-m", "loss=bce,dice"]
    monkeypatch.setattr(sys, "argv", sweep_argv)
    HydraConfig.instance().set_config(cfg)
    try:
        command, cwd = _hydra_subprocess_cmd(local_rank=1)
    finally:
        HydraConfig.instance().cfg = None
    assert cwd == str(tmp_path)
    added = [f'hydra.run.dir="{tmp_path / "job"}"', "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    # [python, script or -m module, *the parent's argv[1:], *Lightning's own overrides]
    assert command[-len(sweep_argv) - 2 :] == [*sweep_argv[1:], *added]
    child_argv = ["train.py", *command[-len(sweep_argv) - 2 :]]  # what the child's sys.argv holds
    job = ["loss=dice", f'hydra.run.dir="{tmp_path / "job"}"', "hydra.output_subdir=null", "hydra.mode=RUN"]
    env = {D.RELAUNCH_ENV: json.dumps(job), "LOCAL_RANK": "1"}  # Lightning sets LOCAL_RANK per child
    assert D.startup_argv(child_argv, env) == ["train.py", *job, "hydra.job.name=train_ddp_process_1"]


def test_scope_is_a_no_op_outside_a_multirun():
    before = dict(os.environ)
    with compat.multirun_ddp_scope(trainer=None):  # not even looked at outside a multirun
        pass
    assert dict(os.environ) == before and D.RELAUNCH_ENV not in os.environ


# --------------------------------------------------------------- 2. random state in checkpoints -----


class _Recorder(L.Callback):
    """Records, per epoch, the sample names and image sums each training batch brings."""

    def __init__(self) -> None:
        self.epochs: dict[int, list] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seen = (tuple(batch["name"]), round(float(batch["image"].sum()), 3))
        self.epochs.setdefault(trainer.current_epoch, []).append(seen)


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        # Dropout draws from torch's global generator too, as the real networks' would.
        return (self.w * torch.nn.functional.dropout(batch["image"], 0.5)).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, epochs: int, callbacks: list, ckpt_path: str | None = None) -> _Recorder:
    recorder = _Recorder()
    dm = SyntheticDataModule(num_samples=10, image_size=16, val_fraction=0.2, batch_size=2, seed=1,
                             train_transforms={"flip": A.HorizontalFlip(p=0.5), "jitter": A.ColorJitter(p=0.5)})
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[recorder, *callbacks, L.pytorch.callbacks.ModelCheckpoint(tmp_path, save_last=True)])
    trainer.fit(_Tiny(), datamodule=dm, ckpt_path=ckpt_path)
    return recorder


@pytest.mark.parametrize("with_callback", [True, False])
def test_resume_draws_what_the_uninterrupted_run_drew(tmp_path, with_callback):
    """Shuffle order, augmentations (the datamodule's state_dict) and dropout of the epoch after a
    resume equal the uninterrupted run's with RandomStateCheckpoint; without it they differ --
    Lightning itself does not restore the global random state (if it starts to, the callback can go)."""
    extra = [compat.RandomStateCheckpoint()] if with_callback else []
    L.seed_everything(0)
    uninterrupted = _fit(tmp_path / "a", 2, list(extra))
    L.seed_everything(0)
    _fit(tmp_path / "b", 1, list(extra))
    last = tmp_path / "b" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # our states keep the safe loader working
    assert ("RandomStateCheckpoint" in checkpoint["callbacks"]) is with_callback
    assert set(checkpoint["SyntheticDataModule"]) == {"train_transform", "val_transform"}
    L.seed_everything(0)  # a new process seeds itself from the config again
    resumed = _fit(tmp_path / "c", 2, [compat.RandomStateCheckpoint()] if with_callback else [], str(last))
    assert list(resumed.epochs) == [1]
    same = resumed.epochs[1] == uninterrupted.epochs[1]
    assert same is with_callback, (resumed.epochs[1], uninterrupted.epochs[1])


# ----------------------------------------------------------------- 4. gloo process groups at exit -----


def test_lightning_destroys_only_nccl_groups_at_exit():
    """Lightning registers its exit-time ``destroy_process_group`` for NCCL only; if it starts doing
    so for every backend, :func:`compat.destroy_process_group_at_exit` can go."""
    from lightning.fabric.utilities import distributed as fabric_distributed

    source = inspect.getsource(fabric_distributed._init_dist_connection)
    assert 'if torch_distributed_backend == "nccl":' in source
    assert "atexit.register(_destroy_dist_connection)" in source
    assert list(inspect.signature(fabric_distributed._destroy_dist_connection).parameters) == []


_EXIT_PROBE = """
import atexit, sys
import torch.distributed as dist
from segtrain import lightning_compat as compat
# Registered first, so it runs last (atexit is last in, first out): what the interpreter's shutdown meets.
atexit.register(lambda: print("group alive at shutdown:", dist.is_initialized(), flush=True))
store = dist.FileStore(sys.argv[2], 1)
dist.init_process_group("gloo", store=store, rank=0, world_size=1)
if sys.argv[1] == "register":
    compat.destroy_process_group_at_exit()
    before = atexit._ncallbacks()
    compat.destroy_process_group_at_exit()
    assert atexit._ncallbacks() == before, "a second call registered another handler"
"""


@pytest.mark.parametrize("register", [True, False])
def test_gloo_group_is_destroyed_before_shutdown(register, tmp_path):
    """With the handler the gloo group is gone before the interpreter shuts down; without it, it is
    still up there (Lightning leaves it), where gloo's threads can abort the process."""
    import subprocess

    args = [sys.executable, "-c", _EXIT_PROBE, "register" if register else "no", str(tmp_path / "store")]
    proc = subprocess.run(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"group alive at shutdown: {not register}"
