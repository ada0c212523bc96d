"""Volume files read as they are: NIfTI (nibabel) and 3D TIFF stacks (tifffile), with their spacing.

Axis convention -- the one thing to get right. Every array here is ``[D, H, W]`` = ``(z, y, x)``
in the file's voxel order, and every ``spacing`` is ``(z, y, x)`` in the same order, so
``spacing[i]`` is the voxel size along ``array.shape[i]``. This is the order of SimpleITK and of
nnU-Net (whose NibabelIO transposes to it), and of a TIFF stack (pages are ``z``).

* NIfTI (``.nii``, ``.nii.gz``): nibabel's array is ``(x, y, z)`` (the first index runs fastest on
  disk), so it is transposed to ``(z, y, x)`` on reading and back on writing; the spacing is the
  header's zooms (``pixdim``), reversed the same way, as nnU-Net's NibabelIO takes it. Nothing is
  reoriented: the affine is kept as the file has it (``Volume.affine``, voxel ``(x, y, z)`` index ->
  world), and a mask written with :func:`write_volume` gets the input's affine and header, so it
  overlays the image in any viewer. Scaled data (``scl_slope``/``scl_inter`` set, e.g. raw uint16
  with an intercept of -1024) is read scaled, as float32.
* TIFF (``.tif``, ``.tiff``): one stack ``[D, H, W]`` per file (pages = ``z``). TIFF has no
  standard voxel size, so the spacing comes from a sidecar JSON ``{"spacing": [z, y, x]}`` as in
  nnU-Net's Tiff3DIO: ``<stem>.json`` beside the file (a label ``case.tif`` -> ``case.json``), else,
  for a channel file ``<case>_XXXX.tif``, the case's ``<case>.json`` (nnU-Net's rule for images).
  Without one the spacing is ``(1, 1, 1)`` and ``Volume.header["spacing_file"]`` is ``None`` (the
  volume fingerprint notes it). TIFF resolution tags and ImageJ metadata are ignored, as nnU-Net does.

dtypes: ``uint8``, ``uint16``, ``int16`` and ``float32`` are kept (``bool`` -> ``uint8``, ``int8``
-> ``int16``: exact); every other type becomes ``float32``, as :func:`datamodules.io.pipeline_dtype`
decides for 2D images.

:func:`read_volume_header` gives the shape, spacing and dtype without decoding the voxels (nibabel
reads the header alone; tifffile the series' shape from the tags).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import pipeline_dtype, write_atomic, write_json_atomic

#: Volume files this package reads (case-insensitive).
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".tif", ".tiff")
_NIFTI = (".nii.gz", ".nii")
_TIFF = (".tif", ".tiff")
#: nnU-Net's channel suffix of an image file: ``<case>_0000.nii.gz``.
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")
Spacing = tuple[float, float, float]


class VolumeReadError(ValueError):
    """A file that cannot be read as a volume (names the file and what went wrong)."""


def _fail(path: Path, error: BaseException | str) -> VolumeReadError:
    what = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    return VolumeReadError(f"Cannot read {path}: {what}")


def volume_format(path: str | Path) -> str:
    """``"nifti"`` or ``"tiff"``, by the file's extension.

    Raises:
        ValueError: any other extension, naming the file and the ones read.
    """
    name = Path(path).name.lower()
    if name.endswith(_NIFTI):
        return "nifti"
    if name.endswith(_TIFF):
        return "tiff"
    raise ValueError(f"{path} is not a volume file this reader knows: use one of {', '.join(VOLUME_EXTENSIONS)} "
                     "(other formats, e.g. .nrrd or .mha, convert to .nii.gz with SimpleITK or 3D Slicer)")


def volume_stem(path: str | Path) -> str:
    """The file name without its volume extension: ``case_0000.nii.gz`` -> ``case_0000``."""
    name = Path(path).name
    for ext in VOLUME_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


@dataclass(frozen=True)
class VolumeHeader:
    """What a volume file's header says, without its voxels.

    Attributes:
        shape: ``(D, H, W)`` = ``(z, y, x)`` voxels.
        spacing: ``(z, y, x)`` voxel size (mm for NIfTI with the usual units).
        dtype: the dtype :func:`read_volume` returns (module docstring).
        affine: NIfTI's 4x4 voxel ``(x, y, z)`` -> world matrix; ``None`` for TIFF.
        header: what :func:`write_volume` copies: nibabel's header (NIfTI), or
            ``{"spacing_file": str | None}`` (TIFF: the sidecar the spacing came from).
        path: the file.
    """

    shape: tuple[int, int, int]
    spacing: Spacing
    dtype: str
    affine: np.ndarray | None
    header: Any
    path: Path

    @property
    def format(self) -> str:
        """``"nifti"`` or ``"tiff"``."""
        return volume_format(self.path)


@dataclass
class Volume:
    """A volume and what is needed to write a mask back in its frame.

    Attributes:
        array: ``[D, H, W]`` = ``(z, y, x)``, C-contiguous, dtype as the module docstring says.
        spacing: ``(z, y, x)`` voxel size, in the order of ``array``'s axes.
        affine: NIfTI's 4x4 voxel ``(x, y, z)`` -> world matrix (note: nibabel's index order, the
            reverse of ``array``'s); ``None`` for TIFF.
        header: nibabel's header (NIfTI) or ``{"spacing_file": str | None}`` (TIFF).
        path: the file read.
    """

    array: np.ndarray
    spacing: Spacing
    affine: np.ndarray | None
    header: Any
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def format(self) -> str:
        """``"nifti"`` or ``"tiff"``."""
        return volume_format(self.path)


def _check_spacing(spacing: Any, where: str) -> Spacing:
    """Three positive finite floats, or a ValueError naming ``where``."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{where}: spacing must be three positive numbers [z, y, x], got {spacing!r}")
    return values  # type: ignore[return-value]


