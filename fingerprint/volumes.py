"""The volume fingerprint: an nnU-Net raw dataset read once, before planning or training (nnU-Net's fingerprint).

Why: what the 3D path plans from -- the median shape and spacing (the target spacing and the
patch size), the anisotropy (whether to treat z apart), the per-channel intensities of the
foreground (the CT clip window) and the class shares (a rare thin class) -- and the data's own
faults (a label value dataset.json does not name, a channel on another grid), named all at once
before anything trains.

What is read, on a thread pool (nibabel/zlib and tifffile decode outside the GIL), each case once:
every channel and the label whole. Intensities are sampled from the foreground voxels (label > 0,
the ignore label left out) of every channel: ``k`` voxels per case drawn uniformly with
replacement (seeded by ``seed``, the case's index and the channel: the same samples whatever the
thread order), or every foreground voxel, in order, when a case has no more than ``k``.

Differences from nnU-Net's fingerprint, on purpose: shapes are as stored (nnU-Net records them
after cropping to the non-zero region); the ignore label's voxels are not foreground (nnU-Net's
``seg > 0`` counts them, but under a sparse annotation they are mostly unlabelled background, air
included, and would widen the CT window); a case with fewer foreground voxels than ``k``
contributes them all once (nnU-Net draws ``k`` with replacement, weighting every case alike);
``k`` defaults to 10,000 per case and 2,000,000 in all (nnU-Net: 10**8 in all).

Keys of the returned dict (plain JSON types; axes are ``(z, y, x)`` as datamodules/volumes/io.py reads them):

* ``format``: 1; ``kind``: ``"volumes"``; ``root``: the dataset folder (``None`` for a list of cases).
* ``file_ending``, ``channel_names``, ``class_names`` (by value), ``ignore_index``: from dataset.json.
* ``cases``: ``[{"case": id, "shape": [D, H, W], "spacing": [z, y, x], "voxels": {str(value): n}}, ...]``
  in case order; ``num_cases``.
* ``shape``, ``spacing``: ``{"median": [...], "min": [...], "max": [...]}`` per axis (``numpy.median``
  of the cases: a float, .5 where the count is even).
* ``anisotropy``: ``{"ratio": max/min of the median spacing, "anisotropic": bool, "lowres_axis": 0..2
  or None, "threshold": 3}``. ``anisotropic`` is nnU-Net's spacing rule: the coarsest median spacing
  is more than 3 times the next coarsest (with two equal in-plane spacings: ``ratio > 3``).
* ``intensity``: per channel ``{"name", "samples", "cases" (cases with foreground), "mean", "std",
  "median", "min", "max", "percentile_00_5", "percentile_99_5"}`` of the foreground samples (nnU-Net's
  names; ``None`` for a channel without any foreground sample); ``samples_per_case``: ``k``.
* ``normalization``: per channel, the spec the 3D datamodule applies, chosen from ``channel_names``
  by nnU-Net's table (exact, case-sensitive names): ``"CT"`` -> ``{"mode": "ct", "lower", "upper",
  "mean", "std"}`` (clip to the foreground's 0.5/99.5 percentiles, then subtract the foreground's
  mean and divide by its std -- mean and std of the unclipped samples, as nnU-Net's CTNormalization);
  ``"noNorm"`` -> ``{"mode": "none"}``; ``"rescale_0_1"`` -> ``{"mode": "rescale_0_1"}`` (per volume
  min..max to 0..1); ``"rgb_to_0_1"`` -> ``{"mode": "rgb_to_0_1"}`` (divide by 255); anything else ->
  ``{"mode": "zscore"}`` (each volume by its own mean and std).
* ``classes``: ``{"names": {str(value): name}, "voxels": {str(value): voxels over all cases},
  "cases": {str(value): cases holding it}}`` (the ignore value included where present).
* ``notes``: facts worth a line (TIFF volumes without a spacing JSON, a channel named ``ct`` that
  nnU-Net's table z-scores).

A problem found in any case (an unreadable file, channels or label on different grids, label values
dataset.json does not name, non-finite voxels) is collected; after the scan one ``ValueError``
names them all.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.volumes.io import read_volume
from datamodules.volumes.nnunet import (Case, DatasetInfo, check_case, find_cases, label_counts, label_problem,
                                        read_dataset_json)

FORMAT = 1
#: nnU-Net's clip percentiles of CT channels.
CLIP_PERCENTILES = (0.5, 99.5)
#: nnU-Net's anisotropy threshold (ANISO_THRESHOLD of its experiment planner).
ANISO_THRESHOLD = 3.0
#: nnU-Net's channel name -> normalisation table (nnunetv2/preprocessing/normalization); others: zscore.
NORMALIZATION_BY_NAME = {"CT": "ct", "noNorm": "none", "zscore": "zscore", "rescale_0_1": "rescale_0_1",
                         "rgb_to_0_1": "rgb_to_0_1"}
#: Problems named in the error (the rest are counted).
SHOWN = 10
AXES = "zyx"


@dataclass
class _Record:
    case_id: str
    shape: list[int] | None = None
    spacing: list[float] | None = None
    voxels: dict[str, int] = field(default_factory=dict)
    samples: list[np.ndarray | None] = field(default_factory=list)  # per channel, the foreground samples
    untagged_tiff: int = 0  # TIFF files of the case without a spacing JSON
    problems: list[str] = field(default_factory=list)


def _about(case: Case, error: BaseException) -> str:
    """The error's message, led by the case unless it names it already."""
    text = str(error) if isinstance(error, (ValueError, FileNotFoundError)) else f"{type(error).__name__}: {error}"
    return text if text.startswith(f"Case {case.case_id}") else f"Case {case.case_id}: {text}"


