"""A generated nnU-Net raw dataset of small anisotropic volumes (tests, benchmarks, trying the 3D path).

:func:`write_nnunet_dataset` writes what a CT/MR segmentation task looks like, scaled down:

* anisotropic voxels (default 2.0 x 0.8 x 0.8 mm: thick slices), and an affine with flipped x and y
  and an origin, as a DICOM conversion writes it -- so a reader that drops the affine or swaps axes
  shows in a round trip;
* a body (an ellipsoid) in air, with class 1 "blob" ellipsoids (large, in every case) and class 2
  "tube" (one thin winding vessel, a few voxels across, absent from every third case: rare in voxels
  and in cases); classes 3 and up are small ellipsoids;
* channel 0 "CT": int16 in Hounsfield-like units (air -1000, tissue 40, blobs 120, tubes 300, an
  unlabelled bone at 900); channel 1 "T2": float32 in arbitrary MR units with a bias field; more
  channels are MR-like with other contrasts. The names choose nnU-Net's normalisation: CT-style for
  channel 0, z-score for the others.

Deterministic by ``seed`` (each case its own generator: the same case whatever ``cases`` is).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import write_atomic, write_json_atomic
from .io import tiff_bytes, write_spacing_json, write_volume

ENDINGS = (".nii.gz", ".nii", ".tif", ".tiff")
#: Channel names by index (then MR<k>); "CT" selects nnU-Net's CT normalisation, the rest z-score.
CHANNEL_NAMES = ("CT", "T2", "T1", "FLAIR")
#: Class names by value (then class_<k>).
CLASS_NAMES = ("background", "blob", "tube")


def _grid(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Open (broadcastable) voxel-centre coordinates in mm along z, y, x."""
    return [np.arange(n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)]) * s
            for i, (n, s) in enumerate(zip(shape, spacing))]


