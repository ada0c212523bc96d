"""Per-channel normalisation of volumes: the one function the datamodule, predict.py and export share.

The specs are those of :func:`fingerprint.volumes.normalization_spec` (nnU-Net's table, chosen
by the channel's name in dataset.json), one per channel, as plain dicts:

* ``{"mode": "ct", "lower", "upper", "mean", "std"}``: clip to ``[lower, upper]`` (the training
  foreground's 0.5/99.5 percentiles), then ``(x - mean) / max(std, 1e-8)`` -- nnU-Net's
  CTNormalization (the statistics of the whole training set, so every volume gets the same map);
* ``{"mode": "zscore"}``: ``(x - mean(x)) / max(std(x), 1e-8)`` over the whole volume (each
  volume its own statistics) -- nnU-Net's ZScoreNormalization without ``use_mask_for_norm``;
* ``{"mode": "none"}``: the values as float32 (nnU-Net's ``noNorm``);
* ``{"mode": "rescale_0_1"}``: ``(x - min(x)) / max(max(x) - min(x), 1e-8)`` per volume;
* ``{"mode": "rgb_to_0_1"}``: ``x / 255`` (values must lie in 0..255, as nnU-Net asserts).

Statistics are computed in float64 (a float32 sum over 10^8 voxels loses digits), the result is
float32. Applied to the whole volume, before any crop, so that a patch and a whole-volume
prediction see the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The modes :func:`normalize_volume` applies (fingerprint/volumes.py's NORMALIZATION_BY_NAME values).
MODES = ("ct", "zscore", "none", "rescale_0_1", "rgb_to_0_1")
#: Floor of the divisors (nnU-Net's 1e-8): a constant channel becomes 0, not NaN.
EPS = 1e-8
_CT_KEYS = ("lower", "upper", "mean", "std")


def check_specs(specs: Sequence[Mapping[str, Any]], channels: int | None = None, where: str = "normalization") -> None:
    """Check ``specs`` (one dict per channel) before any volume is read.

    Args:
        specs: the per-channel specs (module docstring).
        channels: the number of channels they must cover, or ``None`` (not checked).
        where: what the specs belong to, for the message (a fingerprint, a checkpoint ...).

    Raises:
        ValueError: not a list of dicts, a wrong count, an unknown mode, a CT spec without its four numbers.
    """
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Sequence):
        raise ValueError(f"{where}: the normalisation must be a list of one spec per channel, got {specs!r}")
    if channels is not None and len(specs) != channels:
        raise ValueError(f"{where}: {len(specs)} normalisation spec(s) for {channels} channel(s): one per channel "
                         "(recompute the fingerprint of this dataset)")
    for c, spec in enumerate(specs):
        mode = spec.get("mode") if isinstance(spec, Mapping) else None
        if mode not in MODES:
            raise ValueError(f"{where}: channel {c} has normalisation {spec!r}; the modes are {', '.join(MODES)}")
        if mode == "ct":
            missing = [k for k in _CT_KEYS if spec.get(k) is None]
            if missing:
                raise ValueError(f"{where}: channel {c}'s CT normalisation lacks {', '.join(missing)} (the training "
                                 "foreground's statistics: fingerprint.volumes.compute_volume_fingerprint gives them)")


def normalize_channel(array: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """One channel (any spatial shape) normalised by ``spec``, as a new float32 array."""
    mode = spec["mode"]
    x = np.asarray(array, dtype=np.float32)
    if mode == "ct":
        out = np.clip(x, float(spec["lower"]), float(spec["upper"]))  # a new array: the input stays untouched
        out -= np.float32(spec["mean"])
        out /= np.float32(max(float(spec["std"]), EPS))
        return out
    if mode == "zscore":
        mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
        return (x - np.float32(mean)) / np.float32(max(std, EPS))
    if mode == "rescale_0_1":
        low, high = float(x.min()), float(x.max())
        return (x - np.float32(low)) / np.float32(max(high - low, EPS))
    if mode == "rgb_to_0_1":
        if x.size and (float(x.min()) < 0 or float(x.max()) > 255):
            raise ValueError(f"rgb_to_0_1 normalisation needs values in 0..255, got {float(x.min()):g}.."
                             f"{float(x.max()):g}: name the channel otherwise in dataset.json (e.g. 'zscore')")
        return x / np.float32(255.0)
    if mode == "none":
        return x.copy() if x is array else x
    raise ValueError(f"Unknown normalisation mode {mode!r}; the modes are {', '.join(MODES)}")


def normalize_volume(array: np.ndarray, specs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Normalise every channel of ``array`` by its spec.

    Args:
        array: ``[C, *spatial]`` (``[C, D, H, W]`` volumes, ``[C, H, W]`` images), any numeric dtype.
        specs: ``C`` specs (module docstring), e.g. a fingerprint's ``"normalization"`` or a
            checkpoint's ``preprocessing["normalization"]``.

    Returns:
        float32 ``[C, *spatial]``, a new array.

    Raises:
        ValueError: a spec count other than ``C``, an unknown mode, CT statistics missing,
            ``rgb_to_0_1`` values outside 0..255.
    """
    array = np.asarray(array)
    if array.ndim < 2:
        raise ValueError(f"normalize_volume expects [C, *spatial], got shape {array.shape}")
    check_specs(specs, array.shape[0], "normalize_volume")
    out = np.empty(array.shape, dtype=np.float32)
    for c, spec in enumerate(specs):
        out[c] = normalize_channel(array[c], spec)
    return out
