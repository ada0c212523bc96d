"""Soft clDice (Shit et al., 2021): overlap of soft skeletons, for tubular structures (2D, 3D).

The soft skeleton of a probability map is built by ``iterations`` rounds of soft erosion (min
pooling along each axis) and soft opening (erosion then 3x3(x3) max pooling), as in the
authors' code and MONAI. With ``S_p``, ``S_t`` the skeletons of prediction ``p`` and target
``t``, per image (sums over channels and space, as MONAI's ``SoftclDiceLoss``):

    Tprec = (sum S_p t + smooth) / (sum S_p + smooth)
    Tsens = (sum S_t p + smooth) / (sum S_t + smooth)
    L = 1 - 2 Tprec Tsens / (Tprec + Tsens + eps), averaged over the batch

``p`` is the sigmoid (binary, multilabel) or softmax (multiclass, target one-hot encoded) of the
logits. Equal to MONAI's ``SoftclDiceLoss(iter_, smooth_nr=smooth_dr=smooth, smooth=eps)``;
``SoftDiceclDiceLoss(alpha)`` is ``CombinedLoss({"dice": DiceLoss(mode, smooth=1.0,
per_image=True), "cldice": ClDiceLoss(mode)}, {"dice": 1 - alpha, "cldice": alpha})``.
``ignore_index``: ignored pixels are set to 0 in both maps before skeletonising, so their
logits change neither the loss nor its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from ._region import check_input
from ._targets import dense_target, index_target, upcast


def _pool(x: Tensor, kernel: tuple[int, ...]) -> Tensor:
    pad = tuple(k // 2 for k in kernel)
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, kernel, 1, pad)


def soft_erode(x: Tensor) -> Tensor:
    d = x.ndim - 2
    axes = [tuple(3 if i == j else 1 for i in range(d)) for j in range(d)]
    out = None
    for k in axes:
        e = -_pool(-x, k)
        out = e if out is None else torch.minimum(out, e)
    return out


def soft_dilate(x: Tensor) -> Tensor:
    return _pool(x, (3,) * (x.ndim - 2))


def soft_skeleton(x: Tensor, iterations: int) -> Tensor:
    """Soft skeleton of a ``[B, C, H, W]`` or ``[B, C, D, H, W]`` map in [0, 1]."""
    skel = F.relu(x - soft_dilate(soft_erode(x)))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_dilate(soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def cldice_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    iterations: int = 3,
    smooth: float = 1.0,
    eps: float = 1e-4,
    include_background: bool = True,
    ignore_index: int | float | None = None,
) -> Tensor:
    """Soft clDice loss; see the module docstring."""
    name = "ClDiceLoss"
    _checks.check_mode(mode, name)
    target = check_input(logits, target, mode, ignore_index, name)
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"{name}: soft skeletons are 2D or 3D: logits must be [B, C, H, W] or [B, C, D, H, W], "
            f"got shape {list(logits.shape)}"
        )
    x = upcast(logits)
    if mode == "multiclass":
        t, valid = index_target(target, ignore_index)
        p = F.softmax(x, dim=1)
        t = F.one_hot(t, x.shape[1]).movedim(-1, 1).to(x.dtype)
        mask = None if valid is None else valid.unsqueeze(1).to(x.dtype)
    else:
        p = torch.sigmoid(x)
        t, mask = dense_target(target, ignore_index, x.dtype)
    if mask is not None:
        p, t = p * mask, t * mask
    if not include_background:
        if p.shape[1] < 2:
            raise ValueError(f"{name}: include_background=False needs several channels, got {p.shape[1]}")
        p, t = p[:, 1:], t[:, 1:]
    skel_p, skel_t = soft_skeleton(p, iterations), soft_skeleton(t, iterations)
    dims = tuple(range(1, p.ndim))
    tprec = ((skel_p * t).sum(dims) + smooth) / (skel_p.sum(dims) + smooth)
    tsens = ((skel_t * p).sum(dims) + smooth) / (skel_t.sum(dims) + smooth)
    den = (tprec + tsens + eps).clamp_min(1e-12)
    return (1.0 - 2.0 * tprec * tsens / den).mean()


class ClDiceLoss(nn.Module):
    """Soft clDice loss as a module; see :func:`cldice_loss`.

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``.
        iterations: skeletonisation rounds (MONAI's ``iter_``), about the largest vessel radius.
        smooth: added to the numerators and denominators of Tprec and Tsens (MONAI's 1.0).
        eps: added to the harmonic mean's denominator (MONAI's ``smooth``, 1e-4).
        include_background: False drops channel 0.
        ignore_index: target value whose pixels are zeroed in both maps.
    """

    def __init__(
        self,
        mode: str,
        iterations: int = 3,
        smooth: float = 1.0,
        eps: float = 1e-4,
        include_background: bool = True,
        ignore_index: int | float | None = None,
    ):
        super().__init__()
        self.mode = _checks.check_mode(mode, type(self).__name__)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"ClDiceLoss: iterations must be an int >= 0, got {iterations!r}")
        for key, value in (("smooth", smooth), ("eps", eps)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"ClDiceLoss: {key} must be a float >= 0, got {value!r}")
        self.iterations, self.smooth, self.eps = iterations, float(smooth), float(eps)
        self.include_background, self.ignore_index = bool(include_background), ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cldice_loss(
            logits, target, self.mode, iterations=self.iterations, smooth=self.smooth, eps=self.eps,
            include_background=self.include_background, ignore_index=self.ignore_index,
        )
