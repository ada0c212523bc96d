"""The one place that maps ``(task, num_classes)`` to everything that depends on it.

``task`` and ``num_classes`` are top-level config keys (``conf/train.yaml``), set only there.
Which pairs are valid (:func:`validate_task`) and the mask encoding of a batch
(:data:`MASK_LAYOUT`) are the data contract, defined with the datamodules in
``datamodules/masks.py`` (the harness depends on the datamodules, not the reverse) and
re-exported here. From the pair follow:

* the network's output channels (:func:`out_channels`): ``1`` for binary, ``num_classes``
  otherwise -- logits ``[B, out_channels, H, W]``;
* the hard prediction from logits (:func:`logits_to_mask`): ``argmax`` or ``sigmoid > threshold``;
* the loss mode (:func:`loss_mode`): seglosses' vocabulary is the task name itself;
* the loss terms that can serve the task (:data:`TERMS_BY_TASK`);
* the torchmetrics arguments (:func:`metric_kwargs`).
"""

from __future__ import annotations

from typing import Any

from datamodules.masks import MASK_LAYOUT, TASKS, validate_task

__all__ = [
    "MASK_LAYOUT", "SUGGESTED_LOSS", "TASKS", "TERMS_BY_TASK", "check_term_serves_task", "logits_to_mask",
    "loss_mode", "metric_kwargs", "out_channels", "validate_task",
]

# Loss classes (by seglosses name) that only make sense for some tasks. Anything not listed
# (Dice, LogCoshDice, Jaccard, Tversky, Focal, ...) takes ``mode`` and serves every task.
TERMS_BY_TASK = {
    "BCELoss": ("binary", "multilabel"),  # independent sigmoid per channel
    "CrossEntropyLoss": ("multiclass",),  # softmax over the channels, target = class indices
    "TopKCrossEntropyLoss": ("multiclass",),
    "OhemCrossEntropyLoss": ("multiclass",),
    "TopKBCELoss": ("binary", "multilabel"),
    "OhemBCELoss": ("binary", "multilabel"),
    "MCCLoss": ("binary", "multilabel"),  # sigmoid per channel
    "GeneralizedWassersteinDiceLoss": ("multiclass",),  # a distance between the classes of a softmax
}

# The combination to suggest when a term cannot serve the task.
SUGGESTED_LOSS = {"binary": "bce_dice", "multiclass": "ce_dice", "multilabel": "bce_dice"}


def out_channels(task: str, num_classes: int) -> int:
    """Network output channels: 1 for binary, ``num_classes`` for multiclass and multilabel."""
    validate_task(task, num_classes)
    return 1 if task == "binary" else int(num_classes)


def logits_to_mask(logits: Any, task: str, threshold: float = 0.5, spatial_dims: int = 2) -> Any:
    """Hard predictions from logits, in the layout of ``batch["mask"]`` (:data:`MASK_LAYOUT`).

    Used for the training pictures and for predict.py, so both decide pixels the same way.

    Args:
        logits: a tensor ``[B, C, H, W]`` (a batch) or ``[C, H, W]`` (one image); volumes:
            ``[B, C, D, H, W]`` / ``[C, D, H, W]`` with ``spatial_dims=3``.
        task: ``binary`` | ``multiclass`` | ``multilabel``.
        threshold: probability above which a pixel is foreground (binary, multilabel).
        spatial_dims: 2 for images, 3 for volumes (where the class axis is).

    Returns:
        multiclass: int64 class indices ``[B, H, W]`` / ``[H, W]`` (``argmax`` over the channels);
        binary and multilabel: float32 ``{0, 1}`` with the channels kept (``sigmoid > threshold``).
    """
    if task == "multiclass":
        return logits.argmax(dim=-(spatial_dims + 1))
    return (logits.float().sigmoid() > threshold).float()


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
