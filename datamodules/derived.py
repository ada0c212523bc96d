"""Derived targets in the data pipeline: distance maps and tubed skeletons beside the mask.

Some losses need more than the mask (:mod:`seglosses.derived`, the canonical definitions):
``BoundaryLoss`` / ``HausdorffDTLoss`` the signed distance map of every class (``distance``),
``SkeletonRecallLoss`` the tubed skeleton (``skeleton``). The datamodules compute them only when
asked (``derived_targets=[...]``, which the harness fills from the loss config; empty, the default:
nothing is computed) and only while a loss with a weight above 0 needs them
(:meth:`DerivedTargets.set_active`, called by the training module at every epoch start).

``sample["distance"]``: float32 ``[C, H, W]`` (C: binary 1, multiclass ``num_classes`` incl. the
background, multilabel ``num_classes``), :func:`seglosses.derived.signed_distance` of the
*whole image's* mask, computed after reading and before the crop stage, so that a crop holds the
true distances to objects outside it. It goes through the crop stage and the configured
augmentations as a further mask target of the same albumentations call (``additional_targets``
``{"distance": "mask"}``: every geometric transform moves it with the mask):

* crops, flips, transposes and 90-degree rotations carry it exactly;
* resampling transforms (``data.scale_range``'s rescale, ``Resize`` in resize mode, ``Affine``,
  ``ElasticTransform`` ...) carry it approximately: mask interpolation (nearest) picks the map's
  values, which stay distances *in pixels of the original image* (not rescaled with it); pixels
  that such a transform fills (outside a rotated image) get the transform's ``fill_mask`` (0,
  the mask's background);
* padded pixels (``PadIfNeeded``) get the mask's pad value (``ignore_index``, else the reserved
  value, 255 by default): meaningless numbers, at pixels the mask marks ignored, which the losses
  skip.

Distances are in pixels, or in the units of the sample source's pixel spacing when it has one
(a source method ``spacing(index) -> (row, column) sizes | None``; the folder and synthetic
sources have none: unit pixels). With ``data.cache=true`` the folder datamodule computes the
maps once per image in setup() (:class:`~datamodules.folder._CachedSource`, which holds them
beside the decoded samples); otherwise every sample computes its image's map in the DataLoader
worker. Validation and test samples (whole images) carry the whole image's map.

``sample["skeleton"]``: :func:`seglosses.derived.tubed_skeleton` of the *whole image's* mask,
computed before the crop stage like the distance map and carried the same way (a further mask
target), in the mask's layout (binary ``[1, H, W]``, multiclass ``[H, W]`` class indices,
multilabel ``[C, H, W]``) as uint8 (int32 beyond 255 classes; the losses take any integer type):
the skeleton of each whole object, cropped and flipped with the
mask -- not the skeleton of the crop's fragment, whose ends at the crop border are artefacts.
Crops, flips, transposes and 90-degree rotations carry it exactly; resampling transforms by
nearest neighbour (a tube of about 5 pixels may thin or break there). Padded and ignored pixels
are never skeleton. (The volume datamodule skeletonises each patch instead, as nnU-Net's
``SkeletonTransform`` does: a whole volume's skeleton is costly and volumes are not stored.)

Both maps are kept between epochs: with ``data.cache=true`` in memory (computed once per image
in setup(), :class:`~datamodules.folder._CachedSource`), else on disk when the datamodule has a
``derived_cache_dir`` (:class:`MapStore`; train.py passes ``<paths.cache_dir>/derived_maps``);
otherwise every sample computes its image's maps in the DataLoader worker.

Cost (scripts/bench_data.py ``only=derived``). A distance map costs two scipy
``distance_transform_edt`` feature transforms of the whole image per class present in it
(about 10 ms each for a 700x500 image on one core: more than decoding the image), so without
the cache it multiplies the time of a sample; ``data.cache=true`` computes it once per image
(float32, ``4 * C`` bytes per pixel, refused when larger than the available memory) and leaves
the cost of carrying it through the crop stage; so does the disk store from the second epoch on.
A whole-image skeleton costs a few ms per image (skimage's thinning), once as well.

Active or not. :meth:`DerivedTargets.set_active` writes a few flags in a shared-memory tensor
created with the datamodule; DataLoader workers (persistent ones too) read them at every batch
(:meth:`DerivedTargets.active`, once per batch in ``SegmentationDataset.__getitems__``), so a
switch reaches them without restarting them. An inactive target is left out of the sample; the
keys of one batch are always the same (one read per batch). Initially every configured target is
active.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglosses import derived as canonical
from seglosses.derived import DISTANCE, NAMES, SKELETON

__all__ = ["DISTANCE", "NAMES", "SKELETON", "DerivedTargets", "DerivedTargetsSwitch", "MapStore", "check_names", "distance_map", "skeleton_map",
           "skeleton_of"]

#: How the crop stage and the augmentations carry the whole-image maps: as more masks.
ALBUMENTATIONS_TARGETS = {DISTANCE: "mask", SKELETON: "mask"}


def check_names(names: Sequence[str] | str | None) -> tuple[str, ...]:
    """``names`` as a tuple in the canonical order of :data:`NAMES`, without repeats.

    Raises:
        ValueError: a name that is not a derived target, listing the valid ones.
    """
    if names is None:
        return ()
    if isinstance(names, str):
        names = [names]
    given = [str(n) for n in names]
    unknown = sorted(set(given) - set(NAMES))
    if unknown:
        raise ValueError(
            f"Unknown derived target(s) {', '.join(map(repr, unknown))} in data.derived_targets: the valid names are "
            f"{', '.join(map(repr, NAMES))} (the targets a loss lists in its derived_targets)."
        )
    return tuple(n for n in NAMES if n in given)


def class_channels(mask: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """A source mask (``[H, W]``, multilabel ``[H, W, C]``) as boolean class channels ``[C, H, W]``."""
    if task == "multilabel":
        return np.moveaxis(np.asarray(mask) == 1, -1, 0)
    if task == "binary":
        return (np.asarray(mask) == 1)[None]
    return canonical.class_channels(mask, task, num_classes)


def distance_map(mask: np.ndarray, task: str, num_classes: int, spacing: Sequence[float] | None = None) -> np.ndarray:
    """The whole image's signed distance maps, channels last for albumentations: float32 ``[H, W, C]``.

    ``mask`` is the source's mask as read (``[H, W]``; multilabel ``[H, W, C]``);
    :func:`seglosses.derived.signed_distance` of its class channels (ignored pixels in no class).
    """
    maps = canonical.signed_distance(class_channels(mask, task, num_classes), spacing)
    return np.ascontiguousarray(np.moveaxis(maps, 0, -1))  # one copy; OpenCV inside albumentations wants it


def skeleton_map(mask: np.ndarray, task: str, ignore_value: int | float | None = None) -> np.ndarray:
    """The whole image's tubed skeleton in the source mask's layout (``[H, W]``; multilabel ``[H, W, C]``) and dtype."""
    values = np.asarray(mask)
    layout = values[None] if task == "binary" else np.moveaxis(values, -1, 0) if task == "multilabel" else values
    skeleton = skeleton_of(torch.from_numpy(np.ascontiguousarray(layout)), task, ignore_value).numpy()
    skeleton = skeleton[0] if task == "binary" else np.moveaxis(skeleton, 0, -1) if task == "multilabel" else skeleton
    return np.ascontiguousarray(skeleton).astype(values.dtype, copy=False)  # class values: the mask's own dtype


def skeleton_of(mask: torch.Tensor, task: str, ignore_value: int | float | None = None) -> torch.Tensor:
    """:func:`seglosses.derived.tubed_skeleton` of an encoded sample mask, in its layout and dtype.

    Computed on the bounding box of the foreground plus two pixels (clipped to the mask): the
    tube lies inside the foreground, and thinning and the two cross dilations only look at
    3x3 neighbourhoods, so the result is that of the whole mask (tests/test_derived_targets.py)
    for a fraction of the cost when the objects are small.
    """
    values = mask.numpy()
    foreground = values > 0 if task == "multiclass" else values == 1
    if task == "multiclass" and ignore_value is not None:
        foreground &= values != ignore_value
    spatial = foreground if foreground.ndim == 2 else foreground.any(axis=0)
    rows = np.flatnonzero(spatial.any(axis=1))
    if rows.size == 0:
        return torch.zeros_like(mask)
    cols = np.flatnonzero(spatial.any(axis=0))
    box = (..., slice(max(rows[0] - 2, 0), rows[-1] + 3), slice(max(cols[0] - 2, 0), cols[-1] + 3))
    out = np.zeros_like(values)
    out[box] = canonical.tubed_skeleton(values[box], task, ignore_value)
    return torch.from_numpy(out)


def _spacing(source: Callable, index: int) -> Sequence[float] | None:
    spacing = getattr(source, "spacing", None)
    return spacing(index) if callable(spacing) else None


class DerivedTargets:
    """Which derived targets a datamodule's samples carry, and how they are computed.

    Args:
        names: the targets asked for (``data.derived_targets``); empty: none, nothing computed.
        task, num_classes: the mask layout (datamodules/masks.py).
        ignore_value: the mask value of pixels that are no class (ignore_index / the pad value),
            never skeleton.

    The active subset lives in ``flags``, a shared-memory uint8 tensor (one entry per name of
    :data:`NAMES`): set in the training process, read by every DataLoader worker.
    """

    def __init__(self, names: Sequence[str] | str | None, task: str, num_classes: int,
                 ignore_value: int | float | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        self.names = check_names(names)
        self.task, self.num_classes = task, int(num_classes)
        self.ignore_value = ignore_value
        #: Where whole-image distance maps are kept between epochs and runs (:class:`MapStore`); None: nowhere.
        self.store = MapStore(cache_dir) if cache_dir is not None and self.names else None
        # Shared memory: forked workers map the same pages, spawned ones receive a handle to them
        # (torch.multiprocessing's pickling of shared tensors), so set_active reaches running workers.
        self.flags = torch.zeros(len(NAMES), dtype=torch.uint8).share_memory_() if self.names else None
        self.set_active(self.names)

    def __bool__(self) -> bool:
        return bool(self.names)

    def set_active(self, names: Sequence[str] | str | None) -> None:
        """Compute ``names`` from the next batch on, and no other derived target.

        Raises:
            ValueError: an unknown name, or one not asked for when the datamodule was built.
        """
        active = check_names(names)
        missing = [n for n in active if n not in self.names]
        if missing:
            raise ValueError(
                f"Derived target(s) {', '.join(map(repr, missing))} cannot be switched on: the datamodule was built "
                f"with derived_targets={list(self.names)} (data.derived_targets; the harness fills it from the loss "
                "terms that need them)."
            )
        if self.flags is not None:
            for i, name in enumerate(NAMES):
                self.flags[i] = name in active

    def active(self) -> tuple[str, ...]:
        """The targets to compute now (one read of the shared flags)."""
        if self.flags is None:
            return ()
        on = self.flags.tolist()
        return tuple(name for name, flag in zip(NAMES, on) if flag)

    def whole(self, name: str, source: Callable, index: int, mask: np.ndarray) -> tuple[np.ndarray, bool]:
        """Sample ``index``'s whole-image map ``name`` and whether it is the source's cached one.

        ``distance``: float32 ``[H, W, C]``; ``skeleton``: the source mask's layout (``[H, W]``,
        multilabel ``[H, W, C]``) and dtype. A source with ``cached_derived(name, index)`` (``data.cache``)
        holds them; else the store (:class:`MapStore`) when there is one and the source reads files;
        else it is computed now from ``mask`` (the mask as read, before any transform).
        """
        cached = getattr(source, "cached_derived", None)
        if callable(cached):
            found = cached(name, index)
            if found is not None:
                return found, True
        spacing = _spacing(source, index) if name == DISTANCE else None
        file_key = getattr(source, "file_key", None)
        if self.store is None or not callable(file_key):
            return self.compute(name, mask, spacing), False
        key = f"{name}|{file_key(index)}|{self.task}|{self.num_classes}|{None if spacing is None else list(spacing)}"
        found = self.store.load(key)
        if found is None:
            found = self.compute(name, mask, spacing)
            self.store.save(key, found)
        return found, False

    def skeleton(self, mask: torch.Tensor) -> torch.Tensor:
        """The tubed skeleton of an encoded patch mask, in its layout (the volume datamodule: per patch)."""
        return skeleton_of(mask, self.task, self.ignore_value)

    def compute(self, name: str, mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        if name == DISTANCE:
            return distance_map(mask, self.task, self.num_classes, spacing)
        return skeleton_map(mask, self.task, self.ignore_value)

    def add(self, sample: dict[str, Any], out: dict[str, Any], active: tuple[str, ...],
            cached: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Put the active targets into ``sample`` (``out``: the albumentations call's result).

        ``cached``: the source's cached maps that went into the call; a result still sharing its
        memory (no transform copied it: a crop is a view) is copied, so that nothing downstream
        can write into the cache.
        """
        cached = cached or {}
        if DISTANCE in active:
            distance = _as_channels(out[DISTANCE])
            if DISTANCE in cached and np.may_share_memory(distance.numpy(), cached[DISTANCE]):
                distance = distance.clone()
            sample[DISTANCE] = distance
        if SKELETON in active:
            value = out[SKELETON]
            value = value if isinstance(value, torch.Tensor) else torch.from_numpy(
                np.ascontiguousarray(np.moveaxis(np.asarray(value), -1, 0) if np.ndim(value) == 3 else value))
            if self.task == "binary":
                value = value.reshape(1, *value.shape[-2:])
            # Padded pixels carry the pad value through the crop stage: never skeleton. A new tensor in the
            # smallest integer type that holds the classes (uint8 but for > 255 classes): a quarter of the
            # float32 mask's bytes through the workers' shared memory, and never a view of a cached map.
            limit = self.num_classes - 1 if self.task == "multiclass" else 1
            dtype = torch.uint8 if limit <= 255 else torch.int32
            sample[SKELETON] = torch.where((value > limit) | (value < 0), 0, value).to(dtype)
        return sample


