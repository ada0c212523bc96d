"""Hausdorff-distance losses (Karimi & Salcudean, IEEE TMI 2019): the squared error weighted by
distances to the boundaries (``HausdorffDTLoss``) or by repeated erosions (``HausdorffERLoss``).

Both compare, per class channel, the probability ``p`` (``sigmoid`` for binary and multilabel,
``softmax`` over the channels for multiclass) with the target ``t`` (one-hot for multiclass).

``HausdorffDTLoss`` (distance-transform form, as MONAI's ``HausdorffDTLoss``)::

    L = 1/|K| sum_{c in K} mean_{b,x} (p - t)^2 (dp^alpha + dt^alpha)        (log: log(1 + L))

``dt = |d|`` the unsigned distance of each pixel to the target's class boundary (``d`` the
canonical signed map of :mod:`seglosses.derived`: ``edt(c) + edt(not c)``), ``dp`` the same for
the prediction's mask ``p > 0.5``, computed in the loss every call (scipy, CPU, no gradient) as
MONAI does. Errors far from either boundary weigh most. A class (or predicted mask) absent from
an image or covering all of it has no boundary: its field is 0, per image and channel (as MONAI;
so a class absent from both target and thresholded prediction adds 0 whatever its soft errors).

``HausdorffERLoss`` (erosion form, as kornia's ``HausdorffERLoss`` / ``HausdorffERLoss3D``):
starting from ``e_0 = (p - t)^2``, ``K = erosions`` rounds of::

    s = mean of e over the cross (the pixel and its 2n axis neighbours, zero outside the image)
    e = max(s - 0.5, 0), then min-max normalised to [0, 1] per image and class (unless constant)
    L += (k + 1)^alpha * e                                      k = 0, ..., K - 1
    L = 1/|K| sum_{c in K} mean_{b,x} L

no distance transform, pure torch (runs on the GPU). The cross mean and the threshold are one
autograd function made of shifted in-place adds, which is its own adjoint (the kernel is
symmetric, the padding zero): several times faster than kornia's ``conv2d``/``conv3d``.

``ignore_index``: ignored pixels count for nothing: both fields treat them as in no class (the
prediction's mask is taken with ``p = 0`` there), the erosion form starts from an error of 0 there
(a correctly predicted pixel), their terms are masked out and the mean divides by the number of
valid pixels (per class; a class without any is left out of the class average). Without ignored
pixels the means are the plain means above, equal to the peers'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _checks
from ._region import check_input
from ._targets import upcast
from .boundary import (
    DISTANCE, check_distance, check_ignore_index, check_include_background, check_spacing,
    check_spatial, computed_distance, probabilities, spacing_for, valid_mean,
)


def _check_alpha(alpha, name: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(
            f"{name}: alpha (the exponent of the distance weights) must be a finite float > 0, "
            f"got {alpha!r}; the paper and the peers use 2.0"
        )
    return float(alpha)


def _check_flag(value, key: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: {key} must be True or False, got {value!r}")
    return value


# --- distance-transform form ----------------------------------------------------------------------

@torch.no_grad()
def _prediction_field(p: Tensor, spacing) -> Tensor:
    """``|d|`` of the prediction's masks ``p > 0.5``, per image and channel, float32 on ``p``'s
    device (MONAI's ``distance_field``: ``edt(mask) + edt(not mask)``, 0 if empty or full)."""
    from .derived import _scipy_edt

    _scipy_edt()  # a torch-only install: the message naming the extra, not numpy's ModuleNotFoundError
    import numpy as np  # with scipy, only when a field is computed

    from .derived import signed_distance

    masks = (p > 0.5).cpu().numpy()
    fields = np.stack([signed_distance(m, spacing) for m in masks])
    return torch.from_numpy(fields).abs_().to(p.device)


def hausdorff_dt_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    distance: Tensor | None = None,
    alpha: float = 2.0,
    log: bool = False,
    include_background: bool = True,
    ignore_index: int | float | None = None,
    spacing: Sequence[float] | None = None,
) -> Tensor:
    r"""Hausdorff distance-transform loss (Karimi & Salcudean 2019); see the module docstring.

    ``L = 1/|K| sum_{c in K} mean_{b,x}((p - t)^2 (dp^alpha + dt^alpha))``; ``log(1 + L)`` with ``log``.

    Args:
        logits: ``[B, C, H, W]`` or ``[B, C, D, H, W]``.
        target: binary ``[B, 1, *]`` or ``[B, *]`` 0/1, multiclass ``[B, *]`` class indices,
            multilabel ``[B, C, *]`` 0/1 (a soft target enters ``(p - t)^2`` as it is; its
            field is that of ``t > 0.5``, as MONAI's).
        mode: ``"binary" | "multiclass" | "multilabel"``.
        distance: the canonical signed maps ``[B, C, *spatial]`` of the target (C the logits'
            channels; :mod:`seglosses.derived`), whose absolute value is the target's field
            ``dt``. None: computed here (scipy, CPU, every call: slower). The prediction's field
            is always computed here, on the CPU.
        alpha: exponent of the distances (> 0; 2 in the paper and MONAI).
        log: ``log(1 + L)`` (MONAI's ``LogHausdorffDTLoss``).
        include_background: False leaves channel 0 out (not allowed in binary mode).
        ignore_index: target value of pixels that count for nothing (module docstring).
        spacing: size of a pixel along each spatial axis, for the fields computed here (the
            prediction's always, the target's when ``distance`` is None): give the spacing the
            maps were computed with, so that both fields share a unit. None: 1, as MONAI.
    """
    name = "HausdorffDTLoss"
    _checks.check_mode(mode, name)
    check_ignore_index(ignore_index, name)
    alpha = _check_alpha(alpha, name)
    _check_flag(log, "log", name)
    target = check_input(logits, target, mode, ignore_index, name)
    check_spatial(logits, name)
    check_include_background(include_background, mode, logits.shape[1], name)
    spacing = spacing_for(spacing, logits, name)
    if distance is None:
        distance = computed_distance(target, mode, logits.shape[1], ignore_index, spacing)
    else:
        check_distance(distance, logits, name)
    x = upcast(logits)
    p, t, valid = probabilities(x, target, mode, ignore_index, one_hot=True)
    dt = distance.to(x.device).abs()
    if not include_background:
        p, t, dt = p[:, 1:], t[:, 1:], dt[:, 1:]
        valid = valid if valid is None or valid.shape[1] == 1 else valid[:, 1:]
    # Ignored pixels are in no predicted mask either, so their logits cannot move the field.
    dp = _prediction_field(p.detach() if valid is None else p.detach() * valid, spacing)
    # The weights in float32, as MONAI's (the fields are float32 distances): same numbers, less work.
    weight = (dp.float() ** alpha + dt.float() ** alpha).to(x.dtype)
    err = (p - t) ** 2
    terms = err * weight if valid is None else err * weight * valid
    loss = valid_mean(terms, valid)
    return torch.log1p(loss) if log else loss


