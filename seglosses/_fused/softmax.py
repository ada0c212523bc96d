"""The softmax (multiclass) half shared by the CE+region and focal+region Functions.

No one-hot: ``I``/``T`` are scatter-adds of ``p_t`` by class, ``sum_k p_k gP_k`` is one batched
mat-vec and the target-class term of the gradient is one ``scatter_add_``. With
``G_c = gP_c [2 p_c] + gI_c [t = c]`` and ``A_n`` the pixel term's coefficient, the logit
gradient is ``dL/dx_c = p_c (G_c - sum_k p_k G_k) + A_n (p_c - [t = c])``; backward writes it
into the probabilities forward kept (no new ``[B, C, N]`` buffer).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .common import chunk_scratch, chunks, masked_rowsum, rowdot


class LogSoftmax(NamedTuple):
    """``log p`` ([B, C, N]), ``log p_t`` and ``p_t`` ([B, N]) at each pixel's target class."""

    logp: Tensor
    logpt: Tensor
    pt: Tensor


def log_softmax_at_target(x: Tensor, t: Tensor) -> LogSoftmax:
    """log_softmax over the classes, and its value at the target class.

    The caller turns ``logp`` into the probabilities in place (``logp.exp_()``): on CPU
    log_softmax then exp beats softmax over dim 1, and gives ``log p_t`` exactly, with no extra
    pass (CE reads it, focal too).
    """
    logp = torch.log_softmax(x, dim=1)
    B, N = t.shape
    logpt = logp.gather(1, t.unsqueeze(1)).view(B, N)
    return LogSoftmax(logp, logpt, logpt.exp())  # p_t on [B, N] only, not a gather over [B, C, N]


def valid_or_ones(v: Tensor | None, like: Tensor) -> Tensor:
    """The [B, N] valid mask, or ones without ignore_index."""
    return torch.ones_like(like) if v is None else v


def region_sums(p: Tensor, t: Tensor, v: Tensor | None, vv: Tensor, pt: Tensor, squared: bool):
    """(I, P, T), each [B, C], of the probabilities ``p`` over valid pixels (``vv``: the valid
    mask, ones without ignore_index; ``v``: the mask or None, for the cheaper sum of p)."""
    inter = pt.new_zeros(p.shape[0], p.shape[1]).scatter_add(1, t, pt if v is None else pt * vv)
    tsum = torch.zeros_like(inter).scatter_add(1, t, vv)
    if squared:
        pred = rowdot(p, p) if v is None else torch.einsum("bcn,bcn,bn->bc", p, p, v)
    else:
        pred = masked_rowsum(p, v)
    return inter, pred, tsum


def probabilities_for_backward(ctx, x: Tensor) -> Tensor:
    """The probabilities forward kept in ``ctx.p`` (handed over once: backward overwrites them).

    A second backward through the same graph (retain_graph=True) finds them already turned
    into the first gradient, and recomputes them the way forward did.
    """
    p = ctx.p if ctx.p is not None else torch.log_softmax(x, dim=1).exp_()
    ctx.p = None
    return p


def scale_classes_and_pixels_(p: Tensor, u: Tensor, w: Tensor) -> Tensor:
    """p[b, c, n] <- p[b, c, n] * (u[b, c] + w[b, n]), in place, chunk by chunk along n.

    The sum u + w is never formed at full size ([B, C, N]): per chunk it is written to a small
    scratch buffer (a pass that reads only the small u and w), then multiplied into p in place.
    """
    B, C, _ = p.shape
    parts = chunks(p)
    scratch = chunk_scratch(p, parts)
    uu = u.unsqueeze(-1)
    for j, n in parts:
        buf = scratch[: B * C * n].view(B, C, n)
        torch.add(uu, w[:, None, j : j + n], out=buf)
        p[..., j : j + n].mul_(buf)
    return p


def region_backward(p, t, v, pt, g_inter, g_pred, a_scatter, a_dense, squared) -> Tensor:
    """The logit gradient, written into ``p``.

    ``a_scatter`` ([B, N]) is the pixel term's coefficient of ``-[t = c]`` and ``a_dense`` that
    of ``p_c``: dense ``p_c (gP_c [2p_c] - S_n + A_n)``, at the target class ``+ gI_t p_t - A_n``,
    with ``S_n = sum_k p_k gP_k [* 2 p_k] + gI_t p_t``.
    """
    pv = p if v is None else p.mul_(v.unsqueeze(1))
    gi_t = g_inter.gather(1, t)  # dL/dI at each pixel's target class, [B, N]
    ptv = pt if v is None else pt * v
    if squared:
        pp = pv * pv
        s = torch.einsum("bc,bcn->bn", 2.0 * g_pred, pp)
        grad = pp.mul_(2.0 * g_pred.unsqueeze(-1))
        s.addcmul_(gi_t, ptv)
        grad.addcmul_(pv, (a_dense - s).unsqueeze(1))
    else:
        s = torch.einsum("bc,bcn->bn", g_pred, pv)
        s.addcmul_(gi_t, ptv)
        grad = scale_classes_and_pixels_(pv, g_pred, a_dense - s)
    grad.scatter_add_(1, t.unsqueeze(1), (gi_t * ptv - a_scatter).unsqueeze(1))
    return grad
