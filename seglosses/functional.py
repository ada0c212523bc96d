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
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from .distributed import all_reduce_sum

Mode = Literal["binary", "multiclass", "multilabel"]
EMPTY_CLASS_POLICIES = ("penalize_fp", "zero", "exclude")
# Lower bound of a Dice/IoU/Tversky denominator and of the score under log_loss (smp's eps).
EPS = 1e-7

__all__ = [
    "binary_cross_entropy",
    "cross_entropy",
    "focal_loss",
    "dice_loss",
    "jaccard_loss",
    "tversky_loss",
    "region_sums",
    "overlap_loss_from_sums",
]


# --------------------------------------------------------------------------------------------
# helpers


def _upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 (sums and logs of half precision overflow or lose digits)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _channel_view(v: Tensor, ndim: int) -> Tensor:
    """A per-class vector ``[C]`` shaped ``[C, 1, ..., 1]`` to broadcast over ``[B, C, *spatial]``."""
    return v.reshape(-1, *([1] * (ndim - 2)))


def _reduce(loss: Tensor, mask: Tensor | None, reduction: str) -> Tensor:
    """Mean over valid elements / sum / none; ignored elements hold exactly 0 and get no gradient.

    ``mask`` is a 0/1 float tensor of valid elements (or None): multiplying by it is ~30x faster
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


def _binary_target(logits: Tensor, target: Tensor) -> Tensor:
    """Binary ``[B, *]`` targets get the channel dim back so they line up with ``[B, 1, *]``."""
    return target.unsqueeze(1) if target.ndim == logits.ndim - 1 else target


def _dense_target(target: Tensor, ignore_index, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Float target with ignored entries set to 0 (so e.g. 255 never enters a formula) and the
    0/1 float mask of valid entries (None without ignore_index)."""
    t = target.to(dtype)
    if ignore_index is None:
        return t, None
    mask = (target != ignore_index).to(dtype)
    return t * mask, mask


def _index_target(target: Tensor, ignore_index) -> tuple[Tensor, Tensor | None]:
    """Long class indices with ignored pixels mapped to class 0 (safe for gather) + mask."""
    t = target.long()
    if ignore_index is None:
        return t, None
    valid = t != ignore_index
    return torch.where(valid, t, torch.zeros((), dtype=t.dtype, device=t.device)), valid


def _as_vector(w, like: Tensor) -> Tensor | None:
    if w is None:
        return None
    if not isinstance(w, Tensor):
        if torch.compiler.is_compiling():  # the value checks below would break the graph
            return torch.as_tensor(w, dtype=like.dtype, device=like.device)
        w = _checks.as_weight_tensor(w, "weight", "seglosses")
    return w.to(device=like.device, dtype=like.dtype)


# --------------------------------------------------------------------------------------------
# BCE and CE