# --- NIfTI -----------------------------------------------------------------------------------------


def _nifti_image(path: Path):
    import nibabel

    try:
        image = nibabel.load(path)  # reads the header; the voxels stay on disk (ArrayProxy) until asked for
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib.error ... depending on the damage
        raise _fail(path, e) from e
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]  # a 4D file of one time point: a volume
    if len(shape) != 3:
        extra = (f"a 4D NIfTI of {shape[3]} volumes: nnU-Net's layout stores one file per channel "
                 "(<case>_0000, <case>_0001 ...), split it" if len(shape) == 4
                 else "not a 3D volume: save one [x, y, z] volume per file")
        raise _fail(path, f"shape {shape} is {extra}")
    return image, shape


def _nifti_scaled(image) -> bool:
    """Whether nibabel applies ``scl_slope``/``scl_inter`` (then the values are float)."""
    proxy = image.dataobj
    return float(getattr(proxy, "slope", 1.0)) != 1.0 or float(getattr(proxy, "inter", 0.0)) != 0.0


def _nifti_header(path: Path, image=None, shape: tuple[int, ...] | None = None) -> VolumeHeader:
    if image is None:
        image, shape = _nifti_image(path)
    # pixdim is float32: 0.8 is stored as 0.800000011920929. Its shortest float32 repr (0.8) is the same
    # float32 and the number the user wrote, so medians and messages read 0.8 and a rewrite stores the same bits.
    zooms = [float(str(np.float32(z))) for z in image.header.get_zooms()[:3]]
    dtype = np.dtype(np.float32) if _nifti_scaled(image) else pipeline_dtype(image.get_data_dtype())
    return VolumeHeader(shape=shape[::-1], spacing=_check_spacing(zooms[::-1], f"{path} (header pixdim)"),
                        dtype=dtype.name, affine=np.array(image.affine), header=image.header.copy(), path=path)


