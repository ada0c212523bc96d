"""Shared helpers for the seglosses unit tests: random logits/targets for each mode."""

from __future__ import annotations

import pytest
import torch

MODES = ("binary", "multiclass", "multilabel")
IGNORE = 255


def make_case(
    mode: str,
    spatial=(6, 7),
    batch: int = 2,
    classes: int = 3,
    ignore: bool = False,
    dtype=torch.float64,
    seed: int = 0,
):
    """Logits ``[B, C, *spatial]`` and a target for ``mode`` in which every class occurs
    (given at least C pixels).

    With ``ignore`` about a fifth of the pixels (away from the class-forcing ones) carry
    ``IGNORE``. Binary uses ``C = 1``.
    """
    g = torch.Generator().manual_seed(seed)
    c = 1 if mode == "binary" else classes
    logits = (2 * torch.randn(batch, c, *spatial, generator=g)).to(dtype)
    if mode == "multiclass":
        target = torch.randint(0, c, (batch, *spatial), generator=g)
        flat = target.view(batch, -1)
        n = min(c, flat.shape[1])
        flat[0, :n] = torch.arange(n)  # every class present (when there are enough pixels)
        if ignore:
            drop = torch.rand(flat.shape, generator=g) < 0.2
            drop[0, :n] = False
            flat[drop] = IGNORE
    else:
        target = (torch.rand(batch, c, *spatial, generator=g) > 0.5).to(dtype)
        flat = target.view(batch, c, -1)
        flat[0, :, 0] = 1.0  # every class present
        if ignore:
            drop = torch.rand(flat.shape, generator=g) < 0.2
            drop[0, :, 0] = False
            flat[drop] = IGNORE
    return logits, target




def check_bf16_autocast(fn, x, t, *, rel: float = 3e-2, abs: float | None = None, **extra) -> None:
    """``fn`` on a 1x1 conv's bfloat16 logits under CPU autocast: a finite float32 value close to the
    float32 one, and finite gradients (``extra``: keywords of the call, e.g. ``skeleton=``)."""
    conv = torch.nn.Conv2d(x.shape[1], x.shape[1], 1)
    ref = fn(conv(x), t, **extra)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        loss = fn(logits, t, **extra)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=rel, abs=abs)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
