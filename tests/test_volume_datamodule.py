"""VolumeDataModule (issue 26): batches, class-centred sampling, padding, patch planning, distance maps, errors.

Tiny generated nnU-Net datasets (24-40 voxels a side), num_workers=0. Expected values come from
numpy, scipy (seglosses.derived) and the sampler's documented rule, not from the code under test.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import seglosses
from datamodules.volumes import VolumeDataModule, normalize_volume, read_volume, write_nnunet_dataset, write_volume
from datamodules.volumes.datamodule import plan_crop_size
from datamodules.volumes.planning import auto_patch_size
from datamodules.volumes.sampler import MAX_LOCATIONS, PatchSampler, extract, foreground_locations
from seglosses.derived import class_channels, signed_distance

SHAPE = (24, 32, 40)
SPACING = (2.0, 0.8, 0.8)
FLIPS = [{"_target_": "monai.transforms.RandFlipd", "keys": ["image", "mask"], "prob": 0.5, "spatial_axis": a}
         for a in range(3)]
NOISE = {"_target_": "monai.transforms.RandGaussianNoised", "keys": ["image"], "prob": 0.5, "std": 0.1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_nnunet_dataset(tmp_path_factory.mktemp("vol") / "Dataset001", cases=5, shape=SHAPE, spacing=SPACING,
                                test_cases=0)


@pytest.fixture(scope="module")
def fingerprint(dataset):
    from fingerprint.volumes import compute_volume_fingerprint

    return compute_volume_fingerprint(dataset, progress=False)


def _module(root, fingerprint=None, **options) -> VolumeDataModule:
    options = {"crop_size": [16, 16, 16], "num_workers": 0, "val_fraction": 0.4, **options}
    dm = VolumeDataModule(root, **options)
    dm.fingerprint = fingerprint
    return dm


def _copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


# --- normalisation --------------------------------------------------------------------------------------------


def test_normalize_volume_applies_each_channels_spec():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(100, 30, (6, 7, 8)), rng.uniform(0, 255, (6, 7, 8)), rng.normal(5, 2, (6, 7, 8)),
                  rng.normal(5, 2, (6, 7, 8)), rng.uniform(-3, 9, (6, 7, 8))]).astype(np.float32)
    specs = [{"mode": "ct", "lower": 60.0, "upper": 150.0, "mean": 100.0, "std": 20.0}, {"mode": "rgb_to_0_1"},
             {"mode": "zscore"}, {"mode": "none"}, {"mode": "rescale_0_1"}]
    out = normalize_volume(x, specs)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out[0], (np.clip(x[0], 60, 150) - 100) / 20, rtol=1e-5)
    np.testing.assert_allclose(out[1], x[1] / 255, rtol=1e-6)
    np.testing.assert_allclose(out[2], (x[2] - x[2].mean()) / x[2].std(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out[3], x[3])
    assert out[4].min() == 0 and out[4].max() == pytest.approx(1)
    with pytest.raises(ValueError, match="2 normalisation spec"):
        normalize_volume(x[:3], specs[:2])
    with pytest.raises(ValueError, match="modes are"):
        normalize_volume(x[:1], [{"mode": "minmax"}])


def test_batches_follow_the_contract(dataset, fingerprint):
    dm = _module(dataset, fingerprint, train_transforms=[*FLIPS, NOISE], batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.float32 and tuple(batch["image"].shape) == (2, 2, 16, 16, 16)
    assert batch["mask"].dtype == torch.int64 and tuple(batch["mask"].shape) == (2, 16, 16, 16)
    assert batch["spacing"].dtype == torch.float32 and torch.equal(batch["spacing"], torch.tensor([SPACING] * 2))
    assert len(batch["name"]) == 2 and all(n.startswith("case_") for n in batch["name"])
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2}
    assert dm.spatial_dims == 3 and dm.metric_class_names == ["background", "blob", "tube"]
    assert dm.sliding_window["window"] == [16, 16, 16] and dm.sliding_window["overlap"] == 0.5
    pre = dm.preprocessing
    assert pre["kind"] == "volume" and pre["channels"] == 2 and pre["spatial_dims"] == 3
    assert pre["normalization"] == fingerprint["normalization"] and pre["spacing"] == list(SPACING)
    # Validation: whole volumes, one per batch, normalised as the fingerprint says.
    val = list(dm.val_dataloader())
    assert [b["name"][0] for b in val] == [c.case_id for c in dm.val_cases] and len(val) == 2
    for b in val:
        assert tuple(b["image"].shape) == (1, 2, *SHAPE) and tuple(b["mask"].shape) == (1, *SHAPE)
        raw = read_volume(dataset / "imagesTr" / f"{b['name'][0]}_0000.nii.gz").array
        np.testing.assert_allclose(b["image"][0, 0].numpy(), normalize_volume(raw[None], pre["normalization"][:1])[0])


# --- sampler --------------------------------------------------------------------------------------------------


def test_rare_class_is_centred_in_foreground_fraction_over_present_classes():
    """A 1-voxel class in a corner and a class filling half the volume are each centred in f / 2 of the patches."""
    label = np.zeros((32, 32, 32), dtype=np.uint8)
    label[16:] = 1
    label[1, 1, 1] = 2
    locations = foreground_locations(label, [1, 2], seed=0)
    sampler = PatchSampler((16, 16, 16), foreground_fraction=0.5, seed=0)
    n = 4000
    patches = [sampler.sample(label.shape, locations) for _ in range(n)]
    centred = np.array([-1 if p.centred_class is None else p.centred_class for p in patches])
    expected = 0.5 / 2  # f / number of classes present
    tolerance = 4 * np.sqrt(expected * (1 - expected) / n)  # 4 standard errors: fails by chance ~1e-4
    assert abs((centred == 2).mean() - expected) < tolerance
    assert abs((centred == 1).mean() - expected) < tolerance
    assert abs((centred == -1).mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    # Independently of the sampler's own record: the rare voxel is inside the patch at least that often.
    inside = np.mean([(extract(label, p, 0) == 2).any() for p in patches])
    assert inside > expected - tolerance
    for p in patches:  # a centred voxel always lies inside its patch
        if p.centre is not None:
            assert all(s <= c < s + 16 for s, c in zip(p.start, p.centre))


def test_foreground_locations_are_capped_seeded_and_cover_one_percent():
    label = np.zeros((40, 40, 40), dtype=np.uint8)
    label[:, :, :20] = 1  # 32,000 voxels
    a, b = foreground_locations(label, [1, 2], seed=[0, 1]), foreground_locations(label, [1, 2], seed=[0, 1])
    assert set(a) == {1} and len(a[1]) == MAX_LOCATIONS and np.array_equal(a[1], b[1])
    assert np.all(label.ravel()[a[1]] == 1)
    few = foreground_locations(label, [1], seed=0, max_locations=10)
    assert len(few[1]) == 320  # at least 1 % of the class's voxels


# --- padding --------------------------------------------------------------------------------------------------


def test_small_volume_is_padded_with_the_ignore_value_and_the_loss_ignores_it(tmp_path):
    root = write_nnunet_dataset(tmp_path / "small", cases=2, shape=(12, 24, 20), test_cases=0)
    dm = _module(root, crop_size=[16, 24, 24], val_fraction=0.0, batch_size=2)
    dm.setup("fit")
    assert dm.patch_size == [16, 24, 24] and dm.pad_value == 255
    batch = next(iter(dm.train_dataloader()))
    mask, image = batch["mask"], batch["image"]
    padded = mask == 255
    assert padded.sum(dim=(1, 2, 3)).tolist() == [16 * 24 * 24 - 12 * 24 * 20] * 2
    assert torch.all(image.permute(1, 0, 2, 3, 4)[:, padded] == 0)
    loss = seglosses.DiceLoss("multiclass", ignore_index=255)
    logits = torch.randn(2, 3, 16, 24, 24)
    changed = logits.clone()
    changed[padded.unsqueeze(1).expand_as(changed)] = 50.0
    assert torch.allclose(loss(logits, mask), loss(changed, mask))


# --- patch planning -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [512, 4000, 20_000, 128 ** 3])
@pytest.mark.parametrize("divisor", [8, 16])
def test_planned_patch_fits_the_budget_and_divides(budget, divisor):
    if budget < divisor ** 3:
        with pytest.raises(ValueError, match="patch_budget"):
            auto_patch_size([90, 200, 230], [2.5, 0.7, 0.7], budget, divisor)
        return
    patch = auto_patch_size([90, 200, 230], [2.5, 0.7, 0.7], budget, divisor)
    assert np.prod(patch) <= budget and all(p % divisor == 0 and p >= divisor for p in patch)
    assert all(p <= -(-m // divisor) * divisor for p, m in zip(patch, [90, 200, 230]))


def test_planned_patch_from_the_fingerprint(dataset, fingerprint):
    dm = _module(dataset, fingerprint, crop_size=None, patch_budget=6000)
    dm.setup("fit")
    assert np.prod(dm.patch_size) <= 6000 and all(p % 8 == 0 for p in dm.patch_size)
    assert dm.patch_size == plan_crop_size(fingerprint, 6000)  # what the harness's data plan computes
    assert dm.sliding_window["window"] == dm.patch_size


# --- derived targets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [False, True])
def test_distance_is_the_whole_volumes_map_cut_with_the_patch(dataset, fingerprint, cache):
    flip = [{"_target_": "monai.transforms.RandFlipd", "keys": ["image", "mask"], "prob": 1.0, "spatial_axis": 2}]
    dm = _module(dataset, fingerprint, derived_targets=["distance", "skeleton"], cache=cache, train_transforms=flip)
    dm.setup("fit")
    train = dm.train_set
    state = train.sampler.state()
    sample = train[0]
    replay = PatchSampler(dm.patch_size, dm.foreground_fraction)
    replay.set_state(state)
    label = read_volume(dataset / "labelsTr" / f"{sample['name']}.nii.gz").array
    patch = replay.sample(label.shape, train.locations.get(sample["name"], label))
    whole = signed_distance(class_channels(label, "multiclass", 3), SPACING)
    expected = np.flip(extract(whole, patch, 0.0), axis=-1)  # the flip moves the map with the mask
    np.testing.assert_allclose(sample["distance"].numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sample["mask"].numpy(), np.flip(extract(label, patch, 255), axis=-1))
    assert sample["skeleton"].shape == sample["mask"].shape and sample["skeleton"].dtype == torch.int64
    dm.set_active_derived_targets([])
    assert "distance" not in train[0] and dm.active_derived_targets == ()
    with pytest.raises(ValueError, match="cannot be switched on"):
        _module(dataset, fingerprint).set_active_derived_targets(["distance"])


# --- errors ---------------------------------------------------------------------------------------------------


def test_patch_larger_than_every_volume_without_padding_is_an_error(dataset, fingerprint):
    dm = _module(dataset, fingerprint, crop_size=[32, 32, 48], pad=False)
    with pytest.raises(ValueError, match=r"larger than every training case with data.pad=false.*case_0\d\d is "
                                         r"\[24, 32, 40\]"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="not a multiple of data.divisor=8"):
        _module(dataset, fingerprint, crop_size=[12, 16, 16]).setup("fit")


def test_missing_label_is_named(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case_001: label .*labelsTr/case_001.nii.gz is missing"):
        _module(root).setup("fit")


def test_mismatched_channel_shapes_are_named(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    path = root / "imagesTr" / "case_002_0001.nii.gz"
    write_volume(path, np.zeros((24, 32, 36), dtype=np.float32), spacing=SPACING)
    with pytest.raises(ValueError, match="Case case_002: channel files of different shapes"):
        _module(root).setup("fit")


def test_wrong_num_classes_and_unknown_option_are_named(dataset):
    with pytest.raises(ValueError, match="names 3 classes"):
        _module(dataset, num_classes=4).setup("fit")
    with pytest.raises(ValueError, match="no option.*crop_sise"):
        VolumeDataModule(dataset, crop_sise=[16, 16, 16])


# --- splits, determinism, resume ------------------------------------------------------------------------------


def test_folds_split_by_case_id(dataset, fingerprint, tmp_path):
    folds = [{"train": ["case_000", "case_001", "case_002"], "val": ["case_003", "case_004"]},
             {"train": ["case_003", "case_004", "case_002"], "val": ["case_000", "case_001"]}]
    (tmp_path / "splits.json").write_text(json.dumps(folds))
    dm = _module(dataset, fingerprint, split_file=str(tmp_path / "splits.json"), fold=1)
    dm.setup("fit")
    assert [c.case_id for c in dm.val_cases] == ["case_000", "case_001"] and len(dm.train_set) == 3


def _batches(dm, n=3):
    torch.manual_seed(0)  # the DataLoader's shuffle (Lightning seeds it in a run)
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(n)]


def test_deterministic_by_seed_and_resumable(dataset, fingerprint):
    options = {"train_transforms": [*FLIPS, NOISE], "patches_per_epoch": 8, "batch_size": 2}
    a, b, c = (_module(dataset, fingerprint, seed=s, **options) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup("fit")
    first, second, other = _batches(a), _batches(b), _batches(c)
    for x, y in zip(first, second):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    assert not all(torch.equal(x["image"], z["image"]) for x, z in zip(first, other))
    # state_dict: the sampler and transform streams continue where the checkpoint left them.
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as a checkpoint is loaded
    after = _batches(a)
    a.load_state_dict(state)
    again = _batches(a)
    for x, y in zip(after, again):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
