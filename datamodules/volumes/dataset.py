"""The volume datasets: cases read and normalised, training patches, whole validation volumes.

A case is read as ``image`` float32 ``[C, *spatial]`` (its channel files stacked, each normalised
by its spec: :mod:`datamodules.volumes.normalization`), ``label`` ``[*spatial]`` (class values,
the ignore label kept) and its ``spacing`` (``(z, y, x)``; ``(1, 1)`` for 2D images).
:class:`CaseReader` reads them from the files on every call (in the DataLoader workers),
:class:`CachedCases` once in setup() (``data.cache``; forked workers share the pages).

Samples (collated by :func:`datamodules.base.collate`): ``{"image": float32 [C, *s], "mask":
int64 [*s], "name": case id, "spacing": float32 [dims]}`` plus, while active, ``"distance"``
(float32 ``[num_classes, *s]``: :func:`seglosses.derived.signed_distance` of the *whole* case's
label with its spacing, cropped with the patch: true distances to objects outside the patch; padded
voxels 0) and ``"skeleton"`` (:func:`seglosses.derived.tubed_skeleton` of the final patch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seglosses import derived as canonical

from ..derived import DISTANCE, SKELETON, DerivedTargets
from .augment import random_state, reseed, set_random_state
from .nnunet import Case, DatasetInfo, read_label
from .normalization import normalize_volume
from .sampler import LocationCache, PatchSampler, extract


@dataclass
class CaseData:
    """One case in memory: ``image`` float32 ``[C, *spatial]`` (normalised), ``label`` ``[*spatial]``,
    ``spacing`` per spatial axis, ``case_id``."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]


def label_dtype(top: int) -> np.dtype:
    """The smallest dtype holding every class value, the ignore value and the pad value (``top``: the largest)."""
    return np.dtype(np.uint8) if top < 256 else np.dtype(np.int32)


def _read_channels(case: Case, info: DatasetInfo) -> tuple[np.ndarray, tuple[float, ...]]:
    """The case's channel files stacked ``[C, *spatial]`` in their own dtypes, and the spacing."""
    if info.is_3d:
        from .io import read_volume

        volumes = [read_volume(p) for p in case.images]
        arrays, spacing = [v.array for v in volumes], tuple(float(s) for s in volumes[0].spacing)
    else:
        from ..io import read_image

        arrays = [np.moveaxis(read_image(p), -1, 0) for p in case.images]  # [H, W, k] -> k channels
        spacing = (1.0, 1.0)
        arrays = [a for stack in arrays for a in stack]
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        shown = ", ".join(f"{p.name} {tuple(a.shape)}" for p, a in zip(case.images, arrays))
        raise ValueError(f"Case {case.case_id}: channel files of different shapes ({shown}): every channel of a case "
                         "must be on one grid (resample them onto the first channel's)")
    return np.stack(arrays), spacing


class CaseReader:
    """Reads and normalises one case per call (picklable: DataLoader workers call it).

    Args:
        cases: the cases (from :func:`~datamodules.volumes.find_cases`).
        info: the dataset's ``dataset.json``.
        specs: the per-channel normalisation specs.
        pad_value: the mask value of padded voxels (decides the label dtype).
    """

    def __init__(self, cases: Sequence[Case], info: DatasetInfo, specs: Sequence[dict], pad_value: int) -> None:
        self.cases, self.info, self.specs = list(cases), info, [dict(s) for s in specs]
        self.top = info.num_classes - 1 if info.ignore_index is None else int(info.ignore_index)
        self.dtype = label_dtype(max(self.top, int(pad_value)))

    def __len__(self) -> int:
        return len(self.cases)

    def __call__(self, index: int) -> CaseData:
        case = self.cases[index]
        raw, spacing = _read_channels(case, self.info)
        if raw.shape[0] != len(self.specs):
            raise ValueError(f"Case {case.case_id} has {raw.shape[0]} channel(s) but the normalisation covers "
                             f"{len(self.specs)} (dataset.json's channel_names): give every case the same channels")
        image = normalize_volume(raw, self.specs)
        label = None
        if case.label is not None:
            label = np.asarray(read_label(case, self.info))
            if label.shape != image.shape[1:]:
                raise ValueError(f"Case {case.case_id}: label {case.label} has shape {label.shape} but the image "
                                 f"{tuple(image.shape[1:])}: a label must cover its image voxel for voxel")
            low, high = (float(label.min()), float(label.max())) if label.size else (0.0, 0.0)
            if low < 0 or high > self.top or (label.dtype.kind == "f" and not np.array_equal(label, np.round(label))):
                raise ValueError(f"Case {case.case_id}: label {case.label} holds values {low:g}..{high:g}, outside "
                                 f"dataset.json's labels 0..{self.top}: fix the label file (data.validate=true "
                                 "lists every wrong value)")
            label = label.astype(self.dtype, copy=False)
        return CaseData(case.case_id, image, label, spacing)