def _read_nifti(path: Path) -> Volume:
    image, shape = _nifti_image(path)
    head = _nifti_header(path, image, shape)
    try:
        if _nifti_scaled(image):
            data = image.get_fdata(dtype=np.float32, caching="unchanged")
        else:
            data = np.asarray(image.dataobj)
    except Exception as e:  # a truncated .nii.gz fails here, when the voxels are decompressed
        raise _fail(path, e) from e
    data = data.reshape(shape).transpose(2, 1, 0)  # nibabel's (x, y, z) -> (z, y, x)
    array = np.ascontiguousarray(data, dtype=pipeline_dtype(data.dtype))
    return Volume(array=array, spacing=head.spacing, affine=head.affine, header=head.header, path=path)


def _nifti_bytes(array_zyx: np.ndarray, path: Path, spacing: Spacing, affine: np.ndarray | None, header: Any) -> bytes:
    import gzip

    import nibabel

    data = array_zyx.transpose(2, 1, 0)  # (z, y, x) -> nibabel's (x, y, z)
    if header is not None:
        header = header.copy()
        header.set_data_dtype(data.dtype)
        # A mask keeps the input's frame, not its display window: cal_min/cal_max of a CT (-1000..1000)
        # would show a 0..2 label map as black; 0/0 means "unset" to viewers.
        header["cal_min"], header["cal_max"] = 0, 0
    if affine is None:
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    kind = nibabel.Nifti2Image if isinstance(header, nibabel.Nifti2Header) else nibabel.Nifti1Image
    image = kind(data, np.asarray(affine, dtype=np.float64), header)  # resets scl_slope/inter
    if header is None:
        image.header.set_zooms(spacing[::-1])  # pixdim, what readers (and nnU-Net) take the spacing from
        image.header.set_xyzt_units("mm")
    raw = image.to_bytes()
    # mtime=0: the same volume gives the same bytes (caches keyed on content stay valid across rewrites).
    return gzip.compress(raw, compresslevel=6, mtime=0) if path.name.lower().endswith(".gz") else raw


# --- TIFF ------------------------------------------------------------------------------------------


def spacing_files(path: str | Path) -> list[Path]:
    """The sidecar JSONs a TIFF's spacing is looked up in, in order (module docstring): ``<stem>.json``,
    then ``<case>.json`` for a channel file ``<case>_XXXX.tif``."""
    path = Path(path)
    stem = volume_stem(path)
    out = [path.with_name(stem + ".json")]
    if _CHANNEL_SUFFIX.search(stem):
        out.append(path.with_name(_CHANNEL_SUFFIX.sub("", stem) + ".json"))
    return out


def _tiff_spacing(path: Path) -> tuple[Spacing, Path | None]:
    for candidate in spacing_files(path):
        if not candidate.is_file():
            continue
        try:
            spacing = json.loads(candidate.read_text())["spacing"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{candidate} (the spacing of {path.name}) is unreadable ({type(e).__name__}: {e}): it "
                             'must be JSON like {"spacing": [z, y, x]}, as nnU-Net\'s Tiff3DIO reads it') from None
        return _check_spacing(spacing, str(candidate)), candidate
    return (1.0, 1.0, 1.0), None