def _read_case(index: int, case: Case, info: DatasetInfo, k: int, seed: int) -> _Record:
    """Read one case (every channel and the label) into its record; problems are recorded, not raised."""
    out = _Record(case.case_id)
    try:
        check_case(case, info)  # headers first: a channel on another grid is named before a voxel is decoded
        label = read_volume(case.label)
        values, counts = label_counts(label.array, case.label)
    except (ValueError, OSError) as e:
        out.problems.append(_about(case, e))
        return out
    problem = label_problem(values, counts, info, case)
    if problem is not None:
        out.problems.append(problem)
    out.voxels = {str(int(v)): int(n) for v, n in zip(values, counts)}
    out.shape = [int(n) for n in label.shape]
    foreground = label.array > 0
    if info.ignore_index is not None:
        foreground &= label.array != info.ignore_index
    del label
    fg_count = int(foreground.sum())
    for channel, path in enumerate(case.images):
        try:
            volume = read_volume(path)
        except (ValueError, OSError) as e:
            out.problems.append(_about(case, e))
            out.samples.append(None)
            continue
        if channel == 0:
            out.spacing = [float(s) for s in volume.spacing]
        if volume.format == "tiff" and volume.header.get("spacing_file") is None:
            out.untagged_tiff += 1
        array = volume.array
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            out.problems.append(f"Case {case.case_id}: {path} holds {bad} NaN/inf voxel(s): replace them (e.g. by the "
                                "volume's minimum) before training")
            out.samples.append(None)
            continue
        voxels = array[foreground]
        if fg_count > k:
            voxels = voxels[np.random.default_rng([seed, index, channel]).integers(0, fg_count, size=k)]
        out.samples.append(voxels)
    return out


def _scan(cases: Sequence[Case], info: DatasetInfo, k: int, seed: int, progress, workers: int) -> list[_Record]:
    """Read every case on ``workers`` threads; the records come back in case order."""
    from tqdm.auto import tqdm

    records: list[_Record | None] = [None] * len(cases)
    disable = None if progress is None else not progress
    with tqdm(total=len(cases), desc="fingerprint (volumes)", unit="case", disable=disable, file=sys.stderr) as bar:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(_read_case, i, case, info, k, seed): i for i, case in enumerate(cases)}
            for future in as_completed(futures):
                records[futures[future]] = future.result()
                bar.update(1)
    return records  # type: ignore[return-value]


def _axes(rows: list[list[float]]) -> dict[str, list[float]] | None:
    if not rows:
        return None
    table = np.asarray(rows, dtype=np.float64)
    return {"median": [float(v) for v in np.median(table, axis=0)],
            "min": [float(v) for v in table.min(axis=0)], "max": [float(v) for v in table.max(axis=0)]}


def _anisotropy(median_spacing: list[float] | None) -> dict[str, Any] | None:
    if median_spacing is None:
        return None
    spacing = np.asarray(median_spacing)
    worst = int(np.argmax(spacing))
    others = np.delete(spacing, worst)
    anisotropic = bool(spacing[worst] > ANISO_THRESHOLD * others.max())
    return {"ratio": float(spacing.max() / spacing.min()), "anisotropic": anisotropic,
            "lowres_axis": worst if anisotropic else None, "threshold": ANISO_THRESHOLD}


