"""Cross-validation folds: ``data.folds=K data.fold=k`` instead of the single train/val split.

Why a module of its own: a fold is only worth comparing with another if both come from the same
partition of the data, so the partition is a pure function of the image keys, ``K``, the seed and
the group pattern (:func:`make_folds`), and is written down once (``splits.json``, nnU-Net's
``splits_final.json`` format: a list of ``K`` ``{"train": [keys], "val": [keys]}``) under the
cache folder (:func:`resolve_folds`; never in the data folder, which may be read-only or shared)
and copied into every run folder. Every fold of a sweep and every later run on the same data then
validates on the same images. ``data.split_file`` brings a partition made elsewhere, checked
against the data (:func:`validate_folds`).

A key is the pairing key of :mod:`datamodules.layout`: the image's path below its images folder
without the suffix or extension (``patient01_slice3``, ``aachen/aachen_000000_000019``).

``data.group_pattern`` (a regex over the keys, one capture group or the whole match) keeps every
image of a group -- a patient, a scene, a field -- inside one fold: images of one patient on both
sides of a fold let a network score on what it has memorised (:func:`group_keys`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import write_json_atomic

#: One fold: the keys it trains on and the keys it validates on.
Fold = dict[str, list[str]]
#: Version of the fold assignment: part of the cache name, so a changed algorithm never reads old files.
FORMAT = 1
SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class FoldOptions:
    """The four ``data.*`` fold settings, checked (:func:`check_fold_options`)."""

    folds: int | None
    fold: int | None
    split_file: Path | None
    group_pattern: str | None


@dataclass(frozen=True)
class FoldPlan:
    """The partition a run uses: every fold, which one this run validates on, and where it is stored."""

    folds: list[Fold]
    fold: int
    path: Path | None  # the cached or given splits file; None: computed, not stored (the datamodule alone)

    def summary(self) -> str:
        """The console line every fold run logs."""
        this = self.folds[self.fold]
        where = self.path if self.path is not None else "computed, not cached"
        return (f"fold {self.fold} of {len(self.folds)}: {len(this['train'])} train / {len(this['val'])} val images "
                f"(splits {where})")


def _as_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"data.{name}={value!r} must be an integer or null")
    return int(value)


def check_fold_options(folds: Any = None, fold: Any = None, split_file: Any = None,
                       group_pattern: Any = None) -> FoldOptions | None:
    """The fold settings checked on their own (before any file is listed); ``None``: the single split.

    Raises:
        ValueError: ``data.folds`` < 2, ``data.fold`` without ``data.folds`` / ``data.split_file``
            (or out of range), ``data.folds`` without ``data.fold``, ``data.group_pattern`` without
            folds, a pattern that is no regular expression or has several capture groups.
    """
    folds, fold = _as_int(folds, "folds"), _as_int(fold, "fold")
    split_path = None if split_file in (None, "") else Path(str(split_file)).expanduser().absolute()
    pattern = None if group_pattern in (None, "") else str(group_pattern)
    if folds is None and fold is None and split_path is None and pattern is None:
        return None
    if folds is not None and folds < 2:
        raise ValueError(f"data.folds={folds}: cross-validation needs at least 2 folds (e.g. data.folds=5); "
                         "data.folds=null trains on the single train/val split.")
    if folds is None and split_path is None:
        if fold is not None:
            raise ValueError(f"data.fold={fold} without data.folds: set the number of folds too (e.g. data.folds=5 "
                             f"data.fold={fold}), or bring your own with data.split_file=PATH.")
        raise ValueError(f"data.group_pattern={pattern!r} keeps each group inside one cross-validation fold, but "
                         "data.folds is not set: add data.folds=K data.fold=k, or drop data.group_pattern.")
    if fold is not None and (fold < 0 or (folds is not None and fold >= folds)):
        if folds is None:
            raise ValueError(f"data.fold={fold} is out of range: folds are numbered from 0.")
        raise ValueError(f"data.fold={fold} is out of range for data.folds={folds}: use data.fold=0..{folds - 1}.")
    if folds is not None and fold is None and split_path is None:
        raise ValueError(f"data.folds={folds} needs data.fold, the fold this run validates on (0..{folds - 1}); "
                         f"train them all with a multirun: python train.py -m data.folds={folds} "
                         f"data.fold={','.join(str(i) for i in range(folds))}")
    if pattern is not None:
        compile_group_pattern(pattern)
    return FoldOptions(folds, fold, split_path, pattern)


def compile_group_pattern(pattern: str) -> re.Pattern:
    """``data.group_pattern`` compiled; at most one capture group (the group id), else the whole match."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"data.group_pattern={pattern!r} is not a regular expression ({err}); e.g. "
                         "'^(patient\\d+)_' groups patient07_slice3 under patient07.") from None
    if compiled.groups > 1:
        raise ValueError(f"data.group_pattern={pattern!r} has {compiled.groups} capture groups: use one, the group "
                         "id (e.g. '^(patient\\d+)_'), and (?:...) for the others.")
    return compiled


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


