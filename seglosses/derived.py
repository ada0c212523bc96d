"""Derived targets: what some losses need beyond the mask (distance maps, tubed skeletons).

A loss that needs one names it in its class attribute ``derived_targets`` (e.g.
``BoundaryLoss.derived_targets == ("distance",)``) and takes it as a keyword of its forward
(``loss(logits, target, distance=...)``). :class:`~seglosses.CombinedLoss` hands each term the
derived targets it names; the training harness computes them in the data pipeline
(datamodules/derived.py) only when a configured loss needs them. Called without them, the loss
computes them from the target itself with the functions below (slower: on the CPU, every step,
and on the crop the loss sees rather than on the whole image).

Two derived targets, one canonical form each, from which every loss takes its own convention:

* ``distance``: the *signed Euclidean distance map* of each class channel, float32
  ``[C, *spatial]`` (``[B, C, *spatial]`` batched)::

      d_c(x) = edt(not c)(x) - edt(c)(x)

  positive outside the class (the distance to its nearest pixel), negative inside (minus the
  distance to the nearest pixel of another class), in pixels, or in the units of ``spacing``.
  A class absent from the image, or covering all of it, has no boundary: its map is 0
  everywhere (as MONAI's ``BoundaryLoss`` and the authors' ``one_hot2dist`` for an empty class).
  Kervadec's boundary map is ``d + 1`` inside (``-(edt(c) - 1)``), MONAI's Hausdorff field is
  ``|d|``. Ignored pixels belong to no class (they count as "not c" for every class).
* ``skeleton``: the *tubed skeleton* of Skeleton Recall (Kirchhoff et al., ECCV 2024), in the
  layout of the mask it comes from: the skeleton (``skimage.morphology.skeletonize``) of the
  foreground, dilated twice by the cross footprint (``skimage.morphology.dilation``), kept inside
  the foreground and, for class indices, labelled with the class of each pixel (0 elsewhere), as
  MIC-DKFZ/Skeleton-Recall's ``SkeletonTransform`` (``skel *= seg``). Binary and multilabel channels are skeletonised one by one.

The distance maps need scipy and the skeletons scikit-image: ``pip install "seglosses[distance]"``
/ ``"seglosses[skeleton]"`` (the rest of seglosses needs torch alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

try:
    import numpy as np
except ImportError:  # a torch-only install: the extras bring numpy with scipy / scikit-image
    np = None

#: The names a loss may list in ``derived_targets`` (and the batch keys that carry them).
DISTANCE = "distance"
SKELETON = "skeleton"
NAMES = (DISTANCE, SKELETON)


def _scipy_edt():
    try:
        if np is None:
            raise ImportError("numpy")
        from scipy.ndimage import distance_transform_edt
    except ImportError as err:  # pragma: no cover - scipy is in every harness install
        raise ImportError(
            "seglosses computes distance maps with scipy (scipy.ndimage.distance_transform_edt), which is not "
            "installed: pip install 'seglosses[distance]', or pass the maps yourself (distance=...)."
        ) from err
    return distance_transform_edt


def _skimage():
    try:
        if np is None:
            raise ImportError("numpy")
        from scipy.ndimage import binary_dilation  # scikit-image depends on scipy
        from skimage.morphology import skeletonize
    except ImportError as err:  # pragma: no cover - scikit-image is in every harness install
        raise ImportError(
            "seglosses computes skeletons with scikit-image (skimage.morphology.skeletonize), which is not "
            "installed: pip install 'seglosses[skeleton]', or pass the skeletons yourself (skeleton=...)."
        ) from err
    return skeletonize, binary_dilation


def check_spacing(spacing: Sequence[float] | None, ndim: int | None = None,
                  owner: str | None = None) -> tuple[float, ...] | None:
    """``spacing`` as finite positive floats, one per spatial axis when ``ndim`` is given; or ``None`` (unit pixels).

    ``owner`` (a loss's name) starts the messages. The one check of a spacing in seglosses: the
    losses' ``spacing`` option and the distance maps alike.
    """
    if spacing is None:
        return None
    where = f"{owner}: " if owner else ""
    try:
        if isinstance(spacing, (str, bytes)) or len(spacing) == 0:
            raise TypeError
        values = tuple(float(s) for s in spacing)
    except TypeError:
        raise ValueError(f"{where}spacing must be a list with the size of a pixel along each spatial axis "
                         f"(e.g. [1.0, 0.5, 0.5]) or None, got {spacing!r}") from None
    except ValueError:
        raise ValueError(f"{where}spacing must be a list of numbers, got {spacing!r}") from None
    if any(isinstance(s, bool) for s in spacing) or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"{where}spacing must hold finite sizes > 0, got {list(spacing)}")
    if ndim is not None and len(values) != ndim:
        raise ValueError(f"{where}spacing has {len(values)} values but the data has {ndim} spatial axes; "
                         f"give one size per axis, e.g. {[1.0] * ndim}")
    return values


def _edt(inside: np.ndarray, sampling: tuple[float, ...] | None) -> np.ndarray:
    """float32 ``scipy.ndimage.distance_transform_edt(inside, sampling)`` (``inside`` holds a False pixel).

    scipy's feature transform (the nearest False pixel of every pixel, in C) is the work; the
    distances are taken here from the integer offsets -- squared in int64, exact, one float32
    square root -- where scipy's own distances take float64 passes (a third of its time).
    """
    edt = _scipy_edt()
    nearest = edt(inside, sampling=sampling, return_distances=False, return_indices=True)
    for axis, size in enumerate(inside.shape):  # offsets to the nearest False pixel, in place
        shape = [1] * inside.ndim
        shape[axis] = size
        nearest[axis] -= np.arange(size, dtype=nearest.dtype).reshape(shape)
    if sampling is None:
        np.multiply(nearest, nearest, out=nearest)
        return np.sqrt(nearest.sum(axis=0, dtype=np.int64).astype(np.float32))
    offsets = nearest.astype(np.float32)
    for axis, step in enumerate(sampling):
        offsets[axis] *= step
    np.multiply(offsets, offsets, out=offsets)
    return np.sqrt(offsets.sum(axis=0))


def _box(inside: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of the True pixels, grown by ``margin`` (clipped to the array)."""
    box = []
    for axis in range(inside.ndim):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), int(hit[-1]) + margin + 1))
    return tuple(box)


