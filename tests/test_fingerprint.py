"""The dataset fingerprint (fingerprint/): what it records, the config checks, the cache and the report.

Data is written the way users' tools write it (uint16 and multi-band TIFFs from tifffile, RGB
PNGs, 0/255 and 0/1 masks, JPEG masks, odd sizes, 16-bit masks, multilabel <stem>_<k> files),
tiny, into tmp_path.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

import datamodules.io as dio
from fingerprint import Resolved, check_fingerprint, compute_fingerprint, summary_lines, write_fingerprint
from fingerprint.scan import PERCENTILES


def _rng(seed=0):
    return np.random.default_rng(seed)


def _rgb(path, h, w, seed=0):
    Image.fromarray(_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _mask(path, values, quality=None):
    image = Image.fromarray(values)
    image.save(path, **({"quality": quality} if quality else {}))
    return path


def _disc(h, w, on=255, dtype=np.uint8):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.where((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2, on, 0).astype(dtype)


def _dirs(root):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    return root / "images", root / "masks"


def _binary_set(root, sizes, on=255, split_at=None):
    """RGB PNGs with 0/``on`` disc masks of the given sizes; the last one is the val split."""
    images, masks = _dirs(root)
    pairs = [(_rgb(images / f"{i}.png", h, w, i), (_mask(masks / f"{i}.png", _disc(h, w, on)),))
             for i, (h, w) in enumerate(sizes)]
    split_at = len(pairs) - 1 if split_at is None else split_at
    return {"train": pairs[:split_at], "val": pairs[split_at:], "test": []}


def _fp(splits, **kw):
    return compute_fingerprint(splits, progress=False, **kw)


# --- what is recorded --------------------------------------------------------------------------------


def test_rgb_pngs_with_0_255_masks_of_odd_sizes(tmp_path):
    splits = _binary_set(tmp_path, [(77, 123), (301, 457), (40, 50)])
    fp = _fp(splits)
    json.dumps(fp, allow_nan=False)  # plain JSON types only
    assert fp["format"] == 1 and fp["splits"] == {"train": 2, "val": 1, "test": 0}
    images, masks = fp["images"], fp["masks"]
    assert images["count"] == 3 and images["channels"] == {"3": 3} and images["dtypes"] == {"uint8": 3}
    assert images["sizes"] == {"min": [40, 50], "median": [77, 123], "max": [301, 457]}  # per axis
    assert images["sizes_by_split"] == {"train": [[77, 123], [301, 457]], "val": [[40, 50]], "test": []}
    assert images["examples"]["channels"]["3"] == [str(p[0]) for p in splits["train"] + splits["val"]]
    assert masks["values"] == [0, 255] and masks["full"] == [255]
    train_masks = [np.array(Image.open(p[1][0])) for p in splits["train"]]
    assert masks["pixels"] == {"0": sum(int((m == 0).sum()) for m in train_masks),
                               "255": sum(int((m == 255).sum()) for m in train_masks)}
    assert masks["train_images"] == {"0": 2, "255": 2}
    assert masks["files"]["255"] == [str(p[1][0]) for p in splits["train"] + splits["val"]]
    assert masks["lossy"] == masks["size_mismatches"] == masks["unreadable"] == []
    assert fp["intensity"]["channels"] == 3 and fp["intensity"]["images"] == 2

    resolved = check_fingerprint(fp, task="auto", num_classes="auto")
    assert (resolved.task, resolved.num_classes, resolved.in_channels) == ("binary", 1, 3)
    assert resolved.warnings == [] and any("task=auto -> binary" in n for n in resolved.notes)
    lines = summary_lines(fp, resolved)
    assert 3 <= len(lines) <= 6 and "task=binary num_classes=1 in_channels=3" in lines[-1]
    assert "77x123" in lines[0] and "255:" in lines[3]


def test_percentiles_equal_numpy_when_every_pixel_is_sampled(tmp_path):
    """uint16 4-channel TIFFs with an opaque alpha channel: every pixel sampled, numpy's statistics."""
    images, masks = _dirs(tmp_path)
    arrays, pairs = [], []
    for i, (h, w) in enumerate([(30, 40), (25, 33)]):
        array = _rng(i).integers(100, 4000, (h, w, 4), dtype=np.uint16)
        array[..., 3] = 65535
        tifffile.imwrite(images / f"{i}.tif", array)
        arrays.append(array.reshape(-1, 4).astype(np.float64))
        pairs.append((images / f"{i}.tif", (_mask(masks / f"{i}.png", _disc(h, w, 1)),)))
    fp = _fp({"train": pairs, "val": []}, samples_per_image=10_000, percentiles=(1, 99))
    everything = np.concatenate(arrays)
    intensity = fp["intensity"]
    assert intensity["samples"] == len(everything) and intensity["channels"] == 4
    for p in PERCENTILES:
        np.testing.assert_allclose(intensity["percentiles"][f"{p:g}"], np.percentile(everything, p, axis=0))
    np.testing.assert_allclose(intensity["mean"], everything.mean(0))
    np.testing.assert_allclose(intensity["std"], everything.std(0))
    lo, hi = np.percentile(everything, 1, axis=0), np.percentile(everything, 99, axis=0)
    np.testing.assert_allclose(intensity["clip"]["lower"], lo)
    np.testing.assert_allclose(intensity["clip"]["mean"], np.clip(everything, lo, hi).mean(0))
    np.testing.assert_allclose(intensity["clip"]["std"], np.clip(everything, lo, hi).std(0))
    assert intensity["clip"]["percentiles"] == [1.0, 99.0] and intensity["constant_channels"] == [3]
    assert fp["images"]["dtypes"] == {"uint16": 2} and fp["masks"]["values"] == [0, 1]

    resolved = check_fingerprint(fp, task="binary", num_classes=1)
    assert resolved.in_channels == 4
    assert resolved.warnings == ["channel 3 is constant in every sampled pixel (an unused alpha channel?): "
                                 "data.channels=[0,1,2] drops it"]
    with pytest.raises(ValueError, match=r"model\.in_channels=3 but the images have 4 channels \(uint16\): set "
                                         r"model\.in_channels=4 or leave it unset \(null\)"):
        check_fingerprint(fp, task="binary", num_classes=1, in_channels=3)
    kept = check_fingerprint(fp, task="binary", num_classes=1, channels=[0, 1, 2])
    assert kept.in_channels == 3 and kept.warnings == []


