"""The multiclass region sums alone, for a region loss without a pixel term.

Dice, Jaccard, Tversky and Generalized Dice on softmax probabilities only need the ``[B, C]``
sums ``I, P, T`` (see :mod:`seglosses._fused`). Composed from autograd ops, the softmax, the
gather of ``p_t``, the masked sums and their backward nodes each cost a pass over the logits;
here the probabilities are computed once (one ``softmax``) and backward
writes the closed-form gradient of :func:`.softmax.region_backward` (with no pixel term) into
them. Used by :func:`seglosses._region.region_sums` for every multiclass region loss on logits.
"""

from __future__ import annotations

import torch

from .common import no_autocast
from .softmax import region_backward, region_sums, valid_or_ones


class SoftmaxRegionFn(torch.autograd.Function):
    """(x, t, v) -> (I, P, T), each [B, C].

    x: logits [B, C, N] (float32 or float64); t: class indices [B, N] (any valid class where
    ignored); v: valid mask [B, N] of x's dtype, or None; squared: ``sum p^2`` for P.
    """

    @staticmethod
    def forward(ctx, x, t, v, squared: bool):
        with no_autocast(x):
            p = torch.softmax(x, dim=1)  # no log p needed: cheaper than log_softmax + exp_
            pt = p.gather(1, t.unsqueeze(1)).squeeze(1)
            inter, pred, tsum = region_sums(p, t, v, valid_or_ones(v, pt), pt, squared)
            ctx.p = p  # backward turns it into the gradient in place (see .softmax)
            ctx.save_for_backward(x, t, v, pt)
            ctx.squared = squared
            ctx.mark_non_differentiable(tsum)
        return inter, pred, tsum

    @staticmethod
    def backward(ctx, g_inter, g_pred, _g_tsum):
        x, t, v, pt = ctx.saved_tensors
        with no_autocast(x):
            # an output the loss did not use arrives as None
            g_inter = torch.zeros(pt.shape[0], x.shape[1], dtype=x.dtype, device=x.device) if g_inter is None else g_inter
            g_pred = torch.zeros_like(g_inter) if g_pred is None else g_pred
            # the probabilities once (backward overwrites them); a second backward recomputes
            # them exactly as forward did, so repeated backward passes agree bit for bit
            p = ctx.p if ctx.p is not None else torch.softmax(x, dim=1)
            ctx.p = None
            zero = torch.zeros((), dtype=p.dtype, device=p.device)  # no pixel term
            grad = region_backward(p, t, v, pt, g_inter, g_pred, zero, zero, ctx.squared)
        return grad, None, None, None
