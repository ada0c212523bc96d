"""Your own data: a folder of images and masks matched by file stem.

Layouts (``root`` = ``data.root``)::

    root/images/<stem>.<ext>   root/masks/<stem>.<ext>           split by val_fraction (seeded)
    root/train/images/ ...     root/train/masks/ ...             split by the subfolders
    root/val/images/ ...       root/val/masks/ ...

``<ext>`` is png, jpg/jpeg or tif/tiff (any case). Images may be grayscale, RGB(A) or palette;
they always become 3-channel uint8 (16-bit images are scaled to 8 bits).

Masks per task:

* binary: one channel holding 0/1 or 0/255 (0/65535 in 16-bit files); or an RGB mask with a
  two-colour ``palette`` (background, foreground).
* multiclass: an index mask with values ``0 .. num_classes-1`` (8- or 16-bit grayscale, or a
  'P'-mode palette PNG, whose pixel values are the indices); or an RGB colour mask with
  ``palette`` = the RGB colour of each class, ``palette[k]`` for class ``k``.
* multilabel: one binary mask per class, ``masks/<stem>_<k>.<ext>`` for ``k = 0 .. num_classes-1``
  (0/1 or 0/255 each); the channels may overlap.

``ignore_index`` (the top-level config key, e.g. 255) may additionally appear in any mask and is
passed through unchanged for the losses and metrics to skip (binary masks then use 0/1 for the
classes when ``ignore_index`` is 255).

An optional ``root/test/images`` + ``root/test/masks`` is the test split (``trainer.test``).

Masks should be lossless (PNG/TIF): a JPEG mask blurs class borders into values that fit no class.

Every image must have its mask(s): setup() checks that for all files (fast, no reading). Values
and sizes are checked when a sample is read, naming the file; ``validate=True`` reads all
pairs in setup() to find every problem before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import albumentations as A

from .base import SegmentationDataModule, SegmentationDataset
from .crops import (
    check_crop_size,
    check_fits_window,
    crop_stage,
    effective_crop,
    fitting_crop,
    image_sizes,
    needs_padding,
)
from .masks import binary_values, index_values, mask_dtype, palette_to_index

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

Pair = tuple[Path, tuple[Path, ...]]


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image file; ValueError naming the file when that fails."""
    try:
        # The with-block closes the file (also on failure); the decoded pixels stay in `image`.
        with Image.open(path) as image:
            image.load()  # decoding happens here: a truncated file fails now, not in a transform
    except Exception as e:  # PIL raises OSError, SyntaxError, zlib.error... depending on format
        raise ValueError(f"Cannot read {path}: {type(e).__name__}: {e} (is the file truncated or not an image?)") from e
    return image


