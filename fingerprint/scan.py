"""The dataset fingerprint: every file read once at start-up, before anything trains (as nnU-Net's).

Why: a wrong ``task``, a JPEG mask, a 4-channel TIFF among RGB photos or an ``ignore_index``
that swallows the foreground otherwise surfaces mid-epoch as one error about one file -- or not
at all (a run that trains to Dice 0.0). Reading the headers, the masks and a sample of the
training pixels once gives :mod:`fingerprint.checks` everything to check the config against,
naming every problem at once, and gives ``data.normalize=dataset`` its per-channel statistics.

What is read: every image's header (:func:`datamodules.io.read_header`), every mask whole
(:func:`datamodules.io.read_mask_file`: a mask's values need all its pixels), and every training
image decoded (:func:`datamodules.io.read_image`) to draw intensity samples. Files are read by a
thread pool (PIL, tifffile and zlib decode outside the GIL); every per-file step is O(pixels) in
numpy. A file that fails to read is recorded in ``masks.unreadable``, never raised, so the checks
name every problem in one go.

Keys of the returned dict (plain JSON types; "in pair order" = the order of ``splits[split]``):

* ``format``: 1, the layout version; ``key``: the cache key (:mod:`fingerprint.cache`).
* ``splits``: ``{split: number of pairs}``.
* ``images``:
    * ``count``: images listed (all splits, unreadable ones included).
    * ``sizes``: ``{"min", "median", "max"}: [h, w]`` over the readable images of all splits, each
      taken per axis (``min`` is the smallest height and the smallest width, which may come from
      two images; ``median`` the lower median of each axis).
    * ``channels``: ``{str(channel count): images}``; ``dtypes``: ``{dtype: images}`` (the dtype
      :func:`~datamodules.io.read_image` returns); ``layouts``: ``{"<channels> <dtype>": images}``.
    * ``examples``: ``{"channels": {str(count): [first 3 files]}, "dtypes": {...}, "layouts": {...}}``.
    * ``sizes_by_split``: ``{split: [[h, w] or null (unreadable), ...]}`` in pair order.
* ``intensity`` (training images only; statistics per channel over the samples):
    * ``channels``: the common channel count (3 when greyscale uint8 images sit among RGB uint8
      ones: they are repeated to 3 channels, as the datamodule does), or ``null`` when the
      training images differ; ``sampled_channels``: the (majority) count the statistics have.
    * ``images``: images sampled; ``skipped``: training images left out (another channel count,
      or unreadable); ``samples_per_image``: pixels drawn per image (uniform, with replacement,
      seeded by ``seed`` and the image's index; every pixel, in order, when the image has no
      more pixels than that); ``samples``: rows in all.
    * ``percentiles``: ``{str(p): [per channel]}`` for p in 0.5, 1, 5, 25, 50, 75, 95, 99, 99.5
      and the clip percentiles (keys as ``f"{p:g}"``; numpy's linear interpolation).
    * ``mean``, ``std``, ``min``, ``max``: ``[per channel]``.
    * ``clip``: ``{"percentiles": [lo, hi], "lower", "upper": [per channel] (those percentiles),
      "mean", "std": [per channel] of the samples clipped to [lower, upper]}``: what
      ``data.normalize=dataset`` z-scores with.
    * ``constant_channels``: indices whose samples are all one value (an opaque alpha channel).
    * Non-finite samples of float images (NaN, inf) are left out of every statistic; a channel
      without finite samples gets ``null``.
* ``masks``:
    * ``values``: every raw value seen, sorted (all splits); ``full``: the ``full`` values seen
      (255 for 8-bit files, 65535 for 16-bit, 1 for palette-decoded colour masks).
    * ``pixels``: ``{str(value): pixels}`` and ``train_images``: ``{str(value): images holding it}``
      over the training masks (an image counts once even with several mask files).
    * ``files``: ``{str(value): [first 3 mask files holding it]}`` (all splits).
    * ``value_sets``: ``[{"values": [...], "full": n, "count": files, "files": [first 3]}, ...]``,
      the distinct per-file value sets (the first 64 seen; ``value_sets_more``: files in sets not
      listed). Binary decoding is per file (0/1 or 0/full), which the union ``values`` cannot tell.
    * ``files_per_image``: sorted distinct numbers of mask files per image (multilabel: num_classes).
    * ``labels``: ``{str(k): {"pixels": n, "train_images": n, "values": {str(v): training images}}}``
      for the k-th mask file of each pair -- multilabel label k, "on" where the value is non-zero.
    * ``lossy``: mask files stored as JPEG (all of them); ``size_mismatches``: ``[[image, mask,
      [h, w] image, [h, w] mask], ...]`` (all of them); ``unreadable``: ``[[file, message], ...]``,
      images and masks that failed to read.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import io as dio

from .cache import FORMAT, cache_file, cache_key, check_cache_dir, load_cached, write_json_atomic

#: The percentiles every fingerprint records (the clip percentiles are added to them).
PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)
#: Example files kept per value / channel count / dtype (for messages).
EXAMPLES = 3
#: Distinct per-file mask value sets kept (a binary dataset has a handful; the rest are counted).
MAX_VALUE_SETS = 64

Pair = tuple[Path, tuple[Path, ...]]


def percentile_key(p: float) -> str:
    """``0.5 -> "0.5"``, ``1.0 -> "1"``: the keys of ``intensity.percentiles``."""
    return f"{float(p):g}"


@dataclass
class _Mask:
    path: str
    shape: tuple[int, int] | None = None
    full: int | None = None
    values: np.ndarray | None = None  # distinct values
    counts: np.ndarray | None = None  # pixels per value
    error: str | None = None


@dataclass
class _Pair:
    image: str
    info: tuple[int, int, int, str] | None = None  # h, w, channels, dtype
    error: str | None = None
    samples: np.ndarray | None = None  # [k, C] in the image's dtype (training images)
    masks: list[_Mask] = field(default_factory=list)


def _message(error: BaseException) -> str:
    """The error's text, led by its type when that is not already a sentence naming the file."""
    text = str(error)
    return text if isinstance(error, dio.ImageReadError) or (text and type(error) is ValueError) else \
        f"{type(error).__name__}: {text}"


