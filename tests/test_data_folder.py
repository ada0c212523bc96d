"""FolderDataModule on generated folders: formats, splits, and every bad-input error."""

from __future__ import annotations

import re
import runpy
import shlex
import shutil
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from datamodules import FolderDataModule
from datamodules.folder import read_image
from datamodules.synthetic import make_sample
from datamodules.masks import class_palette
from datamodules.write import write_folder_dataset
from segtrain.losses import build_loss

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
VAL = {"normalize": A.Normalize()}  # no resize: masks come back pixel for pixel
PALETTE = [tuple(c) for c in class_palette(8).tolist()]  # the colours write_folder_dataset uses


def folder(root, task="binary", num_classes=1, **kw) -> FolderDataModule:
    args = dict(image_size=SIZE, batch_size=4, num_workers=0, train_transforms=VAL, val_transforms=VAL)
    args.update(kw)
    return FolderDataModule(root, task=task, num_classes=num_classes, **args)


def write(tmp_path, name="data", task="binary", num_classes=1, num_samples=10, **kw) -> Path:
    return write_folder_dataset(tmp_path / name, task, num_classes, num_samples, SIZE, **kw)


def all_samples(dm):
    return [dm.train_set[i] for i in range(len(dm.train_set))] + [dm.val_set[i] for i in range(len(dm.val_set))]


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "num_classes", "kw", "palette"),
    [
        ("binary", 1, dict(mask_format="255"), None),  # RGB PNG, 0/255
        ("binary", 1, dict(mask_format="01", grayscale=True), None),  # grayscale PNG, 0/1
        ("binary", 1, dict(mask_format="16bit", image_format="tif"), None),  # TIF, 16-bit 0/65535
        ("binary", 1, dict(mask_format="palette_rgb"), PALETTE[:2]),
        ("multiclass", 4, dict(mask_format="01"), None),  # 8-bit index mask
        ("multiclass", 4, dict(mask_format="16bit"), None),  # 16-bit index mask
        ("multiclass", 4, dict(mask_format="palette_p"), None),  # 'P' PNG: indices
        ("multiclass", 4, dict(mask_format="palette_rgb"), PALETTE[:4]),  # RGB colours + palette
        ("multilabel", 3, dict(mask_format="255"), None),  # masks/<stem>_<k>.png
    ],
)
def test_lossless_formats_read_back_exactly(tmp_path, task, num_classes, kw, palette):
    root = write(tmp_path, task=task, num_classes=num_classes, **kw)
    dm = folder(root, task, num_classes, palette=palette, validate=True)
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2
    for sample in all_samples(dm):
        index = int(sample["name"].split("_")[1])
        image, mask = make_sample(0, index, SIZE, task, num_classes)
        if task == "binary":
            assert sample["mask"].shape == (1, SIZE, SIZE) and sample["mask"].dtype == torch.float32
            np.testing.assert_array_equal(sample["mask"][0].numpy(), mask)
        elif task == "multiclass":
            assert sample["mask"].dtype == torch.int64
            np.testing.assert_array_equal(sample["mask"].numpy(), mask)
        else:
            assert sample["mask"].shape == (3, SIZE, SIZE) and sample["mask"].dtype == torch.float32
            np.testing.assert_array_equal(sample["mask"].numpy(), mask.transpose(2, 0, 1))
        assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
        if not kw.get("grayscale"):
            expected = A.Normalize()(image=image)["image"].transpose(2, 0, 1)
            np.testing.assert_allclose(sample["image"].numpy(), expected, atol=1e-5)
        else:  # one gray channel repeated into three
            raw = sample["image"].numpy()
            assert not np.allclose(raw[0], raw[1])  # different per-channel normalisation...
            np.testing.assert_allclose(raw[0] * 0.229 + 0.485, raw[1] * 0.224 + 0.456, atol=1e-5)  # ...same pixels