def read_image(path: Path) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` (grayscale is repeated, alpha dropped, 16-bit scaled)."""
    image = _open(path)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        a = np.asarray(image).astype(np.float32)
        if image.mode == "F" and a.max() <= 1.0:
            a = a * 255.0
        elif a.max() > 255:
            a = a / 257.0  # 0..65535 -> 0..255
        gray = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(image.convert("RGB"))  # a copy: writable, as torch.from_numpy wants


def read_mask(
    path: Path,
    task: str,
    num_classes: int,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Read one mask file as ``[H, W]`` class indices (binary: 0/1), checking its values.

    Args:
        path: the mask file.
        task: ``binary`` | ``multiclass`` | ``multilabel`` (a multilabel file is one binary channel).
        num_classes: number of classes (multiclass) -- values must be below it.
        palette: ``palette[k]`` = RGB colour of class k, for RGB colour masks.
        ignore_index: a further allowed value ("not labelled"), passed through unchanged.

    Raises:
        ValueError: naming ``path``: unreadable file, colour mask without palette, values that fit no class.
    """
    image = _open(path)
    mode = image.mode
    sixteen_bit = mode in _SIXTEEN_BIT_MODES
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.array(image.convert("RGB"))
        if palette is not None:
            mask = palette_to_index(rgb, palette, str(path))
        elif (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            mask = rgb[..., 0]  # a gray mask saved as RGB
        else:
            raise ValueError(
                f"Mask {path} is a colour (RGB) image: give data.palette (a list of [r, g, b], "
                "palette[k] = colour of class k) or save masks as single-channel index images."
            )
    elif mode == "LA":
        mask = np.array(image.getchannel("L"))
    elif mode == "F":
        raise ValueError(f"Mask {path} is a floating-point image: save masks as 8- or 16-bit integer images.")
    else:  # "1", "L", "P" (pixel values are the indices), 16-bit
        mask = np.array(image)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if task == "multiclass":
        return index_values(mask, str(path), num_classes, ignore_index).astype(
            mask_dtype(task, num_classes, ignore_index), copy=False
        )
    if palette is not None and mode in ("RGB", "RGBA"):
        return binary_values(mask, str(path))  # palette indices 0/1
    return binary_values(mask, str(path), 65535 if sixteen_bit else 255, ignore_index)


def _key(path: Path, folder: Path, suffix: str) -> str | None:
    """The pairing key of a file: its path below ``folder`` without ``suffix`` (or the extension)."""
    rel = path.relative_to(folder).as_posix()
    if suffix:
        return rel[: -len(suffix)] if rel.lower().endswith(suffix.lower()) else None
    return rel[: -len(path.suffix)] if path.suffix.lower() in EXTENSIONS else None


def _index_files(folder: Path, what: str, suffix: str = "") -> dict[str, Path]:
    """Map key -> file for the image files below ``folder`` (searched recursively, e.g. Cityscapes' cities).

    The key is the path below ``folder`` without ``suffix`` (``data.image_suffix`` /
    ``data.mask_suffix``, e.g. ``_leftImg8bit.png``), or without the extension when no suffix is
    given: ``city/a_leftImg8bit.png`` and ``city/a_gtFine_labelTrainIds.png`` both give ``city/a``.
    Errors on a missing folder, duplicate keys, or a suffix that matches no file.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        key = _key(path, folder, suffix)
        if key is None:
            continue
        if key in files:
            raise ValueError(
                f"Two {what.lower()} files share the stem '{key}': {files[key]} and {path}; "
                "keep one (files are matched by stem)."
            )
        files[key] = path
    if suffix and not files:
        raise FileNotFoundError(
            f"No file below {folder} ends with the suffix {suffix!r} (data.{'image' if what == 'Images' else 'mask'}"
            f"_suffix): fix the suffix, or set it to '' to match by stem."
        )
    return files


def find_pairs(
    images_dir: Path, masks_dir: Path, task: str, num_classes: int, image_suffix: str = "", mask_suffix: str = ""
) -> list[Pair]:
    """Match every image below ``images_dir`` with its mask(s) below ``masks_dir`` by stem (:func:`_index_files`).

    Returns:
        ``[(image_path, (mask_path, ...)), ...]`` sorted by stem; one mask per image, or
        ``num_classes`` masks ``<stem>_<k>`` per image for multilabel.

    Raises:
        FileNotFoundError: a missing folder, no images, an image without its mask (named).
    """
    images = _index_files(images_dir, "Images", image_suffix)
    if not images:
        raise FileNotFoundError(f"No images ({', '.join(EXTENSIONS)}) in {images_dir}")
    masks = _index_files(masks_dir, "Masks", mask_suffix)
    pairs: list[Pair] = []
    missing: list[str] = []
    for stem, image_path in images.items():
        keys = [f"{stem}_{k}" for k in range(num_classes)] if task == "multilabel" else [stem]
        absent = [k for k in keys if k not in masks]
        if absent:
            expected = f"{absent[0]}{mask_suffix}" if mask_suffix else f"{absent[0]}.png or .jpg/.tif"
            missing.append(f"{image_path} (expected {masks_dir / expected})")
            continue
        pairs.append((image_path, tuple(masks[k] for k in keys)))
    if task == "multilabel":
        _refuse_extra_labels(images, masks, masks_dir, num_classes)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        layout = " (multilabel: one mask <stem>_<k> per class k)" if task == "multilabel" else ""
        listed = "".join(f"\n  {m}" for m in missing[1:10])
        raise FileNotFoundError(f"No mask for image {missing[0]}{more}{layout}{listed}")
    return pairs


def _refuse_extra_labels(images: dict[str, Path], masks: dict[str, Path], masks_dir: Path, num_classes: int) -> None:
    """A multilabel mask ``<stem>_<k>`` with ``k >= num_classes`` would be ignored without a word: refuse it."""
    extra = []
    for key, path in masks.items():
        stem, _, label = key.rpartition("_")
        if stem in images and label.isdigit() and int(label) >= num_classes:
            extra.append((int(label), path))
    extra.sort()
    if extra:
        top, path = extra[-1]
        raise ValueError(
            f"{masks_dir} holds label masks up to <stem>_{top} (e.g. {path}) but num_classes={num_classes} "
            f"reads labels 0..{num_classes - 1} only, so label {top} would be ignored. Set num_classes={top + 1}, "
            "or remove the masks of the labels you do not train."
        )


class _FileSource:
    """Picklable sample source reading image/mask files (DataLoader workers call it)."""

    def __init__(self, pairs: list[Pair], task: str, num_classes: int, palette, ignore_index) -> None:
        self.pairs, self.task, self.num_classes = pairs, task, num_classes
        self.palette, self.ignore_index = palette, ignore_index

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image_path, mask_paths = self.pairs[index]
        image = read_image(image_path)
        channels = [read_mask(p, self.task, self.num_classes, self.palette, self.ignore_index) for p in mask_paths]
        for path, m in zip(mask_paths, channels):
            if m.shape[:2] != image.shape[:2]:
                raise ValueError(
                    f"Size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but "
                    f"mask {path} is {m.shape[1]}x{m.shape[0]}; a mask must have its image's size."
                )
        mask = np.stack(channels, axis=-1) if self.task == "multilabel" else channels[0]
        return image, mask, image_path.stem


class _CachedSource:
    """Every sample decoded once, held in memory (``data.cache=true``); forked workers share the pages."""

    def __init__(self, source: _FileSource, length: int) -> None:
        self.samples = [source(i) for i in range(length)]
        self.nbytes = sum(image.nbytes + mask.nbytes for image, mask, _ in self.samples)

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, mask, name = self.samples[index]
        return image, mask, name  # the transforms return new arrays: the cached ones stay untouched


class FolderDataModule(SegmentationDataModule):
    """Images and masks from a folder, matched by file stem (layouts and mask formats: module doc).

    Args:
        root: the dataset folder (``images/`` + ``masks/``, or ``train/`` + ``val/`` each holding both).
        image_size: ``None`` (default): native resolution -- training on random crops of
            ``crop_size`` (datamodules/crops.py), validation on whole images by sliding-window
            inference. An int: every image is resized to ``image_size`` x ``image_size`` (train
            and val; a Resize runs before the configured pipelines) and ``crop_size`` is unused.
        crop_size: side of the training crops and of the validation window (multiple of 32);
            ``None``: no crop stage (your own crops in ``train_transforms``), whole-image validation
            in one pass.
        scale_range: ``[low, high]`` random rescale before cropping, or ``None``.
        foreground_fraction: share of crops centred on a pixel of a class drawn uniformly among
            those present in the mask (:class:`~datamodules.crops.ClassCentredCrop`).
        pad: ``True`` (default): images smaller than the crop are padded (the padding marked
            ``ignore_index``) and the crop shrinks to the largest image; ``False``: no padding --
            the crop is ``crop_size`` and must fit in every training image, and a validation or
            test image smaller than the window is an error (both checked in setup()).
        image_suffix, mask_suffix: the file-name ends that pair an image with its mask (Cityscapes:
            ``_leftImg8bit.png`` / ``_gtFine_labelTrainIds.png``); ``""``: by stem, any extension.
        class_names: one name per class (multiclass: the background first): per-class metrics
            are logged as ``val/dice_<name>`` and the pictures' legends use them.
        cache: decode every image and mask once in setup() and keep them in memory (the size is
            logged); otherwise files are decoded on every read, by the DataLoader workers.
        sliding_window: validation/test options ``overlap``, ``mode`` (``gaussian`` | ``constant``),
            ``sw_batch_size`` (windows per forward pass: bounds the memory; ``None``, the default: 1 on a
            CPU, where it is the fastest, 4 on an accelerator -- segtrain.sliding.sw_batch_size_for).
        val_fraction: share of ``root/images`` held out for validation (ignored with train/ + val/).
        palette: for RGB colour masks, ``palette[k] = [r, g, b]`` of class k (binary: 2 colours).
        ignore_index: a mask value meaning "not labelled" (e.g. 255), passed through unchanged.
        validate: read every pair in setup() and check sizes and values (slower; for small datasets).
        batch_size, num_workers: as in :class:`~datamodules.base.SegmentationDataModule`, other defaults.
        **base_options: ``task``, ``num_classes``, ``seed`` (of the split and the augmentation
            stream) ... -- the options of :class:`~datamodules.base.SegmentationDataModule`, by keyword.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: int | None = None,
        crop_size: int | None = 512,
        scale_range: Sequence[float] | None = None,
        foreground_fraction: float = 0.5,
        pad: bool = True,
        sliding_window: dict[str, Any] | None = None,
        image_suffix: str = "",
        mask_suffix: str = "",
        class_names: Sequence[str] | None = None,
        cache: bool = False,
        val_fraction: float = 0.2,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = None,
        validate: bool = False,
        batch_size: int = 8,
        num_workers: int = 2,
        **base_options: Any,
    ) -> None:
        native = image_size is None
        for key in ("train_transforms", "val_transforms"):  # the defaults resize only in resize mode
            if base_options.get(key) is None:
                base_options[key] = {"hflip": A.HorizontalFlip(p=0.5)} if key == "train_transforms" else {}
                base_options[key]["normalize"] = A.Normalize()
        # Files are decoded while training runs: smaller batches and two workers by default.
        super().__init__(
            image_size=image_size or crop_size or 1, batch_size=batch_size, num_workers=num_workers, **base_options
        )
        self.native = native
        self.crop_size = check_crop_size(crop_size) if native and crop_size is not None else None
        self.scale_range = None if scale_range is None else [float(v) for v in scale_range]
        self.foreground_fraction = float(foreground_fraction)
        if not isinstance(pad, bool):
            raise ValueError(f"data.pad must be true or false, got {pad!r}")
        self.pad = pad
        self.cache = bool(cache)
        self.image_suffix, self.mask_suffix = str(image_suffix or ""), str(mask_suffix or "")
        #: One name per metric channel (multiclass: incl. the background), for the per-class metric keys.
        self.metric_class_names = None if class_names is None else [str(n) for n in class_names]
        self.class_names = self._check_class_names(class_names)
        self.window_options = {"overlap": 0.25, "mode": "gaussian", "sw_batch_size": None, **(sliding_window or {})}
        #: Set by setup() in native mode: what validation, test and predict run (segtrain/sliding.py).
        self.sliding_window: dict[str, Any] | None = None
        if not native:
            resize = A.Resize(self.image_size, self.image_size)
            self.train_transform = A.Compose([resize, *self.train_transform.transforms], seed=self.seed)
            self.val_transform = A.Compose([A.Resize(self.image_size, self.image_size), *self.val_transform.transforms],
                                           seed=self.seed)
        task, num_classes = self.task, self.num_classes
        if root is None or str(root) in ("", "???"):
            raise ValueError("data.root is not set: pass data.root=/path/to/dataset (holding images/ and masks/)")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(root).expanduser()
        self.val_fraction = float(val_fraction)
        self.palette = self._check_palette(palette)
        labels = num_classes if task == "multiclass" else 2
        if ignore_index is not None and 0 <= int(ignore_index) < labels:
            raise ValueError(
                f"ignore_index={ignore_index} is a class value of task={task} (0..{labels - 1}); use e.g. 255"
            )
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.validate = bool(validate)
        self.train_pairs: list[Pair] = []
        self.val_pairs: list[Pair] = []
        self.test_pairs: list[Pair] = []
        self.test_set: SegmentationDataset | None = None

    def _check_class_names(self, names):
        """``data.class_names``: every class's name (multiclass: incl. background), shown in metrics and pictures."""
        if names is None:
            return None
        names = [str(n) for n in names]
        expected = self.num_classes
        if len(names) != expected:
            raise ValueError(
                f"data.class_names has {len(names)} names but task={self.task} num_classes={self.num_classes} needs "
                f"{expected} (multiclass: the background first)."
            )
        # The pictures' legends name the drawn layers: multiclass draws classes 1.., not the background.
        return names[1:] if self.task == "multiclass" else names

    def _check_palette(self, palette):
        if palette is None:
            return None
        if self.task == "multilabel":
            raise ValueError("data.palette is for binary/multiclass colour masks; multilabel uses one mask per class")
        colors = [tuple(int(c) for c in color) for color in palette]
        expected = 2 if self.task == "binary" else self.num_classes
        if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
            raise ValueError(f"data.palette must be a list of [r, g, b] colours in 0..255, got {palette}")
        if len(colors) != expected:
            raise ValueError(
                f"data.palette has {len(colors)} colours but task={self.task} needs {expected} "
                "(palette[k] = colour of class k; binary: [background, foreground])"
            )
        if len(set(colors)) != len(colors):
            raise ValueError(f"data.palette repeats a colour: {colors}")
        return colors

    def _pairs(self, split: Path) -> list[Pair]:
        return find_pairs(split / "images", split / "masks", self.task, self.num_classes, self.image_suffix, self.mask_suffix)

    def _split(self) -> tuple[list[Pair], list[Pair]]:
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(
                f"data.root {root} does not exist (or is not a folder): pass "
                "data.root=/path/to/dataset, a folder holding images/ and masks/ (or train/ and val/)"
            )
        if (root / "train").is_dir():
            if not (root / "val").is_dir():
                raise FileNotFoundError(f"{root} has train/ but no val/: add {root / 'val'} (images/ + masks/)")
            train = self._pairs(root / "train")
            val = self._pairs(root / "val")
            return train, val
        if not (root / "images").is_dir():
            raise FileNotFoundError(
                f"{root} holds neither images/ + masks/ nor train/ + val/ subfolders (each with images/ + masks/): "
                "put the images in images/ and their masks, same file stem, in masks/"
            )
        pairs = self._pairs(root)
        n_val = int(round(len(pairs) * self.val_fraction))
        if self.val_fraction > 0:
            n_val = max(n_val, 1)
        if len(pairs) - n_val < 1:
            raise ValueError(
                f"{root / 'images'} holds {len(pairs)} image(s): too few for val_fraction={self.val_fraction}"
            )
        order = np.random.default_rng(self.seed).permutation(len(pairs))
        val_idx = set(order[:n_val].tolist())
        train = [p for i, p in enumerate(pairs) if i not in val_idx]
        val = [p for i, p in enumerate(pairs) if i in val_idx]
        return train, val

    def _native_pipeline(self) -> None:
        """Put the crop stage, sized for this data, before the configured training transforms."""
        sizes = image_sizes(p[0] for p in self.train_pairs)
        if not self.pad:
            crop = fitting_crop(sizes, self.crop_size, self.scale_range, [str(p[0]) for p in self.train_pairs],
                                "ignore_index=255" if self.ignore_index is None else f"ignore_index={self.ignore_index}")
            self._check_windows(self.val_pairs, "validation", crop)
        else:
            crop = effective_crop(sizes, self.crop_size)
        if self.pad and needs_padding(sizes, crop, self.scale_range) and self.ignore_index is None:
            small = min(sizes, key=min)
            raise ValueError(
                f"Training images as small as {small[1]}x{small[0]} (WxH) are padded to the {crop} px crop, and padded "
                "mask pixels must be ignored, not counted as background: set ignore_index=255 (top-level; a value "
                "no mask uses), or lower data.crop_size, or resize instead (data.image_size=...)."
            )
        user = self.train_transform.transforms  # ends with ToTensorV2
        stage = crop_stage(crop, self.ignore_index, self.foreground_fraction, self.scale_range, pad=self.pad)
        self.train_transform = A.Compose([*stage, *user], seed=self.seed)
        self.effective_crop = crop
        self.sliding_window = {"window": crop, **self.window_options, "pad": self.pad}

    @staticmethod
    def _check_windows(pairs: list[Pair], split: str, window: int) -> None:
        """``data.pad=false``: every image of ``split`` must be at least the window (header reads only)."""
        for (path, _), size in zip(pairs, image_sizes(p[0] for p in pairs)):
            check_fits_window(size, window, f"{split.capitalize()} image {path}")

    def _dataset(self, pairs: list[Pair], transform) -> SegmentationDataset:
        source = _FileSource(pairs, self.task, self.num_classes, self.palette, self.ignore_index)
        if self.cache and pairs:
            source = _CachedSource(source, len(pairs))
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"data.cache: {len(pairs)} decoded samples hold {source.nbytes / 2**20:.1f} MiB in memory")
        elif self.validate:
            for i in range(len(pairs)):
                source(i)
        return SegmentationDataset(source, len(pairs), transform, self.task)

    def setup(self, stage: str | None = None) -> None:
        """List (and with ``validate`` read) the pairs of the splits ``stage`` needs."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_pairs, self.val_pairs = self._split()
            if self.crop_size is not None:
                self._native_pipeline()
            self.train_set = self._dataset(self.train_pairs, self.train_transform)
            self.val_set = self._dataset(self.val_pairs, self.val_transform)
        test = self.root / "test"
        if stage in (None, "test") and self.test_set is None and test.is_dir():
            self.test_pairs = self._pairs(test)
            if self.sliding_window is not None and not self.pad:
                self._check_windows(self.test_pairs, "test", self.sliding_window["window"])
            self.test_set = self._dataset(self.test_pairs, self.val_transform)

    def val_dataloader(self):
        # Whole images of different sizes cannot be stacked: one image per validation batch.
        return self._loader(self.val_set, train=False, batch_size=1 if self.native else None)

    def test_dataloader(self):
        if self.test_set is None and not (self.root / "test").is_dir():
            raise FileNotFoundError(
                f"No test split: add {self.root / 'test' / 'images'} and {self.root / 'test' / 'masks'}"
            )
        return self._loader(self.test_set, train=False, batch_size=1 if self.native else None)