def _value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an integer mask and their pixel counts: a histogram, not a hash table."""
    flat = values.ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if flat.dtype == np.uint8:
        counts = np.bincount(flat, minlength=256)
    elif flat.dtype.kind in "ui" and int(flat.min()) >= 0 and int(flat.max()) < 1 << 20:
        counts = np.bincount(flat.astype(np.intp, copy=False))
    else:  # negative or huge labels: rare, and np.unique is exact for them
        distinct, counts = np.unique(flat, return_counts=True)
        return distinct.astype(np.int64), counts.astype(np.int64)
    distinct = np.flatnonzero(counts)
    return distinct, counts[distinct]


def _sample(image: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[k, C]`` pixels drawn uniformly (every pixel, in order, when ``k`` covers the image)."""
    flat = image.reshape(-1, image.shape[-1])
    if k >= flat.shape[0]:
        return flat.copy()
    return flat[rng.integers(0, flat.shape[0], size=k)]


def _read_pair(index: int, pair: Pair, train: bool, palette, k: int, seed: int) -> _Pair:
    """Read one image (header, or decoded and sampled when ``train``) and its mask(s)."""
    image_path, mask_paths = pair
    out = _Pair(str(image_path))
    try:
        if train:
            array = dio.read_image(image_path)
            out.info = (array.shape[0], array.shape[1], array.shape[2], array.dtype.name)
            out.samples = _sample(array, k, np.random.default_rng([seed, index]))
            del array
        else:
            header = dio.read_header(image_path)
            out.info = (header.height, header.width, header.channels, header.dtype)
    except Exception as e:  # every unreadable file is reported together by the checks
        out.error = _message(e)
    for mask_path in mask_paths:
        record = _Mask(str(mask_path))
        try:
            mask = dio.read_mask_file(mask_path, palette)
        except Exception as e:
            record.error = _message(e)
        else:
            record.shape = (int(mask.values.shape[0]), int(mask.values.shape[1]))
            record.full = int(mask.full)
            record.values, record.counts = _value_counts(mask.values)
        out.masks.append(record)
    return out


