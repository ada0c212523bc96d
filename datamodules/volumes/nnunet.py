"""nnU-Net v2's raw dataset layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and ``imagesTs/``.

The layout (``root`` = one ``DatasetXXX_Name`` folder of ``nnUNet_raw``)::

    root/dataset.json                     {"channel_names": {"0": "CT", "1": "T2"},
                                           "labels": {"background": 0, "liver": 1, "tumour": 2},
                                           "numTraining": 6, "file_ending": ".nii.gz"}
    root/imagesTr/<case>_0000.nii.gz      one file per channel, 4-digit channel index
    root/imagesTr/<case>_0001.nii.gz
    root/labelsTr/<case>.nii.gz           the label map, values as in "labels"
    root/imagesTs/<case>_0000.nii.gz      optional: unlabelled test cases
    (root/labelsTs/<case>.nii.gz)         not nnU-Net's, read when there: test labels

Why a reader of our own and not nnU-Net's: the harness needs the listing and its errors without
nnU-Net's environment variables and preprocessing, and with messages that name the case and the file.
Everything that nnU-Net itself refuses at ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``
is refused here when the cases are listed (:func:`find_cases`) or checked (:func:`check_case`,
:func:`check_labels`), so a dataset prepared for one works for the other.

Labels follow nnU-Net's rules: ``background`` is 0, the values are consecutive (0, 1, 2 ...), and a
label named ``ignore`` (nnU-Net's ignore label, for sparse annotations) is not a class: its value --
which must be the highest, one above the last class -- is :attr:`DatasetInfo.ignore_index`, the
voxels a loss and the metrics skip. Region-based labels (a list of values, e.g. BraTS's
``"whole tumour": [1, 2, 3]``) are refused: this harness trains one class per voxel.

2D datasets (``file_ending`` ``.png``/``.bmp``, or 2D ``.tif``) are listed as well
(:attr:`DatasetInfo.dims` = 2); their files are read by :mod:`datamodules.io`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_header, read_mask_file
from .io import read_volume, read_volume_header

DATASET_JSON = "dataset.json"
#: The keys nnU-Net requires in dataset.json (``modality``, nnU-Net v1's name, stands in for ``channel_names``).
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
#: File endings of volumes (3D) and of images (2D) this reader lists; ``.tif`` is either, by the files.
ENDINGS_3D = (".nii.gz", ".nii", ".tif", ".tiff")
ENDINGS_2D = (".png", ".bmp", ".tif", ".tiff")
#: nnU-Net's name of the ignore label.
IGNORE = "ignore"
_IMAGE_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: Files named per problem in a listing error.
SHOWN = 10


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says, checked.

    Attributes:
        root: the dataset folder.
        channel_names: one name per input channel, in channel order (``channel_names["0"]`` first);
            the names choose the normalisation, as in nnU-Net (``CT``, ``noNorm``, anything else: z-score).
        class_names: one name per class, by value (``class_names[0]`` is ``"background"``).
        ignore_index: the value of the ``ignore`` label, or ``None``.
        file_ending: e.g. ``".nii.gz"``, including the dot.
        dims: 3 for volumes (NIfTI, 3D TIFF stacks), 2 for images (PNG, BMP, 2D TIFF).
        num_training: ``numTraining``.
    """

    root: Path
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]
    ignore_index: int | None
    file_ending: str
    dims: int
    num_training: int

    @property
    def num_channels(self) -> int:
        """Input channels (files per case)."""
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        """Classes, the background included, the ignore label not."""
        return len(self.class_names)

    @property
    def is_3d(self) -> bool:
        """``dims == 3``."""
        return self.dims == 3


