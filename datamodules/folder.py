"""Your own data: a folder of images and masks matched by file stem.

Layouts and pairing: datamodules/layout.py (``images/`` + ``masks/``, ``train/`` + ``val/``, or
``data.images_dir`` / ``data.masks_dir`` holding split folders, as Cityscapes is downloaded).

Images are read as they are (datamodules/io.py): any channel count (grey, RGB, RGBA, RGB+NIR, 13
bands ...) and bit depth (8/16-bit, int16, float32) in PNG, JPEG, TIFF (tifffile) and ``.npy``.
Nothing is squeezed to 8 bits; ``data.normalize`` turns values into network inputs
(datamodules/normalization.py: ImageNet's mean/std for 8-bit RGB, the dataset's per-channel
percentiles and z-score for every other image) at the end of both pipelines, and
``data.channels=[...]`` keeps some channels of every file. Augmentations that only make sense on
8-bit RGB (ColorJitter ...) are left out for other images, with a log line.

Masks per task:

* binary: one channel holding 0/1 or 0/255 (0/65535 in 16-bit files); or an RGB mask with a
  two-colour ``palette`` (background, foreground).
* multiclass: an index mask with values ``0 .. num_classes-1`` (8- or 16-bit grayscale, a
  'P'-mode palette PNG, whose pixel values are the indices, or an integer ``.npy``); or an RGB
  colour mask with ``palette`` = the RGB colour of each class, ``palette[k]`` for class ``k``.
* multilabel: one binary mask per class, ``masks/<stem>_<k>.<ext>`` for ``k = 0 .. num_classes-1``
  (0/1 or 0/255 each); the channels may overlap.

``ignore_index`` (the top-level config key, e.g. 255) is a value *of the mask files* meaning "not
labelled", passed through for the losses and metrics to skip. Padding needs none: padded mask
pixels get a value no class uses (:func:`datamodules.masks.reserved_pad_value`), which the harness
hands to the losses and metrics as their ignore value.

Before anything trains, the harness fingerprints the data (``fingerprint/``: every header and
mask, sampled intensities) and checks the config against it; the datamodule takes that
fingerprint (``fingerprint=``) for the crop planning and the dataset normalisation. Used alone,
it reads the training images' headers itself and computes a fingerprint only where
``normalize=dataset`` needs its statistics.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from .base import SegmentationDataModule, SegmentationDataset
from .crops import check_crop_size, check_fits_window, crop_stage, effective_crop, fitting_crop
from .derived import DISTANCE, DerivedTargets
from .io import adapt_channels, read_header, read_image, read_mask_file
from .folds import check_fold_options
from .layout import EXTENSIONS, Pair, discover_splits, find_pairs  # noqa: F401 -- re-exported
from .masks import binary_values, index_values, mask_dtype, reserved_pad_value
from .normalization import RGB_ONLY, contains_normalize, dataset_spec, normalization_transform, resolve_mode


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
    raw = read_mask_file(path, palette)
    if task == "multiclass":
        return index_values(raw.values, str(path), num_classes, ignore_index).astype(
            mask_dtype(task, num_classes, ignore_index), copy=False
        )
    return binary_values(raw.values, str(path), raw.full, ignore_index)


class _FileSource:
    """Picklable sample source reading image/mask files (DataLoader workers call it)."""

    def __init__(self, pairs: list[Pair], task: str, num_classes: int, palette, ignore_index,
                 channels: int | None = None, select: list[int] | None = None) -> None:
        self.pairs, self.task, self.num_classes = pairs, task, num_classes
        self.palette, self.ignore_index = palette, ignore_index
        self.channels, self.select = channels, select

    def file_key(self, index: int) -> str:
        """The mask files of sample ``index`` with their sizes and modification times (a store's key)."""
        parts = []
        for path in self.pairs[index][1]:
            stat = os.stat(path)
            parts.append(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join(parts) + f"|select={self.select}|palette={self.palette}|ignore={self.ignore_index}"

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image_path, mask_paths = self.pairs[index]
        image = adapt_channels(read_image(image_path), self.channels, self.select, image_path)
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
    """Every sample decoded once, held in memory (``data.cache=true``); forked workers share the pages.

    With derived targets (``distance``, ``skeleton``), the whole-image maps of the untransformed
    images are computed here too, once per image (datamodules/derived.py).
    """

    def __init__(self, source: _FileSource, length: int, derived: DerivedTargets | None = None) -> None:
        self.samples = [source(i) for i in range(length)]
        self.nbytes = sum(image.nbytes + mask.nbytes for image, mask, _ in self.samples)
        self.derived: dict[str, list[np.ndarray]] = {}
        self.derived_nbytes = 0
        names = () if derived is None else derived.names
        if DISTANCE in names:
            channels = 1 if derived.task == "binary" else derived.num_classes
            needed = sum(mask.shape[0] * mask.shape[1] * channels * 4 for _, mask, _ in self.samples)
            available = available_memory()
            if available is not None and needed > available:
                raise ValueError(
                    f"data.cache with distance maps: the whole-image maps of {length} images need "
                    f"{needed / 2**30:.1f} GiB (float32, {channels} per pixel) and {available / 2**30:.1f} GiB are "
                    "available. Set data.cache=false: the maps are then computed once per image and kept on disk "
                    "(paths.cache_dir)."
                )
        for name in names:
            self.derived[name] = [derived.whole(name, source, i, mask)[0] for i, (_, mask, _) in enumerate(self.samples)]
            self.derived_nbytes += sum(d.nbytes for d in self.derived[name])

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, mask, name = self.samples[index]
        return image, mask, name  # the transforms return new arrays: the cached ones stay untouched

    def cached_derived(self, name: str, index: int) -> np.ndarray | None:
        """The whole-image map ``name`` of sample ``index`` (``None``: not cached)."""
        maps = self.derived.get(name)
        return None if maps is None else maps[index]


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux: MemAvailable), ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _majority(counts: Mapping[str, int]) -> str:
    return max(counts.items(), key=lambda kv: kv[1])[0]


def input_format(fingerprint: Mapping[str, Any] | None, train_pairs: Sequence[Pair]) -> tuple[int, str]:
    """``(channels, dtype)`` of the training images: from the fingerprint, else from their headers.

    The majority over the files (the fingerprint reports images that differ); one-channel 8-bit images
    among 3-channel ones count as 3 (they are repeated, :func:`~datamodules.io.adapt_channels`).
    """
    if fingerprint is not None:
        channels = {str(k): int(v) for k, v in fingerprint["images"]["channels"].items()}
        dtypes = {str(k): int(v) for k, v in fingerprint["images"]["dtypes"].items()}
    else:
        infos = [read_header(p[0]) for p in train_pairs]
        channels = dict(Counter(str(i.channels) for i in infos))
        dtypes = dict(Counter(i.dtype for i in infos))
    dtype = _majority(dtypes)
    if set(channels) == {"1", "3"} and dtype == "uint8":
        return 3, dtype
    return int(_majority(channels)), dtype


class FolderDataModule(SegmentationDataModule):
    """Images and masks from a folder, matched by file stem (layouts and formats: module doc).

    Args:
        root: the dataset folder (``images/`` + ``masks/``, ``train/`` + ``val/`` each holding both, or
            the folders named by ``images_dir`` / ``masks_dir``).
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
        pad: ``True`` (default): images smaller than the crop are padded (the padded mask pixels get
            a reserved value that no loss or metric counts) and the crop shrinks to the largest
            image; ``False``: no padding -- the crop is ``crop_size`` and must fit in every training
            image, and a validation or test image smaller than the window is an error (both
            checked in setup()).
        images_dir, masks_dir: folders below ``root`` each holding ``train/`` and ``val/`` (and
            optionally ``test/``) split folders, searched recursively (Cityscapes: ``leftImg8bit`` /
            ``gtFine``); ``None``: the ``images/`` + ``masks/`` layouts.
        image_suffix, mask_suffix: the file-name ends that pair an image with its mask (Cityscapes:
            ``_leftImg8bit.png`` / ``_gtFine_labelTrainIds.png``); ``""``: by stem, any extension.
        normalize: ``auto`` | ``imagenet`` | ``dataset`` | ``image`` | ``none``
            (datamodules/normalization.py). ``auto``: ImageNet's for 8-bit RGB, ``dataset`` for the
            rest. When the configured transforms already hold an ``albumentations.Normalize``
            (older configs), ``auto`` leaves normalising to them, for 8-bit RGB images only.
        normalize_percentiles: ``[low, high]`` clip of ``normalize=dataset``, in percent.
        channels: indices of the channels to keep from every image file (e.g. ``[0, 1, 2]`` drops
            an alpha channel), or ``None``: all.
        fingerprint: the dataset fingerprint (``fingerprint.compute_fingerprint``) -- image sizes,
            channels and intensity statistics; the harness passes it. ``None``: headers are read
            here, and ``normalize=dataset`` computes one (uncached).
        class_names: one name per class (multiclass: the background first): per-class metrics
            are logged as ``val/dice_<name>`` and the pictures' legends use them.
        cache: decode every image and mask once in setup() and keep them in memory (the size is
            logged); otherwise files are decoded on every read, by the DataLoader workers. With
            ``distance`` in ``derived_targets`` the whole-image distance maps are computed once per
            image here too (float32, ``C`` values per pixel: logged), instead of per sample.
        sliding_window: validation/test options ``overlap``, ``mode`` (``gaussian`` | ``constant``),
            ``sw_batch_size`` (windows per forward pass: bounds the memory; ``None``, the default: 1 on a
            CPU, where it is the fastest, 4 on an accelerator -- segtrain.sliding.sw_batch_size_for).
        val_fraction: share of ``root/images`` held out for validation (ignored with split folders
            and with folds).
        folds, fold: cross-validation (datamodules/folds.py): every labelled image (``images/``, or
            ``train/`` + ``val/`` pooled) goes into ``folds`` seeded folds, and this datamodule trains on
            all but fold ``fold`` (0-based) and validates on it; ``test/`` stays out. ``None``: the
            single split. The folds are a pure function of the image keys, ``folds``, ``seed`` and
            ``group_pattern``: the datamodule alone computes the very folds the harness stores under
            ``paths.cache_dir``.
        split_file: a JSON list of ``{"train": [keys], "val": [keys]}`` (nnU-Net's
            ``splits_final.json``) instead of computed folds; checked against the data. ``folds`` may
            then be left out (it is the file's length).
        group_pattern: a regular expression over the image keys (one capture group, or the whole
            match), e.g. ``^(patient\\d+)_``: every image of a group lands in the same fold.
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
        images_dir: str | None = None,
        masks_dir: str | None = None,
        image_suffix: str = "",
        mask_suffix: str = "",
        normalize: str = "auto",
        normalize_percentiles: Sequence[float] = (0.5, 99.5),
        channels: Sequence[int] | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        cache: bool = False,
        val_fraction: float = 0.2,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = None,
        validate: bool = False,
        folds: int | None = None,
        fold: int | None = None,
        split_file: str | Path | None = None,
        group_pattern: str | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        **base_options: Any,
    ) -> None:
        native = image_size is None
        for key in ("train_transforms", "val_transforms"):  # the defaults resize only in resize mode
            if base_options.get(key) is None:
                base_options[key] = {"hflip": A.HorizontalFlip(p=0.5)} if key == "train_transforms" else {}
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
        self.images_dir = None if images_dir in (None, "") else str(images_dir)
        self.masks_dir = None if masks_dir in (None, "") else str(masks_dir)
        self.image_suffix, self.mask_suffix = str(image_suffix or ""), str(mask_suffix or "")
        resolve_mode(str(normalize), 3, "uint8")  # an unknown mode fails now; the rest needs the data (setup)
        self.normalize = str(normalize)
        self.normalize_percentiles = [float(v) for v in normalize_percentiles]
        if len(self.normalize_percentiles) != 2 or not 0 <= self.normalize_percentiles[0] < self.normalize_percentiles[1] <= 100:
            raise ValueError(f"data.normalize_percentiles must be [low, high] with 0 <= low < high <= 100, "
                             f"got {list(normalize_percentiles)}")
        self.channel_select = None if channels is None else [int(c) for c in channels]
        if self.channel_select is not None and (not self.channel_select or min(self.channel_select) < 0):
            raise ValueError(f"data.channels must list channel indices >= 0 (e.g. [0, 1, 2]), got {list(channels)}")
        self.fingerprint = fingerprint
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
        check_fold_options(folds, fold, split_file, group_pattern)  # a bad combination fails now, not in setup()
        self.folds, self.fold, self.split_file, self.group_pattern = folds, fold, split_file, group_pattern
        self.palette = self._check_palette(palette)
        labels = num_classes if task == "multiclass" else 2
        if ignore_index is not None and 0 <= int(ignore_index) < labels:
            raise ValueError(
                f"ignore_index={ignore_index} is a class value of task={task} (0..{labels - 1}); use e.g. 255"
            )
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        #: The mask value of padded pixels: the files' "not labelled" value, else one no class uses.
        self.pad_value = self.ignore_index if self.ignore_index is not None else reserved_pad_value(task, num_classes)
        self.derived.ignore_value = self.pad_value  # padded and unlabelled pixels are never skeleton
        self.validate = bool(validate)
        self.train_pairs: list[Pair] = []
        self.val_pairs: list[Pair] = []
        self.test_pairs: list[Pair] = []
        self.test_set: SegmentationDataset | None = None
        self._splits: dict[str, list[Pair]] | None = None

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

    def splits(self) -> dict[str, list[Pair]]:
        """The pairs of every split (datamodules/layout.py), listed once."""
        if self._splits is None:
            self._splits = discover_splits(
                self.root, task=self.task, num_classes=self.num_classes, images_dir=self.images_dir,
                masks_dir=self.masks_dir, image_suffix=self.image_suffix, mask_suffix=self.mask_suffix,
                val_fraction=self.val_fraction, seed=self.seed, folds=self.folds, fold=self.fold,
                split_file=self.split_file, group_pattern=self.group_pattern,
            )
        return self._splits

    def _normalization(self, channels: int, dtype: str) -> dict[str, Any] | None:
        """The resolved ``data.normalize`` spec; ``None`` when the configured transforms normalise themselves."""
        rgb8 = channels == 3 and dtype == "uint8"
        if contains_normalize(self.train_transform) or contains_normalize(self.val_transform):
            if self.normalize != "auto" or not rgb8:
                raise ValueError(
                    f"data.train_transforms / data.val_transforms hold a normalisation (albumentations.Normalize: "
                    f"x / 255 with ImageNet's three means), and these images are {channels}-channel {dtype} with "
                    f"data.normalize={self.normalize}. Remove the normalize entries from the transforms: "
                    "data.normalize normalises at the end of both pipelines (auto: ImageNet's for 8-bit RGB, "
                    "the dataset's statistics otherwise)."
                )
            return None
        mode = resolve_mode(self.normalize, channels, dtype)
        if mode != "dataset":
            return {"mode": mode}
        if self.fingerprint is None:
            # Used alone (train.py passes it): the statistics need a fingerprint, computed here, not cached.
            from fingerprint import compute_fingerprint  # fingerprint/ reads files through datamodules/: no import cycle at load

            rank_zero_info("data.normalize=dataset: computing the dataset fingerprint (train.py passes a cached one)")
            self.fingerprint = compute_fingerprint(self.splits(), palette=self.palette,
                                                   percentiles=tuple(self.normalize_percentiles), seed=self.seed)
        clip = self.fingerprint["intensity"]["clip"]
        if [float(v) for v in clip["percentiles"]] != self.normalize_percentiles:
            raise ValueError(f"The fingerprint clips at percentiles {clip['percentiles']}, data.normalize_percentiles "
                             f"is {self.normalize_percentiles}: compute the fingerprint with the same percentiles.")
        spec = dataset_spec(clip)
        if self.channel_select is not None:
            spec.update({k: [spec[k][c] for c in self.channel_select] for k in ("lower", "upper", "mean", "std")})
        return spec

    def _with_input_stage(self, pipeline: A.Compose, normalize: A.BasicTransform | None, rgb8: bool) -> A.Compose:
        """``pipeline`` without the 8-bit RGB-only transforms (for other images), with the normalisation before ToTensorV2."""
        *user, to_tensor = pipeline.transforms
        if not rgb8:
            dropped = [type(t).__name__ for t in user if type(t).__name__ in RGB_ONLY]
            if dropped:
                rank_zero_info(f"Left out {', '.join(dropped)}: they work on 8-bit RGB images only, and these are not.")
            user = [t for t in user if type(t).__name__ not in RGB_ONLY]
        tail = [normalize] if normalize is not None else []
        return A.Compose([*user, *tail, to_tensor], seed=self.seed)

    def _plan_input(self) -> None:
        """Channels, dtype and normalisation of the network input, from the fingerprint or the headers."""
        channels, dtype = input_format(self.fingerprint, self.train_pairs)
        if self.channel_select is not None:
            channels = len(self.channel_select)
        if channels == 1 and dtype == "uint8" and (contains_normalize(self.train_transform)
                                                   or contains_normalize(self.val_transform)):
            channels = 3  # transforms with ImageNet's Normalize (older configs): grey is read as RGB, as it was
        spec = self._normalization(channels, dtype)
        rgb8 = channels == 3 and dtype == "uint8"
        normalize = None if spec is None else normalization_transform(spec)
        self.train_transform = self._with_input_stage(self.train_transform, normalize, rgb8)
        self.val_transform = self._with_input_stage(self.val_transform, normalize, rgb8)
        #: What a network input is: stored with every checkpoint, read back by predict.py and export.py.
        self.preprocessing = {"channels": channels, "channel_select": self.channel_select, "dtype": dtype,
                              "normalization": spec}

    def _train_sizes(self) -> list[tuple[int, int]]:
        sizes = ((self.fingerprint or {}).get("images") or {}).get("sizes_by_split", {}).get("train")
        if sizes is not None and len(sizes) == len(self.train_pairs):
            return [(int(h), int(w)) for h, w in sizes]
        return [read_header(p[0]).size for p in self.train_pairs]

    def _native_pipeline(self) -> None:
        """Put the crop stage, sized for this data, before the configured training transforms."""
        sizes = self._train_sizes()
        if not self.pad:
            crop = fitting_crop(sizes, self.crop_size, self.scale_range, [str(p[0]) for p in self.train_pairs])
            self._check_windows(self.val_pairs, "validation", crop)
        else:
            crop = effective_crop(sizes, self.crop_size)
        user = self.train_transform.transforms  # ends with ToTensorV2
        # Padded mask pixels get pad_value, never a class: the crop centring skips it too.
        stage = crop_stage(crop, self.pad_value, self.foreground_fraction, self.scale_range, pad=self.pad)
        self.train_transform = A.Compose([*stage, *user], seed=self.seed)
        self.effective_crop = crop
        self.sliding_window = {"window": crop, **self.window_options, "pad": self.pad}

    @staticmethod
    def _check_windows(pairs: list[Pair], split: str, window: int) -> None:
        """``data.pad=false``: every image of ``split`` must be at least the window (header reads only)."""
        for path, _ in pairs:
            check_fits_window(read_header(path).size, window, f"{split.capitalize()} image {path}")

    def _dataset(self, pairs: list[Pair], transform) -> SegmentationDataset:
        select = self.channel_select
        source = _FileSource(pairs, self.task, self.num_classes, self.palette, self.ignore_index,
                             self.preprocessing["channels"], select)
        if self.cache and pairs:
            source = _CachedSource(source, len(pairs), self.derived)
            maps = (f" (+ {source.derived_nbytes / 2**20:.1f} MiB of whole-image {' and '.join(source.derived)} maps)"
                    if source.derived else "")
            rank_zero_info(f"data.cache: {len(pairs)} decoded samples hold {source.nbytes / 2**20:.1f} MiB in "
                           f"memory{maps}")
        elif self.validate:
            for i in range(len(pairs)):
                source(i)
        return SegmentationDataset(source, len(pairs), transform, self.task, self.derived)

    def setup(self, stage: str | None = None) -> None:
        """List (and with ``validate`` read) the pairs of the splits ``stage`` needs."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            splits = self.splits()
            self.train_pairs, self.val_pairs = splits["train"], splits["val"]
            self._plan_input()
            if self.crop_size is not None:
                self._native_pipeline()
            self.train_set = self._dataset(self.train_pairs, self.train_transform)
            self.val_set = self._dataset(self.val_pairs, self.val_transform)
        if stage in (None, "test") and self.test_set is None and self.splits()["test"]:
            if self.preprocessing is None:
                self.train_pairs = self.splits()["train"]
                self._plan_input()
            self.test_pairs = self.splits()["test"]
            if self.sliding_window is not None and not self.pad:
                self._check_windows(self.test_pairs, "test", self.sliding_window["window"])
            self.test_set = self._dataset(self.test_pairs, self.val_transform)

    def val_dataloader(self):
        # Whole images of different sizes cannot be stacked: one image per validation batch.
        return self._loader(self.val_set, train=False, batch_size=1 if self.native else None)

    def test_dataloader(self):
        if self.test_set is None:
            raise FileNotFoundError(
                f"No test split: add {self.root / 'test' / 'images'} and {self.root / 'test' / 'masks'}"
                + (f" (or test/ folders in data.images_dir={self.images_dir} and data.masks_dir={self.masks_dir})"
                   if self.images_dir else "")
            )
        return self._loader(self.test_set, train=False, batch_size=1 if self.native else None)
