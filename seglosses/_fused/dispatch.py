"""Which CombinedLoss configurations run fused, and the fused forward itself."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .. import _checks
from .._region import check_region_input, overlap_loss_from_sums
from .._targets import as_vector, dense_target, index_target
from ..bce import BCELoss
from ..ce import CrossEntropyLoss
from ..dice import DiceLoss, JaccardLoss, TverskyLoss
from ..focal import FocalLoss
from .bce import BCERegionFn
from .ce import CERegionFn
from .common import compute_dtype
from .focal import SigmoidFocalRegionFn, SoftmaxFocalRegionFn

REGION_TYPES = (DiceLoss, JaccardLoss, TverskyLoss)


class FusedPlan(NamedTuple):
    """The two terms of a fusable CombinedLoss: names and modules of the region and pixel terms."""

    region_name: str
    region: nn.Module
    pixel_name: str
    pixel: nn.Module
    kind: str  # pixel term: "bce" | "ce" | "focal"


class FusedLosses(NamedTuple):
    """The unweighted values of the two planned terms."""

    region: Tensor
    pixel: Tensor


def _pixel_kind(pix: nn.Module, mode: str) -> str | None:
    """"bce" / "ce" / "focal" if ``pix`` can be fused with a region term in ``mode``."""
    # beta (the Combo loss's FN/FP weighting) is not in the fused kernels: such a term runs alone
    if type(pix) is BCELoss and mode in ("binary", "multilabel") and getattr(pix, "beta", None) is None:
        return "bce"
    if type(pix) is CrossEntropyLoss and mode == "multiclass" and getattr(pix, "beta", None) is None:
        return "ce"
    if type(pix) is FocalLoss and pix.mode == mode and pix.fusable:
        return "focal"
    return None


def plan(terms, target: Tensor | None = None) -> FusedPlan | None:
    """Return a :class:`FusedPlan` if ``terms`` (name -> module) can run fused, else None.

    Dispatch is on the term types and options, never on the names: exactly one region term
    (``DiceLoss``, ``JaccardLoss`` or ``TverskyLoss``, exact types -- a subclass may change the
    maths) and one pixel term (``BCELoss``, ``CrossEntropyLoss`` or ``FocalLoss``). Falls back
    (returns None) for: ``from_logits=False``; a ``reduction`` other than ``"mean"`` (either term);
    different ``ignore_index`` on the two terms; BCE with multiclass Dice or CE with
    binary/multilabel Dice (the composed path raises the mode error); Focal in another mode than
    the region term, or with ``weight``, ``pos_weight`` or ``include_background=False``; BCE or CE
    with ``beta`` set (the Combo loss's weighting); a ``target`` that requires grad. (Invalid region options, such as
    ``include_background=False`` in binary mode, cannot be built at all.)
    """
    if len(terms) != 2 or (target is not None and target.requires_grad):
        return None
    regions = [(k, m) for k, m in terms.items() if type(m) in REGION_TYPES]
    others = [(k, m) for k, m in terms.items() if type(m) not in REGION_TYPES]
    if len(regions) != 1 or len(others) != 1:
        return None
    (rname, region), (pname, pix) = regions[0], others[0]
    kind = _pixel_kind(pix, region.options.mode)
    if kind is None or not region.options.from_logits or pix.reduction != "mean" or region.options.reduction != "mean":
        return None
    if region.options.ignore_index != pix.ignore_index:
        return None
    return FusedPlan(rname, region, pname, pix, kind)


def fused_forward(fp: FusedPlan, logits: Tensor, target: Tensor) -> FusedLosses:
    """Compute the region and pixel losses of the two planned terms in one fused pass.

    Same input checks, same values and (to rounding) the same gradients as calling the two
    modules one after the other; see :mod:`seglosses._fused` for the maths.
    """
    options = fp.region.options
    # BCE: the target's value range is read inside the fused loop (see bce.bce_forward)
    check_range = fp.kind == "bce" and isinstance(target, Tensor) and _checks.dense_range_check_due(target)
    target = check_region_input(logits, target, options, values=not check_range)
    B, C = logits.shape[:2]
    # contiguous [B, C, N] (channels_last logits are copied once here: the chunked loops need it)
    x = logits.to(compute_dtype(logits)).reshape(B, C, -1).contiguous()
    if options.mode == "multiclass":
        pixel, inter, psum, tsum, v = _softmax_terms(fp, x, target)
        # valid pixels per image and class: a plain number without ignore_index
        count = x.shape[2] if v is None else v.sum(-1, keepdim=True).expand_as(tsum)
    else:
        pixel, inter, psum, tsum, v, x = _sigmoid_terms(fp, x, target, check_range)
        count = x.shape[2] if v is None else v.sum(-1)
    if not options.per_image:
        inter, psum, tsum = inter.sum(0), psum.sum(0), tsum.sum(0)
        count = count * x.shape[0] if v is None else count.sum(0)
    return FusedLosses(overlap_loss_from_sums(inter, psum, tsum, count, options), pixel)


def _softmax_terms(fp: FusedPlan, x: Tensor, target: Tensor):
    """(pixel, I, P, T, v) of a CE or softmax-focal pair; x is [B, C, N]."""
    B, C, _ = x.shape
    options, pix = fp.region.options, fp.pixel
    t, valid = index_target(target.reshape(B, -1), options.ignore_index)
    v = None if valid is None else valid.to(x.dtype)
    if fp.kind == "ce":
        weight = as_vector(pix.weight, x)
        _checks.check_weight_length(weight, C, "weight", type(pix).__name__)
        out = CERegionFn.apply(x, t, v, weight, pix.label_smoothing, options.squared_pred)
    else:
        alpha = pix.alpha
        if isinstance(alpha, (int, float)):
            alpha = torch.full((C,), float(alpha), dtype=x.dtype, device=x.device)
        elif alpha is not None:
            alpha = as_vector(alpha, x)
            _checks.check_weight_length(alpha, C, "alpha", type(pix).__name__)
        out = SoftmaxFocalRegionFn.apply(x, t, v, alpha, pix.gamma, options.squared_pred)
    return (*out, v)


def _sigmoid_terms(fp: FusedPlan, x: Tensor, target: Tensor, check_range: bool):
    """(pixel, I, P, T, v, x) of a BCE or sigmoid-focal pair (x possibly reshaped to one row)."""
    B, C, _ = x.shape
    options, pix = fp.region.options, fp.pixel
    t, valid = dense_target(target.reshape(B, C, -1), options.ignore_index, x.dtype)
    v = None if valid is None else valid.to(x.dtype)
    if C == 1 and not options.per_image:
        # Batch Dice of one channel: the images are one row of sums (free views), and the
        # row sums become BLAS dots (see common.rowdot).
        x, t = x.reshape(1, 1, -1), t.reshape(1, 1, -1)
        v = None if v is None else v.reshape(1, 1, -1)
    if fp.kind == "bce":
        pos_weight = as_vector(pix.pos_weight, x)
        _checks.check_weight_length(pos_weight, C, "pos_weight", type(pix).__name__)
        pixel, inter, psum, tsum, t_range = BCERegionFn.apply(
            x, t, v, pos_weight, pix.label_smoothing, options.squared_pred, check_range
        )
        if t_range is not None:
            lo, hi = t_range.unbind()
            _checks.check_dense_range(lo, hi, options.mode, options.ignore_index, options.loss_name)
    else:
        pixel, inter, psum, tsum = SigmoidFocalRegionFn.apply(
            x, t, v, pix.alpha, pix.gamma, options.squared_pred
        )
    return pixel, inter, psum, tsum, v, x
