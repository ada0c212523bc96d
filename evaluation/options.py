"""What an evaluation is run with, checked once, and one image's masks checked against it.

Why here and not in each metric: a wrong setting (``ignore_index=1`` on a binary task, a
spacing with the wrong number of axes, a float mask from a network's raw output) should fail
with one ``ValueError`` that names the problem and the fix before any metric runs, not as a
shape error deep inside MONAI or torchmetrics -- or, worse, as a plausible number.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datamodules.masks import distinct_values, validate_task


@dataclass(frozen=True)
class Options:
    """The settings of one evaluation (the arguments of :func:`evaluation.score_image`), validated.

    ``spacing`` is kept as a tuple of floats (or ``None``: 1 per axis; one value: the same on
    every axis); its length is checked against each image's spatial axes in :func:`prepare`,
    since 2D and 3D are both allowed.
    """

    task: str
    num_classes: int
    ignore_index: int | None = None
    spacing: tuple[float, ...] | None = None
    tolerance: float = 2.0
    topology: bool = False

    def __post_init__(self) -> None:
        validate_task(self.task, self.num_classes)
        ignore = self.ignore_index
        if ignore is not None:
            if isinstance(ignore, bool) or not isinstance(ignore, numbers.Integral):
                raise ValueError(f"ignore_index must be an integer or None, got ignore_index={ignore!r}")
            top = self.num_classes - 1 if self.task == "multiclass" else 1
            if 0 <= ignore <= top:
                raise ValueError(
                    f"ignore_index={ignore} is also a class value of task={self.task} num_classes={self.num_classes} "
                    f"(0..{top}): its pixels would be both scored and ignored. Use a value no class uses "
                    "(e.g. ignore_index=255), or drop ignore_index."
                )
            object.__setattr__(self, "ignore_index", int(ignore))
        if self.spacing is not None:
            try:
                spacing = tuple(float(s) for s in np.asarray(self.spacing, dtype=float).reshape(-1))
            except (TypeError, ValueError):
                spacing = ()
            if not spacing or not all(math.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(
                    f"spacing must be positive pixel sizes, one per spatial axis (e.g. spacing=[0.5,0.5]) or one for "
                    f"every axis, or None for 1 per axis; got spacing={self.spacing!r}"
                )
            object.__setattr__(self, "spacing", spacing)
        if not _finite(self.tolerance) or self.tolerance < 0:
            raise ValueError(
                f"tolerance must be a finite number >= 0 (the NSD's boundary tolerance, in pixels, or in the units of "
                f"spacing when it is given); got tolerance={self.tolerance!r}"
            )
        object.__setattr__(self, "tolerance", float(self.tolerance))
        object.__setattr__(self, "topology", bool(self.topology))

    def axes_spacing(self, ndim: int) -> tuple[float, ...] | None:
        """``spacing`` for ``ndim`` spatial axes: one value given stands for every axis."""
        if self.spacing is None or len(self.spacing) == ndim:
            return self.spacing
        return self.spacing * ndim if len(self.spacing) == 1 else self.spacing

    @property
    def classes(self) -> list[int]:
        """The evaluated classes: binary 1; multiclass 1..num_classes-1 (background left out); multilabel all labels."""
        if self.task == "binary":
            return [1]
        return list(range(1 if self.task == "multiclass" else 0, self.num_classes))


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Prepared:
    """One image's masks after :func:`prepare`: integer numpy arrays, the layout checked.

    ``ignored`` is ``target == ignore_index`` (same shape as ``target``), or ``None`` when no pixel is ignored.
    """

    pred: np.ndarray
    target: np.ndarray
    ignored: np.ndarray | None


def _as_array(mask: Any, what: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()  # a GPU tensor is copied: the metrics below run on the CPU
    array = np.asarray(mask)
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"{what} is a {array.dtype} array: masks are integer class indices (binary, multilabel: 0/1). Turn "
            "a network's output into a mask first (threshold the probabilities, or argmax over the classes)."
        )
    return array


def _describe(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    return "{" + shown + (f", ... ({len(values)} distinct)" if len(values) > limit else "") + "}"


def _check_values(mask: np.ndarray, what: str, options: Options, ignore: int | None) -> None:
    """Every value a class (or ``ignore``): two reductions on a clean mask; a histogram lists the values otherwise."""
    top = options.num_classes - 1 if options.task == "multiclass" else 1
    if mask.size == 0 or (int(mask.max()) <= top and int(mask.min()) >= 0):
        return
    # A target holding ignore_index takes this path on every image: a histogram, no sort. Flat, because
    # distinct_values reads a 3-D uint8 array as one OpenCV image with channels (it is made for [H, W]).
    values = distinct_values(mask.reshape(-1))
    bad = values[(values < 0) | (values > top)]
    if ignore is not None:
        bad = bad[bad != ignore]
    if bad.size:
        held = f"0..{top}" if options.task == "multiclass" else "0/1"
        also = f" (or ignore_index={ignore})" if ignore is not None else ""
        hint = ("" if what.startswith("target") or ignore is None
                else " A prediction labels every pixel: it never holds ignore_index.")
        raise ValueError(
            f"{what} has values {_describe(bad)} that fit no class: with task={options.task} "
            f"num_classes={options.num_classes} a mask holds {held}{also}.{hint} Decode 0/255 masks to 0/1, check "
            "num_classes, or set ignore_index for an 'unlabelled' value of the target."
        )


def prepare(pred: Any, target: Any, options: Options) -> Prepared:
    """Check one image's ``pred`` and ``target`` against ``options`` (layout, dtype, values).

    Layouts: binary and multiclass ``[H, W]`` or ``[D, H, W]`` class indices; multilabel
    ``[C, H, W]`` or ``[C, D, H, W]`` 0/1 with ``C = num_classes``. Only the target may hold
    ``ignore_index``.

    Raises:
        ValueError: naming the problem (shape, dtype, values) and the fix.
    """
    p, t = _as_array(pred, "pred"), _as_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {tuple(p.shape)} but target has shape {tuple(t.shape)}: both masks of "
                         "an image must have the same size (resize the prediction back to the target's size).")
    channels = 1 if options.task == "multilabel" else 0
    spatial = p.shape[channels:]
    if len(spatial) not in (2, 3):
        layout = "[C, H, W] or [C, D, H, W]" if channels else "[H, W] or [D, H, W]"
        raise ValueError(f"task={options.task} takes masks of shape {layout} (2 or 3 spatial axes), "
                         f"got shape {tuple(p.shape)}")
    if channels and p.shape[0] != options.num_classes:
        raise ValueError(f"task=multilabel num_classes={options.num_classes} takes masks [C, ...] with "
                         f"C={options.num_classes} labels, got {p.shape[0]} channels (shape {tuple(p.shape)})")
    if options.spacing is not None and len(options.spacing) not in (1, len(spatial)):
        raise ValueError(f"spacing={list(options.spacing)} gives {len(options.spacing)} axes but the masks have "
                         f"{len(spatial)} spatial axes (shape {tuple(p.shape)}): give one pixel size per axis.")
    ignore = options.ignore_index
    if ignore is not None and not (np.iinfo(t.dtype).min <= ignore <= np.iinfo(t.dtype).max):
        ignore = None  # a uint8 target cannot hold ignore_index=-1: no pixel is ignored
    _check_values(p, "pred", options, None)
    _check_values(t, "target", options, ignore)
    ignored = None
    if ignore is not None:
        ignored = t == ignore
        if not ignored.any():
            ignored = None
    return Prepared(p, t, ignored)
