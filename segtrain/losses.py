"""Build the training loss from the ``loss`` config: always a ``seglosses.CombinedLoss``.

A loss config is a dict of named terms (``conf/loss/terms/<term>.yaml``, selected by
``conf/loss/<combo>.yaml``)::

    loss:
      terms:
        bce:  {_target_: seglosses.BCELoss, weight: 1.0, pos_weight: null, ...}
        dice: {_target_: seglosses.DiceLoss, weight: 1.0, mode: ${task}, smooth: 0.0, ...}

and the built loss is

    loss = sum_k weight_k * term_k(logits, target)

Each term's ``weight`` is its weight in that sum (popped here): a number, or a schedule over the
epochs (``weight: {schedule: linear, start: 0, end: 1, start_epoch: 0, end_epoch: 20}``,
:mod:`seglosses.schedules`); every other key goes to the term's constructor. Because ``weight`` is taken, a loss whose own constructor has a ``weight``
argument (``CrossEntropyLoss``'s per-class weights) receives it from the key ``class_weights``.
Even a single term becomes a ``CombinedLoss`` so that per-term logging (``last_values``) is the
same for every loss.

``loss.cpu_compile`` (``conf/train.yaml``) is seglosses' switch for its compiled CPU kernels
(``seglosses.set_cpu_compile``): ``true`` lets large binary BCE+Dice losses on CPU run kernels
that ``torch.compile`` builds on the first such call (a stall of a C++ compilation); ``false``
keeps the eager kernels; ``null`` leaves seglosses' default (off unless the environment
variable ``SEGLOSSES_CPU_COMPILE=1``).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from seglosses.schedules import parse_weight

from .task import SUGGESTED_LOSS, check_term_serves_task, loss_mode, validate_task
from .utils import build


def _plain(cfg: Any) -> Any:
    """A DictConfig/ListConfig as plain containers (interpolations resolved); anything else as is."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _terms(loss_cfg: Any) -> dict[str, dict[str, Any]]:
    """``loss.terms`` as ``{name: plain dict}``, with clear errors for a malformed config."""
    loss_cfg = _plain(loss_cfg)
    terms = loss_cfg.get("terms") if isinstance(loss_cfg, Mapping) else None
    if not isinstance(terms, Mapping) or not terms:
        raise ValueError(
            "the loss config needs a non-empty `terms` dict, e.g. loss=bce_dice or 'loss/terms=[dice,focal]'; "
            f"got loss={loss_cfg!r}"
        )
    out = {}
    for name, term in terms.items():
        if not isinstance(term, Mapping) or "_target_" not in term:
            raise ValueError(
                f"loss term {name!r} has no _target_ (got {term!r}): a term that only sets options is "
                f"not selected. Add it to the term list, e.g. 'loss/terms=[...,{name}]', or drop the override "
                f"of loss.terms.{name}"
            )
        out[str(name)] = dict(term)
    return out


def _cpu_compile(loss_cfg: Any) -> bool | None:
    """``loss.cpu_compile``: True, False or None (unset: leave seglosses' own default)."""
    loss_cfg = _plain(loss_cfg)
    value = loss_cfg.get("cpu_compile") if isinstance(loss_cfg, Mapping) else None
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"loss.cpu_compile must be true, false or null, got {value!r}")
    return value


def check_loss_config(loss_cfg: Any, task: str, num_classes: int) -> None:
    """Validate the loss config against the task without building anything.

    Raises ``ValueError`` naming the term when: a term has no ``_target_``; its class cannot be
    imported; its class cannot serve ``task`` (BCE with multiclass, CE with binary/multilabel);
    its ``mode`` is not the task; its ``weight`` is neither a number >= 0 nor a valid schedule; all
    weights are the constant 0.
    Also when ``loss.cpu_compile`` is not true, false or null.
    """
    validate_task(task, num_classes)
    _cpu_compile(loss_cfg)
    terms = _terms(loss_cfg)
    total = 0.0
    for name, term in terms.items():
        try:
            klass = get_class(term["_target_"])
        except Exception as err:  # hydra wraps ImportError/AttributeError in its own error types
            raise ValueError(
                f"loss term {name!r}: cannot import _target_={term['_target_']!r} ({err}); "
                "use a class such as seglosses.DiceLoss"
            ) from None
        check_term_serves_task(name, klass, task)
        mode = term.get("mode")
        if mode is not None and mode != loss_mode(task):
            raise ValueError(
                f"loss term {name!r} has mode={mode!r} but task={task}; leave the mode to the task "
                f"(mode: ${{task}} in conf/loss/terms/{name}.yaml) or use loss={SUGGESTED_LOSS[task]}"
            )
        weight = term.get("weight", 1.0)
        if isinstance(weight, Mapping):
            parse_weight(weight, name)  # a schedule: its options checked now
            total += 1.0
            continue
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or weight < 0 or weight != weight:
            raise ValueError(f"loss.terms.{name}.weight must be a number >= 0 or a schedule "
                             f"({{schedule: linear, ...}}, docs/losses.md), got {weight!r}")
        total += float(weight)
    if total <= 0:
        raise ValueError(f"all loss weights are 0 ({sorted(terms)}): at least one term needs weight > 0")


def build_loss(loss_cfg: Any, task: str, num_classes: int):
    """Build ``seglosses.CombinedLoss(terms, weights)`` from the ``loss`` config.

    Args:
        loss_cfg: the ``loss`` node (DictConfig or dict) with ``terms: {name: {_target_, weight, ...}}``.
        task: the run's task (checked against each term, see :func:`check_loss_config`).
        num_classes: the run's class count.

    Returns:
        a ``CombinedLoss``; ``loss.last_values[name]`` holds each term's latest unweighted value.
        ``loss.cpu_compile``, when set, is applied with ``seglosses.set_cpu_compile`` (a
        process-wide switch).
    """
    import seglosses
    from seglosses import CombinedLoss

    check_loss_config(loss_cfg, task, num_classes)
    cpu_compile = _cpu_compile(loss_cfg)
    if cpu_compile is not None:
        seglosses.set_cpu_compile(cpu_compile)
    modules, weights = {}, {}
    for name, term in _terms(loss_cfg).items():
        weights[name] = parse_weight(term.pop("weight", 1.0), name)
        klass = get_class(term["_target_"])
        params = inspect.signature(klass).parameters
        if "class_weights" in term and "class_weights" not in params and "weight" in params:
            term["weight"] = term.pop("class_weights")
        unknown = sorted(k for k in term if not k.startswith("_") and k not in params)
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ValueError(
                f"loss term {name!r} ({klass.__name__}) has unknown option(s) {unknown}; "
                f"its options are {sorted(k for k in params if k != 'self')} (+ weight)"
            )
        modules[name] = build(term)
    return CombinedLoss(modules, weights)
