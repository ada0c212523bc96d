"""Input validation shared by every loss: a ``ValueError`` that says what was expected and what came.

Two kinds of checks:

- *structural* checks (mode, shapes, dtypes, weight-vector lengths) look only at metadata, cost
  nothing and always run;
- *value* checks (class indices in range, binary/multilabel targets in [0, 1]) read the data, which
  costs a pass over the target and, on a GPU, a host synchronisation. They run by default and can
  be switched off globally with :func:`set_checks`; they are also skipped while
  ``torch.compile`` traces (``torch.compiler.is_compiling()``), because reading a value back to
  Python would break the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

MODES = ("binary", "multiclass", "multilabel")
REDUCTIONS = ("mean", "sum", "none")

_CHECKS_ENABLED = True


def set_checks(enabled: bool) -> bool:
    """Switch the value checks (label range, targets in [0, 1]) on or off for every loss.

    Returns the previous setting, so a caller can restore it. Structural checks (shapes,
    dtypes, mode) always run.
    """
    global _CHECKS_ENABLED
    previous = _CHECKS_ENABLED
    _CHECKS_ENABLED = bool(enabled)
    return previous


def checks_enabled() -> bool:
    """Whether the value checks run (see :func:`set_checks`)."""
    return _CHECKS_ENABLED


def _value_checks_active() -> bool:
    return _CHECKS_ENABLED and not torch.compiler.is_compiling()


def check_mode(mode: str, loss: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{loss}: mode must be one of {MODES}, got {mode!r}")
    return mode


def check_reduction(reduction: str, loss: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{loss}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_fraction(value: float, name: str, loss: str, high_open: bool = True) -> float:
    """A float in [0, 1) (or [0, 1] with ``high_open=False``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{loss}: {name} must be a float, got {value!r}")
    bad = value < 0 or (value >= 1 if high_open else value > 1)
    if bad:
        interval = "[0, 1)" if high_open else "[0, 1]"
        raise ValueError(f"{loss}: {name} must be in {interval}, got {value!r}")
    return float(value)


def as_weight_tensor(values, name: str, loss: str) -> Tensor | None:
    """A 1-D float tensor of non-negative per-class weights (or None).

    A list is checked in Python, before it becomes a tensor, so building weights inside a
    ``torch.compile`` trace reads no tensor back; a tensor's values are checked unless tracing.
    """
    if values is None:
        return None
    if isinstance(values, Tensor):
        t = values.detach().to(torch.float32) if not values.is_floating_point() else values
        t = t.detach() if t.requires_grad else t  # the same tensor when it can be: buffers share it
        bad = _value_checks_active() and (bool((t < 0).any()) or not bool(torch.isfinite(t).all()))
    else:
        if isinstance(values, (int, float)) or not isinstance(values, Sequence):
            raise ValueError(f"{loss}: {name} must be a list of per-class floats, got {values!r}")
        try:
            floats = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"{loss}: {name} must be a list of numbers, got {values!r}") from None
        bad = any(not math.isfinite(v) or v < 0 for v in floats)
        t = torch.tensor(floats, dtype=torch.float32)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(
            f"{loss}: {name} must be a non-empty 1-D list (one value per class), "
            f"got shape {tuple(t.shape)}"
        )
    if bad:
        raise ValueError(f"{loss}: {name} must be finite and >= 0, got {t.tolist()}")
    return t


def check_weight_length(weight: Tensor | None, num_classes: int, name: str, loss: str) -> None:
    if weight is not None and weight.numel() != num_classes:
        raise ValueError(
            f"{loss}: {name} has {weight.numel()} values but the logits have {num_classes} "
            f"classes (channel dim 1); give one value per class"
        )


def check_logits(logits: Tensor, loss: str) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{loss}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(
            f"{loss}: logits must be a floating-point tensor [B, C, *spatial], got dtype {logits.dtype}"
        )
    if logits.ndim < 2:
        raise ValueError(
            f"{loss}: logits must have shape [B, C, *spatial] (at least 2 dims), "
            f"got shape {tuple(logits.shape)}"
        )
    if logits.numel() == 0:
        # the means and Dice ratios have nothing to average: torch would return NaN or fail in a reshape
        raise ValueError(
            f"{loss}: logits are empty (shape {tuple(logits.shape)}); a loss needs at least one "
            f"image, class and pixel: skip empty batches before calling it"
        )


