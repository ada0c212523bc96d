"""Generalized Dice loss (Sudre et al., 2017): one Dice over all classes, each weighted by its size.

    L = 1 - (2 sum_c w_c I_c + s) / (sum_c w_c (P_c + T_c) + s)

with the soft counts ``I, P, T`` of :func:`seglosses.functional.region_sums` and ``w_c = 1 / T_c^2``
(``"square"``), ``1 / T_c`` (``"simple"``) or ``1`` (``"uniform"``). This is MONAI's
``GeneralizedDiceLoss`` (``batch=True`` is ``per_image=False``), including its rule for a class
absent from the target: its weight ``1 / 0`` is replaced by the largest weight of the classes
present (in the batch, or in the image with ``per_image``), so false positives on it still
cost as much as on the rarest present class. If no class is present at all the weights are 0
and the loss is 0 (``smooth=0``) or ``1 - s / s = 0`` (MONAI).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import _checks
from ._region import check_input, region_sums

WEIGHT_TYPES = ("square", "simple", "uniform")


def _class_weights(tsum: Tensor, weight_type: str) -> Tensor:
    if weight_type == "uniform":
        return torch.ones_like(tsum)
    w = tsum.reciprocal() if weight_type == "simple" else tsum.square().reciprocal()
    absent = torch.isinf(w)
    w = w.masked_fill(absent, 0.0)
    top = w.amax(-1, keepdim=True)  # largest weight of a present class, per image or batch
    return torch.where(absent, top.expand_as(w), w)


def generalized_dice_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    weight_type: str = "square",
    smooth: float = 0.0,
    per_image: bool = False,
    include_background: bool = True,
    ignore_index: int | float | None = None,
    from_logits: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """Generalized Dice loss; see the module docstring. ``reduction="none"`` gives one value per
    image ``[B]`` with ``per_image=True``, the batch's single value ``[1]`` otherwise."""
    name = "GeneralizedDiceLoss"
    _checks.check_mode(mode, name)
    _checks.check_reduction(reduction, name)
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"{name}: weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    if not include_background and mode == "binary":
        raise ValueError(f"{name}: include_background=False needs several channels; binary mode has one")
    target = check_input(logits, target, mode, ignore_index, name)
    inter, psum, tsum, _ = region_sums(
        logits, target, mode, from_logits=from_logits, per_image=per_image, ignore_index=ignore_index
    )
    if not include_background:
        inter, psum, tsum = inter[..., 1:], psum[..., 1:], tsum[..., 1:]
    w = _class_weights(tsum, weight_type)
    num = 2.0 * (w * inter).sum(-1) + smooth
    den = (w * (psum + tsum)).sum(-1) + smooth
    # den = 0 only when nothing is weighed (no class present, smooth 0): a perfect, empty score.
    # No fixed floor such as Dice's EPS = 1e-7 here: with no class present num = den = smooth, and
    # a floor above a smaller smooth turned 1 - s/s = 0 into 1 - s/1e-7 (0.9 for s = 1e-8, issue
    # 25). The floor is the smallest normal float of the sums' dtype (float32 under bf16/fp16
    # autocast, as region_sums upcasts): every normal den is divided as it is, and a den of 0 (the
    # branch ``where`` discards) still divides finitely, as does the backward's num / den^2 =
    # (num / den) / den <= 1 / tiny, so no NaN or inf reaches the gradient in any precision.
    tiny = torch.finfo(den.dtype).tiny
    loss = torch.where(den > 0, 1.0 - num / den.clamp_min(tiny), torch.zeros_like(den))
    loss = loss.reshape(-1)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


class GeneralizedDiceLoss(nn.Module):
    """Generalized Dice loss as a module; options as in :func:`generalized_dice_loss`.

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``.
        weight_type: ``"square"`` (``1 / T_c^2``, the paper's), ``"simple"`` (``1 / T_c``) or
            ``"uniform"`` (1); an absent class gets the largest weight of the present ones.
        smooth: added to numerator and denominator (MONAI: ``smooth_nr = smooth_dr``).
        per_image: one loss per image (MONAI's default ``batch=False``), averaged; False pools
            the batch (``batch=True``).
        include_background: False drops channel 0 (multiclass, multilabel).
        ignore_index: target value whose pixels leave every sum.
        from_logits: apply sigmoid / softmax to the input (False: it holds probabilities).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (over images with ``per_image``).
    """

    def __init__(
        self,
        mode: str,
        weight_type: str = "square",
        smooth: float = 0.0,
        per_image: bool = False,
        include_background: bool = True,
        ignore_index: int | float | None = None,
        from_logits: bool = True,
        reduction: str = "mean",
    ):
        super().__init__()
        self.mode, self.weight_type, self.smooth, self.per_image = mode, weight_type, float(smooth), per_image
        self.include_background, self.ignore_index = include_background, ignore_index
        self.from_logits, self.reduction = from_logits, reduction
        _checks.check_mode(mode, type(self).__name__)
        _checks.check_reduction(reduction, type(self).__name__)
        if weight_type not in WEIGHT_TYPES:
            raise ValueError(f"GeneralizedDiceLoss: weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
        if smooth < 0:
            raise ValueError(f"GeneralizedDiceLoss: smooth must be >= 0, got {smooth!r}")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return generalized_dice_loss(
            logits, target, self.mode, weight_type=self.weight_type, smooth=self.smooth,
            per_image=self.per_image, include_background=self.include_background,
            ignore_index=self.ignore_index, from_logits=self.from_logits, reduction=self.reduction,
        )