def binary_cross_entropy(
    logits: Tensor,
    target: Tensor,
    pos_weight: Tensor | list[float] | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | float | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Binary cross-entropy from logits, per element, for binary and multilabel masks.

    .. math:: \ell = -[\,w_c\, t' \log\sigma(x) + (1 - t') \log(1 - \sigma(x))\,],
              \quad t' = t (1 - s) + s / 2

    computed in logit space (``binary_cross_entropy_with_logits``), never as ``log(sigmoid)``.

    Args:
        logits: ``[B, C, *spatial]`` raw scores.
        target: same shape as ``logits`` (or ``[B, *spatial]`` when ``C == 1``), values in [0, 1].
        pos_weight: per-class weight ``w_c`` of the positive term, length ``C`` (channel dim 1).
        label_smoothing: ``s`` in [0, 1): targets move towards 1/2.
        ignore_index: target value whose elements are excluded (masked mean).
        reduction: ``"mean"`` (over valid elements) | ``"sum"`` | ``"none"``.
    """
    name = "BCELoss"
    _checks.check_logits(logits, name)
    _checks.check_reduction(reduction, name)
    target = _binary_target(logits, target) if logits.shape[1] == 1 else target
    mode = "binary" if logits.shape[1] == 1 else "multilabel"
    _checks.check_dense_target(logits, target, mode, ignore_index, name)
    x = _upcast(logits)
    pw = _as_vector(pos_weight, x)
    if pw is not None:
        _checks.check_weight_length(pw, x.shape[1], "pos_weight", name)
        pw = _channel_view(pw, x.ndim)
    t, mask = _dense_target(target, ignore_index, x.dtype)
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if mask is None and reduction != "none":
        return F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=reduction)
    loss = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
    return _reduce(loss, mask, reduction)


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | list[float] | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Multiclass cross-entropy with class indices; ``torch.nn.functional.cross_entropy`` semantics.

    .. math:: \ell_i = -\sum_c w_c\, q_{ic} \log \mathrm{softmax}(x_i)_c,
              \quad q_i = (1 - s)\,\mathrm{onehot}(t_i) + s / C

    ``"mean"`` divides by ``sum_i w_{t_i}`` over valid pixels (PyTorch's weighted mean). Unlike
    PyTorch, a batch whose pixels are all ignored gives 0 (with zero gradient), not NaN.

    Args:
        logits: ``[B, C, *spatial]``.
        target: ``[B, *spatial]`` integer class indices in ``[0, C)`` (or ``ignore_index``).
        weight: per-class weights ``w_c``, length ``C``.
        ignore_index: class index whose pixels are excluded.
        label_smoothing: ``s`` in [0, 1).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
    """
    name = "CrossEntropyLoss"
    _checks.check_logits(logits, name)
    _checks.check_reduction(reduction, name)
    _checks.check_multiclass_target(logits, target, ignore_index, name)
    x = _upcast(logits)
    w = _as_vector(weight, x)
    _checks.check_weight_length(w, x.shape[1], "weight", name)
    t = target.long()
    if ignore_index is None and reduction != "none":
        return F.cross_entropy(x, t, weight=w, label_smoothing=label_smoothing, reduction=reduction)
    ii = -100 if ignore_index is None else ignore_index
    loss = F.cross_entropy(
        x, t, weight=w, ignore_index=ii, label_smoothing=label_smoothing, reduction="none"
    )
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    valid = t != ii
    if w is None:
        denom = valid.sum().to(loss.dtype)
    else:
        safe = torch.where(valid, t, torch.zeros((), dtype=t.dtype, device=t.device))
        denom = torch.where(valid, w[safe], torch.zeros((), dtype=w.dtype, device=w.device)).sum()
    # All pixels ignored: the sum is 0, so any non-zero denominator gives 0 (not torch's 0/0).
    return loss.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


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
    """
    name = "FocalLoss"
    _checks.check_mode(mode, name)
    _checks.check_logits(logits, name)
    _checks.check_reduction(reduction, name)
    if target.requires_grad:
        raise ValueError(
            f"{name}: the focal loss has no gradient with respect to the target; pass target.detach()"
        )
    x = _upcast(logits)
    if mode == "multiclass":
        _checks.check_multiclass_target(logits, target, ignore_index, name)
        t, valid = _index_target(target, ignore_index)
        a_t = None
        if alpha is not None:
            if isinstance(alpha, (int, float)):
                a_t = torch.full(t.shape, float(alpha), dtype=x.dtype, device=x.device)
            else:
                a = _as_vector(alpha, x)
                _checks.check_weight_length(a, x.shape[1], "alpha", name)
                a_t = a[t]
        loss = _SoftmaxFocal.apply(x, t, a_t, float(gamma))
        return _reduce(loss, None if valid is None else valid.to(x.dtype), reduction)

    target = _binary_target(logits, target) if mode == "binary" else target
    _checks.check_dense_target(logits, target, mode, ignore_index, name)
    t, mask = _dense_target(target, ignore_index, x.dtype)
    a_t = None if alpha is None else (1.0 - alpha) + (2.0 * alpha - 1.0) * t  # alpha t + (1-alpha)(1-t)
    loss = _SigmoidFocal.apply(x, t, a_t, float(gamma))
    return _reduce(loss, mask, reduction)


class _SigmoidFocal(torch.autograd.Function):
    r"""Per-element sigmoid focal loss ``a_t * ce * q^gamma`` with a closed-form backward.

    ``ce = (1 - t) x - log p`` (BCE from logits), ``q = 1 - p_t = p (1 - t) + (1 - p) t``. With
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
    def forward(ctx, x: Tensor, t: Tensor, a_t: Tensor | None, gamma: float) -> Tensor:
        # In-place chains on fresh tensors: the loss is memory-bound, allocations cost as much as maths.
        u = x.abs().neg_().exp_()  # exp(-|x|)
        m = torch.log1p(u).neg_()  # log sigmoid(|x|)
        ce = x.clamp_max(0.0).add_(m).neg_()  # -log p
        ce.add_(x).addcmul_(t, x, value=-1.0)  # + (1 - t) x
        loss = ce
        if gamma != 0:
            c = t.mul(-2.0).add_(1.0)  # 1 - 2t
            s = torch.sign(x).mul_(c).mul_(-0.5).add_(0.5)  # t where x > 0, 1 - t where x < 0
            inner = torch.rsub(u, 1.0).mul_(s).neg_().add_(1.0)  # (1 - s) + s u
            inner.clamp_min_(torch.finfo(x.dtype).tiny)
            mod = torch.log(inner).add_(m).mul_(gamma).exp_()  # (1 - p_t)^gamma
            loss = ce * mod
        if a_t is not None:
            loss = loss * a_t
        if ctx.needs_input_grad[0]:
            g = torch.sigmoid(x).sub_(t)
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
        return grad * g, None, None, None


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
# Dice / Jaccard / Tversky


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
    x = _upcast(logits)
    dims = (2,) if per_image else (0, 2)
    if mode == "multiclass":
        p = (F.softmax(x, dim=1) if from_logits else x).reshape(B, C, -1)
        t, valid = _index_target(target.reshape(B, -1), ignore_index)
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

    target = _binary_target(logits, target) if mode == "binary" else target
    p = (torch.sigmoid(x) if from_logits else x).reshape(B, C, -1)
    t, mask = _dense_target(target.reshape(B, C, -1), ignore_index, p.dtype)
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
    kind: Literal["dice", "jaccard", "tversky"],
    smooth: float = 0.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
    log_loss: bool = False,
    class_weights: Tensor | list[float] | None = None,
    include_background: bool = True,
    empty_class: str = "penalize_fp",
    sync_dist: bool = False,
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
    classes; 0 if every weight is 0.

    With ``sync_dist`` the sums (batch form) or the weighted numerator and denominator (per-image
    form) are all-reduced across processes first, see :mod:`seglosses.distributed`.

    ``count`` (valid pixels per unit and class) may be a plain number when it is the same for all
    (no ignore_index): the weighting then needs no tensor ops (cheaper for small inputs).
    """
    name = {"dice": "DiceLoss", "jaccard": "JaccardLoss", "tversky": "TverskyLoss"}[kind]
    if empty_class not in EMPTY_CLASS_POLICIES:
        raise ValueError(
            f"{name}: empty_class must be one of {EMPTY_CLASS_POLICIES}, got {empty_class!r}"
        )
    per_image = inter.ndim == 2
    if sync_dist and not per_image:
        if not isinstance(count, Tensor):
            count = torch.full_like(inter, count)
        inter, psum, tsum, count = all_reduce_sum(torch.stack([inter, psum, tsum, count])).unbind(0)
    C = inter.shape[-1]
    w = _as_vector(class_weights, inter)
    _checks.check_weight_length(w, C, "class_weights", name)
    if not include_background:
        inter, psum, tsum = (v[..., 1:] for v in (inter, psum, tsum))
        count = count[..., 1:] if isinstance(count, Tensor) else count
        w = None if w is None else w[1:]

    present = tsum > 0
    if kind == "dice":
        num, den = 2.0 * inter + smooth, psum + tsum + smooth
    elif kind == "jaccard":
        num, den = inter + smooth, psum + tsum - inter + smooth
    else:
        num = inter + smooth
        den = inter + alpha * (psum - inter) + beta * (tsum - inter) + smooth
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

    if not isinstance(count, Tensor) and w is None and empty_class != "exclude" and not sync_dist:
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
    numer, denom = (weights * loss).sum(), weights.sum()
    if sync_dist and per_image:
        numer, denom = all_reduce_sum(torch.stack([numer, denom])).unbind(0)
    return numer / torch.where(denom > 0, denom, 1.0)


def _overlap_loss(
    kind: str,
    logits: Tensor,
    target: Tensor,
    mode: Mode,
    from_logits: bool,
    smooth: float,
    squared_pred: bool,
    log_loss: bool,
    per_image: bool,
    ignore_index,
    class_weights,
    include_background: bool,
    sync_dist: bool,
    empty_class: str,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
) -> Tensor:
    name = {"dice": "DiceLoss", "jaccard": "JaccardLoss", "tversky": "TverskyLoss"}[kind]
    _checks.check_mode(mode, name)
    _checks.check_logits(logits, name)
    if mode == "multiclass":
        _checks.check_multiclass_target(logits, target, ignore_index, name)
    else:
        target = _binary_target(logits, target) if mode == "binary" else target
        _checks.check_dense_target(logits, target, mode, ignore_index, name)
    if not include_background and mode == "binary":
        raise ValueError(
            f"{name}: include_background=False drops channel 0, but binary mode has only the "
            f"foreground channel; use it with multiclass (or multilabel) mode"
        )
    inter, psum, tsum, count = region_sums(
        logits, target, mode, from_logits, squared_pred, per_image, ignore_index
    )
    if ignore_index is None:
        # every pixel valid: the count as a plain number keeps the weighting tensor-free
        count = math.prod(logits.shape[2:]) * (1 if per_image else logits.shape[0])
    return overlap_loss_from_sums(
        inter,
        psum,
        tsum,
        count,
        kind=kind,
        smooth=smooth,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        log_loss=log_loss,
        class_weights=class_weights,
        include_background=include_background,
        empty_class=empty_class,
        sync_dist=sync_dist,
    )


def dice_loss(
    logits: Tensor,
    target: Tensor,
    mode: Mode,
    from_logits: bool = True,
    smooth: float = 0.0,
    squared_pred: bool = False,
    log_loss: bool = False,
    per_image: bool = False,
    ignore_index: int | float | None = None,
    class_weights: Tensor | list[float] | None = None,
    include_background: bool = True,
    sync_dist: bool = False,
    empty_class: str = "penalize_fp",
) -> Tensor:
    r"""Soft Dice loss ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` per class.

    ``squared_pred`` uses ``sum(p^2)`` in the denominator (V-Net). See :func:`region_sums` for the
    sums and :func:`overlap_loss_from_sums` for empty classes, weights and aggregation; the
    :class:`seglosses.DiceLoss` docstring describes every argument.
    """
    return _overlap_loss(
        "dice", logits, target, mode, from_logits, smooth, squared_pred, log_loss, per_image,
        ignore_index, class_weights, include_background, sync_dist, empty_class,
    )  # fmt: skip


def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    mode: Mode,
    from_logits: bool = True,
    smooth: float = 0.0,
    squared_pred: bool = False,
    log_loss: bool = False,
    per_image: bool = False,
    ignore_index: int | float | None = None,
    class_weights: Tensor | list[float] | None = None,
    include_background: bool = True,
    sync_dist: bool = False,
    empty_class: str = "penalize_fp",
) -> Tensor:
    r"""Soft Jaccard (IoU) loss ``1 - (sum(p t) + smooth) / (sum(p) + sum(t) - sum(p t) + smooth)``.

    Same options as :func:`dice_loss`.
    """
    return _overlap_loss(
        "jaccard", logits, target, mode, from_logits, smooth, squared_pred, log_loss, per_image,
        ignore_index, class_weights, include_background, sync_dist, empty_class,
    )  # fmt: skip


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    mode: Mode,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
    from_logits: bool = True,
    smooth: float = 0.0,
    log_loss: bool = False,
    per_image: bool = False,
    ignore_index: int | float | None = None,
    class_weights: Tensor | list[float] | None = None,
    include_background: bool = True,
    sync_dist: bool = False,
    empty_class: str = "penalize_fp",
) -> Tensor:
    r"""Tversky loss ``(1 - TI_c)^gamma`` per class, ``TI = (TP + s) / (TP + alpha FP + beta FN + s)``.

    ``alpha`` weighs false positives, ``beta`` false negatives; ``alpha = beta = 0.5`` is Dice
    (at ``smooth=0``), ``alpha = beta = 1`` Jaccard; ``gamma > 1`` is the focal Tversky loss
    (applied per class, before averaging). Other options as :func:`dice_loss`.
    """
    return _overlap_loss(
        "tversky", logits, target, mode, from_logits, smooth, False, log_loss, per_image,
        ignore_index, class_weights, include_background, sync_dist, empty_class,
        alpha=alpha, beta=beta, gamma=gamma,
    )  # fmt: skip
