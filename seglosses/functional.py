"""The maths of every seglosses loss as plain functions; the modules only hold options.

Conventions shared by all functions:

- ``logits`` are ``[B, C, *spatial]`` (any number of spatial dims, 2D and 3D alike).
- ``mode`` is ``"binary" | "multiclass" | "multilabel"``. Targets: binary ``[B, 1, *]`` or
  ``[B, *]`` in [0, 1] (soft labels allowed); multiclass ``[B, *]`` integer class indices;
  multilabel ``[B, C, *]`` in [0, 1].
- ``ignore_index``: pixels whose target equals it are removed from every sum and from every
  mean's denominator (a masked mean over the valid pixels, PyTorch's semantics). Changing the
  logits at ignored pixels changes neither the loss nor its gradient. If every pixel is ignored
  the loss is 0 with a zero gradient (``torch.nn.functional.cross_entropy`` returns NaN there).
- Precision: float16 / bfloat16 logits are upcast to float32 inside the loss (as torch's autocast
  does for its own losses), so sums accumulate in float32 and the result is a float32 tensor;
  float32 and float64 stay as they are.
- Value checks (see :func:`seglosses.set_checks`) run unless switched off or while compiling.
- Dice, Jaccard and Tversky take their options as keyword arguments, validated once into a
  :class:`seglosses.RegionOptions`; :func:`region_loss` takes such an object directly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from ._region import EPS, log_cosh, overlap_loss_from_sums, region_loss, region_sums  # noqa: F401 (EPS: re-export)
from ._targets import as_vector, binary_target, channel_view, dense_target, index_target, upcast
from .options import EMPTY_CLASS_POLICIES, RegionOptions  # noqa: F401 (EMPTY_CLASS_POLICIES: re-export)

Mode = Literal["binary", "multiclass", "multilabel"]

__all__ = [
    "binary_cross_entropy",
    "cross_entropy",
    "focal_loss",
    "dice_loss",
    "log_cosh_dice_loss",
    "log_cosh",
    "jaccard_loss",
    "tversky_loss",
    "region_loss",
    "region_sums",
    "overlap_loss_from_sums",
    "RegionOptions",
    "generalized_dice_loss",
    "lovasz_loss",
    "topk_cross_entropy",
    "topk_binary_cross_entropy",
    "ohem_cross_entropy",
    "ohem_binary_cross_entropy",
    "mcc_loss",
    "cldice_loss",
    "soft_skeleton",
]


# --------------------------------------------------------------------------------------------
# helpers


def _reduce(loss: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """Mean over valid elements / sum / none; ignored elements hold exactly 0 and get no gradient.

    ``mask`` is a 0/1 float tensor of valid elements (or None): multiplying by it is much faster
    on CPU than a bool ``torch.where``, and exact for the finite losses computed here.
    """
    if mask is not None:
        loss = loss * mask
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if mask is None:
        return total / max(loss.numel(), 1)
    return total / mask.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------
# BCE and CE


def binary_cross_entropy(
    logits: Tensor,
    target: Tensor,
    pos_weight: Tensor | list[float] | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | float | None = None,
    reduction: str = "mean",
    *,
    beta: float | None = None,
) -> Tensor:
    r"""Binary cross-entropy from logits, per element, for binary and multilabel masks.

    .. math:: \ell = -[\,w_c\, t' \log\sigma(x) + (1 - t') \log(1 - \sigma(x))\,],
              \quad t' = t (1 - s) + s / 2

    computed in logit space (``binary_cross_entropy_with_logits``), never as ``log(sigmoid)``.

    With ``beta`` (the modified BCE of the Combo loss, Taghanaki et al. 2019) the two terms are
    weighted against each other:

    .. math:: \ell = -[\,\beta\, w_c\, t' \log\sigma(x) + (1 - \beta)(1 - t') \log(1 - \sigma(x))\,]

    ``beta > 0.5`` penalises false negatives (missed foreground) more, ``beta < 0.5`` false
    positives; ``beta = 0.5`` is half the plain BCE. Computed as ``(1 - beta)`` times the BCE with
    ``pos_weight`` ``w_c beta / (1 - beta)``: the same stable kernel.

    Args:
        logits: ``[B, C, *spatial]`` raw scores.
        target: same shape as ``logits`` (or ``[B, *spatial]`` when ``C == 1``), values in [0, 1].
        pos_weight: per-class weight ``w_c`` of the positive term, length ``C`` (channel dim 1).
        label_smoothing: ``s`` in [0, 1): targets move towards 1/2.
        ignore_index: target value whose elements are excluded (masked mean).
        reduction: ``"mean"`` (over valid elements) | ``"sum"`` | ``"none"``.
        beta: None (plain BCE) or the weight in (0, 1) of the positive term (see above).
    """
    name = "BCELoss"
    _check_beta(beta, name)
    _checks.check_logits(logits, name)
    _checks.check_reduction(reduction, name)
    target = binary_target(logits, target) if logits.shape[1] == 1 else target
    mode = "binary" if logits.shape[1] == 1 else "multilabel"
    _checks.check_dense_target(logits, target, mode, ignore_index, name)
    x = upcast(logits)
    pw = as_vector(pos_weight, x)
    if pw is not None:
        _checks.check_weight_length(pw, x.shape[1], "pos_weight", name)
        pw = channel_view(pw, x.ndim)
    t, mask = dense_target(target, ignore_index, x.dtype)
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if beta is not None:
        # beta w t log p + (1 - beta)(1 - t) log(1 - p) = (1 - beta) [w' t log p + (1 - t) log(1 - p)],
        # w' = w beta / (1 - beta): torch's logit-space kernel does the rest (beta < 1 is checked).
        ratio = beta / (1.0 - beta)
        pw = torch.tensor(ratio, dtype=x.dtype, device=x.device) if pw is None else pw * ratio
    if mask is None and reduction != "none":
        out = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=reduction)
    else:
        out = _reduce(F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none"), mask, reduction)
    return out if beta is None else (1.0 - beta) * out


def _check_beta(beta, name: str) -> None:
    """``beta`` of the Combo-loss cross-entropies: None or a float strictly inside (0, 1)."""
    if beta is None:
        return
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0.0 < beta < 1.0):
        # 0 or 1 would drop one side of the loss: predicting everything positive (or negative) wins
        raise ValueError(
            f"{name}: beta must be None (plain cross-entropy) or a float in (0, 1), the weight of the "
            f"positive term (> 0.5 penalises false negatives more), got {beta!r}"
        )


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | list[float] | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    *,
    beta: float | None = None,
) -> Tensor:
    r"""Multiclass cross-entropy with class indices; ``torch.nn.functional.cross_entropy`` semantics.

    .. math:: \ell_i = -\sum_c w_c\, q_{ic} \log \mathrm{softmax}(x_i)_c,
              \quad q_i = (1 - s)\,\mathrm{onehot}(t_i) + s / C

    ``"mean"`` divides by ``sum_i w_{t_i}`` over valid pixels (PyTorch's weighted mean). Unlike
    PyTorch, a batch whose pixels are all ignored gives 0 (with zero gradient), not NaN.

    With ``beta`` (the Combo loss's modified cross-entropy, Taghanaki et al. 2019, in its
    multiclass form): one-vs-rest binary cross-entropies of the softmax probabilities ``p``,

    .. math:: \ell_i = -\frac{1}{C} \sum_c w_c\, [\,\beta\, q_{ic} \log p_{ic}
              + (1 - \beta)(1 - q_{ic}) \log(1 - p_{ic})\,]

    so that ``"mean"`` (over valid pixels, weights not in the denominator) is the mean over every
    pixel and class, as the authors' code computes it (``K.mean`` of the flattened one-hot target
    and softmax output; their code's parenthesisation also scales the negative term by ``beta``,
    a slip against the paper's formula, which is the one implemented here). ``beta > 0.5``
    penalises false negatives more. ``log(1 - p_c)`` is ``log(sum_{k != c} p_k)``, summed without
    cancellation, so saturated logits stay finite.

    Args:
        logits: ``[B, C, *spatial]``.
        target: ``[B, *spatial]`` integer class indices in ``[0, C)`` (or ``ignore_index``).
        weight: per-class weights ``w_c``, length ``C``.
        ignore_index: class index whose pixels are excluded.
        label_smoothing: ``s`` in [0, 1).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        beta: None (plain cross-entropy) or the weight in (0, 1) of the positive terms (see above).
    """
    name = "CrossEntropyLoss"
    _checks.check_reduction(reduction, name)
    _check_beta(beta, name)
    x, t, w = _multiclass_inputs(logits, target, weight, ignore_index, name)
    if beta is not None:
        loss, valid = _one_vs_rest_cross_entropy(x, t, w, ignore_index, label_smoothing, beta)
        if reduction == "none":
            return loss
        if reduction == "sum":
            return loss.sum()
        count = loss.new_tensor(loss.numel()) if valid is None else valid.sum().to(loss.dtype)
        return loss.sum() / count.clamp_min(1.0)  # every pixel ignored: 0, not 0/0
    if ignore_index is None and reduction != "none":
        return F.cross_entropy(x, t, weight=w, label_smoothing=label_smoothing, reduction=reduction)
    loss = _pixel_cross_entropy(x, t, w, ignore_index, label_smoothing)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    valid = t != ignore_index  # not None here: without it, "mean" and "sum" returned above
    if w is None:
        denom = valid.sum().to(loss.dtype)
    else:
        safe = torch.where(valid, t, torch.zeros((), dtype=t.dtype, device=t.device))
        denom = torch.where(valid, w[safe], torch.zeros((), dtype=w.dtype, device=w.device)).sum()
    # All pixels ignored: the sum is 0, so any non-zero denominator gives 0 (not torch's 0/0).
    return loss.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


def _one_vs_rest_cross_entropy(x: Tensor, t: Tensor, w: Tensor | None, ignore_index, label_smoothing: float,
                               beta: float) -> tuple[Tensor, Tensor | None]:
    """Per-pixel Combo-loss cross-entropy ``[B, *]`` (see :func:`cross_entropy`), 0 at ignored pixels,
    and the bool mask of valid pixels (None without ``ignore_index``)."""
    C = x.shape[1]
    t, valid = index_target(t, ignore_index)
    logp = torch.log_softmax(x, dim=1)
    # log(1 - p_c) = log(sum_{k != c} e_k) - log(sum_k e_k), e = exp(x - max): for c != argmax the
    # sum of the others holds the max's 1 (no cancellation in S - e_c); for the argmax it is
    # summed directly, so p_c -> 1 gives a large finite log, not log(0) (whose 0 * -inf is NaN).
    e = torch.exp(x - x.detach().amax(dim=1, keepdim=True))
    total = e.sum(dim=1, keepdim=True)
    top = e.detach().argmax(dim=1, keepdim=True)
    rest_of_top = e.scatter(1, top, 0.0).sum(dim=1, keepdim=True)
    others = (total - e).scatter(1, top, rest_of_top)
    log1mp = torch.log(others.clamp_min(torch.finfo(x.dtype).tiny)) - torch.log(total)
    q = F.one_hot(t, C).movedim(-1, 1).to(x.dtype)
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / C
    terms = (beta * q) * logp + ((1.0 - beta) * (1.0 - q)) * log1mp
    if w is not None:
        terms = terms * channel_view(w, x.ndim)
    loss = terms.sum(dim=1) * (-1.0 / C)
    if valid is not None:
        loss = loss * valid.to(loss.dtype)
    return loss, valid


def _multiclass_inputs(logits, target, weight, ignore_index, name: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """The checks and conversions of the cross-entropy losses: logits ``[B, C, *]`` upcast from
    half precision, the target as ``long``, ``weight`` as a vector on the logits' device."""
    _checks.check_logits(logits, name)
    _checks.check_multiclass_target(logits, target, ignore_index, name)
    x = upcast(logits)
    w = as_vector(weight, x)
    _checks.check_weight_length(w, x.shape[1], "weight", name)
    return x, target.long(), w


def _pixel_cross_entropy(x: Tensor, t: Tensor, w: Tensor | None, ignore_index, label_smoothing: float) -> Tensor:
    """``F.cross_entropy(reduction="none")``: 0 at ignored pixels, whatever the logits there.

    Without label smoothing and ignored pixels, ``-log p_t`` is a gather of ``log_softmax``:
    F.cross_entropy's ``nll_loss`` kernel takes about twice as long as the gather on CPU, for the
    same values and gradient (TopK and OHEM are little else). With ignored pixels ``nll_loss``
    stays: zeroing them afterwards takes a bool ``masked_fill``, which costs more than it saves.
    """
    if label_smoothing or ignore_index is not None:
        ii = -100 if ignore_index is None else ignore_index
        return F.cross_entropy(x, t, weight=w, ignore_index=ii, label_smoothing=label_smoothing, reduction="none")
    loss = torch.log_softmax(x, dim=1).gather(1, t.unsqueeze(1)).squeeze(1).neg()
    return loss if w is None else loss * w[t]


# --------------------------------------------------------------------------------------------
# Focal


def focal_loss(
    logits: Tensor,
    target: Tensor,
    mode: Mode,
    alpha: float | Tensor | list[float] | None = None,
    gamma: float = 2.0,
    ignore_index: int | float | None = None,
    reduction: str = "mean",
    *,
    weight: Tensor | list[float] | None = None,
    pos_weight: Tensor | list[float] | None = None,
    include_background: bool = True,
) -> Tensor:
    r"""Focal loss: cross-entropy down-weighted on well-classified pixels.

    .. math:: FL = -\alpha_t (1 - p_t)^\gamma \log p_t

    - binary / multilabel (sigmoid, ``torchvision.ops.sigmoid_focal_loss`` semantics, soft labels
      included): ``p_t = p t + (1 - p)(1 - t)``, ``alpha_t = alpha t + (1 - alpha)(1 - t)``; ``alpha``
      is a float in [0, 1] or None (no weighting).
    - multiclass (softmax): ``p_t`` the probability of the target class; ``alpha`` a float
      (multiplies every pixel) or a per-class list ``alpha_c`` (``alpha_t = alpha_{target}``).

    ``"mean"`` is the plain mean over valid pixels (alpha does not enter the denominator), so
    ``gamma=0, alpha=None`` equals BCE / CE exactly.

    The modulating factor is computed in log space, ``(1 - p_t)^gamma = exp(gamma log(1 - p_t))``,
    with ``log(1 - p_t)`` built from the log-sigmoid pieces (sigmoid) or from the sum of the *other*
    classes' probabilities (softmax), never from the difference ``1 - p_t``: that rounds to 0 at
    saturated logits, where the gradient of ``(.)^gamma`` is infinite for ``gamma < 1``
    (torchvision and smp give NaN there).

    Args:
        logits: ``[B, C, *spatial]``.
        target: see the module docstring for each mode.
        mode: ``"binary" | "multiclass" | "multilabel"``.
        alpha: class balance, see above.
        gamma: focusing parameter ``>= 0``; 0 gives cross-entropy.
        ignore_index: target value whose pixels are excluded (masked mean).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        weight: binary / multilabel, per channel: multiplies the channel's loss.
        pos_weight: binary / multilabel, per channel: weight of the positive BCE term.
        include_background: False excludes class-0 pixels (multiclass) or channel 0
            (multilabel) from the loss and its mean (``reduction="none"`` keeps the shape, with
            zeros there).
    """
    name = "FocalLoss"
    _checks.check_mode(mode, name)
    _checks.check_logits(logits, name)
    _checks.check_reduction(reduction, name)
    if target.requires_grad:
        raise ValueError(
            f"{name}: the focal loss has no gradient with respect to the target; pass target.detach()"
        )
    x = upcast(logits)
    if mode == "multiclass":
        _checks.check_multiclass_target(logits, target, ignore_index, name)
        t, valid = index_target(target, ignore_index)
        a_t = None
        if alpha is not None:
            if isinstance(alpha, (int, float)):
                a_t = torch.full(t.shape, float(alpha), dtype=x.dtype, device=x.device)
            else:
                a = as_vector(alpha, x)
                _checks.check_weight_length(a, x.shape[1], "alpha", name)
                a_t = a[t]
        loss = _SoftmaxFocal.apply(x, t, a_t, float(gamma))
        if not include_background:
            fg = t != 0
            valid = fg if valid is None else valid & fg
        return _reduce(loss, None if valid is None else valid.to(x.dtype), reduction)

    if weight is not None or pos_weight is not None:
        if mode == "multiclass":
            raise ValueError(f"{name}: weight and pos_weight are for the sigmoid modes; use alpha in multiclass")
    if not include_background and x.shape[1] < 2:
        raise ValueError(f"{name}: include_background=False drops channel 0; binary mode has only one channel")
    target = binary_target(logits, target) if mode == "binary" else target
    _checks.check_dense_target(logits, target, mode, ignore_index, name)
    t, mask = dense_target(target, ignore_index, x.dtype)
    a_t = None if alpha is None else (1.0 - alpha) + (2.0 * alpha - 1.0) * t  # alpha t + (1-alpha)(1-t)
    w = as_vector(weight, x)
    if w is not None:
        _checks.check_weight_length(w, x.shape[1], "weight", name)
        w = channel_view(w, x.ndim)
        a_t = w.expand_as(x) if a_t is None else a_t * w
    pw_t = None
    pw = as_vector(pos_weight, x)
    if pw is not None:
        _checks.check_weight_length(pw, x.shape[1], "pos_weight", name)
        pw_t = (channel_view(pw, x.ndim) - 1.0) * t  # (w - 1) t: the extra weight of the positive term
    loss = _SigmoidFocal.apply(x, t, a_t, float(gamma), pw_t)
    if not include_background:
        keep = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        keep[0] = 0.0
        keep = channel_view(keep, x.ndim).expand_as(x)
        mask = keep if mask is None else mask * keep
    return _reduce(loss, mask, reduction)


class _SigmoidFocal(torch.autograd.Function):
    r"""Per-element sigmoid focal loss ``a_t * ce * q^gamma`` with a closed-form backward.

    ``ce = (1 - t) x - log p`` (BCE from logits, summed in that order so that nothing cancels), ``q = 1 - p_t = p (1 - t) + (1 - p) t``. With
    ``u = exp(-|x|)`` and ``m = log sigmoid(|x|) = -log1p(u)`` (the larger of ``log p`` and
    ``log(1 - p)``; the smaller is ``m - |x|``): ``log p = m + min(x, 0)`` and
    ``log q = m + log((1 - s) + s u)`` with ``s = t`` where ``x > 0``, ``1 - t`` where ``x < 0``
    (``s = h + t (1 - 2h)``, ``h = (1 - sign x) / 2``; at ``x = 0``, ``u = 1`` and any ``s`` gives
    ``q = 1/2``): exact for soft labels, computed in log space, and free of infinities (which
    would also send the CPU kernels down slow paths; so are bool ``where``\ s). The bracket is
    ``>= u``; it is clamped at the smallest normal float only where ``u`` underflows
    (``|x| > ~87`` in float32, where ``q^gamma < 1e-38``).

    Gradient: ``dL/dx = a_t q^gamma [(p - t) + gamma (1 - 2t) ce r]``, ``r = p (1 - p) / q
    = u / ((1 + u)(1 - s + s u))`` in [0, 1] -- finite for every ``gamma >= 0``, where the
    autograd of ``(1 - p_t) ** gamma`` gives NaN for ``gamma < 1`` at saturated logits. It is
    formed in the forward pass, so the backward is one multiply.
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, a_t: Tensor | None, gamma: float, pw_t: Tensor | None = None) -> Tensor:
        # In-place chains on fresh tensors: the loss is memory-bound, allocations cost as much as maths.
        u = x.abs().neg_().exp_()  # exp(-|x|)
        m = torch.log1p(u).neg_()  # log sigmoid(|x|)
        # ce = (1 - t) x - min(x, 0) - m: each piece is exact or small, so nothing cancels where
        # the loss is tiny (x - t x would cancel two rounded 12s at x = 12, t = 1).
        ce = torch.rsub(t, 1.0).mul_(x).sub_(x.clamp_max(0.0)).sub_(m)
        if pw_t is not None:  # pos_weight: + (w - 1) t (-log p), -log p = -min(x, 0) - m
            ce = ce + pw_t * (x.clamp_max(0.0).neg_().sub_(m))
        loss = ce
        if gamma != 0:
            c = t.mul(-2.0).add_(1.0)  # 1 - 2t
            s = torch.sign(x).mul_(c).mul_(-0.5).add_(0.5)  # t where x > 0, 1 - t where x < 0
            inner = torch.rsub(s, 1.0).addcmul_(s, u)  # (1 - s) + s u, no cancellation at s = 1
            inner.clamp_min_(torch.finfo(x.dtype).tiny)
            mod = torch.log(inner).add_(m).mul_(gamma).exp_()  # (1 - p_t)^gamma
            loss = ce * mod
        if a_t is not None:
            loss = loss * a_t
        if ctx.needs_input_grad[0]:
            g = torch.sigmoid(x).sub_(t)
            if pw_t is not None:  # d/dx of (w - 1) t (-log p) = -(w - 1) t (1 - p)
                g = g - pw_t * torch.sigmoid(-x)
            if gamma != 0:
                r = u.div_((u + 1.0).mul_(inner))  # p (1 - p) / q
                g.addcmul_(ce.mul_(r), c, value=gamma).mul_(mod)
            if a_t is not None:
                g.mul_(a_t)
            ctx.save_for_backward(g)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (g,) = ctx.saved_tensors
        return grad * g, None, None, None, None


class _SoftmaxFocal(torch.autograd.Function):
    r"""Per-pixel softmax focal loss ``-a_t q^gamma log p_t`` with a closed-form backward.

    ``q = 1 - p_t`` is the sum of the *other* classes' probabilities (no cancellation where
    ``p_t`` rounds to 1), clamped at the smallest normal float only where all of them underflow.
    Gradient over the classes: ``dL/dx = a_t q^gamma (1 - gamma log(p_t) p_t / q) (p - onehot(t))``,
    finite for every ``gamma >= 0`` (``-log(p_t) p_t / q`` tends to 1 as ``q -> 0``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, a_t: Tensor | None, gamma: float) -> Tensor:
        idx = t.unsqueeze(1)
        logp = F.log_softmax(x, dim=1)
        logp_t = logp.gather(1, idx).squeeze(1)
        p = logp.exp() if (gamma != 0 or ctx.needs_input_grad[0]) else None
        loss = -logp_t
        if gamma != 0:
            log_q = torch.log(p.scatter(1, idx, 0.0).sum(1).clamp_min(torch.finfo(x.dtype).tiny))
            mod = torch.exp(gamma * log_q)
            loss = loss * mod
        if a_t is not None:
            loss = loss * a_t
        if ctx.needs_input_grad[0]:
            h = (
                mod * (1.0 - gamma * logp_t * torch.exp(logp_t - log_q))
                if gamma != 0
                else torch.ones_like(logp_t)
            )
            if a_t is not None:
                h = h * a_t
            ctx.save_for_backward(p, h, idx)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        p, h, idx = ctx.saved_tensors
        w = (grad * h).unsqueeze(1)
        return (p * w).scatter_add(1, idx, -w), None, None, None