@pytest.mark.parametrize("grayscale", [False, True])
def test_jpeg_images_default_pipeline_and_batches(tmp_path, grayscale):
    root = write(tmp_path, image_format="jpg", grayscale=grayscale, mask_format="01")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(overrides=["+data=folder", "+task=binary", "+num_classes=1", f"data.root={root}",
                                 "data.image_size=24", "data.num_workers=0", "data.batch_size=3"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    channels = 1 if grayscale else 3  # a greyscale folder trains a one-channel network (no copies of the grey)
    assert batch["image"].shape == (3, channels, 24, 24) and batch["mask"].shape == (3, 1, 24, 24)
    assert dm.preprocessing["normalization"]["mode"] == ("dataset" if grayscale else "imagenet")
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    image, _ = make_sample(0, 0, SIZE, "binary", 1)
    jpeg = read_image(root / "images" / "sample_0000.jpg")
    assert jpeg.shape == (SIZE, SIZE, channels) and jpeg.dtype == np.uint8
    reference = image if not grayscale else np.asarray(Image.fromarray(image).convert("L"))[..., None]
    other = make_sample(0, 1, SIZE, "binary", 1)[0]
    # Lossy, but clearly the same picture: far closer to its source than to another sample.
    assert np.abs(jpeg.astype(float) - reference).mean() < np.abs(other.astype(float) - reference).mean() / 3


def test_ignore_index_passes_through(tmp_path):
    root = write(tmp_path, task="multiclass", num_classes=3, mask_format="01", num_samples=4)
    mask_path = root / "masks" / "sample_0000.png"
    mask = np.array(Image.open(mask_path))
    mask[:2] = 255
    Image.fromarray(mask).save(mask_path)
    dm = folder(root, "multiclass", 3, ignore_index=255, val_fraction=0.25)
    dm.setup("fit")
    masks = {s["name"]: s["mask"] for s in all_samples(dm)}
    assert (masks["sample_0000"][:2] == 255).all() and masks["sample_0000"].max() == 255
    with pytest.raises(ValueError, match=r"sample_0000.png has values \{255\} that fit no class"):
        dm2 = folder(root, "multiclass", 3, val_fraction=0.25, validate=True)
        dm2.setup("fit")


# --- splits ----------------------------------------------------------------------------------


def test_ratio_split_is_seeded_and_disjoint(tmp_path):
    root = write(tmp_path, num_samples=20)
    stems = lambda pairs: {p[0].stem for p in pairs}  # noqa: E731
    a, b, c = folder(root, seed=1, val_fraction=0.3), folder(root, seed=1, val_fraction=0.3), folder(root, seed=2, val_fraction=0.3)
    for dm in (a, b, c):
        dm.setup("fit")
    assert len(a.val_pairs) == 6 and len(a.train_pairs) == 14
    assert stems(a.train_pairs) | stems(a.val_pairs) == {f"sample_{i:04d}" for i in range(20)}
    assert not stems(a.train_pairs) & stems(a.val_pairs)
    assert stems(a.val_pairs) == stems(b.val_pairs)
    assert stems(a.val_pairs) != stems(c.val_pairs)


def test_split_by_subfolders(tmp_path):
    root = write(tmp_path, num_samples=10, layout="split", val_fraction=0.3)
    dm = folder(root, val_fraction=0.5)  # ignored: the folders decide
    dm.setup("fit")
    assert {p[0].stem for p in dm.val_pairs} == {"sample_0007", "sample_0008", "sample_0009"}
    assert len(dm.train_pairs) == 7
    assert all(p[0].parent == root / "train" / "images" for p in dm.train_pairs)


def test_script_writes_a_dataset_the_datamodule_reads(tmp_path, monkeypatch, capsys):
    out = tmp_path / "shapes"
    monkeypatch.setattr(sys, "argv", ["make_folder_dataset.py", str(out), "--task", "multiclass",
                                      "--num-classes", "3", "--num-samples", "5", "--image-size", "24",
                                      "--mask-format", "palette_rgb", "--layout", "split"])
    runpy.run_path(str(REPO / "scripts" / "make_folder_dataset.py"), run_name="__main__")
    printed = capsys.readouterr().out
    # The colours the files were written in, background (class 0) black.
    printed_palette = ",".join(f"[{r},{g},{b}]" for r, g, b in PALETTE[:3])
    assert f"data.palette=[{printed_palette}]" in printed and printed_palette.startswith("[0,0,0],")
    dm = folder(out, "multiclass", 3, palette=PALETTE[:3], validate=True)
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.val_set) == 1
    # the printed command composes into a config whose loss serves the task (the default loss,
    # bce_dice, would stop a multiclass run at start-up) and whose datamodule reads the folder
    command = printed.split("train on it: python train.py ", 1)[1].strip()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=shlex.split(command))
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert type(loss.terms["ce"]).__name__ == "CrossEntropyLoss"
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert len(dm.train_set) == 4


