"""Write the synthetic dataset to disk in the folder layout that FolderDataModule reads.

Used by ``scripts/make_folder_dataset.py`` (try the folder path without data of your own) and by
the tests (every image / mask format the folder datamodule accepts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .masks import class_palette, validate_task
from .synthetic import make_sample

MASK_FORMATS = ("01", "255", "palette_rgb", "palette_p", "16bit")


def _mask_image(mask: np.ndarray, mask_format: str, task: str, colors: np.ndarray) -> Image.Image:
    """Encode an index mask [H, W] (binary: 0/1) as a PIL image in ``mask_format`` (``colors[k]``: class k)."""
    if mask_format == "01":
        return Image.fromarray(mask.astype(np.uint8), mode="L")
    if mask_format == "255":
        if task == "multiclass":
            raise ValueError("mask_format=255 is for binary (and multilabel) masks; use 01 for index masks")
        return Image.fromarray((mask * 255).astype(np.uint8), mode="L")
    if mask_format == "16bit":
        scale = 65535 if task != "multiclass" else 1
        return Image.fromarray((mask.astype(np.uint16) * scale).astype(np.uint16))
    if mask_format == "palette_rgb":
        return Image.fromarray(colors[mask], mode="RGB")
    if mask_format == "palette_p":
        p = Image.fromarray(mask.astype(np.uint8), mode="P")
        p.putpalette(colors.reshape(-1).tolist())
        return p
    raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")


def write_folder_dataset(
    out: str | Path,
    task: str = "binary",
    num_classes: int = 1,
    num_samples: int = 20,
    image_size: int = 64,
    seed: int = 0,
    layout: str = "ratio",
    val_fraction: float = 0.2,
    image_format: str = "png",
    grayscale: bool = False,
    mask_format: str = "255",
) -> Path:
    """Write ``num_samples`` synthetic samples as image and mask files under ``out``.

    Args:
        out: target folder (created).
        task, num_classes: as for SyntheticDataModule.
        num_samples, image_size, seed: as for SyntheticDataModule.
        layout: ``ratio`` (``out/images`` + ``out/masks``) or ``split`` (``out/train/...`` + ``out/val/...``,
            the last ``round(num_samples * val_fraction)`` samples in val).
        val_fraction: share written to ``val/`` with ``layout=split``.
        image_format: ``png``, ``jpg`` or ``tif`` for the images (masks are always PNG: lossless).
        grayscale: write single-channel images.
        mask_format: ``01`` (values 0/1 or class indices), ``255`` (binary 0/255), ``16bit``
            (binary 0/65535 or 16-bit indices), ``palette_rgb`` (colours of
            :func:`~datamodules.masks.class_palette`; pass ``data.palette`` =
            ``class_palette(num_classes)``, binary: ``class_palette(2)``), ``palette_p`` ('P'-mode PNG of indices).

    Returns:
        ``Path(out)``.
    """
    validate_task(task, num_classes)
    if layout not in ("ratio", "split"):
        raise ValueError(f"layout must be 'ratio' or 'split', got {layout!r}")
    if image_format not in ("png", "jpg", "tif"):
        raise ValueError(f"image_format must be png, jpg or tif, got {image_format!r}")
    out = Path(out)
    colors = class_palette(max(num_classes, 2))  # binary and multilabel files hold 0/1
    n_val = int(round(num_samples * val_fraction)) if layout == "split" else 0
    for i in range(num_samples):
        sub = out if layout == "ratio" else out / ("val" if i >= num_samples - n_val else "train")
        (sub / "images").mkdir(parents=True, exist_ok=True)
        (sub / "masks").mkdir(parents=True, exist_ok=True)
        image, mask = make_sample(seed, i, image_size, task, num_classes)
        stem = f"sample_{i:04d}"
        pil = Image.fromarray(image).convert("L") if grayscale else Image.fromarray(image)
        pil.save(sub / "images" / f"{stem}.{image_format}", **({"quality": 95} if image_format == "jpg" else {}))
        if task == "multilabel":
            for k in range(num_classes):
                _mask_image(mask[..., k], mask_format, task, colors).save(sub / "masks" / f"{stem}_{k}.png")
        else:
            _mask_image(mask, mask_format, task, colors).save(sub / "masks" / f"{stem}.png")
    return out
