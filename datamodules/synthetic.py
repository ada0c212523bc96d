"""Synthetic segmentation data: shapes on noisy, textured backgrounds. Needs nothing on disk.

Each sample ``i`` is drawn from its own generator ``numpy.random.default_rng([seed, i])``, so a
dataset depends only on ``(seed, i)`` and the generation settings -- not on the order, the
process or the number of workers. Images are generated once in ``setup()`` (milliseconds per
hundred images) and kept in memory.

Picture: background = linear colour gradient + low-frequency blotches + (half of the time)
sinusoidal stripes; then 1..``max_shapes`` filled shapes of random kind, size, rotation and a
colour that contrasts with the background where it lands; then Gaussian pixel noise on all.

Masks per task (class ``k`` = shape kind ``SHAPES[k - 1]``):

* binary: 1 on every shape (all kinds), 0 on the background,
* multiclass: the kind of the top-most shape + 1 (shapes are opaque and occlude each other),
  0 on the background; ``num_classes - 1`` kinds are used,
* multilabel: channel ``k`` = all pixels of shapes of kind ``SHAPES[k]``, occluded parts included
  (shapes are drawn semi-transparent so overlaps stay visible); channels overlap.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .base import SegmentationDataModule, SegmentationDataset
from .masks import mask_dtype

SHAPES = ("circle", "rectangle", "triangle", "ellipse", "hexagon", "cross")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 [size, size, 3] texture in roughly 0..255: gradient + blotches + maybe stripes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, 2 * np.pi)
    t = np.cos(theta) * xx + np.sin(theta) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    image = c0 + t[..., None] * (c1 - c0)
    # Low-frequency blotches: a 4x4 random grid upsampled smoothly.
    grid = rng.normal(0, 18, size=(4, 4, 3)).astype(np.float32)
    image += cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        phi = rng.uniform(0, np.pi)
        period = rng.uniform(5, 16) / size
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin(2 * np.pi * (np.cos(phi) * xx + np.sin(phi) * yy) / period + phase)
        image += rng.uniform(8, 18) * stripes[..., None]
    return image


def _polygon(center: np.ndarray, radii: np.ndarray, angles: np.ndarray, rotation: float) -> np.ndarray:
    """int32 [N, 2] vertices at ``radii`` and ``angles`` around ``center``, rotated."""
    a = angles + rotation
    pts = center + np.stack([radii * np.cos(a), radii * np.sin(a)], axis=1)
    return np.round(pts).astype(np.int32)


def _shape_mask(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """uint8 [size, size] mask (1 inside) of one shape of ``kind`` with random pose and size."""
    r = rng.uniform(0.08, 0.2) * size
    center = rng.uniform(r, size - r, size=2)
    rot = rng.uniform(0, 2 * np.pi)
    m = np.zeros((size, size), np.uint8)
    cx, cy = int(round(center[0])), int(round(center[1]))
    if kind == "circle":
        cv2.circle(m, (cx, cy), int(round(r)), 1, thickness=-1)
    elif kind == "ellipse":
        axes = (int(round(r)), int(round(r * rng.uniform(0.35, 0.55))))
        cv2.ellipse(m, (cx, cy), axes, float(np.degrees(rot)), 0, 360, 1, thickness=-1)
    elif kind == "rectangle":
        w, h = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
        c, s = np.cos(rot), np.sin(rot)
        pts = np.round(center + corners @ np.array([[c, s], [-s, c]])).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    elif kind == "triangle":
        pts = _polygon(center, np.full(3, r * 1.15), np.arange(3) * 2 * np.pi / 3, rot)
        cv2.fillPoly(m, [pts], 1)
    elif kind == "hexagon":
        pts = _polygon(center, np.full(6, r), np.arange(6) * 2 * np.pi / 6, rot)
        cv2.fillPoly(m, [pts], 1)
    elif kind == "cross":
        # A plus sign: 12 vertices, arms of half-width 0.35 r.
        a, b = r, 0.35 * r
        corners = np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
        c, s = np.cos(rot), np.sin(rot)
        pts = np.round(center + corners @ np.array([[c, s], [-s, c]])).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    else:  # pragma: no cover - kinds come from SHAPES
        raise ValueError(f"unknown shape kind {kind!r}")
    return m


def _contrasting_color(rng: np.random.Generator, local: np.ndarray, min_distance: float) -> np.ndarray:
    """A random RGB colour at least ``min_distance`` (L1) from ``local``, the background under the shape."""
    best, best_d = None, -1.0
    for _ in range(32):
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        d = float(np.abs(color - local).sum())
        if d >= min_distance:
            return color
        if d > best_d:
            best, best_d = color, d
    return best


def make_sample(
    seed: int,
    index: int,
    image_size: int,
    task: str,
    num_classes: int,
    max_shapes: int = 4,
    noise_std: float = 12.0,
    min_contrast: float = 120.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate sample ``index`` of the dataset with ``seed``.

    Args:
        seed: dataset seed; sample ``index`` uses ``numpy.random.default_rng([seed, index])``.
        index: sample index.
        image_size: side of the square image in pixels.
        task: ``binary``, ``multiclass`` or ``multilabel`` (decides the mask, see module doc).
        num_classes: 1 (binary), kinds + 1 (multiclass), kinds (multilabel).
        max_shapes: each image holds 1..max_shapes shapes.
        noise_std: standard deviation of the Gaussian pixel noise (0..255 scale).
        min_contrast: minimum L1 RGB distance between a shape's colour and the background under it.

    Returns:
        image uint8 ``[S, S, 3]`` and mask: binary/multiclass ``[S, S]`` (uint8 or int32 indices),
        multilabel uint8 ``[S, S, C]``.
    """
    rng = np.random.default_rng([seed, index])
    size = image_size
    image = _background(rng, size)
    n_kinds = len(SHAPES) if task == "binary" else (num_classes - 1 if task == "multiclass" else num_classes)
    if task == "multilabel":
        mask = np.zeros((size, size, num_classes), np.uint8)
    else:
        mask = np.zeros((size, size), mask_dtype(task, num_classes))
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = int(rng.integers(0, n_kinds))
        m = _shape_mask(rng, SHAPES[kind], size).astype(bool)
        if not m.any():
            continue
        color = _contrasting_color(rng, image[m].mean(axis=0), min_contrast)
        if task == "multilabel":
            # Semi-transparent, so a shape under another one still shows (its label stays on).
            alpha = 0.75
            image[m] = (1 - alpha) * image[m] + alpha * color
            mask[m, kind] = 1
        else:
            image[m] = color
            mask[m] = 1 if task == "binary" else kind + 1
    image += rng.normal(0, noise_std, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class _ArraySource:
    """Picklable sample source over in-memory arrays (a lambda would break spawn-started workers)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, offset: int, first_index: int = 0) -> None:
        # first_index: the sample index of images[0], for the names (the test set starts later).
        self.images, self.masks, self.offset, self.first_index = images, masks, offset, first_index

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        i = self.offset + index
        return self.images[i], self.masks[i], f"synthetic_{self.first_index + i:05d}"


class SyntheticDataModule(SegmentationDataModule):
    """Shapes on textured backgrounds, generated in memory, deterministic by seed.

    Samples ``0 .. n_train-1`` are the training set, the last ``round(num_samples * val_fraction)``
    the validation set (samples are independent draws, so a split by index is a random split);
    the test set (``trainer.test``) is ``num_test`` further samples, generated only when asked for.

    ``num_classes`` (a base option): 1 for binary; 2..7 for multiclass (class 0 = background,
    class k = shape kind ``SHAPES[k-1]``); 1..6 for multilabel (channel k = ``SHAPES[k]``).

    Args:
        num_samples: total number of generated images (train + val).
        image_size: side of the generated square images.
        val_fraction: share of the samples used for validation.
        num_test: size of the test set (samples ``num_samples ..``; generated in ``setup("test")``).
        max_shapes: each image holds 1..max_shapes shapes.
        noise_std: Gaussian pixel noise (0..255 scale).
        min_contrast: minimum L1 RGB distance between a shape and the background under it; lower is harder.
        **base_options: ``task``, ``num_classes``, ``seed`` (generation seed, also of the
            augmentation stream), ``batch_size`` ... -- the options of
            :class:`~datamodules.base.SegmentationDataModule`, by keyword.
    """

    def __init__(
        self,
        *,
        num_samples: int = 400,
        image_size: int = 96,
        val_fraction: float = 0.2,
        num_test: int = 0,
        max_shapes: int = 4,
        noise_std: float = 12.0,
        min_contrast: float = 120.0,
        **base_options: Any,
    ) -> None:
        super().__init__(image_size=image_size, **base_options)
        task, num_classes = self.task, self.num_classes
        kinds = num_classes - 1 if task == "multiclass" else num_classes
        if task != "binary" and kinds > len(SHAPES):
            raise ValueError(
                f"The synthetic data has {len(SHAPES)} shape kinds {SHAPES}: task={task} allows at most "
                f"num_classes={len(SHAPES) + (task == 'multiclass')}, got {num_classes}"
            )
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        if int(max_shapes) < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self.num_samples = int(num_samples)
        self.num_val = int(round(self.num_samples * float(val_fraction)))
        if val_fraction > 0:
            self.num_val = max(self.num_val, 1)
        self.num_train = self.num_samples - self.num_val
        if self.num_train < 1:
            raise ValueError(
                f"num_samples={num_samples} with val_fraction={val_fraction} leaves no training sample"
            )
        self.max_shapes = int(max_shapes)
        self.noise_std = float(noise_std)
        self.min_contrast = float(min_contrast)
        if int(num_test) < 0:
            raise ValueError(f"num_test must be >= 0, got {num_test}")
        self.num_test = int(num_test)
        self.images: np.ndarray | None = None
        self.masks: np.ndarray | None = None
        self.test_set: SegmentationDataset | None = None

    def _generate(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        samples = [
            make_sample(
                self.seed, i, self.image_size, self.task, self.num_classes,
                self.max_shapes, self.noise_std, self.min_contrast,
            )
            for i in range(start, stop)
        ]
        return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])

    def generate(self) -> None:
        """Generate the train + val samples into ``self.images`` / ``self.masks`` (once)."""
        if self.images is None:
            self.images, self.masks = self._generate(0, self.num_samples)

    @property
    def class_names(self) -> list[str]:
        """Names of the drawn classes (multiclass: 1..C-1; binary: the foreground; multilabel: every label)."""
        if self.task == "binary":
            return ["shape"]
        return list(SHAPES[: self.num_classes - 1 if self.task == "multiclass" else self.num_classes])

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits ``stage`` needs (train + val for fit/validate, test for test)."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.generate()
            n = self.num_train
            train = _ArraySource(self.images, self.masks, 0)
            val = _ArraySource(self.images, self.masks, n)
            self.train_set = SegmentationDataset(train, n, self.train_transform, self.task, self.derived)
            self.val_set = SegmentationDataset(val, self.num_val, self.val_transform, self.task, self.derived)
        if stage in (None, "test") and self.test_set is None and self.num_test > 0:
            images, masks = self._generate(self.num_samples, self.num_samples + self.num_test)
            source = _ArraySource(images, masks, 0, first_index=self.num_samples)
            self.test_set = SegmentationDataset(source, self.num_test, self.val_transform, self.task, self.derived)

    def test_dataloader(self):
        if self.num_test == 0:
            raise ValueError("The synthetic data has no test set: set data.num_test (e.g. data.num_test=100)")
        return self._loader(self.test_set, train=False)