# --------------------------------------------------------------------------------------------
# Dice / Jaccard / Tversky: keyword options, validated once as a RegionOptions (see
# seglosses.options for every option), then seglosses._region.region_loss.


def dice_loss(logits: Tensor, target: Tensor, mode: Mode, **options) -> Tensor:
    r"""Soft Dice loss ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` per class.

    Keyword options (:class:`seglosses.RegionOptions`): ``from_logits=True``, ``smooth=0.0``,
    ``squared_pred=False`` (``sum(p^2)`` in the denominator, V-Net), ``log_loss=False``,
    ``per_image=False``, ``ignore_index=None``, ``class_weights=None``,
    ``include_background=True``, ``sync_dist=False``, ``empty_class="penalize_fp"``. See
    :func:`region_sums` for the sums and :func:`overlap_loss_from_sums` for empty classes,
    weights and aggregation; the :class:`seglosses.DiceLoss` docstring describes every option.
    """
    return region_loss(logits, target, RegionOptions.build("dice", mode, options))


def log_cosh_dice_loss(logits: Tensor, target: Tensor, mode: Mode, **options) -> Tensor:
    r"""Log-cosh Dice loss ``log(cosh(L_dice))`` (Jadon 2020), ``L_dice`` = :func:`dice_loss`.

    Takes exactly the keyword options of :func:`dice_loss` and applies :func:`log_cosh` to its
    result: to the reduced loss for ``reduction="mean"`` / ``"sum"``, to each per-class loss for
    ``"none"``. 0 where the Dice loss is 0; about ``L^2 / 2`` for small losses, ``L - log 2``
    for large ones (a smooth, bounded-gradient Dice, ``d/dL = tanh(L)``).
    """
    return log_cosh(dice_loss(logits, target, mode, **options))