@dataclass(frozen=True)
class Case:
    """One case: its id, one image file per channel (in channel order) and its label file.

    Attributes:
        case_id: the identifier, ``<case>`` in ``<case>_0000.nii.gz``.
        images: ``imagesTr/<case>_0000<ending>``, ``..._0001<ending>`` ...
        label: ``labelsTr/<case><ending>``; ``None`` for an unlabelled (test) case.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


# --- dataset.json ------------------------------------------------------------------------------------


def _json_error(path: Path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem} (nnU-Net's format: documentation/dataset_format.md of nnU-Net v2; "
                      "its generate_dataset_json writes one)")


def _channel_names(path: Path, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, dict) or not raw:
        raise _json_error(path, f'"channel_names" must map channel indices to names, e.g. {{"0": "CT"}}, got {raw!r}')
    keys = sorted(raw, key=lambda k: int(k) if str(k).isdigit() else -1)
    if [str(k) for k in keys] != [str(i) for i in range(len(raw))]:
        raise _json_error(path, f'"channel_names" keys must be "0", "1", ... with no gap, got {sorted(map(str, raw))}')
    return tuple(str(raw[k]) for k in keys)


def _label_value(path: Path, name: str, value: Any) -> int:
    """One label's value; a list of several values is a region (refused)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = value[0]
        else:
            raise _json_error(path, f'label "{name}" is the region {list(value)}: region-based labels (a list of '
                                    "values per label, nnU-Net's region training) are not supported; give each "
                                    "class one value, or convert the regions into classes")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _json_error(path, f'label "{name}" must be an integer value, got {value!r}')
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not np.isfinite(number) or number != int(number):
        raise _json_error(path, f'label "{name}" must be an integer value, got {value!r}')
    return int(number)


def _labels(path: Path, raw: Any, regions_order: bool) -> tuple[tuple[str, ...], int | None]:
    """``(class names by value, ignore value)`` from ``"labels"``, with nnU-Net's rules (module docstring)."""
    if not isinstance(raw, dict) or not raw:
        raise _json_error(path, f'"labels" must map names to values, e.g. {{"background": 0, "liver": 1}}, got {raw!r}')
    if regions_order:
        raise _json_error(path, '"regions_class_order" is set: region-based labels are not supported; give each '
                                "class one value")
    by_value: dict[int, str] = {}
    ignore = None
    for name, value in raw.items():
        number = _label_value(path, str(name), value)
        if name == IGNORE:
            ignore = number
            continue
        if number in by_value:
            raise _json_error(path, f'labels "{by_value[number]}" and "{name}" share the value {number}: one name '
                                    "per value")
        by_value[number] = str(name)
    if by_value.get(0) != "background":
        raise _json_error(path, f'the label "background" must have the value 0 (nnU-Net\'s rule), got labels {raw}')
    values = sorted(by_value)
    if values != list(range(len(values))):
        raise _json_error(path, f"label values must be consecutive 0, 1, 2 ... (nnU-Net's rule), got {values}: "
                                "renumber the label files and dataset.json")
    if ignore is not None and ignore != len(values):
        raise _json_error(path, f'the "ignore" label must have the highest value, one above the last class '
                                f"({len(values)}), got {ignore} (nnU-Net's rule)")
    return tuple(by_value[v] for v in values), ignore


