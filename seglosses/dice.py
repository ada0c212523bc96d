"""Region losses: Dice, Jaccard (soft IoU) and Tversky, as modules holding their options."""

from __future__ import annotations

from torch import Tensor, nn

from . import _checks
from . import functional as F

_OPTIONS_DOC = """
    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``. Probabilities are ``sigmoid`` (binary,
            multilabel) or ``softmax`` over dim 1 (multiclass) of the logits.
        from_logits: if False the input already holds probabilities.
        smooth: added to the numerator and the denominator (default 0: the exact ratio).
        log_loss: per-class loss ``-log(score)`` (score clamped at 1e-7) instead of ``1 - score``.
        per_image: compute the sums per image (then average over images and classes) instead of
            over the whole batch per class (default, "batch Dice": no image with few pixels of a
            class gets an outsized vote).
        ignore_index: target value whose pixels are removed from every sum.
        class_weights: one non-negative weight per channel; classes combine as
            ``sum_c w_c L_c / sum_c w_c``. Stored as a buffer.
        include_background: False drops channel 0 (the background class in multiclass mode, channel
            0 in multilabel mode; not allowed in binary mode, whose only channel is the foreground).
        sync_dist: all-reduce the sums across ``torch.distributed`` processes so that every rank
            computes the loss of the global batch; the backward is scaled so that DDP's gradient
            averaging yields the true gradient of that global loss (see
            :mod:`seglosses.distributed`). A no-op without a process group.
        empty_class: what a class absent from the target (``sum t = 0``) costs:
            ``"penalize_fp"`` (default) its soft false-positive rate ``sum p / N`` (0 for an
            empty prediction, never NaN); ``"zero"`` 0 while still counting in the average
            (segmentation-models-pytorch); ``"exclude"`` left out of the average.

    Shape:
        logits ``[B, C, *spatial]`` (2D, 3D, ...); target binary ``[B, 1, *]`` or ``[B, *]`` in
        [0, 1], multiclass ``[B, *]`` integer indices, multilabel ``[B, C, *]`` in [0, 1].
"""


class _RegionLoss(nn.Module):
    kind = "dice"

    def __init__(
        self,
        mode: str,
        from_logits: bool,
        smooth: float,
        log_loss: bool,
        per_image: bool,
        ignore_index,
        class_weights,
        include_background: bool,
        sync_dist: bool,
        empty_class: str,
    ):
        super().__init__()
        name = type(self).__name__
        self.mode = _checks.check_mode(mode, name)
        if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or smooth < 0:
            raise ValueError(f"{name}: smooth must be a float >= 0, got {smooth!r}")
        if empty_class not in F.EMPTY_CLASS_POLICIES:
            raise ValueError(
                f"{name}: empty_class must be one of {F.EMPTY_CLASS_POLICIES}, got {empty_class!r}"
            )
        if mode == "binary" and not include_background:
            raise ValueError(
                f"{name}: include_background=False drops channel 0, but binary mode has only the "
                f"foreground channel; use it with multiclass (or multilabel) mode"
            )
        weights = _checks.as_weight_tensor(class_weights, "class_weights", name)
        if mode == "binary" and weights is not None and weights.numel() != 1:
            raise ValueError(
                f"{name}: binary mode has one class, so class_weights needs 1 value, "
                f"got {weights.numel()}"
            )
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)
        self.log_loss = bool(log_loss)
        self.per_image = bool(per_image)
        self.ignore_index = ignore_index
        self.include_background = bool(include_background)
        self.sync_dist = bool(sync_dist)
        self.empty_class = empty_class
        self.register_buffer("class_weights", weights, persistent=False)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, smooth={self.smooth}, per_image={self.per_image}, "
            f"ignore_index={self.ignore_index}, empty_class={self.empty_class!r}"
        )


