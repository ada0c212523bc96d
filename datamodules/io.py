"""Image files read as they are: every channel, the file's own bit depth, nothing squeezed to 8 bits.

:func:`read_image` returns ``[H, W, C]`` in the file's dtype where the pipeline can carry it --
``uint8``, ``uint16``, ``int16``, ``float32`` -- and ``float32`` for every other numeric type
(``int32``, ``uint32``, ``float64``, ``float16``; 16-bit integers are exact in float32 as well):

* TIFF (``.tif``/``.tiff``) through ``tifffile``, the reader of scientific imaging: one page
  ``[H, W]``, samples ``[H, W, S]`` (RGB, RGB+NIR, 13 bands ...), or several pages / planar
  samples ``[C, H, W]``, which become ``C`` channels (an array ``[H, W, C]`` written by a plain
  ``tifffile.imwrite``, which stores H pages of W x C, with C <= 64 < H, W, is read as C bands).
  More dimensions (a volume, a time series) are refused.
* PNG, JPEG and BMP through Pillow: grayscale (8/16-bit), RGB, RGBA (the 4th channel is kept),
  grey + alpha; palette images become RGB. 16-bit colour PNGs, which Pillow reduces to 8 bits,
  are read by OpenCV instead.
* ``.npy`` arrays, ``[H, W]`` or channels-last ``[H, W, C]``, loaded without pickle.

:func:`read_header` gives ``(height, width, channels, dtype)`` without decoding the pixels
(PNG/JPEG/BMP headers, TIFF tags, the ``.npy`` header), which is what the fingerprint and the
crop planning read for every file. :func:`to_display` makes any image viewable (uint8 RGB).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Image files the datamodules and predict.py pick up (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
#: Lossy formats: fine for photos, never for masks (compression noise creates values of no class).
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
_TIFF = (".tif", ".tiff")
#: dtypes the augmentation pipeline carries as they are; others become float32.
KEPT_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)
_PIL_16_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says: size, channel count and the dtype :func:`read_image` returns."""

    height: int
    width: int
    channels: int
    dtype: str

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width


class ImageReadError(ValueError):
    """A file that cannot be read as an image (names the file and what went wrong)."""


def _fail(path: Path, error: BaseException | str) -> ImageReadError:
    what = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    return ImageReadError(f"Cannot read {path}: {what} (is the file truncated or not an image?)")


def pipeline_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype :func:`read_image` returns for data stored as ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype == np.int8:
        return np.dtype(np.int16)
    return dtype if any(dtype == d for d in KEPT_DTYPES) else np.dtype(np.float32)


