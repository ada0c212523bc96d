"""Predict volumes: nnU-Net case files in, one label volume per case out, in the input's frame.

The 3D side of scripts/predict.py (a checkpoint whose ``preprocessing["kind"]`` is ``"volume"``):

* inputs (:func:`list_volume_cases`): a folder of nnU-Net case files ``<case>_XXXX<ending>`` (one
  file per channel, grouped by case id; an nnU-Net dataset folder means its ``imagesTs/``), or
  single-channel volume files (``.nii.gz``, ``.nii``, ``.tif``, ``.tiff``), read by
  datamodules/volumes/io.py;
* :func:`predict_volume`: the channels of one case -> normalised as in training
  (``datamodules.volumes.normalization.normalize_volume`` with the checkpoint's per-channel specs)
  -> sliding-window logits (:func:`sliding_logits`; the volume stays on the CPU, windows run on
  the network's device) -> optional mirror TTA / ensemble (segtrain/tta.py: 8 mirrored passes in
  3D) -> argmax, as a ``[D, H, W]`` label array;
* :func:`write_prediction`: ``<output>/<case><ending>`` by ``write_volume(like=<channel 0's header>)``:
  the input's shape, affine, spacing and NIfTI header (a TIFF gets its spacing sidecar JSON).

Memory (why the steps are ordered as they are): the raw channels are released once normalised,
the logits are accumulated on the CPU window by window (MONAI's ``device``), and the argmax is
taken a few slices at a time, so the peak is about the normalised input plus the float32 logits
and MONAI's weight map -- scripts/bench_predict_volume.py measures it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from datamodules.volumes.io import (
    VOLUME_EXTENSIONS,
    VolumeHeader,
    read_volume,
    volume_format,
    volume_stem,
    write_volume,
)

from .tta import average_predictions, check_tta

#: nnU-Net's channel suffix of an image file: ``<case>_0000<ending>``.
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: Slices per argmax step: the int64 argmax of a whole CT would cost 8 bytes a voxel at once.
ARGMAX_SLICES = 16
#: Sliding-window options of a volume checkpoint (checkpoint["inference"]).
WINDOW_KEYS = ("window", "overlap", "mode", "sw_batch_size", "pad", "sw_device", "device")


@dataclass(frozen=True)
class VolumeCase:
    """One case to predict.

    Attributes:
        case_id: ``<case>`` of ``<case>_0000.nii.gz`` (a single file: its name without extension
            and without a channel suffix); names the output file.
        images: one file per channel, in channel order.
        ending: the files' extension (``.nii.gz``, ``.tif`` ...): the output's.
    """

    case_id: str
    images: tuple[Path, ...]
    ending: str


def _ending(path: Path) -> str:
    return path.name[len(volume_stem(path)):]


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(VOLUME_EXTENSIONS)


def _group(files: Sequence[Path], channels: int, where: str) -> list[VolumeCase]:
    """Files -> cases: ``<case>_XXXX`` grouped by case id, other names one single-channel case each."""
    groups: dict[str, dict[int, Path]] = {}
    problems: list[str] = []  # names that form no case (ValueError)
    missing: list[str] = []  # channel files a case lacks (FileNotFoundError)
    for path in files:
        stem = volume_stem(path)
        match = CHANNEL_SUFFIX.match(stem)
        case_id, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if match is None and channels > 1:
            problems.append(f"{path}: no channel suffix; the model takes {channels} channels, one file each "
                            f"({stem}_0000{_ending(path)}, {stem}_0001{_ending(path)} ...)")
            continue
        if channel >= channels:
            problems.append(f"{path}: channel {channel}, but the model takes {channels} channel(s) "
                            f"(_0000..._{channels - 1:04d}); remove the file or predict with a model of that input")
            continue
        found = groups.setdefault(case_id, {})
        if channel in found:
            problems.append(f"{path} and {found[channel]} are both channel {channel} of case {case_id}: "
                            "rename one (each case's files must have distinct names)")
            continue
        found[channel] = path
    cases = []
    for case_id in sorted(groups):
        found = groups[case_id]
        absent = [i for i in range(channels) if i not in found]
        some = next(iter(found.values()))
        for i in absent:
            missing.append(f"case {case_id}: channel {i} {some.with_name(f'{case_id}_{i:04d}{_ending(some)}')} is "
                           "missing")
        if absent:
            continue
        images = tuple(found[i] for i in range(channels))
        endings = {_ending(p).lower() for p in images}
        if len(endings) > 1:
            problems.append(f"case {case_id}: channel files of different formats ({', '.join(p.name for p in images)}); "
                            "give every channel of a case the same file ending")
            continue
        cases.append(VolumeCase(case_id, images, _ending(images[0])))
    layout = (f"nnU-Net's layout: <case>_0000<ending> ... <case>_{channels - 1:04d}<ending>, one file per channel"
              if channels > 1 else "one file per case, or nnU-Net's <case>_0000<ending>")
    if problems:
        raise ValueError(f"The volume files in {where} do not form cases ({layout}):" + _listed(problems))
    if missing:
        raise FileNotFoundError(f"{len(missing)} channel file(s) of the cases in {where} are missing ({layout}):"
                                + _listed(missing))
    return cases


def _listed(lines: Sequence[str], shown: int = 10) -> str:
    more = f"\n  ... and {len(lines) - shown} more" if len(lines) > shown else ""
    return "".join(f"\n  {line}" for line in lines[:shown]) + more


def list_volume_cases(input_path: str | Path, channels: int = 1) -> list[VolumeCase]:
    """The cases to predict in ``input_path`` (module docstring), sorted by case id.

    Args:
        input_path: a volume file (single channel; a ``<case>_0000`` file brings its sibling channel
            files along), a folder of volume files, or an nnU-Net dataset folder (its ``imagesTs/``).
        channels: input channels of the model (files per case).

    Raises:
        FileNotFoundError: the path does not exist; a folder without volume files; a case missing
            a channel file (every one listed with the file expected).
        ValueError: a file that is not a volume file by its extension; file names that form no
            case (no channel suffix for a multi-channel model, an extra channel, two cases of one name).
    """
    path = Path(input_path).expanduser().absolute()
    if path.is_file():
        try:
            volume_format(path)
        except ValueError:
            raise ValueError(f"input={input_path} is not a volume file: give a {', '.join(VOLUME_EXTENSIONS)} file "
                             "or a folder of them (this checkpoint predicts volumes; 2D images need a 2D "
                             "checkpoint)") from None
        match = CHANNEL_SUFFIX.match(volume_stem(path))
        if channels > 1 and match:  # one channel file named: the case is all of its channel files
            siblings = [p for p in path.parent.iterdir() if _is_volume_file(p) and _ending(p) == _ending(path)
                        and CHANNEL_SUFFIX.match(volume_stem(p)) is not None
                        and CHANNEL_SUFFIX.match(volume_stem(p))["case"] == match["case"]]
            return _group(sorted(siblings), channels, str(path.parent))
        return _group([path], channels, str(path.parent))
    if not path.is_dir():
        raise FileNotFoundError(f"input={input_path} does not exist. Give a volume file, a folder of volume files "
                                "or an nnU-Net dataset folder (its imagesTs/ is predicted).")
    if (path / "imagesTs").is_dir():
        path = path / "imagesTs"
    files = sorted(p for p in path.iterdir() if _is_volume_file(p))
    if not files:
        held = sorted({"".join(p.suffixes) for p in path.iterdir() if p.is_file() and p.suffix})
        raise FileNotFoundError(f"input={path} holds no volume file ({', '.join(VOLUME_EXTENSIONS)})"
                                + (f"; it holds {', '.join(held[:6])} files" if held else "")
                                + ". Point input at the folder of <case>_0000<ending> files (sub-folders are not searched).")
    cases = _group(files, channels, str(path))
    seen: dict[str, VolumeCase] = {}
    for case in cases:  # 'a.nii.gz' and 'a.tif' would write masks of one name stem
        if case.case_id in seen:
            raise ValueError(f"{seen[case.case_id].images[0]} and {case.images[0]} are both case {case.case_id!r}: "
                             "rename one, or predict them into different output folders")
        seen[case.case_id] = case
    return cases


def read_case(files: Sequence[str | Path], channels: int | None = None) -> tuple[np.ndarray, VolumeHeader]:
    """The channels of one case as ``[C, D, H, W]`` and channel 0's header (the frame to write the mask in).

    Args:
        files: one volume file per channel, in channel order.
        channels: the model's input channels (checked against ``len(files)``); ``None``: any.

    Returns:
        ``(array, header)``: the channels in a common dtype (numpy's promotion of theirs), and a
        :class:`datamodules.volumes.io.VolumeHeader` of channel 0 (no voxels kept).

    Raises:
        ValueError: a wrong number of files; a file that is not a volume (naming it); channel files
            of different shapes or spacings (naming both and the fix).
        FileNotFoundError: a file that does not exist.
    """
    files = [Path(f) for f in files]
    if not files or (channels is not None and len(files) != int(channels)):
        raise ValueError(f"The model takes {channels} input channel(s), one file each, but the case has "
                         f"{len(files)}: {', '.join(map(str, files)) or 'none'}")
    arrays, first = [], None
    for path in files:
        volume = read_volume(path)  # VolumeReadError (a ValueError) names a file that is no volume
        if first is None:
            first = VolumeHeader(shape=volume.shape, spacing=volume.spacing, dtype=volume.array.dtype.name,
                                 affine=volume.affine, header=volume.header, path=volume.path)
        elif volume.shape != first.shape:
            raise ValueError(f"Channel files of different shapes: {first.path.name} {first.shape}, {path.name} "
                             f"{volume.shape}; every channel of a case must be on one grid (resample them onto "
                             "the first channel's)")
        elif not np.allclose(volume.spacing, first.spacing, rtol=1e-4):
            raise ValueError(f"Channel files of different spacings: {first.path.name} {first.spacing}, {path.name} "
                             f"{volume.spacing}; every channel of a case must be on one grid (resample them onto "
                             "the first channel's)")
        arrays.append(volume.array)
    # One channel: a view, no copy (a CT is the common case and the largest).
    return (arrays[0][None] if len(arrays) == 1 else np.stack(arrays)), first


def normalize(array: np.ndarray, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """``[C, D, H, W]`` -> float32, normalised with the training run's per-channel specs.

    Args:
        array: the raw channels (:func:`read_case`).
        preprocessing: ``checkpoint["preprocessing"]`` (``normalization``: one spec per channel,
            ``None``: the values as they are, as float32).

    Raises:
        ImportError: datamodules/volumes/normalization.py is missing (a checkout without the 3D data path).
    """
    specs = preprocessing.get("normalization")
    if specs is None:
        return array.astype(np.float32, copy=False)
    try:  # lazily: the function lives with the datamodule that trains with it (one normalisation for both)
        from datamodules.volumes.normalization import normalize_volume
    except ImportError as err:
        raise ImportError(f"Cannot normalise the volume as in training: {err}. This checkout lacks "
                          "datamodules/volumes/normalization.py (normalize_volume); update it.") from err
    return normalize_volume(array, list(specs))


def check_volume_window(options: Mapping[str, Any] | None, spatial_dims: int) -> dict[str, Any]:
    """Validated sliding-window options of a volume checkpoint (``checkpoint["inference"]``).

    Args:
        options: ``window`` (a list of ``spatial_dims`` ints, or one int for every axis), ``overlap``
            (0.5), ``mode`` (gaussian), ``sw_batch_size`` (``None``: 1 on a CPU, 4 on an accelerator),
            ``sw_device`` (where the windows run; ``None``: the network's device), ``device`` (where
            the whole-volume logits are accumulated; ``None``: the volume's, the CPU), ``pad`` (ignored:
            a volume smaller than the window is padded by MONAI).
        spatial_dims: the image's spatial axes.

    Raises:
        ValueError: no window, a window of another length, an unknown option or a bad value.
    """
    if not options or options.get("window") is None:
        raise ValueError("The checkpoint has no sliding window (checkpoint['inference']['window'], [D, H, W]): a "
                         "volume is predicted window by window. Give inference options with a window.")
    unknown = set(options) - set(WINDOW_KEYS)
    if unknown:
        raise ValueError(f"sliding_window has no option(s) {sorted(unknown)}; options: {', '.join(WINDOW_KEYS)}")
    window = options["window"]
    window = [int(window)] * spatial_dims if isinstance(window, (int, np.integer)) else [int(w) for w in window]
    if len(window) != spatial_dims or min(window) < 1:
        raise ValueError(f"sliding_window.window {options['window']} must be {spatial_dims} positive sizes "
                         f"(one per spatial axis of the image)")
    overlap = float(options.get("overlap", 0.5) if options.get("overlap") is not None else 0.5)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"sliding_window.overlap must be in [0, 1), got {overlap}")
    mode = options.get("mode") or "gaussian"
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"sliding_window.mode must be gaussian or constant, got {mode!r}")
    batch = options.get("sw_batch_size")
    if batch is not None and int(batch) < 1:
        raise ValueError(f"sliding_window.sw_batch_size must be >= 1 (or null: by device), got {batch}")
    return {"window": window, "overlap": overlap, "mode": mode, "sw_batch_size": None if batch is None else int(batch),
            "sw_device": options.get("sw_device"), "device": options.get("device")}


def _device_of(net: Any) -> torch.device | None:
    if isinstance(net, nn.Module):
        param = next(net.parameters(), None)
        return None if param is None else param.device
    return None


def sliding_logits(net: Callable[[Tensor], Tensor], image: Tensor, options: Mapping[str, Any]) -> Tensor:
    """Logits ``[B, K, D, H, W]`` of a whole volume by sliding windows (segtrain.sliding.whole_image_logits).

    The one place the 3D predict path calls the window inference, so that validation and predict
    see a volume the same way. The window is never shrunk to the volume: MONAI pads a smaller
    volume (zeros = the mean after normalisation) to the window, whose sizes the network divides.
    Where the options name no ``sw_device``, the windows run on the network's device (the volume
    itself stays where it is: the CPU for a large one).

    Args:
        net: ``[b, C, *window] -> [b, K, *window]``.
        image: ``[B, C, D, H, W]`` (normalised).
        options: :func:`check_volume_window` options.
    """
    from .sliding import whole_image_logits

    opts = check_volume_window(options, image.ndim - 2)
    if opts["sw_device"] is None:
        device = _device_of(net)
        opts["sw_device"] = None if device is None or device == image.device else str(device)
    return whole_image_logits(net, image, {**opts, "pad": True})


def labels_from_logits(logits: Tensor, task: str = "multiclass") -> np.ndarray:
    """One volume's logits ``[K, D, H, W]`` -> labels ``[D, H, W]`` (uint8; uint16 over 256 classes).

    multiclass: argmax over the classes; binary: ``logit > 0`` (sigmoid > 0.5). Taken
    :data:`ARGMAX_SLICES` slices at a time: the argmax's int64 stays small.
    """
    if task not in ("multiclass", "binary"):
        raise ValueError(f"Volumes are predicted for task=multiclass (nnU-Net data) or binary, not {task!r}")
    depth = logits.shape[1]
    out = np.empty(tuple(logits.shape[1:]), dtype=np.uint8 if logits.shape[0] <= 256 else np.uint16)
    for z in range(0, depth, ARGMAX_SLICES):
        part = logits[:, z:z + ARGMAX_SLICES]
        labels = part.argmax(0) if task == "multiclass" else part[0] > 0
        out[z:z + ARGMAX_SLICES] = labels.to(torch.int32).cpu().numpy()
    return out


def _per_member(value: Any, count: int, what: str) -> list[Any]:
    """One value for all ensemble members, or a list of one per member."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{len(value)} {what} for {count} network(s): give one for all, or one each")
        return list(value)
    return [value] * count


