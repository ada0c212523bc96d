"""Cross-entropy + region sums for softmax probabilities (multiclass).

CE with class weights ``w`` and label smoothing ``s`` over ``C`` classes, as
``torch.nn.functional.cross_entropy``: ``-sum_n [(1 - s) w_t log p_t + (s / C) sum_c w_c log p_c]
/ sum_n w_t``. Its coefficient in the gradient (see :mod:`.softmax`) is ``A_n = g w_t / D`` at
the target class, plus ``g s W / (C D)`` on every class (``W = sum_c w_c``).
"""

from __future__ import annotations

import torch

from .common import no_autocast
from .softmax import (
    log_softmax_at_target,
    probabilities_for_backward,
    region_backward,
    region_sums,
    valid_or_ones,
)


class CERegionFn(torch.autograd.Function):
    """(x, t, v) -> (CE mean, I, P, T).

    x: logits [B, C, N]; t: class indices [B, N] (any valid class where ignored); v: valid mask
    [B, N] float or None; weight: class weights [C] or None; smoothing: label smoothing;
    squared: ``sum p^2`` for P.
    """

    @staticmethod
    def forward(ctx, x, t, v, weight, smoothing: float, squared: bool):
        with no_autocast(x):
            num_classes = x.shape[1]
            logp, logpt, pt = log_softmax_at_target(x, t)
            if smoothing != 0.0:
                wvec = torch.ones(num_classes, dtype=x.dtype, device=x.device) if weight is None else weight
                swl = torch.einsum("c,bcn->bn", wvec, logp)  # sum_c w_c log p_c, before exp_
            p = logp.exp_()  # the probabilities, in log p's memory
            vv = valid_or_ones(v, logpt)
            wt = vv if weight is None else weight[t] * vv  # per-pixel weight, 0 where ignored
            denom = wt.sum()
            total = -(logpt * wt).sum() * (1.0 - smoothing)
            if smoothing != 0.0:
                total = total - (smoothing / num_classes) * (swl * vv).sum()
            denom_safe = torch.where(denom > 0, denom, torch.ones_like(denom))
            inter, pred, tsum = region_sums(p, t, v, vv, pt, squared)
            # p is kept as an attribute, not a saved tensor: backward turns it into the gradient
            # in place (no new [B, C, N] buffer); x is saved to recompute p for a second backward.
            ctx.p = p
            ctx.save_for_backward(x, t, v, pt, wt, weight, denom_safe)
            ctx.smoothing, ctx.squared = smoothing, squared
            ctx.mark_non_differentiable(tsum)
        return total / denom_safe, inter, pred, tsum

    @staticmethod
    def backward(ctx, g_pixel, g_inter, g_pred, _g_tsum):
        with no_autocast(g_inter):
            x, t, v, pt, wt, weight, denom = ctx.saved_tensors
            p = probabilities_for_backward(ctx, x)
            eps, num_classes = ctx.smoothing, p.shape[1]
            a_scatter = wt * (g_pixel * (1.0 - eps) / denom)  # coefficient of -[t = c]
            a_dense = a_scatter
            if eps != 0.0:
                wsum = float(num_classes) if weight is None else weight.sum()
                a_dense = a_scatter + valid_or_ones(v, pt) * (g_pixel * eps * wsum / (num_classes * denom))
            grad = region_backward(p, t, v, pt, g_inter, g_pred, a_scatter, a_dense, ctx.squared)
            if eps != 0.0:
                # - eps w_c / (C D) on every valid pixel
                wvec = torch.ones(num_classes, dtype=p.dtype, device=p.device) if weight is None else weight
                grad_scale = g_pixel * eps / (num_classes * denom)
                grad.addcmul_(wvec.view(1, -1, 1) * (-grad_scale), valid_or_ones(v, pt).unsqueeze(1))
        return grad, None, None, None, None, None
