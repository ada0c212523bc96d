"""The fingerprint of a 2D dataset in nnU-Net's layout (``.png``/``.bmp``/2D ``.tif`` cases).

:func:`fingerprint.volumes.compute_volume_fingerprint` reads volumes only; for 2D cases the volume
datamodule needs the same few keys -- ``cases`` (shapes), ``shape`` and ``spacing`` medians (unit
pixels), and the per-channel ``normalization`` of nnU-Net's table, with the foreground statistics
its CT mode clips with -- and this computes just those, with the same rules (foreground: label > 0
and not the ignore label; ``samples_per_case`` foreground pixels per case and channel, seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .dataset import _read_channels
from .nnunet import Case, DatasetInfo, read_label


def planar_fingerprint(cases: Sequence[Case], info: DatasetInfo, *, samples_per_case: int = 10_000,
                       seed: int = 0) -> dict[str, Any]:
    """The keys the volume datamodule reads (module docstring) for a 2D nnU-Net dataset.

    Args:
        cases: the labelled training cases.
        info: the dataset's ``dataset.json``.
        samples_per_case: foreground pixels sampled per case and channel.
        seed: seeds the sampling (with the case's index and the channel).

    Raises:
        ValueError: no case; channels or label on different grids (naming the case); a CT channel without foreground.
    """
    from fingerprint.volumes import normalization_spec  # lazily: fingerprint/ imports datamodules/

    if not cases:
        raise ValueError(f"No training case in {info.root / 'imagesTr'}")
    shapes, samples = [], [[] for _ in range(info.num_channels)]
    for i, case in enumerate(cases):
        image, _ = _read_channels(case, info)
        label = np.asarray(read_label(case, info))
        if label.shape != image.shape[1:]:
            raise ValueError(f"Case {case.case_id}: label {case.label} is {label.shape}, its image "
                             f"{tuple(image.shape[1:])}: a label must cover its image pixel for pixel")
        shapes.append([int(n) for n in label.shape])
        foreground = label > 0
        if info.ignore_index is not None:
            foreground &= label != info.ignore_index
        for c in range(min(info.num_channels, image.shape[0])):
            values = image[c][foreground]
            if values.size > samples_per_case:
                values = values[np.random.default_rng([seed, i, c]).integers(0, values.size, samples_per_case)]
            samples[c].append(values.astype(np.float64))
    specs = []
    for name, parts in zip(info.channel_names, samples):
        values = np.concatenate(parts) if parts else np.zeros(0)
        stats: dict[str, Any] = {"mean": None}
        if values.size:
            lo, hi = np.percentile(values, [0.5, 99.5])
            stats = {"mean": float(values.mean()), "std": float(values.std()), "percentile_00_5": float(lo),
                     "percentile_99_5": float(hi)}
        specs.append(normalization_spec(name, stats))
    table = np.asarray(shapes, dtype=np.float64)
    return {"kind": "planar", "file_ending": info.file_ending, "channel_names": list(info.channel_names),
            "class_names": list(info.class_names), "ignore_index": info.ignore_index, "num_cases": len(cases),
            "cases": [{"case": c.case_id, "shape": s, "spacing": [1.0, 1.0]} for c, s in zip(cases, shapes)],
            "shape": {"median": np.median(table, axis=0).tolist(), "min": table.min(axis=0).tolist(),
                      "max": table.max(axis=0).tolist()},
            "spacing": {"median": [1.0, 1.0], "min": [1.0, 1.0], "max": [1.0, 1.0]},
            "normalization": specs}
