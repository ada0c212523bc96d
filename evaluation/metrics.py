"""Per image and per class scores: :func:`score_image`, the metric names and their direction.

Why per image: a mean over pooled pixels (val/dice) is dominated by the large images and the
large classes, and hides the images a loss gets wrong; boundary and topology metrics are per
object anyway. Overlap counts come from torchmetrics' confusion matrix, HD95 and NSD from MONAI
(surface.py), clDice and the component count from skimage / scipy (topology.py): nothing
here counts pixels or measures distances by hand. What is ours is the rule for the empty cases
(:data:`EMPTY_RULES`), which none of them defines the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_confusion_matrix,
    multiclass_confusion_matrix,
    multilabel_confusion_matrix,
)

from .names import BASE_METRICS, EMPTY_RULES, HIGHER_IS_BETTER, METRICS, TOPOLOGY_METRICS  # noqa: F401 -- re-exported
from .options import Options, Prepared, prepare
from .surface import boundary_scores
from .topology import cldice, components_error

def metric_names(topology: bool) -> tuple[str, ...]:
    """The metric columns of an evaluation with or without the topology metrics."""
    return METRICS if topology else BASE_METRICS


def _tensor(array: np.ndarray, widen: bool = False) -> torch.Tensor:
    # torch has no arithmetic for uint16/uint32; ``widen``: room for torchmetrics' negative markers.
    if widen or array.dtype in (np.uint16, np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(array))


def confusion_matrix(image: Prepared, options: Options) -> np.ndarray:
    """The image's pixel counts by torchmetrics, ignored pixels left out, as int64.

    binary: ``[2, 2]`` and multiclass ``[C, C]`` (rows = target class, columns = predicted,
    background included); multilabel: ``[C, 2, 2]``, one ``[[tn, fp], [fn, tp]]`` per label.
    One bincount pass serves both the per-image rows (:func:`class_counts`) and the evaluator's
    pooled matrix: torchmetrics' stat scores would be a second pass over the pixels, and a
    slower one (elementwise comparisons; ~3x this pass on a binary megapixel), a noticeable
    share of the MONAI time that the evaluation is meant to stay close to.
    """
    ignore = options.ignore_index if image.ignored is not None else None
    common = {"ignore_index": ignore, "validate_args": False}  # prepare() has checked the values
    if options.task == "multiclass":
        pred, target = _tensor(image.pred), _tensor(image.target)
        matrix = multiclass_confusion_matrix(pred.reshape(1, -1), target.reshape(1, -1), options.num_classes, **common)
    elif options.task == "binary":
        matrix = binary_confusion_matrix(_tensor(image.pred).reshape(-1), _tensor(image.target).reshape(-1), **common)
    elif options.num_classes == 1:  # torchmetrics' multilabel functions need >= 2 labels: one is a binary problem
        matrix = binary_confusion_matrix(_tensor(image.pred).reshape(-1), _tensor(image.target).reshape(-1),
                                         **common)[None]
    else:  # torchmetrics marks ignored pixels with negative values: an unsigned mask cannot hold them
        widen = ignore is not None
        matrix = multilabel_confusion_matrix(_tensor(image.pred, widen)[None], _tensor(image.target, widen)[None],
                                             options.num_classes, **common)
    return matrix.to(torch.int64).numpy()


def class_counts(matrix: np.ndarray, options: Options) -> list[tuple[int, int, int]]:
    """``(tp, fp, fn)`` of each evaluated class (:attr:`Options.classes`), read off a :func:`confusion_matrix`."""
    if options.task == "multilabel":
        return [(int(m[1, 1]), int(m[0, 1]), int(m[1, 0])) for m in matrix]
    out = []
    for cls in options.classes:
        tp = int(matrix[cls, cls])
        out.append((tp, int(matrix[:, cls].sum()) - tp, int(matrix[cls, :].sum()) - tp))
    return out


def class_masks(image: Prepared, options: Options, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(pred, target)`` of class ``cls``, the ignored pixels set to background on both sides."""
    ignored = image.ignored
    if options.task == "multilabel":
        pred, target = image.pred[cls] == 1, image.target[cls] == 1
        ignored = None if ignored is None else ignored[cls]
    else:
        pred, target = image.pred == cls, image.target == cls  # ignore_index is no class: target is clean
    if ignored is not None:
        pred &= ~ignored
    return pred, target


