"""Skeleton Recall loss (Kirchhoff et al., ECCV 2024): soft recall of the tubed target skeleton (2D, 3D).

Thin structures (vessels, roads, cracks) are lost by a Dice that a few wide regions dominate. Skeleton
Recall asks that the prediction cover the *skeleton* of the target, thickened into a tube of
2 pixels (see :func:`seglosses.derived.tubed_skeleton`): a cheap, CPU-computed, fixed mask, so the
loss itself is one sum per class. With ``S_c`` the tubed skeleton of class ``c`` and ``p_c`` the
predicted probability (softmax over the classes for ``multiclass``, sigmoid per channel for
``binary`` / ``multilabel``), summed over the batch and space (``per_image=False``, "batch Dice")
or per image::

    rec_c = (sum p_c S_c + smooth) / max(sum S_c + smooth, 1e-8)
    L = 1 - mean_c rec_c          (mean over (image,) class)

This is MIC-DKFZ/Skeleton-Recall's ``SoftSkeletonRecallLoss`` (nnunetv2/training/loss/dice.py),
which returns ``-mean rec``; ``1 - mean rec`` has the same gradient and is 0 for a perfect
recall, like every seglosses loss. Its defaults are ours: ``do_bg=False`` (multiclass: class 0,
the background, has no skeleton and never counts -- their code raises for ``do_bg=True``; binary
and multilabel channels are all foreground and all count), ``smooth=1`` (the class default; their
nnU-Net trainer passes ``1e-5``, see ``conf/loss/dice_ce_skeleton_recall.yaml``), and
``batch_dice=True`` as nnU-Net plans it for 2D (``per_image=False``).

The skeleton comes in the mask's layout: ``multiclass`` ``[B, *spatial]`` class indices of the
skeleton pixels, 0 elsewhere (the authors' ``SkeletonTransform``: ``skel *= seg``); ``binary``
``[B, 1, *]`` (or ``[B, *]``) and ``multilabel`` ``[B, C, *]`` of 0/1. Pass it as ``skeleton=``
(the training harness computes it in the data pipeline); without it the loss computes it from the
target with :func:`seglosses.derived.skeleton_from_target` -- on the CPU with scikit-image, every
call, on the crop the loss sees: correct but slow.

Empty classes: a class with no skeleton pixel (absent, or too small to skeletonise) has
``rec = smooth / smooth = 1`` (costs 0: nothing to recall) for ``smooth > 0``, and ``0 / 1e-8 = 0``
(costs 1, a constant without gradient) for ``smooth = 0``, as the authors' clip gives. Never NaN.

``ignore_index``: pixels whose *target* equals it count in neither sum (their logits change
neither the loss nor its gradient), whatever the skeleton holds there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import _checks
from ._region import check_input
from ._targets import binary_target, upcast

NAME = "SkeletonRecallLoss"


def _check_skeleton(logits: Tensor, target: Tensor, skeleton, mode: str, ignore_index) -> Tensor:
    """The skeleton in the target's layout (binary: with its channel dim), checked like a target."""
    if not isinstance(skeleton, Tensor):
        raise ValueError(
            f"{NAME}: skeleton must be a torch.Tensor in the mask's layout (seglosses.derived.tubed_skeleton), "
            f"got {type(skeleton).__name__}"
        )
    if mode == "binary":
        skeleton = binary_target(logits, skeleton)
    if tuple(skeleton.shape) != tuple(target.shape):
        raise ValueError(
            f"{NAME}: skeleton must have the target's shape {list(target.shape)} (the mask's layout: "
            f"{'class indices [B, *spatial]' if mode == 'multiclass' else '0/1 [B, C, *spatial]'}), "
            f"got {list(skeleton.shape)}; compute it with seglosses.derived.skeleton_from_target"
        )
    if skeleton.is_complex():
        raise ValueError(f"{NAME}: skeleton must be real, got dtype {skeleton.dtype}")
    if mode == "multiclass" and (skeleton.is_floating_point() or skeleton.dtype == torch.bool):
        raise ValueError(
            f"{NAME}: a multiclass skeleton holds class indices (an integer dtype, 0 off the skeleton), "
            f"got dtype {skeleton.dtype}"
        )
    if _checks._value_checks_active() and skeleton.numel() > 0 and skeleton.dtype != torch.bool:
        lo, hi = _checks._valid_range(skeleton, ignore_index)
        high = logits.shape[1] - 1 if mode == "multiclass" else 1
        if float(lo) < 0 or float(hi) > high:
            raise ValueError(
                f"{NAME}: skeleton values must be in [0, {high}] "
                f"({'class indices' if mode == 'multiclass' else '0/1'}), got values in "
                f"[{float(lo):g}, {float(hi):g}]; compute it with seglosses.derived.skeleton_from_target"
            )
    return skeleton