def test_sampling_is_capped_and_seeded(tmp_path):
    splits = _binary_set(tmp_path, [(40, 50)] * 5)
    fp = _fp(splits, samples_per_image=1000, max_samples=100)
    assert fp["intensity"]["samples_per_image"] == 25 and fp["intensity"]["samples"] == 100  # 100 // 4 images
    assert _fp(splits, samples_per_image=1000, max_samples=100)["intensity"] == fp["intensity"]
    assert _fp(splits, samples_per_image=1000, max_samples=100, seed=1)["intensity"]["mean"] != fp["intensity"]["mean"]
    with pytest.raises(ValueError, match="percentiles must be"):
        _fp(splits, percentiles=(99, 1))


def test_thirteen_band_tiffs_and_the_summary(tmp_path):
    images, masks = _dirs(tmp_path)
    pairs = []
    bands = _rng(0).random((2, 24, 20, 13), dtype=np.float32)
    tifffile.imwrite(images / "s2_0.tif", np.moveaxis(bands[0], -1, 0))  # bands first, as rasterio writes them
    tifffile.imwrite(images / "s2_1.tif", bands[1], photometric="minisblack", planarconfig="contig")
    for i in range(2):
        pairs.append((images / f"s2_{i}.tif", (_mask(masks / f"s2_{i}.png", _disc(24, 20, 1) * (i + 1)),)))
    fp = _fp({"train": pairs, "val": []})
    assert fp["images"]["channels"] == {"13": 2} and fp["images"]["dtypes"] == {"float32": 2}
    assert len(fp["intensity"]["clip"]["mean"]) == 13
    resolved = check_fingerprint(fp, task="multiclass", num_classes="auto")
    assert (resolved.num_classes, resolved.in_channels) == (3, 13)
    intensity_line = summary_lines(fp)[2]
    assert "ch3" in intensity_line and "ch4" not in intensity_line and "+9 more" in intensity_line


def test_greyscale_among_rgb_is_a_note_and_sampled_as_rgb(tmp_path):
    splits = _binary_set(tmp_path, [(40, 50)] * 4)
    grey = tmp_path / "images" / "grey.png"
    Image.fromarray(_rng(9).integers(0, 256, (40, 50), dtype=np.uint8)).save(grey)
    splits["train"].append((grey, (_mask(tmp_path / "masks" / "grey.png", _disc(40, 50)),)))
    fp = _fp(splits)
    assert fp["images"]["channels"] == {"3": 4, "1": 1} and fp["intensity"]["channels"] == 3
    assert fp["intensity"]["images"] == 4 and fp["intensity"]["skipped"] == 0
    resolved = check_fingerprint(fp, task="binary", num_classes=1)
    assert resolved.in_channels == 3
    assert any("1 greyscale image(s) among 4 RGB ones are repeated to 3 channels" in n and "grey.png" in n
               for n in resolved.notes)


