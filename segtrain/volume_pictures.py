"""Pictures of volumes: a few axial slices per volume, drawn with the panels of the 2D pictures.

A volume ``[C, D, H, W]`` does not fit a picture; a few axial slices (index ``z`` along ``D``) do.
Which ones matter: the slices through the largest object, where a reader sees whether the
network found it and where its border lies. So :func:`pick_slices` takes the largest connected
object of the target (of the prediction when there is no target: predict.py), its largest
cross-section first, and spreads the other slices over the object's extent in ``z``; an empty
volume shows evenly spaced slices.

The image panel is channel 0 under one display window for the whole volume
(:func:`display_window`: the CT window of the normalisation spec where there is one, else the
0.5-99.5 percentiles), so the slices of a volume are comparable -- a per-slice min-max would
brighten an empty slice into noise. The overlays use the colours, legend and layout of the
prediction grid (segtrain/callbacks.py), so a class looks the same in 2D and 3D pictures:

* :func:`volume_samples` turns one volume into 2D samples (the callback's rows: image | target |
  prediction | errors);
* :func:`volume_picture` draws one volume's slices for predict.py (image | prediction, plus
  target | errors when a target is given) with the legend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_segmentation_masks

from .callbacks import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    _compose,
    _to_pil,
    error_masks,
    legend_entries,
    masks_for_drawing,
)
from .task import logits_to_mask

#: Display window percentiles of channel 0 when the normalisation gives no CT window.
PERCENTILES = (0.5, 99.5)
#: Voxels sampled (evenly strided) for the percentiles: enough for two stable numbers, cheap on a CT.
WINDOW_SAMPLES = 1_000_000


def _foreground(mask: np.ndarray, ignore_index: int | None) -> np.ndarray:
    """Boolean ``[D, H, W]`` of the labelled voxels: any class > 0 (multilabel ``[C, D, H, W]``: any label)."""
    mask = np.asarray(mask)
    fg = mask > 0
    if ignore_index is not None:
        fg &= mask != ignore_index
    return fg.any(0) if fg.ndim == 4 else fg


def pick_slices(mask: Any, count: int = 3, ignore_index: int | None = None) -> list[int]:
    """Axial slice indices (along ``D``) through the largest object of ``mask``, sorted.

    Args:
        mask: ``[D, H, W]`` class indices (a target or a prediction; multilabel ``[C, D, H, W]``),
            numpy or torch.
        count: slices wanted (fewer when the volume has fewer).
        ignore_index: target value of unlabelled voxels (not an object).

    Returns:
        The slice of the largest cross-section of the largest connected object (foreground =
        any class), plus ``count - 1`` slices spread evenly over that object's ``z`` extent (its
        neighbours when the object is thinner); without foreground, evenly spaced slices.

    Raises:
        ValueError: ``count < 1`` or a mask that is not 3D.
    """
    from scipy import ndimage

    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    if int(count) < 1:
        raise ValueError(f"pick_slices: count must be >= 1, got {count}")
    fg = _foreground(mask, ignore_index)
    if fg.ndim != 3:
        raise ValueError(f"pick_slices takes a volume mask [D, H, W] (multilabel [C, D, H, W]), got shape {np.shape(mask)}")
    depth = fg.shape[0]
    count = min(int(count), depth)
    if not fg.any():
        return sorted({int(round((k + 1) * (depth - 1) / (count + 1))) for k in range(count)})
    labels, found = ndimage.label(fg)  # 6-connectivity: touching faces make one object
    sizes = np.bincount(labels.ravel(), minlength=found + 1)
    sizes[0] = 0
    area = (labels == int(sizes.argmax())).sum(axis=(1, 2))  # the largest object's cross-section per slice
    best = int(area.argmax())
    inside = np.flatnonzero(area)
    chosen = {best}
    for z in np.linspace(inside[0], inside[-1], count + 2)[1:-1]:  # evenly inside the extent, not its tips
        if len(chosen) == count:
            break
        chosen.add(int(round(z)))
    step = 1
    while len(chosen) < count:  # a thin object (or rounding onto ``best``): its neighbours, nearest first
        for z in (best - step, best + step):
            if 0 <= z < depth and len(chosen) < count:
                chosen.add(z)
        step += 1
    return sorted(chosen)


def display_window(channel: Any, spec: Mapping[str, Any] | None = None,
                   percentiles: Sequence[float] = PERCENTILES) -> tuple[float, float]:
    """``(low, high)`` intensities of channel 0 mapped to black and white, one for the whole volume.

    Args:
        channel: channel 0 of the volume ``[D, H, W]`` (raw file values or normalised), numpy or torch.
        spec: the channel's normalisation spec (datamodules/volumes/normalization.py); a ``ct``
            spec's ``lower`` / ``upper`` clip is the window, for raw CT values. ``None``: percentiles.
        percentiles: the window otherwise, of an evenly strided sample of the voxels.
    """
    if spec and spec.get("mode") == "ct" and spec.get("lower") is not None and spec.get("upper") is not None:
        return float(spec["lower"]), float(spec["upper"])
    if isinstance(channel, Tensor):
        channel = channel.detach().cpu().float().numpy()
    flat = np.asarray(channel).reshape(-1)
    sample = flat[:: max(1, flat.size // WINDOW_SAMPLES)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, list(percentiles)))
    return (low, high) if high > low else (low, low + 1.0)


def windowed(slice2d: Any, window: tuple[float, float]) -> Tensor:
    """One slice ``[H, W]`` as uint8 grey RGB ``[3, H, W]`` under ``window`` (clipped outside it)."""
    values = torch.as_tensor(np.asarray(slice2d.detach().cpu() if isinstance(slice2d, Tensor) else slice2d),
                             dtype=torch.float32)
    low, high = window
    grey = ((values - low) / (high - low)).clamp(0, 1).mul(255).round().to(torch.uint8)
    return grey[None].expand(3, -1, -1).contiguous()


def volume_samples(
    image: Tensor, mask: Tensor | None, logits: Tensor, task: str, name: str, count: int = 3,
    ignore_index: int | None = None, spec: Mapping[str, Any] | None = None,
) -> list[tuple[Tensor, Tensor, Tensor, str]]:
    """One volume as 2D samples for the prediction grid: ``(image, mask, logits, name)`` per picked slice.

    Args:
        image: ``[C, D, H, W]`` (normalised, as validation sees it).
        mask: the target in the training layout of one sample, with ``D`` third from the end
            (multiclass ``[D, H, W]``; binary ``[1, D, H, W]``); ``None``: slices by the prediction.
        logits: ``[K, D, H, W]``.
        task: decides how the logits become the prediction the slices may be picked by.
        name: the volume's name (case id); each sample is named ``<name> z=<k>``.
        count: slices per volume.
        ignore_index: target value of unlabelled voxels.
        spec: channel 0's normalisation spec, for the display window (:func:`display_window`).

    Returns:
        Samples whose image is uint8 ``[3, H, W]`` already windowed (the grid shows uint8 as it is).
    """
    if image.ndim != 4 or logits.ndim != 4:
        raise ValueError(f"volume_samples takes image [C, D, H, W] and logits [K, D, H, W], got shapes "
                         f"{tuple(image.shape)} and {tuple(logits.shape)}")
    pred = logits_to_mask(logits, task, spatial_dims=3)  # one volume [K, D, H, W]: the classes are dim 0
    by = mask if mask is not None and _foreground(mask.cpu().numpy(), ignore_index).any() else pred
    window = display_window(image[0], spec)
    samples = []
    for z in pick_slices(by, count, ignore_index):
        target = mask.select(-3, z) if mask is not None else None
        samples.append((windowed(image[0, z], window), target, logits.select(-3, z), f"{name} z={z}"))
    return samples


def _overlay(grey: Tensor, mask: Tensor, task: str, num_classes: int, colors: list, alpha: float) -> Tensor:
    return draw_segmentation_masks(grey, masks_for_drawing(mask, task, num_classes), alpha=alpha, colors=colors)


def volume_picture(
    channel0: Any, pred: Any, *, task: str = "multiclass", num_classes: int, class_names: Sequence[str] | None = None,
    target: Any = None, name: str = "volume", count: int = 3, spec: Mapping[str, Any] | None = None,
    ignore_index: int | None = None, alpha: float = 0.5, tile_size: int = 256,
) -> Image.Image:
    """A picture of one predicted volume: a titled row per picked slice, the legend below.

    Columns: image | prediction, and with a ``target``: image | target | prediction | errors
    (false positives, false negatives), as the training pictures.

    Args:
        channel0: the input's channel 0 ``[D, H, W]`` as read (raw values).
        pred: the predicted mask ``[D, H, W]`` (class indices; binary 0/1).
        task: ``multiclass`` (nnU-Net data) or ``binary``.
        num_classes: classes of the task, background included for multiclass.
        class_names: names for the legend (:func:`segtrain.callbacks.legend_entries`).
        target: the ground truth ``[D, H, W]``, when known; the slices follow it, else the prediction.
        name: the volume's name in the row titles.
        count: slices shown.
        spec: channel 0's normalisation spec: a CT spec's clip is the display window.
        ignore_index: target value of unlabelled voxels.
        alpha: opacity of the class colours.
        tile_size: slices smaller than this are enlarged by an integer factor (nearest neighbour).
    """
    pred = torch.as_tensor(np.ascontiguousarray(pred)).long()
    truth = None if target is None else torch.as_tensor(np.ascontiguousarray(target)).long()
    if task == "binary":  # the drawing layout of a binary sample: [1, ...] in {0, 1}
        pred = pred[None].float()
        truth = None if truth is None else truth[None].float()
    legend = legend_entries(task, num_classes, list(class_names) if class_names else None)
    colors = [c for _, c in legend]
    window = display_window(channel0, spec)
    by = truth if truth is not None and _foreground(truth.numpy(), ignore_index).any() else pred
    rows = []
    for z in pick_slices(by, count, ignore_index):
        img = windowed(np.asarray(channel0[z]), window)
        grey = (img.float() * 0.6 + 40).clamp(0, 255).to(torch.uint8)  # dimmed: the colours stand out
        p = pred.select(-3, z)
        tiles = [img]
        if truth is not None:
            t = truth.select(-3, z)
            clean = t if ignore_index is None else torch.where(t == ignore_index, torch.zeros_like(t), t)
            tiles.append(_overlay(grey, clean, task, num_classes, colors, alpha))
        tiles.append(_overlay(grey, p, task, num_classes, colors, alpha))
        if truth is not None:
            errors = error_masks(p, truth.select(-3, z), task, ignore_index)
            tiles.append(draw_segmentation_masks(grey, errors, alpha=0.9, colors=[FALSE_POSITIVE, FALSE_NEGATIVE]))
        factor = max(1, round(tile_size / img.shape[-2]))
        rows.append((f"{name} z={z}", [_to_pil(t, factor) for t in tiles]))
    titles = ["image", "target", "prediction", "errors"] if truth is not None else ["image", "prediction"]
    if truth is not None:
        legend = [*legend, ("false positive", FALSE_POSITIVE), ("false negative", FALSE_NEGATIVE)]
    grid = _compose(rows, titles, legend)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())
