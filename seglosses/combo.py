"""CombinedLoss: a weighted sum of named loss terms, with per-term values kept for logging.

    loss = sum_k w_k(t) * term_k(logits, target)

Each term's latest unweighted value is stored, detached, in ``last_values`` so that a training
loop can log it next to the total. A weight is a number or a schedule over the epochs
(:mod:`seglosses.schedules`); a term whose weight is 0 is not computed. Terms that need more
than the mask (a distance map, a skeleton: :mod:`seglosses.derived`) receive it from the
keywords of the call: ``loss(logits, target, distance=maps)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor, nn

from . import _fused
from .schedules import WeightSchedule, parse_weight


class CombinedLoss(nn.Module):
    """Weighted sum of named loss terms.

    Args:
        terms: mapping ``name -> nn.Module``; each module is called as ``term(logits, target)``
            and must return a scalar tensor. Names are arbitrary (they are used for logging).
        weights: optional mapping ``name -> float`` or ``name -> WeightSchedule`` (a weight over
            the epochs, :mod:`seglosses.schedules`; a ``{"schedule": ...}`` mapping is parsed); a
            missing name gets weight 1.0. Every key must name a term; weights are finite and
            ``>= 0`` (``ValueError`` otherwise). A term whose current weight is 0 is skipped: not
            computed, and absent from ``last_values``.
        fused: use the fused fast path when the terms allow it (default True); False always
            calls the terms one by one (the reference composition, e.g. for benchmarks).

    Fast path. A pair of one region term (``DiceLoss``, ``JaccardLoss``, ``TverskyLoss``) and one
    pixel term (``BCELoss`` in binary/multilabel mode, ``CrossEntropyLoss`` in multiclass mode,
    ``FocalLoss`` in the region term's mode) is computed by :mod:`seglosses._fused`: probabilities
    once, one pass of sums, a closed-form backward. Dispatch is on the term types and options,
    not on the names; the value and gradient equal the composed computation (to rounding; 1e-6
    in float64 tests). Unsupported option combinations silently use the composed path; see
    :func:`seglosses._fused.plan` for the list.

    Derived targets. A term whose class lists ``derived_targets`` (``BoundaryLoss``: ``("distance",)``,
    ``SkeletonRecallLoss``: ``("skeleton",)``) gets those keywords of the call, when given; called
    without them it computes them from the target (slower, see :mod:`seglosses.derived`).

    Attributes:
        terms: the terms as an ``nn.ModuleDict``.
        weights: ``dict[str, float]`` with each term's weight at the current time (:meth:`set_epoch`).
        schedules: ``dict[str, WeightSchedule]``: the terms whose weight is a schedule.
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
        parsed: dict[str, float | WeightSchedule] = {}
        for name, w in weights.items():
            if isinstance(w, (WeightSchedule, Mapping)):
                parsed[name] = parse_weight(w, name)
                continue
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise ValueError(f"CombinedLoss weight for {name!r} must be a number or a schedule, got {w!r}")
            if not math.isfinite(w) or w < 0:
                # a negative weight maximises its term; NaN / inf turn every step's loss into NaN
                raise ValueError(
                    f"CombinedLoss weight for {name!r} must be a finite number >= 0, got {w!r}; "
                    f"use 0 to switch a term off"
                )
            parsed[name] = float(w)
        self.terms = nn.ModuleDict(dict(terms))
        self.schedules = {k: w for k, w in parsed.items() if isinstance(w, WeightSchedule)}
        self._fixed = {name: float(parsed.get(name, 1.0)) for name in terms if name not in self.schedules}
        self.weights: dict[str, float] = {}
        self.set_epoch(0)
        self.fused = bool(fused)
        self.last_values: dict[str, Tensor] = {}

    def set_epoch(self, epoch: float) -> dict[str, float]:
        """Set the scheduled weights to their values at ``epoch`` (a fraction for per-step schedules).

        A pure function of ``epoch``: a resumed run and every DDP rank get the same weights.
        Returns the weights (also in :attr:`weights`).
        """
        self.weights = {name: self._fixed[name] if name in self._fixed else self.schedules[name](epoch)
                        for name in self.terms}
        return self.weights

    @property
    def per_step(self) -> bool:
        """Whether a schedule changes within an epoch (``set_epoch`` then needs the fraction done)."""
        return any(s.per_step for s in self.schedules.values())

    def derived_targets(self, epoch: float | None = None) -> tuple[str, ...]:
        """The derived targets the terms need (sorted names): all terms, or those with a weight > 0
        somewhere in epoch ``[epoch, epoch + 1)`` -- what a data pipeline must compute then."""
        names: set[str] = set()
        for name, term in self.terms.items():
            needs = getattr(term, "derived_targets", ())
            if not needs:
                continue
            if epoch is not None:
                if name in self._fixed:
                    active = self._fixed[name] > 0
                else:
                    active = self.schedules[name].max_between(float(epoch), float(epoch) + 1 - 1e-9) > 0
                if not active:
                    continue
            names.update(needs)
        return tuple(sorted(names))

    def forward(self, logits: Tensor, target: Tensor, **derived: Tensor | None) -> Tensor:
        """Return ``sum_k w_k * term_k(logits, target)`` as a scalar tensor, skipping weight-0 terms.

        ``derived``: derived targets by name (``distance=``, ``skeleton=``), each handed to the terms
        that list it in ``derived_targets``; ``None`` or absent: such a term computes it itself.
        """
        w = self.weights
        active = self.terms if all(w[k] > 0 for k in self.terms) else {k: t for k, t in self.terms.items() if w[k] > 0}
        fp = _fused.plan(active, target) if self.fused and active else None
        if fp is not None:
            region, pixel = _fused.fused_forward(fp, logits, target)
            by_name = {fp.region_name: region, fp.pixel_name: pixel}
            self.last_values = {k: by_name[k].detach() for k in active}
            return _weighted(w[fp.region_name], region) + _weighted(w[fp.pixel_name], pixel)
        total: Tensor | None = None
        values: dict[str, Tensor] = {}
        for name, term in active.items():
            needs = getattr(term, "derived_targets", ())
            extra = {k: derived[k] for k in needs if derived.get(k) is not None}
            value = term(logits, target, **extra)
            values[name] = value.detach()
            weighted = _weighted(w[name], value)
            total = weighted if total is None else total + weighted
        self.last_values = values
        if total is None:
            # every weight is 0 at this time (a schedule that starts later): a zero that keeps the graph
            return logits.sum() * 0.0
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}" + (f", schedules={self.schedules}" if self.schedules else "")


def _weighted(weight: float, value: Tensor) -> Tensor:
    # weight 1 (the default) skips a multiply and its backward node: measurable for small inputs
    return value if weight == 1.0 else weight * value