def _ratio(num: int, den: int, empty: float) -> float:
    return empty if den == 0 else num / den


def score_prepared(
    image: Prepared, options: Options, name: str, matrix: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """:func:`score_image` on masks :func:`evaluation.options.prepare` has checked (``matrix``: their confusion)."""
    matrix = confusion_matrix(image, options) if matrix is None else matrix
    rows = []
    for cls, (tp, fp, fn) in zip(options.classes, class_counts(matrix, options)):
        gt_pixels, pred_pixels = tp + fn, tp + fp
        pred, target = class_masks(image, options, cls)
        hd95, nsd = boundary_scores(pred, target, spacing=options.axes_spacing(pred.ndim),
                                    tolerance=options.tolerance, pred_pixels=pred_pixels, gt_pixels=gt_pixels)
        row: dict[str, Any] = {
            "image": name,
            "class": cls,
            # Both empty: nothing to find, nothing found wrongly -> 1; the other cases fall out of the counts.
            "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
            "iou": _ratio(tp, tp + fp + fn, 1.0),
            "precision": _ratio(tp, pred_pixels, 1.0),
            "recall": _ratio(tp, gt_pixels, 1.0),
            "hd95": hd95,
            "nsd": nsd,
        }
        if options.topology:
            row["cldice"] = float(cldice(pred, target))
            row["components_error"] = components_error(pred, target)
        row["gt_pixels"], row["pred_pixels"] = int(gt_pixels), int(pred_pixels)
        rows.append(row)
    return rows


def score_image(
    pred: Any, target: Any, *, task: str, num_classes: int, ignore_index: int | None = None,
    spacing: Sequence[float] | None = None, tolerance: float = 2.0, topology: bool = False, name: str = "image",
) -> list[dict[str, Any]]:
    """Score one image, one row (dict) per evaluated class.

    Args:
        pred, target: integer numpy arrays (or torch tensors) of one image. binary and multiclass:
            ``[H, W]`` (or ``[D, H, W]``) class indices (binary 0/1); multilabel: ``[C, H, W]``
            (or ``[C, D, H, W]``) 0/1. Only ``target`` may hold ``ignore_index``.
        task, num_classes: as in training (binary: ``num_classes=1``).
        ignore_index: target value of unlabelled pixels: they count nowhere (both masks are set
            to background there before the distance metrics, and left out of every count).
        spacing: pixel size per spatial axis (physical units), one value for every axis, or
            ``None`` = 1 per axis. A volume ``[D, H, W]``: the voxel size ``(z, y, x)`` in the
            order of its axes, as datamodules/volumes/io.py reads it (HD95 and NSD then in mm).
        tolerance: the NSD's boundary tolerance, in the units of ``spacing`` (pixels by default).
        topology: also compute ``cldice`` and ``components_error``.
        name: the ``image`` column.

    Returns:
        Rows for binary: class 1; multiclass: classes ``1..num_classes-1`` (background left out,
        as nnU-Net reports); multilabel: every label. Keys: ``image, class, dice, iou,
        precision, recall, hd95, nsd[, cldice, components_error], gt_pixels, pred_pixels``
        (pixel counts without the ignored pixels).

    Empty cases (:data:`EMPTY_RULES`), never NaN: both empty scores perfect (dice, iou,
    precision, recall, nsd, cldice 1; hd95 0; components_error 0); a target without the class but
    a prediction with it scores dice/iou/precision/nsd/cldice 0, recall 1, hd95 = the image
    diagonal in spacing units (the worst distance possible); a class missed entirely scores
    dice/iou/recall/nsd/cldice 0, precision 1, hd95 = the diagonal. Why: MONAI returns NaN or
    inf for these (MONAI #9095) and a NaN drops out of a mean, so a model would look better the
    more objects it misses; a missed object must score worst, not vanish from the mean.

    Raises:
        ValueError: a bad setting, shape, dtype or value, naming it and the fix.
    """
    options = Options(task, num_classes, ignore_index, spacing, tolerance, topology)
    return score_prepared(prepare(pred, target, options), options, name)