class DerivedTargetsSwitch:
    """What a datamodule shows of its derived targets (``self.derived``, a :class:`DerivedTargets`):
    the 2D datamodules (datamodules/base.py) and the volume one (datamodules/volumes/) alike."""

    derived: DerivedTargets

    @property
    def derived_targets(self) -> tuple[str, ...]:
        """The derived targets asked for (``derived_targets=``), whether active or not."""
        return self.derived.names

    @property
    def active_derived_targets(self) -> tuple[str, ...]:
        """The derived targets the next batches carry."""
        return self.derived.active()

    def set_active_derived_targets(self, names: Sequence[str]) -> None:
        """Compute only ``names`` (a subset of ``derived_targets``) from the next batch on.

        The training module calls this from ``on_train_epoch_start`` with the derived targets of
        the loss terms whose weight is above 0 in that epoch (a weight of 0 skips the term: its
        target is then not computed). The flags live in shared memory, read by the DataLoader
        workers at every batch, persistent workers included; inactive targets are left out of
        the samples, and one batch never mixes (one read per batch).

        When a switch takes effect (Lightning 2.6.6, lightning/pytorch/loops/fit_loop.py and
        training_epoch_loop.py): from the second epoch of a fit on, ``FitLoop.on_advance_start``
        calls ``on_train_epoch_start`` before ``_TrainingEpochLoop.on_run_start`` calls
        ``iter(data_fetcher)``, which creates the epoch's DataLoader iterator (and only then do
        workers, persistent or not, receive the epoch's indices): the whole epoch follows the
        switch. The first epoch of a fit -- and the first one after a resume -- is different:
        ``FitLoop.setup_data()`` already calls ``iter()`` in ``FitLoop.run`` before
        ``on_train_epoch_start``, so with ``num_workers > 0`` the first ``prefetch_factor *
        num_workers`` batches may be built with the flags as they were (a race with the workers'
        start; with ``num_workers=0`` nothing is built early). Every configured target starts
        active, so those few batches may carry a target that epoch does not need (harmless: the
        loss ignores it) but lack none (unless the flags were switched off before this fit; a
        batch without a target its loss needs makes the loss compute it from the crop, see
        seglosses.derived).

        Raises:
            ValueError: an unknown name, or one not in ``derived_targets``.
        """
        self.derived.set_active(names)