def _intensity(name: str, parts: list[np.ndarray]) -> dict[str, Any]:
    parts = [p for p in parts if p is not None and p.size]
    out: dict[str, Any] = {"name": name, "samples": int(sum(p.size for p in parts)), "cases": len(parts)}
    keys = ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5")
    if not parts:
        return out | dict.fromkeys(keys)
    samples = np.concatenate(parts).astype(np.float64)
    lo, median, hi = np.percentile(samples, [CLIP_PERCENTILES[0], 50.0, CLIP_PERCENTILES[1]])
    return out | {"mean": float(samples.mean()), "std": float(samples.std()), "median": float(median),
                  "min": float(samples.min()), "max": float(samples.max()),
                  "percentile_00_5": float(lo), "percentile_99_5": float(hi)}


def normalization_spec(name: str, intensity: dict[str, Any]) -> dict[str, Any]:
    """The normalisation of a channel named ``name`` (nnU-Net's table, module docstring) as a plain spec.

    Args:
        name: the channel's name in dataset.json's ``channel_names``.
        intensity: the channel's foreground statistics (the ``intensity`` entry of the fingerprint).

    Raises:
        ValueError: a CT channel without foreground samples (no statistics to clip with).
    """
    mode = NORMALIZATION_BY_NAME.get(name, "zscore")
    if mode != "ct":
        return {"mode": mode}
    if intensity.get("mean") is None:
        raise ValueError(f"Channel {name!r} is normalised CT-style, from the foreground's intensities, but no "
                         "training label holds foreground (a value > 0): label the structures, or name the channel "
                         "otherwise in dataset.json (e.g. 'zscore') to z-score each volume")
    return {"mode": "ct", "lower": intensity["percentile_00_5"], "upper": intensity["percentile_99_5"],
            "mean": intensity["mean"], "std": intensity["std"]}


def _resolve(root_or_cases: str | Path | Sequence[Case], info: DatasetInfo | None) -> tuple[list[Case], DatasetInfo]:
    if isinstance(root_or_cases, (str, os.PathLike)):
        info = read_dataset_json(root_or_cases) if info is None else info
        return find_cases(root_or_cases, "Tr", info), info
    if info is None:
        raise ValueError("compute_volume_fingerprint(cases, info): a list of cases needs the DatasetInfo of "
                         "read_dataset_json(root), which names the channels and classes")
    cases = list(root_or_cases)
    unlabelled = [c.case_id for c in cases if c.label is None]
    if unlabelled:
        raise ValueError(f"The fingerprint reads labelled cases; {len(unlabelled)} have no label (e.g. "
                         f"{', '.join(unlabelled[:3])}): pass the training cases (find_cases(root, 'Tr'))")
    return cases, info


