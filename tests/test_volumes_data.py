"""Volumes (issue 26's first room): NIfTI/TIFF reading and writing, nnU-Net's raw layout, the volume fingerprint.

Tiny volumes (12 x 16 x 20): the whole file runs in a few seconds. Expected values come from nibabel,
tifffile and numpy directly, not from the code under test.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest
import tifffile

from datamodules.volumes import (Case, VolumeReadError, check_case, check_labels, find_cases, read_dataset_json,
                                 read_volume, read_volume_header, write_nnunet_dataset, write_volume)
from datamodules.volumes.synthetic import nnunet_case
from fingerprint.volumes import compute_volume_fingerprint, volume_summary_lines

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (12, 16, 20)
SPACING = (2.5, 0.75, 0.5)
AFFINE = np.array([[-0.5, 0, 0, 10.0], [0, -0.75, 0, -20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])


def _array(dtype, seed=0):
    values = np.random.default_rng(seed).integers(0, 200, size=SHAPE)
    return (values - 100 if np.dtype(dtype).kind == "i" else values).astype(dtype)


# --- io: NIfTI ----------------------------------------------------------------------------------------


def test_nifti_axes_are_z_y_x_and_spacing_follows_them(tmp_path):
    """nibabel's (x, y, z) array is read as [D, H, W] = (z, y, x); the zooms reversed the same way."""
    xyz = np.random.default_rng(1).integers(0, 1000, size=(20, 16, 12)).astype(np.int16)
    image = nibabel.Nifti1Image(xyz, AFFINE)
    image.header.set_zooms((0.5, 0.75, 2.5))
    nibabel.save(image, tmp_path / "a.nii.gz")
    volume = read_volume(tmp_path / "a.nii.gz")
    assert volume.shape == SHAPE and volume.array.flags.c_contiguous
    np.testing.assert_array_equal(volume.array, xyz.transpose(2, 1, 0))
    assert volume.spacing == SPACING
    np.testing.assert_allclose(volume.affine, AFFINE)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32"])
@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_shape_dtype_spacing_affine(tmp_path, dtype, ending):
    array = _array(dtype)
    path = write_volume(tmp_path / f"v{ending}", array, spacing=SPACING, affine=AFFINE)
    volume = read_volume(path)
    assert volume.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.spacing == SPACING
    np.testing.assert_allclose(volume.affine, AFFINE)
    head = read_volume_header(path)
    assert (head.shape, head.spacing, head.dtype) == (volume.shape, volume.spacing, volume.array.dtype.name)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_mask_written_like_an_input_gets_its_frame(tmp_path):
    """A scaled CT (raw uint16, intercept -1024): read as float32 HU; the mask gets its affine, spacing and
    header codes, but neither its scaling nor its display window."""
    raw = _array("uint16").transpose(2, 1, 0)
    image = nibabel.Nifti1Image(raw, AFFINE)
    image.header.set_zooms((0.5, 0.75, 2.5))
    image.header.set_slope_inter(1.0, -1024.0)
    image.header["cal_min"], image.header["cal_max"] = -1000, 1000
    nibabel.save(image, tmp_path / "ct.nii.gz")
    ct = read_volume(tmp_path / "ct.nii.gz")
    assert ct.array.dtype == np.float32
    np.testing.assert_array_equal(ct.array, raw.transpose(2, 1, 0).astype(np.float32) - 1024)
    mask = (ct.array > -950).astype(np.int64)  # an argmax's dtype
    write_volume(tmp_path / "mask.nii.gz", mask, ct)
    back = read_volume(tmp_path / "mask.nii.gz")
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)
    assert back.spacing == ct.spacing
    np.testing.assert_allclose(back.affine, ct.affine)
    on_disk = nibabel.load(tmp_path / "mask.nii.gz")
    assert on_disk.dataobj.slope == 1.0 and on_disk.dataobj.inter == 0.0
    assert on_disk.header["sform_code"] == image.header["sform_code"]
    assert float(on_disk.header["cal_max"]) == 0.0
    header_like = read_volume_header(tmp_path / "ct.nii.gz")  # predict writes from the header alone
    write_volume(tmp_path / "mask2.nii.gz", mask, header_like)
    np.testing.assert_allclose(read_volume(tmp_path / "mask2.nii.gz").affine, ct.affine)
    with pytest.raises(ValueError, match=r"shape \(12, 16, 19\).*resample or crop"):
        write_volume(tmp_path / "bad.nii.gz", mask[..., :19], ct)


