"""Focal + region sums: sigmoid (binary / multilabel) and softmax (multiclass).

Sigmoid, per element, ``q = 1 - p_t``, ``a_t = alpha t + (1 - alpha)(1 - t)``:
``dpixel/dx = a_t [q^g (p - t) + g q^(g-1) (1 - 2t) p (1 - p) ce] / N``, with ``q`` in log space
for ``g < 1`` so that saturated logits stay finite.

Softmax: the pixel coefficient in the gradient of :mod:`.softmax` is
``A_n = a_t (q^g - g p_t q^(g-1) log p_t) / N``, with ``log q = log sum_{c != t} p_c`` (exact
where ``1 - p_t`` would round to 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import bce_from_logits, no_autocast, power, rowdot, sigmoid_region_grad, sigmoid_region_sums
from .softmax import (
    log_softmax_at_target,
    probabilities_for_backward,
    region_backward,
    region_sums,
    valid_or_ones,
)


def _alpha_t(t, alpha: float):
    return t * (2.0 * alpha - 1.0) + (1.0 - alpha)  # alpha t + (1 - alpha)(1 - t)


class SigmoidFocalRegionFn(torch.autograd.Function):
    """(x, t, v) -> (focal mean, I, P, T) for sigmoid probabilities.

    x: logits [B, C, N]; t: targets [B, C, N] in [0, 1] (already zeroed where ignored); v: valid
    mask [B, C, N] or None; alpha: float or None; gamma >= 0; squared: ``sum p^2`` for P.
    """

    @staticmethod
    def forward(ctx, x, t, v, alpha, gamma: float, squared: bool):
        with no_autocast(x):
            count = float(max(1, x.numel())) if v is None else v.sum().clamp_min(1.0)
            p = torch.sigmoid(x)
            inter, pred, tsum = sigmoid_region_sums(p, t, v, squared)
            if gamma == 0.0 or gamma >= 1.0:
                # q^g has a bounded slope for g >= 1 (or is constant for g = 0), so q = 1 - p_t
                # may be formed directly, as p (1 - t) + sigmoid(-x) t: two non-negative terms,
                # so it keeps its relative precision where p rounds to 1; g < 1 takes the
                # log-space branch below.
                ce = bce_from_logits(x, t)
                q = torch.sigmoid(-x).mul_(t).addcmul_(torch.rsub(t, 1.0), p)
                w = ce * power(q, gamma) if gamma != 0.0 else ce.clone()
                if alpha is not None:
                    w.mul_(_alpha_t(t, alpha))
                ctx.save_for_backward(p, t, v, q, ce)
            else:
                logp = F.logsigmoid(x)
                log1mp = logp - x  # log(1 - p) = logsigmoid(x) - x
                ce = bce_from_logits(x, t)
                # q = 1 - p_t = p (1 - t) + (1 - p) t, in log space
                logq = torch.logaddexp(logp + torch.log1p(-t), log1mp + torch.log(t))
                w = ce * torch.exp(gamma * logq)
                if alpha is not None:
                    w = w * _alpha_t(t, alpha)
                ctx.save_for_backward(p, t, v, logp, log1mp, logq, ce)
            pixel = (w.sum() if v is None else rowdot(w, v).sum()) / count
            ctx.count, ctx.alpha, ctx.gamma, ctx.squared = count, alpha, gamma, squared
            ctx.mark_non_differentiable(tsum)
        return pixel, inter, pred, tsum

    @staticmethod
    def backward(ctx, g_pixel, g_inter, g_pred, _g_tsum):
        with no_autocast(g_inter):
            gamma, alpha = ctx.gamma, ctx.alpha
            log_space = not (gamma == 0.0 or gamma >= 1.0)
            if log_space:
                p, t, v, logp, log1mp, logq, ce = ctx.saved_tensors
            else:
                p, t, v, q, ce = ctx.saved_tensors
            grad = sigmoid_region_grad(
                torch.empty_like(p), p, t, v, g_inter.unsqueeze(-1), g_pred.unsqueeze(-1), ctx.squared
            )
            # a_t [q^g (p - t) + g q^(g-1) (1 - 2t) p (1 - p) ce]
            if gamma == 0.0:
                pix = p - t
            elif log_space:  # q^(g-1) p (1 - p) in log space
                pix = torch.exp(gamma * logq) * (p - t)
                pix.add_(gamma * torch.exp((gamma - 1.0) * logq + logp + log1mp) * (1.0 - 2.0 * t) * ce)
            else:
                pix = power(q, gamma).mul_(p - t) if gamma != 1.0 else q * (p - t)
                tail = (t * -2.0).add_(1.0).mul_(ce).mul_(gamma)
                if gamma != 1.0:
                    tail.mul_(power(q, gamma - 1.0))
                pix.add_(torch.ops.aten.sigmoid_backward.grad_input(tail, p, grad_input=tail))
            if alpha is not None:
                pix.mul_(_alpha_t(t, alpha))
            if v is not None:
                pix.mul_(v)
            grad.addcmul_(pix, g_pixel / ctx.count)
        return grad, None, None, None, None, None


class SoftmaxFocalRegionFn(torch.autograd.Function):
    """(x, t, v) -> (focal mean, I, P, T) for softmax probabilities.

    x: logits [B, C, N]; t: class indices [B, N] (any valid class where ignored); v: valid mask
    [B, N] float or None; alpha: per-class [C] or None; gamma >= 0; squared: ``sum p^2`` for P.
    """

    @staticmethod
    def forward(ctx, x, t, v, alpha, gamma: float, squared: bool):
        with no_autocast(x):
            logp, logpt, pt = log_softmax_at_target(x, t)
            p = logp.exp_()  # the probabilities, in log p's memory
            vv = valid_or_ones(v, logpt)
            count = vv.sum().clamp_min(1.0)
            # log(1 - p_t) = log sum_{c != t} p_c: exact where 1 - p_t would round to 0
            logq = torch.log(p.scatter(1, t.unsqueeze(1), 0.0).sum(1))
            mod = torch.exp(gamma * logq) if gamma != 0.0 else torch.ones_like(logpt)
            at = vv if alpha is None else alpha[t] * vv
            pixel = -(at * mod * logpt).sum() / count
            inter, pred, tsum = region_sums(p, t, v, vv, pt, squared)
            # p is kept as an attribute (see CERegionFn): backward turns it into the gradient.
            ctx.p = p
            ctx.save_for_backward(x, t, v, pt, logpt, logq, mod, at, count)
            ctx.gamma, ctx.squared = gamma, squared
            ctx.mark_non_differentiable(tsum)
        return pixel, inter, pred, tsum

    @staticmethod
    def backward(ctx, g_pixel, g_inter, g_pred, _g_tsum):
        with no_autocast(g_inter):
            x, t, v, pt, logpt, logq, mod, at, count = ctx.saved_tensors
            p = probabilities_for_backward(ctx, x)
            gamma = ctx.gamma
            # a_t (q^g - g p_t q^(g-1) log p_t); the product is 0 where q == 0
            f = mod.clone()
            if gamma != 0.0:
                tail = torch.exp((gamma - 1.0) * logq) * logpt
                tail = torch.where(logq > float("-inf"), tail, torch.zeros_like(tail))
                f.addcmul_(pt, tail, value=-gamma)
            a = f.mul_(at).mul_(g_pixel / count)
            grad = region_backward(p, t, v, pt, g_inter, g_pred, a, a, ctx.squared)
        return grad, None, None, None, None, None
