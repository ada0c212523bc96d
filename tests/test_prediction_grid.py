"""The per-validation prediction grid is readable: tiles at a useful size, four titled columns, a
legend, per-image Dice, false positives and false negatives in their own colours, and the same
picture in TensorBoard and MLflow. Drawn from hand-made masks, so every number is known.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from segtrain.callbacks import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    PredictionGrid,
    drawing_colors,
    error_masks,
    sample_dice,
)


def _binary_case(n: int = 2, size: int = 32):
    """Target: rows 8..23 of columns 8..23; prediction: the same square 4 rows lower."""
    image = torch.randn(n, 3, size, size)
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 8:24, 8:24] = 1
    logits = torch.full((n, 1, size, size), -5.0)
    logits[:, :, 12:28, 8:24] = 5.0
    return image, mask, logits


def _has_color(grid: torch.Tensor, color) -> bool:
    return bool((grid.permute(1, 2, 0) == torch.tensor(color, dtype=torch.uint8)).all(-1).any())


def test_errors_and_dice_per_image():
    _, mask, logits = _binary_case(1)
    pred = (logits[0] > 0).float()
    fp, fn = error_masks(pred, mask[0], "binary")
    assert int(fp.sum()) == 4 * 16 and bool(fp[24:28, 8:24].all())  # predicted below the target
    assert int(fn.sum()) == 4 * 16 and bool(fn[8:12, 8:24].all())  # target rows the prediction missed
    assert sample_dice(pred, mask[0], "binary", 1) == pytest.approx(2 * 12 * 16 / (2 * 256))
    # Multiclass: a wrong class is a false positive; ignored pixels count neither way.
    target = torch.tensor([[0, 1], [2, 255]])
    predicted = torch.tensor([[1, 2], [0, 1]])
    fp, fn = error_masks(predicted, target, "multiclass", ignore_index=255)
    assert fp.tolist() == [[True, True], [False, False]] and fn.tolist() == [[False, False], [True, False]]
    assert sample_dice(target.clone(), target, "multiclass", 3, ignore_index=255) == 1.0


def test_grid_layout_size_legend_and_colours():
    image, mask, logits = _binary_case(2, 32)
    grid = PredictionGrid(dirpath="unused", tile_size=192).render(image, mask, logits, "binary", 1, ["cell"])
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3
    tile = 32 * 6  # 32 px enlarged by 6 to reach tile_size
    assert grid.shape[2] > 4 * tile and grid.shape[1] > 2 * tile  # four columns, two rows, plus titles/legend
    assert grid.shape[2] < 4 * tile + 60  # ... and nothing else across
    for color in (FALSE_POSITIVE, FALSE_NEGATIVE, drawing_colors("binary", 1)[0]):
        assert _has_color(grid, color)  # drawn in the errors column and shown in the legend
    header = grid[:, :20]
    assert (header < 100).any()  # the column titles are written (dark text on white)


def test_large_images_are_not_enlarged():
    image, mask, logits = _binary_case(1, 256)
    grid = PredictionGrid(dirpath="unused").render(image, mask, logits, "binary", 1)
    assert 4 * 256 < grid.shape[2] < 4 * 256 + 60


class TensorBoardLogger:  # named as Lightning's: the callback dispatches on the type's name
    def __init__(self):
        self.images = []
        self.experiment = SimpleNamespace(add_image=lambda tag, img, global_step: self.images.append((tag, img)))


class MLFlowLogger:
    run_id = "run-1"

    def __init__(self):
        self.images = []
        self.experiment = SimpleNamespace(log_image=lambda run_id, img, artifact_file: self.images.append((artifact_file, img)))


def test_the_same_picture_goes_to_the_png_tensorboard_and_mlflow(tmp_path: Path):
    tb, mlf = TensorBoardLogger(), MLFlowLogger()
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=3, global_step=12,
                              loggers=[tb, mlf], datamodule=SimpleNamespace(class_names=["circle", "square"]))
    module = SimpleNamespace(task="multiclass", num_classes=3, hparams={"ignore_index": None})
    callback = PredictionGrid(dirpath=str(tmp_path))
    image = torch.randn(2, 3, 16, 16)
    mask = torch.randint(0, 3, (2, 16, 16))
    callback._batch = (image, mask, torch.randn(2, 3, 16, 16))
    callback.on_validation_epoch_end(trainer, module)
    png = np.asarray(Image.open(tmp_path / "epoch_003.png"))
    (tag, tb_image), = tb.images
    (artifact, mlflow_image), = mlf.images
    assert tag == "val/predictions" and artifact == "predictions/epoch_003.png"
    assert np.array_equal(tb_image.permute(1, 2, 0).numpy(), png) and np.array_equal(mlflow_image, png)


def test_an_unwritable_picture_folder_names_the_file(tmp_path: Path):
    """A failed picture write stops with the file's name (segtrain.atomic.storage_errors), not a bare OSError."""
    from segtrain.atomic import StorageError

    (tmp_path / "not_a_folder").write_text("a file where the folder should be")
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=0, global_step=1,
                              loggers=[], datamodule=SimpleNamespace(class_names=None))
    module = SimpleNamespace(task="binary", num_classes=1, hparams={"ignore_index": None})
    callback = PredictionGrid(dirpath=str(tmp_path / "not_a_folder" / "predictions"))
    callback._batch = (torch.randn(1, 3, 16, 16), (torch.rand(1, 1, 16, 16) > 0.5).float(), torch.randn(1, 1, 16, 16))
    with pytest.raises(StorageError, match="the prediction picture .*epoch_000.png"):
        callback.on_validation_epoch_end(trainer, module)


def test_whole_images_of_different_sizes_are_gathered_over_one_image_batches(tmp_path: Path):
    """Native resolution: each validation batch is one whole image; the picture takes the first num_images of them."""
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=0, global_step=1,
                              loggers=[], datamodule=SimpleNamespace(class_names=None))
    module = SimpleNamespace(task="binary", num_classes=1, hparams={"ignore_index": None},
                             predict_logits=lambda image: torch.randn(image.shape[0], 1, *image.shape[-2:]))
    callback = PredictionGrid(dirpath=str(tmp_path), num_images=3, tile_size=1)
    for i, (h, w) in enumerate([(40, 70), (64, 50), (30, 30), (50, 50)]):
        batch = {"image": torch.randn(1, 3, h, w), "mask": (torch.rand(1, 1, h, w) > 0.5).float(), "name": [f"s{i}"]}
        callback.on_validation_batch_end(trainer, module, None, batch, i)
    callback.on_validation_epoch_end(trainer, module)
    picture = Image.open(tmp_path / "epoch_000.png")
    assert picture.text["images"].splitlines() == callback.last_rows == ["s0", "s1", "s2"]
    # Shown at their own sizes (tile_size=1): columns as wide as the widest image, each row as tall as its own.
    assert picture.width == 6 + 4 * (70 + 6)
    assert picture.height > 40 + 64 + 30 + 3 * 20
