"""Resume after a crash: ``ckpt_path`` resolution, atomic checkpoint files, the random state.

The end-to-end test starts a real ``python train.py`` subprocess, kills it with SIGKILL once
its first epoch's ``last.ckpt`` exists, resumes from that file in a new process and checks the
final weights and validation metrics equal those of an uninterrupted run with the same seed
(started at the same time, into the same runs folder: it also checks that two runs never share
a folder). The rest are in-process unit tests.
"""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
import yaml
from reliability_helpers import TINY, popen_script, run_script

from datamodules.transforms import pipeline_random_state
from segtrain.atomic import AtomicCheckpointIO, atomic_torch_save
from segtrain.lightning_compat import RandomStateCheckpoint
from segtrain.resume import check_resume_config, find_latest_checkpoint, resolve_ckpt_path

# ------------------------------------------------------------------ ckpt_path resolution ----


def _fake_run(root: Path, name: str, mtime: float) -> Path:
    ckpt = root / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, ckpt)
    os.utime(ckpt, (mtime, mtime))
    return ckpt


def test_ckpt_path_forms(tmp_path):
    old = _fake_run(tmp_path, "2026-01-01_10-00-00", 1_000)
    new = _fake_run(tmp_path, "2026-01-02_10-00-00", 2_000)
    assert resolve_ckpt_path(None) is None
    assert resolve_ckpt_path("null") is None
    assert resolve_ckpt_path(str(old)) == str(old)
    # A run folder stands for its checkpoints/last.ckpt.
    assert resolve_ckpt_path(str(old.parent.parent)) == str(old)
    assert resolve_ckpt_path("latest", runs_root=tmp_path) == str(new)
    # The current run's own folder (already created when train.py starts) is never "latest".
    assert resolve_ckpt_path("latest", runs_root=tmp_path, current_run_dir=new.parent.parent) == str(old)


def test_ckpt_path_errors_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*ckpt_path=latest"):
        resolve_ckpt_path(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match=r"no run under .* has a checkpoints/last.ckpt.*Train once first"):
        find_latest_checkpoint(tmp_path)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder without checkpoints/last.ckpt"):
        resolve_ckpt_path(tmp_path / "empty_run")
    # A checkpoint cut short (a crash while copying it) is caught before torch.load's stack trace.
    good = _fake_run(tmp_path, "run", 1_000)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"not a readable PyTorch checkpoint \(truncated"):
        resolve_ckpt_path(cut)


def test_resume_config_mismatch_names_the_key():
    ckpt = {"task": "binary", "num_classes": 1, "model": {"arch": "unet"}}
    check_resume_config(ckpt, dict(ckpt), "x.ckpt")  # same config: fine
    check_resume_config(None, ckpt, "x.ckpt")  # a foreign checkpoint: nothing to compare
    # Pretrained weights only change the initialisation, which the checkpoint overwrites anyway.
    check_resume_config(ckpt, {**ckpt, "model": {"arch": "unet", "encoder_weights": "imagenet"}}, "x.ckpt")
    with pytest.raises(ValueError, match=r"task: trained with 'binary' but this run has 'multiclass'.*drop those overrides"):
        check_resume_config(ckpt, {**ckpt, "task": "multiclass", "num_classes": 3}, "x.ckpt")
    with pytest.raises(ValueError, match=r"model.arch: trained with .unet. but this run has .fpn."):
        check_resume_config(ckpt, {**ckpt, "model": {"arch": "fpn"}}, "x.ckpt")


