"""The outputs of the 3D path: predicted volumes in the input's frame, mirror TTA over three axes,
3D evaluation with voxel spacing, and the pictures of volumes (slices through the largest object).

Everything is tiny (volumes of 16-24 voxels a side) and needs no trained checkpoint: the network
is a fixed callable or a small random MONAI DynUNet, and the references are computed here
independently (plain forward passes, MONAI's metric functions called directly).
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import nibabel
import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import load_script

from datamodules.volumes.io import read_volume, read_volume_header
from datamodules.volumes.synthetic import write_nnunet_dataset
from evaluation import Evaluator, score_image
from segtrain.callbacks import PredictionGrid
from segtrain.inference import InferenceModel
from segtrain.predict_volume import list_volume_cases, predict_volume, read_case, write_prediction
from segtrain.volume_pictures import pick_slices, volume_picture, volume_samples

SHAPE = (16, 24, 20)
SPACING = (2.0, 0.8, 0.8)
#: Per-channel specs as fingerprint/volumes.py gives them: CT window for channel 0, z-score for channel 1.
PRE = {"kind": "volume", "channels": 2, "spatial_dims": 3, "file_ending": ".nii.gz",
       "normalization": [{"mode": "ct", "lower": -1000.0, "upper": 1000.0, "mean": 0.0, "std": 500.0},
                         {"mode": "zscore"}]}
#: One window covering the whole volume: the sliding inference is then one plain forward pass.
WHOLE = {"window": list(SHAPE), "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 1}


def _threshold_net(image: torch.Tensor) -> torch.Tensor:
    """A fixed 'network' of 3 classes: background, then class 1 above 0.2, class 2 above 0.8 (channel 0)."""
    x = image[:, :1]
    return torch.cat([torch.zeros_like(x), (x - 0.2) * 10, (x - 0.5) * 20], dim=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_nnunet_dataset(tmp_path_factory.mktemp("nnunet"), cases=1, shape=SHAPE, spacing=SPACING,
                                channels=2, classes=3, test_cases=2)


def test_predicted_nifti_carries_the_inputs_shape_affine_and_header(dataset, tmp_path):
    from monai.networks.nets import DynUNet

    cases = list_volume_cases(dataset, channels=2)  # a dataset folder: its imagesTs/
    assert [c.case_id for c in cases] == ["test_000", "test_001"]
    torch.manual_seed(0)
    net = DynUNet(3, 2, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 16])
    # A window smaller than the volume in H and W, larger in D: MONAI pads D and blends overlapping windows.
    labels = predict_volume(net, cases[0].images, PRE, {"window": [24, 16, 16], "overlap": 0.5})
    assert labels.shape == SHAPE and labels.dtype == np.uint8 and labels.max() <= 2
    out = write_prediction(labels, tmp_path, cases[0])
    assert out == tmp_path / "test_000.nii.gz"
    source, written = nibabel.load(cases[0].images[0]), nibabel.load(out)
    np.testing.assert_array_equal(written.affine, source.affine)
    assert written.header.get_zooms() == source.header.get_zooms()
    assert written.header["qform_code"] == source.header["qform_code"]
    assert written.header["sform_code"] == source.header["sform_code"]
    back = read_volume(out)
    assert back.shape == SHAPE and back.spacing == SPACING
    np.testing.assert_array_equal(back.array, labels)


def test_predicted_tiff_keeps_shape_and_spacing_sidecar(tmp_path):
    root = write_nnunet_dataset(tmp_path / "tiff", cases=1, shape=SHAPE, spacing=SPACING, channels=1, classes=3,
                                test_cases=1, file_ending=".tif")
    (case,) = list_volume_cases(root / "imagesTs", channels=1)
    pre = {**PRE, "channels": 1, "normalization": PRE["normalization"][:1]}
    labels = predict_volume(_threshold_net, case.images, pre, WHOLE)
    out = write_prediction(labels, tmp_path / "out", case)
    assert out.name == "test_000.tif"
    assert json.loads((tmp_path / "out" / "test_000.json").read_text())["spacing"] == list(SPACING)
    back = read_volume(out)
    assert back.shape == SHAPE and back.spacing == SPACING
    x = torch.from_numpy(np.clip(read_volume(case.images[0]).array.astype(np.float32), -1000, 1000) / 500)
    expected = _threshold_net(x[None, None])[0].argmax(0).numpy()  # the CT normalisation by hand, one pass
    assert set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(back.array, expected)


def test_flip_tta_is_the_mean_of_the_eight_mirrored_passes(dataset):
    from datamodules.volumes.normalization import normalize_volume

    torch.manual_seed(1)
    net = torch.nn.Conv3d(2, 3, kernel_size=3, padding=1)  # random weights: mirrors change its output
    (case, _) = list_volume_cases(dataset, channels=2)
    got = predict_volume(net, case.images, PRE, WHOLE, tta="flip")
    raw, _ = read_case(case.images)
    x = torch.from_numpy(normalize_volume(raw, PRE["normalization"]))[None]
    axes = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    with torch.no_grad():
        probs = [torch.softmax(net(x.flip(a) if a else x), 1) for a in axes]
        mean = sum(p.flip(a) if a else p for p, a in zip(probs, axes)) / 8
        plain = net(x).argmax(1)[0].numpy()
    expected = mean.argmax(1)[0].numpy()
    np.testing.assert_array_equal(got, expected)
    assert (expected != plain).any()  # the TTA changed something: the test would see a missing mirror


def test_3d_scores_with_spacing_equal_monais_and_evaluator_rows_carry_it(tmp_path):
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    target = np.zeros((12, 20, 20), np.uint8)
    target[3:9, 5:14, 5:14] = 1
    pred = np.roll(target, (1, 2), axis=(0, 2))
    pred[10, 2, 2] = 1  # a stray voxel: the 95th percentile, not the maximum
    spacing, tolerance = (2.5, 0.7, 0.7), 1.5
    (row,) = score_image(pred, target, task="binary", num_classes=1, spacing=spacing, tolerance=tolerance)
    y_pred, y = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(target)[None, None].float()
    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)  # MONAI's own
    hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(y_pred, y, class_thresholds=[tolerance], include_background=True, spacing=list(spacing))
    assert row["hd95"] == pytest.approx(float(hd95)) and row["nsd"] == pytest.approx(float(nsd))
    inter = int((pred & target).sum())
    assert row["dice"] == pytest.approx(2 * inter / (int(pred.sum()) + int(target.sum())))  # spacing-free

    ev = Evaluator("multiclass", 3, class_names=["background", "blob", "tube"], tolerance=tolerance)
    two = target * 2
    ev.add("case_a", pred, target, spacing=spacing)
    ev.add("case_b", two, two, spacing=(1.0, 1.0, 1.0))
    ev.write(tmp_path)
    with open(tmp_path / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["image"], r["class_name"], r["spacing"]) for r in rows] == [
        ("case_a", "blob", "2.5 x 0.7 x 0.7"), ("case_a", "tube", "2.5 x 0.7 x 0.7"),
        ("case_b", "blob", "1 x 1 x 1"), ("case_b", "tube", "1 x 1 x 1")]
    assert float(rows[0]["hd95"]) == pytest.approx(float(hd95))
    assert json.loads((tmp_path / "summary.json").read_text())["image_spacing"]["case_a"] == list(spacing)
    with pytest.raises(ValueError, match="spacing"):
        ev.add("case_c", pred, target, spacing=(1.0, 1.0))


def test_slices_go_through_the_largest_object():
    mask = np.zeros((24, 16, 16), np.uint8)
    mask[2:15, 4:8, 4:8] = 1  # the largest object by volume (a column)...
    mask[9, 3:9, 3:9] = 1  # ...widest at z = 9
    mask[20, 2:14, 2:14] = 2  # a plate: a larger cross-section, but a smaller object
    assert pick_slices(mask, 1) == [9]
    chosen = pick_slices(mask, 3)
    assert 9 in chosen and len(chosen) == 3 and all(2 <= z <= 14 for z in chosen)
    assert pick_slices(np.zeros((10, 4, 4)), 3) == [2, 4, 7]  # nothing labelled: evenly spaced
    thin = np.zeros((10, 4, 4), np.uint8)
    thin[6] = 1
    assert pick_slices(thin, 3) == [5, 6, 7]  # a one-slice object: its neighbours
    # No target foreground: the slices follow the prediction.
    logits = torch.zeros(3, 24, 16, 16)
    logits[1] = torch.from_numpy(mask == 1).float() * 5
    samples = volume_samples(torch.randn(1, 24, 16, 16), torch.zeros(24, 16, 16, dtype=torch.long), logits,
                             "multiclass", "case", count=1)
    assert [name for *_, name in samples] == ["case z=9"]
    assert samples[0][0].dtype == torch.uint8 and samples[0][0].shape == (3, 16, 16)


def test_the_prediction_grid_shows_volumes_as_slices(tmp_path):
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=0, global_step=1,
                              loggers=[], datamodule=SimpleNamespace(class_names=None))
    module = SimpleNamespace(task="multiclass", num_classes=3, hparams={"ignore_index": 3},
                             predict_logits=lambda image: torch.randn(image.shape[0], 3, *image.shape[2:]))
    callback = PredictionGrid(dirpath=str(tmp_path), num_images=2, tile_size=1, slices_per_volume=2)
    for i in range(3):
        mask = torch.zeros(1, 12, 16, 16, dtype=torch.long)
        mask[0, 3 + i:8, 4:10, 4:10] = 1
        mask[0, 0] = 3  # ignored voxels are no object
        callback.on_validation_batch_end(trainer, module, None, {"image": torch.randn(1, 2, 12, 16, 16), "mask": mask,
                                                                 "name": [f"case_{i}"]}, i)
    callback.on_validation_epoch_end(trainer, module)
    rows = Image.open(tmp_path / "epoch_000.png").text["images"].splitlines()
    assert len(rows) == 4 and rows[0].startswith("case_0 z=") and rows[2].startswith("case_1 z=")


def test_volume_picture_for_predict(tmp_path):
    channel0 = np.random.default_rng(0).normal(0, 100, size=(10, 16, 16)).astype(np.int16)
    pred = np.zeros((10, 16, 16), np.uint8)
    pred[4:7, 3:9, 3:9] = 1
    plain = volume_picture(channel0, pred, num_classes=3, name="c", count=2, tile_size=16)
    with_truth = volume_picture(channel0, pred, num_classes=3, target=pred, name="c", count=2, tile_size=16)
    assert (plain.width, with_truth.width) == (6 + 2 * (16 + 6), 6 + 4 * (16 + 6))  # image|prediction (|target|errors)


def test_bad_inputs_are_clear_errors(dataset, tmp_path):
    from datamodules.volumes.io import VolumeReadError

    folder = tmp_path / "cases"
    folder.mkdir()
    for path in sorted((dataset / "imagesTs").glob("*")):
        if path.name != "test_001_0001.nii.gz":  # case test_001 misses its second channel
            (folder / path.name).write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"case test_001: channel 1 .*test_001_0001\.nii\.gz is missing"):
        list_volume_cases(folder, channels=2)
    with pytest.raises(ValueError, match="no channel suffix"):
        list_volume_cases(dataset / "labelsTr" / "case_000.nii.gz", channels=2)
    png = tmp_path / "slice.png"
    Image.new("L", (8, 8)).save(png)
    with pytest.raises(ValueError, match="slice.png is not a volume file"):
        list_volume_cases(png)
    with pytest.raises(FileNotFoundError, match=r"holds no volume file .*\.png"):
        list_volume_cases(tmp_path, channels=1)
    # Channels of different shapes: named, with the fix.
    other = tmp_path / "other_0001.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((20, 24, 8), np.int16), np.eye(4)), other)
    with pytest.raises(ValueError, match=r"different shapes: test_000_0000.nii.gz \(16, 24, 20\), other_0001.nii.gz"):
        read_case([dataset / "imagesTs" / "test_000_0000.nii.gz", other])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(VolumeReadError, match="broken.nii.gz"):
        predict_volume(_threshold_net, [broken], {**PRE, "channels": 1}, WHOLE)
    with pytest.raises(ValueError, match="takes 2 input channel"):
        predict_volume(_threshold_net, [broken], PRE, WHOLE)
    with pytest.raises(ValueError, match="window"):
        predict_volume(_threshold_net, [broken], {**PRE, "channels": 1}, {"window": [16, 16]})


def test_predict_script_writes_volumes_overlays_and_lists_unreadable_cases(dataset, tmp_path, capsys):
    predict = load_script("predict")
    folder = tmp_path / "in"
    folder.mkdir()
    for path in (dataset / "imagesTs").glob("test_000_*"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "test_009_0000.nii.gz").write_bytes(b"broken")
    (folder / "test_009_0001.nii.gz").write_bytes(b"broken")
    model = InferenceModel(net=torch.nn.Conv3d(2, 3, 1), task="multiclass", num_classes=3, transform=None,
                           config={"data": {}}, sliding_window=WHOLE, preprocessing=PRE)
    args = predict.parse_overrides(predict.PredictArgs, [f"ckpt_path={tmp_path}", f"input={folder}",
                                                         f"output={tmp_path / 'out'}", "tta=flip",
                                                         "trainer.accelerator=cpu"])
    written = predict.predict_volumes(args, [model])
    assert sorted(Path(p).relative_to(tmp_path / "out").as_posix() for p in written) == [
        "overlays/test_000.png", "test_000.nii.gz"]
    assert read_volume_header(tmp_path / "out" / "test_000.nii.gz").shape == SHAPE
    out = capsys.readouterr().out
    assert "Wrote masks of 1 volume(s)" in out and "case test_009" in out and "test_009_0000.nii.gz" in out
    with pytest.raises(ValueError, match="trainer.devices=2"):
        predict.volume_device(SimpleNamespace(accelerator="cpu", devices=2))
