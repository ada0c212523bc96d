"""Soft clDice (Shit et al., 2021): overlap of soft skeletons, for tubular structures (2D, 3D).

The soft skeleton of a probability map is built by ``iterations`` rounds of soft erosion (min
over 3 pixels along each axis) and soft opening (erosion then 3x3(x3) max), as in the
authors' code and MONAI (which pool with ``max_pool``; here shifted elementwise min/max give the
same values, faster). With ``S_p``, ``S_t`` the skeletons of prediction ``p`` and target
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


class _Extreme(torch.autograd.Function):
    """``torch.minimum`` / ``torch.maximum`` of two tensors with a backward of float ops only.

    torch's own backward for them (and ``max_pool``'s) goes through boolean masks
    (``masked_fill``, ``where``), which on CPU cost several times a float op; the skeleton runs
    dozens of them. Here the gradient goes to ``a`` where it strictly wins (the sign of the
    exact difference ``b - a``, read by the ReLU backward kernel) and to ``b`` elsewhere, ties
    included (a subgradient, as ``max_pool``'s choice of one index is).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, minimum: bool) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.minimum = minimum
        return torch.minimum(a, b) if minimum else torch.maximum(a, b)

    @staticmethod
    def backward(ctx, g: Tensor):
        a, b = ctx.saved_tensors
        margin = b - a if ctx.minimum else a - b  # > 0 exactly where a wins
        ga = torch.ops.aten.threshold_backward(g, margin, 0.0)
        return ga, g - ga, None


def _window3(x: Tensor, dim: int, minimum: bool) -> Tensor:
    """Min or max over each window of 3 along ``dim`` (stride 1, same size).

    The values of MONAI's stride-1 ``max_pool`` of kernel 3 (the border padded with an infinity
    that never wins), as two elementwise ops on shifted views: torch's CPU ``max_pool2d/3d``
    with indices is far slower for these tiny kernels.
    """
    pad = [0, 0] * (x.ndim - 1 - dim) + [1, 1]  # F.pad lists dims from the last
    xp = F.pad(x, pad, value=float("inf") if minimum else float("-inf"))
    n = x.shape[dim]
    pair = _Extreme.apply(xp.narrow(dim, 0, n), xp.narrow(dim, 1, n), minimum)
    return _Extreme.apply(pair, xp.narrow(dim, 2, n), minimum)


def soft_erode(x: Tensor) -> Tensor:
    """Min over the cross of 3 pixels along each axis (MONAI's ``-max_pool(-x)`` per axis)."""
    out = None
    for dim in range(2, x.ndim):
        e = _window3(x, dim, minimum=True)
        out = e if out is None else _Extreme.apply(out, e, True)
    return out


def soft_dilate(x: Tensor) -> Tensor:
    """Max over the 3x3 (3x3x3) neighbourhood, axis by axis (a max over a box is separable)."""
    for dim in range(2, x.ndim):
        x = _window3(x, dim, minimum=False)
    return x


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
