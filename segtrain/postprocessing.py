"""Postprocessing chosen on validation only: keep each class's largest connected component where that helps.

nnU-Net's ``determine_postprocessing`` rule, per class: the predictions of the validation images
are scored (Dice per image, torchmetrics) as they are and with only the largest connected
component of that class kept (the other components of the class become background); the
postprocessing is kept for the class when, and only when, it raises the class's mean validation
Dice. A class whose objects are many (cells, vessels in pieces) keeps its small components; a
class that is one organ loses its stray false positives.

The choice is a plain dict ``{"largest_component": [class, ...]}`` -- classes as the evaluation
names them: binary 1, multiclass 1..C-1, multilabel the label index -- written to
``<run>/evaluation/postprocessing.json`` and into the run's checkpoints
(``checkpoint["postprocessing"]``), and applied by scripts/predict.py (:func:`apply_postprocessing`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.classification import binary_f1_score


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` (bool, any spatial dims) with only its largest connected component (face connectivity)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _class_mask(pred: np.ndarray, task: str, c: int) -> np.ndarray:
    return pred[c] > 0 if task == "multilabel" else pred == c


def _with_largest(pred: np.ndarray, task: str, c: int) -> np.ndarray:
    """``pred`` with class ``c`` reduced to its largest component (the rest of it becomes background)."""
    out = pred.copy()
    keep = largest_component(_class_mask(pred, task, c))
    if task == "multilabel":
        out[c] = keep.astype(pred.dtype)
    else:
        out[(pred == c) & ~keep] = 0
    return out


def apply_postprocessing(pred: np.ndarray, task: str, plan: Mapping[str, Any] | None) -> np.ndarray:
    """Apply a chosen plan to one image's predicted mask (binary/multiclass ``[*spatial]``, multilabel ``[C, *spatial]``)."""
    if not plan:
        return pred
    for c in plan.get("largest_component", []):
        pred = _with_largest(pred, task, int(c))
    return pred


def _dice(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None) -> float:
    p, t = torch.from_numpy(np.ascontiguousarray(pred)), torch.from_numpy(np.ascontiguousarray(target))
    if valid is not None:
        v = torch.from_numpy(valid)
        p, t = p[v], t[v]
    return float(binary_f1_score(p.int().ravel(), t.int().ravel(), zero_division=1.0))


def evaluated_classes(task: str, num_classes: int) -> list[int]:
    """The classes a postprocessing (and the evaluation) looks at: foreground classes or labels."""
    if task == "binary":
        return [1]
    if task == "multiclass":
        return list(range(1, num_classes))
    return list(range(num_classes))


def choose_postprocessing(
    preds: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    task: str,
    num_classes: int,
    ignore_index: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decide the largest-component postprocessing per class on validation predictions (module docstring).

    Args:
        preds, targets: one predicted and one target mask per validation image, as
            :func:`apply_postprocessing` takes them (targets may hold ``ignore_index``).

    Returns:
        ``(plan, report)``: the plan, and per class ``{"dice": before, "dice_largest_component": after,
        "kept": bool}`` for the record.
    """
    plan: dict[str, Any] = {"largest_component": []}
    report: dict[str, Any] = {}
    for c in evaluated_classes(task, num_classes):
        before, after = [], []
        for pred, target in zip(preds, targets):
            valid = None if ignore_index is None else (target[c] if task == "multilabel" else target) != ignore_index
            truth = _class_mask(target, task, c)
            before.append(_dice(_class_mask(pred, task, c), truth, valid))
            after.append(_dice(_class_mask(_with_largest(pred, task, c), task, c), truth, valid))
        kept = bool(before) and float(np.mean(after)) > float(np.mean(before))
        if kept:
            plan["largest_component"].append(c)
        report[str(c)] = {"dice": float(np.mean(before)) if before else None,
                          "dice_largest_component": float(np.mean(after)) if after else None, "kept": kept}
    return plan, report
