"""Focal loss (sigmoid for binary/multilabel, softmax for multiclass), as a module."""

from __future__ import annotations

from torch import Tensor, nn

from . import _checks
from . import functional as F


class FocalLoss(nn.Module):
    r"""Focal loss ``FL = -alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., 2017).

    - ``"binary"`` / ``"multilabel"``: sigmoid focal loss with ``torchvision.ops.sigmoid_focal_loss``
      semantics: ``p_t = p t + (1 - p)(1 - t)``, ``alpha_t = alpha t + (1 - alpha)(1 - t)``.
    - ``"multiclass"``: softmax focal loss, ``p_t`` the probability of the target class;
      ``alpha`` a float (scales every pixel) or a per-class list (``alpha_t = alpha[target]``).

    ``"mean"`` is the plain mean over valid pixels (alpha is not in the denominator), so
    ``FocalLoss(mode, gamma=0)`` equals BCE / CE. The modulating factor is computed in log space,
    so gradients stay finite for ``gamma < 1`` at saturated logits.

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``.
        alpha: None (no class balance), a float in [0, 1], or (multiclass only) a list with one
            non-negative weight per class, stored as a buffer. torchvision's default is 0.25.
        gamma: focusing parameter ``>= 0`` (2 in the paper).
        ignore_index: target value whose pixels are excluded (masked mean).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        weight: binary / multilabel: one non-negative weight per channel, multiplying its loss
            (a buffer); the mean stays the plain mean over valid elements, as for alpha.
        pos_weight: binary / multilabel: one weight per channel for the positive term of the
            BCE inside, ``-[w t log p + (1 - t) log(1 - p)]``, as in :class:`BCELoss`.
        include_background: False leaves out the background: multiclass, the pixels whose
            target is class 0 (the softmax still spans every class); multilabel, channel 0.
            Binary mode has no background channel (a ``ValueError``).
    """

    def __init__(
        self,
        mode: str,
        alpha: float | list[float] | Tensor | None = None,
        gamma: float = 2.0,
        ignore_index: int | float | None = None,
        reduction: str = "mean",
        weight: list[float] | Tensor | None = None,
        pos_weight: list[float] | Tensor | None = None,
        include_background: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        self.mode = _checks.check_mode(mode, name)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise ValueError(f"{name}: gamma must be a float >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        self.reduction = _checks.check_reduction(reduction, name)
        if alpha is None or (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)):
            if alpha is not None:
                alpha = _checks.check_fraction(alpha, "alpha", name, high_open=False)
            self.alpha = alpha
        else:
            if mode != "multiclass":
                raise ValueError(
                    f"{name}: a per-class alpha list is for mode='multiclass'; in {mode} mode alpha "
                    f"is one float in [0, 1] (weight of positives), got {alpha!r}"
                )
            self.register_buffer("alpha", _checks.as_weight_tensor(alpha, "alpha", name), persistent=False)
        for key, value in (("weight", weight), ("pos_weight", pos_weight)):
            if value is not None and mode == "multiclass":
                raise ValueError(
                    f"{name}: {key} is per channel of the sigmoid modes; in multiclass mode give "
                    f"per-class weights as alpha=[...]"
                )
            self.register_buffer(key, _checks.as_weight_tensor(value, key, name), persistent=False)
        if not include_background and mode == "binary":
            raise ValueError(
                f"{name}: include_background=False drops channel 0, but binary mode has only the "
                f"foreground channel; use mode='multilabel' or 'multiclass'"
            )
        self.include_background = bool(include_background)

    @property
    def fusable(self) -> bool:
        """Whether the fused Focal + region path computes this loss (it knows none of these)."""
        return self.weight is None and self.pos_weight is None and self.include_background

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.focal_loss(
            logits, target, self.mode, self.alpha, self.gamma, self.ignore_index, self.reduction,
            weight=self.weight, pos_weight=self.pos_weight, include_background=self.include_background,
        )

    def extra_repr(self) -> str:
        alpha = self.alpha if not isinstance(self.alpha, Tensor) else self.alpha.tolist()
        return (
            f"mode={self.mode!r}, alpha={alpha}, gamma={self.gamma}, "
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"include_background={self.include_background}"
        )
