"""The evaluation's files, each written whole or not at all (temp file + ``os.replace``).

Why atomic: the tables are read by other tools (the sweep report, a user's notebook) possibly
while a run is still writing them, or after a run was killed; a half-written ``per_image.csv``
would be read as a smaller evaluation without a word.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datamodules.io import write_atomic, write_json_atomic


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV file with ``header`` and ``rows`` (floats at full precision: ``repr``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_atomic(path, buffer.getvalue().encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """JSON with indent 2; NaN or infinity is an error (the empty-case rules exist so that none occurs)."""
    return write_json_atomic(path, data)


def confusion_rows(matrix: np.ndarray, names: Sequence[str], multilabel: bool) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)`` of ``confusion.csv``.

    binary / multiclass: a row per target class, a column per predicted class, both named;
    multilabel: a row ``label,tn,fp,fn,tp`` per label.
    """
    if multilabel:
        return ["label", "tn", "fp", "fn", "tp"], [
            [name, int(m[0, 0]), int(m[0, 1]), int(m[1, 0]), int(m[1, 1])] for name, m in zip(names, matrix)
        ]
    return ["target/predicted", *names], [[name, *(int(v) for v in row)] for name, row in zip(names, matrix)]