def test_other_dtypes_become_pipeline_dtypes(tmp_path):
    xyz = np.arange(12 * 16 * 20, dtype=np.int32).reshape(20, 16, 12)
    nibabel.save(nibabel.Nifti1Image(xyz, np.eye(4)), tmp_path / "i32.nii.gz")
    assert read_volume(tmp_path / "i32.nii.gz").array.dtype == np.float32
    assert read_volume_header(tmp_path / "i32.nii.gz").dtype == "float32"
    nibabel.save(nibabel.Nifti1Image(xyz.astype(np.int8), np.eye(4)), tmp_path / "i8.nii")
    assert read_volume(tmp_path / "i8.nii").array.dtype == np.int16
    write_volume(tmp_path / "f64.nii.gz", np.zeros(SHAPE, np.float64))
    assert read_volume(tmp_path / "f64.nii.gz").array.dtype == np.float32


def test_spacing_without_like_comes_from_the_affine_and_must_agree_with_it(tmp_path):
    write_volume(tmp_path / "a.nii.gz", _array("uint8"), affine=AFFINE)
    assert read_volume(tmp_path / "a.nii.gz").spacing == SPACING
    with pytest.raises(ValueError, match=r"spacing \(1.0, 1.0, 1.0\) \(z, y, x\) disagrees with the affine"):
        write_volume(tmp_path / "b.nii.gz", _array("uint8"), spacing=(1, 1, 1), affine=AFFINE)


def test_unreadable_volumes_name_the_file(tmp_path):
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 6, 2), np.uint8), np.eye(4)), tmp_path / "4d.nii.gz")
    with pytest.raises(VolumeReadError, match=r"4d.nii.gz.*one file per channel"):
        read_volume_header(tmp_path / "4d.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(VolumeReadError, match="broken.nii.gz"):
        read_volume(tmp_path / "broken.nii.gz")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((16, 20), np.uint8))
    with pytest.raises(VolumeReadError, match=r"flat.tif.*2D TIFF"):
        read_volume(tmp_path / "flat.tif")
    with pytest.raises(ValueError, match=r"\.nrrd.*convert to \.nii\.gz"):
        read_volume(tmp_path / "x.nrrd")
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        read_volume(tmp_path / "absent.nii.gz")


# --- io: TIFF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32"])
def test_tiff_round_trip_with_the_spacing_sidecar(tmp_path, dtype):
    array = _array(dtype)
    write_volume(tmp_path / "case.tif", array, spacing=SPACING)
    assert json.loads((tmp_path / "case.json").read_text()) == {"spacing": list(SPACING)}  # nnU-Net's Tiff3DIO
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "case.tif"), array)
    volume = read_volume(tmp_path / "case.tif")
    assert volume.array.dtype == np.dtype(dtype) and volume.spacing == SPACING and volume.affine is None
    np.testing.assert_array_equal(volume.array, array)
    head = read_volume_header(tmp_path / "case.tif")
    assert (head.shape, head.spacing, head.dtype) == (SHAPE, SPACING, dtype)
    mask = (array > array.mean()).astype(np.uint8)
    write_volume(tmp_path / "out" / "case.tif", mask, volume)
    back = read_volume(tmp_path / "out" / "case.tif")
    assert back.spacing == SPACING and back.array.dtype == np.uint8


