"""BCE + region sums for sigmoid probabilities (binary / multilabel), chunked on CPU.

Per element ``l = softplus(x) - t' x + (pw - 1) t' softplus(-x)``, ``t' = t (1 - s) + s / 2``.
Without pos_weight, ``softplus(x) = relu(x) - log max(p, 1 - p)``; the log factor lies in
[0.5, 1], so its sum is the log of products of 64 elements (one log per 64 elements instead of
one per element). The gradient ``dL/dx = p (1 - p) (gI t + gP [2p]) + c (lw p - pw t') [v]``,
``lw = 1 + (pw - 1) t'``, is written into the probabilities forward saved, chunk by chunk,
reusing forward's chunk buffer: no new logit-sized buffer in backward (on CPU a fresh multi-MB
allocation costs a page fault per 4 KiB page on first touch, as much as the arithmetic).

Large inputs can instead run the kernels of :mod:`seglosses._compiled`, when switched on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _compiled
from .common import (
    add_up,
    chunk_scratch,
    chunks,
    no_autocast,
    rowdot,
    sigmoid_region_grad,
    sigmoid_region_sums,
    smoothed,
    sum_log_half_to_one,
)


class BCESums(NamedTuple):
    """The chunked forward's results: p (kept for backward), the BCE sum, the region sums, the
    chunk buffer (reused by backward) and the target's value range (or None)."""

    p: Tensor
    total: Tensor
    inter: Tensor
    pred: Tensor
    tsum: Tensor
    scratch: Tensor
    t_range: Tensor | None


def bce_forward(x, t, v, pos_weight, smoothing, squared, check_range) -> BCESums:
    """p = sigmoid(x), the BCE sum and the region sums, chunk by chunk.

    With ``check_range`` the target's smallest and largest values come back as ``t_range``
    (the value check, done chunk by chunk here instead of in a separate pass over the target).
    """
    B, C, _ = x.shape
    p = torch.empty_like(x)
    parts = chunks(x)
    scratch = chunk_scratch(x, parts)
    # Per-chunk partial sums, added up once at the end (fewer tiny ops than accumulating).
    inter, pred, tsum, total, lows, highs = [], [], [], [], [], []
    for j, n in parts:
        xs, ts, ps = x[..., j : j + n], t[..., j : j + n], p[..., j : j + n]
        vs = None if v is None else v[..., j : j + n]
        torch.sigmoid(xs, out=ps)
        if check_range:
            lo, hi = torch.aminmax(ts)
            lows.append(lo)
            highs.append(hi)
        for acc, value in zip((inter, pred, tsum), sigmoid_region_sums(ps, ts, vs, squared)):
            acc.append(value)
        tss = smoothed(ts, vs, smoothing)
        buf = scratch[: B * C * n].view(B, C, n)
        if pos_weight is None:
            torch.clamp_min(xs, 0.0, out=buf)  # relu(x)
            total.append(buf.sum() if vs is None else rowdot(buf, vs).sum())
            total.append(-rowdot(xs, tss).sum())
            torch.maximum(torch.sub(1.0, ps, out=buf), ps, out=buf)  # max(p, 1 - p)
            if vs is not None:
                buf.sub_(1.0).mul_(vs).add_(1.0)  # ignored elements: factor 1, log 0
            total.append(-sum_log_half_to_one(buf))
        else:
            sp = F.softplus(xs)
            total.append(sp.sum() if vs is None else rowdot(sp, vs).sum())
            total.append(-rowdot(xs, tss).sum())
            sp.sub_(xs)  # softplus(-x) = softplus(x) - x, in place
            total.append((rowdot(sp, tss) * (pos_weight - 1.0)).sum())
    t_range = torch.stack([add_up(lows, torch.amin), add_up(highs, torch.amax)]) if check_range else None
    return BCESums(p, add_up(total), add_up(inter), add_up(pred), add_up(tsum), scratch, t_range)


