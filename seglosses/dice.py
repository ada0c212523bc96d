"""Region losses: Dice (and log-cosh Dice), Jaccard (soft IoU) and Tversky, as modules holding their options."""

from __future__ import annotations

from torch import Tensor, nn

from ._region import log_cosh, region_loss
from .options import FIELDS, TVERSKY_ONLY, RegionOptions

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
        reduction: ``"mean"`` (default); ``"sum"``: ``sum_c w_c L_c`` (over images too with
            ``per_image``); ``"none"``: the per-class losses ``[C]`` (``[B, C]`` with
            ``per_image``), unweighted, 0 for a class that carries no weight.

    Shape:
        logits ``[B, C, *spatial]`` (2D, 3D, ...); target binary ``[B, 1, *]`` or ``[B, *]`` in
        [0, 1], multiclass ``[B, *]`` integer indices, multilabel ``[B, C, *]`` in [0, 1].
"""


class _RegionLoss(nn.Module):
    """Holds one validated :class:`RegionOptions`; every option is also an attribute.

    The attributes (``mode``, ``smooth``, ...) read the options; assigning one builds new,
    validated options. ``class_weights`` is a non-persistent buffer (so ``.to(device)`` moves
    it) that the options share.
    """

    kind = "dice"

    def _set_options(self, **options) -> None:
        self.options = RegionOptions(kind=self.kind, **options)
        self.register_buffer("class_weights", self.options.class_weights, persistent=False)

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .double() moved the class_weights buffer: the options follow it.
        module = super()._apply(fn, *args, **kwargs)
        if self.class_weights is not self.options.class_weights:
            self.options = self.options.replace(class_weights=self.class_weights)
        return module

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return region_loss(logits, target, self.options)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, smooth={self.smooth}, per_image={self.per_image}, "
            f"ignore_index={self.ignore_index}, empty_class={self.empty_class!r}"
        )


def _option_property(name: str) -> property:
    def get(self):
        return getattr(self.options, name)

    def set(self, value):
        self.options = self.options.replace(**{name: value})

    return property(get, set, doc=f"The ``{name}`` option (see :class:`RegionOptions`).")


class _OverlapLoss(_RegionLoss):
    """Dice and Jaccard: the same options, a different score."""

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
        reduction: str = "mean",
    ):
        super().__init__()
        self._set_options(
            mode=mode,
            from_logits=from_logits,
            smooth=smooth,
            squared_pred=squared_pred,
            log_loss=log_loss,
            per_image=per_image,
            ignore_index=ignore_index,
            class_weights=class_weights,
            include_background=include_background,
            sync_dist=sync_dist,
            empty_class=empty_class,
            reduction=reduction,
        )


class DiceLoss(_OverlapLoss):
    r"""Soft Dice loss, per class ``L_c = 1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)``.

    With ``squared_pred`` the denominator uses ``sum(p^2)`` (the V-Net form). With ``smooth=0``,
    the default aggregation and every class present in the target it equals
    ``segmentation_models_pytorch.losses.DiceLoss`` (whose ``smooth`` enters as ``2 * smooth``).
    """

    kind = "dice"


class JaccardLoss(_OverlapLoss):
    r"""Soft Jaccard (IoU) loss, per class ``L_c = 1 - (I + smooth) / (P + T - I + smooth)``.

    ``I = sum(p t)``, ``P = sum(p)`` (``sum(p^2)`` with ``squared_pred``), ``T = sum(t)``.
    Equals ``segmentation_models_pytorch.losses.JaccardLoss`` at ``smooth=0`` with every class
    present.
    """

    kind = "jaccard"


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
        reduction: str = "mean",
    ):
        super().__init__()
        self._set_options(
            mode=mode,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            from_logits=from_logits,
            smooth=smooth,
            log_loss=log_loss,
            per_image=per_image,
            ignore_index=ignore_index,
            class_weights=class_weights,
            include_background=include_background,
            sync_dist=sync_dist,
            empty_class=empty_class,
            reduction=reduction,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, " + super().extra_repr()


# Each class gets a property per constructor argument (class_weights is the buffer).
for _cls, _names in (
    (_RegionLoss, [f for f in FIELDS if f not in ("kind", "class_weights", "squared_pred", *TVERSKY_ONLY)]),
    (_OverlapLoss, ["squared_pred"]),
    (TverskyLoss, list(TVERSKY_ONLY)),
):
    for _name in _names:
        setattr(_cls, _name, _option_property(_name))

for _cls in (DiceLoss, JaccardLoss, TverskyLoss):
    _cls.__doc__ = (_cls.__doc__ or "") + _OPTIONS_DOC


class LogCoshDiceLoss(_OverlapLoss):
    r"""Log-cosh Dice loss ``log(cosh(L))`` (Jadon 2020), ``L`` the :class:`DiceLoss` with the
    same options (so the same modes, ``ignore_index``, ``smooth``, ``include_background``, ...).

    The log-cosh is applied to the Dice loss after its reduction (``"mean"`` / ``"sum"``), or to
    each per-class loss with ``reduction="none"``; computed as
    ``|L| + softplus(-2|L|) - log 2`` (:func:`seglosses.functional.log_cosh`), which cannot
    overflow. 0 for a perfect prediction. Never fused by :class:`CombinedLoss` (it runs as its
    own term). Bad input raises the errors of :class:`DiceLoss`, which name ``DiceLoss``.
    """

    kind = "dice"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return log_cosh(region_loss(logits, target, self.options))


LogCoshDiceLoss.__doc__ = (LogCoshDiceLoss.__doc__ or "") + _OPTIONS_DOC
