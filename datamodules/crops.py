"""Training on random crops at native resolution (the default of ``data=folder``).

The crop stage runs before the configured ``train_transforms`` (flips, colour, normalise):

1. optional random rescale (``scale_range = [lo, hi]``: the image is scaled by a factor drawn
   from that range, as mmseg's RandomResize);
2. ``PadIfNeeded`` to the crop size; padded mask pixels get ``ignore_index``, so no loss or
   metric counts them (they are never background);
3. a random crop; a fraction ``foreground_fraction`` of the crops is centred on a labelled
   (non-background) pixel (``CropNonEmptyMaskIfExists``, nnU-Net's foreground oversampling), so
   rare, small and thin classes are seen.

The crop never exceeds what the data needs: with every image smaller than ``crop_size`` the
effective crop is the largest image side rounded up to the network's stride
(:func:`effective_crop`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import albumentations as A
import cv2
from PIL import Image

#: smp encoders halve the resolution 5 times: crops and windows are multiples of 32.
STRIDE = 32


def round_up(n: int, multiple: int = STRIDE) -> int:
    return -(-int(n) // multiple) * multiple


def image_sizes(paths: Iterable[Path]) -> list[tuple[int, int]]:
    """``(height, width)`` of each image file, read from the header only (no decoding)."""
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append((image.height, image.width))
    return sizes


def effective_crop(sizes: Sequence[tuple[int, int]], crop_size: int, stride: int = STRIDE) -> int:
    """The crop side actually used: ``crop_size``, or less when every image is smaller.

    ``min(crop_size, largest image side rounded up to stride)``: a folder of 128 px images
    trains on 128 px crops rather than on 512 px of padding.
    """
    largest = max(max(h, w) for h, w in sizes)
    return min(int(crop_size), round_up(largest, stride))


def check_crop_size(crop_size: int, stride: int = STRIDE) -> int:
    crop = int(crop_size)
    if crop < stride or crop % stride:
        raise ValueError(
            f"data.crop_size={crop_size} is not a multiple of the network's stride {stride}: the crop is also the "
            f"sliding window of validation, and the network halves it 5 times. Use e.g. {max(stride, round_up(crop, stride))}."
        )
    return crop


def needs_padding(sizes: Sequence[tuple[int, int]], crop: int, scale_range: Sequence[float] | None) -> bool:
    low = min(scale_range) if scale_range else 1.0
    return any(min(h, w) * low < crop for h, w in sizes)


def crop_stage(
    crop: int,
    ignore_index: int | None,
    foreground_fraction: float = 0.5,
    scale_range: Sequence[float] | None = None,
) -> list[A.BasicTransform]:
    """The albumentations transforms of the crop stage (module docstring), in order."""
    stage: list[A.BasicTransform] = []
    if scale_range is not None:
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"data.scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        # RandomScale draws the factor 1 + U(limit): [lo, hi] is the limit [lo - 1, hi - 1].
        stage.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0))
    fill_mask = 0 if ignore_index is None else ignore_index  # only used when padding is needed (checked by the caller)
    stage.append(A.PadIfNeeded(min_height=crop, min_width=crop, position="random", fill=0, fill_mask=fill_mask))
    ignored = None if ignore_index is None else [int(ignore_index)]
    fraction = float(foreground_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.foreground_fraction must be in [0, 1], got {foreground_fraction}")
    stage.append(
        A.OneOf(
            [
                A.CropNonEmptyMaskIfExists(height=crop, width=crop, ignore_values=ignored, p=fraction),
                A.RandomCrop(height=crop, width=crop, p=1.0 - fraction),
            ],
            p=1.0,
        )
    )
    return stage