def group_keys(keys: Sequence[str], pattern: str) -> dict[str, list[str]]:
    """``{group id: [keys]}``: the first match of ``pattern`` in each key (its capture group, else the whole match).

    Raises:
        ValueError: the pattern matches no key (a few keys are named, to write one that does), or
            some keys do not match (listed: they would belong to no group).
    """
    compiled = compile_group_pattern(pattern)
    groups: dict[str, list[str]] = {}
    unmatched = []
    for key in sorted(keys):
        found = compiled.search(key)
        group = None if found is None else found.group(compiled.groups and 1)
        if not group:
            unmatched.append(key)
        else:
            groups.setdefault(group, []).append(key)
    if not groups:
        raise ValueError(f"data.group_pattern={pattern!r} matches none of the {len(keys)} image keys, e.g. "
                         f"{_few(sorted(keys))}: write a pattern for these names (keys are paths below the images "
                         "folder without the extension).")
    if unmatched:
        raise ValueError(f"data.group_pattern={pattern!r} matches no group in {len(unmatched)} image key(s): "
                         f"{_few(unmatched)}. Every image needs a group: widen the pattern, or rename those files.")
    return groups


def make_folds(keys: Sequence[str], folds: int, seed: int = 0, group_pattern: str | None = None) -> list[Fold]:
    """``folds`` disjoint validation sets covering ``keys``; each fold trains on the others.

    A pure function of its arguments (the order of ``keys`` does not matter). Groups
    (:func:`group_keys`; without a pattern every key is its own group) are sorted by size, largest
    first, ties in a seeded random order, and each goes to the fold with the fewest images so far
    (the lowest index on a tie): folds as equal in size as the groups allow, and without groups a
    seeded shuffle dealt round-robin.

    Raises:
        ValueError: fewer than 2 folds, or more folds than images (or groups).
    """
    keys = sorted(set(keys))
    if folds < 2:
        raise ValueError(f"data.folds={folds}: cross-validation needs at least 2 folds (e.g. data.folds=5).")
    groups = group_keys(keys, group_pattern) if group_pattern else {key: [key] for key in keys}
    if len(groups) < folds:
        what = f"{len(groups)} groups of data.group_pattern={group_pattern!r}" if group_pattern else \
            f"{len(keys)} labelled images"
        raise ValueError(f"data.folds={folds} needs at least {folds} {'groups' if group_pattern else 'images'}, and "
                         f"the data has {what}: use data.folds={max(len(groups), 2)} or fewer, or add data.")
    names = sorted(groups)
    tie = dict(zip(names, np.random.default_rng(seed).permutation(len(names)).tolist()))
    sizes, members = [0] * folds, [[] for _ in range(folds)]
    for name in sorted(names, key=lambda g: (-len(groups[g]), tie[g])):
        target = min(range(folds), key=lambda i: (sizes[i], i))
        sizes[target] += len(groups[name])
        members[target] += groups[name]
    out = []
    for i in range(folds):
        val = set(members[i])
        out.append({"train": [k for k in keys if k not in val], "val": sorted(val)})
    return out


def validate_folds(folds: Any, keys: Sequence[str], source: str, group_pattern: str | None = None) -> list[Fold]:
    """``folds`` as read from a splits file, checked against the data's labelled ``keys``.

    Raises:
        ValueError: naming ``source``: not a list of ``{"train": [...], "val": [...]}``, a key no
            labelled image has (a test image included), a fold whose train and val share a key,
            validation sets that overlap between folds, or (with ``group_pattern``) a group on
            both sides of a fold.
    """
    layout = 'a list of folds, each {"train": [keys], "val": [keys]} (nnU-Net\'s splits_final.json)'
    if not isinstance(folds, list) or not folds or not all(
        isinstance(f, dict) and set(f) >= {"train", "val"} and all(
            isinstance(f[s], list) and all(isinstance(k, str) for k in f[s]) for s in ("train", "val"))
        for f in folds
    ):
        raise ValueError(f"{source} must hold {layout}.")
    known = set(keys)
    unknown = sorted({k for f in folds for s in ("train", "val") for k in f[s]} - known)
    if unknown:
        raise ValueError(f"{source} names {len(unknown)} key(s) that no labelled image has: {_few(unknown)}. Keys "
                         "are image paths below the images folder without the extension, e.g. "
                         f"{_few(sorted(keys), 3)}; test/ images belong to no fold.")
    seen: dict[str, int] = {}
    for i, fold in enumerate(folds):
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise ValueError(f"{source}: fold {i} trains and validates on the same image(s): {_few(both)}.")
        if not fold["val"] or not fold["train"]:
            raise ValueError(f"{source}: fold {i} has no {'val' if not fold['val'] else 'train'} images.")
        for key in fold["val"]:
            if key in seen:
                raise ValueError(f"{source}: '{key}' is validated in fold {seen[key]} and fold {i}: the folds' val "
                                 "lists must be disjoint.")
            seen[key] = i
    if group_pattern:
        group_of = {key: g for g, members in group_keys(keys, group_pattern).items() for key in members}
        for i, fold in enumerate(folds):
            split = sorted({group_of[k] for k in fold["val"]} & {group_of[k] for k in fold["train"]})
            if split:
                raise ValueError(f"{source}: fold {i} has group(s) {_few(split)} of data.group_pattern="
                                 f"{group_pattern!r} in both train and val; move each group's images to one side.")
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in folds]


