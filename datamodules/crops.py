"""Training on random crops at native resolution (the default of ``data=folder``).

The crop stage runs before the configured ``train_transforms`` (flips, colour, normalise):

1. optional random rescale (``scale_range = [lo, hi]``: the image is scaled by a factor drawn
   from that range, as mmseg's RandomResize);
2. ``PadIfNeeded`` to the crop size; padded mask pixels get the files' ``ignore_index``, or a
   reserved value no class uses (:func:`datamodules.masks.reserved_pad_value`), which the harness
   hands to the losses and metrics: no loss or metric counts them (they are never background);
3. a random crop; a fraction ``foreground_fraction`` of the crops is class-centred
   (:class:`ClassCentredCrop`: a class drawn uniformly among those present in the mask, then a
   pixel of that class, as nnU-Net's foreground oversampling), so rare, small and thin classes
   are seen as often as large ones.

With padding (``pad=True``, the default) the crop never exceeds what the data needs: with every
image smaller than ``crop_size`` the effective crop is the largest image side rounded up to the
network's stride (:func:`effective_crop`). Without padding (``pad=False``) the crop is
``crop_size`` and must fit in every training image (:func:`fitting_crop`), and validation, test
and predict refuse an image smaller than the window (:func:`check_fits_window`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

from .io import read_header
from .masks import distinct_values

# albumentations 2.0.8: BaseCrop (a DualTransform that crops image, mask(s), bboxes and keypoints
# to ``params["crop_coords"] = (x_min, y_min, x_max, y_max)`` with its crops.functional helpers)
# is not exported at the package's top level. This is the project's one import of that module
# path; ClassCentredCrop below is the only user. tests/test_native.py fails if it moves.
from albumentations.augmentations.crops.transforms import BaseCrop

#: Crops and windows are multiples of 32: an smp encoder halves the resolution ``encoder_depth``
#: times (at most 5; conf/model/unet.yaml: 4, stride 16), so 32 fits every depth.
STRIDE = 32


def round_up(n: int, multiple: int = STRIDE) -> int:
    return -(-int(n) // multiple) * multiple


def image_sizes(paths: Iterable[Path]) -> list[tuple[int, int]]:
    """``(height, width)`` of each image file, read from the header only (no decoding)."""
    return [read_header(path).size for path in paths]


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
            f"data.crop_size={crop_size} is not a multiple of {stride}: the crop is also the sliding window of "
            f"validation, and the network halves it once per encoder stage (model.encoder_depth, up to 5: "
            f"2**5 = {stride}). Use e.g. {max(stride, round_up(crop, stride))}."
        )
    return crop


def round_down(n: float, multiple: int = STRIDE) -> int:
    return int(n // multiple) * multiple


def needs_padding(sizes: Sequence[tuple[int, int]], crop: int, scale_range: Sequence[float] | None) -> bool:
    low = min(scale_range) if scale_range else 1.0
    return any(min(h, w) * low < crop for h, w in sizes)


def fitting_crop(
    sizes: Sequence[tuple[int, int]],
    crop_size: int,
    scale_range: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> int:
    """The crop side with padding off (``data.pad=false``): ``crop_size``, which must fit in every image.

    Every training image's shorter side, times the smallest rescale factor of ``scale_range``,
    must be at least ``crop_size``; nothing shrinks the crop, since a crop larger than an image
    needs padding. ``names[i]`` names image ``i`` in the error.

    Raises:
        ValueError: the crop is larger than every image, or than some image, naming the crop,
            the image and size, and the fixes (a smaller ``data.crop_size``, or ``data.pad=true``).
    """
    crop = int(crop_size)
    low = min(scale_range) if scale_range else 1.0
    scaled = f" at the smallest rescale factor {low:g} (data.scale_range)" if low != 1.0 else ""
    sides = [min(h, w) * low for h, w in sizes]
    fits = round_down(min(sides))
    shrink = (f"lower data.crop_size to {fits} or less (the largest multiple of 32 that fits every training image)"
              if fits >= STRIDE else "no multiple of 32 fits the smallest training image")
    pad_fix = "or set data.pad=true (images are then padded to the crop, the padding counted by no loss or metric)"
    if max(sides) < crop:
        big = max(range(len(sizes)), key=lambda i: sides[i])
        h, w = sizes[big]
        raise ValueError(
            f"data.crop_size={crop} is larger than every training image with data.pad=false: the largest, "
            f"{names[big] + ' ' if names else ''}{w}x{h} (WxH){scaled}, is smaller than the {crop}x{crop} crop. "
            f"Fix: {shrink}, {pad_fix}."
        )
    small = [i for i, side in enumerate(sides) if side < crop]
    if small:
        i = min(small, key=lambda k: sides[k])
        h, w = sizes[i]
        raise ValueError(
            f"data.pad=false: training image {names[i] + ' ' if names else ''}is {w}x{h} (WxH){scaled}, smaller "
            f"than the {crop}x{crop} crop ({len(small)} of {len(sizes)} training images are). "
            f"Fix: {shrink}, {pad_fix}."
        )
    return crop


def check_fits_window(size: tuple[int, int], window: int, name: str, fix: str | None = None) -> None:
    """With padding off, an image (``(height, width)``) smaller than the sliding window is an error.

    Raises:
        ValueError: naming the image, its size and the window, and ``fix`` (default: the training fixes).
    """
    h, w = (int(v) for v in size)
    if h >= window and w >= window:
        return
    fits = round_down(min(h, w))
    fix = fix or (
        (f"lower data.crop_size (the window) to {fits} or less, " if fits >= STRIDE else "")
        + "or set data.pad=true (images smaller than the window are then padded)"
    )
    raise ValueError(
        f"{name} is {w}x{h} (WxH), smaller than the {window}x{window} px sliding window, and data.pad=false "
        f"does not pad: {fix}."
    )


class ClassCentredCrop(BaseCrop):
    """A ``height`` x ``width`` crop centred on a pixel of a class drawn uniformly among the present ones.

    First a class is drawn uniformly among the classes present in the mask -- multiclass
    ``[H, W]``: the values other than 0 (background) and ``ignore_index``; binary ``[H, W]``: 1;
    multilabel ``[H, W, C]``: the channels holding a 1 -- then a pixel of that class uniformly,
    and the crop is centred there, shifted to stay inside the image (nnU-Net's foreground
    oversampling; per class, so a tiny class is centred as often as a large one, which a
    labelled pixel drawn uniformly -- albumentations' ``CropNonEmptyMaskIfExists`` -- does not do).
    A mask without any class gives a uniformly random crop. The image must be at least the crop
    size (pad it first: ``PadIfNeeded``).

    Usable in a config: ``_target_: datamodules.crops.ClassCentredCrop``.

    Args:
        height, width: the crop size in pixels.
        ignore_index: the "not labelled" mask value, never a class (``None``: none).
        p: probability of applying the transform.
    """

    def __init__(self, height: int, width: int, ignore_index: int | None = None, p: float = 1.0) -> None:
        super().__init__(p=p)
        if int(height) < 1 or int(width) < 1:
            raise ValueError(f"ClassCentredCrop: height and width must be >= 1, got {height}, {width}")
        self.height, self.width = int(height), int(width)
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "ignore_index")

    def _present(self, mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The flat mask to search and the classes present in it (multilabel: channel indices)."""
        if mask.ndim == 3:  # multilabel [H, W, C]: a channel is present when it holds a 1
            return mask, [c for c in range(mask.shape[-1]) if (mask[..., c] == 1).any()]
        flat = mask.ravel()
        return flat, [int(v) for v in distinct_values(flat) if v != 0 and v != self.ignore_index]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if data.get("mask") is None:
            raise ValueError("ClassCentredCrop needs a mask (call the pipeline with mask=...)")
        mask = np.asarray(data["mask"])
        h, w = mask.shape[:2]
        ch, cw = self.height, self.width
        if ch > h or cw > w:
            raise ValueError(
                f"ClassCentredCrop: the {cw}x{ch} (WxH) crop is larger than the {w}x{h} image: pad first "
                "(data.pad=true, PadIfNeeded) or lower data.crop_size."
            )
        searched, classes = self._present(mask)
        if classes:
            c = self.py_random.choice(classes)
            hits = np.flatnonzero(searched[..., c] == 1) if mask.ndim == 3 else np.flatnonzero(searched == c)
            y, x = divmod(int(hits[self.py_random.randrange(len(hits))]), w)
            y0 = min(max(y - ch // 2, 0), h - ch)
            x0 = min(max(x - cw // 2, 0), w - cw)
        else:
            y0, x0 = self.py_random.randint(0, h - ch), self.py_random.randint(0, w - cw)
        return {"crop_coords": (x0, y0, x0 + cw, y0 + ch)}


def crop_stage(
    crop: int,
    ignore_index: int | None,
    foreground_fraction: float = 0.5,
    scale_range: Sequence[float] | None = None,
    pad: bool = True,
) -> list[A.BasicTransform]:
    """The albumentations transforms of the crop stage (module docstring), in order.

    ``pad=False`` leaves out ``PadIfNeeded``: every (rescaled) image must then be at least
    ``crop`` on each side (:func:`fitting_crop` checks the training images at start-up).
    """
    stage: list[A.BasicTransform] = []
    if scale_range is not None:
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"data.scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        # RandomScale draws the factor 1 + U(limit): [lo, hi] is the limit [lo - 1, hi - 1].
        stage.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0))
    if pad:
        fill_mask = 0 if ignore_index is None else ignore_index  # only used when padding is needed (checked by the caller)
        stage.append(A.PadIfNeeded(min_height=crop, min_width=crop, position="random", fill=0, fill_mask=fill_mask))
    fraction = float(foreground_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.foreground_fraction must be in [0, 1], got {foreground_fraction}")
    stage.append(
        A.OneOf(
            [
                ClassCentredCrop(height=crop, width=crop, ignore_index=ignore_index, p=fraction),
                A.RandomCrop(height=crop, width=crop, p=1.0 - fraction),
            ],
            p=1.0,
        )
    )
    return stage