class HausdorffDTLoss(nn.Module):
    r"""Hausdorff distance-transform loss (Karimi & Salcudean 2019) as a module; see
    :func:`hausdorff_dt_loss`.

    ``L = 1/|K| sum_{c in K} mean_{b,x}((p - t)^2 (dp^alpha + dt^alpha))`` (``log(1 + L)`` with
    ``log``), ``dt``/``dp`` the distances to the target's / thresholded prediction's boundary.
    Equals ``monai.losses.HausdorffDTLoss`` (``LogHausdorffDTLoss`` with ``log``) with
    ``sigmoid=True`` (or ``softmax=True, to_onehot_y=True``) and the same ``alpha`` and
    ``include_background``.

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``.
        alpha: exponent of the distances (> 0), 2.0 as the paper and MONAI.
        log: False; True gives ``log(1 + L)`` (MONAI's ``LogHausdorffDTLoss``).
        include_background: default True, as every seglosses loss; MONAI's default is False (it
            then drops channel 0, the paper's foreground-only setting for multiclass): pass
            ``include_background=False`` for MONAI's default in multiclass. Refused in binary mode
            (its only channel is the foreground); in multilabel mode channel 0 is a class like
            the others.
        ignore_index: target value whose pixels count for nothing (module docstring).
        spacing: size of a pixel along each spatial axis for the fields the loss computes (the
            prediction's every call, the target's without ``distance``); default None: 1.

    Forward: ``loss(logits, target, distance=None)``; ``distance`` as for
    :class:`~seglosses.boundary.BoundaryLoss` (:attr:`derived_targets`). The prediction's field
    costs a scipy distance transform per image and class on the CPU every call, as MONAI's.
    """

    derived_targets = (DISTANCE,)

    def __init__(
        self,
        mode: str,
        *,
        alpha: float = 2.0,
        log: bool = False,
        include_background: bool = True,
        ignore_index: int | float | None = None,
        spacing: Sequence[float] | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.mode = _checks.check_mode(mode, name)
        self.alpha = _check_alpha(alpha, name)
        self.log = _check_flag(log, "log", name)
        self.include_background = check_include_background(include_background, mode, None, name)
        self.ignore_index = check_ignore_index(ignore_index, name)
        self.spacing = check_spacing(spacing, owner=name)

    def forward(self, logits: Tensor, target: Tensor, *, distance: Tensor | None = None) -> Tensor:
        return hausdorff_dt_loss(
            logits, target, self.mode, distance=distance, alpha=self.alpha, log=self.log,
            include_background=self.include_background, ignore_index=self.ignore_index, spacing=self.spacing,
        )

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, alpha={self.alpha}, log={self.log}, include_background="
                f"{self.include_background}, ignore_index={self.ignore_index}, spacing={self.spacing}")


