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

Every row of errors is sorted at once (no Python loop over images or classes). The ReLU of the
hinge is taken before the sort, and ignored pixels get the error 0: a pixel of error 0 adds
nothing and sorts after every pixel of positive error, whose Jaccard weights depend only on the
pixels sorted before them, so neither changes the loss or the gradient of any other pixel. A
problem with no valid pixel costs 0; so does an image with no present class under ``"present"``.

On CPU, float32 errors are sorted as integers: a non-negative float orders like its bit pattern
read as an int32, so ``row * 2^31 + (2^31 - 1 - bits)`` is an int64 key that puts the rows one
after another, each in descending order, and one 1-D sort of these keys orders every row.
PyTorch sorts 1-D integer tensors of at least 32768 elements by radix sort where it is built
with FBGEMM (the x86 wheels), several times faster than a float sort along the last dimension.
The sort is stable, so tied errors keep their pixel order (the loss does not depend on it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from ._region import check_input
from ._targets import dense_target, index_target, upcast

CLASSES = ("present", "all")


# PyTorch's 1-D integer radix sort: built with FBGEMM, and from at::internal::GRAIN_SIZE elements.
_RADIX_SORT = "fbgemm" in torch.backends.quantized.supported_engines
_RADIX_MIN = 32768


def _sorted_rows(errors: Tensor, gt: Tensor, per_image: bool) -> tuple[Tensor, Tensor]:
    """Errors sorted in descending order per problem, and ``gt`` in the same order: ``[R, m]`` each.

    errors, gt: ``[B, C, n]``, errors >= 0. A problem (row) is an image and channel with
    ``per_image``, else a channel over the whole batch (``R = C``, ``m = B n``).
    """
    B, C, n = errors.shape
    if errors.device.type == "cpu" and errors.dtype == torch.float32 and _RADIX_SORT and errors.numel() >= _RADIX_MIN:
        rows = torch.arange(C, dtype=torch.int64, device=errors.device).view(1, C, 1)
        if per_image:
            rows = rows + C * torch.arange(B, dtype=torch.int64, device=errors.device).view(B, 1, 1)
        # & 0x7FFFFFFF: -0.0 (sign bit set) would otherwise read as the most negative int32
        bits = errors.detach().view(torch.int32).bitwise_and(0x7FFFFFFF)
        key = (rows * (1 << 31) + ((1 << 31) - 1)) - bits  # int64 [B, C, n]
        perm = torch.sort(key.reshape(-1), stable=True).indices
        shape = (B * C, n) if per_image else (C, B * n)
        return errors.reshape(-1).gather(0, perm).view(shape), gt.reshape(-1).gather(0, perm).view(shape)
    if not per_image:  # the batch as one problem per class: [C, B n]
        errors = errors.transpose(0, 1).reshape(C, -1)
        gt = gt.transpose(0, 1).reshape(C, -1)
    errors_sorted, perm = torch.sort(errors.reshape(-1, errors.shape[-1]), dim=-1, descending=True)
    return errors_sorted, gt.reshape(perm.shape).gather(-1, perm)


def _lovasz_rows(errors_sorted: Tensor, gt_sorted: Tensor) -> Tensor:
    """Lovász extension of the Jaccard loss per row: sorted ``errors >= 0, gt [R, m] -> [R]``."""
    gts = gt_sorted.sum(-1, keepdim=True)
    seen = gt_sorted.cumsum(-1)
    rank = torch.arange(1, gt_sorted.shape[-1] + 1, dtype=gt_sorted.dtype, device=gt_sorted.device)
    # Jaccard loss of the first k pixels: 1 - inter / union with inter = gts - seen and
    # union = gts + cumsum(1 - gt) = gts + rank - seen (>= 1), i.e. rank / union: one cumsum.
    jac = rank / (rank - seen + gts)
    grad = torch.diff(jac, dim=-1, prepend=jac.new_zeros(jac.shape[:-1] + (1,)))
    return (errors_sorted * grad).sum(-1)


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
        errors = (1.0 - x * (2.0 * t - 1.0)).clamp_min(0.0)  # the hinge's ReLU, before the sort
    if valid is not None:
        valid = valid.bool()
        valid = valid.unsqueeze(1) if valid.ndim == 2 else valid
        errors = torch.where(valid, errors, torch.zeros_like(errors))
        gt = gt * valid
    loss = _lovasz_rows(*_sorted_rows(errors, gt, per_image))
    loss = loss.view(B, C) if per_image else loss.view(1, C)
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
