"""How image values become network inputs: ``data.normalize``, one spec stored with every checkpoint.

Modes:

* ``imagenet``: ``(x / 255 - mean) / std`` with ImageNet's mean and std (albumentations'
  ``Normalize``), what pretrained encoders expect. For 8-bit RGB images.
* ``dataset``: per channel, clip to the dataset's ``[p_low, p_high]`` percentiles
  (``data.normalize_percentiles``, default 0.5 and 99.5), then subtract the mean and divide by the
  standard deviation of the clipped values -- nnU-Net's CT normalisation, here for every channel.
  The percentiles, mean and std come from the dataset fingerprint (``fingerprint/``), so a 12-bit
  microscope image with cells at 1040 on a background of 1000 keeps its contrast.
* ``image``: each image's own per-channel z-score (for data whose brightness varies per image).
* ``none``: values as they are, as float32.
* ``auto`` (the default): ``imagenet`` for 8-bit 3-channel images, ``dataset`` for every other image.

A *spec* is the resolved choice as a plain dict (``{"mode": "dataset", "lower": [...], "upper":
[...], "mean": [...], "std": [...]}``): the datamodule appends :func:`normalization_transform` of it
to the training and validation pipelines, the module stores it in every checkpoint
(``checkpoint["preprocessing"]``), and predict.py and export.py rebuild the same transform from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np

MODES = ("auto", "imagenet", "dataset", "image", "none")
#: Below this a channel's spread counts as none: a constant channel is centred, not blown up.
_MIN_STD = 1e-6


def resolve_mode(mode: str, channels: int, dtype: str) -> str:
    """``data.normalize`` for images of ``channels`` channels stored as ``dtype``: ``auto`` resolved.

    Raises:
        ValueError: an unknown mode, or ``imagenet`` for images that are not 8-bit RGB.
    """
    if mode not in MODES:
        raise ValueError(f"data.normalize={mode!r} is not one of {', '.join(MODES)}")
    rgb8 = channels == 3 and str(dtype) == "uint8"
    if mode == "auto":
        return "imagenet" if rgb8 else "dataset"
    if mode == "imagenet" and not rgb8:
        raise ValueError(
            f"data.normalize=imagenet is for 8-bit RGB images (x / 255 with ImageNet's three means), but these "
            f"images have {channels} channel(s) of {dtype}: use data.normalize=dataset (the dataset's per-channel "
            "percentiles and z-score, the default for such images) or data.normalize=image."
        )
    return mode


def dataset_spec(clip: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The ``dataset`` spec from the fingerprint's ``intensity.clip`` entry (lower, upper, mean, std per channel)."""
    return {
        "mode": "dataset",
        "lower": [float(v) for v in clip["lower"]],
        "upper": [float(v) for v in clip["upper"]],
        "mean": [float(v) for v in clip["mean"]],
        "std": [max(float(v), _MIN_STD) for v in clip["std"]],
    }


class ClipZScore(A.ImageOnlyTransform):
    """Per channel: clip to ``[lower, upper]``, then ``(x - mean) / std``; float32 out (``data.normalize=dataset``).

    Usable in a config: ``_target_: datamodules.normalization.ClipZScore`` with one value per channel.
    """

    def __init__(self, lower: Sequence[float], upper: Sequence[float], mean: Sequence[float], std: Sequence[float],
                 p: float = 1.0) -> None:
        super().__init__(p=p)
        if not len(lower) == len(upper) == len(mean) == len(std):
            raise ValueError(f"ClipZScore: lower, upper, mean and std need one value per channel, got lengths "
                             f"{len(lower)}, {len(upper)}, {len(mean)}, {len(std)}")
        self.lower, self.upper = [float(v) for v in lower], [float(v) for v in upper]
        self.mean, self.std = [float(v) for v in mean], [max(float(v), _MIN_STD) for v in std]
        self._lo = np.asarray(self.lower, np.float32)
        self._hi = np.asarray(self.upper, np.float32)
        self._shift = np.asarray(self.mean, np.float32)
        self._scale = (1.0 / np.asarray(self.std, np.float64)).astype(np.float32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("lower", "upper", "mean", "std")

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.shape[-1] != len(self.mean):
            raise ValueError(f"ClipZScore holds statistics of {len(self.mean)} channel(s), the image has {img.shape[-1]}")
        out = img.astype(np.float32)  # a new array: the cached source image stays untouched
        np.clip(out, self._lo, self._hi, out=out)
        out -= self._shift
        out *= self._scale
        return out


class ImageZScore(A.ImageOnlyTransform):
    """Each image's own per-channel z-score, float32 out (``data.normalize=image``)."""

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        out = img.astype(np.float32)
        flat = out.reshape(-1, out.shape[-1])
        mean = flat.mean(0, dtype=np.float64)
        std = flat.std(0, dtype=np.float64)
        out -= mean.astype(np.float32)
        out *= (1.0 / np.maximum(std, _MIN_STD)).astype(np.float32)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


class AsFloat(A.ImageOnlyTransform):
    """Values unchanged, as float32 (``data.normalize=none``)."""

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return img.astype(np.float32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def normalization_transform(spec: Mapping[str, Any]) -> A.ImageOnlyTransform:
    """The albumentations transform of a resolved spec (module docstring)."""
    mode = spec.get("mode")
    if mode == "imagenet":
        return A.Normalize()
    if mode == "dataset":
        return ClipZScore(spec["lower"], spec["upper"], spec["mean"], spec["std"])
    if mode == "image":
        return ImageZScore()
    if mode == "none":
        return AsFloat()
    raise ValueError(f"Normalisation spec {dict(spec)!r} has no known mode ({', '.join(MODES[1:])})")


def contains_normalize(pipeline: Any) -> bool:
    """Whether an albumentations pipeline already normalises (an ``A.Normalize`` or one of the transforms above)."""
    kinds = (A.Normalize, ClipZScore, ImageZScore, AsFloat)
    for t in getattr(pipeline, "transforms", None) or []:
        if isinstance(t, kinds) or contains_normalize(t):
            return True
    return False


#: albumentations transforms for 8-bit RGB images only: colour, hue and saturation changes, and the
#: ones that accept uint8 alone. Left out of the pipelines for other images, with a log line,
#: instead of failing inside a DataLoader worker.
RGB_ONLY = (
    "ColorJitter", "HueSaturationValue", "RGBShift", "ToGray", "ToSepia", "FancyPCA", "ISONoise", "CLAHE",
    "Equalize", "Posterize", "PlanckianJitter", "ChromaticAberration", "ChannelShuffle", "RandomToneCurve",
)
