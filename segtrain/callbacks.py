"""PredictionGrid: after each validation, a picture of what the network sees and predicts, readable at a glance.

One row per validation image (the first ``num_images`` validation images, gathered over as many
validation batches as that takes: at native resolution a batch holds one whole image), under a
title with the image's name (its file stem, where the data has names) and Dice; four titled
columns:

    image | target | prediction | errors (false positives, false negatives)

and a legend naming every class colour and the two error colours. The masks are drawn over a
dimmed grey copy of the image, so class colours stand out on coloured scenes; small images are
enlarged by an integer factor (nearest neighbour: pixels stay sharp) to ``tile_size``; whole
images of different sizes each get their own row size. Volumes (batches ``[B, C, D, H, W]``):
``num_images`` counts volumes, each shown as ``slices_per_volume`` rows of axial slices through
its largest object, channel 0 under one display window (segtrain/volume_pictures.py), titled
``<case> z=<k>`` with the slice's Dice. Written to ``<dirpath>/epoch_XXX.png``
(its PNG text entry ``images`` lists the rows' names, one per line) by rank 0 only, and the same picture goes to TensorBoard
(``add_image("val/predictions", ...)``) and MLflow (``predictions/epoch_XXX.png`` artifact) when
such a logger is attached. Class ``k`` has the colour of the project's one colour table
(:func:`datamodules.masks.class_palette`), as in predict.py's masks; background is not drawn.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo
from torch import Tensor
from torchvision.utils import draw_segmentation_masks

from datamodules.masks import class_palette

from .atomic import storage_errors
from .task import logits_to_mask


def _to_uint8(image: Tensor) -> Tensor:
    """A normalised float image ``[C, H, W]`` as uint8 RGB for display (per-image min-max).

    The first three channels are shown (an RGB+NIR image as its RGB); fewer than three: the first, as grey.
    A uint8 image is already for display (a volume's slice under its volume's window) and is kept.
    """
    if image.dtype == torch.uint8:
        return image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
    image = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
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


#: Error colours: distinct from each other and from the first class colours of ``class_palette``.
FALSE_POSITIVE = (255, 0, 255)  # magenta: predicted, not in the target (or another class)
FALSE_NEGATIVE = (0, 255, 255)  # cyan: in the target, missed


def error_masks(pred: Tensor, target: Tensor, task: str, ignore_index: int | None = None) -> Tensor:
    """Boolean ``[2, H, W]``: false positives (incl. a wrong class) and false negatives of one sample.

    Args:
        pred, target: one sample's prediction and mask in the layout of :func:`masks_for_drawing`.
        ignore_index: target value counted neither way.
    """
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    if task == "multiclass":
        wrong = valid & (pred != target)
        return torch.stack([wrong & (pred != 0), wrong & (pred == 0) & (target != 0)])
    p, t = (pred > 0.5) & valid, (target > 0.5) & valid
    return torch.stack([(p & ~t).any(0), (~p & t).any(0)])


def sample_dice(pred: Tensor, target: Tensor, task: str, num_classes: int, ignore_index: int | None = None) -> float:
    """One sample's Dice: mean over the foreground classes present in target or prediction (1.0 if none)."""
    if task == "multiclass":
        valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
        p = torch.stack([(pred == c) & valid for c in range(1, num_classes)])
        t = torch.stack([(target == c) & valid for c in range(1, num_classes)])
    else:
        valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
        p, t = (pred > 0.5) & valid, (target > 0.5) & valid
    inter = (p & t).flatten(1).sum(1).float()
    total = (p.flatten(1).sum(1) + t.flatten(1).sum(1)).float()
    present = total > 0
    return float((2 * inter[present] / total[present]).mean()) if present.any() else 1.0


def default_class_names(task: str, num_classes: int) -> list[str]:
    """Names of the drawn layers when the data gives none: "foreground", or "class k"."""
    if task == "binary":
        return ["foreground"]
    first = 1 if task == "multiclass" else 0
    return [f"class {k}" for k in range(first, first + (num_classes - first))]