class MapStore:
    """Whole-image maps kept on disk (``<paths.cache_dir>/derived_maps/``), computed once per mask file.

    Without ``data.cache`` every sample would compute its image's maps again in every epoch: two
    feature transforms of the whole image per class, more than decoding the image, and a thinning.
    The store keeps each map as a ``.npy`` named by a hash of its kind, the mask files' paths, sizes
    and modification times, the task and the spacing (a changed mask gets a new entry), written to a temporary name and
    renamed into place (workers writing the same map at once both succeed), and read back with
    ``numpy.load`` (no pickle). A store that cannot be written says so once and maps are computed.
    """

    VERSION = 1  # bump when the maps' definition changes: old entries are then never read

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.writable = True

    def path(self, key: str) -> Path:
        digest = hashlib.sha1(f"v{self.VERSION}|{key}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def load(self, key: str) -> np.ndarray | None:
        try:
            return np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError):  # absent, or cut short by a killed writer: computed again
            return None

    def save(self, key: str, value: np.ndarray) -> None:
        if not self.writable:
            return
        path = self.path(key)
        temp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npy")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(temp, value, allow_pickle=False)
            os.replace(temp, path)
        except OSError as err:
            self.writable = False
            warnings.warn(f"Distance maps and skeletons cannot be kept in {self.folder} ({err}): they are computed for every "
                          "sample instead (slower). Set paths.cache_dir to a writable folder.", stacklevel=2)


def _as_channels(value: Any) -> torch.Tensor:
    """The transformed distance map as float32 ``[C, H, W]`` (ToTensorV2 has transposed it)."""
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(
        np.moveaxis(np.asarray(value), -1, 0)))
    return tensor.float()