# --- errors, each naming the file ------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data.root {tmp_path / 'nope'} does not exist"):
        folder(tmp_path / "nope").setup("fit")


def test_root_not_set_in_config():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(overrides=["+data=folder", "+task=binary", "+num_classes=1"])
    with pytest.raises(Exception, match="data.root"):
        instantiate(cfg.data)
    with pytest.raises(ValueError, match="data.root is not set"):
        FolderDataModule(None, task="binary", num_classes=1)


def test_root_without_known_layout(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(FileNotFoundError, match="neither images/ \\+ masks/ nor train/ \\+ val/"):
        folder(tmp_path).setup("fit")


def test_train_without_val(tmp_path):
    root = write(tmp_path, layout="split", val_fraction=0.3)
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match="has train/ but no val/"):
        folder(root).setup("fit")


def test_no_images(tmp_path):
    root = write(tmp_path)
    for f in (root / "images").iterdir():
        f.unlink()
    (root / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=f"No images .* in {root / 'images'}"):
        folder(root).setup("fit")


def test_missing_masks_folder(tmp_path):
    root = write(tmp_path)
    shutil.rmtree(root / "masks")
    with pytest.raises(FileNotFoundError, match=f"Masks folder {root / 'masks'} does not exist"):
        folder(root).setup("fit")