def _normalise_splits(splits: Mapping[str, Sequence[Any]]) -> dict[str, list[Pair]]:
    """``{split: [(Path, (Path, ...)), ...]}``; a bare mask path is accepted as a one-mask tuple."""
    if "train" not in splits:
        raise ValueError(f"compute_fingerprint needs a 'train' split, got splits {sorted(splits)}")
    out = {}
    for name, pairs in splits.items():
        rows = []
        for image, masks in pairs or []:
            masks = (masks,) if isinstance(masks, (str, os.PathLike)) else tuple(masks)
            rows.append((Path(image), tuple(Path(m) for m in masks)))
        out[str(name)] = rows
    return out


def _check_options(percentiles, samples_per_image, max_samples, seed) -> tuple[float, float]:
    lo, hi = (float(p) for p in percentiles)
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"percentiles must be [lo, hi] with 0 <= lo < hi <= 100 (e.g. [0.5, 99.5]), "
                         f"got {list(percentiles)}")
    if int(samples_per_image) < 1 or int(max_samples) < 1:
        raise ValueError(f"samples_per_image and max_samples must be >= 1, got {samples_per_image} and {max_samples}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return lo, hi


def _scan(splits: dict[str, list[Pair]], palette, k: int, seed: int, progress, workers: int) -> dict[str, list[_Pair]]:
    """Read every pair of every split on ``workers`` threads; the records come back in pair order."""
    from tqdm.auto import tqdm

    jobs = [(split, i, pair) for split, pairs in splits.items() for i, pair in enumerate(pairs)]
    records: dict[str, list[_Pair | None]] = {split: [None] * len(pairs) for split, pairs in splits.items()}
    total = sum(1 + len(pair[1]) for _, _, pair in jobs)
    disable = None if progress is None else not progress
    with tqdm(total=total, desc="fingerprint (files)", unit="file", disable=disable, file=sys.stderr) as bar:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(_read_pair, i, pair, split == "train", palette, k, seed): (split, i, pair)
                       for split, i, pair in jobs}
            for future in as_completed(futures):
                split, i, pair = futures[future]
                records[split][i] = future.result()
                bar.update(1 + len(pair[1]))
    return records  # type: ignore[return-value]


def _first(store: dict[str, list[str]], key: str, path: str) -> None:
    files = store.setdefault(key, [])
    if len(files) < EXAMPLES:
        files.append(path)


def _images(records: dict[str, list[_Pair]]) -> dict[str, Any]:
    channels, dtypes, layouts = Counter(), Counter(), Counter()
    examples: dict[str, dict[str, list[str]]] = {"channels": {}, "dtypes": {}, "layouts": {}}
    sizes_by_split, sizes = {}, []
    for split, rows in records.items():
        sizes_by_split[split] = []
        for r in rows:
            if r.info is None:
                sizes_by_split[split].append(None)
                continue
            h, w, c, dtype = r.info
            sizes_by_split[split].append([h, w])
            sizes.append((h, w))
            for counter, store, key in ((channels, "channels", str(c)), (dtypes, "dtypes", dtype),
                                        (layouts, "layouts", f"{c} {dtype}")):
                counter[key] += 1
                _first(examples[store], key, r.image)
    summary = None
    if sizes:
        hs, ws = sorted(h for h, _ in sizes), sorted(w for _, w in sizes)
        mid = (len(sizes) - 1) // 2
        summary = {"min": [hs[0], ws[0]], "median": [hs[mid], ws[mid]], "max": [hs[-1], ws[-1]]}
    return {
        "count": sum(len(rows) for rows in records.values()),
        "sizes": summary,
        "channels": dict(channels),
        "dtypes": dict(dtypes),
        "layouts": dict(layouts),
        "examples": examples,
        "sizes_by_split": sizes_by_split,
    }


def _finite_column(samples: np.ndarray, c: int) -> np.ndarray:
    column = samples[:, c].astype(np.float64)
    return column if samples.dtype.kind in "biu" else column[np.isfinite(column)]