def test_tiff_channel_files_take_the_case_json_and_default_to_one(tmp_path):
    """nnU-Net: image case_0000.tif -> case.json; a label case.tif -> case.json; none: (1, 1, 1), noted."""
    tifffile.imwrite(tmp_path / "p_0001_0000.tif", _array("uint16"))
    assert read_volume_header(tmp_path / "p_0001_0000.tif").header["spacing_file"] is None
    assert read_volume(tmp_path / "p_0001_0000.tif").spacing == (1.0, 1.0, 1.0)
    (tmp_path / "p_0001.json").write_text(json.dumps({"spacing": list(SPACING)}))
    assert read_volume(tmp_path / "p_0001_0000.tif").spacing == SPACING
    (tmp_path / "p_0001.json").write_text(json.dumps({"spacing": [1, 2]}))
    with pytest.raises(ValueError, match=r"p_0001.json.*three positive numbers"):
        read_volume(tmp_path / "p_0001_0000.tif")


# --- the generated dataset and the layout ------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    return write_nnunet_dataset(tmp_path / "Dataset001", cases=4, shape=SHAPE, spacing=SPACING, test_cases=1)


@pytest.mark.parametrize("ending", [".nii.gz", ".tif"])
def test_generated_dataset_lists_its_cases_and_channels(tmp_path, ending):
    root = write_nnunet_dataset(tmp_path / "d", cases=4, shape=SHAPE, spacing=SPACING, test_cases=2,
                                file_ending=ending)
    info = read_dataset_json(root)
    assert info.channel_names == ("CT", "T2") and info.class_names == ("background", "blob", "tube")
    assert (info.num_classes, info.ignore_index, info.file_ending, info.dims) == (3, None, ending, 3)
    cases = find_cases(root, "Tr", info)
    assert [c.case_id for c in cases] == ["case_000", "case_001", "case_002", "case_003"]
    for case in cases:
        assert [p.name for p in case.images] == [f"{case.case_id}_0000{ending}", f"{case.case_id}_0001{ending}"]
        assert case.label == root / "labelsTr" / f"{case.case_id}{ending}"
        check_case(case, info)
        check_labels(case, info)
    ct, t2 = (read_volume(p) for p in cases[0].images)
    assert (ct.array.dtype, t2.array.dtype, ct.shape, ct.spacing) == (np.int16, np.float32, SHAPE, SPACING)
    test = find_cases(root, "Ts", info)
    assert [(c.case_id, c.label) for c in test] == [("test_000", None), ("test_001", None)]
    label = read_volume(cases[0].label).array
    assert set(np.unique(label)) == {0, 1, 2}


def test_generated_dataset_is_deterministic_by_seed(tmp_path):
    a = write_nnunet_dataset(tmp_path / "a", cases=2, shape=SHAPE, test_cases=0, seed=3)
    b = write_nnunet_dataset(tmp_path / "b", cases=2, shape=SHAPE, test_cases=0, seed=3)
    c = write_nnunet_dataset(tmp_path / "c", cases=2, shape=SHAPE, test_cases=0, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / files[0]).read_bytes() != (c / files[0]).read_bytes()


def _edit_json(root: Path, **changes):
    data = json.loads((root / "dataset.json").read_text())
    data.update(changes)
    (root / "dataset.json").write_text(json.dumps(data))


