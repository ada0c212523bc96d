"""SyntheticDataModule and the albumentations pipelines built from config."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules import SyntheticDataModule, build_transforms
from datamodules.synthetic import SHAPES, _ArraySource, make_sample

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose_data(task="binary", num_classes=1, data="synthetic", overrides=()):
    """Compose conf/data/<data>.yaml through Hydra as the harness does (top-level task/num_classes)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            overrides=[f"+data={data}", f"+task={task}", f"+num_classes={num_classes}", *overrides]
        )


def small(task="binary", num_classes=1, **kw) -> SyntheticDataModule:
    args = dict(num_samples=12, image_size=32, batch_size=4, val_fraction=0.25)
    args.update(kw)
    val = {"normalize": A.Normalize()}
    return SyntheticDataModule(task=task, num_classes=num_classes, train_transforms=val, val_transforms=val, **args)


# --- generation ------------------------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    for dm in (a, b, c):
        dm.setup("fit")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)


def test_sample_depends_only_on_seed_and_index():
    # Independent of the dataset size (and so of order and workers): sample i is fixed by (seed, i).
    short, long = small(num_samples=6), small(num_samples=12)
    short.setup("fit")
    long.setup("fit")
    np.testing.assert_array_equal(short.images, long.images[:6])
    image, mask = make_sample(0, 5, 32, "binary", 1)
    np.testing.assert_array_equal(image, long.images[5])
    np.testing.assert_array_equal(mask, long.masks[5])


@pytest.mark.parametrize(
    ("task", "num_classes", "mask_shape", "dtype"),
    [
        ("binary", 1, (4, 1, 32, 32), torch.float32),
        ("multiclass", 4, (4, 32, 32), torch.int64),
        ("multilabel", 3, (4, 3, 32, 32), torch.float32),
    ],
)
def test_batch_contract_per_task(task, num_classes, mask_shape, dtype):
    dm = small(task, num_classes)
    dm.setup("fit")
    for loader, size in ((dm.train_dataloader(), 4), (dm.val_dataloader(), 3)):
        batch = next(iter(loader))
        mask_shape = (size, *mask_shape[1:])
        assert batch["image"].shape == (size, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert torch.isfinite(batch["image"]).all()
        # ImageNet-normalised pixels of 0..255 lie in about [-2.2, 2.7].
        assert -2.2 <= batch["image"].min() and batch["image"].max() <= 2.7
        assert batch["mask"].shape == mask_shape and batch["mask"].dtype == dtype
        allowed = set(range(num_classes)) if task == "multiclass" else {0, 1}
        assert set(batch["mask"].unique().tolist()) <= allowed
        assert all(isinstance(n, str) and n.startswith("synthetic_") for n in batch["name"])
    assert len(dm.train_set) == 9 and len(dm.val_set) == 3


def test_every_class_appears_and_has_foreground():
    dm = small("multiclass", len(SHAPES) + 1, num_samples=40)
    dm.generate()
    assert set(np.unique(dm.masks).tolist()) == set(range(len(SHAPES) + 1))
    # Every image holds at least one shape.
    assert (dm.masks.reshape(40, -1).max(axis=1) > 0).all()


def test_multilabel_channels_overlap():
    dm = small("multilabel", 3, num_samples=40, max_shapes=6)
    dm.generate()
    assert dm.masks.shape == (40, 32, 32, 3)
    assert (dm.masks.sum(axis=-1) >= 2).any()  # a pixel in two channels at once


def test_shapes_contrast_with_background():
    # The task is learnable from colour alone near shapes: foreground and background pixels differ.
    image, mask = make_sample(0, 1, 64, "binary", 1, noise_std=0.0)
    fg, bg = image[mask == 1].astype(float), image[mask == 0].astype(float)
    assert np.abs(fg.mean(0) - bg.mean(0)).sum() > 30


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(task="segment", num_classes=1), "task must be one of"),
        (dict(task="binary", num_classes=3), "num_classes=1"),
        (dict(task="multiclass", num_classes=1), "num_classes >= 2"),
        (dict(task="multiclass", num_classes=9), "at most num_classes=7"),
        (dict(task="multilabel", num_classes=7), "at most num_classes=6"),
        (dict(task="binary", num_classes=1, val_fraction=1.0), "val_fraction"),
        (dict(task="binary", num_classes=1, num_samples=1, val_fraction=0.5), "leaves no training sample"),
        (dict(task="binary", num_classes=1, batch_size=0), "batch_size"),
        # A misspelt option names itself and lists the accepted ones (the base class's included).
        (dict(task="binary", batchsize=4), r"SyntheticDataModule has no option\(s\) batchsize .*batch_size.*num_samples"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticDataModule(**kwargs)


def test_test_split_is_generated_on_demand_after_the_other_samples():
    dm = small(num_test=5)
    dm.setup("fit")
    assert dm.test_set is None
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["name"] == [f"synthetic_{i:05d}" for i in range(12, 16)]
    image, mask = make_sample(0, 13, 32, "binary", 1)
    np.testing.assert_array_equal(dm.test_set[1]["mask"][0].numpy(), mask)
    with pytest.raises(ValueError, match="data.num_test"):
        small().test_dataloader()


def test_dataloader_knobs():
    dm = small(num_workers=0)
    assert dm.pin_memory == torch.cuda.is_available() and dm.persistent_workers is False
    dm = small(num_workers=2, pin_memory=False)
    assert dm.persistent_workers is True and dm.pin_memory is False
    with pytest.raises(RuntimeError, match="setup"):
        small().train_dataloader()


# --- pipelines from config -----------------------------------------------------------------


def test_default_config_composes_and_instantiates():
    cfg = compose_data("multiclass", 4, overrides=["data.num_samples=10", "data.image_size=48"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, SyntheticDataModule) and dm.task == "multiclass" and dm.num_classes == 4
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[-2:] == (48, 48) and batch["mask"].dtype == torch.int64
    names = [type(t).__name__ for t in dm.train_transform.transforms]
    assert names == ["Resize", "HorizontalFlip", "VerticalFlip", "ColorJitter", "Normalize", "ToTensorV2"]
    assert [type(t).__name__ for t in dm.val_transform.transforms] == ["Resize", "Normalize", "ToTensorV2"]
    assert dm.train_transform.transforms[0].height == 48  # ${...image_size} follows data.image_size


def test_transform_overrides_from_command_line():
    cfg = compose_data(
        overrides=[
            "data.train_transforms.hflip.p=0.2",
            "~data.train_transforms.vflip",
            "data.train_transforms.color=null",
            "+data.train_transforms.rot._target_=albumentations.RandomRotate90",
        ]
    )
    dm = instantiate(cfg.data)
    transforms = dm.train_transform.transforms
    assert [type(t).__name__ for t in transforms] == [
        "Resize", "HorizontalFlip", "Normalize", "RandomRotate90", "ToTensorV2"
    ]
    assert transforms[1].p == pytest.approx(0.2)


def test_uninstantiated_configs_and_instantiated_transforms_both_work():
    spec = OmegaConf.create({"flip": {"_target_": "albumentations.HorizontalFlip", "p": 1.0}})
    from_config = build_transforms(spec)
    from_objects = build_transforms([A.HorizontalFlip(p=1.0)])
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for pipeline in (from_config, from_objects):
        assert isinstance(pipeline.transforms[-1], ToTensorV2)
        out = pipeline(image=image, mask=image[..., 0])
        np.testing.assert_array_equal(out["mask"].numpy(), image[:, ::-1, 0])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"flip": {"p": 0.5}}, "Transform 'flip' has no _target_"),
        ({"flip": 3}, "Transform 'flip' must be an albumentations transform"),
        ({"x": {"_target_": "builtins.dict"}}, "not an albumentations transform"),
        ("hflip", "mapping name -> transform"),
    ],
)
def test_bad_transform_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        build_transforms(spec)


