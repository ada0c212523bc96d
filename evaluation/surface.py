"""Boundary metrics of one class of one image: HD95 and normalised surface Dice, by MONAI, never NaN.

Why a wrapper at all: MONAI's functions leave the empty cases to the caller --
``compute_hausdorff_distance(percentile=95)`` returns NaN when one mask is empty (MONAI #9095),
``inf`` without a percentile, and ``compute_surface_dice`` NaN when both are. A NaN is dropped
from a mean, so a model that misses a whole object would score *better* HD95 the more objects
it misses. Here the empty cases never reach MONAI (which would also warn on each); they get
the values of :data:`evaluation.metrics.EMPTY_RULES`: both empty is perfect (HD95 0, NSD 1), one
empty is the worst (HD95 = the image diagonal, NSD 0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice


def diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """The image's diagonal ``sqrt(sum((n_i * s_i)^2))`` in spacing units: no two pixels lie further apart.

    The HD95 of a class present on one side only (BraTS' convention for a missed structure).
    """
    spacing = [1.0] * len(shape) if spacing is None else spacing
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def boundary_scores(
    pred: np.ndarray, target: np.ndarray, *, spacing: Sequence[float] | None, tolerance: float,
    pred_pixels: int, gt_pixels: int,
) -> tuple[float, float]:
    """``(hd95, nsd)`` of one class: boolean masks of its spatial shape, ignored pixels already background.

    Args:
        pred, target: the class's masks (bool or 0/1), ``[H, W]`` or ``[D, H, W]``.
        spacing: pixel size per axis (physical units), ``None`` = 1.
        tolerance: NSD's tolerance, in the units of ``spacing``.
        pred_pixels, gt_pixels: the masks' pixel counts (already known from the overlap counts).
    """
    if gt_pixels == 0 and pred_pixels == 0:
        return 0.0, 1.0
    if gt_pixels == 0 or pred_pixels == 0:
        return diagonal(pred.shape, spacing), 0.0
    # [B=1, C=1, *spatial]: MONAI's one-hot layout; include_background=True keeps the one channel.
    # Float once here: MONAI would convert a bool mask in each of the two calls.
    y_pred = torch.from_numpy(np.ascontiguousarray(pred))[None, None].float()
    y = torch.from_numpy(np.ascontiguousarray(target))[None, None].float()
    spacing = None if spacing is None else list(spacing)
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated always_return_as_numpy argument internally: not ours to fix.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(y_pred, y, class_thresholds=[tolerance], include_background=True, spacing=spacing)
    return float(hd95.reshape(-1)[0]), float(nsd.reshape(-1)[0])
