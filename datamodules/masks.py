"""The data contract of the datamodules: valid ``(task, num_classes)`` pairs, mask encoding per task.

Layout of ``batch["mask"]`` (:data:`MASK_LAYOUT`, docs/ARCHITECTURE.md):

* ``binary``: float32 ``[B, 1, H, W]`` in {0, 1} (``num_classes`` must be 1),
* ``multiclass``: int64 ``[B, H, W]`` with class indices ``0 .. num_classes - 1``; class 0 is the
  background (optionally ``ignore_index`` where the mask has no label),
* ``multilabel``: float32 ``[B, C, H, W]`` in {0, 1}, ``C = num_classes`` independent channels.

The rules for the pair live here, below the harness: ``segtrain`` imports this module (its
``segtrain/task.py`` maps the pair to network channels, loss mode and metrics), never the other
way round. :func:`class_palette` is the one colour table of the project (colour masks written
for the folder datamodule, predicted palette PNGs, overlays and training pictures).
"""

from __future__ import annotations

import colorsys
import numbers
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

TASKS = ("binary", "multiclass", "multilabel")

# What ``batch["mask"]`` looks like for each task (docs/ARCHITECTURE.md, "Task and tensors").
MASK_LAYOUT = {
    "binary": "float32 [B, 1, H, W] in {0, 1}",
    "multiclass": "int64 [B, H, W] class indices 0..num_classes-1",
    "multilabel": "float32 [B, C, H, W] in {0, 1}",
}

# Hand-picked distinct colours; colour 0 (background) is black.
_BASE_COLORS = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
)


def validate_task(task: Any, num_classes: Any) -> None:
    """Raise ``ValueError`` unless ``(task, num_classes)`` is a valid pair.

    Args:
        task: ``binary`` | ``multiclass`` | ``multilabel``.
        num_classes: an int; binary needs 1 (one foreground channel), multiclass >= 2 (class 0
            is the background), multilabel >= 1 (one channel per label).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got task={task!r} (set e.g. task=multiclass)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"num_classes must be an integer, got num_classes={num_classes!r}")
    if num_classes < 0:
        raise ValueError(f"num_classes must not be negative, got num_classes={num_classes}")
    if task == "binary" and num_classes != 1:
        raise ValueError(
            f"task=binary needs num_classes=1 (one foreground channel), got num_classes={num_classes}; "
            "for several classes use task=multiclass (one class per pixel) or task=multilabel (overlapping labels)"
        )
    if task == "multiclass" and num_classes < 2:
        raise ValueError(
            f"task=multiclass needs num_classes >= 2 (class 0 is the background), got num_classes={num_classes}; "
            "for a single foreground class use task=binary num_classes=1"
        )
    if task == "multilabel" and num_classes < 1:
        raise ValueError(f"task=multilabel needs num_classes >= 1 (one channel per label), got num_classes={num_classes}")


def class_palette(num_colors: int) -> np.ndarray:
    """``[num_colors, 3]`` uint8 RGB colours, ``palette[k]`` for class ``k``; colour 0 (background) is black.

    The first 16 are hand-picked to be distinct; beyond them hues are spread by the golden
    ratio, so any class count gets colours without repeats.
    """
    base = np.array(_BASE_COLORS[:num_colors], dtype=np.uint8).reshape(-1, 3)
    extra = [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.8, 0.95))
        for i in range(max(num_colors - len(_BASE_COLORS), 0))
    ]
    return np.concatenate([base, np.array(extra, dtype=np.uint8).reshape(-1, 3)])


def mask_dtype(task: str, num_classes: int, ignore_index: int | None = None) -> np.dtype:
    """The numpy dtype a mask is stored in before augmentation (uint8 where the values fit)."""
    top = num_classes - 1 if task == "multiclass" else 1
    fits = top <= 255 and (ignore_index is None or 0 <= ignore_index <= 255)
    return np.dtype(np.uint8) if fits else np.dtype(np.int32)


def reserved_pad_value(task: str, num_classes: int) -> int:
    """The mask value of padded pixels when the files have no ``ignore_index``: one no class uses.

    255 (it fits the uint8 masks) unless a multiclass task has a class 255; then ``num_classes``.
    Binary and multilabel masks are 0/1 once decoded, so a 0/255 file's 255 is never confused with it.
    The harness gives the losses and metrics this value as their ``ignore_index`` when padding occurs.
    """
    top = num_classes - 1 if task == "multiclass" else 1
    return 255 if top < 255 else top + 1


def encode_mask(mask: torch.Tensor, task: str) -> torch.Tensor:
    """Give an augmented mask tensor its per-task dtype and layout.

    Args:
        mask: ``[H, W]`` (binary, multiclass) or ``[C, H, W]`` (multilabel) integer tensor, as
            ``ToTensorV2(transpose_mask=True)`` returns it.
        task: ``binary``, ``multiclass`` or ``multilabel``.

    Returns:
        binary: float32 ``[1, H, W]``; multiclass: int64 ``[H, W]``; multilabel: float32 ``[C, H, W]``.
    """
    if task == "binary":
        return mask.reshape(1, *mask.shape[-2:]).float()
    if task == "multiclass":
        return mask.long()
    return mask.float()


def _describe(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return shown + (f", ... ({len(values)} distinct)" if len(values) > limit else "")


def distinct_values(mask: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer mask, as ``np.unique(mask)`` gives them.

    A mask is read on every training step, and ``np.unique`` (a hash table) costs about as much
    as decoding the PNG; a histogram lists the values of 8- and 16-bit masks in a fraction of that.
    """
    if mask.dtype == np.uint8:
        # As one column: OpenCV reads a 3D array [C, H, W] as an image with channels (volumes, stacks).
        hist = cv2.calcHist([np.ascontiguousarray(mask).reshape(-1, 1)], [0], None, [256], [0, 256])
        return np.flatnonzero(hist.ravel()).astype(np.uint8)
    if mask.dtype == np.uint16:
        return np.flatnonzero(np.bincount(mask.ravel(), minlength=1)).astype(np.uint16)
    if mask.dtype.kind in "ui" and mask.size and 0 <= int(mask.min()) and int(mask.max()) < 1 << 16:
        # wider integers holding small non-negative values (an int32 mask with ignore_index 255)
        return np.flatnonzero(np.bincount(mask.ravel())).astype(mask.dtype)
    return np.unique(mask)


