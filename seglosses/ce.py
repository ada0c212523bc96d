"""Multiclass cross-entropy with class-index targets, as a module."""

from __future__ import annotations

from torch import Tensor, nn

from . import _checks
from . import functional as F


class CrossEntropyLoss(nn.Module):
    r"""Cross-entropy over the channel dim with class-index targets (``torch.nn.functional.cross_entropy``).

    .. math:: \ell_i = -\sum_c w_c\, q_{ic} \log \mathrm{softmax}(x_i)_c,
              \quad q_i = (1 - s)\,\mathrm{onehot}(t_i) + s / C

    ``"mean"`` divides by ``sum_i w_{t_i}`` over valid pixels, as PyTorch does; a batch with every
    pixel ignored gives 0 with zero gradient (PyTorch gives NaN).

    Args:
        weight: per-class weights ``w_c`` (one per channel), e.g. inverse class frequencies
            ("balanced cross-entropy"). Stored as a buffer.
        ignore_index: class index whose pixels are excluded (e.g. 255 for a void label).
        label_smoothing: ``s`` in [0, 1).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        beta: ``None`` (default: the cross-entropy above) or a float in (0, 1): the Combo loss's
            modified cross-entropy (Taghanaki et al. 2019) in its multiclass form, one-vs-rest
            over the softmax ``p``,
            ``l_i = -(1/C) sum_c w_c [beta q_ic log p_ic + (1 - beta)(1 - q_ic) log(1 - p_ic)]``;
            ``"mean"`` averages over valid pixels (so over every pixel and class, as the authors'
            code; the weights are not in the denominator). ``beta > 0.5`` penalises false
            negatives more. Never fused by :class:`~seglosses.CombinedLoss`.

    Shape:
        logits ``[B, C, *spatial]`` (``C >= 2``); target ``[B, *spatial]`` integer indices in
        ``[0, C)`` or ``ignore_index``.
    """

    def __init__(
        self,
        weight: Tensor | list[float] | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        *,
        beta: float | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        F._check_beta(beta, name)
        self.beta = None if beta is None else float(beta)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"{name}: ignore_index must be an int class index, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.label_smoothing = _checks.check_fraction(label_smoothing, "label_smoothing", name)
        self.reduction = _checks.check_reduction(reduction, name)
        self.register_buffer("weight", _checks.as_weight_tensor(weight, "weight", name), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(
            logits, target, self.weight, self.ignore_index, self.label_smoothing, self.reduction, beta=self.beta
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"reduction={self.reduction!r}" + ("" if self.beta is None else f", beta={self.beta}")
        )
