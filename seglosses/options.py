"""The options of the region losses (Dice, Jaccard, Tversky) as one validated object.

``RegionOptions`` is built once -- by the module's constructor, or by a ``functional`` call --
and validated in ``__post_init__``; every later stage (``functional.region_loss``, the sums,
``functional.overlap_loss_from_sums`` and the fused paths) takes it as it is, so no option list
is repeated and no check runs twice.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Literal

from torch import Tensor

from . import _checks

KINDS = ("dice", "jaccard", "tversky")
EMPTY_CLASS_POLICIES = ("penalize_fp", "zero", "exclude")
LOSS_NAMES = {"dice": "DiceLoss", "jaccard": "JaccardLoss", "tversky": "TverskyLoss"}
# Options that only the Tversky formula reads, and their neutral values for Dice and Jaccard.
TVERSKY_ONLY = {"alpha": 0.5, "beta": 0.5, "gamma": 1.0}


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RegionOptions:
    r"""Everything a Dice / Jaccard / Tversky loss needs besides the logits and the target.

    Keyword-only; validated once, at construction (a ``ValueError`` names the bad option).
    ``class_weights`` is stored as a float tensor; everything else as given (bools and floats).

    Args:
        kind: ``"dice" | "jaccard" | "tversky"``: the score formula.
        mode: ``"binary" | "multiclass" | "multilabel"``.
        from_logits: False if the input already holds probabilities.
        smooth: added to the numerator and the denominator (>= 0).
        squared_pred: ``sum(p^2)`` in the denominator (Dice, Jaccard only).
        log_loss: per-class loss ``-log(score)`` instead of ``1 - score``.
        per_image: sums per image instead of over the whole batch per class.
        ignore_index: target value whose pixels are removed from every sum.
        class_weights: one non-negative weight per channel (binary: one value).
        include_background: False drops channel 0 (not allowed in binary mode).
        sync_dist: all-reduce the sums across ``torch.distributed`` processes.
        empty_class: ``"penalize_fp" | "zero" | "exclude"``: what a class absent from the target
            costs (see :func:`seglosses.functional.overlap_loss_from_sums`).
        reduction: ``"mean"`` (the weighted mean) | ``"sum"`` (the weighted sum
            ``sum w_c L_c``) | ``"none"`` (the per-class losses, ``[C]``, or ``[B, C]`` with
            ``per_image``; unweighted, 0 where a class carries no weight).
        alpha, beta, gamma: Tversky's false-positive and false-negative weights (>= 0, not both
            0) and focal exponent (> 0); Dice and Jaccard take the neutral 0.5, 0.5, 1.
    """

    kind: Literal["dice", "jaccard", "tversky"] = "dice"
    mode: str
    from_logits: bool = True
    smooth: float = 0.0
    squared_pred: bool = False
    log_loss: bool = False
    per_image: bool = False
    ignore_index: int | float | None = None
    class_weights: Tensor | None = None
    include_background: bool = True
    sync_dist: bool = False
    empty_class: str = "penalize_fp"
    reduction: str = "mean"
    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 1.0

    @property
    def loss_name(self) -> str:
        """The module's class name, used in error messages."""
        return LOSS_NAMES[self.kind]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"RegionOptions: kind must be one of {KINDS}, got {self.kind!r}")
        name = self.loss_name
        _checks.check_mode(self.mode, name)
        if not _is_number(self.smooth) or self.smooth < 0:
            raise ValueError(f"{name}: smooth must be a float >= 0, got {self.smooth!r}")
        if self.empty_class not in EMPTY_CLASS_POLICIES:
            raise ValueError(
                f"{name}: empty_class must be one of {EMPTY_CLASS_POLICIES}, got {self.empty_class!r}"
            )
        _checks.check_reduction(self.reduction, name)
        if self.reduction != "mean" and self.sync_dist and self.per_image:
            raise ValueError(
                f"{name}: sync_dist with per_image reduces the weighted mean across ranks; "
                f"reduction={self.reduction!r} needs sync_dist=False (or per_image=False)"
            )
        if self.mode == "binary" and not self.include_background:
            raise ValueError(
                f"{name}: include_background=False drops channel 0, but binary mode has only the "
                f"foreground channel; use it with multiclass (or multilabel) mode"
            )
        weights = _checks.as_weight_tensor(self.class_weights, "class_weights", name)
        if self.mode == "binary" and weights is not None and weights.numel() != 1:
            raise ValueError(
                f"{name}: binary mode has one class, so class_weights needs 1 value, "
                f"got {weights.numel()}"
            )
        if self.kind == "tversky":
            self._check_tversky(name)
        else:
            for key, neutral in TVERSKY_ONLY.items():
                if getattr(self, key) != neutral:
                    raise ValueError(
                        f"{name}: {key} is an option of TverskyLoss (the Dice and Jaccard "
                        f"formulas have none), got {key}={getattr(self, key)!r}"
                    )
        if self.kind == "tversky" and self.squared_pred:
            raise ValueError(f"{name}: squared_pred is an option of DiceLoss and JaccardLoss only")
        normalised = {
            "from_logits": bool(self.from_logits),
            "smooth": float(self.smooth),
            "squared_pred": bool(self.squared_pred),
            "log_loss": bool(self.log_loss),
            "per_image": bool(self.per_image),
            "class_weights": weights,
            "include_background": bool(self.include_background),
            "sync_dist": bool(self.sync_dist),
            "alpha": float(self.alpha),
            "beta": float(self.beta),
            "gamma": float(self.gamma),
        }
        for key, value in normalised.items():
            object.__setattr__(self, key, value)  # frozen: set once, here

    def _check_tversky(self, name: str) -> None:
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name}: {key} must be a float >= 0, got {value!r}")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError(f"{name}: alpha and beta cannot both be 0 (the score would be 1 always)")
        if not _is_number(self.gamma) or self.gamma <= 0:
            raise ValueError(f"{name}: gamma must be a float > 0, got {self.gamma!r}")

    def replace(self, **changes) -> RegionOptions:
        """A copy with some options changed, validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls, kind: str, mode: str, options: dict) -> RegionOptions:
        """``RegionOptions(kind=kind, mode=mode, **options)``, with a ``ValueError`` that lists
        the valid names for an unknown option (the functional losses' keyword arguments)."""
        unknown = sorted(set(options) - set(FIELDS) | ({"kind", "mode"} & set(options)))
        if unknown:
            valid = [f for f in FIELDS if f not in ("kind", "mode")]
            if kind != "tversky":
                valid = [f for f in valid if f not in TVERSKY_ONLY]
            raise ValueError(
                f"{LOSS_NAMES.get(kind, 'RegionOptions')}: unknown option(s) {unknown}; "
                f"the options are {valid}"
            )
        return cls(kind=kind, mode=mode, **options)


FIELDS = tuple(f.name for f in dataclasses.fields(RegionOptions))
