"""Binary cross-entropy from logits, as a module (binary and multilabel segmentation)."""

from __future__ import annotations

from torch import Tensor, nn

from . import _checks
from . import functional as F


class BCELoss(nn.Module):
    r"""Binary cross-entropy computed from logits.

    .. math:: \ell = -[\,w_c\, t' \log\sigma(x) + (1 - t') \log(1 - \sigma(x))\,],
              \quad t' = t (1 - s) + s / 2

    Args:
        pos_weight: per-class weight ``w_c`` of the positive term (a list or 1-D tensor with one
            value per channel of the logits, dim 1 -- not per last dimension as in
            ``torch.nn.BCEWithLogitsLoss``). Stored as a buffer, so ``.to(device)`` moves it.
        label_smoothing: ``s`` in [0, 1); targets move towards 1/2.
        ignore_index: target value whose elements are excluded (masked mean over the rest).
        reduction: ``"mean"`` (over valid elements) | ``"sum"`` | ``"none"``.
        beta: ``None`` (default: the plain BCE above) or a float in (0, 1): the Combo loss's
            modified BCE (Taghanaki et al. 2019),
            ``-[beta w_c t' log p + (1 - beta)(1 - t') log(1 - p)]``; ``beta > 0.5`` penalises
            false negatives more, ``beta < 0.5`` false positives. Never fused by
            :class:`~seglosses.CombinedLoss` (the term runs on its own). ``conf/loss/combo.yaml``
            is the Combo loss.

    Shape:
        logits ``[B, C, *spatial]``; target the same shape (or ``[B, *spatial]`` when ``C == 1``),
        float/int/bool with values in [0, 1] (soft labels allowed).
    """

    def __init__(
        self,
        pos_weight: Tensor | list[float] | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int | float | None = None,
        reduction: str = "mean",
        *,
        beta: float | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        F._check_beta(beta, name)
        self.beta = None if beta is None else float(beta)
        self.label_smoothing = _checks.check_fraction(label_smoothing, "label_smoothing", name)
        self.ignore_index = ignore_index
        self.reduction = _checks.check_reduction(reduction, name)
        # Config, not learned state: kept out of state_dict so checkpoints don't depend on it.
        self.register_buffer(
            "pos_weight", _checks.as_weight_tensor(pos_weight, "pos_weight", name), persistent=False
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(
            logits, target, self.pos_weight, self.label_smoothing, self.ignore_index, self.reduction, beta=self.beta
        )

    def extra_repr(self) -> str:
        return (
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}" + ("" if self.beta is None else f", beta={self.beta}")
        )