def test_geometric_augmentation_moves_image_and_mask_together():
    flip = {"flip": A.HorizontalFlip(p=1.0)}
    dm = SyntheticDataModule(task="multiclass", num_classes=4, num_samples=4, image_size=32, val_fraction=0.25,
                             train_transforms=flip, val_transforms=flip)
    dm.setup("fit")
    sample = dm.train_set[0]
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), dm.images[0][:, ::-1])
    np.testing.assert_array_equal(sample["mask"].numpy(), dm.masks[0][:, ::-1])


@pytest.mark.parametrize(("task", "num_classes"), [("multiclass", 5), ("multilabel", 3)])
def test_resized_masks_keep_their_labels(task, num_classes):
    # Masks are resized with nearest interpolation: no new (in-between) label values, no blending.
    resize = {"resize": A.Resize(23, 23), "normalize": A.Normalize()}
    dm = SyntheticDataModule(task=task, num_classes=num_classes, num_samples=8, image_size=64, val_fraction=0.5,
                             train_transforms=resize, val_transforms=resize)
    dm.setup("fit")
    for i in range(4):
        mask = dm.val_set[i]["mask"]
        assert mask.shape[-2:] == (23, 23)
        assert set(mask.unique().tolist()) <= set(np.unique(dm.masks[4 + i]).tolist())


def test_val_pipeline_is_deterministic_train_pipeline_is_seeded():
    cfg = compose_data(overrides=["data.num_samples=8", "data.image_size=32"])
    a, b = instantiate(cfg.data), instantiate(cfg.data)
    a.setup("fit")
    b.setup("fit")
    torch.testing.assert_close(a.val_set[0]["image"], a.val_set[0]["image"])
    # Same seed -> same augmentation stream in the main process.
    for i in range(4):
        torch.testing.assert_close(a.train_set[i]["image"], b.train_set[i]["image"])


def test_workers_draw_different_augmentations():
    # albumentations keeps its random state in the Compose: without reseeding, forked workers
    # would repeat each other's flips. Sample 0 repeated, flipped or not: compare per worker.
    dm = SyntheticDataModule(task="binary", num_classes=1, num_samples=2, image_size=16, val_fraction=0.5, batch_size=1,
                             num_workers=2, train_transforms={"flip": A.HorizontalFlip(p=0.5)})
    dm.setup("fit")
    # 64 copies of sample 0, so each output is either the raw mask or its mirror image.
    dm.train_set.load = _ArraySource(np.repeat(dm.images[:1], 64, 0), np.repeat(dm.masks[:1], 64, 0), 0)
    dm.train_set.length = 64
    raw = torch.from_numpy(dm.masks[0]).float()
    flips = {0: [], 1: []}
    for k, batch in enumerate(torch.utils.data.DataLoader(
        dm.train_set, batch_size=1, num_workers=2, worker_init_fn=dm._loader(dm.train_set, True).worker_init_fn
    )):
        flips[k % 2].append(not torch.equal(batch["mask"][0, 0], raw))
    assert 4 < sum(flips[0]) < 28  # the flip really is random
    assert flips[0] != flips[1]
