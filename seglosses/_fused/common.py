"""Building blocks shared by the fused Functions: chunking, row sums, autocast, small maths.

Chunking. On CPU the elementwise passes run chunk by chunk along the pixels (cache blocking):
:data:`CPU_CHUNK_ELEMS` elements per operand, so that the several passes over one chunk run
from the last-level cache instead of main memory. Smaller (L2-sized) chunks were faster
single-threaded on a quiet machine, but every op is an OpenMP parallel region: with several
threads on a loaded machine each region can stall for a scheduler time slice, and many small
chunks multiply that. On GPUs there is one chunk.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

if torch.torch_version.TorchVersion(torch.__version__) >= (2, 4):
    _autocast_enabled = torch.is_autocast_enabled  # takes the device type
else:  # torch 2.3: no device argument, a separate query for CPU

    def _autocast_enabled(device_type: str) -> bool:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


CPU_CHUNK_ELEMS = 1 << 20  # 4 MiB of float32 per operand
MIN_CHUNK = 1024  # along the last dim: keeps the Python loop short when B * C is large


def no_autocast(x: Tensor):
    """A context with autocast off on x's device (a no-op context when it is off already: the
    autocast context manager costs a measurable share of a small loss call)."""
    if _autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (gradcheck, reference tests); everything else accumulates in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """sum_n a[r, c, n] * b[r, c, n] -> [R, C] without materialising the product."""
    if a.shape[0] == 1 and a.shape[1] == 1:
        # one row (binary batch Dice, see fused_forward): a BLAS dot, faster than einsum
        return torch.dot(a.reshape(-1), b.reshape(-1)).view(1, 1)
    return torch.einsum("bcn,bcn->bc", a, b)


def masked_rowsum(a: Tensor, v: Tensor | None) -> Tensor:
    """sum_n a[b, c, n] * v[b, n] -> [B, C] (v is a [B, N] mask, or None for all ones)."""
    if v is None:
        return a.sum(-1)
    return torch.einsum("bcn,bn->bc", a, v)


def sum_log_half_to_one(m: Tensor) -> Tensor:
    """sum(log(m)) for m in [0.5, 1], as the sum of the logs of products of 64 elements.

    Exact in exact arithmetic; a product of 64 factors >= 0.5 is >= 5e-20, far from underflow in
    float32, and its rounding error (a few ulp) is the same order as summing per-element logs.
    Saves one transcendental per element, the dominant cost of BCE on CPU.
    """
    flat = m.reshape(-1)
    n = flat.numel()
    main = n - n % 64
    total = flat[:main].view(-1, 64).prod(1).log().sum()
    if main < n:
        total = total + flat[main:].log().sum()
    return total


def power(q: Tensor, e: float) -> Tensor:
    """q ** e as a new tensor, with the cheap kernels for the common exponents."""
    if e == 1.0:
        return q.clone()
    if e == 2.0:
        return q * q
    return q.pow(e)


def chunks(x: Tensor) -> list[tuple[int, int]]:
    """(start, length) slices of the last dim of a [B, C, N] tensor (N >= 1: see check_logits)."""
    B, C, N = x.shape
    if x.device.type != "cpu":
        return [(0, N)]
    step = max(MIN_CHUNK, CPU_CHUNK_ELEMS // max(1, B * C))
    return [(j, min(step, N - j)) for j in range(0, N, step)]


def chunk_scratch(x: Tensor, parts: list[tuple[int, int]]) -> Tensor:
    """A flat buffer big enough for the largest chunk of ``x`` (view it as ``[B, C, n]``)."""
    B, C, _ = x.shape
    return x.new_empty(B * C * max(n for _, n in parts))


def add_up(parts: list[Tensor], reduce=torch.sum) -> Tensor:
    """Reduce a list of same-shaped partial results over the list (sum, or amin/amax)."""
    if len(parts) == 1:
        return parts[0]
    return reduce(torch.stack(parts), 0)


def smoothed(t: Tensor, v: Tensor | None, smoothing: float) -> Tensor:
    """t' = t (1 - s) + s / 2 on valid elements (t is already 0 where ignored)."""
    if smoothing == 0.0:
        return t
    return t * (1.0 - smoothing) + (smoothing / 2.0) * (1.0 if v is None else v)


def sigmoid_region_sums(p: Tensor, t: Tensor, v: Tensor | None, squared: bool):
    """(I, P, T) of sigmoid probabilities ``p`` ([B, C, n]; t is 0 where ignored)."""
    inter = rowdot(p, t)
    if squared:
        pred = rowdot(p, p if v is None else p * v)
    else:
        pred = p.sum(-1) if v is None else rowdot(p, v)
    return inter, pred, t.sum(-1)


def sigmoid_region_grad(out: Tensor, p: Tensor, t: Tensor, v: Tensor | None, gi: Tensor, gp: Tensor,
                        squared: bool) -> Tensor:
    """The region part of the sigmoid gradient, ``p (1 - p) (gI t + gP [2p] [v])``, into ``out``.

    ``gi``, ``gp`` are dL/dI, dL/dP shaped [B, C, 1]. Written with ``out=`` kernels and in-place
    adds (a broadcasting out-of-place addcmul is several times slower on CPU), then one fused
    ``sigmoid_backward`` in place. ``out`` may not alias ``p`` or ``t``.
    """
    if squared:
        torch.mul(p, 2.0 * gp, out=out)
        if v is not None:
            out.mul_(v)
        out.addcmul_(t, gi)
    elif v is None:
        torch.mul(t, gi, out=out).add_(gp)
    else:
        torch.mul(v, gp, out=out).addcmul_(t, gi)
    return torch.ops.aten.sigmoid_backward.grad_input(out, p, grad_input=out)


def bce_from_logits(x: Tensor, t: Tensor) -> Tensor:
    """Per-element BCE ``(1 - t) x - log sigmoid(x)`` without cancellation.

    Summed as ``(1 - t) x - min(x, 0) + log1p(exp(-|x|))``: for hard targets the first two
    pieces cancel exactly or not at all, and the last is small and exact, so the loss keeps its
    relative precision at confident logits (``x - t x - log p`` loses it from ``|x| ~ 10`` on).
    """
    ce = torch.rsub(t, 1.0).mul_(x).sub_(x.clamp_max(0.0))
    return ce.add_(F.softplus(x.abs().neg_()))
