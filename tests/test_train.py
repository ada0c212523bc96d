"""The training pipeline end to end, in-process (Hydra compose API) on tiny synthetic data.

Every loss config runs a fast_dev_run in its task; short real runs check what a run leaves
behind (metrics.csv keys per loss term, per-class metrics, prediction PNGs, checkpoints with the
config, TensorBoard images) and that training learns. One subprocess checks the real
``python train.py`` entry point and its timestamped run folder.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY

from segtrain.run import train

ROOT = Path(__file__).resolve().parents[1]

# Every loss config in a task it serves (multilabel included), plus an ad-hoc composition.
FAST_DEV_RUNS = [
    ("binary", 1, ["loss=bce"]),
    ("binary", 1, ["loss=dice"]),
    ("binary", 1, ["loss=focal"]),
    ("binary", 1, ["loss=jaccard"]),
    ("binary", 1, ["loss=tversky"]),
    ("binary", 1, ["loss=bce_dice"]),
    ("binary", 1, ["loss=dice_focal"]),
    ("binary", 1, ["loss=focal_tversky"]),
    ("binary", 1, ["loss=bce_jaccard"]),
    ("multiclass", 4, ["loss=ce"]),
    ("multiclass", 4, ["loss=ce_dice"]),
    ("multiclass", 4, ["loss=ce_jaccard"]),
    ("multilabel", 3, ["loss=bce_dice"]),
    ("multiclass", 3, ["loss/terms=[ce,dice,focal]", "loss.terms.focal.gamma=3"]),
]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


@pytest.mark.parametrize("task, num_classes, overrides", FAST_DEV_RUNS, ids=lambda v: str(v))
def test_fast_dev_run_every_loss(task, num_classes, overrides, compose_cfg):
    cfg = compose_cfg(f"task={task}", f"num_classes={num_classes}", "debug=fast_dev_run", *overrides)
    value = train(cfg)
    assert 0.0 <= value <= 1.0  # val/dice of the one validation batch


@pytest.mark.slow
def test_run_folder_holds_metrics_per_term_predictions_and_checkpoints(compose_cfg, tmp_path):
    cfg = compose_cfg("loss=bce_dice", "trainer.max_epochs=2", "trainer.limit_train_batches=2")
    value = train(cfg)
    run = tmp_path / "run"
    rows = read_metrics(run)
    keys = set(rows[0])
    for key in ("train/loss", "train/loss_bce", "train/loss_dice", "val/loss", "val/loss_bce", "val/loss_dice",
                "val/dice", "val/iou", "lr-AdamW"):
        assert key in keys, f"{key} not logged; metrics.csv has {sorted(keys)}"
    # The combined value is the weighted sum of the logged terms (weights 1 and 1).
    for row in rows:
        if row["train/loss"]:
            assert float(row["train/loss"]) == pytest.approx(float(row["train/loss_bce"]) + float(row["train/loss_dice"]), rel=1e-4)
    dice = column(rows, "val/dice")
    assert len(dice) == 2 and value == pytest.approx(max(dice), abs=1e-6)
    assert sorted(p.name for p in (run / "predictions").glob("*.png")) == ["epoch_000.png", "epoch_001.png"]
    assert (run / "config.yaml").is_file()
    ckpts = {p.name for p in (run / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("best_epoch") for n in ckpts)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["task"] == "binary"
    assert ckpt["config"]["loss"]["terms"]["dice"]["mode"] == "binary"  # resolved, plain
    assert isinstance(ckpt["config"], dict) and ckpt["config"]["model"]["num_classes"] == 1


@pytest.mark.slow
def test_multiclass_logs_per_class_metrics_and_tensorboard_images(compose_cfg, tmp_path):
    cfg = compose_cfg("task=multiclass", "num_classes=4", "loss=ce_dice", "logger=tensorboard",
                      "trainer.limit_train_batches=2")
    train(cfg)
    run = tmp_path / "run"
    keys = set(read_metrics(run)[0])
    for c in range(4):
        assert f"val/dice_class{c}" in keys and f"val/iou_class{c}" in keys
    assert "train/loss_ce" in keys and "train/loss_dice" in keys
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "val/predictions" in events.Tags()["images"]
    assert "val/dice" in events.Tags()["scalars"]


@pytest.mark.slow
def test_short_fit_lowers_the_loss_and_reaches_dice(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "data.image_size=48", "data.num_samples=80", "data.batch_size=8", "trainer.max_epochs=10",
        "optimizer.lr=0.005", "callbacks.prediction_grid=null",
    )
    value = train(cfg)
    rows = read_metrics(tmp_path / "run")
    loss = column(rows, "train/loss")
    assert len(loss) == 10 and loss[-1] < 0.6 * loss[0], loss
    assert value >= 0.7, f"best val/dice {value:.3f}; per epoch {column(rows, 'val/dice')}"


@pytest.mark.slow
def test_train_py_entry_point_writes_a_timestamped_run_folder(tmp_path):
    """The real Hydra entry point in a subprocess: config, .hydra/, log file in logs/runs/<time>/."""
    cmd = [sys.executable, "train.py", "debug=fast_dev_run", *TINY, f"paths.log_dir={tmp_path}"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "config.yaml").is_file()
    assert (run / "train.log").read_text().count("Best val/dice") == 1
    assert "Run folder" in out.stdout + out.stderr