def bce_backward(p, t, v, pos_weight, smoothing, squared, c, g_inter, g_pred, scratch) -> Tensor:
    """The logit gradient, chunk by chunk, written into ``p`` (dead after this).

    The region part goes through ``scratch`` (the forward's chunk buffer). Every op reads
    ``p[i]`` no later than it writes ``p[i]``.
    """
    gi, gp = g_inter.unsqueeze(-1), g_pred.unsqueeze(-1)
    B, C, _ = p.shape
    for j, n in chunks(p):
        ps, ts = p[..., j : j + n], t[..., j : j + n]
        vs = None if v is None else v[..., j : j + n]
        buf = sigmoid_region_grad(scratch[: B * C * n].view(B, C, n), ps, ts, vs, gi, gp, squared)
        # + c (lw p - pw t') [v], computed in ps (its last use), then ps = buf + c ps
        tss = smoothed(ts, vs, smoothing)
        if pos_weight is None:
            ps.sub_(tss) if vs is None else ps.mul_(vs).sub_(tss)
        else:
            pw = pos_weight.view(1, -1, 1)
            ps.mul_((pw - 1.0) * tss + 1.0).sub_(pw * tss)
            if vs is not None:
                ps.mul_(vs)
        torch.addcmul(buf, ps, c, out=ps)
    return p


class BCERegionFn(torch.autograd.Function):
    """(x, t, v) -> (BCE mean, I, P, T, t_range) for sigmoid probabilities.

    x: logits [B, C, N]; t: targets [B, C, N] in [0, 1] (already zeroed where ignored);
    v: valid mask [B, C, N] (1 valid, 0 ignored) or None; pos_weight: [C] or None;
    smoothing: label smoothing s; squared: ``sum p^2`` for P; check_range: also return the
    target's [min, max] (else None).
    """

    @staticmethod
    def forward(ctx, x, t, v, pos_weight, smoothing: float, squared: bool, check_range: bool):
        with no_autocast(x):
            # every element ignored -> loss 0, gradient 0
            count = float(max(1, x.numel())) if v is None else v.sum().clamp_min(1.0)
            sums = None
            if _compiled.applies(x, v, pos_weight, squared):
                # one generated loop instead of the eager passes (see seglosses._compiled)
                sums = _compiled.bce_dice_forward(x, t, smoothing)
            ctx.save_for_backward(x, t, v, pos_weight)
            if sums is not None:
                total, inter, pred, tsum, lo, hi = (s.view(1, 1) for s in sums)
                t_range = torch.stack([lo.view(()), hi.view(())]) if check_range else None
                ctx.p, ctx.scratch = None, None  # backward recomputes p
            else:
                p, total, inter, pred, tsum, scratch, t_range = bce_forward(
                    x, t, v, pos_weight, smoothing, squared, check_range
                )
                # Kept as attributes (no version counter): backward overwrites p with the
                # gradient, once, and reuses the chunk buffer (no new large allocations).
                ctx.p, ctx.scratch = p, scratch
            ctx.compiled = sums is not None
            ctx.count = count  # a Python number without ignore_index, else a 0-dim tensor
            ctx.smoothing, ctx.squared = smoothing, squared
            ctx.mark_non_differentiable(*(tsum,) if t_range is None else (tsum, t_range))
        return total.view(()) / count, inter, pred, tsum, t_range

    @staticmethod
    def backward(ctx, g_pixel, g_inter, g_pred, _g_tsum, _g_range):
        with no_autocast(g_inter):
            x, t, v, pos_weight = ctx.saved_tensors
            c = g_pixel / ctx.count
            grad = None
            if ctx.compiled and not torch.is_grad_enabled():  # (create_graph: eager ops)
                grad = _compiled.bce_dice_backward(x, t, ctx.smoothing, c, g_inter, g_pred)
            if grad is None:
                # A second backward through the same graph (retain_graph=True) finds p already
                # turned into the first gradient, and recomputes it (so does a compiled
                # forward, which keeps no p).
                p = ctx.p if ctx.p is not None else torch.sigmoid(x)
                scratch = ctx.scratch if ctx.p is not None else chunk_scratch(p, chunks(p))
                ctx.p = None
                grad = bce_backward(
                    p, t, v, pos_weight, ctx.smoothing, ctx.squared, c, g_inter, g_pred, scratch
                )
        return grad, None, None, None, None, None, None
