"""Mistakes that used to end in a bare traceback, a misleading fix or a silent success: each now fails
at once, naming the key and the fix. In-process through the composed config, except the run-folder
lock (a second process holds it) and ``paths.log_dir`` (Hydra's own start-up, checked by its callback).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from reliability_helpers import ROOT, compose_run

from segtrain.hydra_callbacks import StartupChecks
from segtrain.run import train, validate_config
from segtrain.run_folder import RunFolderError, RunFolderLock


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' must be an integer or null"),
        ("data.batch_size=abc", "data.batch_size='abc' must be an integer"),
        ("data.batch_size=0", "data.batch_size=0 must be >= 1"),
        ("optimizer.lr=fast", "optimizer.lr='fast' must be a number"),
        ("data.drop_last=maybe", "data.drop_last='maybe' must be true or false"),
        ("trainer.limit_train_batches=all", "trainer.limit_train_batches='all' must be an integer or a number or null"),
    ],
)
def test_bad_types_name_the_key_and_the_type(tmp_path, override, expected):
    with pytest.raises(ValueError) as info:
        validate_config(compose_run([override], tmp_path / "run"))
    assert expected in str(info.value)


def test_every_bad_key_is_reported_at_once(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.max_epochs='abc'.*; data.batch_size='x'"):
        validate_config(compose_run(["trainer.max_epochs=abc", "data.batch_size=x"], tmp_path / "run"))


def test_no_training_batch_fails_with_the_reason(tmp_path):
    # 3 samples, 1 for validation: 2 training samples, batches of 4 with drop_last -> no batch at all.
    cfg = compose_run(["data.num_samples=3", "data.val_fraction=0.34", "data.batch_size=4", "data.drop_last=true",
                       "callbacks.prediction_grid=null"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"No training batch: the training set has 2 sample\(s\), data.batch_size=4, "
                                         r"data.drop_last=true drops the incomplete batch.*data.drop_last=false"):
        train(cfg)


def test_no_validation_set_for_a_validation_monitor(tmp_path):
    with pytest.raises(ValueError, match=r"data.val_fraction=0 leaves no validation set, but monitor=val/dice.*"
                                         r"data.val_fraction=0.2.*callbacks.early_stopping=null"):
        validate_config(compose_run(["data.val_fraction=0"], tmp_path / "run"))
    # Nothing monitored: no validation set needed.
    validate_config(compose_run(["data.val_fraction=0", "callbacks.model_checkpoint.monitor=null"], tmp_path / "run"))


def test_ignore_index_is_one_key(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(ValueError, match=r"data.ignore_index=255 differs from the top-level ignore_index=None.*"
                                         r"\(ignore_index=255\)"):
        validate_config(compose_run(["data=folder", f"data.root={root}", "data.ignore_index=255"], tmp_path / "run",
                                    synthetic=False))


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_multiclass_mask_message_names_the_key_that_works(tmp_path):
    from datamodules.masks import index_values

    with pytest.raises(ValueError, match=r"set the top-level ignore_index=255 .*serves the data, the losses and the metrics"):
        index_values(np.array([[0, 1], [2, 255]]), "m.png", 3)


def test_multilabel_masks_of_more_labels_than_num_classes(tmp_path):
    from datamodules.folder import find_pairs

    for k in range(3):
        _png(tmp_path / "masks" / f"a_{k}.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert len(find_pairs(tmp_path / "images", tmp_path / "masks", "multilabel", 3)) == 1
    with pytest.raises(ValueError, match=r"label masks up to <stem>_2 .*num_classes=2 reads labels 0..1 only.*num_classes=3"):
        find_pairs(tmp_path / "images", tmp_path / "masks", "multilabel", 2)


# ------------------------------------------------------------------------ run folders -----


def test_unusable_output_dir_names_the_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match=r"paths.output_dir: cannot create or write the folder .*file/run"):
        train(compose_run([], blocker / "run"))


def test_unusable_log_dir_stops_hydra_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.log_dir={blocker}/logs"], return_hydra_config=True)
    assert "StartupChecks" in cfg.hydra.callbacks.startup._target_
    with pytest.raises(SystemExit, match=r"paths.log_dir=.*file/logs: cannot create or write the folder .*Give a folder"):
        StartupChecks().on_run_start(config=cfg)


HOLD = """
import sys
sys.path.insert(0, {root!r})
from segtrain.run_folder import RunFolderLock
lock = RunFolderLock({folder!r}).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_run_folder_held_by_a_live_run_is_refused(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), folder=str(folder))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=r"in use by another live run \(pid \d+ on .*, started .*\).*own folder"):
            train(compose_run([], folder))
        assert not (folder / "config.yaml").exists() and not (folder / "train.log").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # The holder is gone (its lock with it): the folder can be taken.
    with RunFolderLock(str(folder)):
        pass


def test_a_folder_holding_a_finished_run_is_refused_unless_resuming_into_it(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("task: binary\n")
    (folder / "metrics.csv").write_text("epoch\n0\n")
    with pytest.raises(RunFolderError, match=r"already holds a run .*resume that run into it: ckpt_path="):
        train(compose_run([], folder))
    assert (folder / "metrics.csv").read_text() == "epoch\n0\n"  # untouched
    with RunFolderLock(str(folder), resuming_into=True):
        pass


def test_resuming_into_its_own_folder_keeps_the_earlier_metrics(tmp_path):
    from segtrain.run_folder import keep_previous_metrics

    (tmp_path / "metrics.csv").write_text("epoch\n0\n")
    (tmp_path / "metrics.part1.csv").write_text("older\n")
    assert keep_previous_metrics(str(tmp_path)) == str(tmp_path / "metrics.part2.csv")
    assert (tmp_path / "metrics.part2.csv").read_text() == "epoch\n0\n" and not (tmp_path / "metrics.csv").exists()
    assert keep_previous_metrics(str(tmp_path)) is None