def test_missing_label_is_named(dataset):
    (dataset / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case case_002: label .*labelsTr/case_002.nii.gz is missing"):
        find_cases(dataset)


def test_missing_channel_is_named(dataset):
    (dataset / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case case_001: channel 1 \(T2\) .*case_001_0001.nii.gz is missing"):
        find_cases(dataset)


def test_image_without_channel_suffix_and_unnamed_channel_are_refused(dataset):
    images = dataset / "imagesTr"
    shutil.copy(images / "case_000_0001.nii.gz", images / "case_000_0002.nii.gz")
    with pytest.raises(ValueError, match=r"(?s)channel_names has 2.*case_000_0002.nii.gz: case case_000, channel 2"):
        find_cases(dataset)
    (images / "case_000_0002.nii.gz").rename(images / "case_009.nii.gz")
    with pytest.raises(ValueError, match=r"(?s)lack nnU-Net's 4-digit channel suffix.*case_009.nii.gz \(expected "
                                         r"case_009_0000.nii.gz"):
        find_cases(dataset)


def test_num_training_and_file_ending_must_match_the_files(dataset):
    _edit_json(dataset, numTraining=5)
    with pytest.raises(ValueError, match=r"numTraining=5, but .*imagesTr holds 4 case\(s\)"):
        find_cases(dataset)
    _edit_json(dataset, numTraining=4, file_ending=".nii")
    with pytest.raises(FileNotFoundError, match=r"no \*\.nii file.*\.nii\.gz files: fix file_ending"):
        find_cases(dataset)


def _replace(path: Path, array: np.ndarray) -> None:
    like = read_volume(path)
    write_volume(path, array, spacing=like.spacing, affine=like.affine)


def test_channels_of_different_shapes_are_named(dataset):
    info = read_dataset_json(dataset)
    case = find_cases(dataset, info=info)[1]
    _replace(case.images[1], np.zeros((12, 16, 19), np.float32))
    with pytest.raises(ValueError, match=r"Case case_001: channel files of different shapes: case_001_0000.nii.gz "
                                         r"\(12, 16, 20\), case_001_0001.nii.gz \(12, 16, 19\)"):
        check_case(case, info)


def test_label_shape_mismatch_is_named(dataset):
    info = read_dataset_json(dataset)
    case = find_cases(dataset, info=info)[0]
    _replace(case.label, np.zeros((11, 16, 20), np.uint8))
    with pytest.raises(ValueError, match=r"Case case_000: label .*case_000.nii.gz has shape \(11, 16, 20\) but the "
                                         r"image case_000_0000.nii.gz has \(12, 16, 20\)"):
        check_case(case, info)


def test_label_spacing_mismatch_is_named(dataset):
    info = read_dataset_json(dataset)
    case = find_cases(dataset, info=info)[0]
    write_volume(case.label, read_volume(case.label).array, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"has spacing \(1.0, 1.0, 1.0\) but the image"):
        check_case(case, info)


def test_label_values_outside_dataset_json_are_named(dataset):
    info = read_dataset_json(dataset)
    case = find_cases(dataset, info=info)[2]
    label = read_volume(case.label).array
    label[0, 0, :3] = 7
    _replace(case.label, label)
    with pytest.raises(ValueError, match=r"Case case_002: label .*case_002.nii.gz holds value\(s\) 7 \(3 voxels\) "
                                         r"that dataset.json's labels do not name \(0: background, 1: blob, 2: tube\)"):
        check_labels(case, info)


def test_ignore_label_is_the_ignore_index(dataset):
    _edit_json(dataset, labels={"background": 0, "blob": 1, "tube": 2, "ignore": 3})
    info = read_dataset_json(dataset)
    assert (info.ignore_index, info.num_classes) == (3, 3)
    case = find_cases(dataset, info=info)[0]
    label = read_volume(case.label).array
    label[:2] = 3
    _replace(case.label, label)
    check_labels(case, info)  # the ignore value is allowed
    _edit_json(dataset, labels={"background": 0, "blob": 1, "tube": 2, "ignore": 9})
    with pytest.raises(ValueError, match=r'"ignore" label must have the highest value.*\(3\), got 9'):
        read_dataset_json(dataset)


@pytest.mark.parametrize("change, message", [
    ({"labels": {"background": 0, "tumour": [1, 2]}}, r'"tumour" is the region \[1, 2\]: region-based labels .*not '
                                                       r"supported"),
    ({"regions_class_order": [1, 2]}, "region-based labels are not supported"),
    ({"labels": {"background": 0, "blob": 1, "tube": 3}}, r"consecutive 0, 1, 2 .* got \[0, 1, 3\]"),
    ({"labels": {"bg": 0, "blob": 1}}, '"background" must have the value 0'),
    ({"channel_names": {"0": "CT", "2": "T2"}}, r'"channel_names" keys must be "0", "1", ... with no gap'),
    ({"file_ending": ".nrrd"}, r'"file_ending" .*\.nrrd.* is not read here'),
])
def test_dataset_json_rules_are_named(dataset, change, message):
    _edit_json(dataset, **change)
    with pytest.raises(ValueError, match=message):
        read_dataset_json(dataset)


def test_missing_or_broken_dataset_json_is_named(dataset):
    data = json.loads((dataset / "dataset.json").read_text())
    del data["numTraining"]
    (dataset / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"dataset.json: missing key\(s\) numTraining"):
        read_dataset_json(dataset)
    (dataset / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"dataset.json is unreadable \(JSONDecodeError"):
        read_dataset_json(dataset)
    (dataset / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset.json does not exist: an nnU-Net raw dataset holds "
                                                r"dataset.json beside imagesTr/.*\(.* holds imagesTr, imagesTs, "
                                                "labelsTr\\)"):
        find_cases(dataset)


def test_modality_key_and_2d_datasets(dataset):
    data = json.loads((dataset / "dataset.json").read_text())
    data["modality"] = data.pop("channel_names")  # nnU-Net v1's key
    (dataset / "dataset.json").write_text(json.dumps(data))
    assert read_dataset_json(dataset).channel_names == ("CT", "T2")
    _edit_json(dataset, file_ending=".png")
    assert read_dataset_json(dataset).dims == 2


# --- the fingerprint ---------------------------------------------------------------------------------------


def _add_case(root: Path, case_id: str, shape, spacing, seed: int) -> None:
    images, label = nnunet_case(np.random.default_rng(seed), shape, spacing)
    for c, image in enumerate(images):
        write_volume(root / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", image, spacing=spacing)
    write_volume(root / "labelsTr" / f"{case_id}.nii.gz", label, spacing=spacing)


def test_fingerprint_matches_numpy(dataset):
    """Cases of several shapes and spacings; every foreground voxel sampled (tiny cases), so the CT clip and
    statistics are numpy's of all foreground voxels, the class counts np.bincount's."""
    _add_case(dataset, "case_100", (10, 18, 20), (3.0, 0.7, 0.7), 1)
    _add_case(dataset, "case_101", (14, 16, 22), (2.0, 0.9, 0.9), 2)
    _edit_json(dataset, numTraining=6)
    fp = compute_volume_fingerprint(dataset, progress=False, workers=2)
    json.dumps(fp, allow_nan=False)  # plain JSON
    info = read_dataset_json(dataset)
    cases = find_cases(dataset, info=info)
    shapes = [_nifti_shape(c.label) for c in cases]
    spacings = [nibabel.load(c.label).header.get_zooms()[::-1] for c in cases]
    np.testing.assert_array_equal(fp["shape"]["median"], np.median(shapes, axis=0))
    np.testing.assert_allclose(fp["spacing"]["median"], np.median(spacings, axis=0), rtol=1e-6)
    assert [c["shape"] for c in fp["cases"]] == [list(s) for s in shapes]
    labels = [np.asarray(nibabel.load(c.label).dataobj) for c in cases]
    cts = [np.asarray(nibabel.load(c.images[0]).dataobj) for c in cases]
    foreground = np.concatenate([ct[lab > 0] for ct, lab in zip(cts, labels)]).astype(np.float64)
    assert fp["samples_per_case"] >= max(int((lab > 0).sum()) for lab in labels)  # every voxel taken
    ct = fp["normalization"][0]
    assert ct["mode"] == "ct"
    assert ct["lower"] == np.percentile(foreground, 0.5) and ct["upper"] == np.percentile(foreground, 99.5)
    assert ct["mean"] == pytest.approx(foreground.mean()) and ct["std"] == pytest.approx(foreground.std())
    assert fp["normalization"][1] == {"mode": "zscore"}
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]))
    assert fp["classes"]["voxels"] == {str(v): int(n) for v, n in enumerate(counts)}
    assert fp["classes"]["cases"] == {str(v): sum(int((lab == v).any()) for lab in labels) for v in range(3)}
    lines = volume_summary_lines(fp)
    assert lines[0].startswith("volumes: 6 training cases, 2 channel(s) (CT, T2)")
    assert any(line.startswith("normalisation: ch0 CT: ct clip") for line in lines)


