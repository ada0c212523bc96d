"""Deep supervision: one loss over several outputs of decreasing resolution (MONAI, nnU-Net).

    L = sum_k w_k loss(outputs[k], downsample(target, outputs[k].shape[2:]))

``weights`` default to ``1, 1/2, 1/4, ...`` (output 0 is the full resolution), normalised to sum
to 1 as in nnU-Net (MONAI's ``weight_mode="exp"`` leaves them unnormalised and floors them at
1/16; pass ``weights`` to reproduce any scheme; they are normalised too). The target is brought
to each output's size by ``target_downsample``:

- ``"nearest"`` (default): nearest-neighbour sampling (``F.interpolate(mode="nearest-exact")``,
  MONAI's), for every mode; class indices and ``ignore_index`` values stay as they are;
- ``"max"``: adaptive max pooling, binary and multilabel only: a low-resolution pixel is
  foreground where any pixel it covers is (thin structures survive). Values above 1 (an
  ``ignore_index`` of 255) would win the max, so it refuses targets with ``ignore_index``.

A single tensor instead of a list is passed to the loss as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

DOWNSAMPLE = ("nearest", "max")


def _downsample(target: Tensor, size: tuple[int, ...], how: str, channel_dim: bool) -> Tensor:
    full = tuple(target.shape[-len(size):])
    if full == tuple(size):
        return target
    if how == "nearest" and all(a % b == 0 for a, b in zip(full, size)):
        # An integer factor f: nearest-exact samples source pixel floor((i + 0.5) f) = f i + f // 2,
        # a strided view (no float round trip, no interpolation kernel; the same pixels).
        steps = [a // b for a, b in zip(full, size)]
        return target[(..., *(slice(f // 2, None, f) for f in steps))]
    t = target if channel_dim else target.unsqueeze(1)
    if how == "max":
        pool = F.adaptive_max_pool2d if len(size) == 2 else F.adaptive_max_pool3d
        out = pool(t.float(), size)
    else:
        out = F.interpolate(t.float(), size=size, mode="nearest-exact")
    out = out.to(target.dtype)
    return out if channel_dim else out.squeeze(1)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over deep-supervision outputs; see the module docstring.

    Args:
        loss: any seglosses loss (or ``CombinedLoss``) called as ``loss(logits, target)``.
        weights: one non-negative weight per output (normalised), or None for ``2^-k``.
        target_downsample: ``"nearest"`` | ``"max"``.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None, target_downsample: str = "nearest"):
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise ValueError(f"DeepSupervisionLoss: loss must be an nn.Module, got {type(loss).__name__}")
        if target_downsample not in DOWNSAMPLE:
            raise ValueError(f"DeepSupervisionLoss: target_downsample must be one of {DOWNSAMPLE}, got {target_downsample!r}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"DeepSupervisionLoss: weights must be finite, >= 0 and not all 0, got {weights!r}"
                )
        mode = getattr(loss, "mode", None)
        if target_downsample == "max" and mode == "multiclass":
            raise ValueError("DeepSupervisionLoss: target_downsample='max' is for binary/multilabel "
                             "targets; class indices have no order to take a max of: use 'nearest'")
        if target_downsample == "max" and getattr(loss, "ignore_index", None) is not None:
            raise ValueError("DeepSupervisionLoss: target_downsample='max' would let ignore_index values "
                             "win the max; use 'nearest' with ignore_index")
        self.loss, self.weights, self.target_downsample = loss, weights, target_downsample

    def level_weights(self, levels: int) -> list[float]:
        w = self.weights if self.weights is not None else [0.5**k for k in range(levels)]
        if len(w) != levels:
            raise ValueError(f"DeepSupervisionLoss: {len(w)} weights for {levels} outputs; give one per output")
        total = sum(w)
        return [x / total for x in w]

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor, **derived: Tensor | None) -> Tensor:
        """``sum_k w_k loss(outputs[k], target at its size)``.

        ``derived``: derived targets of the full-resolution target (``distance=``, ``skeleton=``,
        :mod:`seglosses.derived`), brought to each output's size by nearest sampling and handed
        to the loss. The outputs are visited from the last to the first, so that the wrapped loss's
        ``last_values`` (a ``CombinedLoss``'s per-term values) are those of the full-resolution output.
        """
        if isinstance(outputs, Tensor):
            return self.loss(outputs, target, **derived)
        if len(outputs) == 0:
            raise ValueError("DeepSupervisionLoss: outputs is an empty list; pass the network's outputs")
        weights = self.level_weights(len(outputs))
        # a class-index target has no channel dim: one dim fewer than the logits
        channel_dim = target.ndim == outputs[0].ndim
        total = None
        for w, out in reversed(list(zip(weights, outputs))):
            if w == 0:
                continue
            size = tuple(out.shape[2:])
            t = _downsample(target, size, self.target_downsample, channel_dim)
            extra = {k: None if v is None else _downsample(v, size, "nearest", v.ndim == out.ndim)
                     for k, v in derived.items()}
            term = w * self.loss(out, t, **extra)
            total = term if total is None else total + term
        return total