# ---------------------------------------------------------------------- atomic writes -----


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    atomic_torch_save({"a": torch.ones(3)}, path)
    atomic_torch_save({"a": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path)["a"], torch.zeros(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    # Lightning's entry point routes through the same function.
    AtomicCheckpointIO().save_checkpoint({"b": 1}, str(path))
    assert torch.load(path) == {"b": 1}


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_a_broken_checkpoint(tmp_path):
    """Kill a process that rewrites an 8 MB checkpoint in a loop, at random moments (mostly mid-write)."""
    path = tmp_path / "last.ckpt"
    writer = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from segtrain.atomic import atomic_torch_save
        i = 0
        while True:
            atomic_torch_save({{"step": i, "w": torch.full((2_000_000,), float(i))}}, {str(path)!r})
            print(i, flush=True)
            i += 1
        """
    )
    rng = random.Random(0)
    for _ in range(2):  # each round pays a torch + lightning import: keep it at two
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one complete save done: from now on a kill can hit any moment
        time.sleep(rng.uniform(0.05, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        ckpt = torch.load(path)  # must always load: the old or the new file, never half of one
        assert torch.equal(ckpt["w"], torch.full((2_000_000,), float(ckpt["step"])))


# ---------------------------------------------------------------------- random state ------


def _datamodule(**train_transforms):
    """A datamodule whose train pipeline holds the generators (one per transform) a resume restores."""
    from datamodules import SyntheticDataModule

    pipeline = train_transforms or {"flip": A.HorizontalFlip(p=0.5), "jitter": A.ColorJitter(p=0.5)}
    return SyntheticDataModule(num_samples=4, image_size=16, seed=3, train_transforms=pipeline)


def _draw(dm, image: np.ndarray) -> list:
    """Numbers from every random source the resume has to restore: global generators, augmentations."""
    return [
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        random.random(),
        [float(dm.train_transform(image=image)["image"].float().sum()) for _ in range(4)],
    ]


def test_random_state_round_trip_through_a_weights_only_checkpoint():
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    dm = _datamodule()
    for _ in range(3):  # advance the pipeline, as an epoch of augmentation does
        dm.train_transform(image=image)
    # What Lightning writes: the callback's state and the datamodule's state_dict.
    state = {"callback": RandomStateCheckpoint().state_dict(), "datamodule": dm.state_dict()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    # Plain tensors, ints and lists only: loads under torch.load's safe default.
    loaded = torch.load(buffer, weights_only=True)
    expected = _draw(dm, image)

    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    assert _draw(_datamodule(), image) != expected  # without the restore the numbers differ ...
    fresh = _datamodule()  # what a new process builds from the config
    RandomStateCheckpoint().load_state_dict(loaded["callback"])
    fresh.load_state_dict(loaded["datamodule"])
    assert _draw(fresh, image) == expected  # ... with it they are the same


def test_restore_warns_about_transforms_the_config_no_longer_has():
    src = _datamodule()
    src.train_transform(image=np.zeros((16, 16, 3), np.uint8))  # advanced: differs from the seeded state
    saved = src.state_dict()
    fewer = _datamodule(flip=A.HorizontalFlip(p=0.5))  # ColorJitter dropped: ToTensorV2 moves up to 1
    assert pipeline_random_state(fewer.train_transform)["0.HorizontalFlip"] != saved["train_transform"]["0.HorizontalFlip"]
    with pytest.warns(UserWarning) as caught:
        fewer.load_state_dict(saved)
    assert "random state for ['train_transform[1.ColorJitter]', 'train_transform[2.ToTensorV2]']" in str(caught[0].message)
    # What still matches was restored: the flip continues where the checkpoint left it.
    assert pipeline_random_state(fewer.train_transform)["0.HorizontalFlip"] == saved["train_transform"]["0.HorizontalFlip"]


# ------------------------------------------------------------ kill, resume, same result -----

# Three epochs of a tiny run; val every epoch so last.ckpt is written at each epoch's end.
RESUME_ARGS = (*TINY, "trainer.max_epochs=3", "seed=7", "data.num_samples=32")


def _run_folders(log_dir: Path) -> dict[str, Path]:
    """``{hydra.job.name: run folder}`` for the runs under ``log_dir/runs``."""
    found = {}
    for hydra_yaml in (log_dir / "runs").glob("*/.hydra/hydra.yaml"):
        try:
            name = yaml.safe_load(hydra_yaml.read_text())["hydra"]["job"]["name"]
        except (TypeError, KeyError, yaml.YAMLError):
            continue  # Hydra is still writing the file
        found[name] = hydra_yaml.parent.parent
    return found


def _final_val(run: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val/loss")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}, int(rows[0]["epoch"])


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL after epoch 0's last.ckpt, resume in a new process: same weights and metrics as no crash."""
    logs = tmp_path / "logs"
    common = ["train.py", f"paths.log_dir={logs}", *RESUME_ARGS]
    # Both start at the same moment into the same runs folder: they must get two folders.
    reference = popen_script([*common, "hydra.job.name=reference"], tmp_path / "reference.log")
    victim = popen_script([*common, "hydra.job.name=victim"], tmp_path / "victim.log")
    deadline = time.monotonic() + 240
    last = None
    while time.monotonic() < deadline and victim.poll() is None:
        folder = _run_folders(logs).get("victim") if (logs / "runs").exists() else None
        if folder is not None and (folder / "checkpoints" / "last.ckpt").exists():
            last = folder / "checkpoints" / "last.ckpt"
            os.kill(victim.pid, signal.SIGKILL)  # a real crash: no handler, no final checkpoint
            break
        time.sleep(0.02)
    victim.wait()
    assert last is not None and victim.returncode == -signal.SIGKILL, (
        f"the victim run was not killed mid-run (rc={victim.returncode}):\n{(tmp_path / 'victim.log').read_text()[-2000:]}"
    )
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < 2, "the kill came after the last epoch: nothing left to resume"
    before = last.read_bytes()

    run_script([*common, f"ckpt_path={last}", "hydra.job.name=resumed"])
    assert reference.wait(timeout=240) == 0, (tmp_path / "reference.log").read_text()[-2000:]

    runs = _run_folders(logs)
    assert len({runs["reference"], runs["victim"], runs["resumed"]}) == 3  # nothing shared a folder
    assert last.read_bytes() == before  # the resumed run wrote its own folder, not the crashed one's

    ref_ckpt = torch.load(runs["reference"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    res_ckpt = torch.load(runs["resumed"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert res_ckpt["epoch"] == ref_ckpt["epoch"] == 2 and res_ckpt["global_step"] == ref_ckpt["global_step"]
    for key, value in ref_ckpt["state_dict"].items():
        assert torch.equal(value, res_ckpt["state_dict"][key]), f"weights differ after resume: {key}"
    # Optimizer moments and the LR schedule were restored too (else the weights would differ above).
    assert res_ckpt["lr_schedulers"][0]["last_epoch"] == ref_ckpt["lr_schedulers"][0]["last_epoch"]
    ref_val, _ = _final_val(runs["reference"])
    res_val, first_epoch = _final_val(runs["resumed"])
    assert first_epoch == killed_at + 1  # the resumed run continued, it did not start over
    assert res_val == ref_val


def test_ckpt_path_latest_resumes_the_newest_run(tmp_path):
    """``ckpt_path=latest`` through train(): picks the newest run's last.ckpt and continues after its epoch."""
    from reliability_helpers import compose_run, trained_checkpoint

    from segtrain.run import train

    logs = tmp_path / "logs"
    old = logs / "runs" / "2026-01-01_00-00-00_000000" / "checkpoints" / "last.ckpt"
    old.parent.mkdir(parents=True)
    old.write_bytes(trained_checkpoint("binary", 1).read_bytes())  # a one-epoch run (epoch 0)
    run = logs / "runs" / "2026-01-02_00-00-00_000000"
    train(compose_run(["ckpt_path=latest", f"paths.log_dir={logs}", "trainer.max_epochs=2",
                       "resume_allow_changes=[trainer.max_epochs]"], run))
    epochs = {int(r["epoch"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("epoch")}
    assert epochs == {1}  # epoch 0 came from the checkpoint; only epoch 1 was trained here
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
