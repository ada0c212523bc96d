"""The multiclass region sums alone, for a region loss without a pixel term.

Dice, Jaccard, Tversky and Generalized Dice on softmax probabilities only need the ``[B, C]``
sums ``I, P, T`` (see :mod:`seglosses._fused`). Composed from autograd ops, the gather of
``p_t``, the masked sums and their backward nodes each cost a pass over the probabilities.
Here one Function takes the probabilities and returns the sums; its backward writes
``dL/dp = gP [2p] + gI [t = c]`` (times the valid mask) in one dense pass and one scatter, and
autograd's fused ``softmax`` backward kernel takes it from there. That measured faster than
writing the whole logit gradient in closed form (:func:`.softmax.region_backward`, which the
fused pixel+region Functions still use, because their pixel term needs ``p`` there anyway).
Used by :func:`seglosses._region.region_sums` for every multiclass region loss on logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import no_autocast
from .softmax import region_sums, valid_or_ones


def softmax_region_sums(x: Tensor, t: Tensor, v: Tensor | None, squared: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(I, P, T), each [B, C], of ``softmax(x, 1)``.

    x: logits [B, C, N] (float32 or float64); t: class indices [B, N] (any valid class where
    ignored); v: valid mask [B, N] of x's dtype, or None; squared: ``sum p^2`` for P.
    """
    with no_autocast(x):
        return RegionSumsFn.apply(torch.softmax(x, dim=1), t, v, squared)


class RegionSumsFn(torch.autograd.Function):
    """(p, t, v, squared) -> (I, P, T) of probabilities ``p`` [B, C, N]; see the module docstring."""

    @staticmethod
    def forward(ctx, p, t, v, squared: bool):
        pt = p.gather(1, t.unsqueeze(1)).squeeze(1)
        inter, pred, tsum = region_sums(p, t, v, valid_or_ones(v, pt), pt, squared)
        # p is saved by softmax's own backward node already: keeping it here costs no memory
        ctx.save_for_backward(t, v, p if squared else None)
        ctx.squared, ctx.shape = squared, p.shape
        ctx.mark_non_differentiable(tsum)
        return inter, pred, tsum

    @staticmethod
    def backward(ctx, g_inter, g_pred, _g_tsum):
        t, v, p = ctx.saved_tensors
        B, C, N = ctx.shape
        with no_autocast(t):
            # an output the loss did not use arrives as None
            if g_pred is None:
                grad = torch.zeros(B, C, N, dtype=g_inter.dtype, device=g_inter.device)
            elif ctx.squared:
                grad = p * (2.0 * g_pred).unsqueeze(-1)
            else:
                grad = g_pred.unsqueeze(-1).expand(B, C, N).clone()
            if g_inter is not None:
                grad.scatter_add_(1, t.unsqueeze(1), g_inter.gather(1, t).unsqueeze(1))
            if v is not None:
                grad.mul_(v.unsqueeze(1))
        return grad, None, None, None
