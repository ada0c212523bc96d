"""Loss weights that change over training: a term's weight as a pure function of the epoch.

Kervadec's boundary loss is defined with its weight rising as the region loss's falls, and "start
with Dice, then add X" is a common recipe; a fixed weight cannot say either. A schedule is a
plain, picklable object; ``schedule(t)`` is the weight at training time ``t``, counted in epochs
from 0. ``t`` is the epoch number; a schedule with ``per_step=True`` also takes the fraction of
the epoch done (``t = epoch + batch / batches``), so its weight moves at every step. Nothing else
goes in (no state, no step counter): a resumed run, and every DDP rank, gets exactly the same
weights as an uninterrupted run.

Every schedule holds ``start_epoch`` / ``end_epoch`` where it has a ramp: before ``start_epoch``
the weight is ``start``, after ``end_epoch`` it is ``end``::

    linear:     start + (end - start) * s                     s = (t - start_epoch) / (end_epoch - start_epoch), clipped to [0, 1]
    cosine:     end + (start - end) * (1 + cos(pi s)) / 2     (slow at both ends of the ramp)
    step:       values[i] from epochs[i - 1] on (values[0] before epochs[0])
    constant:   value
    rebalance:  Kervadec et al. (MIDL 2019): the region term's weight a = max(floor, 1 - rate * (t - start_epoch)),
                the boundary term's 1 - a (role=region / role=boundary), from a = 1 at start_epoch

A weight of 0 switches its term off for that time: :class:`~seglosses.CombinedLoss` does not
compute it (nor does the training harness compute the distance maps or skeletons it would need).

In code: ``CombinedLoss(terms, {"dice": Rebalance("region"), "boundary": Rebalance("boundary")})``
and ``loss.set_epoch(epoch)``. In a config, a term's ``weight`` is a number or a mapping with a
``schedule`` key (:func:`parse_weight`)::

    weight: {schedule: linear, start: 0.0, end: 1.0, start_epoch: 10, end_epoch: 50}
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any


def _number(value: Any, name: str, schedule: str, low: float | None = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{schedule} schedule: {name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{schedule} schedule: {name} must be >= {low}, got {value!r} (a weight is never negative)")
    return float(value)


class WeightSchedule:
    """Base of the schedules: ``schedule(t) -> float``, ``t`` in epochs (module doc)."""

    name = "schedule"
    per_step = False

    def at(self, t: float) -> float:  # pragma: no cover - every schedule defines it
        """The weight at ``t`` (already floored to the epoch unless ``per_step``)."""
        raise NotImplementedError

    def __call__(self, t: float) -> float:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"{self.name} schedule: the time is a finite number of epochs >= 0, got {t!r}")
        # An epoch-wise schedule reads the epoch number only, whatever fraction of it has run.
        return self.at(float(t) if self.per_step else float(math.floor(t)))

    def max_between(self, t0: float, t1: float) -> float:
        """The largest weight on ``[t0, t1]`` (every schedule here is monotone between its knots)."""
        knots = [t for t in self.knots() if t0 < t < t1]
        return max(self(t) for t in [t0, t1, *knots])

    def knots(self) -> list[float]:
        return []

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items(), key=lambda kv: kv[0]))))


class Constant(WeightSchedule):
    """The same weight at every epoch (what a plain number means)."""

    name = "constant"

    def __init__(self, value: float = 1.0) -> None:
        self.value = _number(value, "value", self.name)

    def at(self, t: float) -> float:
        return self.value


class _Ramp(WeightSchedule):
    def __init__(self, start: float = 0.0, end: float = 1.0, start_epoch: float = 0, end_epoch: float = 10,
                 per_step: bool = False) -> None:
        self.start = _number(start, "start", self.name)
        self.end = _number(end, "end", self.name)
        self.start_epoch = _number(start_epoch, "start_epoch", self.name)
        self.end_epoch = _number(end_epoch, "end_epoch", self.name)
        if self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"{self.name} schedule: end_epoch ({end_epoch}) must be after start_epoch ({start_epoch}); "
                "for a jump from one weight to another at one epoch use schedule: step"
            )
        if not isinstance(per_step, bool):
            raise ValueError(f"{self.name} schedule: per_step must be true or false, got {per_step!r}")
        self.per_step = per_step

    def progress(self, t: float) -> float:
        return min(1.0, max(0.0, (t - self.start_epoch) / (self.end_epoch - self.start_epoch)))

    def knots(self) -> list[float]:
        return [self.start_epoch, self.end_epoch]


class Linear(_Ramp):
    """``start`` until ``start_epoch``, a straight line to ``end`` at ``end_epoch``, then ``end``."""

    name = "linear"

    def at(self, t: float) -> float:
        return self.start + (self.end - self.start) * self.progress(t)


class Cosine(_Ramp):
    """As :class:`Linear`, along a half cosine: slow near both ends of the ramp."""

    name = "cosine"

    def at(self, t: float) -> float:
        return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * self.progress(t))) / 2.0


class Step(WeightSchedule):
    """``values[0]`` before ``epochs[0]``, ``values[i]`` from ``epochs[i - 1]`` on.

    ``Step([0, 1], [20])``: the term is off for epochs 0..19 and has weight 1 from epoch 20.
    """

    name = "step"

    def __init__(self, values: Sequence[float] = (0.0, 1.0), epochs: Sequence[float] = (10,)) -> None:
        if isinstance(values, (str, bytes)) or isinstance(epochs, (str, bytes)):
            raise ValueError("step schedule: values and epochs are lists of numbers")
        self.values = [_number(v, "values[]", self.name) for v in values]
        self.epochs = [_number(e, "epochs[]", self.name) for e in epochs]
        if len(self.values) != len(self.epochs) + 1:
            raise ValueError(
                f"step schedule: values needs one more entry than epochs (the weight before the first epoch listed), "
                f"got {len(self.values)} values and {len(self.epochs)} epochs, e.g. values: [0, 1], epochs: [20]"
            )
        if any(b <= a for a, b in zip(self.epochs, self.epochs[1:])):
            raise ValueError(f"step schedule: epochs must increase, got {self.epochs}")

    def at(self, t: float) -> float:
        return self.values[sum(1 for e in self.epochs if t >= e)]

    def knots(self) -> list[float]:
        return list(self.epochs)


class Rebalance(WeightSchedule):
    """Kervadec et al.'s schedule: the region weight falls by ``rate`` per epoch to ``floor``, the boundary's rises.

    ``a(t) = max(floor, 1 - rate * (t - start_epoch))`` (1 before ``start_epoch``); the term with
    ``role="region"`` gets ``a``, the one with ``role="boundary"`` gets ``1 - a``. The paper's values:
    ``rate=0.01``, ``floor=0.01`` (``loss=dice_boundary``).
    """

    name = "rebalance"
    ROLES = ("region", "boundary")

    def __init__(self, role: str = "region", rate: float = 0.01, floor: float = 0.01, start_epoch: float = 0,
                 per_step: bool = False) -> None:
        if role not in self.ROLES:
            raise ValueError(f"rebalance schedule: role must be one of {self.ROLES}, got {role!r} "
                             "(the region term falls, the boundary term rises)")
        self.role = role
        self.rate = _number(rate, "rate", self.name)
        self.floor = _number(floor, "floor", self.name)
        if self.rate <= 0 or self.floor > 1:
            raise ValueError(f"rebalance schedule: rate must be > 0 and floor in [0, 1], got rate={rate}, floor={floor}")
        self.start_epoch = _number(start_epoch, "start_epoch", self.name)
        if not isinstance(per_step, bool):
            raise ValueError(f"rebalance schedule: per_step must be true or false, got {per_step!r}")
        self.per_step = per_step

    def at(self, t: float) -> float:
        region = max(self.floor, 1.0 - self.rate * max(0.0, t - self.start_epoch))
        return region if self.role == "region" else 1.0 - region

    def knots(self) -> list[float]:
        return [self.start_epoch, self.start_epoch + (1.0 - self.floor) / self.rate]


#: ``schedule:`` names of a config and their classes.
SCHEDULES: dict[str, type[WeightSchedule]] = {
    cls.name: cls for cls in (Constant, Linear, Cosine, Step, Rebalance)
}


def parse_weight(spec: Any, term: str = "term") -> float | WeightSchedule:
    """A term's ``weight`` from a config: a number ``>= 0``, a schedule, or a mapping ``{schedule: name, ...}``.

    Raises:
        ValueError: naming ``term``: a negative or non-finite number, an unknown schedule name or
            option (listing the valid ones), or a bad option value.
    """
    if isinstance(spec, WeightSchedule):
        return spec
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("schedule", None)
        if name not in SCHEDULES:
            raise ValueError(
                f"loss term {term!r}: weight schedule {name!r} is not one of {sorted(SCHEDULES)}; write e.g. "
                f"weight: {{schedule: linear, start: 0.0, end: 1.0, start_epoch: 0, end_epoch: 20}}"
            )
        cls = SCHEDULES[name]
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"loss term {term!r}: the {name} schedule has no option(s) {unknown}; its options: {allowed}")
        try:
            return cls(**options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"loss term {term!r}: {err}") from None
    if isinstance(spec, bool) or not isinstance(spec, (int, float)) or not math.isfinite(spec) or spec < 0:
        raise ValueError(
            f"loss term {term!r}: weight must be a finite number >= 0 or a schedule ({{schedule: linear, ...}}), "
            f"got {spec!r}; use 0 to switch a term off"
        )
    return float(spec)
