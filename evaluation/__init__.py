"""Evaluate: per image and per class metrics that separate losses, written as tables.

The step after training in data -> fingerprint -> train -> evaluate -> report.
:func:`score_image` scores one image (Dice, IoU, precision, recall by torchmetrics' counts;
HD95 and normalised surface Dice by MONAI; opt-in clDice and the component count error), with
the empty cases defined instead of NaN (metrics.py, ``EMPTY_RULES``). :class:`Evaluator` adds
images one by one and writes ``per_image.csv``, ``per_class.csv``, ``confusion.csv``,
``confusion.png`` and ``summary.json`` (evaluator.py). ``scripts/evaluate.py`` runs it on two
folders of masks. The package reads masks through ``datamodules.masks`` only; it never imports
``segtrain``, Lightning or Hydra, so training, ``trainer.test`` and the script share it.
"""

from importlib import import_module

from .names import EMPTY_RULES, HIGHER_IS_BETTER, METRICS

#: The names that need torch, torchmetrics or MONAI, and their module: imported on first use, so that
#: reading the metric names (the comparison report) costs no torch import.
_LAZY = {"FILES": "evaluator", "Evaluator": "evaluator", "matrix_names": "evaluator", "metric_names": "metrics",
         "score_image": "metrics"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EMPTY_RULES", "FILES", "HIGHER_IS_BETTER", "METRICS", "Evaluator", "matrix_names", "metric_names",
           "score_image"]
