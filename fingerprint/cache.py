"""The fingerprint cache: a re-start costs stat calls and one JSON read, not a pass over the pixels.

The key is a sha256 over what the fingerprint depends on: every file of every split with its
size and modification time (``mtime_ns``), the split it belongs to and its place in the pairing
(which masks belong to which image), plus ``palette``, ``percentiles``, ``samples_per_image``,
``max_samples``, ``seed`` and :data:`FORMAT`. Editing, replacing or touching a file, moving it to
another split or changing a sampling option gives a new key, hence a fresh scan.

The files are hashed in pair order, not sorted: ``sizes_by_split`` is stored in pair order (the
crop planning zips it with the pairs), so a reordered split must not be served a stale list.

The cache lives in a folder of its own (the run's or the user's cache folder), never next to the
data: a dataset may sit on a read-only share and be used by several runs with different options.
Files are written atomically (a temporary file, then ``os.replace``), so a crash or a second run
writing the same key never leaves half a JSON behind; a file that does not parse is ignored and
rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from datamodules.io import write_json_atomic  # noqa: F401 -- the one atomic JSON write, re-exported

#: Version of the fingerprint's layout: part of the key, so an older cache is never read as a newer one.
FORMAT = 1


def _stat(path: Path) -> tuple[int, int]:
    """``(size, mtime_ns)``, or ``(-1, -1)`` for a missing file (the scan then reports it unreadable)."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def cache_key(
    splits: Mapping[str, Sequence[tuple[Path, tuple[Path, ...]]]],
    *,
    palette: Sequence[Sequence[int]] | None,
    percentiles: Sequence[float],
    samples_per_image: int,
    max_samples: int,
    seed: int,
    kind: str | None = None,
) -> str:
    """The sha256 hex digest that names a fingerprint (module docstring).

    ``kind``: another fingerprint than the 2D one of fingerprint/scan.py over the same files
    (segtrain/volume_plan.py: ``volumes-3d``); ``None`` leaves the 2D keys as they always were.
    """
    digest = hashlib.sha256()
    options = {
        "format": FORMAT,
        "palette": None if palette is None else [[int(c) for c in color] for color in palette],
        "percentiles": [float(p) for p in percentiles],
        "samples_per_image": int(samples_per_image),
        "max_samples": int(max_samples),
        "seed": int(seed),
    }
    if kind is not None:
        options["kind"] = str(kind)
    digest.update(json.dumps(options, sort_keys=True).encode())
    for split in sorted(splits):
        for image, masks in splits[split]:
            files = [image, *masks]
            row = [split, len(masks)] + [[os.path.abspath(f), *_stat(Path(f))] for f in files]
            digest.update(json.dumps(row).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def cache_file(cache_dir: str | Path, key: str) -> Path:
    """``<cache_dir>/fingerprint-<key[:16]>.json``."""
    return Path(cache_dir).expanduser() / f"fingerprint-{key[:16]}.json"


def load_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The fingerprint stored at ``path`` if it is whole and carries ``key``; ``None`` otherwise.

    A truncated or hand-edited file, or one of another format (a 16-hex prefix collision, an
    older layout), is treated as absent: the caller scans again and overwrites it.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("format") != FORMAT:
        return None
    return data


def check_cache_dir(cache_dir: str | Path, data_folders: set[Path]) -> Path:
    """``cache_dir`` resolved; a ``ValueError`` when it is a folder holding the data's own files."""
    folder = Path(cache_dir).expanduser().resolve()
    if folder in data_folders:
        raise ValueError(
            f"The fingerprint cache folder {folder} holds the dataset's own images or masks: the cache never goes "
            "into the data folder (the data may be read-only or shared between runs). Give another folder "
            "(e.g. the run's output folder or ~/.cache/segtrain)."
        )
    return folder
