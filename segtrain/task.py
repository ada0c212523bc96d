"""The one place that maps ``(task, num_classes)`` to everything that depends on it.

``task`` and ``num_classes`` are top-level config keys (``conf/train.yaml``), set only there.
From them follow:

* the network's output channels (:func:`out_channels`): ``1`` for binary, ``num_classes``
  otherwise -- logits ``[B, out_channels, H, W]``;
* the loss mode (:func:`loss_mode`): seglosses' vocabulary is the task name itself;
* the loss terms that can serve the task (:data:`TERMS_BY_TASK`);
* the torchmetrics arguments (:func:`metric_kwargs`);
* the mask encoding of a batch (:data:`MASK_LAYOUT`, produced by the datamodules).
"""

from __future__ import annotations

import numbers
from typing import Any

TASKS = ("binary", "multiclass", "multilabel")

# What ``batch["mask"]`` looks like for each task (docs/ARCHITECTURE.md, "Task and tensors").
MASK_LAYOUT = {
    "binary": "float32 [B, 1, H, W] in {0, 1}",
    "multiclass": "int64 [B, H, W] class indices 0..num_classes-1",
    "multilabel": "float32 [B, C, H, W] in {0, 1}",
}

# Loss classes (by seglosses name) that only make sense for some tasks. Anything not listed
# (Dice, Jaccard, Tversky, Focal, ...) takes ``mode`` and serves every task.
TERMS_BY_TASK = {
    "BCELoss": ("binary", "multilabel"),  # independent sigmoid per channel
    "CrossEntropyLoss": ("multiclass",),  # softmax over the channels, target = class indices
}

# The combination to suggest when a term cannot serve the task.
SUGGESTED_LOSS = {"binary": "bce_dice", "multiclass": "ce_dice", "multilabel": "bce_dice"}


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


def out_channels(task: str, num_classes: int) -> int:
    """Network output channels: 1 for binary, ``num_classes`` for multiclass and multilabel."""
    validate_task(task, num_classes)
    return 1 if task == "binary" else int(num_classes)


def loss_mode(task: str) -> str:
    """The ``mode`` argument of seglosses' Dice/Jaccard/Tversky/Focal losses for ``task``."""
    validate_task(task, 1 if task == "binary" else 2)
    return task


def check_term_serves_task(term_name: str, loss_class: type, task: str) -> None:
    """Raise ``ValueError`` if the loss class of term ``term_name`` cannot serve ``task``.

    Args:
        term_name: the key under ``loss.terms`` (named in the message).
        loss_class: the term's class (resolved from its ``_target_``); matched by class name and
            base classes, so subclasses of seglosses' BCELoss/CrossEntropyLoss are covered.
        task: the run's task.
    """
    for klass in loss_class.__mro__:
        allowed = TERMS_BY_TASK.get(klass.__name__)
        if allowed is not None and task not in allowed:
            raise ValueError(
                f"loss term {term_name!r} ({klass.__name__}) cannot serve task={task}: it works for "
                f"{' and '.join(allowed)} only. Use loss={SUGGESTED_LOSS[task]} for {task}, or pick "
                f"terms that fit, e.g. 'loss/terms=[{'ce' if task == 'multiclass' else 'bce'},dice]'"
            )


def metric_kwargs(task: str, num_classes: int, ignore_index: int | None = None) -> dict[str, Any]:
    """Arguments for ``torchmetrics.F1Score`` / ``torchmetrics.JaccardIndex`` for ``task``.

    Dice equals F1 and IoU equals the Jaccard index on pixels; both pool every pixel of the epoch
    (F1's default ``multidim_average="global"``; Jaccard is confusion-matrix based), which is the
    Dice of the whole validation set, not a mean of per-image scores. Per class
    (``average=None``) for multiclass/multilabel; a class that is absent from both prediction and
    target scores 1 (``zero_division=1``: nothing to find, nothing wrongly found).
    """
    validate_task(task, num_classes)
    kwargs: dict[str, Any] = {"task": task, "zero_division": 1.0}
    if task == "multiclass":
        kwargs.update(num_classes=int(num_classes), average=None)
    elif task == "multilabel":
        if num_classes == 1:
            # torchmetrics' multilabel metrics need >= 2 labels; one label is a binary problem.
            kwargs["task"] = "binary"
        else:
            kwargs.update(num_labels=int(num_classes), average=None)
    if ignore_index is not None:
        kwargs["ignore_index"] = int(ignore_index)
    return kwargs
