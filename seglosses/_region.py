"""Dice, Jaccard and Tversky: the per-class soft counts and the loss computed from them.

:func:`region_loss` is the whole loss for validated :class:`~seglosses.options.RegionOptions`;
the modules, :mod:`seglosses.functional` and the fused paths all end in
:func:`overlap_loss_from_sums`, which only touches ``[C]`` or ``[B, C]`` sums.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from ._targets import binary_target, dense_target, index_target, upcast
from .distributed import all_reduce_sum
from .options import RegionOptions

Mode = Literal["binary", "multiclass", "multilabel"]
# Lower bound of a Dice/IoU/Tversky denominator and of the score under log_loss (smp's eps).
EPS = 1e-7


def check_region_input(logits: Tensor, target: Tensor, options: RegionOptions, values: bool = True) -> Tensor:
    """The structural (and, with ``values``, value) checks of a region loss's input.

    Returns the target, with the channel dim restored for a binary ``[B, *]`` one.
    ``values=False`` leaves the binary / multilabel [0, 1] range check to the caller.
    """
    return check_input(logits, target, options.mode, options.ignore_index, options.loss_name, values)


def check_input(logits: Tensor, target: Tensor, mode: str, ignore_index, name: str, values: bool = True) -> Tensor:
    """The input checks of any loss that takes a ``mode``; returns the target, with the channel
    dim restored for a binary ``[B, *]`` one (``values``: as in :func:`check_region_input`)."""
    _checks.check_logits(logits, name)
    if mode == "multiclass":
        _checks.check_multiclass_target(logits, target, ignore_index, name)
        return target
    target = binary_target(logits, target) if mode == "binary" else target
    _checks.check_dense_target(logits, target, mode, ignore_index, name, values=values)
    return target


def region_loss(logits: Tensor, target: Tensor, options: RegionOptions) -> Tensor:
    """The Dice / Jaccard / Tversky loss (``options.kind``) of ``logits`` against ``target``."""
    target = check_region_input(logits, target, options)
    inter, psum, tsum, count = region_sums(
        logits,
        target,
        options.mode,
        from_logits=options.from_logits,
        squared_pred=options.squared_pred,
        per_image=options.per_image,
        ignore_index=options.ignore_index,
    )
    if options.ignore_index is None:
        # every pixel valid: the count as a plain number keeps the weighting tensor-free
        count = math.prod(logits.shape[2:]) * (1 if options.per_image else logits.shape[0])
    return overlap_loss_from_sums(inter, psum, tsum, count, options)


def log_cosh(x: Tensor) -> Tensor:
    r"""``log(cosh(x))`` elementwise, without overflow.

    ``torch.log(torch.cosh(x))`` overflows once ``cosh`` does (``|x| > ~89`` in float32, ``> ~11``
    in float16), giving ``inf`` and a NaN gradient (``sinh / cosh = inf / inf``). The identity
    ``log cosh x = |x| + log(1 + exp(-2|x|)) - log 2 = |x| + softplus(-2|x|) - log 2`` only
    exponentiates non-positive numbers, so it is finite for every finite ``x``; its gradient is
    ``sign(x) (1 - 2 sigmoid(-2|x|)) = tanh(x)`` (0 at 0, like the plain form), and at ``x = 0``
    it is exactly ``log 2 - log 2 = 0``.
    """
    # Not torch.log(torch.cosh(x)): cosh overflows to inf for large |x| (NaN gradient); this form
    # never exponentiates a positive number. |x| is safe: log cosh is even, d|x| * tanh|x| = tanh x.
    a = x.abs()
    return a + F.softplus(-2.0 * a) - math.log(2.0)


def region_sums(
    logits: Tensor,
    target: Tensor,
    mode: Mode,
    from_logits: bool = True,
    squared_pred: bool = False,
    per_image: bool = False,
    ignore_index: int | float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Per-class soft counts behind Dice, Jaccard and Tversky.

    Returns ``(I, P, T, N)``, each ``[C]`` (sums over batch and space, the default "batch" form)
    or ``[B, C]`` (``per_image=True``): ``I = sum p t`` (soft true positives), ``P = sum p``
    (``sum p^2`` with ``squared_pred``), ``T = sum t``, ``N`` the number of valid pixels, all over
    valid pixels only. ``p`` is ``sigmoid`` (binary, multilabel) or ``softmax`` over dim 1
    (multiclass) of the logits, or the input itself with ``from_logits=False``. Multiclass targets
    are never one-hot encoded: ``I`` and ``T`` are scatter-adds of ``p_target`` by class.
    """
    B, C = logits.shape[:2]
    x = upcast(logits)
    dims = (2,) if per_image else (0, 2)
    if mode == "multiclass" and from_logits and x.dtype in (torch.float32, torch.float64):
        from ._fused.region import softmax_region_sums  # here: the _fused package imports this module

        t, valid = index_target(target.reshape(B, -1), ignore_index)
        v = None if valid is None else valid.to(x.dtype)
        inter, psum, tsum = softmax_region_sums(x.reshape(B, C, -1), t, v, squared_pred)
        if v is None:
            count = torch.full_like(psum, t.shape[1])
        else:
            count = v.sum(-1, keepdim=True).expand_as(psum)
        if not per_image:
            inter, psum, tsum, count = inter.sum(0), psum.sum(0), tsum.sum(0), count.sum(0)
        return inter, psum, tsum, count
    if mode == "multiclass":
        p = (F.softmax(x, dim=1) if from_logits else x).reshape(B, C, -1)
        t, valid = index_target(target.reshape(B, -1), ignore_index)
        p_t = p.gather(1, t.unsqueeze(1)).squeeze(1)  # [B, n]: probability of the true class
        # Ignored pixels are sent to an extra bin C that is dropped afterwards.
        bins = t if valid is None else torch.where(valid, t, torch.full_like(t, C))
        if per_image:
            bins = bins + torch.arange(B, device=t.device).unsqueeze(1) * (C + 1)
        size = B * (C + 1) if per_image else C + 1
        flat = bins.reshape(-1)
        zeros = p_t.new_zeros(size)
        inter = zeros.scatter_add(0, flat, p_t.reshape(-1))
        tsum = zeros.scatter_add(0, flat, torch.ones_like(p_t).reshape(-1))
        shape = (B, C + 1) if per_image else (C + 1,)
        inter, tsum = inter.reshape(shape)[..., :C], tsum.reshape(shape)[..., :C]
        if valid is not None:
            p = p * valid.unsqueeze(1).to(p.dtype)
        psum = (p * p if squared_pred else p).sum(dims)
        if valid is None:
            count = torch.full_like(psum, p.shape[2] * (1 if per_image else B))
        else:
            v = valid.to(p.dtype).sum(-1 if per_image else (0, 1))
            count = (v.unsqueeze(-1) if per_image else v).expand_as(psum)
        return inter, psum, tsum, count

    target = binary_target(logits, target) if mode == "binary" else target
    p = (torch.sigmoid(x) if from_logits else x).reshape(B, C, -1)
    t, mask = dense_target(target.reshape(B, C, -1), ignore_index, p.dtype)
    if mask is not None:
        p = p * mask
    inter = (p * t).sum(dims)
    psum = (p * p if squared_pred else p).sum(dims)
    tsum = t.sum(dims)
    if mask is None:
        count = torch.full_like(psum, p.shape[2] * (1 if per_image else B))
    else:
        count = mask.sum(dims)
    return inter, psum, tsum, count