def compute_volume_fingerprint(
    root_or_cases: str | Path | Sequence[Case],
    info: DatasetInfo | None = None,
    *,
    samples_per_case: int = 10_000,
    max_samples: int = 2_000_000,
    seed: int = 0,
    progress: bool | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Read an nnU-Net raw dataset's training cases once and describe them (the keys: module docstring).

    Args:
        root_or_cases: the dataset folder (its ``imagesTr``/``labelsTr`` are listed by
            :func:`~datamodules.volumes.find_cases`), or the labelled cases to read (a fold's, say).
        info: :func:`~datamodules.volumes.read_dataset_json`'s result; read from the folder when
            ``None``, required with a list of cases.
        samples_per_case: foreground voxels sampled per case and channel; the count drawn is
            ``min(samples_per_case, max_samples // cases)`` (at least 1).
        max_samples: cap on the samples per channel over the whole dataset.
        seed: seeds the sampling (with each case's index and the channel).
        progress: a tqdm bar over the cases: ``None`` when stderr is a terminal, or ``True``/``False``.
        workers: reading threads; ``None``: ``min(8, os.cpu_count())``.

    Raises:
        ValueError: bad options; a 2D dataset; no cases; one error naming every problem found in the
            cases (module docstring); a CT channel without foreground.
        FileNotFoundError: from the listing (a missing dataset.json, label or channel file).
    """
    if int(samples_per_case) < 1 or int(max_samples) < 1:
        raise ValueError(f"samples_per_case and max_samples must be >= 1, got {samples_per_case} and {max_samples}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    cases, info = _resolve(root_or_cases, info)
    if not info.is_3d:
        raise ValueError(f"{info.root} is a 2D dataset (file_ending {info.file_ending}): its fingerprint is "
                         "fingerprint.compute_fingerprint's, of the 2D folder pipeline")
    if not cases:
        raise ValueError(f"No training case to fingerprint in {info.root}")
    k = max(1, min(int(samples_per_case), int(max_samples) // len(cases)))
    workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
    records = _scan(cases, info, k, int(seed), progress, workers)

    problems = [p for r in records for p in r.problems]
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise ValueError(f"{len(problems)} problem(s) in the training cases of {info.root}:"
                         + "".join(f"\n  {p}" for p in problems[:SHOWN]) + more)
    voxels, holding = Counter(), Counter()
    for r in records:
        for value, n in r.voxels.items():
            voxels[value] += n
            holding[value] += int(n > 0)
    order = sorted(voxels, key=int)
    names = {str(v): name for v, name in enumerate(info.class_names)}
    if info.ignore_index is not None:
        names[str(info.ignore_index)] = "ignore"
    shape = _axes([r.shape for r in records if r.shape is not None])
    spacing = _axes([r.spacing for r in records if r.spacing is not None])
    intensity = [_intensity(name, [r.samples[c] for r in records if len(r.samples) > c])
                 for c, name in enumerate(info.channel_names)]
    notes = []
    untagged = sum(r.untagged_tiff for r in records)
    if untagged:
        notes.append(f"{untagged} TIFF file(s) have no spacing JSON (<case>.json, nnU-Net's Tiff3DIO sidecar): "
                     "spacing (1, 1, 1) assumed for them")
    for c, name in enumerate(info.channel_names):
        for known, mode in NORMALIZATION_BY_NAME.items():
            if name != known and name.casefold() == known.casefold():
                notes.append(f"channel {c} is named {name!r}: nnU-Net's table is case-sensitive, so it gets "
                             f"z-score, not {mode}; name it {known!r} for {mode}")
    return {
        "format": FORMAT,
        "kind": "volumes",
        "root": str(info.root) if isinstance(root_or_cases, (str, os.PathLike)) else None,
        "file_ending": info.file_ending,
        "channel_names": list(info.channel_names),
        "class_names": list(info.class_names),
        "ignore_index": info.ignore_index,
        "num_cases": len(records),
        "cases": [{"case": r.case_id, "shape": r.shape, "spacing": r.spacing, "voxels": r.voxels} for r in records],
        "shape": shape,
        "spacing": spacing,
        "anisotropy": _anisotropy(None if spacing is None else spacing["median"]),
        "samples_per_case": k,
        "intensity": intensity,
        "normalization": [normalization_spec(name, stats) for name, stats in zip(info.channel_names, intensity)],
        "classes": {"names": {v: names.get(v, "?") for v in order}, "voxels": {v: voxels[v] for v in order},
                    "cases": {v: holding[v] for v in order}},
        "notes": notes,
    }


def _number(v: float | None) -> str:
    return "?" if v is None else f"{v:.4g}"


def _triple(values: list[float] | None, sep: str = "x") -> str:
    return "?" if values is None else sep.join(_number(v) for v in values)


def volume_summary_lines(fp: dict[str, Any]) -> list[str]:
    """5-6 short console lines: cases, shape and spacing, anisotropy, normalisation per channel, class shares."""
    names = fp["channel_names"]
    lines = [f"volumes: {fp['num_cases']} training cases, {len(names)} channel(s) ({', '.join(names)}), "
             f"{fp['file_ending']}"]
    shape, spacing = fp["shape"] or {}, fp["spacing"] or {}
    lines.append(f"shape (D x H x W) median {_triple(shape.get('median'))} (min {_triple(shape.get('min'))}, max "
                 f"{_triple(shape.get('max'))}); spacing (z, y, x) median {_triple(spacing.get('median'), ' x ')}")
    aniso = fp["anisotropy"]
    if aniso is not None:
        verdict = (f"anisotropic, {AXES[aniso['lowres_axis']]} is the low-resolution axis" if aniso["anisotropic"]
                   else "not anisotropic")
        lines.append(f"anisotropy {aniso['ratio']:.3g} (max/min median spacing): {verdict} "
                     f"(nnU-Net: coarsest > {aniso['threshold']:g} x the next)")
    shown = []
    for c, (name, spec) in enumerate(zip(names, fp["normalization"])):
        if spec["mode"] == "ct":
            shown.append(f"ch{c} {name}: ct clip {_number(spec['lower'])}..{_number(spec['upper'])}, "
                         f"mean {_number(spec['mean'])}, std {_number(spec['std'])}")
        elif spec["mode"] == "zscore":
            shown.append(f"ch{c} {name}: z-score per volume")
        else:
            shown.append(f"ch{c} {name}: {spec['mode']}")
    lines.append("normalisation: " + "; ".join(shown))
    classes = fp["classes"]
    total = sum(classes["voxels"].values())
    if total:
        lines.append("classes (voxel share, cases): " + ", ".join(
            f"{classes['names'].get(v, v)} {100 * n / total:.2f}% ({classes['cases'][v]})"
            for v, n in classes["voxels"].items()))
    lines += [f"note: {note}" for note in fp.get("notes", [])]
    return lines
