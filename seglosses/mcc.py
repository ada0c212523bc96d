"""Matthews correlation coefficient loss ``1 - MCC`` from soft counts (binary, multilabel).

    MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN))

with ``TP = sum p t``, ``TN = sum (1 - p)(1 - t)``, ``FP = sum p (1 - t)``, ``FN = sum (1 - p) t``
over valid pixels, each plus ``eps`` (segmentation-models-pytorch's ``MCCLoss``, which takes
probabilities; here ``from_logits=True`` applies the sigmoid). The batch is pooled per channel
(``per_image=True``: per image and channel); channels (and images) are then averaged. Binary
mode with ``per_image=False`` equals smp's ``MCCLoss(eps)`` on ``sigmoid(logits)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._region import check_input, region_sums

MODES = ("binary", "multilabel")


def mcc_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    eps: float = 1e-5,
    per_image: bool = False,
    ignore_index: int | float | None = None,
    from_logits: bool = True,
) -> Tensor:
    """``1 - MCC`` of the soft counts; see the module docstring."""
    name = "MCCLoss"
    if mode not in MODES:
        raise ValueError(f"{name}: mode must be one of {MODES} (sigmoid per channel), got {mode!r}")
    target = check_input(logits, target, mode, ignore_index, name)
    tp, psum, tsum, count = region_sums(
        logits, target, mode, from_logits=from_logits, per_image=per_image, ignore_index=ignore_index
    )
    fp, fn = psum - tp, tsum - tp
    tn = count - psum - tsum + tp
    tp, fp, fn, tn = tp + eps, fp + eps, fn + eps, tn + eps
    num = tp * tn - fp * fn
    den = torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (1.0 - num / den.clamp_min(1e-12)).mean()


class MCCLoss(nn.Module):
    """``1 - MCC`` as a module; see :func:`mcc_loss`.

    Args:
        mode: ``"binary" | "multilabel"``.
        eps: added to each of the four soft counts (smp's ``eps``).
        per_image: one MCC per image and channel (False: the batch pooled per channel).
        ignore_index: target value whose pixels leave every count.
        from_logits: apply the sigmoid (False: the input holds probabilities).
    """

    def __init__(
        self,
        mode: str,
        eps: float = 1e-5,
        per_image: bool = False,
        ignore_index: int | float | None = None,
        from_logits: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"MCCLoss: mode must be one of {MODES} (sigmoid per channel), got {mode!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"MCCLoss: eps must be a float >= 0, got {eps!r}")
        self.mode, self.eps, self.per_image = mode, float(eps), bool(per_image)
        self.ignore_index, self.from_logits = ignore_index, bool(from_logits)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return mcc_loss(
            logits, target, self.mode, eps=self.eps, per_image=self.per_image,
            ignore_index=self.ignore_index, from_logits=self.from_logits,
        )
