"""Cross-entropy over the hardest pixels only: TopK (nnU-Net) and OHEM (HRNet, mmsegmentation).

- **TopK**: the per-pixel loss (CE, or BCE per element), then the mean of its largest ``k``
  percent over the valid pixels (nnU-Net's ``TopKLoss``, ``k=10``).
- **OHEM** (online hard example mining): the pixels whose probability of the true class is
  below ``threshold``, but at least the ``min_kept`` least confident ones (HRNet's
  ``OhemCrossEntropy``: the threshold is raised to the ``min_kept``-th smallest probability),
  then the mean of their loss. Binary: ``p_t = p t + (1 - p)(1 - t)`` per element.

Per-class ``weight`` (``pos_weight`` for BCE) and ``label_smoothing`` shape the per-pixel loss
exactly as in :class:`~seglosses.CrossEntropyLoss` / :class:`~seglosses.BCELoss`; the selected
pixels are then averaged plainly (as the peers do). Ignored pixels are never selected and
``k`` percent is of the valid pixels; a batch with no valid pixel costs 0. The selection is
``torch.topk``; under ``torch.compile`` the ignore-aware selection is a sort (no data-dependent
shapes), so both work with ``fullgraph=True``. Eager multiclass TopK runs as one autograd
Function with its gradient in closed form (:class:`_TopKCrossEntropy`); compiled, it is the
plain graph, which the compiler fuses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import _checks
from ._targets import channel_view, index_target, upcast
from .functional import _multiclass_inputs, binary_cross_entropy, cross_entropy


def _check_k(k: float, name: str) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 100:
        raise ValueError(f"{name}: k is a percentage of the pixels in (0, 100], got {k!r}")
    return float(k)


def _check_ohem(threshold: float, min_kept: int, name: str) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"{name}: threshold is a probability in (0, 1], got {threshold!r}")
    if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 0:
        raise ValueError(f"{name}: min_kept must be an int >= 0, got {min_kept!r}")


def _check_label_smoothing(s, name: str) -> None:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
        raise ValueError(f"{name}: label_smoothing is a float in [0, 1], got {s!r}")


def _topk_count(numel: int, valid: Tensor | None, k: float) -> int:
    """How many pixels TopK averages: ``k`` percent of the valid ones, at least 1; 0 when none is
    valid. Eager only: the valid count is read back, because topk takes a count and a full sort
    costs many times more."""
    if valid is None:
        return max(1, int(numel * k / 100))
    n_valid = int(valid.sum())
    return max(1, int(n_valid * k / 100)) if n_valid else 0


def _topk_mean(loss: Tensor, valid: Tensor | None, k: float) -> Tensor:
    flat = loss.reshape(-1)
    if valid is None:
        return torch.topk(flat, _topk_count(flat.numel(), None, k), sorted=False).values.mean()
    v = valid.reshape(-1)
    if not torch.compiler.is_compiling():
        n = _topk_count(flat.numel(), v, k)
        if n == 0:
            return flat.sum() * 0.0
        # ignored pixels rank below every loss (losses are >= 0); k percent never reaches them
        return torch.topk(flat.masked_fill(~v, -1.0), n, sorted=False).values.mean()
    # traced: a sort, no data-dependent shapes and no tensor read back
    ranked = torch.where(v, flat, torch.full_like(flat, -1.0)).sort(descending=True).values
    count = torch.floor(v.sum().to(flat.dtype) * (k / 100)).clamp_min(1.0)
    keep = torch.arange(flat.numel(), device=flat.device) < count
    return (ranked.clamp_min(0.0) * keep).sum() / count


def _ohem_mean(loss: Tensor, p_t: Tensor, valid: Tensor | None, threshold: float, min_kept: int) -> Tensor:
    loss, p_t = loss.reshape(-1), p_t.reshape(-1)
    v = torch.ones_like(p_t, dtype=torch.bool) if valid is None else valid.reshape(-1)
    thr = torch.full((), float(threshold), dtype=p_t.dtype, device=p_t.device)
    if min_kept > 0:
        ranked = torch.where(v, p_t, torch.full_like(p_t, 2.0)).sort().values  # ignored sort last
        n_valid = v.sum()
        at = torch.minimum(torch.full_like(n_valid, min_kept), (n_valid - 1).clamp_min(0))
        thr = torch.maximum(ranked.gather(0, at.reshape(1)).squeeze(0), thr)  # gather: no unbacked index
    keep = (v & (p_t < thr)).to(loss.dtype)
    return (loss * keep).sum() / keep.sum().clamp_min(1.0)


def _ce_terms(logits, target, weight, ignore_index, label_smoothing):
    loss = cross_entropy(logits, target, weight, ignore_index, label_smoothing, reduction="none")
    valid = None if ignore_index is None else target != ignore_index
    return loss, valid


def _bce_terms(logits, target, pos_weight, ignore_index, label_smoothing):
    loss = binary_cross_entropy(logits, target, pos_weight, label_smoothing, ignore_index, reduction="none")
    target = target.reshape(loss.shape)
    valid = None if ignore_index is None else target != ignore_index
    return loss, valid, target


def topk_cross_entropy(logits, target, k=10.0, weight=None, ignore_index=None, label_smoothing=0.0) -> Tensor:
    """Mean cross-entropy of the ``k`` percent hardest valid pixels (multiclass)."""
    name = "TopKCrossEntropyLoss"
    k = _check_k(k, name)
    _check_label_smoothing(label_smoothing, name)
    if torch.compiler.is_compiling():  # the compiler fuses the plain graph; the sort needs no read-back
        return _topk_mean(*_ce_terms(logits, target, weight, ignore_index, label_smoothing), k)
    x, t, w = _multiclass_inputs(logits, target, weight, ignore_index, name)
    t, valid = index_target(t, ignore_index)
    n = _topk_count(t.numel(), valid, k)
    if n == 0:  # 0 with a zero gradient, whatever the ignored logits hold (inf * 0 is NaN)
        return x.reshape(-1)[:1].masked_fill(torch.ones(1, dtype=torch.bool, device=x.device), 0.0).sum()
    return _TopKCrossEntropy.apply(x, t, valid, n, w, float(label_smoothing))


# float32 -> int32, float64 -> int64: the views topk ranks (logits are upcast to one of these)
_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float64: torch.int64}


class _TopKCrossEntropy(torch.autograd.Function):
    r"""TopK cross-entropy with its gradient in closed form (the eager path).

    Autograd through ``log_softmax``, a gather and ``torch.topk`` (nnU-Net's graph) spends most
    of the backward in zero-filled gradient buffers and the dense ``log_softmax`` backward. With
    ``a_i = g / n`` at the ``n`` selected pixels and 0 elsewhere, the gradient of
    ``-(1-s) w_t log p_t - (s/C) sum_c w_c log p_c`` is

    .. math:: a_i \big(p_{ic} ((1-s) w_{t_i} + s \textstyle\sum_c w_c / C)
              - (1-s) w_{t_i} [c = t_i] - s\, w_c / C\big),

    one ``exp`` of the saved log-probabilities and two in-place updates. The selection runs
    ``torch.topk`` on the losses' bit patterns: a float ``>= 0`` orders as its integer bits do
    (the losses are, for the non-negative weights the modules accept), and integer topk is
    faster than float topk on CPU.
    """

    @staticmethod
    def forward(ctx, x, t, valid, n, w, s):
        logp = torch.log_softmax(x, dim=1)
        t1 = t.unsqueeze(1)
        loss = logp.gather(1, t1).neg_()
        wt = None if w is None else w[t1]
        if wt is not None:
            loss.mul_(wt)
        if s:
            smooth = (logp if w is None else logp * channel_view(w, logp.ndim)).sum(1, keepdim=True)
            loss.mul_(1.0 - s).sub_(smooth, alpha=s / x.shape[1])
        flat = loss.reshape(-1)
        # The ranking key, as integers: abs clears the sign bit of -0.0 and of a NaN (which may
        # carry it), so -0.0 ties with 0 and a NaN ranks first, as torch.topk ranks floats.
        key = flat.abs()
        if valid is not None:
            key.masked_fill_(~valid.reshape(-1), -1.0)  # ignored pixels rank below every loss (>= 0)
        idx = torch.topk(key.view(_SAME_WIDTH_INT[key.dtype]), n, sorted=False).indices
        ctx.save_for_backward(logp, t1, idx, wt, w)
        ctx.n, ctx.s = n, s
        return flat.take(idx).sum() / n

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        logp, t1, idx, wt, w = ctx.saved_tensors
        n, s, C = ctx.n, ctx.s, logp.shape[1]
        a = torch.zeros(t1.shape, dtype=logp.dtype, device=logp.device)
        a.view(-1).index_fill_(0, idx, g / n)
        at = a if wt is None else a * wt
        on_p = at if not s else at * (1.0 - s) + a * (s if w is None else w.sum() * (s / C))
        grad = torch.exp(logp).mul_(on_p)
        grad.scatter_add_(1, t1, at * (s - 1.0))
        if s:
            grad.sub_(a * (s / C) if w is None else a * (s / C) * channel_view(w, logp.ndim))
        return grad, None, None, None, None, None


def topk_binary_cross_entropy(logits, target, k=10.0, pos_weight=None, ignore_index=None, label_smoothing=0.0) -> Tensor:
    """Mean BCE of the ``k`` percent hardest valid elements (binary, multilabel)."""
    k = _check_k(k, "TopKBCELoss")
    _check_label_smoothing(label_smoothing, "TopKBCELoss")
    loss, valid, _ = _bce_terms(logits, target, pos_weight, ignore_index, label_smoothing)
    return _topk_mean(loss, valid, k)


def ohem_cross_entropy(
    logits, target, threshold=0.7, min_kept=100_000, weight=None, ignore_index=None, label_smoothing=0.0
) -> Tensor:
    """OHEM cross-entropy (multiclass); see the module docstring."""
    _check_ohem(threshold, min_kept, "OhemCrossEntropyLoss")
    _check_label_smoothing(label_smoothing, "OhemCrossEntropyLoss")
    loss, valid = _ce_terms(logits, target, weight, ignore_index, label_smoothing)
    t = target.long() if valid is None else torch.where(valid, target.long(), torch.zeros_like(target.long()))
    with torch.no_grad():
        p_t = torch.softmax(upcast(logits.detach()), dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    return _ohem_mean(loss, p_t, valid, threshold, min_kept)


def ohem_binary_cross_entropy(
    logits, target, threshold=0.7, min_kept=100_000, pos_weight=None, ignore_index=None, label_smoothing=0.0
) -> Tensor:
    """OHEM BCE per element (binary, multilabel); see the module docstring."""
    _check_ohem(threshold, min_kept, "OhemBCELoss")
    _check_label_smoothing(label_smoothing, "OhemBCELoss")
    loss, valid, target = _bce_terms(logits, target, pos_weight, ignore_index, label_smoothing)
    with torch.no_grad():
        p = torch.sigmoid(upcast(logits.detach())).reshape(loss.shape)
        t = target.to(p.dtype) if valid is None else torch.where(valid, target.to(p.dtype), torch.zeros_like(p))
        p_t = p * t + (1 - p) * (1 - t)
    return _ohem_mean(loss, p_t, valid, threshold, min_kept)


class _HardPixelLoss(nn.Module):
    _fn = None

    def __init__(self, **options):
        super().__init__()
        for key, value in options.items():
            if key in ("weight", "pos_weight") and value is not None:
                self.register_buffer(key, _checks.as_weight_tensor(value, key, type(self).__name__), persistent=False)
            else:
                setattr(self, key, value)
        self._names = list(options)
        # validate once at construction, as the other modules do
        if "k" in options:
            _check_k(options["k"], type(self).__name__)
        else:
            _check_ohem(options["threshold"], options["min_kept"], type(self).__name__)
        _check_label_smoothing(options["label_smoothing"], type(self).__name__)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return type(self)._fn(logits, target, **{n: getattr(self, n) for n in self._names})


class TopKCrossEntropyLoss(_HardPixelLoss):
    """nnU-Net's TopK loss: CE of the ``k`` percent hardest pixels (multiclass)."""

    _fn = staticmethod(topk_cross_entropy)

    def __init__(self, k: float = 10.0, weight=None, ignore_index: int | None = None, label_smoothing: float = 0.0):
        super().__init__(k=k, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing)


class TopKBCELoss(_HardPixelLoss):
    """TopK on BCE: the ``k`` percent hardest elements (binary, multilabel)."""

    _fn = staticmethod(topk_binary_cross_entropy)

    def __init__(self, k: float = 10.0, pos_weight=None, ignore_index: int | float | None = None, label_smoothing: float = 0.0):
        super().__init__(k=k, pos_weight=pos_weight, ignore_index=ignore_index, label_smoothing=label_smoothing)


class OhemCrossEntropyLoss(_HardPixelLoss):
    """HRNet / mmseg OHEM cross-entropy (multiclass): pixels with ``p_t < threshold``, at least
    the ``min_kept`` least confident."""

    _fn = staticmethod(ohem_cross_entropy)

    def __init__(
        self, threshold: float = 0.7, min_kept: int = 100_000, weight=None,
        ignore_index: int | None = None, label_smoothing: float = 0.0,
    ):
        super().__init__(threshold=threshold, min_kept=min_kept, weight=weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing)


class OhemBCELoss(_HardPixelLoss):
    """OHEM on BCE (binary, multilabel), ``p_t`` the probability of the target per element."""

    _fn = staticmethod(ohem_binary_cross_entropy)

    def __init__(
        self, threshold: float = 0.7, min_kept: int = 100_000, pos_weight=None,
        ignore_index: int | float | None = None, label_smoothing: float = 0.0,
    ):
        super().__init__(threshold=threshold, min_kept=min_kept, pos_weight=pos_weight,
                         ignore_index=ignore_index, label_smoothing=label_smoothing)
