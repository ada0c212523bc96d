"""The end-of-fit evaluation: the best checkpoint on the whole validation images, per image and per class.

After ``trainer.fit`` (and after ``trainer.test`` for the test split), rank 0 predicts every
image of the split as validation does (whole images, sliding windows at native resolution), with
``evaluation.tta`` (``flip``: mirrored passes averaged in probability space, segtrain/tta.py) and,
on validation, chooses the postprocessing (segtrain/postprocessing.py: the largest connected
component per class where it raises the mean Dice). Then ``evaluation.Evaluator`` scores each
image and class -- Dice, IoU, precision, recall, HD95, NSD and, with ``evaluation.topology``,
clDice and the connected-component error -- and writes ``<run>/evaluation/`` (``test/`` below it
for the test split): ``per_image.csv``, ``per_class.csv``, ``confusion.csv``, ``confusion.png``,
``summary.json`` and, for validation, ``postprocessing.json``. The means go to every logger as
``final/val_<metric>`` (``final/test_<metric>``), and the chosen postprocessing into the run's
checkpoints (``checkpoint["postprocessing"]``), which scripts/predict.py applies.

Per-epoch validation is unchanged (its torchmetrics Dice and IoU); this runs once, so surface
distances, which cost far more than a Dice, are paid once per run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import atomic_torch_save
from .postprocessing import apply_postprocessing, choose_postprocessing
from .task import logits_to_mask
from .trust import safe_torch_load
from .tta import average_predictions, check_tta

log = logging.getLogger(__name__)

#: ``evaluation`` config defaults (conf/train.yaml).
DEFAULTS = {"enabled": True, "tta": None, "validation_tta": False, "tolerance": 2.0, "topology": False,
            "postprocessing": True}


def options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``evaluation`` config node with its defaults, checked."""
    opts = {**DEFAULTS, **dict(cfg.get("evaluation") or {})}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"evaluation has no option(s) {sorted(unknown)}; its options: {', '.join(DEFAULTS)}")
    opts["tta"] = check_tta(opts["tta"])
    if float(opts["tolerance"]) < 0:
        raise ValueError(f"evaluation.tolerance={opts['tolerance']} must be >= 0 (the NSD tolerance, in pixels)")
    return opts


def validation_tta(cfg: Mapping[str, Any]) -> str | None:
    """The TTA of every per-epoch validation: ``evaluation.tta`` with ``evaluation.validation_tta=true``, else none."""
    opts = options(cfg)
    return opts["tta"] if opts["validation_tta"] else None


def _as_numpy_masks(mask: torch.Tensor, task: str) -> list[np.ndarray]:
    """A batch's masks (or predictions) as one integer array per image: [*spatial] or multilabel [C, *spatial]."""
    mask = mask.detach().cpu()
    if task == "binary":
        mask = mask[:, 0]
    return [m.numpy().astype(np.int32) for m in mask]


def _load_best(module: L.LightningModule, trainer: L.Trainer) -> str | None:
    path = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    if path and os.path.isfile(path):
        module.load_state_dict(safe_torch_load(path)["state_dict"])
    return path


def _record_in_checkpoints(trainer: L.Trainer, plan: dict[str, Any]) -> None:
    """``checkpoint["postprocessing"] = plan`` in the best and the last checkpoint (atomic rewrite)."""
    callback = trainer.checkpoint_callback
    paths = {getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")}
    for path in sorted(p for p in paths if p and os.path.isfile(p)):
        checkpoint = safe_torch_load(path)
        checkpoint["postprocessing"] = plan
        atomic_torch_save(checkpoint, path)


def evaluate_split(
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: Any,
    cfg: Mapping[str, Any],
    output_dir: str | os.PathLike,
    split: str = "val",
    plan: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Score the ``split`` (``val`` or ``test``) image by image and write the tables (module docstring).

    Returns:
        ``evaluation.Evaluator``'s summary, with ``postprocessing`` added; ``None`` on ranks other than 0.
    """
    if not trainer.is_global_zero:
        return None
    from evaluation import Evaluator

    opts = options(cfg)
    task, num_classes = module.task, module.num_classes
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    device = trainer.strategy.root_device
    was_training, place = module.training, next(module.parameters()).device
    module.eval().to(device)
    preds, targets, names, spacings = [], [], [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"final evaluation ({split} images)", unit="batch", disable=None):
            image = batch["image"].to(device)
            logits = average_predictions([lambda x, n=batch.get("name"): module.predict_logits(x, n)], image, task,
                                         opts["tta"])
            preds += _as_numpy_masks(logits_to_mask(logits, task, spatial_dims=image.ndim - 2), task)
            targets += _as_numpy_masks(batch["mask"], task)
            names += [str(n) for n in batch.get("name") or [f"{split}_{len(names) + i}" for i in range(len(image))]]
            # volumes carry their voxel size (z, y, x): the surface metrics are in its units
            spacings += [s.tolist() for s in batch["spacing"]] if "spacing" in batch else [None] * len(image)
    module.to(place).train(was_training)
    ignore_index = module.hparams.get("ignore_index")
    report = None
    if split == "val" and opts["postprocessing"]:
        plan, report = choose_postprocessing(preds, targets, task, num_classes, ignore_index)
    evaluator = Evaluator(task, num_classes, class_names=getattr(datamodule, "metric_class_names", None),
                          ignore_index=ignore_index, tolerance=float(opts["tolerance"]), topology=bool(opts["topology"]))
    for name, pred, target, spacing in zip(names, preds, targets, spacings):
        evaluator.add(name, apply_postprocessing(pred, task, plan), target, spacing=spacing)
    folder = Path(output_dir) / "evaluation" / ("" if split == "val" else split)
    summary = dict(evaluator.write(folder))
    summary["postprocessing"] = plan
    if report is not None:
        (folder / "postprocessing.json").write_text(json.dumps({"plan": plan, "classes": report}, indent=2))
        _record_in_checkpoints(trainer, plan or {})
    metrics = {f"final/{split}_{k}": float(v) for k, v in summary.get("metrics", {}).items() if v is not None}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
    log.info("Final evaluation (%s, %d images%s): %s -> %s", split, len(names),
             ", tta=flip" if opts["tta"] else "",
             ", ".join(f"{k.split('_', 1)[1]} {v:.4f}" for k, v in metrics.items()), folder)
    return summary


def evaluate_after_fit(trainer: L.Trainer, module: L.LightningModule, datamodule: Any, cfg: Mapping[str, Any],
                       output_dir: str) -> dict[str, Any] | None:
    """The best checkpoint on the validation images (skipped without a validation set or with ``evaluation.enabled=false``)."""
    if not options(cfg)["enabled"] or getattr(datamodule, "val_set", None) is None or not len(datamodule.val_set):
        return None
    if trainer.is_global_zero:
        _load_best(module, trainer)
    return evaluate_split(trainer, module, datamodule, cfg, output_dir, "val")