def test_different_channel_counts_name_the_counts_and_files(tmp_path):
    splits = _binary_set(tmp_path, [(40, 50)] * 3)
    rgba = tmp_path / "images" / "rgba.tif"
    tifffile.imwrite(rgba, _rng(3).integers(0, 256, (40, 50, 4), dtype=np.uint8))
    splits["train"].append((rgba, (_mask(tmp_path / "masks" / "rgba.png", _disc(40, 50)),)))
    fp = _fp(splits)
    assert fp["intensity"]["channels"] is None and fp["intensity"]["sampled_channels"] == 3
    assert fp["intensity"]["skipped"] == 1
    with pytest.raises(ValueError, match="different channel counts") as error:
        check_fingerprint(fp, task="binary", num_classes=1)
    message = str(error.value)
    assert "3 channel(s): 3 image(s)" in message and "4 channel(s): 1 image(s)" in message
    assert str(rgba) in message and "data.channels=[0, 1, 2]" in message
    assert check_fingerprint(fp, task="binary", num_classes=1, channels=[0, 1, 2]).in_channels == 3
    with pytest.raises(ValueError, match=r"data\.channels=\[0, 1, 2, 3\] selects channel 3"):
        check_fingerprint(fp, task="binary", num_classes=1, channels=[0, 1, 2, 3])


# --- the checks --------------------------------------------------------------------------------------


def test_every_problem_is_named_in_one_error(tmp_path):
    images, masks = _dirs(tmp_path)
    good = (_rgb(images / "good.png", 40, 50), (_mask(masks / "good.png", _disc(40, 50)),))
    jpeg = (_rgb(images / "jpeg.png", 40, 50, 1), (_mask(masks / "jpeg.jpg", _disc(40, 50), quality=75),))
    wrong = (_rgb(images / "wrong.png", 40, 50, 2), (_mask(masks / "wrong.png", _disc(41, 50)),))
    broken = images / "broken.png"
    _rgb(broken, 40, 50, 3)
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated copy
    truncated = (broken, (_mask(masks / "broken.png", _disc(40, 50)),))
    fp = _fp({"train": [good, jpeg, wrong, truncated], "val": []})
    masks_fp = fp["masks"]
    assert masks_fp["lossy"] == [str(masks / "jpeg.jpg")]
    assert masks_fp["size_mismatches"] == [[str(images / "wrong.png"), str(masks / "wrong.png"), [40, 50], [41, 50]]]
    assert [f for f, _ in masks_fp["unreadable"]] == [str(broken)]
    assert set(masks_fp["values"]) - {0, 255}  # JPEG noise: values of no class
    with pytest.raises(ValueError) as error:
        check_fingerprint(fp, task="binary", num_classes=1)
    message = str(error.value)
    assert "4 problem(s)" in message and message.count("\n\n") == 4
    assert "1 file(s) cannot be read" in message and str(broken) in message
    assert "masks must be lossless (PNG/TIFF): JPEG compression noise creates values of no class; re-save the " \
           "masks as PNG from the original labels" in message and str(masks / "jpeg.jpg") in message
    assert "differ in size from their image" in message and "wrong.png is 41x50" in message
    assert "fit no class of a binary task" in message and "threshold" in message


def test_multiclass_values_that_fit_no_class_and_auto(tmp_path):
    images, masks = _dirs(tmp_path)
    pairs = []
    for i, top in enumerate([2, 5]):
        mask = np.zeros((30, 40), np.uint8)
        mask[:10], mask[10:20] = 1, top
        pairs.append((_rgb(images / f"{i}.png", 30, 40, i), (_mask(masks / f"{i}.png", mask),)))
    fp = _fp({"train": pairs, "val": []})
    with pytest.raises(ValueError, match=r"Mask values \{5\} fit no class of task=multiclass num_classes=3") as error:
        check_fingerprint(fp, task="multiclass", num_classes=3)
    message = str(error.value)
    assert str(masks / "1.png") in message and str(masks / "0.png") not in message
    for fix in ("num_classes=6 (or num_classes=auto)", "ignore_index=5", "data.palette", "anti-aliased"):
        assert fix in message
    resolved = check_fingerprint(fp, task="auto", num_classes="auto")
    assert (resolved.task, resolved.num_classes) == ("multiclass", 6)
    assert resolved.warnings == ["class(es) 3, 4 appear in no training mask: the network never learns them (their "
                                 "validation Dice is 0 or undefined). Check num_classes and the split, or add "
                                 "training images holding them."]
    with pytest.raises(ValueError, match="ignore_index=1 is also class 1"):
        check_fingerprint(fp, task="multiclass", num_classes=6, ignore_index=1)


