"""Before anything trains: fingerprint the data, fill in what the config left to it, check the rest.

For ``data=folder`` (and its presets) :func:`plan_data` lists the splits (datamodules/layout.py),
computes the dataset fingerprint (``fingerprint/``, cached under ``paths.cache_dir``), and then,
on the composed config, in place:

* ``task: auto`` / ``num_classes: auto`` become the values the masks hold; ``data.class_names``
  comes from a ``labels.txt`` / ``labels.json`` beside the data when the config names none;
* ``model.in_channels: null`` becomes the images' channel count (after ``data.channels``); an
  explicit value that contradicts the data is an error naming both;
* when training crops will be padded and the files have no ``ignore_index``, the losses and
  metrics get the reserved value the padding carries (:func:`datamodules.masks.reserved_pad_value`)
  as their ``ignore_index``, while ``data.ignore_index`` stays the files' (none): a folder of
  mixed-size 0/255 masks trains with no flag, and its 255 stays the foreground.

Every mismatch between config and data is one start-up error (fingerprint/checks.py) before a
network is built. The fingerprint is written to ``<run>/fingerprint.json`` and summarised in a few
console lines; with cross-validation folds (``data.folds`` / ``data.split_file``) one line names the
fold and its image counts, and the folds are copied to ``<run>/splits.json``. Volumes in nnU-Net's
layout (``data=nnunet``) are planned by segtrain/volume_plan.py. Other datamodules (synthetic
shapes: 8-bit RGB) only get ``in_channels`` set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.crops import effective_crop, needs_padding
from datamodules.folds import SPLITS_FILE, write_splits
from datamodules.layout import Splits, discover_splits
from datamodules.masks import reserved_pad_value


log = logging.getLogger(__name__)

AUTO = "auto"
#: Class-name files looked for in data.root (one name per line / a JSON list or {name: value}).
LABEL_FILES = ("labels.txt", "labels.json")


def is_folder_data(data: Any) -> bool:
    """Whether the data config builds the folder datamodule (data=folder, data=cityscapes ...)."""
    return str((data or {}).get("_target_", "")).endswith("FolderDataModule")


def leaves_to_data(cfg: DictConfig) -> bool:
    """Whether ``task`` or ``num_classes`` is ``auto`` (read from the masks)."""
    return cfg.get("task") == AUTO or cfg.get("num_classes") == AUTO


def set_key(cfg: DictConfig, key: str, value: Any) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)


def _labels_file(root: Path) -> Path | None:
    return next((root / name for name in LABEL_FILES if (root / name).is_file()), None)


def follow_in_channels(cfg: DictConfig, channels: int, source: str = "the images") -> None:
    """``model.in_channels``: follows the data when unset; an explicit other value is an error naming both
    (``source``: what gives the channels, for the message)."""
    given = cfg.model.get("in_channels") if "model" in cfg else None
    if given is None:
        set_key(cfg, "model.in_channels", channels)
    elif int(given) != channels:
        raise ValueError(
            f"model.in_channels={given}, but {source} give the network {channels} channel(s): set "
            f"model.in_channels={channels}, or leave it unset (null) to follow the data."
        )


def plan_data(cfg: DictConfig, *, log_summary: bool = True) -> dict[str, Any] | None:
    """Fingerprint and check the data of ``cfg`` and resolve its data-dependent keys (module docstring).

    Returns:
        The fingerprint (a JSON-able dict) for the folder and volume datamodules, ``None`` for other data.

    Raises:
        ValueError / FileNotFoundError: a layout, file or config-versus-data problem, naming the
            files and the fix.
    """
    from .volume_plan import is_volume_data, plan_volumes  # here: volume_plan builds on this module

    data = cfg.get("data")
    if is_volume_data(data):  # data=nnunet: dataset.json, the cases and the volume fingerprint
        return plan_volumes(cfg, log_summary=log_summary)
    if not is_folder_data(data):
        if leaves_to_data(cfg):
            raise ValueError(
                f"task={cfg.task} num_classes={cfg.num_classes}: 'auto' reads the masks of data=folder; with "
                f"data={str(data.get('_target_', '?')).rsplit('.', 1)[-1]} set task and num_classes."
            )
        follow_in_channels(cfg, 3)  # the synthetic shapes are 8-bit RGB
        return None
    from fingerprint import check_fingerprint, compute_fingerprint, summary_lines

    task, num_classes = cfg.task, cfg.num_classes
    if task == "multilabel" and num_classes == AUTO:
        raise ValueError("task=multilabel needs num_classes (one mask file <stem>_<k> per label k): "
                         "num_classes=auto reads index masks only.")
    # Listing files needs the pairing rule: one mask per image unless multilabel.
    pairing = (task if task != AUTO else "binary", num_classes if num_classes != AUTO else 1)
    root = Path(str(data.root)).expanduser() if data.get("root") not in (None, "", "???") else None
    if root is None:
        raise ValueError("data.root is not set: pass data.root=/path/to/dataset (holding images/ and masks/)")
    splits = _discover_splits(cfg, root, pairing)
    if splits.folds is not None and log_summary and rank_zero_only.rank == 0:
        log.info(splits.folds.summary())
    palette = data.get("palette")
    cache_dir = cfg.get("paths", {}).get("cache_dir")
    fingerprint = compute_fingerprint(
        splits,
        palette=None if palette is None else [tuple(int(v) for v in c) for c in palette],
        percentiles=tuple(float(v) for v in data.get("normalize_percentiles", (0.5, 99.5))),
        seed=int(data.get("seed", 0)),
        cache_dir=None if cache_dir is None else os.path.abspath(str(cache_dir)),
    )
    select = data.get("channels")
    in_channels = cfg.model.get("in_channels") if "model" in cfg else None
    resolved = check_fingerprint(
        fingerprint, task=task, num_classes=num_classes, ignore_index=cfg.get("ignore_index"),
        in_channels=in_channels,
        class_names=None if data.get("class_names") is None else list(data.class_names),
        labels_file=_labels_file(root),
        channels=None if select is None else [int(c) for c in select],
    )
    set_key(cfg, "task", resolved.task)
    set_key(cfg, "num_classes", resolved.num_classes)
    if data.get("class_names") is None and resolved.class_names is not None:
        set_key(cfg, "data.class_names", list(resolved.class_names))
    follow_in_channels(cfg, resolved.in_channels)
    _padding_ignore(cfg, fingerprint)
    if log_summary and rank_zero_only.rank == 0:
        for line in [*summary_lines(fingerprint, resolved), *resolved.notes]:
            log.info(line)
        for line in resolved.warnings:
            log.warning(line)
    return fingerprint


def _discover_splits(cfg: DictConfig, root: Path, pairing: tuple[str, Any]) -> Splits:
    """The splits of ``cfg.data`` (datamodules/layout.py); cross-validation folds stored under ``paths.cache_dir``."""
    data = cfg.data
    cache_dir = cfg.get("paths", {}).get("cache_dir")
    return discover_splits(
        root, task=pairing[0], num_classes=pairing[1], images_dir=data.get("images_dir"),
        masks_dir=data.get("masks_dir"), image_suffix=str(data.get("image_suffix") or ""),
        mask_suffix=str(data.get("mask_suffix") or ""), val_fraction=float(data.get("val_fraction", 0.2)),
        seed=int(data.get("seed", 0)), folds=data.get("folds"), fold=data.get("fold"),
        split_file=data.get("split_file"), group_pattern=data.get("group_pattern"),
        cache_dir=None if cache_dir is None else os.path.abspath(str(cache_dir)),
    )


def _padding_ignore(cfg: DictConfig, fingerprint: dict[str, Any]) -> None:
    """Give the losses and metrics the padding's reserved value when crops will be padded (module docstring)."""
    data = cfg.data
    if cfg.get("ignore_index") is not None or not data.get("pad", True) or data.get("image_size"):
        return
    crop = data.get("crop_size")
    sizes = [(int(h), int(w)) for h, w in fingerprint["images"]["sizes_by_split"]["train"]]
    if crop is None or not sizes:
        return
    scale = data.get("scale_range")
    if needs_padding(sizes, effective_crop(sizes, int(crop)), None if scale is None else list(scale)):
        value = reserved_pad_value(cfg.task, cfg.num_classes)
        set_key(cfg, "data.ignore_index", None)  # the files have no "not labelled" value
        set_key(cfg, "ignore_index", value)
        if rank_zero_only.rank == 0:
            log.info("Training crops of the smaller images are padded; padded pixels carry the reserved mask value "
                     "%d, which no loss or metric counts (ignore_index=%d for them; your masks' values stay classes).",
                     value, value)


@rank_zero_only
def save_fingerprint(fingerprint: dict[str, Any] | None, output_dir: str) -> None:
    """``<run>/fingerprint.json``: what the data was when this run trained on it."""
    if fingerprint is not None:
        from fingerprint import write_fingerprint

        write_fingerprint(fingerprint, output_dir)


@rank_zero_only
def save_splits(cfg: DictConfig, output_dir: str) -> None:
    """``<run>/splits.json``: every fold of the partition this run's ``data.fold`` is one of (nothing without folds).

    A copy of the stored (or given) splits, so a run folder says on its own which images each fold
    validated on. The files are listed again (a directory walk; the folds are read back, not recomputed).
    """
    data = cfg.get("data")
    if not is_folder_data(data) or (data.get("folds") is None and data.get("split_file") in (None, "")):
        return
    root = Path(str(data.root)).expanduser()
    pairing = (cfg.task if cfg.task != AUTO else "binary", cfg.num_classes if cfg.num_classes != AUTO else 1)
    plan = _discover_splits(cfg, root, pairing).folds
    if plan is not None:
        write_splits(plan.folds, Path(output_dir) / SPLITS_FILE)