def whole_distance(label: np.ndarray, num_classes: int, spacing: Sequence[float]) -> np.ndarray:
    """The whole case's signed distance maps float32 ``[num_classes, *spatial]`` in the spacing's units
    (the ignore value in no class: :func:`seglosses.derived.class_channels`)."""
    channels = canonical.class_channels(label, "multiclass", num_classes)
    return canonical.signed_distance(channels, spacing)


class CachedCases:
    """Every case read once and kept (``data.cache``), with the whole-case distance maps when asked.

    Args:
        reader: the :class:`CaseReader`.
        distance_classes: with ``distance`` among the derived targets, the map's channels
            (``num_classes``); ``None``: no maps.
    """

    def __init__(self, reader: CaseReader, distance_classes: int | None = None) -> None:
        self.cases = reader.cases
        self.items = [reader(i) for i in range(len(reader))]
        self.nbytes = sum(d.image.nbytes + (0 if d.label is None else d.label.nbytes) for d in self.items)
        self.distances = None
        if distance_classes is not None:
            self.distances = [whole_distance(d.label, distance_classes, d.spacing) for d in self.items]
            self.nbytes += sum(m.nbytes for m in self.distances)

    def __len__(self) -> int:
        return len(self.items)

    def __call__(self, index: int) -> CaseData:
        return self.items[index]

    def cached_distance(self, index: int) -> np.ndarray | None:
        return None if self.distances is None else self.distances[index]


def run_without_metadata(pipeline, sample: dict[str, Any]) -> dict[str, Any]:
    """``pipeline(sample)`` with MONAI's metadata tracking off (restored after).

    The samples carry no metadata (no affine, no transform history: the batches hold plain
    tensors), and MONAI's MetaTensor bookkeeping costs about half of the augmentation time of a
    48x64x64 patch (scripts/bench_data.py only=volumes). The flag is process-global: set around
    the call only, so that other MONAI code in the process sees its own setting.
    """
    from monai.data import get_track_meta, set_track_meta

    previous = get_track_meta()
    set_track_meta(False)
    try:
        return pipeline(sample)
    finally:
        set_track_meta(previous)


def _tensor(value: Any) -> torch.Tensor:
    """A MONAI output (MetaTensor, tensor or array) as a plain tensor (no metadata in the batches)."""
    if hasattr(value, "as_tensor"):
        return value.as_tensor()
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