class DiceLoss(_RegionLoss):
    r"""Soft Dice loss, per class ``L_c = 1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)``.

    With ``squared_pred`` the denominator uses ``sum(p^2)`` (the V-Net form). With ``smooth=0``,
    the default aggregation and every class present in the target it equals
    ``segmentation_models_pytorch.losses.DiceLoss`` (whose ``smooth`` enters as ``2 * smooth``).
    """

    kind = "dice"

    def __init__(
        self,
        mode: str,
        from_logits: bool = True,
        smooth: float = 0.0,
        squared_pred: bool = False,
        log_loss: bool = False,
        per_image: bool = False,
        ignore_index: int | float | None = None,
        class_weights: Tensor | list[float] | None = None,
        include_background: bool = True,
        sync_dist: bool = False,
        empty_class: str = "penalize_fp",
    ):
        super().__init__(
            mode, from_logits, smooth, log_loss, per_image, ignore_index, class_weights,
            include_background, sync_dist, empty_class,
        )  # fmt: skip
        self.squared_pred = bool(squared_pred)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.dice_loss(
            logits, target, self.mode, self.from_logits, self.smooth, self.squared_pred,
            self.log_loss, self.per_image, self.ignore_index, self.class_weights,
            self.include_background, self.sync_dist, self.empty_class,
        )  # fmt: skip


class JaccardLoss(_RegionLoss):
    r"""Soft Jaccard (IoU) loss, per class ``L_c = 1 - (I + smooth) / (P + T - I + smooth)``.

    ``I = sum(p t)``, ``P = sum(p)`` (``sum(p^2)`` with ``squared_pred``), ``T = sum(t)``.
    Equals ``segmentation_models_pytorch.losses.JaccardLoss`` at ``smooth=0`` with every class
    present.
    """

    kind = "jaccard"

    def __init__(
        self,
        mode: str,
        from_logits: bool = True,
        smooth: float = 0.0,
        squared_pred: bool = False,
        log_loss: bool = False,
        per_image: bool = False,
        ignore_index: int | float | None = None,
        class_weights: Tensor | list[float] | None = None,
        include_background: bool = True,
        sync_dist: bool = False,
        empty_class: str = "penalize_fp",
    ):
        super().__init__(
            mode, from_logits, smooth, log_loss, per_image, ignore_index, class_weights,
            include_background, sync_dist, empty_class,
        )  # fmt: skip
        self.squared_pred = bool(squared_pred)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.jaccard_loss(
            logits, target, self.mode, self.from_logits, self.smooth, self.squared_pred,
            self.log_loss, self.per_image, self.ignore_index, self.class_weights,
            self.include_background, self.sync_dist, self.empty_class,
        )  # fmt: skip


class TverskyLoss(_RegionLoss):
    r"""Tversky loss, per class ``L_c = (1 - TI_c)^gamma`` with
    ``TI = (TP + smooth) / (TP + alpha FP + beta FN + smooth)``, ``TP = sum(p t)``,
    ``FP = sum(p) - TP``, ``FN = sum(t) - TP``.

    ``alpha`` (>= 0) weighs false positives and ``beta`` (>= 0) false negatives: ``beta > alpha``
    favours recall. ``alpha = beta = 0.5`` is Dice and ``alpha = beta = 1`` Jaccard (at
    ``smooth=0``). ``gamma`` (> 0; ``> 1`` is the focal Tversky loss) is applied to each class's
    loss before averaging, as in Abraham & Khan (2019); segmentation-models-pytorch applies it to
    the average instead, so the two agree for ``gamma = 1`` (and every class present, smooth=0).
    """

    kind = "tversky"

    def __init__(
        self,
        mode: str,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        from_logits: bool = True,
        smooth: float = 0.0,
        log_loss: bool = False,
        per_image: bool = False,
        ignore_index: int | float | None = None,
        class_weights: Tensor | list[float] | None = None,
        include_background: bool = True,
        sync_dist: bool = False,
        empty_class: str = "penalize_fp",
    ):
        super().__init__(
            mode, from_logits, smooth, log_loss, per_image, ignore_index, class_weights,
            include_background, sync_dist, empty_class,
        )  # fmt: skip
        name = type(self).__name__
        for key, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}: {key} must be a float >= 0, got {value!r}")
        if alpha == 0 and beta == 0:
            raise ValueError(f"{name}: alpha and beta cannot both be 0 (the score would be 1 always)")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma <= 0:
            raise ValueError(f"{name}: gamma must be a float > 0, got {gamma!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.tversky_loss(
            logits, target, self.mode, self.alpha, self.beta, self.gamma, self.from_logits,
            self.smooth, self.log_loss, self.per_image, self.ignore_index, self.class_weights,
            self.include_background, self.sync_dist, self.empty_class,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, " + super().extra_repr()


for _cls in (DiceLoss, JaccardLoss, TverskyLoss):
    _cls.__doc__ = (_cls.__doc__ or "") + _OPTIONS_DOC