def test_image_without_mask(tmp_path):
    root = write(tmp_path)
    (root / "masks" / "sample_0003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"No mask for image .*images/sample_0003.png"):
        folder(root).setup("fit")


def test_multilabel_image_without_one_class_mask(tmp_path):
    root = write(tmp_path, task="multilabel", num_classes=3)
    (root / "masks" / "sample_0002_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"sample_0002.png \(expected .*sample_0002_1.png"):
        folder(root, "multilabel", 3).setup("fit")


def test_duplicate_stems(tmp_path):
    root = write(tmp_path)
    shutil.copy(root / "images" / "sample_0001.png", root / "images" / "sample_0001.jpg")
    with pytest.raises(ValueError, match="share the stem 'sample_0001'"):
        folder(root).setup("fit")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_file_is_named(tmp_path, damage):
    root = write(tmp_path)
    path = root / "images" / "sample_0004.png"
    data = path.read_bytes()
    path.write_bytes(b"this is not a png" if damage == "garbage" else data[: len(data) // 2])
    dm = folder(root, val_fraction=0.0)
    if damage == "garbage":  # setup() reads every training image's header: a file that is no image fails there
        with pytest.raises(ValueError, match=r"Cannot read .*sample_0004.png"):
            dm.setup("fit")
    else:  # a truncated file has a good header: its pixels fail when a batch reads it, naming it
        dm.setup("fit")
        index = [p[0].name for p in dm.train_pairs].index("sample_0004.png")
        with pytest.raises(ValueError, match=r"Cannot read .*sample_0004.png"):
            dm.train_set[index]
    with pytest.raises(ValueError, match=r"Cannot read .*sample_0004.png"):
        folder(root, validate=True).setup("fit")  # validate: found before training starts


def test_size_mismatch(tmp_path):
    root = write(tmp_path)
    Image.fromarray(np.zeros((SIZE, SIZE + 3), np.uint8)).save(root / "masks" / "sample_0005.png")
    with pytest.raises(ValueError, match=r"Size mismatch: image .*sample_0005.png is 32x32 .* mask .*sample_0005.png is 35x32"):
        folder(root, validate=True).setup("fit")


def test_binary_mask_with_a_third_value(tmp_path):
    root = write(tmp_path, mask_format="01")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[5, 5] = 3
    Image.fromarray(mask).save(root / "masks" / "sample_0006.png")
    with pytest.raises(ValueError, match=r"sample_0006.png has values \{0, 3\} that fit no class of a binary task"):
        folder(root, validate=True).setup("fit")


def test_multiclass_value_out_of_range_through_a_worker(tmp_path):
    root = write(tmp_path, task="multiclass", num_classes=4, mask_format="01", num_samples=4)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[0, 0] = 7
    for i in range(4):
        Image.fromarray(mask).save(root / "masks" / f"sample_{i:04d}.png")
    dm = folder(root, "multiclass", 4, num_workers=1, persistent_workers=False, val_fraction=0.25)
    dm.setup("fit")
    # The error is raised in a DataLoader worker and re-raised here with the file named.
    batches = iter(dm.train_dataloader())
    try:
        with pytest.raises(ValueError, match=r"sample_000\d.png has values \{7\} that fit no class: with num_classes=4"):
            next(batches)
    finally:
        batches._shutdown_workers()  # now, rather than a 5 s join timeout at garbage collection


def test_sixteen_bit_binary_mask_with_other_values(tmp_path):
    root = write(tmp_path, mask_format="16bit")
    Image.fromarray(np.full((SIZE, SIZE), 300, np.uint16)).save(root / "masks" / "sample_0001.png")
    with pytest.raises(ValueError, match=r"sample_0001.png has values \{300\} .* 0/1 or 0/65535"):
        folder(root, validate=True).setup("fit")


def test_colour_mask_without_palette_and_unknown_colour(tmp_path):
    root = write(tmp_path, task="multiclass", num_classes=4, mask_format="palette_rgb")
    with pytest.raises(ValueError, match=r"Mask .*sample_000\d.png is a colour \(RGB\) image: give data.palette"):
        folder(root, "multiclass", 4, validate=True).setup("fit")
    unknown = re.escape(str([PALETTE[3]]))  # class 3's colour, left out of the palette below
    with pytest.raises(ValueError, match=rf"sample_000\d.png has colours {unknown} that are not in data.palette"):
        folder(root, "multiclass", 4, palette=[PALETTE[k] for k in (0, 1, 2, 4)], validate=True).setup("fit")


@pytest.mark.parametrize(
    ("task", "num_classes", "kw", "match"),
    [
        ("multiclass", 4, dict(palette=PALETTE[:3]), "palette has 3 colours but task=multiclass needs 4"),
        ("binary", 1, dict(palette=[[0, 0, 0], [0, 0, 0]]), "repeats a colour"),
        ("binary", 1, dict(palette=[[0, 0], [1, 1]]), r"list of \[r, g, b\]"),
        ("multilabel", 2, dict(palette=PALETTE[:2]), "multilabel uses one mask per class"),
        ("binary", 1, dict(ignore_index=1), "ignore_index=1 is a class value of task=binary"),
        ("multiclass", 4, dict(ignore_index=2), "ignore_index=2 is a class value of task=multiclass"),
        ("binary", 1, dict(val_fraction=1.5), "val_fraction"),
    ],
)
def test_bad_options(tmp_path, task, num_classes, kw, match):
    with pytest.raises(ValueError, match=match):
        folder(tmp_path, task, num_classes, **kw)


def test_too_few_images_for_the_split(tmp_path):
    root = write(tmp_path, num_samples=1)
    with pytest.raises(ValueError, match="holds 1 image"):
        folder(root, val_fraction=0.5).setup("fit")


def test_images_of_different_sizes_batch_with_the_default_pipelines(tmp_path):
    # train_transforms / val_transforms = None: resize to image_size (+ flip) and normalise.
    root = tmp_path / "sizes"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate([(20, 30), (41, 17), (32, 32), (50, 64)]):
        image, mask = make_sample(0, i, 64, "binary", 1)
        Image.fromarray(image[:h, :w]).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask[:h, :w] * 255).save(root / "masks" / f"s{i}.png")
    dm = FolderDataModule(root, task="binary", num_classes=1, image_size=24, batch_size=4, num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 3, 24, 24) and batch["mask"].shape == (3, 1, 24, 24)
    assert batch["image"].min() < 0  # normalised
    assert [type(t).__name__ for t in dm.val_transform.transforms] == ["Resize", "Normalize", "ToTensorV2"]


@pytest.mark.parametrize(("mask_format", "ignore", "foreground"), [("01", 255, 1), ("255", 7, 255)])
def test_binary_ignore_index_passes_through(tmp_path, mask_format, ignore, foreground):
    root = write(tmp_path, mask_format=mask_format, num_samples=4)
    path = root / "masks" / "sample_0002.png"
    mask = np.array(Image.open(path))
    assert set(np.unique(mask).tolist()) == {0, foreground}
    mask[:, :3] = ignore
    Image.fromarray(mask).save(path)
    dm = folder(root, ignore_index=ignore, val_fraction=0.25, validate=True)
    dm.setup("fit")
    sample = {s["name"]: s["mask"] for s in all_samples(dm)}["sample_0002"]
    assert set(sample.unique().tolist()) == {0.0, 1.0, float(ignore)}
    assert (sample[0, :, :3] == ignore).all()
    with pytest.raises(ValueError, match=rf"sample_0002.png has values \{{0, .*{ignore}.*\}} that fit no class of a binary"):
        folder(root, val_fraction=0.25, validate=True).setup("fit")


def test_ignore_index_follows_the_top_level_key(tmp_path):
    root = write(tmp_path, task="multiclass", num_classes=3, mask_format="01", num_samples=4)
    base = ["+data=folder", "+task=multiclass", "+num_classes=3", f"data.root={root}", "data.num_workers=0"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        with_key = compose(overrides=[*base, "+ignore_index=255"])
        without = compose(overrides=base)
    assert instantiate(with_key.data).ignore_index == 255
    assert instantiate(without.data).ignore_index is None


def test_optional_test_split(tmp_path):
    root = write(tmp_path, num_samples=6)
    dm = folder(root)
    dm.setup("test")
    with pytest.raises(FileNotFoundError, match=f"No test split: add {root / 'test' / 'images'}"):
        dm.test_dataloader()
    write_folder_dataset(root / "test", "binary", 1, 3, SIZE, seed=5)
    dm = folder(root, batch_size=8)
    dm.setup("test")
    assert dm.train_set is None  # only what the stage needs
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (3, 3, SIZE, SIZE) and len(dm.test_pairs) == 3


def test_different_sizes_without_resize_is_a_clear_error(tmp_path):
    root = tmp_path / "sizes"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate([(20, 30), (41, 17), (32, 32)]):
        image, mask = make_sample(0, i, 64, "binary", 1)
        Image.fromarray(image[:h, :w]).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask[:h, :w]).save(root / "masks" / f"s{i}.png")
    # Neither resize nor crop: the VAL pipeline (normalise only) runs on the files as they are.
    dm = folder(root, batch_size=3, val_fraction=0.0, image_size=None, crop_size=None)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"different sizes after the transforms \(s\d: \(\d+, \d+\).*add a resize"):
        next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_mask_value_checks_agree_with_np_unique(dtype):
    """The fast checks (one max(), a histogram) accept, map and reject exactly what np.unique-based checks would."""
    from datamodules.masks import binary_values, distinct_values, index_values

    rng = np.random.default_rng(0)
    top = 255 if dtype == np.uint8 else 65535 if dtype == np.uint16 else 70000
    for values in ([0], [1], [0, 1], [0, 255], [0, 1, 255], [0, 3], [2], [0, 65535], [0, 1, top], [-1, 0, 1], [5, 9]):
        values = [v for v in values if np.iinfo(dtype).min <= v <= np.iinfo(dtype).max]
        if not values:
            continue
        mask = rng.choice(np.array(values, dtype=dtype), size=(13, 17))
        assert distinct_values(mask).tolist() == np.unique(mask).tolist()
        present = set(np.unique(mask).tolist())
        for ignore in (None, 255):
            labels = present - {ignore}
            on = 65535 if dtype == np.uint16 else 255
            if labels <= {0, 1} or labels <= {0, on}:
                out = binary_values(mask, "m.png", on, ignore)
                expected = np.where(mask == ignore, ignore, (mask != 0).astype(np.int64)) if ignore else (mask != 0)
                assert out.dtype == np.uint8 and (out == expected).all()
            else:
                with pytest.raises(ValueError, match=r"m.png has values"):
                    binary_values(mask, "m.png", on, ignore)
            if all(0 <= v < 10 or v == ignore for v in present):
                assert index_values(mask, "m.png", 10, ignore) is mask
            else:
                with pytest.raises(ValueError, match=r"m.png has values \{"):
                    index_values(mask, "m.png", 10, ignore)
