"""Training patches of volumes: nnU-Net's class-centred oversampling, padding with the ignore value.

A patch is a box of ``patch`` voxels (``[D, H, W]``, or ``[H, W]`` for 2D datasets) cut from a
whole case. :class:`PatchSampler` chooses where:

* with probability ``foreground_fraction`` the patch is *class-centred*: a class is drawn
  uniformly among the foreground classes present in the case (values ``1 .. num_classes - 1``
  holding at least one voxel; the background, the ignore label and the pad value never), then one
  of that class's stored voxel locations uniformly (:func:`foreground_locations`), and the patch
  is centred there -- shifted to stay inside the volume where the volume is larger than the patch,
  so the chosen voxel is always inside the patch. A case without any foreground class gives a
  random patch instead (nnU-Net does the same).
* otherwise the patch is uniformly random: every position whose box fits the volume alike.

"As often as documented", exactly: each patch independently is class-centred with probability
``f = foreground_fraction``, and a centred patch picks each of the ``K`` classes present in its
case with probability ``1 / K``. So a class present in a case is the centre of a fraction
``f / K`` of that case's patches, however few voxels it has (a class of 3 voxels and one of
100,000 alike), and it is *inside* at least that fraction of them (random patches add to it).
nnU-Net's default ``oversample_foreground_percent = 0.33`` is ``f``; nnU-Net forces the last
``round(0.33 * batch_size)`` samples of every batch (with batch 2: one of two, 50 %), where this
draws per patch (its ``probabilistic_oversampling`` variant): the share is ``f`` whatever the batch
size. tests/test_volume_datamodule.py checks ``f / K`` statistically.

Locations: per case and class, up to :data:`MAX_LOCATIONS` voxels (nnU-Net's 10,000; at least
:data:`MIN_COVERAGE` of the class's voxels, nnU-Net's 1 %), drawn without replacement by a
generator seeded with the seed and the case id: computed once per case and kept
(:class:`LocationCache`).

Padding: where the volume is smaller than the patch along an axis, the box extends past the
volume (its start is drawn in ``[size - patch, 0]``, so the volume sits at a random place inside
the patch) and :func:`extract` fills the outside: image 0, mask the pad value (the dataset's
ignore label, else :func:`datamodules.masks.reserved_pad_value`), which the harness hands to the
losses and metrics as their ``ignore_index``: padded voxels change neither.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: nnU-Net's num_samples of collect_foreground_locations: stored voxels per class and case.
MAX_LOCATIONS = 10_000
#: nnU-Net's min_percent_coverage: at least this share of a class's voxels is stored.
MIN_COVERAGE = 0.01


def case_seed(seed: int, case_id: str) -> list[int]:
    """The generator seed of one case: the seed and a stable hash of the id (the same whatever the case order)."""
    return [int(seed), zlib.crc32(case_id.encode("utf-8"))]


def foreground_locations(label: np.ndarray, classes: Sequence[int], seed: Sequence[int] | int,
                         max_locations: int = MAX_LOCATIONS) -> dict[int, np.ndarray]:
    """Flat voxel indices of each class of ``classes`` in ``label``, up to ``max_locations`` each (module docstring).

    Args:
        label: the case's label map, ``[*spatial]``.
        classes: the class values to look for (the foreground classes).
        seed: seeds the draw (see :func:`case_seed`).
        max_locations: voxels kept per class (at least ``MIN_COVERAGE`` of the class's voxels).

    Returns:
        ``{class: int64 flat indices}`` (sorted) for the classes present; absent classes are left out.
    """
    flat = np.asarray(label).ravel()
    rng = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for value in classes:
        hits = np.flatnonzero(flat == value)
        if hits.size == 0:
            continue
        keep = max(min(int(max_locations), hits.size), int(np.ceil(hits.size * MIN_COVERAGE)))
        if keep < hits.size:
            hits = np.sort(rng.choice(hits, size=keep, replace=False))
        out[int(value)] = hits.astype(np.int64, copy=False)
    return out


class LocationCache:
    """The foreground locations of every case, computed on first use and kept.

    Args:
        classes: the foreground class values (``1 .. num_classes - 1``).
        seed: the data seed (:func:`case_seed`).

    Forked DataLoader workers inherit what the main process filled in before they started (the
    datamodule fills it in setup() when ``cache=true``); otherwise each worker fills its own copy.
    """

    def __init__(self, classes: Sequence[int], seed: int) -> None:
        self.classes = tuple(int(c) for c in classes)
        self.seed = int(seed)
        self.by_case: dict[str, dict[int, np.ndarray]] = {}

    def get(self, case_id: str, label: np.ndarray) -> dict[int, np.ndarray]:
        """The case's locations (``label``: its label map, used the first time only)."""
        found = self.by_case.get(case_id)
        if found is None:
            found = self.by_case[case_id] = foreground_locations(label, self.classes, case_seed(self.seed, case_id))
        return found


@dataclass(frozen=True)
class Patch:
    """Where a patch lies: ``start`` per axis (negative or past the end where it is padded), its
    ``size``, and the class it was centred on (``None``: a random patch) and the voxel."""

    start: tuple[int, ...]
    size: tuple[int, ...]
    centred_class: int | None = None
    centre: tuple[int, ...] | None = None


class PatchSampler:
    """Draws patch positions (module docstring) from its own generator.

    Args:
        patch: the patch size per spatial axis.
        foreground_fraction: the share of class-centred patches, in [0, 1].
        seed: seeds the generator (DataLoader workers reseed it: :meth:`reseed`).
    """

    def __init__(self, patch: Sequence[int], foreground_fraction: float, seed: int = 0) -> None:
        self.patch = tuple(int(p) for p in patch)
        if not self.patch or min(self.patch) < 1:
            raise ValueError(f"The patch size must be positive on every axis, got {list(patch)}")
        fraction = float(foreground_fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"data.foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.foreground_fraction = fraction
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """A new stream (one per DataLoader worker)."""
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict[str, Any]:
        """The generator's state (plain ints and strings: checkpoints load it with ``weights_only``)."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def _ranges(self, shape: Sequence[int]) -> list[tuple[int, int]]:
        """Per axis the allowed starts ``[low, high]``: inside the volume, or covering it where it is smaller."""
        return [(min(0, n - p), max(0, n - p)) for n, p in zip(shape, self.patch)]

    def sample(self, shape: Sequence[int], locations: dict[int, np.ndarray]) -> Patch:
        """One patch position in a volume of ``shape`` with the case's ``locations`` (:func:`foreground_locations`)."""
        if len(shape) != len(self.patch):
            raise ValueError(f"A volume of shape {tuple(shape)} and a patch of {list(self.patch)}: the patch needs "
                             f"one size per spatial axis ({len(shape)})")
        ranges = self._ranges(shape)
        present = sorted(c for c, hits in locations.items() if len(hits))
        if present and self.rng.random() < self.foreground_fraction:
            chosen = present[int(self.rng.integers(len(present)))]
            hits = locations[chosen]
            centre = np.unravel_index(int(hits[int(self.rng.integers(len(hits)))]), tuple(shape))
            start = tuple(int(min(max(c - p // 2, lo), hi)) for c, p, (lo, hi) in zip(centre, self.patch, ranges))
            return Patch(start, self.patch, chosen, tuple(int(c) for c in centre))
        start = tuple(int(self.rng.integers(lo, hi + 1)) for lo, hi in ranges)
        return Patch(start, self.patch)


def extract(array: np.ndarray, patch: Patch, fill: float | int) -> np.ndarray:
    """The patch of ``array`` (``[..., *spatial]``: leading axes kept), ``fill`` outside the volume.

    Returns:
        A new C-contiguous array ``[..., *patch.size]`` of ``array``'s dtype (never a view: the
        transforms after it may write in place, and ``array`` may be a cached volume).
    """
    spatial = array.shape[array.ndim - len(patch.size):]
    src, dst = [], []
    for start, size, n in zip(patch.start, patch.size, spatial):
        lo, hi = max(start, 0), min(start + size, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    lead = array.shape[: array.ndim - len(patch.size)]
    if all(s.start == 0 and s.stop == size for s, size in zip(dst, patch.size)):
        return np.array(array[(..., *src)], copy=True, order="C")
    out = np.full((*lead, *patch.size), fill, dtype=array.dtype)
    out[(..., *dst)] = array[(..., *src)]
    return out
