"""Start-up type checks of the keys users override most, each error naming the key and the type it needs.

Hydra turns ``trainer.max_epochs=abc`` into the string ``'abc'`` without complaint; left alone it
reaches Lightning's fit loop as a bare ``AssertionError`` after the network and the data were
built, and ``data.batch_size=abc`` surfaces as "invalid literal for int()" with no key in sight.
:func:`check_types` looks at every key of :data:`RULES` present in the composed config and
reports all the bad ones at once, before anything is built. The loss weights are checked by
``segtrain.losses.check_loss_config`` (same style: ``loss.terms.<name>.weight must be a number``).

:func:`check_data_keys` adds the checks that span keys: a validation set for a monitored
``val/`` metric, one ``ignore_index`` for data, losses and metrics.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: Accepted kinds: a predicate and the words the message uses.
KINDS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list": (lambda v: isinstance(v, Sequence) and not isinstance(v, str), "a list"),
    "null": (lambda v: v is None, "null"),
}

#: Dotted key -> ``(kinds, lowest allowed value or None)``. Keys a config does not have are skipped.
RULES: dict[str, tuple[tuple[str, ...], float | None]] = {
    "seed": (("int",), None),
    "ignore_index": (("int", "null"), None),
    "test_after_fit": (("bool",), None),
    "resume_allow_changes": (("list", "null"), None),
    "init_from": (("str", "null"), None),  # segtrain/init_from.py
    "init_from_exclude": (("str", "null"), None),
    # trainer
    "trainer.max_epochs": (("int", "null"), -1),
    "trainer.min_epochs": (("int", "null"), 0),
    "trainer.max_steps": (("int",), -1),
    "trainer.num_nodes": (("int",), 1),
    "trainer.devices": (("int", "str", "list"), None),
    "trainer.precision": (("int", "str"), None),
    "trainer.log_every_n_steps": (("int", "null"), 1),
    "trainer.check_val_every_n_epoch": (("int", "null"), 1),
    "trainer.val_check_interval": (("int", "number", "null"), 0),
    "trainer.limit_train_batches": (("int", "number", "null"), 0),
    "trainer.limit_val_batches": (("int", "number", "null"), 0),
    "trainer.limit_test_batches": (("int", "number", "null"), 0),
    "trainer.overfit_batches": (("int", "number"), 0),
    "trainer.accumulate_grad_batches": (("int",), 1),
    "trainer.gradient_clip_val": (("number", "null"), 0),
    "trainer.deterministic": (("bool", "str", "null"), None),
    "trainer.benchmark": (("bool", "null"), None),
    "trainer.fast_dev_run": (("bool", "int"), 0),
    "trainer.enable_model_summary": (("bool", "null"), None),
    "trainer.enable_progress_bar": (("bool", "null"), None),
    "trainer.enable_checkpointing": (("bool", "null"), None),
    # data
    "data.batch_size": (("int",), 1),
    "data.num_workers": (("int",), 0),
    "data.image_size": (("int", "list", "null"), 1),  # null: data=folder at native resolution
    # an int for images (its multiple of 32 is checked by datamodules/crops.py); [D, H, W] for data=nnunet
    "data.crop_size": (("int", "list", "null"), 1),
    "data.foreground_fraction": (("number",), 0),
    "data.pad": (("bool",), None),
    "data.val_fraction": (("number",), 0),
    "data.num_samples": (("int",), 1),
    "data.num_test": (("int",), 0),
    "data.max_shapes": (("int",), 1),
    "data.seed": (("int",), None),
    "data.noise_std": (("number",), 0),
    "data.min_contrast": (("number",), 0),
    "data.drop_last": (("bool",), None),
    "data.validate": (("bool",), None),
    "data.normalize": (("str",), None),
    "data.normalize_percentiles": (("list",), None),
    "data.channels": (("list", "null"), 0),
    "data.images_dir": (("str", "null"), None),
    "data.masks_dir": (("str", "null"), None),
    "data.folds": (("int", "null"), 2),  # cross-validation (datamodules/folds.py)
    "data.fold": (("int", "null"), 0),
    "data.split_file": (("str", "null"), None),
    "data.group_pattern": (("str", "null"), None),
    "model.in_channels": (("int", "null"), 1),
    "data.pin_memory": (("bool", "null"), None),
    "data.persistent_workers": (("bool", "null"), None),
    # optimizer
    "optimizer.lr": (("number",), 0),
    "optimizer.weight_decay": (("number",), 0),
    "optimizer.momentum": (("number",), 0),
    "optimizer.nesterov": (("bool",), None),
    "optimizer.betas": (("list",), None),
    # the end-of-fit evaluation (segtrain/final_evaluation.py)
    "evaluation.enabled": (("bool",), None),
    "evaluation.tta": (("str", "null"), None),
    "evaluation.validation_tta": (("bool",), None),
    "evaluation.tolerance": (("number",), 0),
    "evaluation.topology": (("bool",), None),
    "evaluation.postprocessing": (("bool",), None),
}

_MISSING = object()


def _lookup(config: Any, dotted: str) -> Any:
    """The value at ``dotted``, or ``_MISSING``; a ``DictConfig``'s interpolations are resolved one key at a time.

    (A key whose interpolation cannot be resolved here -- ``${hydra:...}`` outside a Hydra run -- counts as missing.)
    """
    if isinstance(config, DictConfig):
        value = OmegaConf.select(config, dotted, default=_MISSING, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def type_problem(key: str, value: Any, kinds: Sequence[str], lowest: float | None) -> str | None:
    """What is wrong with ``key=value`` under a rule, as one phrase for the message; None if fine."""
    if not any(KINDS[k][0](value) for k in kinds):
        wanted = " or ".join(KINDS[k][1] for k in kinds)
        return f"{key}={value!r} must be {wanted}"
    if lowest is not None and KINDS["number"][0](value) and value < lowest:
        return f"{key}={value!r} must be >= {lowest:g}"
    if lowest is not None and KINDS["list"][0](value) and any(not KINDS["int"][0](v) or v < lowest for v in value):
        return f"{key}={list(value)!r} must hold integers >= {lowest:g}"
    return None


def check_types(config: Any) -> None:
    """Check the :data:`RULES` keys of the composed ``DictConfig`` (or the resolved config as a plain dict).

    Raises:
        ValueError: one line per bad key: the key, the value given and the type it needs.
    """
    problems = []
    for key, (kinds, lowest) in RULES.items():
        value = _lookup(config, key)
        if value is not _MISSING and (problem := type_problem(key, value, kinds, lowest)):
            problems.append(problem)
    if problems:
        raise ValueError(
            "Bad value(s) on the command line or in the config: " + "; ".join(problems)
            + ". Give each key a value of that type (e.g. trainer.max_epochs=20, data.batch_size=8)."
        )


def _monitors_validation(config: Any) -> bool:
    callbacks = _lookup(config, "callbacks")
    names = list(callbacks) if isinstance(callbacks, Mapping) else []
    watching = any(_lookup(config, f"callbacks.{name}.monitor") not in (None, _MISSING) for name in names)
    return watching and str(_lookup(config, "monitor")).startswith("val/")


def _has_val_folder(config: Any) -> bool:
    root = _lookup(config, "data.root")
    return isinstance(root, str) and os.path.isdir(os.path.join(root, "val"))


def check_data_keys(config: Any) -> None:
    """Checks that span several keys: a validation set for the monitor; one ignore_index.

    Args:
        config: the composed ``DictConfig`` or the resolved config as a plain dict.

    Raises:
        ValueError: naming the keys and the fix.
    """
    limit_val = _lookup(config, "trainer.limit_val_batches")
    if (
        _lookup(config, "data.val_fraction") == 0
        and _monitors_validation(config)
        and limit_val != 0
        and not _has_val_folder(config)
    ):
        raise ValueError(
            f"data.val_fraction=0 leaves no validation set, but monitor={_lookup(config, 'monitor')} (best "
            "checkpoint, early stopping) is a validation metric. Hold out some data (data.val_fraction=0.2, "
            "or a root/train + root/val layout with data=folder), or monitor nothing: "
            "callbacks.early_stopping=null callbacks.model_checkpoint.monitor=null."
        )
    # data.ignore_index is the files' "not labelled" value; the top-level one is what losses and metrics
    # skip. They may differ only one way: the losses also skip the padding's reserved value
    # (segtrain/data_plan.py) where the files have none.
    data_ignore, ignore = _lookup(config, "data.ignore_index"), _lookup(config, "ignore_index")
    if data_ignore not in (_MISSING, None) and data_ignore != (None if ignore is _MISSING else ignore):
        raise ValueError(
            f"data.ignore_index={data_ignore!r} differs from the top-level ignore_index="
            f"{None if ignore is _MISSING else ignore!r}, which the losses and metrics read: the loss would see "
            f"the 'unlabelled' value as a class. Set the top-level key instead (ignore_index={data_ignore!r}); "
            "data.ignore_index follows it."
        )