def _intensity(train: list[_Pair], clip: tuple[float, float], k: int) -> dict[str, Any]:
    """Per-channel statistics of the training samples (module docstring, ``intensity``)."""
    readable = [r for r in train if r.samples is not None]
    counts = Counter(r.info[2] for r in readable)
    majority = max(counts, key=lambda c: (counts[c], c)) if counts else None
    major_dtypes = {r.info[3] for r in readable if r.info[2] == majority}
    grey_fits = majority == 3 and major_dtypes == {"uint8"}
    parts, skipped = [], len(train) - len(readable)
    for r in readable:
        if r.info[2] == majority:
            parts.append(r.samples)
        elif grey_fits and r.info[2] == 1 and r.info[3] == "uint8":
            parts.append(np.repeat(r.samples, 3, axis=1))
        else:
            skipped += 1
    common = None
    if counts and all(c == majority or (grey_fits and c == 1) for c in counts):
        common = majority
    levels = sorted({*PERCENTILES, *clip})
    out: dict[str, Any] = {
        "channels": common, "sampled_channels": majority, "images": len(parts), "skipped": skipped,
        "samples_per_image": k, "samples": int(sum(len(p) for p in parts)),
        "percentiles": {percentile_key(p): [] for p in levels},
        "mean": [], "std": [], "min": [], "max": [],
        "clip": {"percentiles": list(clip), "lower": [], "upper": [], "mean": [], "std": []},
        "constant_channels": [],
    }
    if not parts:
        return out
    samples = np.concatenate(parts)
    del parts
    for c in range(samples.shape[1]):
        column = _finite_column(samples, c)
        if column.size == 0:
            for key in ("mean", "std", "min", "max"):
                out[key].append(None)
            for key in ("lower", "upper", "mean", "std"):
                out["clip"][key].append(None)
            for p in levels:
                out["percentiles"][percentile_key(p)].append(None)
            continue
        values = np.percentile(column, levels)
        for p, v in zip(levels, values):
            out["percentiles"][percentile_key(p)].append(float(v))
        lo, hi = float(np.percentile(column, clip[0])), float(np.percentile(column, clip[1]))
        clipped = np.clip(column, lo, hi)
        low, high = float(column.min()), float(column.max())
        out["mean"].append(float(column.mean()))
        out["std"].append(float(column.std()))
        out["min"].append(low)
        out["max"].append(high)
        out["clip"]["lower"].append(lo)
        out["clip"]["upper"].append(hi)
        out["clip"]["mean"].append(float(clipped.mean()))
        out["clip"]["std"].append(float(clipped.std()))
        if low == high:
            out["constant_channels"].append(c)
    return out


def _masks(records: dict[str, list[_Pair]]) -> dict[str, Any]:
    """Mask values, per-value pixel and image counts, per-file value sets and the file problems."""
    values, fulls = set(), set()
    pixels, train_images, files = Counter(), Counter(), {}
    value_sets: dict[tuple[int, tuple[int, ...]], dict[str, Any]] = {}
    sets_more = 0
    labels: dict[str, dict[str, Any]] = {}
    per_image = set()
    lossy, mismatches, unreadable = [], [], []
    for split, rows in records.items():
        train = split == "train"
        for r in rows:
            if r.error is not None:
                unreadable.append([r.image, r.error])
            per_image.add(len(r.masks))
            in_image = set()
            for position, m in enumerate(r.masks):
                if Path(m.path).suffix.lower() in dio.LOSSY_EXTENSIONS:
                    lossy.append(m.path)
                if m.error is not None:
                    unreadable.append([m.path, m.error])
                    continue
                if r.info is not None and tuple(r.info[:2]) != m.shape:
                    mismatches.append([r.image, m.path, list(r.info[:2]), list(m.shape)])
                distinct = [int(v) for v in m.values]
                values.update(distinct)
                fulls.add(m.full)
                for v in distinct:
                    _first(files, str(v), m.path)
                signature = (m.full, tuple(distinct))
                if signature in value_sets:
                    entry = value_sets[signature]
                    entry["count"] += 1
                    if len(entry["files"]) < EXAMPLES:
                        entry["files"].append(m.path)
                elif len(value_sets) < MAX_VALUE_SETS:
                    value_sets[signature] = {"values": distinct, "full": m.full, "count": 1, "files": [m.path]}
                else:
                    sets_more += 1
                label = labels.setdefault(str(position), {"pixels": 0, "train_images": 0, "values": {}})
                if not train:
                    continue
                in_image.update(distinct)
                on = sum(int(n) for v, n in zip(distinct, m.counts) if v != 0)
                label["pixels"] += on
                label["train_images"] += int(on > 0)
                for v, n in zip(distinct, m.counts):
                    pixels[str(v)] += int(n)
                    label["values"][str(v)] = label["values"].get(str(v), 0) + 1
            for v in in_image:
                train_images[str(v)] += 1
    return {
        "values": sorted(values),
        "full": sorted(fulls),
        "pixels": {str(v): pixels[str(v)] for v in sorted(values) if str(v) in pixels},
        "train_images": {str(v): train_images[str(v)] for v in sorted(values) if str(v) in train_images},
        "files": {str(v): files[str(v)] for v in sorted(values)},
        "value_sets": list(value_sets.values()),
        "value_sets_more": sets_more,
        "files_per_image": sorted(per_image),
        "labels": labels,
        "lossy": lossy,
        "size_mismatches": mismatches,
        "unreadable": unreadable,
    }