def _file_ending(path: Path, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.startswith("."):
        raise _json_error(path, f'"file_ending" must be a file ending with its dot, e.g. ".nii.gz", got {raw!r}')
    if raw.lower() not in {*ENDINGS_3D, *ENDINGS_2D}:
        raise _json_error(path, f'"file_ending" {raw!r} is not read here: use one of '
                                f"{', '.join(dict.fromkeys((*ENDINGS_3D, *ENDINGS_2D)))} (convert .nrrd/.mha/.nii "
                                "collections to .nii.gz, e.g. with SimpleITK)")
    return raw


def _tiff_dims(root: Path, ending: str, reader: Any) -> int:
    """2 or 3 for a TIFF dataset: nnU-Net's reader override when set, else the first image file's axes."""
    if reader in ("Tiff3DIO",):
        return 3
    if reader in ("NaturalImage2DIO",):
        return 2
    import tifffile

    for split in ("imagesTr", "imagesTs"):
        folder = root / split
        files = sorted(p for p in folder.glob(f"*{ending}") if not p.name.startswith(".")) if folder.is_dir() else []
        if files:
            try:
                with tifffile.TiffFile(files[0]) as tif:
                    series = tif.series[0]
                    sizes = [n for a, n in zip(series.axes, series.shape) if a != "S"]  # S: colour samples of 2D
            except Exception as e:
                raise ValueError(f"Cannot read {files[0]} ({type(e).__name__}: {e}) to tell a 2D from a 3D "
                                 "TIFF dataset: is the file truncated?") from e
            return 3 if len(sizes) >= 3 else 2
    raise FileNotFoundError(f"{root / 'imagesTr'} holds no *{ending} file: a TIFF dataset is 2D or 3D by its files")


def read_dataset_json(root: str | Path) -> DatasetInfo:
    """Read and check ``<root>/dataset.json`` (module docstring).

    Args:
        root: the nnU-Net raw dataset folder (``.../nnUNet_raw/Dataset001_Name``).

    Raises:
        FileNotFoundError: ``root`` or its dataset.json is missing.
        ValueError: dataset.json is no JSON object, lacks a required key, or breaks one of nnU-Net's
            rules (channel indices, label values, ignore label, regions, file ending), naming the file,
            the key and the fix.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"nnU-Net dataset folder {root} does not exist (or is not a folder): pass the folder "
                                "that holds dataset.json, imagesTr/ and labelsTr/")
    path = root / DATASET_JSON
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in root.iterdir())[:8])
        raise FileNotFoundError(f"{path} does not exist: an nnU-Net raw dataset holds dataset.json beside imagesTr/ "
                                f"and labelsTr/ ({root} holds {found or 'nothing'}); nnU-Net's generate_dataset_json "
                                "writes one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}): it must be a JSON object") from None
    if not isinstance(data, dict):
        raise _json_error(path, f"the file holds a {type(data).__name__}, not a JSON object")
    if "channel_names" not in data and "modality" in data:
        data = {**data, "channel_names": data["modality"]}  # nnU-Net v1's key, which v2 still reads
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise _json_error(path, f"missing key(s) {', '.join(missing)} (it has {', '.join(sorted(data)) or 'none'})")
    if "dataset" in data:
        raise _json_error(path, '"dataset" (an explicit list of files) is not supported: lay the files out as '
                                "imagesTr/<case>_XXXX<ending> and labelsTr/<case><ending>")
    channels = _channel_names(path, data["channel_names"])
    classes, ignore = _labels(path, data["labels"], "regions_class_order" in data)
    ending = _file_ending(path, data["file_ending"])
    count = data["numTraining"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise _json_error(path, f'"numTraining" must be the number of training cases, got {count!r}')
    lower = ending.lower()
    if lower in (".nii.gz", ".nii"):
        dims = 3
    elif lower in (".png", ".bmp"):
        dims = 2
    else:
        dims = _tiff_dims(root, ending, data.get("overwrite_image_reader_writer"))
    return DatasetInfo(root=root, channel_names=channels, class_names=classes, ignore_index=ignore,
                       file_ending=ending, dims=dims, num_training=count)


# --- listing ---------------------------------------------------------------------------------------------


def _listed(problems: Sequence[str]) -> str:
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return "".join(f"\n  {p}" for p in problems[:SHOWN]) + more


def _files(folder: Path, ending: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(ending))


def find_cases(root: str | Path, split: str = "Tr", info: DatasetInfo | None = None) -> list[Case]:
    """The cases of ``images<split>/`` with their channel files and labels, sorted by case id.

    Args:
        root: the nnU-Net raw dataset folder.
        split: ``"Tr"`` (``imagesTr/`` + ``labelsTr/``, every case labelled) or ``"Ts"`` (``imagesTs/``,
            optional: ``[]`` without it; labels from ``labelsTs/`` where that holds them, else ``None``).
        info: :func:`read_dataset_json`'s result, read when ``None``.

    Raises:
        FileNotFoundError: ``imagesTr/`` or ``labelsTr/`` missing, no image file with ``file_ending``,
            a channel file or a label file missing (every one listed, with the case and the expected file).
        ValueError: an image without the ``_XXXX`` channel suffix, a channel that dataset.json does
            not name, or ``numTraining`` different from the cases found.
    """
    if split not in ("Tr", "Ts"):
        raise ValueError(f"split must be 'Tr' or 'Ts', got {split!r}")
    info = read_dataset_json(root) if info is None else info
    root, ending, n = Path(root).expanduser(), info.file_ending, info.num_channels
    images_dir, labels_dir = root / f"images{split}", root / f"labels{split}"
    if not images_dir.is_dir():
        if split == "Ts":
            return []
        raise FileNotFoundError(f"{images_dir} does not exist: an nnU-Net raw dataset keeps its training images in "
                                f"imagesTr/<case>_0000{ending}")
    if split == "Tr" and not labels_dir.is_dir():
        raise FileNotFoundError(f"{labels_dir} does not exist: every training case needs its label file "
                                f"labelsTr/<case>{ending}")
    files = _files(images_dir, ending)
    if not files:
        other = sorted({"".join(p.suffixes) for p in images_dir.iterdir() if p.is_file() and p.suffix})
        raise FileNotFoundError(f"{images_dir} holds no *{ending} file (dataset.json's file_ending)"
                                + (f"; it holds {', '.join(other[:6])} files: fix file_ending" if other else ""))
    channels: dict[str, dict[int, Path]] = {}
    unnamed, extra = [], []
    for path in files:
        match = _IMAGE_NAME.match(path.name[: -len(ending)])
        if match is None:
            unnamed.append(f"{path} (expected {path.name[: -len(ending)]}_0000{ending} for channel 0, "
                           f"{info.channel_names[0]})")
            continue
        index = int(match["channel"])
        if index >= n:
            extra.append(f"{path}: case {match['case']}, channel {index}")
        channels.setdefault(match["case"], {})[index] = path
    if unnamed:
        raise ValueError(f"{len(unnamed)} image file(s) in {images_dir} lack nnU-Net's 4-digit channel suffix: "
                         f"name them <case>_XXXX{ending}, one file per channel (XXXX = 0000, 0001 ...):"
                         + _listed(unnamed))
    if extra:
        raise ValueError(f"{images_dir} holds channels that dataset.json does not name (channel_names has {n}: "
                         f"{', '.join(info.channel_names)}): add them to channel_names, or remove the files:"
                         + _listed(extra))
    missing, cases = [], []
    for case_id in sorted(channels):
        found = channels[case_id]
        absent = [i for i in range(n) if i not in found]
        for i in absent:
            missing.append(f"case {case_id}: channel {i} ({info.channel_names[i]}) "
                           f"{images_dir / f'{case_id}_{i:04d}{ending}'} is missing")
        label = labels_dir / f"{case_id}{ending}"
        if split == "Tr" and not label.is_file():
            missing.append(f"case {case_id}: label {label} is missing")
        if absent or (split == "Tr" and not label.is_file()):
            continue
        cases.append(Case(case_id, tuple(found[i] for i in range(n)), label if label.is_file() else None))
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) of the cases in {images_dir} are missing (each case needs "
                                f"{n} channel file(s) <case>_0000..{n - 1:04d}{ending}"
                                + (f" and labelsTr/<case>{ending}" if split == "Tr" else "") + "):" + _listed(missing))
    if split == "Tr" and len(cases) != info.num_training:
        raise ValueError(f"{root / DATASET_JSON} says numTraining={info.num_training}, but {images_dir} holds "
                         f"{len(cases)} case(s): set numTraining to {len(cases)} (nnU-Net refuses the mismatch)")
    return cases


# --- checks ----------------------------------------------------------------------------------------------


def _shape_and_spacing(path: Path, info: DatasetInfo) -> tuple[tuple[int, ...], tuple[float, ...] | None, str]:
    """``(shape, spacing or None, hint)`` from the header alone; 2D images through datamodules.io."""
    if info.is_3d:
        head = read_volume_header(path)
        hint = (" (no spacing JSON beside it: (1, 1, 1) assumed)"
                if head.format == "tiff" and head.header.get("spacing_file") is None else "")
        return head.shape, head.spacing, hint
    head = read_header(path)
    return (head.height, head.width), None, ""


def check_case(case: Case, info: DatasetInfo) -> None:
    """Check one case from its file headers (no voxel decoded): its channels and its label share one grid.

    Args:
        case: from :func:`find_cases`.
        info: from :func:`read_dataset_json`.

    Raises:
        ValueError: channel files of different shapes or spacings; a label whose shape or spacing is
            not the image's (nnU-Net refuses both); an unreadable header -- each naming the case and files.
    """
    heads = [(path, *_shape_and_spacing(path, info)) for path in case.images]
    first, shape, spacing, _ = heads[0]
    for path, other_shape, other_spacing, hint in heads[1:]:
        if other_shape != shape:
            raise ValueError(f"Case {case.case_id}: channel files of different shapes: {first.name} {shape}, "
                             f"{path.name} {other_shape}; every channel of a case must be on one grid "
                             "(resample them onto the first channel's)")
        if spacing is not None and not np.allclose(other_spacing, spacing):
            raise ValueError(f"Case {case.case_id}: channel files of different spacings: {first.name} {spacing}, "
                             f"{path.name} {other_spacing}{hint}; every channel of a case must be on one grid")
    if case.label is None:
        return
    label_shape, label_spacing, hint = _shape_and_spacing(case.label, info)
    if label_shape != shape:
        raise ValueError(f"Case {case.case_id}: label {case.label} has shape {label_shape} but the image "
                         f"{first.name} has {shape}: a label must cover its image voxel for voxel")
    if spacing is not None and not np.allclose(label_spacing, spacing):
        raise ValueError(f"Case {case.case_id}: label {case.label} has spacing {label_spacing}{hint} but the image "
                         f"{first.name} has {spacing}: a label must be on its image's grid")


def label_counts(array: np.ndarray, path: str | Path = "") -> tuple[np.ndarray, np.ndarray]:
    """``(values, voxels)`` of a label map: its distinct values (int64, sorted) and their voxel counts.

    Args:
        array: a label map of any shape (float label files are accepted when every value is an integer).
        path: the file, for the message.

    Raises:
        ValueError: non-integer or non-finite values (a resampled or probability map, not a label map).
    """
    flat = np.asarray(array).ravel()
    if flat.dtype.kind == "f":
        finite = np.isfinite(flat)
        if not finite.all() or not np.array_equal(flat, np.round(flat)):
            bad = flat[~finite] if not finite.all() else flat[flat != np.round(flat)]
            raise ValueError(f"Label {path} holds non-integer values (e.g. {bad[:3].tolist()}): a label map holds "
                             "class values 0, 1, 2 ...; resample labels with nearest neighbour")
        flat = flat.astype(np.int64)
    if flat.size and flat.dtype.kind in "ui" and int(flat.min()) >= 0 and int(flat.max()) < 1 << 20:
        counts = np.bincount(flat.astype(np.intp, copy=False))
        values = np.flatnonzero(counts)
        return values.astype(np.int64), counts[values].astype(np.int64)
    values, counts = np.unique(flat, return_counts=True)  # negative or huge values: rare, np.unique is exact
    return values.astype(np.int64), counts.astype(np.int64)


def label_problem(values: Sequence[int], counts: Sequence[int], info: DatasetInfo, case: Case) -> str | None:
    """The message for label values outside dataset.json's classes (and ignore label), or ``None``."""
    allowed = set(range(info.num_classes)) | ({info.ignore_index} if info.ignore_index is not None else set())
    bad = [(int(v), int(n)) for v, n in zip(values, counts) if int(v) not in allowed]
    if not bad:
        return None
    shown = ", ".join(f"{v} ({n} voxels)" for v, n in bad[:8]) + (" ..." if len(bad) > 8 else "")
    named = ", ".join(f"{v}: {name}" for v, name in enumerate(info.class_names))
    ignore = f", ignore: {info.ignore_index}" if info.ignore_index is not None else ""
    return (f"Case {case.case_id}: label {case.label} holds value(s) {shown} that dataset.json's labels do not name "
            f"({named}{ignore}): add them to labels in {info.root / DATASET_JSON}, or fix the label file")


def read_label(case: Case, info: DatasetInfo) -> np.ndarray:
    """The case's label map as stored (``[D, H, W]`` volume, ``[H, W]`` image).

    Raises:
        ValueError: the case has no label, or the file is unreadable (named).
    """
    if case.label is None:
        raise ValueError(f"Case {case.case_id} has no label file")
    if info.is_3d:
        return read_volume(case.label).array
    return read_mask_file(case.label).values


def check_labels(case: Case, info: DatasetInfo) -> None:
    """Read the case's label and check its values against dataset.json's ``labels``.

    Args:
        case: a labelled case from :func:`find_cases`.
        info: from :func:`read_dataset_json`.

    Raises:
        ValueError: values no label names (the ``ignore`` value is allowed), non-integer values, an
            unreadable label -- naming the case, the file, the values and their voxel counts.
    """
    values, counts = label_counts(read_label(case, info), case.label)
    problem = label_problem(values, counts, info, case)
    if problem is not None:
        raise ValueError(problem)