def overlap_loss_from_sums(
    inter: Tensor,
    psum: Tensor,
    tsum: Tensor,
    count: Tensor | float,
    options: RegionOptions | str | None = None,
    **legacy,
) -> Tensor:
    r"""Dice / Jaccard / Tversky loss from the per-class sums of :func:`region_sums`.

    Scores of a class ``c`` present in the target (``T_c > 0``), with ``FP = P - I``, ``FN = T - I``:

    - dice:    ``(2 I + smooth) / (P + T + smooth)``
    - jaccard: ``(I + smooth) / (P + T - I + smooth)``
    - tversky: ``(I + smooth) / (I + alpha FP + beta FN + smooth)``

    (denominators clamped at 1e-7). Per-class loss ``L_c = 1 - score`` (``-log(score)`` with
    ``log_loss``), raised to ``gamma`` per class (focal Tversky). A class absent from the target
    (``T_c = 0``, where the formula is 0/0 or a constant) follows ``empty_class``:

    - ``"penalize_fp"`` (default): ``L_c`` is the soft false-positive rate ``P_c / N_c`` (mean
      predicted probability of the class over valid pixels; as the score ``1 - P_c/N_c`` under
      ``log_loss``): 0 for an empty prediction, growing with every false-positive pixel, with a
      useful gradient;
    - ``"zero"``: ``L_c = 0`` but the class still counts in the average
      (segmentation-models-pytorch's behaviour);
    - ``"exclude"``: the class is left out of the average (weight 0); if no class is present
      the loss is 0.

    Classes (and, per image, images) with no valid pixel carry weight 0. The loss is the weighted
    mean ``sum_{u,c} w_c L_{u,c} / sum_{u,c} w_c`` over units ``u`` (the batch, or each image) and
    classes; 0 if every weight is 0. ``reduction="sum"`` gives the numerator alone and
    ``"none"`` the ``L_{u,c}`` themselves (``[C]`` or ``[B, C]``), 0 where the weight is 0.

    With ``sync_dist`` the sums (batch form) or the weighted numerator and denominator (per-image
    form) are all-reduced across processes first, see :mod:`seglosses.distributed`.

    ``count`` (valid pixels per unit and class) may be a plain number when it is the same for all
    (no ignore_index): the weighting then needs no tensor ops (cheaper for small inputs).

    ``options`` is a :class:`~seglosses.options.RegionOptions` (only its formula and aggregation
    options are read here). The older keyword form, ``kind=`` (or the kind as the fifth
    argument) plus the options as keywords, builds one.
    """
    o = _options_of(options, legacy)
    kind, smooth, log_loss, gamma, empty_class = o.kind, o.smooth, o.log_loss, o.gamma, o.empty_class
    sync_dist = o.sync_dist
    per_image = inter.ndim == 2
    if sync_dist and not per_image:
        if not isinstance(count, Tensor):
            count = torch.full_like(inter, count)
        inter, psum, tsum, count = all_reduce_sum(torch.stack([inter, psum, tsum, count])).unbind(0)
    C = inter.shape[-1]
    w = None if o.class_weights is None else o.class_weights.to(device=inter.device, dtype=inter.dtype)
    _checks.check_weight_length(w, C, "class_weights", o.loss_name)
    if not o.include_background:
        inter, psum, tsum = (v[..., 1:] for v in (inter, psum, tsum))
        count = count[..., 1:] if isinstance(count, Tensor) else count
        w = None if w is None else w[1:]

    if kind == "dice":
        num, den = 2.0 * inter + smooth, psum + tsum + smooth
    elif kind == "jaccard":
        num, den = inter + smooth, psum + tsum - inter + smooth
    else:
        num = inter + smooth
        den = inter + o.alpha * (psum - inter) + o.beta * (tsum - inter) + smooth
    reduction = o.reduction
    if (reduction == "mean" and not isinstance(count, Tensor) and w is None and not sync_dist
            and empty_class != "exclude" and not log_loss and gamma == 1.0 and count > 0):
        return _plain_mean(num, den, psum, tsum, count, empty_class)
    present = tsum > 0
    # Safe denominators in both branches of every where: a 0/0 in the unused branch would still
    # poison the gradient with NaN.
    score = num / torch.where(present, den.clamp_min(EPS), 1.0)
    counted = count > 0  # units/classes with a valid pixel (a bool for a number count)
    if empty_class == "penalize_fp":
        safe_count = torch.where(counted, count, 1.0) if isinstance(count, Tensor) else max(count, 1)
        score = torch.where(present, score, 1.0 - psum / safe_count)
    else:
        score = torch.where(present, score, 1.0)
    loss = -torch.log(score.clamp_min(EPS)) if log_loss else 1.0 - score
    if gamma != 1.0:
        # 1 - score can round to a hair below 0; pow of 0 has an infinite slope for gamma < 1.
        pos = loss > 0
        loss = torch.where(pos, torch.where(pos, loss, 1.0) ** gamma, 0.0 * loss)

    if reduction == "mean" and not isinstance(count, Tensor) and w is None and empty_class != "exclude" and not sync_dist:
        # every unit and class counts with weight 1 (or none does: no pixels at all)
        return loss.mean() if counted and loss.numel() else loss.sum() * 0.0
    if isinstance(count, Tensor):
        weights = counted.to(loss.dtype)
    else:
        weights = torch.full_like(loss, float(counted))
    if w is not None:
        weights = weights * w
    if empty_class == "exclude":
        weights = weights * present.to(loss.dtype)
    weights = weights.expand_as(loss)
    if reduction == "none":  # per class (and image): the user weighs the terms
        return loss * (weights > 0).to(loss.dtype)
    numer = (weights * loss).sum()
    if reduction == "sum":
        return numer
    denom = weights.sum()
    if sync_dist and per_image:
        numer, denom = all_reduce_sum(torch.stack([numer, denom])).unbind(0)
    return numer / torch.where(denom > 0, denom, 1.0)


