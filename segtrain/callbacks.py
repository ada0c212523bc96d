"""PredictionGrid: after each validation, a picture of what the network sees and predicts.

One row per validation image (the first ``num_images`` of the first validation batch):

    image | target overlay | prediction overlay

written to ``<dirpath>/epoch_XXX.png`` by rank 0 only, and sent to TensorBoard
(``add_image("val/predictions", ...)``) when a TensorBoardLogger is attached. Masks are drawn with
torchvision's ``draw_segmentation_masks`` in the project's one colour table
(:func:`datamodules.masks.class_palette`: class ``k`` has the colour of its palette-PNG entry
``k`` in predict.py's masks; background not drawn).
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchvision.utils import draw_segmentation_masks, make_grid, save_image

from datamodules.masks import class_palette

from .task import logits_to_mask


def _to_uint8(image: Tensor) -> Tensor:
    """A normalised float image ``[3, H, W]`` stretched to uint8 for display (per-image min-max)."""
    lo, hi = image.amin(), image.amax()
    return ((image - lo) / (hi - lo).clamp_min(1e-6) * 255).round().to(torch.uint8)


def masks_for_drawing(mask: Tensor, task: str, num_classes: int) -> Tensor:
    """Boolean ``[K, H, W]`` masks to draw for one sample's mask or prediction.

    Args:
        mask: binary ``[1, H, W]`` {0, 1}; multiclass ``[H, W]`` indices; multilabel ``[C, H, W]`` {0, 1}.
        task: ``binary`` | ``multiclass`` | ``multilabel``.
        num_classes: classes of the task.
    """
    if task == "multiclass":
        classes = torch.arange(1, num_classes, device=mask.device)
        return mask.unsqueeze(0) == classes[:, None, None]
    return mask > 0.5


def drawing_colors(task: str, num_classes: int) -> list[tuple[int, int, int]]:
    """One RGB colour per layer of :func:`masks_for_drawing`: ``class_palette`` without the black background.

    Multiclass layer ``i`` is class ``i + 1``; binary/multilabel layer ``i`` is label ``i``.
    """
    layers = num_classes - 1 if task == "multiclass" else num_classes
    return [tuple(c) for c in class_palette(layers + 1)[1:].tolist()]


class PredictionGrid(L.Callback):
    """Save image / target / prediction overlays after each validation epoch.

    Args:
        dirpath: folder for ``epoch_XXX.png`` (created on first write).
        num_images: rows of the grid (taken from the first validation batch).
        every_n_epochs: write every n-th validation epoch.
        alpha: opacity of the mask colours over the image.
    """

    def __init__(self, dirpath: str, num_images: int = 4, every_n_epochs: int = 1, alpha: float = 0.5) -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(f"num_images and every_n_epochs must be >= 1, got {num_images} and {every_n_epochs}")
        self.dirpath = str(dirpath)
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.alpha = float(alpha)
        self._batch: tuple[Tensor, Tensor, Tensor] | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not self._active(trainer):
            return
        n = self.num_images
        image = batch["image"][:n]
        with torch.no_grad():
            logits = pl_module(image)
        self._batch = (image.detach().cpu(), batch["mask"][:n].detach().cpu(), logits.detach().float().cpu())

    def render(self, image: Tensor, mask: Tensor, logits: Tensor, task: str, num_classes: int) -> Tensor:
        """The grid as a uint8 ``[3, H', W']`` tensor (rows: samples; columns: image, target, prediction)."""
        pred = logits_to_mask(logits, task)
        colors = drawing_colors(task, num_classes)
        tiles = []
        for i in range(image.shape[0]):
            img = _to_uint8(image[i])
            tiles.append(img)
            for m in (mask[i], pred[i]):
                tiles.append(draw_segmentation_masks(img, masks_for_drawing(m, task, num_classes), alpha=self.alpha, colors=colors))
        return make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=255)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or not self._active(trainer):
            return
        image, mask, logits = self._batch
        self._batch = None
        grid = self.render(image, mask, logits, pl_module.task, pl_module.num_classes)
        os.makedirs(self.dirpath, exist_ok=True)
        save_image(grid.float() / 255, os.path.join(self.dirpath, f"epoch_{trainer.current_epoch:03d}.png"))
        for logger in trainer.loggers:
            if type(logger).__name__ == "TensorBoardLogger":
                logger.experiment.add_image("val/predictions", grid, global_step=trainer.global_step)