def _within(mask: np.ndarray, top: int) -> bool:
    """Whether every value of ``mask`` lies in ``0 .. top`` (two reductions, no copy)."""
    if mask.size == 0:
        return True
    if mask.dtype.kind not in "ui":
        return False
    return int(mask.max()) <= top and (mask.dtype.kind == "u" or int(mask.min()) >= 0)


def binary_values(
    mask: np.ndarray, path: str, bit_depth_max: int = 255, ignore_index: int | None = None
) -> np.ndarray:
    """Map a binary mask stored as 0/1 or 0/255 (0/65535 for 16-bit files) to 0/1.

    Args:
        mask: the mask's values as read from ``path``.
        path: the file, for error messages.
        bit_depth_max: the "on" value of a 0/max mask (255 for 8-bit, 65535 for 16-bit files).
        ignore_index: a further allowed value meaning "not labelled", kept as it is (then the mask
            may only use 0/max for the classes if ``ignore_index != max``).

    Returns:
        uint8 (int32 if ``ignore_index`` does not fit) mask of 0/1 (and ``ignore_index``).

    Raises:
        ValueError: naming ``path`` if the mask holds any other value (anti-aliased edges, a
            lossy JPEG mask, an index mask with several classes).
    """
    dtype = np.uint8 if ignore_index is None or 0 <= ignore_index <= 255 else np.int32
    if _within(mask, 1):  # the common 0/1 mask: one max() instead of listing the values
        return mask.astype(dtype, copy=False)
    values = distinct_values(mask)
    labels = values if ignore_index is None else values[values != ignore_index]
    if np.isin(labels, (0, 1)).all():
        return mask.astype(dtype, copy=False)
    if np.isin(labels, (0, bit_depth_max)).all():
        out = (mask == bit_depth_max).astype(dtype)
        if ignore_index is not None:
            out[mask == ignore_index] = ignore_index
        return out
    hint = f" (plus ignore_index={ignore_index})" if ignore_index is not None else ""
    raise ValueError(
        f"Mask {path} has values {{{_describe(labels)}}} that fit no class of a binary task: a binary "
        f"mask holds 0/1 or 0/{bit_depth_max}{hint}. Threshold the mask (lossy JPEG masks also blur "
        "edges: save masks as PNG), or use task=multiclass for an index mask."
    )


def index_values(
    mask: np.ndarray, path: str, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Check a multiclass index mask: every value in ``0 .. num_classes-1`` (or ``ignore_index``).

    Raises:
        ValueError: naming ``path`` and the offending values.
    """
    if _within(mask, num_classes - 1):  # every value a class: one max() instead of listing the values
        return mask
    values = distinct_values(mask)
    bad = values[(values < 0) | (values >= num_classes)]
    if ignore_index is not None:
        bad = bad[bad != ignore_index]
    if bad.size:
        hint = f" (or ignore_index={ignore_index})" if ignore_index is not None else ""
        raise ValueError(
            f"Mask {path} has values {{{_describe(bad)}}} that fit no class: with num_classes="
            f"{num_classes} a multiclass mask holds 0..{num_classes - 1}{hint}. Raise num_classes, "
            f"set the top-level ignore_index={int(bad[-1])} for an 'unlabelled' value (it serves the data, "
            "the losses and the metrics), or give data.palette for colour masks."
        )
    return mask


def palette_to_index(mask_rgb: np.ndarray, palette: Sequence[Sequence[int]], path: str) -> np.ndarray:
    """Map an RGB colour mask ``[H, W, 3]`` to class indices with ``palette[k] = (r, g, b)`` of class k.

    Raises:
        ValueError: naming ``path`` and the first colours that are not in the palette.
    """
    colors = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    # One int per colour (r * 2^16 + g * 2^8 + b) turns colour lookup into a 1-D search.
    keys = (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2]
    pixels = mask_rgb[..., :3].astype(np.int64)
    codes = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], codes).clip(0, len(keys) - 1)
    found = keys[order][pos] == codes
    if not found.all():
        unknown = np.unique(codes[~found])
        shown = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown[:5].tolist()]
        raise ValueError(
            f"Mask {path} has colours {shown}{' ...' if unknown.size > 5 else ''} that are not in "
            f"data.palette ({len(keys)} colours, palette[k] is the RGB colour of class k)."
        )
    return order[pos].astype(np.int32)