def _nifti_shape(path: Path) -> tuple[int, int, int]:
    """A NIfTI's [D, H, W] from nibabel: its (x, y, z) shape reversed."""
    return tuple(nibabel.load(path).shape[::-1])


def test_fingerprint_anisotropy_norm_names_ignore_and_sampling(tmp_path):
    root = write_nnunet_dataset(tmp_path / "d", cases=3, shape=SHAPE, spacing=(4.0, 1.0, 1.0), test_cases=0)
    _edit_json(root, channel_names={"0": "CT", "1": "noNorm"},
               labels={"background": 0, "blob": 1, "tube": 2, "ignore": 3})
    case = find_cases(root)[0]
    label = read_volume(case.label).array
    label[label == 0] = 3  # sparse annotation: every unlabelled voxel ignored, air included
    _replace(case.label, label)
    fp = compute_volume_fingerprint(root, progress=False, samples_per_case=50, seed=1)
    assert fp["anisotropy"] == {"ratio": 4.0, "anisotropic": True, "lowres_axis": 0, "threshold": 3.0}
    assert fp["normalization"][1] == {"mode": "none"}
    assert fp["intensity"][0]["samples"] == 150
    assert fp["normalization"][0]["lower"] > -900  # the ignored air is not foreground
    assert fp["classes"]["names"]["3"] == "ignore"
    assert fp == compute_volume_fingerprint(root, progress=False, samples_per_case=50, seed=1, workers=1)
    assert any("z is the low-resolution axis" in line for line in volume_summary_lines(fp))


