"""Derived targets in the data pipeline (datamodules/derived.py): whole-image distance maps, skeletons of crops.

Images encode their own pixel coordinates (R = row, G = column, B = 255; padding is 0), so every
pixel of a training crop -- after padding, the class-centred crop and flips -- names the pixel of
the whole image it came from, and its distance map is compared with
``seglosses.derived.signed_distance`` of the whole image there.
"""

from __future__ import annotations

import os
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

import seglosses.derived as canonical
from datamodules import FolderDataModule, SyntheticDataModule
from datamodules import derived as data_derived
from datamodules.base import SegmentationDataset, collate
from datamodules.transforms import build_transforms

# Odd sizes, one smaller than the 96 px crop (padding) and two larger (true sub-windows).
SIZES = [(203, 157), (75, 130), (140, 90), (181, 111)]
CROP = 96


def _coordinate_image(h: int, w: int) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows, cols, np.full((h, w), 255)], axis=-1).astype(np.uint8)


def _mask(rng: np.random.Generator, h: int, w: int, task: str) -> np.ndarray:
    """A few small blobs (far apart: a crop often misses the nearest one); multiclass: classes 1, 2 (3 absent)."""
    mask = np.zeros((h, w), np.uint8)
    for k in range(3):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        sy, sx = rng.integers(2, 8, size=2)
        mask[y : y + sy, x : x + sx] = 255 if task == "binary" else 1 + k % 2
    y, x = rng.integers(0, h), rng.integers(0, w - w // 3)
    mask[y, x : x + w // 3] = 255 if task == "binary" else 2  # a thin line
    return mask


def _write(root: Path, task: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Coordinate images + 0/255 (binary) or index (multiclass) masks; returns the masks by stem."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    masks = {}
    for i, (h, w) in enumerate(SIZES):
        stem = f"img{i}"
        Image.fromarray(_coordinate_image(h, w)).save(root / "images" / f"{stem}.png")
        masks[stem] = _mask(rng, h, w, task)
        Image.fromarray(masks[stem]).save(root / "masks" / f"{stem}.png")
    return masks


def _reference(mask_file: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """seglosses' signed distance of the whole image, from the mask as the task reads it: [C, H, W]."""
    if task == "binary":
        return canonical.signed_distance(canonical.class_channels((mask_file == 255)[None], task, 1))
    return canonical.signed_distance(canonical.class_channels(mask_file, task, num_classes))


def _folder(root, task="binary", num_classes=1, **kw) -> FolderDataModule:
    args = dict(task=task, num_classes=num_classes, crop_size=CROP, batch_size=2, num_workers=0, val_fraction=0.25,
                normalize="none", seed=0, derived_targets=["distance", "skeleton"])
    args.update(kw)
    return FolderDataModule(root, **args)


@pytest.mark.parametrize("task, num_classes", [("binary", 1), ("multiclass", 4)])
def test_crop_of_the_whole_image_map_and_padding_marked_ignored(tmp_path, task, num_classes):
    torch.manual_seed(0)  # the shuffle: the same crops on every run
    masks = _write(tmp_path / "d", task)
    train_transforms = {"hflip": A.HorizontalFlip(p=0.5), "vflip": A.VerticalFlip(p=0.5),
                        "rot": A.RandomRotate90(p=0.5)}  # exact for maps: no resampling
    dm = _folder(tmp_path / "d", task, num_classes, train_transforms=train_transforms, foreground_fraction=0.3)
    dm.setup("fit")
    assert dm.effective_crop == CROP and dm.pad_value == 255
    refs = {stem: _reference(m, task, num_classes) for stem, m in masks.items()}
    seen_padding = seen_outside = 0
    for _ in range(4):
        for batch in dm.train_dataloader():
            assert batch["distance"].shape[1:] == (num_classes, CROP, CROP) and batch["distance"].dtype == torch.float32
            for image, mask, distance, stem in zip(batch["image"], batch["mask"], batch["distance"], batch["name"]):
                rows, cols, flag = image.long()
                padded = flag == 0
                mask = mask.reshape(CROP, CROP)
                assert (mask[padded] == 255).all() and (mask[~padded] != 255).all()  # padding: ignored, only there
                seen_padding += int(padded.any())
                ref = torch.from_numpy(refs[stem])[:, rows[~padded], cols[~padded]]
                torch.testing.assert_close(distance[:, ~padded], ref, rtol=1e-6, atol=1e-5)
                if task == "multiclass":  # class 3 is absent from every image: no boundary, 0 everywhere
                    assert (distance[3, ~padded] == 0).all()
                # not the crop's own map: distances to objects outside the crop are in it
                layout = mask[None] if task == "binary" else mask
                local = canonical.signed_distance(canonical.class_channels(layout.numpy(), task, num_classes))
                seen_outside += int(not np.allclose(local[:, ~padded.numpy()], distance[:, ~padded].numpy()))
    assert seen_padding and seen_outside


@pytest.mark.parametrize("task, num_classes", [("binary", 1), ("multiclass", 4)])
def test_validation_samples_carry_whole_image_maps_and_skeletons(tmp_path, task, num_classes):
    masks = _write(tmp_path / "d", task)
    dm = _folder(tmp_path / "d", task, num_classes)
    dm.setup("fit")
    (batch,) = list(dm.val_dataloader())  # one whole image per batch
    stem = batch["name"][0]
    assert tuple(batch["distance"].shape[-2:]) == masks[stem].shape
    torch.testing.assert_close(batch["distance"][0], torch.from_numpy(_reference(masks[stem], task, num_classes)),
                               rtol=1e-6, atol=1e-5)
    mask = batch["mask"][0]
    expected = torch.from_numpy(canonical.tubed_skeleton(mask.numpy(), task, 255))
    assert torch.equal(batch["skeleton"][0], expected.to(torch.uint8))
    assert batch["skeleton"].dtype == torch.uint8 and batch["skeleton"].any()  # uint8: a quarter of the mask's bytes


@pytest.mark.parametrize("task, num_classes", [("binary", 1), ("multiclass", 4)])
def test_skeletons_of_the_whole_image_survive_flips_and_crops(tmp_path, task, num_classes):
    """The batch's skeleton is the whole image's, cropped, flipped and transposed with the mask."""
    torch.manual_seed(0)
    masks = _write(tmp_path / "d", task)
    dm = _folder(tmp_path / "d", task, num_classes, derived_targets=["skeleton"], foreground_fraction=0.5,
                 train_transforms={"hflip": A.HorizontalFlip(p=0.5), "t": A.Transpose(p=0.5)})
    dm.setup("fit")
    wholes = {stem: canonical.tubed_skeleton((m == 255)[None].astype(np.float32) if task == "binary" else m, task, 255)
              for stem, m in masks.items()}
    seen = 0
    for _ in range(3):
        for batch in dm.train_dataloader():
            assert "distance" not in batch
            assert batch["skeleton"].dtype == torch.uint8 and batch["skeleton"].shape == batch["mask"].shape
            for image, mask, skeleton, stem in zip(batch["image"], batch["mask"], batch["skeleton"], batch["name"]):
                rows, cols, flag = image.long()
                padded = flag == 0
                whole = torch.from_numpy(wholes[stem].reshape(-1, *wholes[stem].shape[-2:])[0].astype(np.float32))
                plane = skeleton.reshape(CROP, CROP).float()
                assert torch.equal(plane[~padded], whole[rows[~padded], cols[~padded]])  # the whole image's, moved
                assert not plane[padded].any()  # never on padding
                on = skeleton > 0
                assert torch.equal(skeleton[on].to(mask.dtype), mask[on])  # inside the foreground, with its class
                seen += int(on.any())
    assert seen


def test_multilabel_skeletons_stay_on_their_channel():
    dm = SyntheticDataModule(task="multilabel", num_classes=3, num_samples=6, image_size=48, batch_size=3,
                             derived_targets=["skeleton"], seed=1,
                             train_transforms={"crop": A.RandomCrop(40, 40), "flip": A.HorizontalFlip(p=0.5),
                                               "t": A.Transpose(p=0.5), "normalize": A.Normalize()})
    dm.setup("fit")
    for batch in dm.train_dataloader():
        skeleton, mask = batch["skeleton"], batch["mask"]
        assert skeleton.shape == mask.shape and skeleton.dtype == torch.uint8
        assert ((skeleton > 0) <= (mask == 1)).all() and skeleton.any()


def test_nothing_is_computed_when_not_asked_or_inactive(tmp_path, monkeypatch):
    import scipy.ndimage
    import skimage.morphology

    _write(tmp_path / "d", "binary")

    def refuse(*args, **kwargs):
        raise AssertionError("a derived target was computed")

    for module, name in [(canonical, "signed_distance"), (canonical, "tubed_skeleton"),
                         (data_derived, "distance_map"), (data_derived, "skeleton_of"),
                         (scipy.ndimage, "distance_transform_edt"), (skimage.morphology, "skeletonize")]:
        monkeypatch.setattr(module, name, refuse)
    plain = _folder(tmp_path / "d", derived_targets=())
    assert plain.derived_targets == () and plain.active_derived_targets == ()
    plain.set_active_derived_targets([])
    off = _folder(tmp_path / "d", derived_targets=["distance", "skeleton"], cache=True)
    with pytest.raises(AssertionError, match="computed"):
        off.setup("fit")  # the cache computes the maps it was asked for: the patch is live
    off = _folder(tmp_path / "d", derived_targets=["distance", "skeleton"])
    off.set_active_derived_targets([])  # every weight 0: nothing computed
    synthetic = SyntheticDataModule(num_samples=6, image_size=32, batch_size=3)
    for dm in (plain, off, synthetic):
        dm.setup("fit")
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for batch in loader:
                assert set(batch) == {"image", "mask", "name"}


def test_cache_computes_each_map_once(tmp_path, monkeypatch):
    masks = _write(tmp_path / "d", "binary")
    calls = []
    original = data_derived.distance_map

    def counted(mask, *args, **kwargs):
        calls.append(mask.shape)
        return original(mask, *args, **kwargs)

    monkeypatch.setattr(data_derived, "distance_map", counted)
    dm = _folder(tmp_path / "d", cache=True, derived_targets=["distance"])
    dm.setup("fit")
    assert len(calls) == len(SIZES)  # train + val images, once each, in setup()
    for _ in range(3):
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for batch in loader:
                assert "distance" in batch
    assert len(calls) == len(SIZES)
    # a sample is never a view of the cache: writing into it leaves the cache as it was
    sample = dm.val_set[0]
    sample["distance"].fill_(-7.0)
    again = dm.val_set[0]["distance"][0]
    torch.testing.assert_close(again, torch.from_numpy(_reference(masks[sample["name"]], "binary", 1))[0])
    without = _folder(tmp_path / "d", derived_targets=["distance"])
    without.setup("fit")
    calls.clear()
    list(without.val_dataloader())
    assert len(calls) == len(without.val_pairs)  # no cache: one map per sample read


def test_map_store_computes_each_map_once_across_epochs_and_runs(tmp_path, monkeypatch):
    masks = _write(tmp_path / "d", "binary")
    calls = []
    original = data_derived.distance_map

    def counted(mask, *args, **kwargs):
        calls.append(mask.shape)
        return original(mask, *args, **kwargs)

    monkeypatch.setattr(data_derived, "distance_map", counted)
    store = tmp_path / "cache" / "distance_maps"
    for run in range(2):  # a second datamodule (another run) reads the stored maps
        dm = _folder(tmp_path / "d", derived_targets=["distance"], derived_cache_dir=str(store))
        dm.setup("fit")
        for _ in range(2):
            for batch in dm.val_dataloader():
                torch.testing.assert_close(batch["distance"][0],
                                           torch.from_numpy(_reference(masks[batch["name"][0]], "binary", 1)))
    assert len(calls) == len(dm.val_pairs)  # once per image, over two epochs and two runs
    assert len(list(store.rglob("*.npy"))) == len(dm.val_pairs) and not list(store.rglob("*.tmp-*"))
    # a mask file that changes gets a new map
    mask_file = dm.val_pairs[0][1][0]
    os.utime(mask_file, ns=(os.stat(mask_file).st_atime_ns, os.stat(mask_file).st_mtime_ns + 10**9))
    list(dm.val_dataloader())
    assert len(calls) == len(dm.val_pairs) + 1


def test_an_unwritable_map_store_warns_once_and_computes(tmp_path):
    _write(tmp_path / "d", "binary")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    dm = _folder(tmp_path / "d", derived_targets=["distance"], derived_cache_dir=str(blocker / "maps"))
    dm.setup("fit")
    with pytest.warns(UserWarning, match="cannot be kept"):
        batches = list(dm.val_dataloader())
    assert all("distance" in b for b in batches)


def test_cache_refuses_maps_larger_than_the_memory(tmp_path, monkeypatch):
    import datamodules.folder as folder

    _write(tmp_path / "d", "multiclass")
    monkeypatch.setattr(folder, "available_memory", lambda: 1000)
    dm = _folder(tmp_path / "d", "multiclass", 4, cache=True, derived_targets=["distance"])
    with pytest.raises(ValueError, match=r"data.cache with distance maps.*4 per pixel.*data.cache=false"):
        dm.setup("fit")


def test_toggling_active_targets_in_process(tmp_path):
    _write(tmp_path / "d", "binary")
    dm = _folder(tmp_path / "d")
    dm.setup("fit")
    assert dm.active_derived_targets == ("distance", "skeleton")  # configured targets start active
    for names, keys in [([], set()), (["skeleton"], {"skeleton"}), (("distance",), {"distance"}),
                        (["skeleton", "distance"], {"distance", "skeleton"})]:
        dm.set_active_derived_targets(names)
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for batch in loader:
                assert set(batch) - {"image", "mask", "name"} == keys


def test_toggling_reaches_persistent_workers():
    dm = SyntheticDataModule(num_samples=8, image_size=32, batch_size=2, val_fraction=0.25, num_workers=1,
                             persistent_workers=True, derived_targets=["distance", "skeleton"])
    dm.setup("fit")
    loader = dm.train_dataloader()
    pids = []
    for names in (["distance", "skeleton"], [], ["skeleton"], ["distance"]):
        dm.set_active_derived_targets(names)  # what on_train_epoch_start does, before the epoch's iter()
        for batch in loader:
            assert set(batch) - {"image", "mask", "name"} == set(names)
        pids.append(tuple(w.pid for w in loader._iterator._workers))
    assert len(set(pids)) == 1  # the same worker process all along: the flags reached it


def test_a_batch_never_mixes_keys():
    """The flags are read once per batch (__getitems__): a switch mid-batch applies from the next batch."""
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    derived = data_derived.DerivedTargets(["distance"], "binary", 1)

    def load(i):
        if i == 1:
            derived.set_active([])  # switched off while the batch is being built
        return image, mask, f"s{i}"

    dataset = SegmentationDataset(load, 4, build_transforms({}), "binary", derived)
    assert all("distance" in s for s in dataset.__getitems__([0, 1, 2]))
    assert all("distance" not in s for s in dataset.__getitems__([2, 3]))
    derived.set_active(["distance"])
    batch = collate(dataset.__getitems__([2, 0]))
    assert batch["distance"].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="different keys"):
        collate([dataset[0], {k: v for k, v in dataset[0].items() if k != "distance"}])


def test_spacing_of_the_source_and_the_distance_map_equals_seglosses():
    rng = np.random.default_rng(3)
    mask = np.zeros((37, 23), np.uint8)
    mask[5:12, 4:9] = 1
    mask[30, :] = 2
    mask[0:2, 20:23] = 255  # ignored: in no class

    class Source:
        def __call__(self, index):
            return rng.integers(0, 255, (37, 23, 3), dtype=np.uint8), mask, "s"

        def spacing(self, index):
            return (0.5, 2.0)

    derived = data_derived.DerivedTargets(["distance"], "multiclass", 4)
    sample = SegmentationDataset(Source(), 1, build_transforms({}), "multiclass", derived)[0]
    expected = canonical.signed_distance(canonical.class_channels(mask, "multiclass", 4), (0.5, 2.0))
    torch.testing.assert_close(sample["distance"], torch.from_numpy(expected), rtol=1e-6, atol=1e-5)
    for task, m in [("binary", (rng.random((29, 31)) > 0.8).astype(np.uint8)),
                    ("multilabel", (rng.random((29, 31, 3)) > 0.9).astype(np.uint8))]:
        channels = (m == 1)[None] if task == "binary" else np.moveaxis(m == 1, -1, 0)
        got = np.moveaxis(data_derived.distance_map(m, task, channels.shape[0], (1.5, 1.0)), -1, 0)
        np.testing.assert_allclose(got, canonical.signed_distance(channels, (1.5, 1.0)), rtol=1e-6, atol=1e-5)


def test_unknown_or_unconfigured_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="'distnce'.*valid names are 'distance', 'skeleton'"):
        SyntheticDataModule(derived_targets=["distnce"])
    with pytest.raises(ValueError, match="'boundary'.*valid names"):
        FolderDataModule(tmp_path, task="binary", num_classes=1, derived_targets=["boundary"])
    dm = SyntheticDataModule(derived_targets="distance")  # one name as a string
    assert dm.derived_targets == ("distance",)
    with pytest.raises(ValueError, match="'skeleton' cannot be switched on.*derived_targets=\\['distance'\\]"):
        dm.set_active_derived_targets(["skeleton"])
    with pytest.raises(ValueError, match="valid names"):
        dm.set_active_derived_targets(["dist"])