def legend_entries(task: str, num_classes: int, class_names: list[str] | None = None) -> list[tuple[str, tuple[int, int, int]]]:
    """``(name, colour)`` of every drawn layer: the one legend of the training pictures and predict.py's overlays.

    Args:
        task, num_classes: the task (the layers: :func:`masks_for_drawing`, colours: :func:`drawing_colors`).
        class_names: as ``data.class_names`` takes them -- every class, the background first for
            multiclass (binary: the foreground, or ``[background, foreground]``) -- or the drawn
            layers' names alone (a datamodule's ``class_names``); ``None``: "foreground" / "class k".

    Raises:
        ValueError: a name count that fits neither form.
    """
    colors = drawing_colors(task, num_classes)
    if not class_names:
        return list(zip(default_class_names(task, num_classes), colors))
    names = [str(n) for n in class_names]
    if task != "multilabel" and len(names) == len(colors) + 1:
        names = names[1:]  # the background first: it is not drawn
    if len(names) != len(colors):
        raise ValueError(
            f"{len(names)} class names {names[:8]} do not fit task={task} num_classes={num_classes}: give one name per "
            f"class ({'the background first' if task == 'multiclass' else 'one per label' if task == 'multilabel' else 'the foreground'})."
        )
    return list(zip(names, colors))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def legend_strip(entries: list[tuple[str, tuple[int, int, int]]], width: int, font_size: int = 14) -> Image.Image:
    """A white strip of colour squares with their names, wrapped to ``width`` pixels (also for predict.py's overlays)."""
    font = _font(font_size)
    box, gap, pad = font_size, font_size // 2, 6
    lines: list[list[tuple[str, tuple[int, int, int], int]]] = [[]]
    x = pad
    for name, color in entries:
        w = box + gap + int(font.getlength(name)) + 2 * gap
        if lines[-1] and x + w > width - pad:
            lines.append([])
            x = pad
        lines[-1].append((name, color, x))
        x += w
    height = pad + len(lines) * (box + pad)
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    for row, line in enumerate(lines):
        y = pad + row * (box + pad)
        for name, color, x0 in line:
            draw.rectangle([x0, y, x0 + box, y + box], fill=tuple(color), outline="black")
            draw.text((x0 + box + gap, y + box // 2), name, fill="black", font=font, anchor="lm")
    return strip


def _to_pil(tile: Tensor, factor: int) -> Image.Image:
    image = Image.fromarray(tile.permute(1, 2, 0).numpy())
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


class PredictionGrid(L.Callback):
    """Save the image / target / prediction / errors grid after each validation epoch (module docstring).

    Args:
        dirpath: folder for ``epoch_XXX.png`` (created on first write).
        num_images: rows of the grid: the first ``num_images`` validation images, from as many
            batches as needed.
        every_n_epochs: write every n-th validation epoch.
        alpha: opacity of the mask colours over the dimmed image.
        tile_size: smaller images are enlarged by an integer factor to about this many pixels;
            larger ones are shown at their own size.
        class_names: names for the legend, as ``data.class_names`` (multiclass: the background
            first) or the drawn classes' alone (:func:`legend_entries`); default: the datamodule's
            ``class_names``, else "class k".
        slices_per_volume: rows per validation volume (batches ``[B, C, D, H, W]``): axial slices
            through the largest object of the target (segtrain/volume_pictures.py).
    """

    def __init__(
        self,
        dirpath: str,
        num_images: int = 4,
        every_n_epochs: int = 1,
        alpha: float = 0.6,
        tile_size: int = 192,
        class_names: list[str] | None = None,
        slices_per_volume: int = 3,
    ) -> None:
        if num_images < 1 or every_n_epochs < 1 or tile_size < 1 or slices_per_volume < 1:
            raise ValueError(
                f"num_images, every_n_epochs, tile_size and slices_per_volume must be >= 1, got {num_images}, "
                f"{every_n_epochs}, {tile_size}, {slices_per_volume}"
            )
        self.slices_per_volume = int(slices_per_volume)
        #: Images (or volumes) gathered for this epoch's picture: a volume gives several rows.
        self._taken = 0
        self.dirpath = str(dirpath)
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.alpha = float(alpha)
        self.tile_size = int(tile_size)
        self.class_names = list(class_names) if class_names else None
        #: The collected samples: ``(images, masks, logits, names)``, one list entry per image.
        self._batch: tuple[list[Tensor], list[Tensor], list[Tensor], list[str | None]] | None = None
        #: The row titles of the last picture written (also in its PNG text entry ``images``).
        self.last_rows: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.class_names and hasattr(pl_module, "task"):  # a wrong name count fails now, not after an epoch
            legend_entries(pl_module.task, pl_module.num_classes, self.class_names)

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx != 0 or not self._active(trainer):
            return
        if batch_idx == 0 or self._batch is None:
            self._batch = ([], [], [], [])
            self._taken = 0
        images, masks, all_logits, names = self._batch
        need = self.num_images - self._taken
        if need <= 0:
            return
        image = batch["image"][:need]
        with torch.no_grad():
            # Whole images (any size), as validation sees them.
            predict = getattr(pl_module, "predict_logits", pl_module)
            logits = predict(image)
        batch_names = list(batch.get("name") or [])[: len(image)] if isinstance(batch, dict) else []
        self._taken += len(image)
        if image.ndim == 5:  # volumes [B, C, D, H, W]: a few axial slices each, as 2D samples
            self._add_volume_slices(pl_module, image, batch, logits, batch_names)
            return
        for i in range(len(image)):
            images.append(image[i].detach().cpu())
            masks.append(batch["mask"][i].detach().cpu())
            all_logits.append(logits[i].detach().float().cpu())
            names.append(str(batch_names[i]) if i < len(batch_names) else None)

    def _add_volume_slices(self, pl_module: L.LightningModule, image: Tensor, batch: dict[str, Any], logits: Tensor,
                           batch_names: list[Any]) -> None:
        """Each volume of the batch as :attr:`slices_per_volume` 2D samples (segtrain/volume_pictures.py)."""
        from .volume_pictures import volume_samples  # it draws with this module's helpers: imported on use

        images, masks, all_logits, names = self._batch
        ignore_index = getattr(pl_module, "hparams", {}).get("ignore_index")
        for i in range(len(image)):
            name = str(batch_names[i]) if i < len(batch_names) else f"val volume {self._taken - len(image) + i}"
            samples = volume_samples(image[i].detach().cpu(), batch["mask"][i].detach().cpu(),
                                     logits[i].detach().float().cpu(), pl_module.task, name,
                                     self.slices_per_volume, ignore_index)
            for img, mask, slice_logits, slice_name in samples:
                images.append(img)
                masks.append(mask)
                all_logits.append(slice_logits)
                names.append(slice_name)

    def render(
        self,
        image: Tensor,
        mask: Tensor,
        logits: Tensor,
        task: str,
        num_classes: int,
        class_names: list[str] | None = None,
        ignore_index: int | None = None,
        sample_names: list[str | None] | None = None,
    ) -> Tensor:
        """The grid as a uint8 ``[3, H', W']`` tensor (rows: samples; columns: image, target, prediction, errors).

        ``image``, ``mask``, ``logits``: batched tensors, or sequences of one sample each (whole
        images of different sizes); ``sample_names``: each row's title (default "val image i").
        """
        legend = legend_entries(task, num_classes, class_names or self.class_names)
        colors = [color for _, color in legend]
        rows = []
        for i in range(len(image)):
            pred = logits_to_mask(logits[i][None], task)[0]
            factor = max(1, round(self.tile_size / image[i].shape[-2]))
            img = _to_uint8(image[i])
            grey = (img.float().mean(0, keepdim=True) * 0.6 + 40).clamp(0, 255).to(torch.uint8).expand(3, -1, -1)
            target = mask[i] if ignore_index is None else torch.where(mask[i] == ignore_index, torch.zeros_like(mask[i]), mask[i])
            tiles = [img]
            for m in (target, pred):
                tiles.append(draw_segmentation_masks(grey, masks_for_drawing(m, task, num_classes), alpha=self.alpha, colors=colors))
            errors = error_masks(pred, mask[i], task, ignore_index)
            tiles.append(draw_segmentation_masks(grey, errors, alpha=0.9, colors=[FALSE_POSITIVE, FALSE_NEGATIVE]))
            dice = sample_dice(pred, mask[i], task, num_classes, ignore_index)
            title = sample_names[i] if sample_names and sample_names[i] else f"val image {i}"
            rows.append((f"{title}: Dice {dice:.3f}", [_to_pil(t, factor) for t in tiles]))
        return _compose(rows, ["image", "target", "prediction", "errors"],
                        [*legend, ("false positive", FALSE_POSITIVE), ("false negative", FALSE_NEGATIVE)])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or not self._active(trainer):
            return
        image, mask, logits, *rest = self._batch
        self._batch = None
        if len(image) == 0:
            return
        sample_names = list(rest[0]) if rest else [None] * len(image)
        self.last_rows = [n or f"val image {i}" for i, n in enumerate(sample_names)]
        names = self.class_names or getattr(trainer.datamodule, "class_names", None)
        ignore_index = getattr(pl_module, "hparams", {}).get("ignore_index")
        grid = self.render(image, mask, logits, pl_module.task, pl_module.num_classes, names, ignore_index, self.last_rows)
        path = os.path.join(self.dirpath, f"epoch_{trainer.current_epoch:03d}.png")
        info = PngInfo()
        info.add_text("images", "\n".join(self.last_rows))
        with storage_errors(path, "the prediction picture", kept="The checkpoints and metrics saved so far are kept. "):
            os.makedirs(self.dirpath, exist_ok=True)
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path, pnginfo=info)
        for logger in trainer.loggers:
            kind = type(logger).__name__
            if kind == "TensorBoardLogger":
                logger.experiment.add_image("val/predictions", grid, global_step=trainer.global_step)
            elif kind == "MLFlowLogger":
                logger.experiment.log_image(logger.run_id, grid.permute(1, 2, 0).numpy(), artifact_file=f"predictions/{os.path.basename(path)}")


def _compose(
    rows: list[tuple[str, list[Image.Image]]], titles: list[str], legend: list[tuple[str, tuple[int, int, int]]]
) -> Tensor:
    """Column titles, one titled row per sample, the legend at the bottom; white background.

    Rows may differ in size (whole images): a column is as wide as its widest tile, each row as
    tall as its own tiles.
    """
    pad = 6
    tile_w = max(tiles[0].width for _, tiles in rows)
    font_size = max(12, min(18, tile_w // 10))
    font = _font(font_size)
    text_h = font_size + 2 * pad
    width = pad + len(titles) * (tile_w + pad)
    header = text_h
    height = header + sum(text_h + tiles[0].height + pad for _, tiles in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((pad + c * (tile_w + pad) + tile_w // 2, text_h // 2), title, fill="black", font=font, anchor="mm")
    y = header
    for label, tiles in rows:
        draw.text((pad, y + text_h // 2), label, fill="black", font=font, anchor="lm")
        for c, tile in enumerate(tiles):
            canvas.paste(tile, (pad + c * (tile_w + pad), y + text_h))
        y += text_h + tiles[0].height + pad
    strip = legend_strip(legend, width, font_size)
    full = Image.new("RGB", (width, height + strip.height), "white")
    full.paste(canvas, (0, 0))
    full.paste(strip, (0, height))
    return torch.from_numpy(np.asarray(full).copy()).permute(2, 0, 1)
