"""The training patch size of volumes: given (``data.crop_size``) or planned from the fingerprint.

Planned (``crop_size: null``), nnU-Net style (:func:`auto_patch_size`):

1. start from the fingerprint's median shape (voxels), each axis rounded *up* to a multiple of
   ``divisor`` (nnU-Net pads its patch to the network's divisibility the same way; with
   ``pad=false`` rounded *down*, and no larger than the smallest case, so that it fits every case);
2. while the patch holds more than ``patch_budget`` voxels, shrink by ``divisor`` the axis whose
   *physical* size (voxels x median spacing) is the largest -- among the axes still above
   ``divisor`` -- so the patch stays as close to a cube in millimetres as the budget allows
   (thick slices keep fewer voxels along z). nnU-Net shrinks the axis largest relative to the
   median shape and measures the budget in GPU memory; a voxel budget is the CPU-friendly stand-in.

Every axis ends a multiple of ``divisor`` (default 8: three halvings; the network's own
divisibility -- segtrain/network3d.py's ``net.divisor`` -- may ask for more, pass it as
``data.divisor``) and at least ``divisor``; the product is at most ``patch_budget`` unless even
``divisor`` on every axis exceeds it (an error).

Given (``crop_size: [D, H, W]``): each axis a multiple of ``divisor``. With ``pad=true`` an axis
larger than every training case shrinks to the largest case's size rounded up to ``divisor``
(a folder of 40-slice volumes does not train on 128 slices of padding), as the 2D crop does; with
``pad=false`` the patch must fit in every training case (:func:`check_fits`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def round_up(n: float, multiple: int) -> int:
    return int(-(-int(np.ceil(n)) // multiple) * multiple)


def round_down(n: float, multiple: int) -> int:
    return int(n // multiple) * multiple


def divisors(divisor: int | Sequence[int], dims: int) -> list[int]:
    """``divisor`` as one positive int per spatial axis.

    Raises:
        ValueError: not positive, or a list of the wrong length.
    """
    values = [int(divisor)] * dims if isinstance(divisor, (int, np.integer)) else [int(d) for d in divisor]
    if len(values) != dims or min(values) < 1:
        raise ValueError(f"data.divisor must be a positive int or one per spatial axis ({dims}), got {divisor!r}")
    return values


def auto_patch_size(median_shape: Sequence[float], spacing: Sequence[float], budget: int,
                    divisor: int | Sequence[int] = 8, max_shape: Sequence[int] | None = None) -> list[int]:
    """The planned patch (module docstring).

    Args:
        median_shape: the fingerprint's median shape per axis (voxels).
        spacing: the median spacing per axis (the physical size that decides which axis shrinks).
        budget: the most voxels a patch may hold (``data.patch_budget``).
        divisor: every axis a multiple of it (an int, or one per axis).
        max_shape: with ``pad=false``, the smallest case's shape: the patch is rounded down and never exceeds it.

    Raises:
        ValueError: a budget below ``divisor`` on every axis; with ``max_shape``, an axis smaller than ``divisor``.
    """
    div = divisors(divisor, len(median_shape))
    if max_shape is None:
        patch = [max(d, round_up(n, d)) for n, d in zip(median_shape, div)]
    else:
        patch = [round_down(min(n, m), d) for n, m, d in zip(median_shape, max_shape, div)]
        small = [a for a, (p, d) in enumerate(zip(patch, div)) if p < d]
        if small:
            raise ValueError(f"data.pad=false: the smallest training case, {list(max_shape)} voxels, holds no patch "
                             f"of multiples of {div} (axis {small[0]}): set data.pad=true, or a smaller data.divisor")
    floor = int(np.prod(div))
    if int(budget) < floor:
        raise ValueError(f"data.patch_budget={budget} voxels is below the smallest patch {div} ({floor} voxels): "
                         f"raise it (e.g. {128 ** len(div)} = 128^{len(div)})")
    spacing = [float(s) for s in spacing]
    while int(np.prod(patch)) > int(budget):
        shrinkable = [a for a in range(len(patch)) if patch[a] > div[a]]
        axis = max(shrinkable, key=lambda a: (patch[a] * spacing[a], patch[a]))
        patch[axis] -= div[axis]
    return patch


def check_crop_size(crop_size: Sequence[int], dims: int, divisor: int | Sequence[int]) -> list[int]:
    """``data.crop_size``: one size per spatial axis, each a positive multiple of ``divisor``.

    Raises:
        ValueError: naming the axis and a fixed value.
    """
    crop = [int(c) for c in crop_size]
    if len(crop) != dims:
        raise ValueError(f"data.crop_size={list(crop_size)} must give one size per spatial axis of this "
                         f"{dims}D dataset ({'[D, H, W]' if dims == 3 else '[H, W]'}), or null to plan it")
    div = divisors(divisor, dims)
    bad = [a for a, (c, d) in enumerate(zip(crop, div)) if c < d or c % d]
    if bad:
        fixed = [max(d, round_up(c, d)) for c, d in zip(crop, div)]
        raise ValueError(f"data.crop_size={crop}: axis {bad[0]} is not a multiple of data.divisor={div[bad[0]]} "
                         f"(the network halves the patch; it is also the sliding window). Use e.g. {fixed}.")
    return crop


def effective_patch(crop: Sequence[int], shapes: Sequence[Sequence[int]], divisor: int | Sequence[int]) -> list[int]:
    """With ``pad=true``: ``crop``, each axis at most the largest training case's size rounded up to ``divisor``."""
    div = divisors(divisor, len(crop))
    largest = np.max(np.asarray(shapes), axis=0)
    return [min(int(c), max(d, round_up(n, d))) for c, n, d in zip(crop, largest, div)]


def check_fits(patch: Sequence[int], shapes: Sequence[Sequence[int]], names: Sequence[str]) -> None:
    """With ``pad=false``: every training case must hold the patch on every axis.

    Raises:
        ValueError: naming the patch, the case(s) and their shape, and the fixes.
    """
    patch = [int(p) for p in patch]
    small = [i for i, shape in enumerate(shapes) if any(n < p for n, p in zip(shape, patch))]
    if not small:
        return
    fits = [int(v) for v in np.min(np.asarray(shapes), axis=0)]
    fix = (f"lower data.crop_size to at most {fits} (the smallest case's shape, rounded down to data.divisor), "
           "or set data.pad=true (smaller cases are then padded with the ignore value, which no loss or metric counts)")
    if len(small) == len(shapes):
        largest = max(range(len(shapes)), key=lambda i: int(np.prod(shapes[i])))
        raise ValueError(f"data.crop_size={patch} is larger than every training case with data.pad=false: even "
                         f"case {names[largest]} is {list(shapes[largest])} voxels. Fix: {fix}.")
    i = small[0]
    raise ValueError(f"data.pad=false: training case {names[i]} is {list(shapes[i])} voxels, smaller than the "
                     f"{patch} patch ({len(small)} of {len(shapes)} training cases are). Fix: {fix}.")
