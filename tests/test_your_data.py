"""Data made the way microscopes, multispectral cameras and annotation tools make it, through the whole harness.

Each case here once mistrained without a word: 16-bit images squeezed to one grey level, a 4th
band dropped, 0/255 masks with ``ignore_index=255`` turned into "ignore", JPEG masks found mid-run.
Reading keeps values exactly; every config-versus-data mistake fails before the first training
step with its message; the end-to-end runs (marked slow) train past the predict-everything level.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from reliability_helpers import compose_run

from datamodules.io import read_header, read_image
from datamodules.sensor import write_sensor_dataset
from segtrain.module import SegmentationModule
from segtrain.run import train

ODD = [(77, 123), (96, 64), (70, 90), (88, 100), (64, 72), (80, 80), (72, 96), (90, 66)]
FAST = ["data.num_workers=0", "data.batch_size=2", "data.crop_size=64", "+trainer.limit_train_batches=2",
        "callbacks.prediction_grid=null"]


# --- reading keeps values exactly -------------------------------------------------------------


def test_sixteen_bit_and_float_tiffs_keep_their_values(tmp_path):
    rng = np.random.default_rng(0)
    u16 = rng.integers(990, 1050, (37, 53), dtype=np.uint16)  # a 12-bit microscope's narrow range
    f32 = rng.normal(0, 1e-3, (37, 53)).astype(np.float32)
    tifffile.imwrite(tmp_path / "u16.tif", u16)
    tifffile.imwrite(tmp_path / "f32.tif", f32)
    np.testing.assert_array_equal(read_image(tmp_path / "u16.tif")[..., 0], u16)
    assert read_image(tmp_path / "u16.tif").dtype == np.uint16
    np.testing.assert_array_equal(read_image(tmp_path / "f32.tif")[..., 0], f32)
    Image.fromarray(u16).save(tmp_path / "u16.png")  # a 16-bit PNG: not divided by 257 any more
    np.testing.assert_array_equal(read_image(tmp_path / "u16.png")[..., 0], u16)


@pytest.mark.parametrize("channels", [4, 13])
def test_every_channel_is_kept(tmp_path, channels):
    rng = np.random.default_rng(channels)
    bands = rng.integers(0, 4000, (20, 30, channels), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "b.tif", bands, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif"), bands)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(bands, -1, 0))  # one page per band
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), bands)
    np.save(tmp_path / "b.npy", bands)
    np.testing.assert_array_equal(read_image(tmp_path / "b.npy"), bands)
    assert read_header(tmp_path / "b.tif").channels == channels
    if channels == 4:  # RGB + NIR as a 4-channel PNG: the 4th channel is no longer dropped
        rgba = (bands >> 4).astype(np.uint8)
        Image.fromarray(rgba).save(tmp_path / "rgbn.png")
        np.testing.assert_array_equal(read_image(tmp_path / "rgbn.png"), rgba)


def test_npy_with_objects_is_refused_without_running_them(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"Cannot read .*o.npy"):
        read_image(tmp_path / "o.npy")


# --- the datamodule feeds every channel, normalised by the dataset's statistics ---------------------


def test_sixteen_bit_four_channel_batches_keep_the_contrast(tmp_path):
    from datamodules import FolderDataModule

    root = write_sensor_dataset(tmp_path / "d", ODD, channels=4, object_channel=3)
    dm = FolderDataModule(root, crop_size=64, batch_size=2, num_workers=0)
    dm.setup("fit")
    assert dm.preprocessing["channels"] == 4 and dm.preprocessing["dtype"] == "uint16"
    assert dm.preprocessing["normalization"]["mode"] == "dataset"
    names = [type(t).__name__ for t in dm.train_transform.transforms]
    assert "ColorJitter" not in names and "ClipZScore" in names  # RGB-only colour jitter left out
    sample = dm.val_set[0]
    image, mask = sample["image"], sample["mask"][0]
    assert image.shape[0] == 4 and image.dtype == torch.float32
    # The objects (40 counts over noise 6) stand out by about 40/6 standard deviations in the NIR channel only.
    nir, red = image[3], image[0]
    assert (nir[mask == 1].mean() - nir[mask == 0].mean()) / nir[mask == 0].std() > 3
    assert abs(red[mask == 1].mean() - red[mask == 0].mean()) / red[mask == 0].std() < 1


# --- every check fails before the first training step ------------------------------------------------


def _no_step(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(SegmentationModule, "training_step", refuse)


def _write_binary(root: Path, sizes=ODD[:5], values=(0, 255), suffix=".png") -> Path:
    write_sensor_dataset(root, sizes, channels=3, dtype="uint8", background=100, contrast=80, noise=10,
                         image_format="png", mask_values=values)
    if suffix != ".png":
        for mask in root.rglob("masks/*.png"):
            Image.open(mask).convert("L").save(mask.with_suffix(suffix), quality=90)
            mask.unlink()
    return root


@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("zero_255_ignore_255", ["ignore_index=255"], r"ignore_index=255"),
        ("jpeg_masks", [], r"(?s)JPEG.*s000.jpg"),
        ("values_of_no_class", [], r"(?s)values.*fit no class.*num_classes"),
        ("in_channels", ["model.in_channels=4"], r"model.in_channels=4.*3"),
        ("size_mismatch", [], r"(?s)s001.png"),
        ("channel_counts", [], r"(?s)channel.*s002"),
    ],
)
def test_each_data_check_fails_before_any_training_step(tmp_path, monkeypatch, case, overrides, expected):
    root = _write_binary(tmp_path / "d", suffix=".jpg" if case == "jpeg_masks" else ".png")
    if case == "values_of_no_class":
        mask = root / "train" / "masks" / "s000.png"
        Image.fromarray(np.where(np.array(Image.open(mask)) > 0, 7, 0).astype(np.uint8)).save(mask)
    if case == "size_mismatch":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "train" / "masks" / "s001.png")
    if case == "channel_counts":
        tifffile.imwrite(root / "train" / "images" / "s002.tif",
                         np.zeros((70, 90, 4), np.uint16), photometric="minisblack", planarconfig="contig")
        (root / "train" / "images" / "s002.png").unlink()
    _no_step(monkeypatch)
    cfg = compose_run(["data=folder", f"data.root={root}", *FAST, *overrides], tmp_path / "run", synthetic=False)
    with pytest.raises(ValueError, match=expected):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_auto_task_and_classes_come_from_the_masks_and_labels_file(tmp_path, monkeypatch):
    from segtrain.data_plan import plan_data

    root = _write_binary(tmp_path / "d")
    for mask in root.rglob("masks/*.png"):  # three classes: 0, 1 and 2 (right half of each object)
        m = (np.array(Image.open(mask)) > 0).astype(np.uint8)
        m[:, m.shape[1] // 2:] *= 2
        Image.fromarray(m).save(mask)
    (root / "labels.txt").write_text("background\ncell\nnucleus\n")
    cfg = compose_run(["data=folder", f"data.root={root}", "task=auto", "num_classes=auto", *FAST],
                      tmp_path / "run", synthetic=False)
    plan_data(cfg)
    assert (cfg.task, cfg.num_classes, list(cfg.data.class_names)) == ("multiclass", 3, ["background", "cell", "nucleus"])
    assert cfg.model.in_channels == 3
    # An explicit value is checked, never replaced.
    cfg = compose_run(["data=folder", f"data.root={root}", "task=multiclass", "num_classes=2", *FAST],
                      tmp_path / "run2", synthetic=False)
    with pytest.raises(ValueError, match=r"values"):
        plan_data(cfg)


def test_fingerprint_is_written_and_padding_needs_no_ignore_index(tmp_path):
    from segtrain.data_plan import plan_data

    root = _write_binary(tmp_path / "d")  # 0/255 masks, images smaller than the 64 px crop
    cfg = compose_run(["data=folder", f"data.root={root}", *FAST, "data.crop_size=128"], tmp_path / "run",
                      synthetic=False)
    plan_data(cfg)
    # The losses and metrics skip the padding's reserved value; the files' 255 stays the foreground.
    assert cfg.ignore_index == 255 and cfg.data.ignore_index is None


# --- end to end: trains past the predict-everything level ---------------------------------------------


def _dice_everything(root: Path) -> float:
    """Dice of predicting foreground everywhere on the validation masks (2p / (1 + p))."""
    masks = [np.array(Image.open(m)) > 0 for m in sorted((root / "val" / "masks").glob("*.png"))]
    p = float(np.mean(np.concatenate([m.ravel() for m in masks])))
    return 2 * p / (1 + p)


def _best_dice(run: Path) -> float:
    import csv

    with open(run / "metrics.csv") as f:
        return max(float(r["val/dice"]) for r in csv.DictReader(f) if r.get("val/dice"))


E2E = ["data.num_workers=0", "data.batch_size=4", "data.crop_size=64", "trainer.max_epochs=6",
       "optimizer.lr=0.01", "callbacks.prediction_grid=null", "scheduler=none"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["microscopy_uint16", "nir_only_4_channels", "mixed_size_0_255"])
def test_trains_past_the_predict_everything_level(tmp_path, kind):
    sizes = [(64 + 8 * (i % 3), 64 + 16 * (i % 4)) for i in range(16)]
    if kind == "microscopy_uint16":  # background ~1000, cells +40, noise 6: one grey level in 8 bits
        root = write_sensor_dataset(tmp_path / "d", sizes, channels=1, dtype="uint16")
    elif kind == "nir_only_4_channels":  # the object shows in the 4th channel only
        root = write_sensor_dataset(tmp_path / "d", sizes, channels=4, object_channel=3)
    else:  # 8-bit RGB, 0/255 masks of mixed sizes below the crop, no ignore_index given
        root = write_sensor_dataset(tmp_path / "d", [(40 + 7 * i, 50 + 3 * i) for i in range(16)], channels=3,
                                    dtype="uint8", background=100, contrast=50, noise=12, image_format="png")
    run = tmp_path / "run"
    train(compose_run(["data=folder", f"data.root={root}", *E2E], run, synthetic=False))
    floor = _dice_everything(root)
    best = _best_dice(run)
    assert best > floor + 0.15, f"best val/dice {best:.3f} vs predict-everything {floor:.3f}"
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    assert fingerprint["images"]["count"] == 16


# --- layouts users already have --------------------------------------------------------------------------


def _write_cityscapes(root: Path) -> Path:
    """Cityscapes as downloaded: leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/.../*_gtFine_labelTrainIds.png."""
    rng = np.random.default_rng(0)
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for k in range(2):
                name = f"{city}_{k:06d}_000019"
                for folder in ("leftImg8bit", "gtFine"):
                    (root / folder / split / city).mkdir(parents=True, exist_ok=True)
                labels = rng.integers(0, 19, (6, 8), dtype=np.uint8).repeat(12, 0).repeat(12, 1)  # 72 x 96
                labels[:4] = 255  # the ego vehicle's bonnet: not evaluated
                image = (labels[..., None] * 12 + rng.integers(0, 20, (72, 96, 3))).astype(np.uint8)
                Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
                Image.fromarray(labels).save(root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png")
                # The other files of the download, which the suffix leaves out.
                Image.fromarray(labels).save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")
    return root


@pytest.mark.slow
def test_cityscapes_as_downloaded_trains_with_the_preset(tmp_path):
    root = _write_cityscapes(tmp_path / "cityscapes")
    run = tmp_path / "run"
    cfg = compose_run(["data=cityscapes", f"data.root={root}", "loss=ce_dice", "data.crop_size=64",
                       "data.num_workers=0", "data.batch_size=2", "callbacks.prediction_grid=null"], run, synthetic=False)
    assert (cfg.task, cfg.num_classes, cfg.ignore_index, cfg.data.images_dir) == ("multiclass", 19, 255, "leftImg8bit")
    train(cfg)
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "val/dice_road" in header and "val/dice_bicycle" in header
    fingerprint = json.loads((run / "fingerprint.json").read_text())
    assert fingerprint["splits"] == {"train": 4, "val": 2, "test": 0}
    # The same layout by hand, without the preset (the command in docs/training.md).
    cfg = compose_run(["data=folder", f"data.root={root}", "data.images_dir=leftImg8bit", "data.masks_dir=gtFine",
                       "data.image_suffix=_leftImg8bit.png", "data.mask_suffix=_gtFine_labelTrainIds.png",
                       "task=multiclass", "num_classes=19", "ignore_index=255"], tmp_path / "run2", synthetic=False)
    from segtrain.data_plan import plan_data

    assert plan_data(cfg)["splits"]["train"] == 4


def test_split_folders_missing_is_a_clear_error(tmp_path):
    from datamodules.layout import discover_splits

    root = _write_cityscapes(tmp_path / "cs")
    with pytest.raises(FileNotFoundError, match=r"(?s)data.masks_dir=gtFin.*does not exist.*train/ and val/"):
        discover_splits(root, task="multiclass", num_classes=19, images_dir="leftImg8bit", masks_dir="gtFin")
    with pytest.raises(FileNotFoundError, match=r"holds neither images/.*it holds gtFine, leftImg8bit.*data.images_dir"):
        discover_splits(root, task="multiclass", num_classes=19)


# --- predict and export apply the stored normalisation -------------------------------------------------


@pytest.mark.slow
def test_predict_and_export_apply_the_stored_normalisation(tmp_path):
    from datamodules.normalization import ClipZScore
    from scripts.predict import PredictArgs, predict
    from segtrain.inference import load_inference_model, parse_overrides, predict_images, read_image as read_input

    root = write_sensor_dataset(tmp_path / "d", ODD, channels=4, object_channel=3)
    run = tmp_path / "run"
    train(compose_run(["data=folder", f"data.root={root}", *FAST], run, synthetic=False))
    ckpt = run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["preprocessing"]
    assert stored["channels"] == 4 and stored["dtype"] == "uint16" and stored["normalization"]["mode"] == "dataset"
    model = load_inference_model(ckpt)
    (norm,) = [t for t in model.transform.transforms if isinstance(t, ClipZScore)]
    assert norm.mean == stored["normalization"]["mean"] and norm.upper == stored["normalization"]["upper"]

    images = tmp_path / "in"
    images.mkdir()
    nir = root / "val" / "images" / "s003.tif"
    (images / "s003.tif").write_bytes(nir.read_bytes())
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(images / "rgb.png")  # 3 channels for a 4-channel model
    args = parse_overrides(PredictArgs, [f"ckpt_path={ckpt}", f"input={images}", f"output={tmp_path / 'out'}",
                                         "trainer.accelerator=cpu"])
    predict(args)  # the RGB image is listed as failed, the TIFF predicted
    written = np.array(Image.open(tmp_path / "out" / "masks" / "s003.png"))
    assert written.shape == (88, 100) and not (tmp_path / "out" / "masks" / "rgb.png").exists()
    with pytest.raises(ValueError, match=r"rgb.png has 3 channel\(s\), but the model takes 4.*4-channel uint16"):
        read_input(str(images / "rgb.png"), model.preprocessing)
    assert Image.open(tmp_path / "out" / "overlays" / "s003.png").mode == "RGB"  # a 16-bit 4-band image, shown

    from scripts.export import ExportArgs, export

    out = export(parse_overrides(ExportArgs, [f"ckpt_path={ckpt}", f"output={tmp_path / 'm.onnx'}", "torchscript=null"]))
    config = json.loads((Path(out["weights"]) / "config.json").read_text())
    assert config["in_channels"] == 4 and config["_segtrain"]["input"]["normalization"] == stored["normalization"]
    exported = load_inference_model(out["weights"])
    image = read_input(str(images / "s003.tif"), exported.preprocessing)
    np.testing.assert_array_equal(predict_images(exported, [image])[0], written)  # same transform, same mask
