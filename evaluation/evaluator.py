"""The :class:`Evaluator`: images added one by one, then per image / per class tables, the matrix, a summary.

Why one class for training and scripts/evaluate.py: the end-of-fit evaluation, ``trainer.test``
and a folder of another tool's predictions must produce the same numbers in the same files, so
that the comparison report can read any of them. Nothing here depends on Lightning: the caller
turns logits into masks and hands them over as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .figure import confusion_png
from .metrics import EMPTY_RULES, class_counts, confusion_matrix, metric_names, score_prepared
from .options import Options, prepare
from .tables import confusion_rows, write_atomic, write_csv, write_json

FILES = ("per_image.csv", "per_class.csv", "confusion.csv", "confusion.png", "summary.json")


def matrix_names(task: str, num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    """One name per row of the confusion matrix: binary ``[background, <foreground>]``, multiclass
    every class (background first), multilabel every label.

    ``class_names`` are as ``data.class_names`` gives them (binary: the foreground's one name;
    multiclass: ``num_classes`` names, the background first; multilabel: one per label); ``None``:
    "foreground" / "class k", as the training pictures name them.

    Raises:
        ValueError: a wrong number of names, or a name given twice.
    """
    expected = 1 if task == "binary" else num_classes
    if class_names is None:
        if task == "binary":
            return ["background", "foreground"]
        return [("background" if k == 0 and task == "multiclass" else f"class {k}") for k in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != expected:
        what = {"binary": "one name, the foreground's", "multiclass": f"{num_classes} names, the background first",
                "multilabel": f"{num_classes} names, one per label"}[task]
        raise ValueError(f"class_names has {len(names)} name(s) {names} but task={task} num_classes={num_classes} "
                         f"takes {what}. Fix class_names, or leave it out for 'class k' names.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"class_names names {duplicates} more than once: each class needs its own name "
                         "(the tables and summary.json are keyed by it).")
    return ["background", *names] if task == "binary" else names


def _dice(tp: int, fp: int, fn: int) -> float:
    return 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


class Evaluator:
    """Per image and per class metrics over a set of images, written as tables.

    Args:
        task, num_classes, ignore_index, spacing, tolerance, topology: as in
            :func:`evaluation.score_image` (checked here, once).
        class_names: as ``data.class_names`` gives them (see :func:`matrix_names`).

    ``add(name, pred, target)`` scores one image (rows of :func:`evaluation.score_image`, plus
    ``class_name``) and adds its pixels to the confusion matrix (every class, background
    included); ``summary()`` gives the mean of each metric over images and classes; ``write(folder)``
    writes :data:`FILES` and returns the content of ``summary.json``.

    Volumes: ``add(name, pred, target, spacing=(z, y, x))`` scores a ``[D, H, W]`` volume with its
    own voxel size (cases of one dataset differ), overriding the evaluator's ``spacing`` for that
    volume; HD95 and the NSD's ``tolerance`` are then in the spacing's units (mm). One row per
    volume and class in ``per_image.csv``, which then gains a ``spacing`` column (``z x y x x``).
    """

    def __init__(
        self, task: str, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int | None = None,
        spacing: Sequence[float] | None = None, tolerance: float = 2.0, topology: bool = False,
    ) -> None:
        self.options = Options(task, num_classes, ignore_index, spacing, tolerance, topology)
        self.names = matrix_names(task, num_classes, class_names)
        self.metrics = metric_names(self.options.topology)
        self.rows: list[dict[str, Any]] = []
        self.images: list[str] = []
        self._seen: set[str] = set()
        self.matrix: np.ndarray | None = None
        #: Per-image voxel sizes given to :meth:`add` (volumes), by image name.
        self.spacings: dict[str, tuple[float, ...]] = {}

    def class_name(self, cls: int) -> str:
        """The name of evaluated class ``cls`` (binary: 1 is the foreground)."""
        return self.names[cls]

    def add(self, name: str, pred: Any, target: Any, spacing: Sequence[float] | None = None) -> list[dict[str, Any]]:
        """Score one image or volume; returns its rows (one per evaluated class, with ``class_name``).

        Args:
            name: the ``image`` column (the file stem, or a volume's case id); unique.
            pred, target: the masks (layouts of :func:`evaluation.score_image`: ``[H, W]`` or ``[D, H, W]``).
            spacing: this image's own pixel / voxel size per spatial axis (a volume: ``(z, y, x)``, as
                datamodules/volumes/io.py reads it), instead of the evaluator's ``spacing``; ``None``:
                the evaluator's.

        Raises:
            ValueError: a name already added (rows are keyed by it), a bad spacing, or bad masks
                (:func:`evaluation.score_image`).
        """
        name = str(name)
        if name in self._seen:
            raise ValueError(f"Image {name!r} was added twice: each image needs its own name (the file stem).")
        # A new Options validates the spacing as the constructor does; the rest of the settings are shared.
        options = self.options if spacing is None else replace(self.options, spacing=spacing)
        image = prepare(pred, target, options)
        matrix = confusion_matrix(image, options)
        rows = score_prepared(image, options, name, matrix)
        if spacing is not None:
            self.spacings[name] = options.axes_spacing(image.target.ndim - (options.task == "multilabel"))
        for row in rows:
            row["class_name"] = self.class_name(row["class"])
        self.matrix = matrix if self.matrix is None else self.matrix + matrix
        self.rows += rows
        self.images.append(name)
        self._seen.add(name)
        return rows

    def spacing_text(self, name: str) -> str:
        """The ``spacing`` column of image ``name``: its own (``2 x 0.8 x 0.8``), else the evaluator's, else empty."""
        spacing = self.spacings.get(name, self.options.spacing)
        return "" if spacing is None else " x ".join(f"{s:g}" for s in spacing)

    def _require_images(self) -> None:
        if not self.rows:
            raise ValueError("No image was added to the Evaluator: call add(name, pred, target) first.")

    def summary(self) -> dict[str, float]:
        """``{metric: mean over every image and evaluated class}`` in the order of :data:`evaluation.METRICS`."""
        self._require_images()
        return {m: float(np.mean([row[m] for row in self.rows])) for m in self.metrics}

    def pooled_dice(self) -> dict[int, float]:
        """Per evaluated class, the Dice of the pixels pooled over all images (what val/dice logs per class)."""
        self._require_images()
        return {cls: _dice(*counts) for cls, counts in zip(self.options.classes,
                                                             class_counts(self.matrix, self.options))}

    def per_class(self) -> list[dict[str, Any]]:
        """Rows of ``per_class.csv``: ``class, class_name, images``, ``<metric>_mean, <metric>_std``, ``dice_pooled``.

        The standard deviation is over images, numpy's default (``ddof=0``): defined for one image too.
        """
        pooled = self.pooled_dice()
        out = []
        for cls in self.options.classes:
            rows = [row for row in self.rows if row["class"] == cls]
            entry: dict[str, Any] = {"class": cls, "class_name": self.class_name(cls), "images": len(rows)}
            for m in self.metrics:
                values = np.array([row[m] for row in rows], dtype=float)
                entry[f"{m}_mean"], entry[f"{m}_std"] = float(values.mean()), float(values.std())
            entry["dice_pooled"] = pooled[cls]
            out.append(entry)
        return out

    def summary_json(self) -> dict[str, Any]:
        """What ``summary.json`` holds."""
        per_class = {entry["class_name"]: {m: entry[f"{m}_mean"] for m in self.metrics} for entry in self.per_class()}
        summary = {
            "images": len(self.images),
            "task": self.options.task,
            "metrics": self.summary(),
            "per_class": per_class,
            "tolerance": self.options.tolerance,
            "spacing": None if self.options.spacing is None else list(self.options.spacing),
            "empty_rules": EMPTY_RULES,
        }
        if self.spacings:  # volumes: each case's voxel size, which its HD95 and NSD are measured in
            summary["image_spacing"] = {name: list(s) for name, s in self.spacings.items()}
        return summary

    def write(self, folder: str | Path) -> dict[str, Any]:
        """Write :data:`FILES` into ``folder`` (created), each atomically; returns the ``summary.json`` dict."""
        self._require_images()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        columns = ["image", "class", "class_name", *self.metrics, "gt_pixels", "pred_pixels"]
        values = [[row[c] for c in columns] for row in self.rows]
        if self.spacings:  # volumes with their own voxel sizes: say which one each row was measured in
            columns.append("spacing")
            values = [[*v, self.spacing_text(row["image"])] for v, row in zip(values, self.rows)]
        write_csv(folder / "per_image.csv", columns, values)
        per_class = self.per_class()
        class_columns = ["class", "class_name", "images",
                         *(f"{m}_{s}" for m in self.metrics for s in ("mean", "std")), "dice_pooled"]
        write_csv(folder / "per_class.csv", class_columns, [[e[c] for c in class_columns] for e in per_class])
        multilabel = self.options.task == "multilabel"
        write_csv(folder / "confusion.csv", *confusion_rows(self.matrix, self.names, multilabel))
        write_atomic(folder / "confusion.png", confusion_png(self.matrix, self.names, multilabel))
        summary = self.summary_json()
        write_json(folder / "summary.json", summary)
        return summary