def _plain_mean(num: Tensor, den: Tensor, psum: Tensor, tsum: Tensor, count: float, empty_class: str) -> Tensor:
    """The mean loss of :func:`overlap_loss_from_sums` for the commonest options (no ignored
    pixels, no class weights, ``1 - score``, ``empty_class`` zero or penalize_fp), with the absent
    classes masked by a float instead of bool ``where``s: a third of the ops, which is what a call
    on a small input (the lower deep-supervision levels) spends its time on. The same values up
    to rounding: an absent class's score is finite (``den >= EPS``) and multiplied by 0."""
    present = (tsum > 0).to(num.dtype)
    loss = (1.0 - num / den.clamp_min(EPS)) * present
    if empty_class == "penalize_fp":
        loss = loss + (1.0 - present) * (psum / count)
    return loss.mean()


def _options_of(options: RegionOptions | str | None, legacy: dict) -> RegionOptions:
    """The RegionOptions of an overlap_loss_from_sums call, also from the keyword form."""
    if isinstance(options, RegionOptions):
        if legacy:
            raise ValueError(
                f"overlap_loss_from_sums: give either a RegionOptions or keyword options, not both "
                f"(got {sorted(legacy)} besides the RegionOptions)"
            )
        return options
    kind = legacy.pop("kind", "dice") if options is None else options
    # The sums carry no mode: multilabel (independent channels) constrains none of the options.
    return RegionOptions.build(kind, legacy.pop("mode", "multilabel"), legacy)