def _as_pipeline_array(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    target = pipeline_dtype(array.dtype)
    if array.ndim == 2:
        array = array[..., None]
    return np.ascontiguousarray(array, dtype=target)


# --- TIFF ----------------------------------------------------------------------------------------


def _tiff_layout(shape: tuple[int, ...], axes: str, path: Path) -> tuple[int, int, int, bool]:
    """``(height, width, channels, channels_first)`` of a TIFF series from its shape and axes string."""
    dims = [(a, n) for a, n in zip(axes, shape) if n != 1 or a in "YX"]
    kept = "".join(a for a, _ in dims)
    sizes = [n for _, n in dims]
    if kept == "YX":
        return sizes[0], sizes[1], 1, False
    if len(kept) == 3 and kept.endswith("S") and kept[:2] == "YX":
        return sizes[0], sizes[1], sizes[2], False
    if len(kept) == 3 and kept[1:] == "YX":
        if sizes[0] > 64 >= sizes[2] and sizes[1] > 64:
            # tifffile.imwrite(path, array [H, W, C]) without photometric/planarconfig stores H pages of
            # W x C; such a file is an image of C bands, as numpy's channels-last layout meant it.
            return sizes[0], sizes[1], sizes[2], False
        return sizes[1], sizes[2], sizes[0], True
    raise _fail(path, f"a TIFF of shape {tuple(shape)} (axes {axes}) is not a 2D image with channels: a volume or "
                      "time series needs a 3D pipeline; save one 2D image [H, W] or [H, W, C] per file")


def _tiff_header(path: Path) -> ImageInfo:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            h, w, c, _ = _tiff_layout(series.shape, series.axes, path)
            dtype = pipeline_dtype(series.dtype)
    except ImageReadError:
        raise
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error ... depending on the damage
        raise _fail(path, e) from e
    return ImageInfo(h, w, c, dtype.name)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            _, _, _, channels_first = _tiff_layout(series.shape, series.axes, path)
            array = series.asarray()
    except ImageReadError:
        raise
    except Exception as e:
        raise _fail(path, e) from e
    array = np.squeeze(array, axis=tuple(i for i, (a, n) in enumerate(zip(series.axes, series.shape))
                                         if n == 1 and a not in "YX"))
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    return _as_pipeline_array(array)


# --- PNG, JPEG, BMP ---------------------------------------------------------------------------------


def _png_is_16_bit_colour(path: Path) -> bool:
    """A PNG whose IHDR says 16 bits per sample in colour (type 2: RGB, 6: RGBA): Pillow reads it as 8 bits."""
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def _pil_channels_and_dtype(image: Image.Image) -> tuple[int, np.dtype]:
    mode = image.mode
    if mode in _PIL_16_BIT:
        return 1, np.dtype(np.uint16)
    if mode == "I":
        return 1, np.dtype(np.float32)
    if mode == "F":
        return 1, np.dtype(np.float32)
    if mode in ("1", "L"):
        return 1, np.dtype(np.uint8)
    if mode == "LA":
        return 2, np.dtype(np.uint8)
    if mode in ("RGBA", "RGBa", "PA"):
        return 4, np.dtype(np.uint8)
    return 3, np.dtype(np.uint8)  # RGB, P (palette -> RGB), CMYK / YCbCr / LAB / HSV -> RGB


def _pil_header(path: Path) -> ImageInfo:
    try:
        with Image.open(path) as image:
            h, w = image.height, image.width
            channels, dtype = _pil_channels_and_dtype(image)
    except Exception as e:
        raise _fail(path, e) from e
    if path.suffix.lower() == ".png" and channels >= 3 and _png_is_16_bit_colour(path):
        channels, dtype = (4 if channels == 4 else 3), np.dtype(np.uint16)
    return ImageInfo(h, w, channels, dtype.name)


def _read_16_bit_colour_png(path: Path) -> np.ndarray:
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise _fail(path, "OpenCV could not decode this 16-bit colour PNG")
    order = [2, 1, 0, 3][: array.shape[2]]  # OpenCV's BGR(A) -> RGB(A)
    return np.ascontiguousarray(array[..., order])


def _read_pil(path: Path) -> np.ndarray:
    try:
        sixteen_bit_colour = path.suffix.lower() == ".png" and _png_is_16_bit_colour(path)
    except OSError as e:
        raise _fail(path, e) from e
    if sixteen_bit_colour:
        return _read_16_bit_colour_png(path)
    try:
        # The with-block closes the file (also on failure); load() decodes now, so a truncated
        # file fails here, naming it, not later in a transform.
        with Image.open(path) as image:
            image.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, zlib.error... depending on format
        raise _fail(path, e) from e
    channels, dtype = _pil_channels_and_dtype(image)
    mode = image.mode
    if mode not in ("1", "L", "LA", "RGB", "RGBA", "F", "I", *_PIL_16_BIT):
        image = image.convert("RGBA" if channels == 4 else "RGB")
    array = np.asarray(image)
    if mode == "1":
        array = array.astype(np.uint8) * 255
    return _as_pipeline_array(array.astype(dtype, copy=False) if mode != "I" else array)


# --- npy ---------------------------------------------------------------------------------------------


def _npy_shape_dtype(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # ValueError for object arrays (pickle refused), OSError for a damaged header
        raise _fail(path, e) from e
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf":
        raise _fail(path, f"an array of shape {array.shape} and dtype {array.dtype} is not an image: save "
                          "numeric [H, W] or channels-last [H, W, C] arrays")
    return array.shape, array.dtype


def _npy_header(path: Path) -> ImageInfo:
    shape, dtype = _npy_shape_dtype(path)
    return ImageInfo(shape[0], shape[1], shape[2] if len(shape) == 3 else 1, pipeline_dtype(dtype).name)


def _read_npy(path: Path) -> np.ndarray:
    _npy_shape_dtype(path)
    return _as_pipeline_array(np.load(path, allow_pickle=False))


# --- public ------------------------------------------------------------------------------------------


def _format(path: Path) -> str:
    """``tiff``, ``npy`` or ``pil``: which reader a file goes to, by its extension."""
    suffix = path.suffix.lower()
    return "tiff" if suffix in _TIFF else "npy" if suffix == ".npy" else "pil"


def read_header(path: str | Path) -> ImageInfo:
    """Size, channels and dtype of an image file from its header (no pixel decoding).

    Raises:
        ImageReadError: (a ``ValueError``) naming the file when it cannot be read or is no 2D image.
    """
    path = Path(path)
    return {"tiff": _tiff_header, "npy": _npy_header, "pil": _pil_header}[_format(path)](path)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as ``[H, W, C]``, every channel, in its own dtype (module docstring).

    Raises:
        ImageReadError: (a ``ValueError``) naming the file when it cannot be decoded.
    """
    path = Path(path)
    return {"tiff": _read_tiff, "npy": _read_npy, "pil": _read_pil}[_format(path)](path)


def adapt_channels(image: np.ndarray, channels: int | None, select: list[int] | None, path: str | Path) -> np.ndarray:
    """Give an image the channel layout the run trains on (``data.channels``, grey among RGB).

    Args:
        image: ``[H, W, C]`` as :func:`read_image` returns it.
        channels: the channel count the network takes (after ``select``); ``None``: unchecked.
        select: ``data.channels``, the indices of the file's channels to keep, or ``None`` (all).
        path: the file, for the message.

    A one-channel image where three are expected is repeated (a greyscale photo among RGB ones).

    Raises:
        ValueError: the image has another channel count, or ``select`` names a channel it lacks.
    """
    if select is not None:
        if max(select) >= image.shape[-1]:
            raise ValueError(f"data.channels={list(select)} selects channel {max(select)}, but {path} has "
                             f"{image.shape[-1]} channel(s) (0..{image.shape[-1] - 1}): fix data.channels.")
        image = image[..., list(select)]
    if channels is not None and image.shape[-1] != channels:
        if image.shape[-1] == 1 and channels == 3:
            return np.repeat(image, 3, axis=-1)
        raise ValueError(
            f"{path} has {image.shape[-1]} channel(s), but the model takes {channels}: every image of a run "
            "needs the same channels (convert the file, or pick channels with data.channels=[...])."
        )
    return np.ascontiguousarray(image)


def to_display(image: np.ndarray) -> np.ndarray:
    """Any ``[H, W, C]`` image as uint8 RGB for pictures: the first three channels (grey repeated).

    8-bit images are shown as they are; others are stretched per channel between their 1st and
    99th percentile, so a 12-bit microscope image with values 1000..1040 is not a black square.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    if image.dtype == np.uint8:
        return np.array(image)  # a writable copy (torch.from_numpy wants one)
    data = image.astype(np.float32)
    flat = data.reshape(-1, 3)
    lo, hi = np.percentile(flat, 1, axis=0), np.percentile(flat, 99, axis=0)
    scaled = (data - lo) / np.maximum(hi - lo, 1e-6)
    return np.ascontiguousarray((np.clip(scaled, 0, 1) * 255).round().astype(np.uint8))


# --- masks -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskFile:
    """A mask file's raw values: ``values`` ``[H, W]`` (integers as stored), ``full`` the "on" value of a 0/max mask."""

    values: np.ndarray
    full: int


def read_mask_file(path: str | Path, palette: list[tuple[int, int, int]] | None = None) -> MaskFile:
    """A mask file's values as stored, before any task decodes them.

    8- and 16-bit grayscale, 'P'-mode PNGs (the pixel values are the indices), RGB colour masks
    with ``palette`` (``palette[k]`` = colour of class ``k``; without one a colour mask is an
    error, a grey mask saved as RGB is read as grey), TIFF through Pillow, and integer ``.npy``.

    Raises:
        ValueError: naming ``path``: unreadable, floating-point, or colour without a palette.
    """
    from .masks import palette_to_index

    path = Path(path)
    if path.suffix.lower() == ".npy":
        shape, dtype = _npy_shape_dtype(path)
        if len(shape) != 2 or dtype.kind not in "biu":
            raise ValueError(f"Mask {path} is a {dtype} array of shape {shape}: a mask is an integer [H, W] array.")
        values = np.load(path, allow_pickle=False)
        return MaskFile(values.astype(np.uint8) if values.dtype == np.bool_ else values, 255)
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as e:
        raise _fail(path, e) from e
    mode = image.mode
    full = 65535 if mode in _PIL_16_BIT else 255
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.array(image.convert("RGB"))
        if palette is not None:
            return MaskFile(palette_to_index(rgb, palette, str(path)), 1)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return MaskFile(rgb[..., 0], 255)  # a grey mask saved as RGB
        raise ValueError(
            f"Mask {path} is a colour (RGB) image: give data.palette (a list of [r, g, b], "
            "palette[k] = colour of class k) or save masks as single-channel index images."
        )
    if mode == "LA":
        return MaskFile(np.array(image.getchannel("L")), 255)
    if mode == "F":
        raise ValueError(f"Mask {path} is a floating-point image: save masks as 8- or 16-bit integer images.")
    values = np.array(image)  # "1", "L", "P" (pixel values are the indices), 16-bit, "I"
    if values.dtype == bool:
        values = values.astype(np.uint8)
    return MaskFile(values, full)


# --- writing -----------------------------------------------------------------------------------------


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file beside it and ``os.replace``: readers see the old file or the
    new one, never half. The file gets the usual permissions (the umask), not mkstemp's 0600, so that a team sharing
    a cache or a run folder can read it. Used by fingerprint/, evaluation/ and the folds (segtrain has its own,
    segtrain/atomic.py, with fsync for checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_json_atomic(path: str | Path, data: Any, indent: int = 2) -> Path:
    """``data`` as JSON (no NaN: a NaN is a bug to surface, not a value to store) by :func:`write_atomic`."""
    return write_atomic(path, (json.dumps(data, indent=indent, allow_nan=False) + "\n").encode("utf-8"))
