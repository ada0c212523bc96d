"""Stop a diverging run at the first non-finite loss or gradient, before the weights are spoiled.

Without a guard a run whose loss turns NaN keeps "training" for the remaining epochs: every
weight becomes NaN after one optimizer step, the metrics read 0, and the end-of-epoch
``last.ckpt`` is overwritten with the NaN weights -- the last good state is lost.
``EarlyStopping(check_finite=True)`` only looks at the monitored validation metric, i.e. after the
damage. :class:`DivergenceGuard` checks the training loss before ``backward`` and the gradients
before ``optimizer.step``, so the weights and the checkpoints on disk stay as they were after the
last good step.
"""

from __future__ import annotations

import math
import lightning as L
import torch


class DivergenceError(FloatingPointError, ValueError):
    """Training produced a NaN/inf loss or gradient. Also a ``ValueError``, as all our bad-input errors."""


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint a ``ModelCheckpoint`` of this run has written, if any."""
    for cb in trainer.checkpoint_callbacks:
        for path in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")):
            if path:
                return path
    return None


def _learning_rate(trainer: L.Trainer) -> str:
    try:
        return f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}"
    except (IndexError, KeyError, AttributeError):
        return "?"


class DivergenceGuard(L.Callback):
    """Raise :class:`DivergenceError` when the training loss or a gradient is NaN or infinite.

    The message names the global step, the epoch and batch, what was non-finite, the last
    checkpoint on disk (untouched: the run stops before the optimizer step) and the usual fixes.

    Args:
        check_grads: also check every gradient before the optimizer step (one fused
            ``isfinite`` reduction per step). A finite loss can still give inf gradients
            (e.g. log of a saturated sigmoid in a hand-written loss); without this check the
            step would write NaN weights.
    """

    def __init__(self, check_grads: bool = True) -> None:
        self.check_grads = check_grads

    def _fail(self, trainer: L.Trainer, what: str) -> None:
        last = _last_checkpoint(trainer)
        kept = (
            f"The last checkpoint, {last}, is kept unchanged; resume from it with ckpt_path={last} "
            "after the fix."
            if last
            else "No checkpoint had been written yet."
        )
        raise DivergenceError(
            f"Training diverged at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1}): {what}. The run "
            f"stopped before the optimizer step, so the weights are still finite. {kept} Fix: lower "
            f"the learning rate (optimizer.lr, now {_learning_rate(trainer)}), clip gradients "
            "(trainer.gradient_clip_val=1.0), or check the data and loss weights for extreme values."
        )

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach()
        if not torch.isfinite(value).all():
            self._fail(trainer, f"the training loss is {value.float().mean().item()}")

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # fp16 mixed precision: GradScaler expects occasional inf gradients and skips those steps itself.
        if not self.check_grads or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        # One reduction for all parameters: the common (finite) case costs a single sync.
        norms = torch._foreach_norm(grads)
        total = torch.stack(norms).sum().item()
        if math.isfinite(total):
            return
        for (name, p) in pl_module.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                self._fail(trainer, f"the gradient of {name} is not finite")
        # Every gradient finite but their norms sum past float32's range: diverging all the same.
        self._fail(trainer, f"the gradient norm overflows ({total})")


def require_training_batches(trainer: L.Trainer, datamodule: L.LightningDataModule | None = None) -> None:
    """After ``fit``: a run that had no training batch is a failure, not a run with ``Best nan``.

    Lightning only logs "No training batches" and ends ``fit`` normally, without a checkpoint.

    Raises:
        ValueError: with the training set's size, the batch settings and the fixes.
    """
    if trainer.num_training_batches != 0:
        return
    dataset = getattr(datamodule, "train_set", None)
    size = f"{len(dataset)} sample(s)" if dataset is not None and hasattr(dataset, "__len__") else "too few samples"
    batch = getattr(datamodule, "batch_size", "?")
    drop = getattr(datamodule, "drop_last", None)
    raise ValueError(
        f"No training batch: the training set has {size}, data.batch_size={batch}"
        f"{', data.drop_last=true drops the incomplete batch' if drop else ''}"
        f" (trainer.limit_train_batches={trainer.limit_train_batches}). Nothing was trained and no checkpoint "
        "was written. Fix: data.drop_last=false, a smaller data.batch_size, more data, or a lower "
        "data.val_fraction."
    )