# --- erosion form ---------------------------------------------------------------------------------

def _cross_mean(x: Tensor) -> Tensor:
    """Mean over the cross (the pixel and its two neighbours along each spatial axis), zero
    outside: kornia's ``conv(x, cross / (1 + 2n), padding=1)`` as in-place adds of shifted views.

    The weight is the exact ``1 / (1 + 2n)``; kornia's kernel holds it in float32 (``0.2``
    rounded), which moves its float64 values by about 1e-7 relative.
    """
    w = 1.0 / (2 * (x.ndim - 2) + 1)
    out = x * w
    for dim in range(2, x.ndim):
        n = x.shape[dim]
        if n > 1:
            out.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1), alpha=w)
            out.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1), alpha=w)
    return out


class _ErodeThreshold(torch.autograd.Function):
    """``max(cross_mean(x) - 0.5, 0)`` with a hand-written backward.

    The cross mean with zero padding is symmetric, so its adjoint is itself; the threshold passes
    the gradient where ``s >= 0.5``, ties included (kornia's ``masked_fill(s < 0.5, 0)``). As one
    function the step stores one tensor and runs no slicing/padding backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        s = _cross_mean(x)
        ctx.save_for_backward(s)
        return (s - 0.5).clamp_min_(0.0)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (s,) = ctx.saved_tensors
        return _cross_mean(g.masked_fill(s < 0.5, 0.0))


def hausdorff_er_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    alpha: float = 2.0,
    erosions: int = 10,
    include_background: bool = True,
    ignore_index: int | float | None = None,
) -> Tensor:
    r"""Hausdorff erosion loss (Karimi & Salcudean 2019); see the module docstring.

    Args:
        logits: ``[B, C, H, W]`` or ``[B, C, D, H, W]``.
        target: binary ``[B, 1, *]`` or ``[B, *]`` in [0, 1], multiclass ``[B, *]`` class
            indices, multilabel ``[B, C, *]`` in [0, 1].
        mode: ``"binary" | "multiclass" | "multilabel"``.
        alpha: erosion ``k`` (from 0) weighs ``(k + 1)^alpha`` (> 0; kornia's 2.0).
        erosions: number of erosions (>= 1; kornia's ``k``, 10).
        include_background: False leaves channel 0 out (not allowed in binary mode).
        ignore_index: target value of pixels that count for nothing (module docstring).
    """
    name = "HausdorffERLoss"
    _checks.check_mode(mode, name)
    check_ignore_index(ignore_index, name)
    alpha = _check_alpha(alpha, name)
    erosions = _check_erosions(erosions, name)
    target = check_input(logits, target, mode, ignore_index, name)
    check_spatial(logits, name, "the erosions")
    check_include_background(include_background, mode, logits.shape[1], name)
    x = upcast(logits)
    p, t, valid = probabilities(x, target, mode, ignore_index, one_hot=True)
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]
        valid = valid if valid is None or valid.shape[1] == 1 else valid[:, 1:]
    err = (p - t) ** 2
    e = err if valid is None else err * valid
    space = tuple(range(2, e.ndim))
    total = None
    for k in range(erosions):
        e = _ErodeThreshold.apply(e)
        # Min-max normalisation per image and class (kornia's): lanes with a constant value keep it,
        # dividing by a safe 1 (a 0/0 in the unused branch of the where would poison the gradient).
        hi, lo = e.amax(space, keepdim=True), e.amin(space, keepdim=True)
        spread = hi - lo
        varies = spread != 0
        e = torch.where(varies, (e - lo) / torch.where(varies, spread, 1.0), e)
        # Only the mean of the weighted sum is needed: sums per class, not a running full-size map.
        step = (e if valid is None else e * valid).sum((0, *space)) * float(k + 1) ** alpha
        total = step if total is None else total + step
    if valid is None:
        return total.sum() / e.numel()
    count = valid.sum((0, *space))
    has = (count > 0).to(total.dtype).expand_as(total)
    return (total / count.clamp_min(1.0) * has).sum() / has.sum().clamp_min(1.0)


def _check_erosions(erosions, name: str) -> int:
    if isinstance(erosions, bool) or not isinstance(erosions, int) or erosions < 1:
        raise ValueError(f"{name}: erosions must be an int >= 1 (kornia's k, 10 by default), got {erosions!r}")
    return erosions


class HausdorffERLoss(nn.Module):
    r"""Hausdorff erosion loss (Karimi & Salcudean 2019) as a module; see :func:`hausdorff_er_loss`.

    ``erosions`` rounds of a cross-mean erosion of ``(p - t)^2``, thresholded at 0.5 and min-max
    normalised per image and class, weighted by ``(k + 1)^alpha``; the mean over pixels, images
    and classes. No distance transform: pure torch, on the logits' device.

    Equals kornia's ``HausdorffERLoss`` (2D) / ``HausdorffERLoss3D`` (3D) (``k = erosions``,
    ``reduction="mean"``), which take probabilities and integer labels ``[B, 1, *]`` and compare
    channel ``c`` with ``label == c``: multiclass is ``kornia(softmax(logits), target[:, None])``;
    binary ``kornia(cat([1 - p, p], 1), target.long())`` (its two channels have the same error
    ``(p - t)^2``), and multilabel the mean over channels ``c`` of that binary form on channel
    ``c``. Up to ~1e-7 relative: kornia's kernel weights are float32 (see :func:`_cross_mean`).

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``.
        alpha: exponent of the erosion weights ``(k + 1)^alpha`` (> 0), 2.0 as kornia.
        erosions: number of erosions (>= 1), 10 as kornia's ``k``; about the largest error
            thickness (in pixels) the loss still tells apart.
        include_background: True (kornia compares every channel, class 0 included); False drops
            channel 0 (not allowed in binary mode).
        ignore_index: target value whose pixels count for nothing (module docstring).
    """

    derived_targets: tuple[str, ...] = ()

    def __init__(
        self,
        mode: str,
        *,
        alpha: float = 2.0,
        erosions: int = 10,
        include_background: bool = True,
        ignore_index: int | float | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.mode = _checks.check_mode(mode, name)
        self.alpha = _check_alpha(alpha, name)
        self.erosions = _check_erosions(erosions, name)
        self.include_background = check_include_background(include_background, mode, None, name)
        self.ignore_index = check_ignore_index(ignore_index, name)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return hausdorff_er_loss(
            logits, target, self.mode, alpha=self.alpha, erosions=self.erosions,
            include_background=self.include_background, ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, alpha={self.alpha}, erosions={self.erosions}, "
                f"include_background={self.include_background}, ignore_index={self.ignore_index}")