def load_split_file(path: str | Path, keys: Sequence[str], group_pattern: str | None = None) -> list[Fold]:
    """``data.split_file``: read and :func:`validate_folds`.

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON, or the checks of :func:`validate_folds`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.split_file={path} does not exist: give the path of a splits JSON file "
                                "(nnU-Net's splits_final.json format), or data.split_file=null.")
    try:
        folds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"data.split_file={path} is not readable JSON ({err}).") from None
    return validate_folds(folds, keys, f"data.split_file={path}", group_pattern)


def write_splits(folds: list[Fold], path: str | Path) -> Path:
    """Write ``folds`` as JSON to ``path`` atomically (datamodules/io.py: a temporary file, then ``os.replace``)."""
    return write_json_atomic(path, folds, indent=1)


def splits_cache_path(cache_dir: str | Path, keys: Sequence[str], folds: int, seed: int,
                      group_pattern: str | None) -> Path:
    """``<cache_dir>/splits/splits-<hash>.json``, the hash over the sorted keys, ``folds``, seed and pattern."""
    spec = {"format": FORMAT, "keys": sorted(keys), "folds": int(folds), "seed": int(seed),
            "group_pattern": group_pattern}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir).expanduser().absolute() / "splits" / f"splits-{digest[:16]}.json"


def _cached(path: Path, computed: list[Fold], keys: Sequence[str]) -> list[Fold]:
    """The folds at ``path`` (written there first when absent or unreadable), which must be ``computed``.

    A stored file that differs from today's computation (edited by hand, or written by another
    version of :func:`make_folds`) is refused rather than replaced: the runs before it used those
    folds, and this datamodule would use others.
    """
    try:
        stored = validate_folds(json.loads(path.read_text(encoding="utf-8")), keys, str(path))
    except (OSError, ValueError):
        write_splits(computed, path)
        return computed
    if stored != computed:
        raise ValueError(f"The stored splits {path} differ from the folds computed now for the same data, "
                         f"data.folds, data.seed and data.group_pattern. Keep the stored ones with "
                         f"data.split_file={path}, or delete the file to store the new ones.")
    return stored


def resolve_folds(keys: Sequence[str], options: FoldOptions, *, seed: int = 0, cache_dir: str | Path | None = None,
                  data_root: str | Path | None = None) -> FoldPlan:
    """The folds of ``keys`` for ``options``: the given split file, else computed and (with ``cache_dir``) stored.

    Raises:
        ValueError: the errors of :func:`make_folds` / :func:`validate_folds`, ``data.folds``
            against the split file's length, ``data.fold`` out of range, a cache folder inside
            ``data_root``.
    """
    if options.split_file is not None:
        folds = load_split_file(options.split_file, keys, options.group_pattern)
        path = options.split_file
        if options.folds is not None and options.folds != len(folds):
            raise ValueError(f"data.folds={options.folds} but data.split_file={path} holds {len(folds)} folds: "
                             "leave data.folds unset (null) with a split file, or make them agree.")
    else:
        folds = make_folds(keys, options.folds, seed, options.group_pattern)
        path = None
        if cache_dir is not None:
            path = splits_cache_path(cache_dir, keys, options.folds, seed, options.group_pattern)
            if data_root is not None and Path(data_root).resolve() in (path.parent.resolve(),
                                                                         *path.parent.resolve().parents):
                raise ValueError(f"The splits cache {path.parent} is inside data.root={data_root}: the cache never "
                                 "goes into the data folder (it may be read-only or shared). Set paths.cache_dir "
                                 "to another folder (default: logs/cache).")
            folds = _cached(path, folds, keys)
    fold = options.fold
    if fold is None:
        if len(folds) != 1:
            raise ValueError(f"data.split_file={path} holds {len(folds)} folds: choose one with data.fold "
                             f"(0..{len(folds) - 1}).")
        fold = 0
    if not 0 <= fold < len(folds):
        raise ValueError(f"data.fold={fold} is out of range: {path} holds {len(folds)} folds, use data.fold="
                         f"0..{len(folds) - 1}.")
    return FoldPlan(folds, fold, path)
