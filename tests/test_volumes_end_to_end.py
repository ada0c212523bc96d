"""Issue 26 end to end: an nnU-Net-style dataset of volumes trains, validates and predicts NIfTI.

One tiny run (a generated dataset of 2-channel anisotropic volumes with blobs and a rare tube, a
DynUNet of 4..16 filters, 2 epochs on CPU), shared by the tests of this module; then
scripts/predict.py on its imagesTs/. The start-up errors are checked in-process without training.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from reliability_helpers import compose_run, run_script

from datamodules.volumes.synthetic import write_nnunet_dataset
from segtrain.run import train

TINY_DATA = ("data=nnunet", "loss=dice_ce", "data.num_workers=0", "trainer.max_epochs=2", "callbacks.early_stopping=null")
TINY_3D = (*TINY_DATA, "model.base_filters=4", "model.max_levels=3")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_nnunet_dataset(tmp_path_factory.mktemp("nnunet") / "Dataset001_Tiny", cases=6, test_cases=2)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run3d") / "run"
    value = train(compose_run([*TINY_3D, f"data.root={dataset}"], run, synthetic=False))
    assert 0.0 <= value <= 1.0
    return run


@pytest.mark.slow
def test_volumes_train_and_validate_whole_volumes(trained, dataset):
    config = json.loads((trained / "fingerprint.json").read_text())
    assert config["spacing"]["median"] == [2.0, 0.8, 0.8]
    with open(trained / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/dice_tube") for r in rows)  # per-class metrics named from dataset.json
    per_image = (trained / "evaluation" / "per_image.csv").read_text()
    assert "case_" in per_image and "2 x 0.8 x 0.8" in per_image  # whole volumes, scored with their spacing


@pytest.mark.slow
def test_predicted_nifti_carry_the_inputs_geometry(trained, dataset, tmp_path):
    out = tmp_path / "pred"
    run_script(["scripts/predict.py", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
                f"input={dataset / 'imagesTs'}", f"output={out}"])
    inputs = sorted((dataset / "imagesTs").glob("*_0000.nii.gz"))
    assert len(inputs) == 2
    for image_file in inputs:
        case = image_file.name[: -len("_0000.nii.gz")]
        image, mask = nib.load(image_file), nib.load(out / f"{case}.nii.gz")
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


@pytest.mark.parametrize("overrides, message", [
    (["model=unet"], "model"),  # a 2D smp network with volumes
    (["model.base_filters=4", "data.crop_size=[64,64,64]", "data.pad=false"], "pad"),  # patch > every volume, no padding
    (["model.base_filters=4", "num_classes=5"], "num_classes=5"),
])
def test_bad_volume_configs_fail_at_startup(dataset, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(compose_run([*TINY_DATA, f"data.root={dataset}", *overrides], tmp_path / "run", synthetic=False))


def test_a_missing_label_fails_at_startup_naming_the_case(dataset, tmp_path):
    broken = tmp_path / "Dataset002_Broken"
    write_nnunet_dataset(broken, cases=3, test_cases=0)
    next((broken / "labelsTr").glob("*.nii.gz")).unlink()
    with pytest.raises((ValueError, FileNotFoundError), match="case_"):
        train(compose_run([*TINY_3D, f"data.root={broken}"], tmp_path / "run", synthetic=False))


def test_labels_outside_dataset_json_fail_at_startup(tmp_path):
    broken = write_nnunet_dataset(tmp_path / "Dataset003_Labels", cases=3, test_cases=0)
    label_file = sorted((broken / "labelsTr").glob("*.nii.gz"))[1]
    label = nib.load(label_file)
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 7  # dataset.json names 0, 1, 2
    nib.save(nib.Nifti1Image(values, label.affine, label.header), label_file)
    with pytest.raises(ValueError, match=label_file.name.split(".")[0]):
        train(compose_run([*TINY_3D, f"data.root={broken}"], tmp_path / "run", synthetic=False))


def _planar_dataset(root: Path) -> Path:
    """A 2D dataset in nnU-Net's layout: grey PNG cases of odd sizes with a square class."""
    from PIL import Image

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = (rng.random((70, 90)) * 60).astype(np.uint8)
        label = np.zeros((70, 90), np.uint8)
        y, x = rng.integers(10, 50, 2)
        label[y:y + 15, x:x + 20] = 1
        image[label == 1] += 120
        Image.fromarray(image).save(root / "imagesTr" / f"c{i:03d}_0000.png")
        Image.fromarray(label).save(root / "labelsTr" / f"c{i:03d}.png")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "grey"}, "labels": {"background": 0, "square": 1},
                                                   "numTraining": 6, "file_ending": ".png"}))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model", [["model=unet"], ["model.base_filters=4"]], ids=["smp_unet", "dynunet_2d"])
def test_a_2d_dataset_in_nnunet_layout_trains_with_2d_networks(tmp_path, model):
    root = _planar_dataset(tmp_path / "Dataset004_Planar")
    value = train(compose_run([*TINY_DATA, f"data.root={root}", "trainer.max_epochs=1", *model], tmp_path / "run",
                              synthetic=False))
    assert 0.0 <= value <= 1.0


def test_channel_files_of_different_shapes_fail_at_startup(tmp_path):
    broken = write_nnunet_dataset(tmp_path / "Dataset005_Channels", cases=3, test_cases=0)
    channel = sorted((broken / "imagesTr").glob("*_0001.nii.gz"))[0]
    image = nib.load(channel)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-2], image.affine, image.header), channel)
    with pytest.raises(ValueError, match=f"different shapes: .*{channel.name}"):
        train(compose_run([*TINY_3D, f"data.root={broken}"], tmp_path / "run", synthetic=False))


def test_the_volume_fingerprint_is_cached_until_a_case_file_changes(tmp_path, monkeypatch):
    import fingerprint.volumes as volumes
    from segtrain.data_plan import plan_data

    root = write_nnunet_dataset(tmp_path / "Dataset006_Cache", cases=3, test_cases=0)
    calls = []
    original = volumes.compute_volume_fingerprint
    monkeypatch.setattr(volumes, "compute_volume_fingerprint", lambda *a, **k: calls.append(1) or original(*a, **k))

    def plan():
        return plan_data(compose_run([*TINY_3D, f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}"],
                                     tmp_path / "run", synthetic=False), log_summary=False)

    first, second = plan(), plan()
    assert len(calls) == 1 and first == second  # the second start reads the cached one
    label = sorted((root / "labelsTr").glob("*.nii.gz"))[0]
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    plan()
    assert len(calls) == 2  # a changed case file: computed again