def skeleton_recall_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    skeleton: Tensor | None = None,
    smooth: float = 1.0,
    per_image: bool = False,
    ignore_index: int | float | None = None,
) -> Tensor:
    """Skeleton Recall loss ``1 - mean_c rec_c``; see the module docstring.

    Args:
        logits: ``[B, C, H, W]`` or ``[B, C, D, H, W]``.
        target: the mask (multiclass ``[B, *]`` indices; binary ``[B, 1, *]`` / ``[B, *]``;
            multilabel ``[B, C, *]``); only its ignored pixels are read when ``skeleton`` is given.
        mode: ``"binary" | "multiclass" | "multilabel"``.
        skeleton: the tubed skeleton in the mask's layout, or None to compute it from ``target``.
        smooth: added to the numerator and the denominator of each recall (>= 0).
        per_image: one recall per image and class (averaged over both) instead of per class over
            the whole batch (default, nnU-Net's ``batch_dice``).
        ignore_index: target value whose pixels count in neither sum.
    """
    _checks.check_mode(mode, NAME)
    target = check_input(logits, target, mode, ignore_index, NAME)
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"{NAME}: skeletons are 2D or 3D: logits must be [B, C, H, W] or [B, C, D, H, W], "
            f"got shape {list(logits.shape)}"
        )
    if skeleton is None:
        from .derived import skeleton_from_target  # numpy / scikit-image: only when needed

        skeleton = skeleton_from_target(target, mode, ignore_index)
    skeleton = _check_skeleton(logits, target, skeleton, mode, ignore_index)
    x = upcast(logits)
    B, C = x.shape[:2]
    if mode == "multiclass":
        s = skeleton.reshape(B, 1, -1)
        if ignore_index is not None:  # ignored pixels (in the target, or marked in the skeleton) are on no skeleton
            s = torch.where((target.reshape(B, 1, -1) == ignore_index) | (s == ignore_index), 0, s)
        # The skeleton one-hot [B, C, N] (theirs), without gradient. Its class-0 row (background
        # and off-skeleton pixels) is summed with the rest and dropped from the [C] sums, which is
        # cheaper than slicing p (a slice's backward zero-fills a [B, C, N] gradient) and than a
        # gather of p at the skeleton's class (gathers along the class dim are slow on CPU).
        w = x.new_zeros(B, C, s.shape[-1]).scatter_(1, s.long(), 1.0)
        p = torch.softmax(x.reshape(B, C, -1), dim=1)
        dims = (-1,) if per_image else (0, -1)
        inter, total = (p * w).sum(dims)[..., 1:], w.sum(dims)[..., 1:]
    else:
        sk = skeleton.to(x.dtype)
        if ignore_index is not None:
            sk = sk * (target != ignore_index).to(x.dtype) * (skeleton != ignore_index).to(x.dtype)
        dims = tuple(range(2, x.ndim)) if per_image else (0, *range(2, x.ndim))
        inter = (torch.sigmoid(x) * sk).sum(dims)
        total = sk.sum(dims)
    recall = (inter + smooth) / (total + smooth).clamp_min(1e-8)  # the authors' clip
    return 1.0 - recall.mean()


class SkeletonRecallLoss(nn.Module):
    """Skeleton Recall loss as a module; see :func:`skeleton_recall_loss` and the module docstring.

    ``loss(logits, target, skeleton=skel)``; :class:`~seglosses.CombinedLoss` passes the
    ``skeleton`` it is given (``derived_targets``), and without one the loss computes it.

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``.
        smooth: added to the numerator and the denominator of each recall (>= 0; the authors'
            class default 1.0, their nnU-Net trainer 1e-5).
        per_image: recall per image and class instead of per class over the batch (default
            False: nnU-Net's ``batch_dice=True`` of its 2D plans).
        ignore_index: target value whose pixels count in neither sum.
    """

    #: The derived targets this loss takes as keywords of its forward (seglosses.derived).
    derived_targets = ("skeleton",)

    def __init__(
        self,
        mode: str,
        *,
        smooth: float = 1.0,
        per_image: bool = False,
        ignore_index: int | float | None = None,
    ):
        super().__init__()
        self.mode = _checks.check_mode(mode, NAME)
        if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0 <= smooth < float("inf"):
            raise ValueError(f"{NAME}: smooth must be a finite float >= 0, got {smooth!r}")
        if not isinstance(per_image, bool):
            raise ValueError(f"{NAME}: per_image must be True or False, got {per_image!r}")
        self.smooth, self.per_image, self.ignore_index = float(smooth), per_image, ignore_index

    def forward(self, logits: Tensor, target: Tensor, *, skeleton: Tensor | None = None) -> Tensor:
        return skeleton_recall_loss(
            logits, target, self.mode, skeleton=skeleton, smooth=self.smooth, per_image=self.per_image,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, smooth={self.smooth}, per_image={self.per_image}, ignore_index={self.ignore_index}"
