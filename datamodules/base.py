"""Shared pieces of the datamodules: the augmenting Dataset and the DataLoader plumbing."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, default_collate

from .derived import ALBUMENTATIONS_TARGETS, DerivedTargets, DerivedTargetsSwitch
from .masks import encode_mask, validate_task
from .transforms import (
    TransformSpec,
    build_transforms,
    default_transforms,
    init_worker,
    pipeline_random_state,
    set_pipeline_random_state,
)

# The augmentation pipelines whose random state goes into checkpoints (state_dict).
_PIPELINES = ("train_transform", "val_transform")

# A sample source returns (image uint8 [H, W, 3], mask [H, W] or [H, W, C], name). It may also
# have spacing(index) (pixel size per axis, for distance maps), cached_derived(name, index)
# (precomputed whole-image maps) and file_key(index) (for the disk store): datamodules/derived.py.
SampleFn = Callable[[int], tuple[np.ndarray, np.ndarray, str]]


class SegmentationDataset(Dataset):
    """Applies an albumentations pipeline to raw samples and encodes the mask for the task.

    Args:
        load: ``load(i) -> (image uint8 [H, W, 3], mask [H, W] | [H, W, C], name)``.
        length: number of samples.
        transform: an ``A.Compose`` ending with ``ToTensorV2(transpose_mask=True)``.
        task: ``binary``, ``multiclass`` or ``multilabel`` (decides the mask layout, see masks.py).
        derived: the derived targets (distance maps, skeletons) the samples carry while active
            (datamodules/derived.py); ``None``: none.
    """

    def __init__(self, load: SampleFn, length: int, transform: Callable, task: str,
                 derived: DerivedTargets | None = None) -> None:
        self.load = load
        self.length = length
        self.transform = transform
        self.task = task
        self.derived = derived if derived else None
        if self.derived is not None:
            # The whole-image maps ride through the crop stage and the augmentations as masks.
            transform.add_targets({k: v for k, v in ALBUMENTATIONS_TARGETS.items() if k in self.derived.names})

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._sample(index, self.derived.active() if self.derived is not None else ())

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """One batch (the DataLoader's fetcher calls this): the active derived targets are read once,
        so a switch between two samples never gives a batch samples with different keys."""
        active = self.derived.active() if self.derived is not None else ()
        return [self._sample(i, active) for i in indices]

    def _sample(self, index: int, active: tuple[str, ...]) -> dict[str, Any]:
        image, mask, name = self.load(index)
        extra, cached = {}, {}
        for key in active:  # of the whole image, before the crop stage
            extra[key], from_cache = self.derived.whole(key, self.load, index, mask)
            if from_cache:
                cached[key] = extra[key]
        out = self.transform(image=image, mask=mask, **extra)
        # Without a Normalize in the pipeline the image is still uint8: the contract is float32.
        sample = {"image": out["image"].float(), "mask": encode_mask(out["mask"], self.task), "name": name}
        return self.derived.add(sample, out, active, cached) if active else sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, with a clear error when the samples of a batch differ in size.

    Without a resize or crop in the pipeline, files of different sizes cannot be stacked; torch's
    own message ("stack expects each tensor to be equal size") names neither file nor fix. The
    derived targets (``distance``, ``skeleton``: datamodules/derived.py) are stacked like the mask.
    """
    keys = {tuple(sorted(s)) for s in samples}
    if len(keys) > 1:
        raise ValueError(
            f"The samples of one batch carry different keys ({' / '.join(', '.join(k) for k in sorted(keys))}): "
            "every sample of a batch must carry the same derived targets."
        )
    tensors = [k for k in samples[0] if isinstance(samples[0][k], torch.Tensor)]
    if any(len({tuple(s[k].shape) for s in samples}) > 1 for k in tensors):
        shown = ", ".join(f"{s['name']}: {tuple(s['image'].shape[-2:])}" for s in samples[:4])
        raise ValueError(
            f"Images of one batch have different sizes after the transforms ({shown} ...): add a resize or "
            "crop to the pipeline (e.g. albumentations.Resize in data.train_transforms / data.val_transforms)."
        )
    return default_collate(samples)


def _option_names(cls: type) -> list[str]:
    """The keyword options of ``cls`` and of its bases up to :class:`SegmentationDataModule`."""
    names: set[str] = set()
    for klass in cls.__mro__[: cls.__mro__.index(SegmentationDataModule) + 1]:
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD}
    return sorted(names)


