"""Target and weight preparation shared by the functional losses and the fused paths.

Every loss turns its inputs into the same few forms: logits upcast for accumulation, binary
targets with their channel dim, float targets zeroed where ignored plus a 0/1 mask, class
indices that are safe to gather with, and per-class weight vectors on the logits' device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks


def upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 (sums and logs of half precision overflow or lose digits)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def channel_view(v: Tensor, ndim: int) -> Tensor:
    """A per-class vector ``[C]`` shaped ``[C, 1, ..., 1]`` to broadcast over ``[B, C, *spatial]``."""
    return v.reshape(-1, *([1] * (ndim - 2)))


def binary_target(logits: Tensor, target: Tensor) -> Tensor:
    """Binary ``[B, *]`` targets get the channel dim back so they line up with ``[B, 1, *]``."""
    return target.unsqueeze(1) if target.ndim == logits.ndim - 1 else target


def dense_target(target: Tensor, ignore_index, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Float target with ignored entries set to 0 (so e.g. 255 never enters a formula) and the
    0/1 float mask of valid entries (None without ignore_index)."""
    t = target.to(dtype)
    if ignore_index is None:
        return t, None
    mask = (target != ignore_index).to(dtype)
    return t * mask, mask


def index_target(target: Tensor, ignore_index) -> tuple[Tensor, Tensor | None]:
    """Long class indices with ignored pixels mapped to class 0 (safe for gather) + bool mask."""
    t = target.long()
    if ignore_index is None:
        return t, None
    valid = t != ignore_index
    return torch.where(valid, t, torch.zeros((), dtype=t.dtype, device=t.device)), valid


def as_vector(w, like: Tensor) -> Tensor | None:
    """Per-class weights (list or tensor, validated) as a tensor on ``like``'s device and dtype."""
    if w is None:
        return None
    if not isinstance(w, Tensor):
        w = _checks.as_weight_tensor(w, "weight", "seglosses")
    return w.to(device=like.device, dtype=like.dtype)