def _tiff_series_shape(path: Path, shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    """``(D, H, W)`` of a TIFF series: three axes ending in YX, leading singleton axes dropped."""
    dims = list(zip(axes, shape))
    while len(dims) > 3 and dims[0][1] == 1:
        dims.pop(0)
    kept = "".join(a for a, _ in dims)
    if len(dims) == 3 and kept.endswith("YX"):
        return dims[0][1], dims[1][1], dims[2][1]
    if len(dims) == 2:
        raise _fail(path, f"a 2D TIFF (shape {tuple(shape)}) is not a volume: save the slices as one stack "
                          "[D, H, W] (tifffile.imwrite(path, array_zyx)), or train it as a 2D image")
    raise _fail(path, f"a TIFF of shape {tuple(shape)} (axes {axes}) is not one [D, H, W] stack: colour samples, "
                      "channels or time points go into separate files (<case>_0000.tif, <case>_0001.tif ...)")


def _tiff_header(path: Path) -> VolumeHeader:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = _tiff_series_shape(path, tuple(series.shape), series.axes)
            dtype = pipeline_dtype(series.dtype)
    except VolumeReadError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error ... depending on the damage
        raise _fail(path, e) from e
    spacing, source = _tiff_spacing(path)
    return VolumeHeader(shape=shape, spacing=spacing, dtype=dtype.name, affine=None,
                        header={"spacing_file": None if source is None else str(source)}, path=path)


def _read_tiff(path: Path) -> Volume:
    import tifffile

    head = _tiff_header(path)
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
    except Exception as e:
        raise _fail(path, e) from e
    array = np.ascontiguousarray(data.reshape(head.shape), dtype=pipeline_dtype(data.dtype))
    return Volume(array=array, spacing=head.spacing, affine=None, header=head.header, path=path)


def tiff_bytes(array: np.ndarray) -> bytes:
    """A ``[D, H, W]`` stack as TIFF bytes (zlib-compressed pages, as nnU-Net writes segmentations)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib", photometric="minisblack")
    return buffer.getvalue()


def write_spacing_json(path: str | Path, spacing: Spacing) -> Path:
    """Write the sidecar ``{"spacing": [z, y, x]}`` at ``path`` (atomically)."""
    return write_json_atomic(path, {"spacing": [float(s) for s in spacing]})


def _affine_spacing(affine: np.ndarray) -> Spacing:
    """``(z, y, x)`` voxel sizes of a voxel ``(x, y, z)`` -> world matrix: its column lengths, reversed."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)[::-1])


def _new_frame(path: Path, spacing: Spacing | None, affine: np.ndarray | None) -> Spacing:
    """The spacing of a volume written without ``like``: given, else the affine's, else (1, 1, 1)."""
    if affine is not None and np.asarray(affine).shape != (4, 4):
        raise ValueError(f"write_volume({path}): affine must be a 4x4 matrix, got shape {np.asarray(affine).shape}")
    if spacing is None:
        return _check_spacing((1.0, 1.0, 1.0) if affine is None else _affine_spacing(affine), f"write_volume({path})")
    spacing = _check_spacing(spacing, f"write_volume({path})")
    if affine is not None and not np.allclose(_affine_spacing(affine), spacing, rtol=1e-4):
        raise ValueError(f"write_volume({path}): spacing {spacing} (z, y, x) disagrees with the affine's voxel sizes "
                         f"{tuple(round(v, 6) for v in _affine_spacing(affine))}: give one of them, or both alike")
    return spacing


def _storable(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` in a dtype both formats and the pipeline carry (:func:`write_volume`'s ``array``)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        return array if array.dtype == np.float32 else array.astype(np.float32)
    if array.dtype.kind not in "iu":
        raise ValueError(f"write_volume({path}): cannot store a {array.dtype} array; give numbers")
    if any(array.dtype == d for d in (np.uint8, np.uint16, np.int16)):
        return array
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.uint16, np.int16):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype)
    raise ValueError(f"write_volume({path}): values {low}..{high} fit none of uint8, uint16, int16; "
                     "write them as float32 (exact up to 2**24)")


# --- public ------------------------------------------------------------------------------------------


def _existing(path: str | Path) -> tuple[Path, str]:
    """``(path, format)`` of a volume file that exists (a ``ValueError`` for another extension first)."""
    path = Path(path)
    kind = volume_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"Volume file {path} does not exist")
    return path, kind


def read_volume_header(path: str | Path) -> VolumeHeader:
    """Shape, spacing, dtype, affine and header of a volume file, without decoding its voxels.

    Args:
        path: a ``.nii.gz``, ``.nii``, ``.tif`` or ``.tiff`` file (module docstring).

    Raises:
        VolumeReadError: (a ``ValueError``) the file is unreadable or not one 3D volume, naming it.
        ValueError: another extension; a TIFF sidecar JSON without a valid ``spacing``.
        FileNotFoundError: ``path`` does not exist.
    """
    path, kind = _existing(path)
    return _nifti_header(path) if kind == "nifti" else _tiff_header(path)


def read_volume(path: str | Path) -> Volume:
    """A volume file as ``[D, H, W]`` with its spacing, affine and header (module docstring).

    Args:
        path: a ``.nii.gz``, ``.nii``, ``.tif`` or ``.tiff`` file.

    Raises:
        VolumeReadError: (a ``ValueError``) the file is unreadable or not one 3D volume, naming it.
        ValueError: another extension; a TIFF sidecar JSON without a valid ``spacing``.
        FileNotFoundError: ``path`` does not exist.
    """
    path, kind = _existing(path)
    return _read_nifti(path) if kind == "nifti" else _read_tiff(path)


def write_volume(
    path: str | Path,
    array: np.ndarray,
    like: Volume | VolumeHeader | None = None,
    *,
    spacing: Spacing | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write ``array`` ``[D, H, W]`` as a volume in the frame of ``like`` (a mask of an input), atomically.

    The format follows ``path``'s extension. NIfTI: ``like``'s affine and header (a copy: orientation,
    units, sform/qform codes), with the array's dtype, no intensity scaling and no display window; a
    TIFF ``like`` gives only its spacing (the affine is then ``diag(x, y, z)``). TIFF: the stack
    plus the sidecar ``<stem>.json`` with the spacing, as nnU-Net's Tiff3DIO writes a segmentation.
    The file goes to a temporary name beside ``path`` and is renamed over it
    (:func:`datamodules.io.write_atomic`): a reader sees the old file or the new one, never half.

    Args:
        path: the file to write (``.nii.gz``, ``.nii``, ``.tif``, ``.tiff``); folders are created.
        array: ``[D, H, W]`` in the order :func:`read_volume` returns. uint8, uint16, int16 and float32
            are written as they are; other integers (an argmax's int64) as the first of uint8, uint16,
            int16 that holds their values, as nnU-Net writes segmentations; bool as uint8; other
            floats as float32.
        like: the volume (or header) whose frame the array is in; ``array.shape`` must equal its shape.
        spacing: ``(z, y, x)``, without ``like`` (default: the affine's voxel sizes, else ``(1, 1, 1)``).
        affine: NIfTI's 4x4 voxel ``(x, y, z)`` -> world matrix, without ``like`` (default
            ``diag(x, y, z spacing)``); ignored by TIFF, which has none.

    Returns:
        ``path``.

    Raises:
        ValueError: ``array`` is not 3D or not ``like``'s shape; ``like`` given with ``spacing``/``affine``;
            a spacing that disagrees with the affine; integers that fit none of uint8/uint16/int16.
    """
    path = Path(path)
    kind = volume_format(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_volume({path}): the array must be [D, H, W], got shape {array.shape}")
    array = _storable(array, path)
    if like is not None:
        if spacing is not None or affine is not None:
            raise ValueError(f"write_volume({path}): give like= (the input's frame) or spacing=/affine=, not both")
        if tuple(array.shape) != tuple(like.shape):
            raise ValueError(f"write_volume({path}): the array's shape {tuple(array.shape)} is not the shape "
                             f"{tuple(like.shape)} of {like.path}, whose frame it is written in: resample or crop "
                             "back to the input's grid first")
        spacing = like.spacing
        affine, header = like.affine, (like.header if like.format == "nifti" else None)
    else:
        spacing, header = _new_frame(path, spacing, affine), None
    if kind == "nifti":
        return write_atomic(path, _nifti_bytes(array, path, spacing, affine, header))
    write_atomic(path, tiff_bytes(array))
    write_spacing_json(path.with_name(volume_stem(path) + ".json"), spacing)
    return path