class SegmentationDataModule(DerivedTargetsSwitch, L.LightningDataModule):
    """DataLoader knobs and pipelines common to the synthetic and folder datamodules.

    All options are keyword-only; subclasses take their own options and hand the rest on as
    ``**base_options`` (the yaml configs, instantiated by Hydra, pass keywords anyway).

    Args:
        task: ``binary``, ``multiclass`` or ``multilabel``.
        num_classes: 1 for binary; classes incl. background for multiclass; channels for multilabel.
        image_size: side of the square images the default pipelines resize to.
        batch_size: samples per batch (train and val).
        num_workers: DataLoader worker processes (0 loads in the training process).
        pin_memory: page-locked batches for faster host-to-GPU copies; ``None`` = when CUDA is available.
        persistent_workers: keep workers alive between epochs; ``None`` = when ``num_workers > 0``.
        drop_last: drop the last incomplete training batch.
        seed: seed of the split (folder) / generation (synthetic) and of the augmentation stream.
        train_transforms: pipeline spec for training (see transforms.py); ``None`` = resize,
            horizontal flip, normalise (:func:`~datamodules.transforms.default_transforms`); ``{}``
            = no transform at all (images stay 0..255).
        val_transforms: pipeline spec for validation; ``None`` = resize, normalise.
        derived_targets: what the samples carry beyond the mask for the losses that need it:
            ``distance`` (whole-image signed distance maps, float32 ``[C, H, W]``) and/or
            ``skeleton`` (the whole image's tubed skeleton, in the mask's layout) -- the names
            of :data:`seglosses.derived.NAMES` (datamodules/derived.py). The harness passes those
            of the configured loss terms; empty (the default): nothing is computed.
            :meth:`set_active_derived_targets` switches them on and off per epoch.
        derived_cache_dir: a folder keeping whole-image distance maps and skeletons between epochs and runs
            (datamodules/derived.py ``MapStore``; the harness passes ``<paths.cache_dir>/derived_maps``),
            for sources that read files; ``None``: computed for every sample (or held by ``data.cache``).

    Raises:
        ValueError: an option no class of the datamodule takes (a misspelt ``data.<key>``),
            listing the accepted ones.
    """

    def __init__(
        self,
        *,
        task: str = "binary",
        num_classes: int = 1,
        image_size: int,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        drop_last: bool = False,
        seed: int = 0,
        train_transforms: TransformSpec = None,
        val_transforms: TransformSpec = None,
        derived_targets: Sequence[str] = (),
        derived_cache_dir: str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no option(s) {', '.join(sorted(unknown))} (data.<option> in the "
                f"config): fix the spelling or drop them. Its options: {', '.join(_option_names(type(self)))}."
            )
        validate_task(task, num_classes)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.task = task
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = (
            self.num_workers > 0 if persistent_workers is None else bool(persistent_workers) and self.num_workers > 0
        )
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.image_size = int(image_size)
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if train_transforms is None:
            train_transforms = default_transforms(self.image_size, train=True)
        if val_transforms is None:
            val_transforms = default_transforms(self.image_size, train=False)
        # Built now, so that a bad transform config fails at start-up rather than in a worker.
        self.train_transform = build_transforms(train_transforms, seed=self.seed)
        self.val_transform = build_transforms(val_transforms, seed=self.seed)
        #: The derived targets the samples carry (datamodules/derived.py): ``.names`` asked for, and the
        #: shared flags of the active ones, which the datasets built in setup() read.
        self.derived = DerivedTargets(derived_targets, self.task, self.num_classes, cache_dir=derived_cache_dir)
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None
        #: What a network input is (``channels``, ``channel_select``, ``dtype``, ``normalization``: the
        #: spec of datamodules/normalization.py, ``None`` when the configured transforms normalise);
        #: set in setup() by datamodules that read files, stored in every checkpoint.
        self.preprocessing: dict[str, Any] | None = None

    def _loader(self, dataset: SegmentationDataset | None, train: bool, batch_size: int | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup(stage) must run before asking for its dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=train,
            drop_last=self.drop_last and train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            worker_init_fn=init_worker,
            collate_fn=collate,
        )

    def state_dict(self) -> dict[str, Any]:
        """The augmentation pipelines' random state; Lightning stores it in every checkpoint.

        albumentations 2.0 keeps a private generator in every transform, untouched by the
        global seeds; with this state a resumed run continues the augmentation stream where the
        checkpoint left it (the global generators are saved by ``RandomStateCheckpoint``).
        """
        return {name: pipeline_random_state(getattr(self, name)) for name in _PIPELINES}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning on ``fit(ckpt_path=...)``; warns about saved transforms this config lacks."""
        missing = [
            f"{name}[{key}]"
            for name in _PIPELINES
            for key in set_pipeline_random_state(getattr(self, name), state_dict.get(name, {}))
        ]
        if missing:
            rank_zero_warn(
                f"Resuming: the checkpoint has random state for {missing}, which this run's pipelines do not "
                "have (a changed data config?); those start from their seed."
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)
