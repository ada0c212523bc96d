"""Generated data shaped the way microscopes and multispectral cameras make it (tests, benchmarks).

:func:`write_sensor_dataset` writes images that an 8-bit RGB pipeline would ruin:

* low-contrast 16-bit images: a background around ``background`` (e.g. 1000 counts) with Gaussian
  noise, objects ``contrast`` counts brighter (e.g. 40) -- squeezed to 8 bits this is one grey level;
* several channels (4: RGB + NIR, 13 bands ...) where the objects may show in one channel only
  (``object_channel``), so dropping a channel drops the signal;
* odd, mixed sizes, and binary masks saved as 0/255 PNGs as annotation tools write them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def sensor_sample(
    rng: np.random.Generator,
    height: int,
    width: int,
    channels: int = 1,
    dtype: str = "uint16",
    background: float = 1000.0,
    contrast: float = 40.0,
    noise: float = 6.0,
    object_channel: int | None = None,
    objects: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """``(image [H, W, C] of dtype, mask uint8 [H, W] in {0, 1})``: noisy background, a few bright ellipses.

    ``object_channel``: the only channel where the objects show (``None``: all channels).
    """
    mask_img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_img)
    for _ in range(objects):
        r = rng.uniform(0.08, 0.18) * min(height, width)
        cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
        ry, rx = r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.3)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    mask = np.array(mask_img, dtype=np.uint8)
    image = rng.normal(background, noise, size=(height, width, channels))
    # Each channel its own level (the same in every image), as the bands of a multispectral camera differ.
    image += np.random.default_rng(channels).uniform(-0.2, 0.2, size=(1, 1, channels)) * background
    lit = np.zeros(channels, dtype=bool)
    lit[slice(None) if object_channel is None else object_channel] = True
    image[..., lit] += mask[..., None] * contrast
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        image = np.clip(np.round(image), info.min, info.max)
    return image.astype(dtype), mask


def write_sensor_dataset(
    root: str | Path,
    sizes: Sequence[tuple[int, int]],
    *,
    channels: int = 1,
    dtype: str = "uint16",
    background: float = 1000.0,
    contrast: float = 40.0,
    noise: float = 6.0,
    object_channel: int | None = None,
    image_format: str = "tif",
    mask_values: tuple[int, int] = (0, 255),
    val_every: int = 4,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}/images/<i>.<image_format>`` + ``masks/<i>.png``, one per ``(height, width)``.

    Every ``val_every``-th sample goes to ``val/``; ``val_every=0``: ``root/images`` + ``root/masks``
    without split folders (the datamodule then splits by ``data.val_fraction``). Images: ``tif`` (tifffile, any channel count and
    dtype), ``png`` (1, 3 or 4 channels of uint8 or 1 of uint16) or ``npy``. Masks: 8-bit PNGs with
    ``mask_values`` = (background, foreground), 0/255 by default.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i, (h, w) in enumerate(sizes):
        split = ("val" if i % val_every == val_every - 1 else "train") if val_every else ""
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        image, mask = sensor_sample(rng, h, w, channels, dtype, background, contrast, noise, object_channel)
        path = root / split / "images" / f"s{i:03d}.{image_format}"
        if image_format == "tif":
            import tifffile

            photometric = "rgb" if channels == 3 else "minisblack"
            if channels == 1:
                tifffile.imwrite(path, image[..., 0], photometric="minisblack")
            else:  # samples per pixel, interleaved: how cameras write RGB+NIR and band stacks
                tifffile.imwrite(path, image, photometric=photometric, planarconfig="contig")
        elif image_format == "npy":
            np.save(path, image)
        elif image_format == "png":
            Image.fromarray(image[..., 0] if channels == 1 else image).save(path)
        else:
            raise ValueError(f"image_format must be tif, png or npy, got {image_format!r}")
        off, on = mask_values
        Image.fromarray(np.where(mask > 0, on, off).astype(np.uint8)).save(root / split / "masks" / f"s{i:03d}.png")
    return root