def compute_fingerprint(
    splits: Mapping[str, Sequence[Pair]],
    *,
    palette: Sequence[Sequence[int]] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
    samples_per_image: int = 10_000,
    max_samples: int = 2_000_000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Read the dataset once and describe it (the keys: module docstring).

    Args:
        splits: ``{"train": pairs, "val": pairs, "test": pairs}`` (val/test may be empty), each pair
            ``(image, (mask, ...))`` as :mod:`datamodules.folder` lists them.
        palette: ``palette[k] = (r, g, b)`` of class k, for colour masks (passed to ``read_mask_file``).
        percentiles: ``[lo, hi]``, the clip of ``data.normalize=dataset``.
        samples_per_image: intensity samples per training image; the count actually drawn is
            ``min(samples_per_image, max_samples // training images)`` (at least 1).
        max_samples: cap on the samples per channel over the whole dataset.
        seed: seeds the sampling (with each image's index: the same samples whatever the thread order).
        cache_dir: a folder for the cache (:mod:`fingerprint.cache`), or ``None``: no cache.
        progress: a tqdm bar over the files: ``None`` when stderr is a terminal, or ``True``/``False``.
        workers: reading threads; ``None``: ``min(8, os.cpu_count())``.

    Raises:
        ValueError: bad options, or a ``cache_dir`` that is a folder of the data. Unreadable files
            are recorded (``masks.unreadable``), not raised: :func:`~fingerprint.check_fingerprint`
            reports them with every other problem.
    """
    splits = _normalise_splits(splits)
    clip = _check_options(percentiles, samples_per_image, max_samples, seed)
    options = dict(palette=palette, percentiles=clip, samples_per_image=samples_per_image,
                   max_samples=max_samples, seed=seed)
    key = cache_key(splits, **options)
    path = None
    if cache_dir is not None:
        parents = {os.path.dirname(os.path.abspath(f)) for pairs in splits.values()
                   for image, masks in pairs for f in (image, *masks)}
        folders = {Path(p).resolve() for p in parents}  # a few folders resolved, not every file
        path = cache_file(check_cache_dir(cache_dir, folders), key)
        cached = load_cached(path, key)
        if cached is not None:
            return cached
    n_train = len(splits["train"])
    k = max(1, min(int(samples_per_image), int(max_samples) // max(n_train, 1)))
    workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
    records = _scan(splits, palette, k, int(seed), progress, workers)
    fp = {
        "format": FORMAT,
        "key": key,
        "splits": {split: len(pairs) for split, pairs in splits.items()},
        "images": _images(records),
        "intensity": _intensity(records["train"], clip, k),
        "masks": _masks(records),
    }
    if path is not None:
        write_json_atomic(path, fp)
    return fp
