"""Where a dataset's files are: pairing images with masks, and the train / val / test splits.

Layouts (``root`` = ``data.root``)::

    root/images/<stem>.<ext>   root/masks/<stem>.<ext>        split by val_fraction (seeded)
    root/train/images/ ...     root/train/masks/ ...          split by the subfolders
    root/val/images/ ...       root/val/masks/ ...            (optional root/test/... : the test split)
    root/<images_dir>/{train,val[,test]}/...  root/<masks_dir>/{train,val[,test]}/...
                                                             (data.images_dir / data.masks_dir: Cityscapes'
                                                             leftImg8bit/ + gtFine/, as downloaded)

Folders are searched recursively (Cityscapes' cities); an image pairs with the mask whose path
below the masks folder, minus ``data.mask_suffix``, equals the image's path below the images
folder minus ``data.image_suffix`` (default: minus the extension). That path is the image's key.

Cross-validation (``data.folds`` / ``data.split_file``, datamodules/folds.py) replaces the split:
every labelled image (``images/``, or ``train/`` and ``val/`` together) is pooled by key into the
folds, and ``test/`` stays out of all of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .folds import FoldPlan, check_fold_options, resolve_folds
from .io import IMAGE_EXTENSIONS

EXTENSIONS = IMAGE_EXTENSIONS
Pair = tuple[Path, tuple[Path, ...]]
SPLITS = ("train", "val", "test")


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


class Splits(dict):
    """``{"train": pairs, "val": pairs, "test": pairs}``; ``.folds``: the cross-validation plan (``None``: one split)."""

    folds: FoldPlan | None = None


def _split_folders(root: Path, images_dir: str | None, masks_dir: str | None) -> dict[str, tuple[Path, Path]]:
    """The ``(images, masks)`` folders of each split: ``train``, ``val`` (``test``), or ``all`` for images/ + masks/.

    Raises:
        FileNotFoundError / ValueError: a layout that is none of the three, naming what is expected.
    """
    if images_dir or masks_dir:
        if not (images_dir and masks_dir):
            raise ValueError("data.images_dir and data.masks_dir go together (e.g. data.images_dir=leftImg8bit "
                             "data.masks_dir=gtFine): set both, or neither")
        images, masks = root / str(images_dir), root / str(masks_dir)
        for folder, key in ((images, "images_dir"), (masks, "masks_dir")):
            for split in ("train", "val"):
                if not (folder / split).is_dir():
                    found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
                    raise FileNotFoundError(
                        f"data.{key}={folder.name}: {folder / split} does not exist"
                        + (f" ({folder} holds {', '.join(found[:8])})" if found else "")
                        + f": data.{key} must hold train/ and val/ split folders (test/ optional)."
                    )
        test = (images / "test").is_dir() and (masks / "test").is_dir()
        return {split: (images / split, masks / split) for split in SPLITS if split != "test" or test}
    test = {"test": (root / "test" / "images", root / "test" / "masks")} if (root / "test").is_dir() else {}
    if (root / "train").is_dir():
        if not (root / "val").is_dir():
            raise FileNotFoundError(f"{root} has train/ but no val/: add {root / 'val'} (images/ + masks/)")
        return {split: (root / split / "images", root / split / "masks") for split in ("train", "val")} | test
    if not (root / "images").is_dir():
        subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{root} holds neither images/ + masks/ nor train/ + val/ subfolders (each with images/ + masks/)"
            + (f"; it holds {', '.join(subfolders[:8])}/" if subfolders else "")
            + ": put the images in images/ and their masks, same file stem, in masks/, or name the folders that "
            "hold train/ and val/ splits with data.images_dir=... data.masks_dir=... (Cityscapes: data=cityscapes)"
        )
    return {"all": (root / "images", root / "masks")} | test


def discover_splits(
    root: str | Path,
    *,
    task: str,
    num_classes: int,
    images_dir: str | None = None,
    masks_dir: str | None = None,
    image_suffix: str = "",
    mask_suffix: str = "",
    val_fraction: float = 0.2,
    seed: int = 0,
    folds: int | None = None,
    fold: int | None = None,
    split_file: str | Path | None = None,
    group_pattern: str | None = None,
    cache_dir: str | Path | None = None,
) -> Splits:
    """The pairs of every split of the dataset at ``root`` (layouts: module docstring).

    With ``folds`` / ``split_file`` (cross-validation, datamodules/folds.py) every labelled image
    -- ``images/``, or ``train/`` and ``val/`` pooled -- goes into the folds, and ``train`` / ``val``
    are fold ``fold``'s; ``test`` stays out of every fold, and ``val_fraction`` is unused. The
    folds are read from ``<cache_dir>/splits/`` when stored there, else computed (a pure function
    of the keys, ``folds``, ``seed`` and ``group_pattern``) and stored when ``cache_dir`` is given.

    Returns:
        ``{"train": pairs, "val": pairs, "test": pairs}`` (``test`` empty without a test split), as a
        :class:`Splits` whose ``.folds`` is the :class:`~datamodules.folds.FoldPlan` (``None``: one split).

    Raises:
        FileNotFoundError: ``root`` or a split folder is missing, naming what is expected.
        ValueError: too few images for ``val_fraction``; a fold setting that does not fit the data
            (datamodules/folds.py).
    """
    options = check_fold_options(folds, fold, split_file, group_pattern)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root {root} does not exist (or is not a folder): pass "
            "data.root=/path/to/dataset, a folder holding images/ and masks/ (or train/ and val/)"
        )
    folders = _split_folders(root, images_dir, masks_dir)
    listed = {split: find_pairs(images, masks, task, num_classes, image_suffix, mask_suffix)
              for split, (images, masks) in folders.items()}
    test = listed.get("test", [])
    if options is not None:
        pooled = _pool(listed, folders, image_suffix)
        plan = resolve_folds(list(pooled), options, seed=seed, cache_dir=cache_dir, data_root=root)
        chosen = plan.folds[plan.fold]
        splits = Splits(train=[pooled[k] for k in chosen["train"]], val=[pooled[k] for k in chosen["val"]], test=test)
        splits.folds = plan
        return splits
    if "all" not in listed:
        return Splits(train=listed["train"], val=listed["val"], test=test)
    every = listed["all"]
    n_val = int(round(len(every) * val_fraction))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if len(every) - n_val < 1:
        raise ValueError(f"{root / 'images'} holds {len(every)} image(s): too few for val_fraction={val_fraction}")
    order = np.random.default_rng(seed).permutation(len(every))
    val_idx = set(order[:n_val].tolist())
    return Splits(train=[p for i, p in enumerate(every) if i not in val_idx],
                  val=[p for i, p in enumerate(every) if i in val_idx], test=test)


def _pool(listed: dict[str, list[Pair]], folders: dict[str, tuple[Path, Path]], image_suffix: str) -> dict[str, Pair]:
    """``{key: pair}`` of every labelled image the folds share: ``all``, or ``train`` and ``val`` together.

    Raises:
        ValueError: one key in both train/ and val/ (the folds name images by key).
    """
    pooled: dict[str, Pair] = {}
    for split in ("all", "train", "val"):
        for pair in listed.get(split, []):
            key = _key(pair[0], folders[split][0], image_suffix)
            if key in pooled:
                raise ValueError(
                    f"{pooled[key][0]} and {pair[0]} share the key '{key}': cross-validation pools train/ and val/, "
                    "and a fold names each image by its key (path below images/ without the extension). Rename one."
                )
            pooled[key] = pair
    return pooled