@torch.no_grad()
def predict_volume(
    net_or_callable: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor]],
    case_files: Sequence[str | Path],
    preprocessing: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    inference_options: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    tta: str | None = None,
    *,
    task: str = "multiclass",
    postprocessing: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Predict one case: its channel files -> labels ``[D, H, W]`` on the input's grid.

    Args:
        net_or_callable: the network (``[b, C, *window] -> logits [b, K, *window]``; an ``nn.Module``
            is put in eval mode, and its device runs the windows), any such callable, or a list of them
            (an ensemble: probabilities averaged, segtrain/tta.py).
        case_files: one volume file per channel, in channel order (a :class:`VolumeCase`'s ``images``).
        preprocessing: ``checkpoint["preprocessing"]`` (``kind: volume``; ``channels``,
            ``normalization``: one spec per channel), or one per ensemble member.
        inference_options: ``checkpoint["inference"]`` (:func:`check_volume_window`), or one per member.
        tta: ``None`` or ``"flip"``: the mean of the 8 mirrored passes (every subset of the three
            axes) in probability space.
        task: ``multiclass`` (nnU-Net data) or ``binary``.
        postprocessing: a plan of segtrain/postprocessing.py (largest component per class), or ``None``.

    Returns:
        uint8 labels ``[D, H, W]`` (uint16 above 256 classes) in the voxel order of
        datamodules/volumes/io.py, ready for :func:`write_prediction`.

    Raises:
        ValueError: bad options, a file that is not a volume, a wrong channel count, channels of
            different shapes or spacings -- naming the file and the fix.
    """
    tta = check_tta(tta)
    nets = list(net_or_callable) if isinstance(net_or_callable, (list, tuple)) else [net_or_callable]
    pres = _per_member(preprocessing, len(nets), "preprocessing")
    options = _per_member(inference_options, len(nets), "inference_options")
    for opts in options:
        check_volume_window(opts, 3)  # a bad window fails before any file is read
    raw, _ = read_case(case_files, (pres[0] or {}).get("channels"))
    # Members that normalise alike (the usual ensemble: same fingerprint) share one normalised copy.
    inputs: dict[str, Tensor] = {}
    images = []
    for pre in pres:
        key = json.dumps((pre or {}).get("normalization"), sort_keys=True, default=str)
        if key not in inputs:
            inputs[key] = torch.from_numpy(np.ascontiguousarray(normalize(raw, pre or {})))[None]
        images.append(inputs[key])
    del raw  # the raw channels are not needed past here: free them before the logits are allocated
    for net in nets:
        if isinstance(net, nn.Module):
            net.eval()
    predictors = [partial(sliding_logits, net, options=opts) for net, opts in zip(nets, options)]
    logits = average_predictions(predictors, images if len(images) > 1 else images[0], task, tta)
    del images, inputs
    labels = labels_from_logits(logits[0], task)
    del logits
    if postprocessing and postprocessing.get("largest_component"):
        from .postprocessing import apply_postprocessing

        labels = apply_postprocessing(labels, task, postprocessing)
    return labels


def write_prediction(labels: np.ndarray, output: str | Path, case: VolumeCase, like: Any = None) -> Path:
    """Write one case's labels as ``<output>/<case_id><ending>`` in the frame of its channel 0.

    Args:
        labels: ``[D, H, W]`` from :func:`predict_volume`.
        output: the output folder (created).
        case: the case (its id and ending name the file).
        like: channel 0's :class:`~datamodules.volumes.io.Volume` or header; ``None``: read from
            ``case.images[0]``'s header (no voxels decoded).

    Returns:
        The written file (a TIFF also gets its ``<case_id>.json`` spacing sidecar).
    """
    from datamodules.volumes.io import read_volume_header

    like = read_volume_header(case.images[0]) if like is None else like
    return write_volume(Path(output) / f"{case.case_id}{case.ending}", labels, like=like)
