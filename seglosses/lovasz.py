"""Lovász losses (Berman et al., 2018): a convex surrogate of the Jaccard index, sorted errors.

- binary / multilabel: the Lovász hinge on the logits, errors ``1 - x (2t - 1)`` through a ReLU,
  one binary problem per channel (averaged over channels);
- multiclass: the Lovász-softmax, errors ``|onehot(t) - softmax(x)|`` per class, averaged over
  the classes present in the target (``classes="present"``, smp's and the paper's default) or
  over all classes (``classes="all"``, kornia's).

With ``per_image=False`` the batch is one problem; ``per_image=True`` computes each image's
loss and averages them. In binary mode this equals segmentation-models-pytorch's
``LovaszLoss`` (which, in multilabel mode, pools all channels into one binary problem rather
than one per channel) and, with ``per_image=True``, kornia's ``lovasz_hinge_loss``; multiclass
equals smp (``classes="present"``) and kornia (``per_image=True, classes="all"``).

Every row of errors is sorted at once (no Python loop over images or classes). Ignored pixels
get the error -1: they sort after every valid pixel, so they change no valid pixel's Jaccard
weight, and the ReLU gives them no loss and no gradient. A problem with no valid pixel costs 0;
so does an image with no present class under ``"present"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from ._region import check_input
from ._targets import dense_target, index_target, upcast

CLASSES = ("present", "all")


def _lovasz_rows(errors: Tensor, gt: Tensor) -> Tensor:
    """Lovász extension of the Jaccard loss per row: ``errors, gt [R, n] -> [R]``."""
    errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
    gt_sorted = gt.gather(-1, perm)
    gts = gt_sorted.sum(-1, keepdim=True)
    seen = gt_sorted.cumsum(-1)
    rank = torch.arange(1, gt.shape[-1] + 1, dtype=gt.dtype, device=gt.device)
    # Jaccard loss of the first k pixels: 1 - inter / union with inter = gts - seen and
    # union = gts + cumsum(1 - gt) = gts + rank - seen (>= 1), i.e. rank / union: one cumsum.
    jac = rank / (rank - seen + gts)
    grad = torch.diff(jac, dim=-1, prepend=jac.new_zeros(jac.shape[:-1] + (1,)))
    return (errors_sorted.clamp_min(0.0) * grad).sum(-1)


def lovasz_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    per_image: bool = False,
    classes: str = "present",
    ignore_index: int | float | None = None,
) -> Tensor:
    """Lovász hinge (binary, multilabel) or Lovász-softmax (multiclass); see the module docstring."""
    name = "LovaszLoss"
    _checks.check_mode(mode, name)
    if classes not in CLASSES:
        raise ValueError(f"{name}: classes must be one of {CLASSES}, got {classes!r}")
    target = check_input(logits, target, mode, ignore_index, name)
    x = upcast(logits)
    B, C = x.shape[:2]
    x = x.reshape(B, C, -1)
    if mode == "multiclass":
        t, valid = index_target(target.reshape(B, -1), ignore_index)
        p = F.softmax(x, dim=1)
        # float ops only: on CPU a bool-mask where (and its backward) costs several float passes
        gt = torch.zeros_like(p).scatter_(1, t.unsqueeze(1), 1.0)  # one-hot [B, C, n]
        errors = (gt - p).abs()  # |onehot - p|: 1 - p at the target class, p elsewhere
    else:
        t, valid = dense_target(target.reshape(B, C, -1), ignore_index, x.dtype)
        gt = t
        errors = 1.0 - x * (2.0 * t - 1.0)
    if valid is not None:
        valid = valid.bool()
        valid = valid.unsqueeze(1) if valid.ndim == 2 else valid
        errors = torch.where(valid, errors, torch.full_like(errors, -1.0))
        gt = gt * valid
    if not per_image:  # the batch as one problem per class: [1, C, B n]
        errors = errors.transpose(0, 1).reshape(1, C, -1)
        gt = gt.transpose(0, 1).reshape(1, C, -1)
    loss = _lovasz_rows(errors, gt)  # [B or 1, C]
    if mode == "multiclass" and classes == "present":
        present = (gt.sum(-1) > 0).to(loss.dtype)
        per = (loss * present).sum(-1) / present.sum(-1).clamp_min(1.0)
    else:
        per = loss.mean(-1)
    return per.mean()


class LovaszLoss(nn.Module):
    """Lovász loss as a module; see :func:`lovasz_loss`.

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``.
        per_image: one loss per image, averaged (False: the batch is one problem).
        classes: multiclass only, ``"present"`` (classes in the target) or ``"all"``.
        ignore_index: target value whose pixels are left out.
    """

    def __init__(
        self,
        mode: str,
        per_image: bool = False,
        classes: str = "present",
        ignore_index: int | float | None = None,
    ):
        super().__init__()
        self.mode = _checks.check_mode(mode, type(self).__name__)
        if classes not in CLASSES:
            raise ValueError(f"LovaszLoss: classes must be one of {CLASSES}, got {classes!r}")
        self.per_image, self.classes, self.ignore_index = bool(per_image), classes, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return lovasz_loss(
            logits, target, self.mode, per_image=self.per_image, classes=self.classes,
            ignore_index=self.ignore_index,
        )