def signed_distance(channels: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed distance map of each channel of a boolean ``[C, *spatial]`` array (module doc).

    Args:
        channels: ``[C, *spatial]``, True where the pixel belongs to class ``c``.
        spacing: the size of a pixel along each spatial axis (e.g. ``[0.5, 0.5]`` mm), or ``None``.

    Returns:
        float32 ``[C, *spatial]``: ``edt(not c) - edt(c)`` with scipy's ``distance_transform_edt``;
        0 for a channel that is all False or all True. Only the classes present cost anything, and
        ``edt(c)`` (non-zero inside the class only) runs on the class's bounding box grown by one
        pixel: the nearest pixel outside the class always lies within it.
    """
    _scipy_edt()
    channels = np.asarray(channels, dtype=bool)
    sampling = check_spacing(spacing, channels.ndim - 1)
    out = np.zeros(channels.shape, dtype=np.float32)
    for c, inside in enumerate(channels):
        if not inside.any() or inside.all():
            continue
        out[c] = _edt(~inside, sampling)
        box = _box(inside, 1)
        out[(c, *box)] -= _edt(inside[box], sampling)
    return out


def class_channels(mask: np.ndarray, mode: str, num_classes: int) -> np.ndarray:
    """One sample's mask as boolean class channels ``[C, *spatial]``.

    Args:
        mask: multiclass: class indices ``[*spatial]``; binary (``C = 1``) and multilabel:
            ``[C, *spatial]`` of 0/1 (a soft target counts from 0.5, as MONAI thresholds it). A value
            above 1 (an ignore value, padding) is in no channel.
        mode: ``binary`` | ``multiclass`` | ``multilabel``.
        num_classes: the channels of the loss (binary: 1; multiclass: incl. background).
    """
    mask = np.asarray(mask)
    if mode == "multiclass":
        return mask[None] == np.arange(num_classes).reshape(-1, *([1] * mask.ndim))
    return _foreground(mask)


def _foreground(mask: np.ndarray) -> np.ndarray:
    """Binary/multilabel: in the class from 0.5 (soft labels), never above 1 (ignore or pad values)."""
    return (mask >= 0.5) & (mask <= 1)


def tubed_skeleton(mask: np.ndarray, mode: str, ignore_index: int | float | None = None) -> np.ndarray:
    """The tubed skeleton of a mask, in the mask's own layout and dtype (module doc).

    Args:
        mask: multiclass: class indices ``[*spatial]``; binary (``C = 1``) and multilabel:
            ``[C, *spatial]`` of 0/1 (any other value, e.g. an ignore value, is not foreground).
        mode: ``binary`` | ``multiclass`` | ``multilabel``.
        ignore_index: multiclass: the value of ignored pixels, never foreground.

    Returns:
        multiclass: the class of each skeleton pixel, 0 elsewhere; binary/multilabel: 0/1 per channel.
    """
    skeletonize, dilation = _skimage()
    mask = np.asarray(mask)

    def tube(foreground: np.ndarray) -> np.ndarray:
        if not foreground.any():
            return np.zeros(foreground.shape, dtype=bool)
        # Two dilations by the cross (connectivity 1): skimage's dilation(dilation(.)) of the
        # authors' code, voxel for voxel, in half the time (scipy's binary form).
        return dilation(skeletonize(foreground), iterations=2)

    if mode == "multiclass":
        foreground = mask > 0
        if ignore_index is not None:
            foreground &= mask != ignore_index
        return np.where(tube(foreground) & foreground, mask, 0).astype(mask.dtype, copy=False)
    return np.stack([tube(_foreground(ch)) & _foreground(ch) for ch in mask]).astype(mask.dtype, copy=False)


def distance_from_target(target: Tensor, mode: str, num_classes: int,
                         spacing: Sequence[float] | None = None) -> Tensor:
    """``distance`` of a batch of targets, for a loss called without it: float32 ``[B, C, *spatial]``.

    ``target`` is the loss's target (multiclass: ``[B, *spatial]`` indices; binary/multilabel:
    ``[B, C, *spatial]``). Runs on the CPU (scipy) and returns on ``target``'s device.
    """
    _scipy_edt()  # the install's message before torch's own ("Numpy is not available")
    host = target.detach().cpu().numpy()
    maps = [signed_distance(class_channels(t, mode, num_classes), spacing) for t in host]
    return torch.from_numpy(np.stack(maps)).to(target.device)


def skeleton_from_target(target: Tensor, mode: str, ignore_index=None) -> Tensor:
    """``skeleton`` of a batch of targets, for a loss called without it: the target's layout and dtype."""
    _skimage()
    host = target.detach().cpu().numpy()
    return torch.from_numpy(np.stack([tubed_skeleton(t, mode, ignore_index) for t in host])).to(target.device)
