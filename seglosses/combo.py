"""CombinedLoss: a weighted sum of named loss terms, with per-term values kept for logging.

    loss = sum_k w_k * term_k(logits, target)

Each term's latest unweighted value is stored, detached, in ``last_values`` so that a training
loop can log it next to the total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor, nn

from . import _fused


class CombinedLoss(nn.Module):
    """Weighted sum of named loss terms.

    Args:
        terms: mapping ``name -> nn.Module``; each module is called as ``term(logits, target)``
            and must return a scalar tensor. Names are arbitrary (they are used for logging).
        weights: optional mapping ``name -> float``; a missing name gets weight 1.0. Every key
            must name a term; weights are finite and ``>= 0`` (``ValueError`` otherwise).
        fused: use the fused fast path when the terms allow it (default True); False always
            calls the terms one by one (the reference composition, e.g. for benchmarks).

    Fast path. A pair of one region term (``DiceLoss``, ``JaccardLoss``, ``TverskyLoss``) and one
    pixel term (``BCELoss`` in binary/multilabel mode, ``CrossEntropyLoss`` in multiclass mode,
    ``FocalLoss`` in the region term's mode) is computed by :mod:`seglosses._fused`: probabilities
    once, one pass of sums, a closed-form backward. Dispatch is on the term types and options,
    not on the names; the value and gradient equal the composed computation (to rounding; 1e-6
    in float64 tests). Unsupported option combinations silently use the composed path; see
    :func:`seglosses._fused.plan` for the list.

    Attributes:
        terms: the terms as an ``nn.ModuleDict``.
        weights: ``dict[str, float]`` with one weight per term.
        last_values: ``dict[str, Tensor]`` -- after each forward, each term's unweighted value
            (a detached scalar tensor). Log these next to the total, e.g.
            ``for k, v in loss.last_values.items(): self.log(f"loss/{k}", v)``.
    """

    def __init__(
        self,
        terms: Mapping[str, nn.Module],
        weights: Mapping[str, float] | None = None,
        fused: bool = True,
    ):
        super().__init__()
        if not isinstance(terms, Mapping) or len(terms) == 0:
            raise ValueError(
                "CombinedLoss needs a non-empty dict of terms, e.g. "
                "{'bce': BCELoss(), 'dice': DiceLoss('binary')}; got "
                f"{terms!r}"
            )
        for name, term in terms.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(
                    f"CombinedLoss term names must be non-empty strings without '.', got {name!r}"
                )
            if not isinstance(term, nn.Module):
                raise ValueError(
                    f"CombinedLoss term {name!r} must be an nn.Module (a loss such as DiceLoss), "
                    f"got {type(term).__name__}"
                )
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(
                f"CombinedLoss weights name unknown terms {unknown}; the terms are {sorted(terms)}"
            )
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise ValueError(f"CombinedLoss weight for {name!r} must be a number, got {w!r}")
            if not math.isfinite(w) or w < 0:
                # a negative weight maximises its term; NaN / inf turn every step's loss into NaN
                raise ValueError(
                    f"CombinedLoss weight for {name!r} must be a finite number >= 0, got {w!r}; "
                    f"use 0 to switch a term off"
                )
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}
        self.fused = bool(fused)
        self.last_values: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return ``sum_k w_k * term_k(logits, target)`` as a scalar tensor."""
        fp = _fused.plan(self.terms, target) if self.fused else None
        if fp is not None:
            region, pixel = _fused.fused_forward(fp, logits, target)
            by_name = {fp.region_name: region, fp.pixel_name: pixel}
            self.last_values = {k: by_name[k].detach() for k in self.terms}
            w = self.weights
            return _weighted(w[fp.region_name], region) + _weighted(w[fp.pixel_name], pixel)
        total: Tensor | None = None
        values: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value = term(logits, target)
            values[name] = value.detach()
            weighted = _weighted(self.weights[name], value)
            total = weighted if total is None else total + weighted
        self.last_values = values
        assert total is not None  # terms is non-empty (checked in __init__)
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def _weighted(weight: float, value: Tensor) -> Tensor:
    # weight 1 (the default) skips a multiply and its backward node: measurable for small inputs
    return value if weight == 1.0 else weight * value