def jaccard_loss(logits: Tensor, target: Tensor, mode: Mode, **options) -> Tensor:
    r"""Soft Jaccard (IoU) loss ``1 - (sum(p t) + smooth) / (sum(p) + sum(t) - sum(p t) + smooth)``.

    Same keyword options as :func:`dice_loss`.
    """
    return region_loss(logits, target, RegionOptions.build("jaccard", mode, options))


def tversky_loss(logits: Tensor, target: Tensor, mode: Mode, **options) -> Tensor:
    r"""Tversky loss ``(1 - TI_c)^gamma`` per class, ``TI = (TP + s) / (TP + alpha FP + beta FN + s)``.

    Keyword options: ``alpha=0.5`` weighs false positives, ``beta=0.5`` false negatives;
    ``alpha = beta = 0.5`` is Dice (at ``smooth=0``), ``alpha = beta = 1`` Jaccard; ``gamma=1.0``,
    ``> 1`` is the focal Tversky loss (applied per class, before averaging). The other options
    are those of :func:`dice_loss` except ``squared_pred``.
    """
    return region_loss(logits, target, RegionOptions.build("tversky", mode, options))


# The losses with a file of their own (each beside its module). Imported last: hard_pixels
# builds on cross_entropy and binary_cross_entropy above.
from .boundary import boundary_loss  # noqa: E402
from .cldice import cldice_loss, soft_skeleton  # noqa: E402
from .generalized_dice import generalized_dice_loss  # noqa: E402
from .hard_pixels import (  # noqa: E402
    ohem_binary_cross_entropy,
    ohem_cross_entropy,
    topk_binary_cross_entropy,
    topk_cross_entropy,
)
from .hausdorff import hausdorff_dt_loss, hausdorff_er_loss  # noqa: E402
from .lovasz import lovasz_loss  # noqa: E402
from .mcc import mcc_loss  # noqa: E402
from .skeleton_recall import skeleton_recall_loss  # noqa: E402
from .unified_focal import asymmetric_unified_focal_loss  # noqa: E402
from .wasserstein_dice import generalized_wasserstein_dice_loss  # noqa: E402
