"""VolumeDataModule: an nnU-Net raw dataset (3D volumes, or 2D images in that layout) for training.

What it does, in order (setup):

1. reads ``dataset.json`` and lists ``imagesTr/`` + ``labelsTr/`` (and ``imagesTs/`` + ``labelsTs/``,
   the test split, where labelled) with nnU-Net's rules (:mod:`datamodules.volumes.nnunet`),
   checks every case's headers (channels and label on one grid; no voxel decoded) and, with
   ``validate=true``, every label's values;
2. splits the training cases by case id: ``val_fraction`` (seeded), or cross-validation folds
   (``folds`` / ``fold`` / ``split_file`` / ``group_pattern``, :mod:`datamodules.folds`);
3. takes the fingerprint the harness set (``.fingerprint``) or computes it
   (:func:`fingerprint.volumes.compute_volume_fingerprint`): the per-channel normalisation and the
   median shape and spacing;
4. plans the patch (:mod:`datamodules.volumes.planning`) and checks it against the cases;
5. builds the training patches (:mod:`datamodules.volumes.sampler`: class-centred oversampling,
   padding with the ignore value) and the whole validation/test volumes
   (:mod:`datamodules.volumes.dataset`), with ``cache=true`` decoded and normalised once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from ..base import collate
from ..derived import DISTANCE, DerivedTargets, DerivedTargetsSwitch
from ..folds import check_fold_options, resolve_folds
from ..masks import reserved_pad_value
from .augment import Spec, build_pipeline, reseed
from .dataset import CachedCases, CaseReader, VolumePatches, WholeVolumes, seed_worker
from .nnunet import Case, DatasetInfo, check_case, check_labels, find_cases, read_dataset_json
from .normalization import check_specs
from .planning import auto_patch_size, check_crop_size, check_fits, divisors, effective_patch
from .sampler import LocationCache, PatchSampler

#: The sliding-window options of validation, test and predict (segtrain/sliding.py), before setup() adds the window.
WINDOW_DEFAULTS = {"overlap": 0.5, "mode": "gaussian", "sw_batch_size": None, "sw_device": None, "device": None}


def plan_crop_size(fingerprint: Mapping[str, Any], patch_budget: int,
                   divisor: int | Sequence[int] | None = None) -> list[int]:
    """The patch ``crop_size: null`` plans, from a volume fingerprint (for the harness's data plan).

    Args:
        fingerprint: :func:`fingerprint.volumes.compute_volume_fingerprint`'s result (``shape`` and
            ``spacing`` medians).
        patch_budget: the most voxels of the patch (``data.patch_budget``).
        divisor: every axis a multiple of it (the network's ``divisor``: an int or one per axis);
            ``None``: 8. Pass the same value as ``data.divisor``: the datamodule checks the patch
            against its own ``divisor``, and with ``pad=true`` may shrink an axis larger than every
            case to a multiple of it.

    Returns:
        ``[D, H, W]`` (``[H, W]`` for 2D) as :func:`~datamodules.volumes.planning.auto_patch_size` plans it.
    """
    median = fingerprint["shape"]["median"]
    spacing = (fingerprint.get("spacing") or {}).get("median") or [1.0] * len(median)
    return auto_patch_size(median, spacing, int(patch_budget), 8 if divisor is None else divisor)


class VolumeDataModule(DerivedTargetsSwitch, L.LightningDataModule):
    """Training patches and whole validation/test volumes of an nnU-Net raw dataset (module docstring).

    Args:
        root: the dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/`` [, ``imagesTs/``, ``labelsTs/``]).
        task: must be ``multiclass`` (nnU-Net labels: background and classes).
        num_classes: classes incl. background; ``None`` / ``"auto"``: dataset.json's. Another number
            than dataset.json's is an error.
        crop_size: the training patch ``[D, H, W]`` (``[H, W]`` for 2D datasets), each a multiple of
            ``divisor``, also the sliding window; ``None``: planned from the fingerprint's median
            shape under ``patch_budget`` voxels (:mod:`~datamodules.volumes.planning`).
        patch_budget: the most voxels of a planned patch (default 128^3, nnU-Net's usual 3D patch).
        divisor: every patch axis a multiple of it (int, or one per axis); the network's divisibility.
        foreground_fraction: share of patches centred on a voxel of a class drawn uniformly among the
            classes present in the case (nnU-Net's ``oversample_foreground_percent``: 0.33).
        pad: ``True``: cases smaller than the patch are padded (image 0, mask the ignore/pad value,
            counted by no loss or metric) and an axis larger than every case shrinks to the largest
            case; ``False``: the patch must fit in every training case (an error at setup otherwise).
        patches_per_epoch: training patches per epoch; ``None``: one per training case.
        batch_size: training patches per batch (validation and test: one whole volume per batch).
        num_workers, pin_memory, persistent_workers, drop_last: DataLoader options (pin_memory and
            persistent_workers ``None``: CUDA available / ``num_workers > 0``).
        cache: read, normalise (and with ``distance``, compute the whole-case distance maps of) every
            case once in setup() and keep them in memory (logged); otherwise every sample reads its
            case in the DataLoader worker.
        seed: the split, the folds, the foreground locations, the patch and augmentation streams.
        val_fraction: share of the training cases held out for validation (ignored with folds).
        folds, fold, split_file, group_pattern: cross-validation over case ids (:mod:`datamodules.folds`).
        train_transforms: MONAI dictionary transforms (list, or mapping name -> transform; built
            objects or configs with ``_target_``) on ``{"image": [C, *patch], "mask": [1, *patch]}``
            after the patch is cut (:mod:`~datamodules.volumes.augment`). ``None``: none.
        val_transforms: the same for the whole validation/test volumes (``None``: none).
        sliding_window: validation/test options ``overlap``, ``mode``, ``sw_batch_size``,
            ``sw_device``, ``device`` (segtrain/sliding.py); the window is the patch.
        class_names: one name per class, background first; ``None``: dataset.json's.
        derived_targets: ``distance`` and/or ``skeleton`` (datamodules/derived.py): the distance map of
            the *whole* case with its spacing, cut with the patch and moved by the same transforms;
            the skeleton of the final patch. The harness passes those of the loss terms.
        validate: read every training label in setup() and check its values (slower).
        fingerprint: the volume fingerprint; the harness sets ``.fingerprint`` instead (a large dict
            would become a DictConfig through Hydra). ``None``: computed in setup().

    Raises:
        ValueError: an option out of range or unknown, naming it and the accepted options.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        task: str = "multiclass",
        num_classes: int | str | None = None,
        crop_size: Sequence[int] | None = None,
        patch_budget: int = 128 ** 3,
        divisor: int | Sequence[int] = 8,
        foreground_fraction: float = 0.33,
        pad: bool = True,
        patches_per_epoch: int | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        drop_last: bool = False,
        cache: bool = False,
        seed: int = 0,
        val_fraction: float = 0.2,
        folds: int | None = None,
        fold: int | None = None,
        split_file: str | None = None,
        group_pattern: str | None = None,
        train_transforms: Spec = None,
        val_transforms: Spec = None,
        sliding_window: Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        derived_targets: Sequence[str] = (),
        validate: bool = False,
        fingerprint: dict[str, Any] | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            import inspect

            names = sorted(p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "unknown"))
            raise ValueError(f"VolumeDataModule has no option(s) {', '.join(sorted(unknown))} (data.<option> in the "
                             f"config): fix the spelling or drop them. Its options: {', '.join(names)}.")
        if root is None or str(root) in ("", "???"):
            raise ValueError("data.root is not set: pass data.root=/path/to/DatasetXXX_Name (the nnU-Net raw folder "
                             "holding dataset.json, imagesTr/ and labelsTr/)")
        if task != "multiclass":
            raise ValueError(f"task={task}: nnU-Net datasets are multiclass (a label map of background and classes); "
                             "set task=multiclass")
        self.root = Path(root).expanduser()
        self.task = task
        self.num_classes = None if num_classes in (None, "auto") else int(num_classes)
        self.crop_size = None if crop_size is None else [int(c) for c in crop_size]
        self.patch_budget, self.divisor = int(patch_budget), divisor
        self.foreground_fraction = float(foreground_fraction)
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"data.foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if not isinstance(pad, bool):
            raise ValueError(f"data.pad must be true or false, got {pad!r}")
        self.pad = pad
        if patches_per_epoch is not None and int(patches_per_epoch) < 1:
            raise ValueError(f"data.patches_per_epoch must be >= 1 or null (one per training case), got "
                             f"{patches_per_epoch}")
        self.patches_per_epoch = None if patches_per_epoch is None else int(patches_per_epoch)
        if int(batch_size) < 1 or int(num_workers) < 0:
            raise ValueError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got {batch_size} and "
                             f"{num_workers}")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = (self.num_workers > 0 if persistent_workers is None
                                   else bool(persistent_workers) and self.num_workers > 0)
        self.drop_last, self.cache, self.seed = bool(drop_last), bool(cache), int(seed)
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = float(val_fraction)
        self.fold_options = check_fold_options(folds, fold, split_file, group_pattern)
        # Built now: a bad transform config fails at start-up, not in a worker. A 2D dataset rebuilds it
        # without the transforms of a third axis (setup).
        self._train_spec = train_transforms
        self.train_pipeline = build_pipeline(train_transforms, "data.train_transforms")
        self.spatial_dims_planned = 3
        self.val_pipeline = build_pipeline(val_transforms, "data.val_transforms")
        reseed(self.train_pipeline, self.seed)
        unknown_window = sorted(set(sliding_window or {}) - set(WINDOW_DEFAULTS) - {"pad"})
        if unknown_window:
            raise ValueError(f"data.sliding_window has no option(s) {unknown_window}: its options are "
                             f"{', '.join(WINDOW_DEFAULTS)}")
        self.window_options = {**WINDOW_DEFAULTS, **dict(sliding_window or {})}
        self.given_class_names = None if class_names is None else [str(n) for n in class_names]
        self.derived = DerivedTargets(derived_targets, "multiclass", self.num_classes or 2)
        self.validate = bool(validate)
        self.fingerprint = fingerprint
        # Set by setup() (the module docstring's attributes).
        self.info: DatasetInfo | None = None
        self.train_cases: list[Case] = []
        self.val_cases: list[Case] = []
        self.test_cases: list[Case] = []
        self.train_set: VolumePatches | None = None
        self.val_set: WholeVolumes | None = None
        self.test_set: WholeVolumes | None = None
        self.patch_size: list[int] | None = None
        self.spatial_dims: int | None = None
        self.pad_value: int | None = None
        self.sliding_window: dict[str, Any] | None = None
        self.preprocessing: dict[str, Any] | None = None
        self.metric_class_names: list[str] | None = self.given_class_names
        self.class_names: list[str] | None = None if class_names is None else self.given_class_names[1:]
        self._fold_plan = None

    # --- setup -----------------------------------------------------------------------------------------

    def _read_info(self) -> DatasetInfo:
        info = read_dataset_json(self.root)
        if self.num_classes is not None and self.num_classes != info.num_classes:
            raise ValueError(f"num_classes={self.num_classes}, but {self.root / 'dataset.json'} names "
                             f"{info.num_classes} classes with the background ({', '.join(info.class_names)}): set "
                             f"num_classes={info.num_classes} (or auto)")
        self.num_classes = info.num_classes
        self.derived.num_classes = info.num_classes
        names = self.given_class_names or list(info.class_names)
        if len(names) != info.num_classes:
            raise ValueError(f"data.class_names has {len(names)} names but the dataset has {info.num_classes} classes "
                             f"with the background ({', '.join(info.class_names)})")
        self.metric_class_names, self.class_names = names, names[1:]
        #: Padded voxels: the ignore label where the dataset has one, else a value no class uses.
        self.pad_value = info.ignore_index if info.ignore_index is not None else reserved_pad_value(
            "multiclass", info.num_classes)
        self.derived.ignore_value = self.pad_value
        self.spatial_dims = info.dims
        if info.dims == 2 and self.spatial_dims_planned != 2:
            self.train_pipeline = build_pipeline(self._train_spec, "data.train_transforms", spatial_dims=2)
            reseed(self.train_pipeline, self.seed)
            if self.train_pipeline.left_out:
                rank_zero_info("Left out for 2D cases (they name a third axis): " + ", ".join(self.train_pipeline.left_out))
            self.spatial_dims_planned = 2
        return info

    def _split(self, cases: list[Case]) -> tuple[list[Case], list[Case]]:
        """``(train, val)`` by case id: the folds, or a seeded ``val_fraction``."""
        by_id = {c.case_id: c for c in cases}
        if self.fold_options is not None:
            self._fold_plan = resolve_folds(sorted(by_id), self.fold_options, seed=self.seed)
            this = self._fold_plan.folds[self._fold_plan.fold]
            rank_zero_info(self._fold_plan.summary())
            return [by_id[k] for k in sorted(this["train"])], [by_id[k] for k in sorted(this["val"])]
        ids = sorted(by_id)
        n_val = int(round(len(ids) * self.val_fraction))
        if self.val_fraction > 0:
            n_val = max(n_val, 1)
        if n_val >= len(ids):
            raise ValueError(f"{self.root / 'imagesTr'} holds {len(ids)} case(s): too few for "
                             f"data.val_fraction={self.val_fraction} (at least one case must train)")
        chosen = set(np.random.default_rng(self.seed).permutation(len(ids))[:n_val].tolist())
        return ([by_id[k] for i, k in enumerate(ids) if i not in chosen],
                [by_id[k] for i, k in enumerate(ids) if i in chosen])

    def _check_cases(self, cases: list[Case], info: DatasetInfo) -> None:
        for case in cases:
            check_case(case, info)  # headers only: cheap
            if self.validate and case.label is not None:
                check_labels(case, info)

    def _fingerprint(self, info: DatasetInfo) -> dict[str, Any]:
        if self.fingerprint is None:
            if info.is_3d:
                from fingerprint.volumes import compute_volume_fingerprint  # lazily: fingerprint/ imports datamodules/

                rank_zero_info("VolumeDataModule: computing the volume fingerprint (train.py passes a cached one)")
                self.fingerprint = compute_volume_fingerprint(self.root, info, seed=self.seed, progress=False)
            else:
                from .planar import planar_fingerprint

                self.fingerprint = planar_fingerprint(find_cases(self.root, "Tr", info), info, seed=self.seed)
        fp = self.fingerprint
        check_specs(fp.get("normalization"), info.num_channels, "the fingerprint")
        return fp

    def _shapes(self, cases: list[Case]) -> list[list[int]]:
        """Every case's shape: from the fingerprint's per-case list where it has the case, else the headers."""
        known = {c["case"]: c["shape"] for c in (self.fingerprint or {}).get("cases") or [] if c.get("shape")}
        out = []
        for case in cases:
            if case.case_id in known:
                out.append([int(n) for n in known[case.case_id]])
            elif self.info.is_3d:
                from .io import read_volume_header

                out.append(list(read_volume_header(case.images[0]).shape))
            else:
                from ..io import read_header

                out.append(list(read_header(case.images[0]).size))
        return out

    def _plan_patch(self, fp: dict[str, Any], dims: int) -> list[int]:
        shapes = self._shapes(self.train_cases)
        names = [c.case_id for c in self.train_cases]
        div = divisors(self.divisor, dims)
        if self.crop_size is None and self.pad:
            patch = plan_crop_size(fp, self.patch_budget, div)
        elif self.crop_size is None:
            median = fp["shape"]["median"]
            spacing = (fp.get("spacing") or {}).get("median") or [1.0] * dims
            smallest = [int(v) for v in np.min(np.asarray(shapes), axis=0)]
            patch = auto_patch_size(median, spacing, self.patch_budget, div, smallest)
        else:
            patch = check_crop_size(self.crop_size, dims, div)
            if self.pad:
                patch = effective_patch(patch, shapes, div)
        if not self.pad:
            check_fits(patch, shapes, names)
        return patch

    def setup(self, stage: str | None = None) -> None:
        """List, check and split the cases, plan the patch and build the datasets ``stage`` needs."""
        if self.info is None:
            info = self.info = self._read_info()
            train_val = find_cases(self.root, "Tr", info)
            self._check_cases(train_val, info)
            self.train_cases, self.val_cases = self._split(train_val)
            self.test_cases = [c for c in find_cases(self.root, "Ts", info) if c.label is not None]
            self._check_cases(self.test_cases, info)
            fp = self._fingerprint(info)
            self.patch_size = self._plan_patch(fp, info.dims)
            specs = [dict(s) for s in fp["normalization"]]
            self.sliding_window = {"window": list(self.patch_size), **self.window_options, "pad": self.pad}
            spacing = (fp.get("spacing") or {}).get("median")
            self.preprocessing = {"kind": "volume", "channels": info.num_channels,
                                  "channel_names": list(info.channel_names), "spatial_dims": info.dims,
                                  "normalization": specs, "spacing": None if spacing is None else list(spacing),
                                  "file_ending": info.file_ending}
            self._specs = specs
            self._check_pipeline(info.num_channels)
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set = self._patches()
            self.val_set = WholeVolumes(self._source(self.val_cases), self.val_pipeline, self.derived,
                                        self.num_classes)
        if stage in (None, "test") and self.test_set is None and self.test_cases:
            self.test_set = WholeVolumes(self._source(self.test_cases), self.val_pipeline, self.derived,
                                         self.num_classes)

    def _check_pipeline(self, channels: int) -> None:
        """Run the training transforms once on a blank patch: a transform that cannot take these arrays
        (an axis a 2D dataset lacks ...) fails here, named, not in a worker. Reseeded after."""
        image = np.zeros((channels, *self.patch_size), dtype=np.float32)
        mask = np.zeros((1 + (self.num_classes if DISTANCE in self.derived.names else 0), *self.patch_size),
                        dtype=np.float32)
        for _ in range(16):  # random transforms: a few draws, so that one that swaps axes shows it
            try:
                out = self.train_pipeline({"image": image, "mask": mask})
            except Exception as e:
                raise ValueError(f"data.train_transforms fail on a {self.spatial_dims}D patch (image {list(image.shape)}, "
                                 f"mask {list(mask.shape)}, channel first): {type(e).__name__}: {e}. Check each "
                                 "transform's axes and keys (2D datasets: spatial_axis 0 and 1 only)") from e
            shape = [int(v) for v in out["image"].shape[1:]]
            if shape != [int(v) for v in self.patch_size]:
                raise ValueError(
                    f"data.train_transforms turn a {list(self.patch_size)} patch into {shape}: the patches of a batch "
                    "must keep one shape. RandRotate90d swaps its two axes: use it on axes of equal size only "
                    "(e.g. spatial_axes [1, 2] with a patch whose H equals W, data.crop_size=[D, S, S]), or drop it.")
        reseed(self.train_pipeline, self.seed)

    def _source(self, cases: list[Case], distance: bool = True):
        reader = CaseReader(cases, self.info, self._specs, self.pad_value)
        if not self.cache or not cases:
            return reader
        maps = self.num_classes if distance and DISTANCE in self.derived.names else None
        cached = CachedCases(reader, maps)
        rank_zero_info(f"data.cache: {len(cases)} case(s) hold {cached.nbytes / 2**20:.1f} MiB in memory"
                       + (" (with their whole-case distance maps)" if maps else ""))
        return cached

    def _patches(self) -> VolumePatches:
        source = self._source(self.train_cases)
        classes = range(1, self.num_classes)
        locations = LocationCache(classes, self.seed)
        if self.cache:  # computed once here; forked workers share them
            for k in range(len(source)):
                data = source(k)
                locations.get(data.case_id, data.label)
        sampler = PatchSampler(self.patch_size, self.foreground_fraction, self.seed)
        length = self.patches_per_epoch or len(self.train_cases)
        return VolumePatches(source, length, sampler, locations, self.train_pipeline, self.pad_value, self.derived,
                             self.num_classes)

    # --- loaders ---------------------------------------------------------------------------------------

    def _loader(self, dataset, train: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError("VolumeDataModule.setup(stage) must run before asking for its dataloader")
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=self.drop_last and train,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers, worker_init_fn=seed_worker, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        # Whole volumes of different shapes cannot be stacked: one per batch.
        return self._loader(self.val_set, False, 1)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise FileNotFoundError(f"No labelled test split in {self.root}: put the test cases' images in imagesTs/ "
                                    f"and their labels in labelsTs/<case>{self.info.file_ending if self.info else ''} "
                                    "(unlabelled imagesTs/ cases are for scripts/predict.py)")
        return self._loader(self.test_set, False, 1)

    # --- resume ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The patch sampler's and the training transforms' random state (plain lists: ``weights_only`` loads it).

        With ``num_workers > 0`` the workers draw from their own streams, seeded from torch's
        global generator (which the harness's RandomStateCheckpoint saves); this is the main
        process's (``num_workers=0``).
        """
        return {} if self.train_set is None else {"volume_patches": self.train_set.state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning on ``fit(ckpt_path=...)``, after setup(); warns about a state this config cannot take."""
        saved = state_dict.get("volume_patches")
        if saved is None:
            return
        if self.train_set is None:
            self.setup("fit")
        missing = self.train_set.set_state(saved)
        if missing:
            rank_zero_warn("Resuming: the checkpoint's augmentation random state does not fit this run's "
                           "data.train_transforms (changed?); they start from their seed.")