def _valid_range(target: Tensor, ignore_index: int | float | None) -> tuple[Tensor, Tensor]:
    """Smallest and largest target value, ignored pixels excepted, in one pass (one sync).

    Ignored pixels are replaced by 0 (a valid value in every mode) rather than removed, so no
    data-dependent shape and no copy of the valid pixels.
    """
    target = target.detach()
    if ignore_index is not None:
        target = target.masked_fill(target == ignore_index, 0)
    return torch.aminmax(target)


def _check_target_tensor(target, loss: str) -> None:
    if not isinstance(target, Tensor):
        raise ValueError(f"{loss}: target must be a torch.Tensor, got {type(target).__name__}")


def check_multiclass_target(
    logits: Tensor, target: Tensor, ignore_index: int | None, loss: str
) -> None:
    """Target of class indices ``[B, *spatial]`` for logits ``[B, C, *spatial]``."""
    _check_target_tensor(target, loss)
    num_classes = logits.shape[1]
    expected = (logits.shape[0], *logits.shape[2:])
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"{loss}: multiclass target must hold integer class indices (torch.long) of shape "
            f"{list(expected)}, got dtype {target.dtype}; for one-hot or soft masks use "
            f"mode='multilabel', or convert with target.argmax(1)"
        )
    if tuple(target.shape) != expected:
        hint = ""
        if target.ndim == logits.ndim and target.shape[1] == 1:
            hint = "; squeeze the channel dim with target.squeeze(1)"
        raise ValueError(
            f"{loss}: multiclass target must have shape [B, *spatial] = {list(expected)} for "
            f"logits of shape {list(logits.shape)}, got {list(target.shape)}{hint}"
        )
    if num_classes < 2:
        raise ValueError(
            f"{loss}: multiclass mode needs logits with at least 2 channels (one per class), "
            f"got {num_classes}; use mode='binary' for a single foreground channel"
        )
    if _value_checks_active() and target.numel() > 0:
        lo, hi = _valid_range(target, ignore_index)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= num_classes:
            ign = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
            raise ValueError(
                f"{loss}: class indices must be in [0, {num_classes - 1}]{ign} for "
                f"{num_classes}-channel logits, got values in [{lo}, {hi}]; set ignore_index "
                f"for a void label, or seglosses.set_checks(False) to skip this check"
            )


def dense_range_check_due(target: Tensor) -> bool:
    """Whether the [0, 1] value check applies to this binary / multilabel target."""
    return _value_checks_active() and target.numel() > 0 and target.dtype != torch.bool


def check_dense_range(
    lo: Tensor | float, hi: Tensor | float, mode: str, ignore_index: int | float | None, loss: str
) -> None:
    """Binary / multilabel target values, ignored pixels excepted, must lie in [0, 1]."""
    lo, hi = float(lo), float(hi)
    if not (0.0 <= lo and hi <= 1.0):
        ign = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(
            f"{loss}: {mode} target values must be in [0, 1]{ign}, got values in "
            f"[{lo:g}, {hi:g}]; for class indices use mode='multiclass', or "
            f"seglosses.set_checks(False) to skip this check"
        )


def check_dense_target(
    logits: Tensor,
    target: Tensor,
    mode: str,
    ignore_index: int | float | None,
    loss: str,
    values: bool = True,
) -> None:
    """Binary / multilabel target: same shape as the logits (binary also ``[B, *spatial]``).

    ``values=False`` leaves the [0, 1] range to the caller (:func:`check_dense_range`).
    """
    _check_target_tensor(target, loss)
    if target.is_complex():
        raise ValueError(f"{loss}: {mode} target must be real (float/int/bool), got {target.dtype}")
    shape = tuple(target.shape)
    if mode == "binary":
        if logits.shape[1] != 1:
            raise ValueError(
                f"{loss}: binary mode expects logits with 1 channel [B, 1, *spatial], got "
                f"{list(logits.shape)}; use mode='multiclass' or 'multilabel' for several classes"
            )
        ok = shape == tuple(logits.shape) or shape == (logits.shape[0], *logits.shape[2:])
        expected = f"{list(logits.shape)} or {[logits.shape[0], *logits.shape[2:]]}"
    else:
        ok = shape == tuple(logits.shape)
        expected = f"{list(logits.shape)}"
    if not ok:
        raise ValueError(
            f"{loss}: {mode} target must have shape {expected} for logits of shape "
            f"{list(logits.shape)}, got {list(shape)}"
        )
    if values and dense_range_check_due(target):
        check_dense_range(*_valid_range(target, ignore_index), mode, ignore_index, loss)