def test_fingerprint_names_every_problem_at_once(dataset):
    info = read_dataset_json(dataset)
    cases = find_cases(dataset, info=info)
    label = read_volume(cases[0].label).array
    label[0, 0, 0] = 5
    _replace(cases[0].label, label)
    _replace(cases[1].images[1], np.zeros((12, 16, 19), np.float32))
    with pytest.raises(ValueError, match=r"(?s)2 problem\(s\).*Case case_000: label .* holds value\(s\) 5.*"
                                         r"Case case_001: channel files of different shapes"):
        compute_volume_fingerprint(cases, info, progress=False)
    with pytest.raises(ValueError, match="needs the DatasetInfo"):
        compute_volume_fingerprint(cases)
    with pytest.raises(ValueError, match="have no label"):
        compute_volume_fingerprint([Case("x", cases[0].images, None)], info)


# The datamodule itself (a LightningDataModule, Hydra-built MONAI transforms, the fingerprint read
# lazily as FolderDataModule does) may; the reading and sampling files below it may not.
READERS = ("io.py", "nnunet.py", "synthetic.py", "normalization.py", "sampler.py", "planning.py", "dataset.py")


def test_volumes_room_imports_no_harness():
    """The reading files of datamodules/volumes/ (a subfolder tests/test_layering.py's glob does not reach)
    import neither the harness, the fingerprint, Lightning nor Hydra: they read and sample files."""
    offending = []
    for path in sorted(p for p in (ROOT / "datamodules" / "volumes").glob("*.py") if p.name in READERS):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offending += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] in ("segtrain", "fingerprint", "lightning", "hydra", "omegaconf")]
    assert not offending, offending
