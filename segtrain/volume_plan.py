"""Before anything trains on volumes: read the nnU-Net dataset, fingerprint it, fill in the config.

For ``data=nnunet`` (:class:`datamodules.volumes.VolumeDataModule`) :func:`plan_volumes` reads
``dataset.json`` and lists the cases (datamodules/volumes/nnunet.py: a missing label or channel
file, a case whose files disagree in shape, labels of another kind are errors naming the case and
the file), computes the volume fingerprint (fingerprint/volumes.py: shapes, spacings, intensities
per channel, the normalisation of each channel), and then, on the composed config, in place:

* ``task`` becomes ``multiclass`` (nnU-Net's labels include the background; ``auto`` or
  ``multiclass`` accepted) and ``num_classes`` the labels of ``dataset.json`` (an explicit other
  value is an error naming both); ``data.class_names`` the label names;
* ``ignore_index`` (losses and metrics) becomes the dataset's ``ignore`` label, else the reserved
  value that padded voxels of training patches carry (no loss or metric counts them);
* ``model.in_channels`` / ``model.spatial_dims`` follow the channels and dimensions of the data;
  a 2D network with volumes (or a 3D one with 2D data) is an error naming both;
* ``data.crop_size`` (``null``) is planned from the fingerprint's median shape under
  ``data.patch_budget``; ``model.patch_size`` and ``model.spacing`` (``null``) follow the patch and
  the median spacing, from which DynUNet plans its kernels and strides as nnU-Net does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from datamodules.masks import reserved_pad_value

from .data_plan import follow_in_channels, set_key

log = logging.getLogger(__name__)

AUTO = "auto"


def is_volume_data(data: Any) -> bool:
    """Whether the data config builds the volume datamodule (``data=nnunet``)."""
    return str((data or {}).get("_target_", "")).endswith("VolumeDataModule")


def _task(cfg: DictConfig, num_classes: int, root: Path) -> None:
    if cfg.task not in (AUTO, "multiclass"):
        raise ValueError(
            f"task={cfg.task}, but an nnU-Net dataset ({root / 'dataset.json'}) has one label per voxel, the "
            f"background included: it trains as task=multiclass (or task=auto)."
        )
    if cfg.num_classes not in (AUTO, num_classes):
        raise ValueError(
            f"num_classes={cfg.num_classes}, but {root / 'dataset.json'} names {num_classes} labels (the background "
            f"included): set num_classes={num_classes}, or num_classes=auto."
        )
    set_key(cfg, "task", "multiclass")
    set_key(cfg, "num_classes", num_classes)


def _model(cfg: DictConfig, channels: int, dims: int) -> None:
    from .network3d import check_model_matches_data

    model = cfg.model
    check_model_matches_data(model, dims)
    follow_in_channels(cfg, channels, "dataset.json's channel_names")
    if "spatial_dims" in model and model.get("spatial_dims") is None:
        set_key(cfg, "model.spatial_dims", dims)


def _fit_patch_to_network(cfg: DictConfig, spacing: list[float]) -> None:
    """A planned patch grows to what the network divides (DynUNet: its planned strides; an smp 2D
    network: 32), and ``data.divisor`` becomes that, so a patch the datamodule shrinks still fits."""
    from .network3d import fit_patch

    target = str(cfg.model.get("_target_", ""))
    patch = [int(v) for v in cfg.data.crop_size]
    if target.endswith("build_dynunet"):
        patch, divisor = fit_patch(patch, spacing, cfg.model.get("max_levels"))
    elif target.endswith("build_network"):  # segmentation-models-pytorch (2D): encoder depth 5 at most
        divisor = [32] * len(patch)
        patch = [-(-p // 32) * 32 for p in patch]
    else:
        return
    set_key(cfg, "data.crop_size", patch)
    set_key(cfg, "data.divisor", divisor)


def _fingerprint(cfg: DictConfig, root: Path, cases: list, info: Any) -> dict[str, Any]:
    """The volume fingerprint, read from ``paths.cache_dir`` when its files have not changed.

    Computing it reads every training case, which for a CT dataset takes minutes at every start
    (and on every DDP rank); the 2D fingerprint's cache (fingerprint/cache.py) keys it on the
    paths, sizes and modification times of dataset.json and every case file, and the seed.
    """
    from fingerprint.cache import FORMAT, cache_file, cache_key, check_cache_dir, load_cached, write_json_atomic

    seed = int(cfg.data.get("seed", 0))
    files = {"dataset": [(root / "dataset.json", ())],
             "train": [(c.images[0], (*c.images[1:], *([c.label] if c.label else []))) for c in cases]}
    key = cache_key(files, palette=None, percentiles=(), samples_per_image=10_000, max_samples=2_000_000, seed=seed,
                    kind=f"volumes-{info.dims}d")
    cache_dir = (cfg.get("paths") or {}).get("cache_dir")
    path = None
    if cache_dir is not None:
        folders = {Path(f).parent.resolve() for pairs in files.values() for image, rest in pairs for f in (image, *rest)}
        path = cache_file(check_cache_dir(str(cache_dir), folders), key)
        cached = load_cached(path, key)
        if cached is not None:
            return cached
    if info.is_3d:
        from fingerprint.volumes import compute_volume_fingerprint

        fingerprint = compute_volume_fingerprint(cases, info, seed=seed)
    else:  # 2D cases in nnU-Net's layout: the few keys the datamodule reads (datamodules/volumes/planar.py)
        from datamodules.volumes.planar import planar_fingerprint

        fingerprint = planar_fingerprint(cases, info, seed=seed)
    fingerprint = {**fingerprint, "format": FORMAT, "key": key}
    if path is not None:
        write_json_atomic(path, fingerprint)
    return fingerprint


def plan_volumes(cfg: DictConfig, *, log_summary: bool = True) -> dict[str, Any]:
    """Read, fingerprint and check the nnU-Net dataset of ``cfg.data``; resolve its keys (module docstring).

    Returns:
        the volume fingerprint (a JSON-able dict), which the datamodule normalises with.
    """
    from datamodules.volumes.datamodule import plan_crop_size
    from datamodules.volumes.nnunet import find_cases, read_dataset_json
    from fingerprint.volumes import volume_summary_lines

    data = cfg.data
    if data.get("root") in (None, "", "???"):
        raise ValueError("data.root is not set: pass data.root=/path/to/DatasetXXX_Name (holding dataset.json, "
                         "imagesTr/ and labelsTr/)")
    root = Path(str(data.root)).expanduser()
    info = read_dataset_json(root)
    cases = find_cases(root, "Tr", info)
    _task(cfg, info.num_classes, root)
    if data.get("class_names") is None:
        set_key(cfg, "data.class_names", list(info.class_names))
    fingerprint = _fingerprint(cfg, root, cases, info)
    _model(cfg, info.num_channels, int(info.dims))
    if cfg.get("ignore_index") is None:
        value = info.ignore_index if info.ignore_index is not None else reserved_pad_value("multiclass", info.num_classes)
        set_key(cfg, "ignore_index", value)
    spacing = [float(s) for s in fingerprint["spacing"]["median"]]
    if data.get("crop_size") is None:
        set_key(cfg, "data.crop_size", list(plan_crop_size(fingerprint, int(data.get("patch_budget")), data.get("divisor"))))
        _fit_patch_to_network(cfg, spacing)
    model = cfg.get("model") or {}
    if "patch_size" in model and model.get("patch_size") is None:
        set_key(cfg, "model.patch_size", list(data.crop_size))
    if "spacing" in model and model.get("spacing") is None:
        set_key(cfg, "model.spacing", spacing)
    if log_summary and rank_zero_only.rank == 0:
        for line in volume_summary_lines(fingerprint) if info.is_3d else []:
            log.info(line)
        log.info("Patches of %s voxels; losses and metrics skip the value %s (padding%s).",
                 "x".join(str(int(v)) for v in data.crop_size), cfg.ignore_index,
                 ", and the dataset's ignore label" if info.ignore_index is not None else "")
    return fingerprint