class _VolumeDataset(Dataset):
    """What the training and the whole-volume datasets share: the source, the pipeline, the derived targets."""

    def __init__(self, source, pipeline, derived: DerivedTargets | None, num_classes: int) -> None:
        self.source, self.pipeline = source, pipeline
        self.derived = derived if derived else None
        self.num_classes = int(num_classes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._sample(index, self.derived.active() if self.derived is not None else ())

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """One batch: the active derived targets are read once, so a batch never mixes keys."""
        active = self.derived.active() if self.derived is not None else ()
        return [self._sample(i, active) for i in indices]

    def _distance(self, k: int, data: CaseData) -> np.ndarray:
        cached = getattr(self.source, "cached_distance", None)
        found = cached(k) if callable(cached) else None
        return found if found is not None else whole_distance(data.label, self.num_classes, data.spacing)

    def _finish(self, data: CaseData, image: Any, mask: Any, distance: Any, active) -> dict[str, Any]:
        mask_t = _tensor(mask)
        sample = {"image": _tensor(image).float(), "mask": mask_t.long(), "name": data.case_id,
                  "spacing": torch.tensor(data.spacing, dtype=torch.float32)}
        if DISTANCE in active:
            sample[DISTANCE] = _tensor(distance).float()
        if SKELETON in active:
            sample[SKELETON] = self.derived.skeleton(sample["mask"])
        return sample

    def _augment(self, image: np.ndarray, mask: np.ndarray, distance: np.ndarray | None):
        """The pipeline on ``{"image": [C, *s], "mask": [1 (+K), *s]}``; the distance map rides in the mask's channels."""
        if distance is not None:
            mask = np.concatenate([mask[None].astype(np.float32), distance])
        else:
            mask = mask[None]
        out = {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}
        if self.pipeline is not None and self.pipeline.transforms:
            out = run_without_metadata(self.pipeline, out)
        mask = _tensor(out["mask"])
        if distance is not None:
            return out["image"], mask[0].round(), mask[1:]
        return out["image"], mask[0], None


class VolumePatches(_VolumeDataset):
    """Training patches: ``length`` per epoch, patch ``i`` from case ``i % cases`` (shuffled by the DataLoader).

    Args:
        source: :class:`CaseReader` or :class:`CachedCases`.
        length: patches per epoch.
        sampler: where patches lie (:class:`~datamodules.volumes.sampler.PatchSampler`).
        locations: the foreground locations per case.
        pipeline: the MONAI Compose of the training transforms.
        pad_value: mask value of padded voxels.
        derived: the derived targets (shared flags), or ``None``.
        num_classes: classes incl. background (the distance map's channels).
    """

    def __init__(self, source, length: int, sampler: PatchSampler, locations: LocationCache, pipeline,
                 pad_value: int, derived: DerivedTargets | None, num_classes: int) -> None:
        super().__init__(source, pipeline, derived, num_classes)
        self.length, self.sampler, self.locations, self.pad_value = int(length), sampler, locations, int(pad_value)

    def __len__(self) -> int:
        return self.length

    def reseed(self, seed: int) -> None:
        """A DataLoader worker's own streams (patch positions and augmentations)."""
        self.sampler.reseed(seed)
        if self.pipeline is not None:
            reseed(self.pipeline, seed)

    def state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state(), "transforms": random_state(self.pipeline)}

    def set_state(self, state: dict[str, Any]) -> list[str]:
        """Restore :meth:`state`; returns what could not be restored (a changed pipeline)."""
        missing = []
        if "sampler" in state:
            self.sampler.set_state(state["sampler"])
        if "transforms" in state and not set_random_state(self.pipeline, state["transforms"]):
            missing.append("transforms")
        return missing

    def _sample(self, index: int, active) -> dict[str, Any]:
        k = index % len(self.source)
        data = self.source(k)
        patch = self.sampler.sample(data.label.shape, self.locations.get(data.case_id, data.label))
        image = extract(data.image, patch, 0.0)
        mask = extract(data.label, patch, self.pad_value)
        distance = extract(self._distance(k, data), patch, 0.0) if DISTANCE in active else None
        image, mask, distance = self._augment(image, mask, distance)
        return self._finish(data, image, mask, distance, active)


class WholeVolumes(_VolumeDataset):
    """Validation / test: every case whole, normalised, through the (default empty) val transforms."""

    def __len__(self) -> int:
        return len(self.source)

    def _sample(self, index: int, active) -> dict[str, Any]:
        data = self.source(index)
        distance = self._distance(index, data) if DISTANCE in active else None
        image, mask, distance = self._augment(data.image, data.label, distance)
        return self._finish(data, image, mask, distance, active)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: each worker its own patch and augmentation streams.

    Torch gives every worker a distinct seed (``base_seed + worker_id``, the base drawn from the
    global torch generator, which Lightning seeds); without this, forked workers would copy one
    generator state and draw the same patches.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(info.seed % 2**32)
