"""Nothing lost when storage fails: a full disk or an unwritable folder stops with the file's name.

How the failures are made (the tests run as root here and in CI, so ``chmod`` stops nothing):

* a full disk is ``/dev/full``, the Linux device on which every write fails with ``ENOSPC``
  from the kernel: the temporary file a save is about to create is made a symlink to it, so the
  real write path (open, write, fsync, rename) meets a real "No space left on device" -- for
  exactly one file, on a disk that is otherwise fine;
* an unwritable folder is a path whose parent is a regular file (``ENOTDIR``/``EEXIST`` for root too).
"""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from reliability_helpers import ROOT, compose_run, load_script, trained_checkpoint, write_images

from segtrain.atomic import AtomicCSVLogger, StorageError

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")


def fill_disk_for(path: Path | str) -> Path:
    """The next atomic save of ``path`` by this process hits a full disk."""
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    tmp.symlink_to("/dev/full")
    return tmp


class FillDiskBeforeSave(Callback):
    """In epoch ``epoch``, just before ModelCheckpoint saves (Lightning runs it after the other callbacks)."""

    def __init__(self, epoch: int, dirpath: str) -> None:
        self.epoch, self.dirpath = epoch, dirpath

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            fill_disk_for(Path(self.dirpath) / "last.ckpt")


@needs_dev_full
def test_full_disk_during_checkpoint_save_keeps_last_and_resumes(tmp_path):
    from segtrain.run import train

    run = tmp_path / "run"
    ckpt_dir = run / "checkpoints"
    fill = ["+callbacks.fill_disk._target_=test_storage_failure.FillDiskBeforeSave",
            "+callbacks.fill_disk.epoch=1", f"+callbacks.fill_disk.dirpath={ckpt_dir}"]
    with pytest.raises(StorageError) as err:
        train(compose_run(["trainer.max_epochs=2", *fill], run))
    text = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert f"the checkpoint {ckpt_dir / 'last.ckpt'}: No space left on device" in text and "is intact" in text
    # The previous last.ckpt is the end-of-epoch-0 one, whole; no temporary file is left behind.
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not [p.name for p in ckpt_dir.iterdir() if ".tmp-" in p.name]

    # trust_checkpoint: the checkpoint's config names this test's callback, which is off the allow-list.
    resume = ["trainer.max_epochs=2", f"ckpt_path={ckpt_dir / 'last.ckpt'}", "trust_checkpoint=true"]
    value = train(compose_run(resume, tmp_path / "resumed"))
    assert value == value  # a number, not NaN: validation ran
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


@needs_dev_full
def test_full_disk_during_metrics_write_keeps_the_file(tmp_path):
    """Lightning rewrites metrics.csv in place when a key appears; ours replaces it whole or not at all."""
    logger = AtomicCSVLogger(save_dir=str(tmp_path), name="", version="")
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.save()
    path = tmp_path / "metrics.csv"
    before = path.read_text()
    fill_disk_for(path)
    logger.log_metrics({"train/loss": 0.5, "val/dice": 0.7}, step=1)  # a new key: the header changes
    with pytest.raises(StorageError, match=f"the metrics file {path}: No space left on device"):
        logger.save()
    assert path.read_text() == before
    logger.save()  # space is back (the temporary file is gone): nothing logged was lost
    rows = list(csv.DictReader(path.open()))
    assert [(r["step"], r["train/loss"], r["val/dice"]) for r in rows] == [("0", "1.0", ""), ("1", "0.5", "0.7")]


def _predict(tmp_path, out):
    write_images(tmp_path / "in", [(32, 32), (40, 40)])
    script = load_script("predict")
    args = [f"ckpt_path={trained_checkpoint('binary', 1)}", f"input={tmp_path / 'in'}", f"output={out}", "overlay=false"]
    return script.predict(script.parse_overrides(script.PredictArgs, args))


def test_unwritable_prediction_folder_names_the_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "masks").write_text("a file where the masks folder should be")
    with pytest.raises(StorageError, match=f"the prediction {out / 'masks' / 'img0.png'}: (File exists|Not a directory)"):
        _predict(tmp_path, out)


@needs_dev_full
def test_full_disk_during_prediction_write(tmp_path):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    fill_disk_for(out / "masks" / "img1.png")
    with pytest.raises(StorageError, match=f"the prediction {out / 'masks' / 'img1.png'}: No space left on device"):
        _predict(tmp_path, out)
    assert [p.name for p in (out / "masks").iterdir()] == ["img0.png"]  # whole files only, no temporary left


FROZEN_CLOCK = """
import datetime, sys
sys.path.insert(0, {root!r})
import segtrain.run  # noqa: F401  -- what train.py imports before Hydra composes
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose(config_name="train", return_hydra_config=True)
# Both processes read the same instant (after Hydra registered its own "now"): a timestamp alone collides.
OmegaConf.register_new_resolver("now", lambda p: datetime.datetime(2026, 1, 2, 3, 4, 5, 678901).strftime(p), replace=True)
print(cfg.hydra.run.dir)
"""


def test_two_trainings_started_at_the_same_instant_get_different_run_folders():
    code = FROZEN_CLOCK.format(root=str(ROOT), conf=str(ROOT / "conf"))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(d.startswith("logs/runs/2026-01-02_03-04-05_678901_") for d in dirs), dirs
    assert dirs[0] != dirs[1]


def test_unwritable_checkpoint_folder_names_it(tmp_path):
    from segtrain.atomic import atomic_torch_save

    (tmp_path / "run").write_text("a file where the run folder should be")
    with pytest.raises(StorageError, match=f"the checkpoint folder {tmp_path / 'run' / 'checkpoints'}: (File exists|Not a directory)"):
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "run" / "checkpoints" / "last.ckpt")