def _ellipsoid(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _tube(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """A thin winding tube: balls of radius r stamped along a smooth random walk (local boxes only: fast)."""
    extent = np.array(shape) * spacing
    # Radius: at least 0.6 of the coarsest spacing, so the tube shows in every slice it crosses; at
    # least 1.5 of the finest, so it stays connected in-plane. A few voxels across: thin.
    radius = max(0.6 * spacing.max(), 1.5 * spacing.min())
    step = 0.5 * radius
    points = np.argwhere(inside)
    position = (points[rng.integers(len(points))] + 0.5) * spacing
    direction = rng.normal(size=3)
    direction[0] *= 0.3  # mostly in-plane, as vessels across thick slices are drawn
    direction /= np.linalg.norm(direction)
    mask = np.zeros(shape, dtype=bool)
    reach = np.ceil(radius / spacing).astype(int)
    for _ in range(int(0.9 * extent.max() / step)):
        centre = np.round(position / spacing).astype(int)
        lo = np.maximum(centre - reach, 0)
        hi = np.minimum(centre + reach + 1, shape)
        if np.all(hi > lo):
            box = [np.arange(lo[a], hi[a]).reshape([-1 if b == a else 1 for b in range(3)]) * spacing[a]
                   for a in range(3)]
            near = sum((box[a] - position[a]) ** 2 for a in range(3)) <= radius ** 2
            mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= near
        direction += rng.normal(scale=0.25, size=3)
        direction /= np.linalg.norm(direction)
        position = position + step * direction
        for a in range(3):  # bounce off the walls
            if not 0.0 <= position[a] <= extent[a] - spacing[a]:
                direction[a] = -direction[a]
                position[a] = float(np.clip(position[a], 0.0, extent[a] - spacing[a]))
    return mask & inside


def nnunet_case(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing: Sequence[float],
    channels: int = 2,
    classes: int = 3,
    tube: bool = True,
) -> tuple[list[np.ndarray], np.ndarray]:
    """``([channel [D, H, W], ...], label uint8 [D, H, W])`` of one generated case (module docstring).

    Args:
        rng: the case's generator.
        shape: ``(D, H, W)`` voxels.
        spacing: ``(z, y, x)`` mm.
        channels: image channels (0: CT int16, others MR-like float32).
        classes: classes with the background (2: blobs only; 3: blobs and the tube; more: small ellipsoids).
        tube: draw the tube (class 2) in this case.
    """
    shape, spacing = tuple(int(n) for n in shape), np.asarray(spacing, dtype=np.float64)
    grid = _grid(shape, spacing)
    extent = np.array(shape) * spacing
    centre = extent / 2 + rng.uniform(-0.05, 0.05, 3) * extent
    body = _ellipsoid(grid, centre, extent * rng.uniform(0.42, 0.48, 3))
    label = np.zeros(shape, dtype=np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        radii = extent * rng.uniform(0.12, 0.2, 3)
        radii[0] = max(radii[0], 2.5 * spacing[0])  # a blob spans a few thick slices
        label[_ellipsoid(grid, centre + rng.uniform(-0.2, 0.2, 3) * extent, radii) & body] = 1
    for k in range(3, classes):
        radii = np.maximum(extent * rng.uniform(0.06, 0.09, 3), 1.5 * spacing)
        label[_ellipsoid(grid, centre + rng.uniform(-0.25, 0.25, 3) * extent, radii) & body] = k
    if classes >= 3 and tube:
        label[_tube(rng, shape, spacing, body)] = 2
    bone = _ellipsoid(grid, centre + np.array([0, 0.3, 0]) * extent, np.maximum(extent * 0.05, 1.5 * spacing))
    bone &= body & (label == 0)

    images = []
    for c in range(channels):
        noise = rng.normal(size=shape).astype(np.float32)
        if c == 0:  # CT, Hounsfield-like
            level = np.array([40.0, 120.0, 300.0, *[60.0 + 40.0 * k for k in range(3, max(classes, 3))]])
            image = np.where(body, level[label], -1000.0) + np.where(bone, 860.0, 0.0) + 20.0 * noise
            images.append(np.clip(np.round(image), -1024, 3071).astype(np.int16))
            continue
        contrast = np.array([300.0, 450.0 if c % 2 else 200.0, 650.0 if c % 2 else 500.0,
                             *[250.0 + 60.0 * k for k in range(3, max(classes, 3))]])
        bias = 1.0 + 0.15 * (grid[2] - extent[2] / 2) / extent[2]  # a smooth coil-sensitivity bias along x
        image = (np.where(body, contrast[label], 10.0) + 25.0 * noise) * bias
        images.append(np.maximum(image, 0.0).astype(np.float32))
    return images, label


def _affine(spacing: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Voxel (x, y, z) -> world: x and y flipped (DICOM's LPS as a NIfTI converter writes it), an origin."""
    affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    affine[:3, 3] = rng.uniform(-100, 100, 3).round(2)
    return affine


def write_nnunet_dataset(
    root: str | Path,
    *,
    cases: int = 6,
    shape: Sequence[int] = (24, 32, 40),
    spacing: Sequence[float] = (2.0, 0.8, 0.8),
    channels: int = 2,
    classes: int = 3,
    test_cases: int = 2,
    file_ending: str = ".nii.gz",
    seed: int = 0,
) -> Path:
    """Write an nnU-Net v2 raw dataset of generated volumes (module docstring) at ``root``.

    Writes ``root/dataset.json``, ``imagesTr/case_<i>_<XXXX><ending>``, ``labelsTr/case_<i><ending>``
    and ``imagesTs/test_<i>_<XXXX><ending>`` (no test labels, as in nnU-Net). TIFF datasets get the
    spacing sidecars nnU-Net's Tiff3DIO reads: ``imagesTr/case_<i>.json`` and ``labelsTr/case_<i>.json``.

    Args:
        root: the dataset folder (created).
        cases: training cases.
        shape: ``(D, H, W)`` voxels of every case.
        spacing: ``(z, y, x)`` voxel size in mm.
        channels: image channels per case (``CHANNEL_NAMES``).
        classes: classes with the background, >= 2 (``CLASS_NAMES``; the tube is class 2).
        test_cases: cases in ``imagesTs/``.
        file_ending: ``.nii.gz``, ``.nii``, ``.tif`` or ``.tiff``.
        seed: seeds every case.

    Returns:
        ``root``.

    Raises:
        ValueError: an option out of range, naming it.
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be (D, H, W) with every size >= 4, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive (z, y, x) sizes, got {spacing}")
    if channels < 1 or classes < 2 or cases < 1 or test_cases < 0:
        raise ValueError(f"need channels >= 1, classes >= 2, cases >= 1, test_cases >= 0; got channels={channels}, "
                         f"classes={classes}, cases={cases}, test_cases={test_cases}")
    if file_ending not in ENDINGS:
        raise ValueError(f"file_ending must be one of {', '.join(ENDINGS)}, got {file_ending!r}")
    root = Path(root)
    tiff = file_ending in (".tif", ".tiff")
    names = [CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"MR{c}" for c in range(channels)]
    labels = {CLASS_NAMES[k] if k < len(CLASS_NAMES) else f"class_{k}": k for k in range(classes)}
    for split, count, prefix in (("Tr", cases, "case"), ("Ts", test_cases, "test")):
        for i in range(count):
            rng = np.random.default_rng([seed, split == "Ts", i])
            images, label = nnunet_case(rng, shape, spacing, channels, classes, tube=i % 3 != 2)
            affine = None if tiff else _affine(spacing, rng)
            case = f"{prefix}_{i:03d}"
            folder = root / f"images{split}"
            for c, image in enumerate(images):
                path = folder / f"{case}_{c:04d}{file_ending}"
                if tiff:
                    write_atomic(path, tiff_bytes(image))
                else:
                    write_volume(path, image, spacing=spacing, affine=affine)
            if tiff:
                write_spacing_json(folder / f"{case}.json", spacing)  # nnU-Net: <case>.json for the channel files
            if split == "Tr":
                write_volume(root / "labelsTr" / f"{case}{file_ending}", label, spacing=spacing, affine=affine)
    dataset = {
        "name": "SyntheticVolumes",
        "description": "generated by datamodules/volumes/synthetic.py: blobs (1) and a thin tube (2) in a body",
        "channel_names": {str(c): name for c, name in enumerate(names)},
        "labels": labels,
        "numTraining": cases,
        "file_ending": file_ending,
    }
    if tiff:
        dataset["overwrite_image_reader_writer"] = "Tiff3DIO"  # nnU-Net would otherwise try its 2D reader first
    write_json_atomic(root / "dataset.json", dataset)
    return root