def test_ignore_index_that_swallows_the_foreground(tmp_path):
    fp = _fp(_binary_set(tmp_path / "a", [(30, 40)] * 3))
    with pytest.raises(ValueError, match="ignore_index=255 is also the foreground") as error:
        check_fingerprint(fp, task="binary", num_classes=1, ignore_index=255)
    assert "drop ignore_index (padding is excluded without it)" in str(error.value).lower()
    with pytest.raises(ValueError, match="ignore_index=255 is also the foreground"):
        check_fingerprint(fp, task="auto", num_classes="auto", ignore_index=255)  # auto resolves binary first

    images, masks = _dirs(tmp_path / "b")
    pairs = []
    for i in range(2):
        mask = _disc(30, 40, 1)
        mask[:3] = 255  # an unlabelled border
        pairs.append((_rgb(images / f"{i}.png", 30, 40, i), (_mask(masks / f"{i}.png", mask),)))
    fp = _fp({"train": pairs, "val": []})
    assert check_fingerprint(fp, task="binary", num_classes=1, ignore_index=255).task == "binary"
    assert check_fingerprint(fp, task="auto", num_classes="auto", ignore_index=255).num_classes == 1
    with pytest.raises(ValueError, match=r"hold 0, 1 and 255 together .* set ignore_index=255"):
        check_fingerprint(fp, task="binary", num_classes=1)
    resolved = check_fingerprint(fp, task="auto", num_classes="auto")  # 255 taken for a class ...
    assert (resolved.task, resolved.num_classes) == ("multiclass", 256)
    assert any("if 255 marks unlabelled pixels, set ignore_index=255" in w for w in resolved.warnings)  # ... flagged


def test_sixteen_bit_masks(tmp_path):
    images, masks = _dirs(tmp_path)
    pairs = [(_rgb(images / f"{i}.png", 30, 40, i), (_mask(masks / f"{i}.png", _disc(30, 40, 65535, np.uint16)),))
             for i in range(2)]
    fp = _fp({"train": pairs, "val": []})
    assert fp["masks"]["values"] == [0, 65535] and fp["masks"]["full"] == [65535]
    assert check_fingerprint(fp, task="auto", num_classes="auto").task == "binary"
    with pytest.raises(ValueError, match="ignore_index=65535 is also the foreground"):
        check_fingerprint(fp, task="binary", num_classes=1, ignore_index=65535)


def test_colour_masks_with_a_palette_and_without(tmp_path):
    images, masks = _dirs(tmp_path)
    colours = np.zeros((30, 40, 3), np.uint8)
    colours[:10] = (255, 0, 0)
    colours[10:20] = (0, 255, 0)
    pairs = [(_rgb(images / "c.png", 30, 40), (_mask(masks / "c.png", colours),))]
    fp = _fp({"train": pairs, "val": []}, palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0)])
    assert fp["masks"]["values"] == [0, 1, 2] and fp["masks"]["full"] == [1]
    assert check_fingerprint(fp, task="auto", num_classes="auto").num_classes == 3
    unpaletted = _fp({"train": pairs, "val": []})
    with pytest.raises(ValueError, match=r"cannot be read: .*c\.png: .*give data\.palette"):
        check_fingerprint(unpaletted, task="multiclass", num_classes=3)


