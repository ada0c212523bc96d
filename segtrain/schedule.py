"""A resumed learning-rate schedule follows this run's config, not the checkpoint's.

Lightning restores an LR scheduler by loading its ``state_dict`` -- every attribute, the
constructor's arguments included. A run resumed to train longer (``trainer.max_epochs=3
resume_allow_changes=[trainer.max_epochs]`` after 2 epochs) therefore kept the cosine schedule's
old ``T_max: 2`` although its config says ``T_max: 3``: the extra epoch ran at ``eta_min`` and the
learning rate then climbed back up, a restart nobody asked for.

:func:`follow_config` runs after the restore (``SegmentationModule.on_train_start``, which Lightning
calls after ``restore_training_state``). It builds the scheduler this run's config describes on a
stand-in optimizer and compares their constructor arguments (``T_max``, ``eta_min``, ``step_size``
...). When one differs:

* a schedule of the step count (cosine, step, one-cycle, lambda ...) is replayed: the new
  scheduler is stepped as often as the restored one was, its state replaces the restored one and
  the optimizer's learning rates are set to the new schedule's at that step -- the rest of the run
  is exactly the schedule computed for the new length;
* ``ReduceLROnPlateau`` (driven by the metric, not the count) takes the new values as they are;
  a changed ``mode`` / ``threshold_mode`` is refused: its best value so far was measured the other way;
* a schedule that cannot be replayed (a one-cycle schedule now shorter than the steps already taken)
  refuses the resume, with the reason.

Only public torch and Lightning API: the scheduler's constructor, ``state_dict`` /
``load_state_dict`` and ``step``; ``Trainer.lr_scheduler_configs`` and ``Trainer.optimizers``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

log = logging.getLogger(__name__)

#: Constructor arguments that are not the schedule's shape.
_NOT_CONFIG = ("self", "optimizer", "last_epoch", "verbose")
#: ReduceLROnPlateau arguments whose change makes its progress so far meaningless.
_PLATEAU_DIRECTION = ("mode", "threshold_mode")


class _StandIn(torch.optim.Optimizer):
    """The real optimizer's parameter groups (momenta, ``initial_lr`` ...) over one placeholder tensor each.

    Each group's learning rate is back at its start (``initial_lr``), as when the run built its
    scheduler; a scheduler built on the stand-in changes the stand-in's rates, not the real ones.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "lr": g.get("initial_lr", g["lr"]),
                   "params": [torch.zeros(1, requires_grad=True)]} for g in optimizer.param_groups]
        super().__init__(groups, dict(optimizer.defaults))

    def step(self, closure: Any = None) -> None:  # noqa: D401 -- nothing to update
        return None


def config_fields(scheduler: Any) -> list[str]:
    """The constructor arguments a scheduler keeps under their own name (``T_max``, ``eta_min`` ...)."""
    try:
        names = inspect.signature(type(scheduler).__init__).parameters
    except (TypeError, ValueError):
        return []
    state = scheduler.state_dict()
    return [n for n in names if n not in _NOT_CONFIG and n in state]


def _differs(a: Any, b: Any) -> bool:
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001 -- tensors, arrays: compare by their text
        return repr(a) != repr(b)


def follow_config(scheduler: Any, factory: Callable[..., Any], optimizer: torch.optim.Optimizer) -> dict[str, tuple[Any, Any]]:
    """Make a restored ``scheduler`` follow the one ``factory`` (this run's config) builds.

    Args:
        scheduler: the scheduler as Lightning restored it from the checkpoint.
        factory: ``optimizer -> scheduler`` from this run's config (the module's ``scheduler_factory``).
        optimizer: the real optimizer ``scheduler`` drives.

    Returns:
        ``{argument: (checkpoint's value, this run's value)}`` of what changed; empty when nothing did.

    Raises:
        ValueError: the schedule cannot follow the new config, saying why and what to do.
    """
    stand_in = _StandIn(optimizer)
    fresh = factory(optimizer=stand_in)
    if type(fresh) is not type(scheduler):
        return {}  # a different class is a different config: check_resume_config refused it already
    old, new = scheduler.state_dict(), fresh.state_dict()
    changed = {k: (old[k], new[k]) for k in config_fields(scheduler) if _differs(old[k], new[k])}
    if not changed:
        return {}
    shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
    name = type(scheduler).__name__
    if isinstance(scheduler, ReduceLROnPlateau):
        if flipped := [k for k in changed if k in _PLATEAU_DIRECTION]:
            raise ValueError(
                f"Cannot resume: {name}'s {', '.join(flipped)} changed ({shown}), so its best value so far was "
                "measured the other way round. Resume with the checkpoint's scheduler settings, or start a new run."
            )
        for key, (_, value) in changed.items():
            setattr(scheduler, key, value)
        log.info("Resumed %s follows this run's config: %s", name, shown)
        return changed
    steps = int(old.get("last_epoch", 0))
    try:
        for _ in range(steps):
            stand_in.step()
            fresh.step()
    except Exception as err:  # noqa: BLE001 -- the scheduler's own reason goes into the message
        raise ValueError(
            f"Cannot resume: the {name} of this run's config ({shown}) cannot continue from the checkpoint's "
            f"{steps} scheduler steps ({err}). Resume with the checkpoint's scheduler settings, or start a new run."
        ) from None
    before = [g["lr"] for g in optimizer.param_groups]
    scheduler.load_state_dict(fresh.state_dict())
    for group, source in zip(optimizer.param_groups, stand_in.param_groups):
        for key in ("lr", "momentum", "betas"):  # what schedulers set (cyclic ones: momentum / betas too)
            if key in source and key in group:
                group[key] = source[key]
    log.info("Resumed %s follows this run's config (%s): learning rate %s -> %s at scheduler step %d",
             name, shown, _lrs(before), _lrs(g["lr"] for g in optimizer.param_groups), steps)
    return changed


def _lrs(values: Any) -> str:
    return ", ".join(f"{float(v):.3g}" for v in values)
