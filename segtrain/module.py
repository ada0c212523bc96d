"""SegmentationModule: network + combined loss + torchmetrics Dice/IoU, for any task.

Logged keys (every value is an epoch mean, synced across DDP ranks):

* ``train/loss``, ``val/loss``: the combined loss ``sum_k w_k L_k``;
* ``train/loss_<term>``, ``val/loss_<term>``: each term's unweighted value ``L_k`` (absent while
  the term's weight is 0: it is not computed);
* ``train/weight_<term>``: each term's weight, when a weight is a schedule (seglosses/schedules.py);
* ``val/dice``, ``val/iou``: mean over classes of the per-class scores pooled over all validation
  pixels, ``Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``, ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``;
* ``val/dice_class<c>``, ``val/iou_class<c>``: per class (multiclass, multilabel).

The metrics are torchmetrics objects: their TP/FP/FN states are summed over ranks in
``compute()``, so the values are those of the whole validation set under DDP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import Tensor, nn

from seglosses import DeepSupervisionLoss
from seglosses.derived import NAMES as DERIVED_TARGETS

from .schedule import follow_config
from .sliding import check_window, whole_image_logits
from .task import metric_kwargs, validate_task
from .tta import average_predictions, check_tta
from .trust import recorded_versions, warn_version_mismatch


class SegmentationModule(L.LightningModule):
    """LightningModule for binary, multiclass and multilabel segmentation.

    Args:
        net: network mapping images ``[B, in_channels, H, W]`` to logits ``[B, out_channels, H, W]``.
        loss: a ``seglosses.CombinedLoss`` (anything with ``forward(logits, target)`` and a
            ``last_values`` dict of per-term values).
        optimizer: ``params -> torch.optim.Optimizer`` (a Hydra ``_partial_``).
        scheduler: ``optimizer -> LRScheduler`` or ``None`` for a constant learning rate.
        scheduler_config: Lightning's lr-scheduler options (``interval``, ``frequency``, ``monitor``).
        task: ``binary`` | ``multiclass`` | ``multilabel``.
        num_classes: 1 for binary; classes incl. background for multiclass; labels for multilabel.
        ignore_index: mask value excluded from the metrics (the losses get it from their config).
        config: the whole resolved run config (plain dict), saved into every checkpoint as
            ``checkpoint["config"]`` so that predict/export can rebuild network and transforms.
        validation_tta: ``"flip"``: every validation and test pass averages mirrored passes
            (``evaluation.validation_tta=true`` with ``evaluation.tta=flip``); ``None``: one pass, the default.

    Validation and test run on whole images (:func:`segtrain.sliding.whole_image_logits`): by
    sliding windows when the datamodule has a ``sliding_window`` (the folder datamodule at native
    resolution, set in its setup()), else in one pass padded to the stride. The options go into
    every checkpoint as ``checkpoint["inference"]`` (``None``: the images were resized), so
    predict.py infers as validation did; the datamodule's ``preprocessing`` (input channels, dtype,
    normalisation spec: datamodules/normalization.py) goes in as ``checkpoint["preprocessing"]``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        task: str = "binary",
        num_classes: int = 1,
        ignore_index: int | None = None,
        config: Mapping[str, Any] | None = None,
        validation_tta: str | None = None,
    ) -> None:
        super().__init__()
        validate_task(task, num_classes)
        if not hasattr(loss, "last_values"):
            raise ValueError(
                f"loss must be a seglosses.CombinedLoss (per-term values are logged), got {type(loss).__name__}"
            )
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler", "config"])
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_config = dict(scheduler_config or {})
        self.task = task
        self.num_classes = int(num_classes)
        self.config = dict(config) if config is not None else None
        #: Test-time augmentation of every validation and test pass (segtrain/tta.py); ``None``: one pass.
        self.validation_tta = check_tta(validation_tta)
        kwargs = metric_kwargs(task, num_classes, ignore_index)
        self.val_dice = torchmetrics.F1Score(**kwargs)
        self.val_iou = torchmetrics.JaccardIndex(**kwargs)
        self.test_dice = torchmetrics.F1Score(**kwargs)
        self.test_iou = torchmetrics.JaccardIndex(**kwargs)
        self.sliding_window: dict[str, Any] | None = None
        self.metric_names: list[str] | None = None  # data.class_names: per-class keys by name
        #: The input's channels, dtype and normalisation spec (the datamodule's), for predict and export.
        self.preprocessing: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        # Lightning sets the datamodule up first: its sliding_window is known here.
        options = getattr(getattr(self.trainer, "datamodule", None), "sliding_window", None)
        if options is not None:
            self.sliding_window = check_window(options)
        self.metric_names = getattr(getattr(self.trainer, "datamodule", None), "metric_class_names", None)
        preprocessing = getattr(getattr(self.trainer, "datamodule", None), "preprocessing", None)
        if preprocessing is not None:
            self.preprocessing = dict(preprocessing)

    def predict_logits(self, image: Tensor, names: list[str] | None = None) -> Tensor:
        """Logits for whole images of any size, as validation computes them (``names``: for errors)."""
        return whole_image_logits(self.net, image, self.sliding_window, names)

    def forward(self, image: Tensor) -> Tensor:
        """Logits ``[B, out_channels, H, W]`` for images ``[B, in_channels, H, W]``."""
        return self.net(image)

    def _step(self, batch: Mapping[str, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        image, mask = batch["image"], batch["mask"]
        if stage == "train":
            logits = self(image)
        elif self.validation_tta:  # evaluation.validation_tta=true: every validation with evaluation.tta
            logits = average_predictions([lambda x: self.predict_logits(x, batch.get("name"))], image, self.task,
                                         self.validation_tta)
        else:
            logits = self.predict_logits(image, batch.get("name"))
        # Distance maps / skeletons of the batch (datamodules/derived.py) go to the terms that need them.
        derived = {k: batch[k] for k in DERIVED_TARGETS if k in batch}
        if isinstance(logits, (list, tuple)):
            # Deep-supervision heads (model=dynunet model.deep_supervision=true), in training only: every
            # output at full resolution (MONAI upsamples them), weighted 1, 1/2, 1/4 ... normalised; the
            # per-term values logged are those of the main output (segtrain/network3d.py).
            loss = DeepSupervisionLoss(self.loss)(list(logits), mask, **derived)
            logits = logits[0]
        else:
            loss = self.loss(logits, mask, **derived)
        n = image.shape[0]
        # Epoch means, weighted by batch size; sync_dist averages them over ranks at epoch end.
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        for name, value in self.loss.last_values.items():
            self.log(f"{stage}/loss_{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        if stage == "train" and getattr(self.loss, "schedules", None):
            for name, weight in self.loss.weights.items():
                # The same value on every rank (a function of the epoch): no sync needed. batch_size=1:
                # the epoch value is the mean over the steps, not weighted by a short last batch.
                self.log(f"train/weight_{name}", float(weight), on_step=False, on_epoch=True, batch_size=1)
        return loss, logits

    def _metric_target(self, mask: Tensor) -> Tensor:
        # torchmetrics wants integer targets; binary/multilabel masks are float {0, 1}.
        return mask if self.task == "multiclass" else mask.long()

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch, "train")
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss, logits = self._step(batch, "val")
        target = self._metric_target(batch["mask"])
        # Logits go in as they are: torchmetrics applies sigmoid/argmax (threshold 0.5).
        self.val_dice.update(logits.detach(), target)
        self.val_iou.update(logits.detach(), target)
        return loss

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss, logits = self._step(batch, "test")
        target = self._metric_target(batch["mask"])
        self.test_dice.update(logits.detach(), target)
        self.test_iou.update(logits.detach(), target)
        return loss

    def _log_scores(self, stage: str, name: str, metric: torchmetrics.Metric) -> None:
        scores = metric.compute()  # all-reduces TP/FP/FN over ranks first
        metric.reset()
        # Same value on every rank after compute(); sync_dist only quiets Lightning's DDP warning.
        self.log(f"{stage}/{name}", scores.float().mean(), prog_bar=name == "dice", sync_dist=True)
        if scores.ndim == 1:
            names = self.metric_names if self.metric_names and len(self.metric_names) == len(scores) else None
            for c, score in enumerate(scores):
                self.log(f"{stage}/{name}_{names[c] if names else f'class{c}'}", score, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", "dice", self.val_dice)
        self._log_scores("val", "iou", self.val_iou)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", "dice", self.test_dice)
        self._log_scores("test", "iou", self.test_iou)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), **self.scheduler_config},
        }

    def _activate_derived_targets(self, epoch: int) -> None:
        """Tell the data pipeline which derived targets (distance maps, skeletons) epoch ``epoch`` needs."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(self.loss, "derived_targets") and hasattr(datamodule, "set_active_derived_targets"):
            datamodule.set_active_derived_targets(self.loss.derived_targets(epoch))

    def on_fit_start(self) -> None:
        # Lightning 2.6 creates the first epoch's DataLoader iterator (FitLoop.setup_data) before
        # on_train_epoch_start: a fresh run switches its epoch-0 targets here, before any batch is
        # built. A resumed run learns its epoch only later (its loops are restored after this hook):
        # its first prefetched batches may carry a target that epoch does not need, never lack one
        # (every configured target starts active; datamodules/base.py set_active_derived_targets).
        if self.trainer.ckpt_path is None:
            self._activate_derived_targets(0)

    def on_train_epoch_start(self) -> None:
        # Scheduled loss weights are a pure function of the epoch: a resumed run and every DDP rank
        # get the same ones. From the second epoch of a fit on, Lightning runs this hook before it
        # creates the epoch's DataLoader iterator: the whole epoch follows the switch.
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(self.current_epoch)
            self._activate_derived_targets(self.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if getattr(self.loss, "per_step", False):  # a per_step schedule moves at every step of the epoch
            batches = self.trainer.num_training_batches
            fraction = batch_idx / batches if isinstance(batches, int) and batches > 0 else 0.0
            self.loss.set_epoch(self.current_epoch + fraction)

    def on_validation_epoch_start(self) -> None:
        # Validation scores with the weights of the epoch (a per_step schedule: its value at the epoch's start).
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(self.current_epoch)

    def on_train_start(self) -> None:
        # After Lightning restored a resumed run's scheduler: its T_max etc. follow this run's config (segtrain/schedule.py).
        configs = self.trainer.lr_scheduler_configs if self.scheduler_factory is not None else []
        if configs:
            follow_config(configs[0].scheduler, self.scheduler_factory, self.trainer.optimizers[0])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain dict: loadable with torch.load(weights_only=True) and without Hydra/OmegaConf.
        if self.config is not None:
            checkpoint["config"] = self.config
        checkpoint["inference"] = self.sliding_window
        checkpoint["preprocessing"] = self.preprocessing
        checkpoint["versions"] = recorded_versions()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming under another major version of torch/Lightning/smp/this project: say so, with both versions.
        warn_version_mismatch(checkpoint.get("versions"), "The checkpoint")