def test_multilabel_triples(tmp_path):
    images, masks = _dirs(tmp_path)
    pairs = []
    for i in range(3):
        image = _rgb(images / f"{i}.png", 30, 40, i)
        labels = [_disc(30, 40, 255), np.full((30, 40), i % 2, np.uint8), np.zeros((30, 40), np.uint8)]
        pairs.append((image, tuple(_mask(masks / f"{i}_{k}.png", m) for k, m in enumerate(labels))))
    fp = _fp({"train": pairs, "val": []})
    labels = fp["masks"]["labels"]
    assert labels["0"]["train_images"] == 3 and labels["0"]["pixels"] == 3 * int((_disc(30, 40) > 0).sum())
    assert labels["1"]["train_images"] == 1 and labels["1"]["pixels"] == 30 * 40
    assert labels["2"]["train_images"] == 0 and fp["masks"]["files_per_image"] == [3]
    resolved = check_fingerprint(fp, task="multilabel", num_classes="auto", class_names=["cell", "edge", "dust"])
    assert resolved.num_classes == 3 and resolved.class_names == ["cell", "edge", "dust"]
    assert resolved.warnings[0].startswith("label(s) 2 (dust) appear in no training mask")
    with pytest.raises(ValueError, match=r"pairs each image with 2 masks .* \[3\] mask file\(s\)"):
        check_fingerprint(fp, task="multilabel", num_classes=2)


def test_class_names_from_labels_files(tmp_path):
    images, masks = _dirs(tmp_path / "d")
    mask = np.zeros((30, 40), np.uint8)
    mask[:10], mask[10:20] = 1, 2
    fp = _fp({"train": [(_rgb(images / "0.png", 30, 40), (_mask(masks / "0.png", mask),))], "val": []})
    txt = tmp_path / "labels.txt"
    txt.write_text("background\nroad\ncar\n")
    named = check_fingerprint(fp, task="auto", num_classes="auto", labels_file=txt)
    assert named.class_names == ["background", "road", "car"]
    as_json = tmp_path / "labels.json"
    as_json.write_text(json.dumps({"car": 2, "background": 0, "road": 1}))
    assert check_fingerprint(fp, task="multiclass", num_classes=3, labels_file=as_json).class_names[2] == "car"
    assert check_fingerprint(fp, task="multiclass", num_classes=3, labels_file=txt,
                             class_names=["a", "b", "c"]).class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"labels file .*labels\.txt has 3 names .* num_classes=4 needs 4"):
        check_fingerprint(fp, task="multiclass", num_classes=4, labels_file=txt)
    txt.write_text("background\n\nroad\n")
    with pytest.raises(ValueError, match="empty lines"):
        check_fingerprint(fp, task="multiclass", num_classes=3, labels_file=txt)


# --- cache and report --------------------------------------------------------------------------------


def test_cache_skips_reading_and_is_invalidated_by_a_touch(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    splits = _binary_set(data, [(40, 50), (30, 60), (50, 50)])
    before = sorted(p for p in data.rglob("*"))
    first = _fp(splits, cache_dir=cache)
    cached = list(cache.glob("fingerprint-*.json"))
    assert [p.name for p in cached] == [f"fingerprint-{first['key'][:16]}.json"]
    assert sorted(p for p in data.rglob("*")) == before  # nothing written next to the data

    calls = []

    def refuse(path, *args, **kwargs):
        calls.append(path)
        raise RuntimeError("read while cached")

    for name in ("read_image", "read_header", "read_mask_file"):
        monkeypatch.setattr(dio, name, refuse)
    assert _fp(splits, cache_dir=cache) == first and calls == []
    assert _fp(splits)["masks"]["unreadable"] and calls  # the patch does bite without the cache
    monkeypatch.undo()

    image = splits["train"][0][0]
    stat = os.stat(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = _fp(splits, cache_dir=cache)
    assert touched["key"] != first["key"] and len(list(cache.glob("fingerprint-*.json"))) == 2
    assert _fp(splits, cache_dir=cache, seed=1)["key"] != touched["key"]  # an option is part of the key

    corrupt = cache / f"fingerprint-{touched['key'][:16]}.json"
    corrupt.write_text('{"format": 1, "ke')
    assert _fp(splits, cache_dir=cache) == touched
    assert json.loads(corrupt.read_text()) == touched  # rewritten whole
    with pytest.raises(ValueError, match="never goes into the data folder"):
        _fp(splits, cache_dir=data / "images")


def test_write_fingerprint(tmp_path):
    fp = _fp(_binary_set(tmp_path / "d", [(30, 40), (30, 40)]))
    path = write_fingerprint(fp, tmp_path / "run")
    assert path == tmp_path / "run" / "fingerprint.json" and json.loads(path.read_text()) == fp
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["fingerprint.json"]  # no temporary left
    assert isinstance(check_fingerprint(fp, task="binary", num_classes=1), Resolved)
