"""Native resolution (issue 18): crop training, whole-image validation by sliding windows, predict at any size."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import FolderDataModule
from datamodules.crops import ClassCentredCrop, crop_stage, effective_crop
from datamodules.thin import write_thin_dataset
from segtrain.losses import build_loss
from segtrain.sliding import check_window, whole_image_logits
from segtrain.task import metric_kwargs
from tests.reliability_helpers import compose_run

ODD = [(101, 157), (75, 130), (140, 90), (97, 97), (120, 151)]


def _dm(root, **kw):
    args = dict(task="binary", num_classes=1, batch_size=2, num_workers=0, ignore_index=255, val_fraction=0.4)
    args.update(kw)
    return FolderDataModule(root, **args)


def test_crop_shrinks_to_largest_image_and_pads_with_ignore(tmp_path):
    root = write_thin_dataset(tmp_path / "d", ODD)
    dm = _dm(root)
    dm.setup("fit")
    train_sizes = [np.array(Image.open(i)).shape[:2] for i, _ in dm.train_pairs]
    largest = max(max(h, w) for h, w in train_sizes)
    assert dm.effective_crop == effective_crop(train_sizes, 512) == -(-largest // 32) * 32 < 512
    assert dm.sliding_window["window"] == dm.effective_crop
    sample = dm.train_set[0]
    assert tuple(sample["image"].shape[-2:]) == (dm.effective_crop,) * 2
    assert (sample["mask"] == 255).any()  # every image is smaller than the crop: padding, marked ignore
    assert set(torch.unique(sample["mask"]).tolist()) <= {0.0, 1.0, 255.0}


def test_padding_needs_no_ignore_index_and_crop_multiple_of_stride(tmp_path):
    root = write_thin_dataset(tmp_path / "d", ODD)
    dm = _dm(root, ignore_index=None)
    dm.setup("fit")  # padding no longer needs the user's ignore_index: the padded pixels get the reserved value
    assert dm.pad_value == 255
    pads = [t for t in dm.train_transform.transforms if type(t).__name__ == "PadIfNeeded"]
    assert pads and pads[0].fill_mask == 255
    with pytest.raises(ValueError, match="not a multiple of 32"):
        _dm(root, crop_size=100)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        check_window({"window": 48})


def test_padded_pixels_change_neither_loss_nor_metric():
    import torchmetrics

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    mask = (rng.random((40, 50)) > 0.7).astype(np.uint8)
    stage = __import__("albumentations").Compose(crop_stage(64, 255, 0.0), seed=0)
    out = stage(image=image, mask=mask)
    padded = out["mask"]
    valid = padded != 255
    assert valid.sum() == mask.size  # exactly the image's pixels are valid, the rest is marked ignore
    target = torch.from_numpy(padded).float()[None, None]
    logits = torch.randn(1, 1, 64, 64)
    rows, cols = np.nonzero(valid)
    r0, c0 = rows.min(), cols.min()
    inner_logits = logits[..., r0 : r0 + 40, c0 : c0 + 50]
    inner_target = target[..., r0 : r0 + 40, c0 : c0 + 50]
    assert (inner_target != 255).all()
    cfg = compose_run(["ignore_index=255"])
    loss = build_loss(cfg.loss, "binary", 1)
    torch.testing.assert_close(loss(logits, target), loss(inner_logits, inner_target))
    scores = []
    for lg, tg in ((logits, target), (inner_logits, inner_target)):
        metric = torchmetrics.F1Score(**metric_kwargs("binary", 1, 255))
        metric.update(lg, tg.long())
        scores.append(metric.compute())
    torch.testing.assert_close(scores[0], scores[1])


def test_one_window_equals_one_pass_and_any_size_comes_back():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    image = torch.randn(1, 3, 70, 90)
    options = check_window({"window": 128, "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2})
    torch.testing.assert_close(whole_image_logits(net, image, options), whole_image_logits(net, image, None))
    big = torch.randn(1, 3, 301, 457)
    out = whole_image_logits(net, big, {**options, "window": 64})
    assert out.shape == (1, 1, 301, 457)


def test_sw_batch_size_null_is_chosen_by_device_and_every_batch_size_gives_the_same_logits():
    from segtrain.sliding import sw_batch_size_for

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    image = torch.randn(1, 3, 301, 457)
    options = check_window({"window": 64})
    assert options["sw_batch_size"] is None
    assert sw_batch_size_for(torch.device("cpu")) == 1 and sw_batch_size_for(torch.device("cuda", 0)) == 4
    batches = []
    counting = lambda x: batches.append(x.shape[0]) or net(x)  # noqa: E731
    reference = whole_image_logits(counting, image, options)
    assert set(batches) == {1}  # on a CPU: one window per pass
    for size in (2, 4, 7):
        torch.testing.assert_close(whole_image_logits(net, image, {**options, "sw_batch_size": size}), reference)
    with pytest.raises(ValueError, match="sw_batch_size must be >= 1"):
        check_window({"window": 64, "sw_batch_size": 0})


def test_training_on_crops_validates_full_size_masks_and_predicts_input_size(tmp_path, monkeypatch):
    from scripts.predict import PredictArgs, predict
    from segtrain.inference import parse_overrides
    from segtrain.module import SegmentationModule
    from segtrain.run import train

    root = write_thin_dataset(tmp_path / "d", ODD)
    shapes: list[tuple[int, int]] = []
    step = SegmentationModule.validation_step

    def recording_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            shapes.append(tuple(batch["mask"].shape[-2:]))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "validation_step", recording_step)
    cfg = compose_run(["data=folder", f"data.root={root}", "ignore_index=255", "data.num_workers=0",
                       "data.batch_size=2", "data.val_fraction=0.4", "+trainer.limit_train_batches=2"],
                      tmp_path / "run", synthetic=False)
    train(cfg)
    dm = _dm(root)
    dm.setup("fit")
    expected = sorted(np.array(Image.open(m)).shape for _, (m,) in dm.val_pairs)
    assert sorted(shapes) == expected  # whole validation masks, at their original sizes
    # The picture shows every validation image whole (one per batch), not only the first batch's.
    picture = Image.open(tmp_path / "run" / "predictions" / "epoch_000.png")
    assert sorted(picture.text["images"].splitlines()) == sorted(i.stem for i, _ in dm.val_pairs)
    assert len(dm.val_pairs) == 2
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["inference"]["window"] == dm.effective_crop
    image = np.random.default_rng(1).integers(0, 255, (301, 457, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    args = parse_overrides(PredictArgs, [f"ckpt_path={ckpt}", f"input={tmp_path / 'x.png'}",
                                         f"output={tmp_path / 'out'}", "trainer.accelerator=cpu", "overlay=false"])
    predict(args)
    assert np.array(Image.open(tmp_path / "out" / "masks" / "x.png")).shape == (301, 457)


def test_suffix_pairing_recursive_and_clear_errors(tmp_path):
    from datamodules.folder import find_pairs

    root = tmp_path / "cs"
    for city in ("aachen", "bonn"):
        write_thin_dataset(tmp_path / "tmp" / city, [(40, 60)], seed=len(city))
        for kind, suffix in (("images", "_leftImg8bit.png"), ("masks", "_gtFine_labelTrainIds.png")):
            (root / kind / city).mkdir(parents=True)
            (tmp_path / "tmp" / city / kind / "s000.png").rename(root / kind / city / f"{city}_000{suffix}")
    pairs = find_pairs(root / "images", root / "masks", "binary", 1, "_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    assert [(i.parent.name, m.name) for i, (m,) in pairs] == [
        ("aachen", "aachen_000_gtFine_labelTrainIds.png"), ("bonn", "bonn_000_gtFine_labelTrainIds.png")]
    with pytest.raises(FileNotFoundError, match="ends with the suffix '_leftImg9bit.png'"):
        find_pairs(root / "images", root / "masks", "binary", 1, "_leftImg9bit.png", "_gtFine_labelTrainIds.png")
    (root / "masks" / "bonn" / "bonn_000_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"bonn_000_leftImg8bit.png \(expected .*bonn/bonn_000_gtFine"):
        find_pairs(root / "images", root / "masks", "binary", 1, "_leftImg8bit.png", "_gtFine_labelTrainIds.png")


def test_class_names_name_the_per_class_metrics(tmp_path):
    dm = _dm(write_thin_dataset(tmp_path / "d", ODD), task="multiclass", num_classes=2, class_names=["bg", "vessel"])
    assert dm.metric_class_names == ["bg", "vessel"] and dm.class_names == ["vessel"]
    with pytest.raises(ValueError, match="class_names has 1 names"):
        _dm(tmp_path, task="multiclass", num_classes=2, class_names=["bg"])


def test_cache_gives_the_same_samples(tmp_path):
    root = write_thin_dataset(tmp_path / "d", ODD)
    plain, cached = _dm(root, crop_size=None), _dm(root, crop_size=None, cache=True)
    for dm in (plain, cached):
        dm.setup("fit")
    for i in range(len(plain.val_set)):
        torch.testing.assert_close(plain.val_set[i]["mask"], cached.val_set[i]["mask"])
        torch.testing.assert_close(plain.val_set[i]["image"], cached.val_set[i]["image"])
    assert cached.train_set.load.nbytes > 0


def test_bench_data_runs_small_and_prints_its_verdicts(tmp_path, capsys):
    """scripts/bench_data.py end to end on a tiny case (the verdicts themselves depend on the machine)."""
    import cv2

    from scripts.bench_data import main

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    try:
        main([f"out={tmp_path}", "images=4", "size=96x64", "crop=64", "epochs=1", "sliding=200x130",
              "tiny_rounds=1", "unet=0", "fingerprint=6x64", "steps=1"])
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    out = capsys.readouterr().out
    assert out.count("training pipeline") == 4 and "mask value check" in out  # uint8 RGB and uint16 4-channel
    assert re.search(r"fingerprint of 6 images of 64x64: \S+ s first, \S+ s cached; one training epoch", out)
    assert out.count("uint16 4-channel TIFF against uint8 RGB") == 2
    rows = re.findall(r"sw_batch_size=[14]: .* windows (\d+) / \1 in (\d+) / \2 passes, max \|difference\| (\S+)", out)
    assert len(rows) == 2 and all(float(diff) < 1e-5 for *_, diff in rows)  # same windows, same logits
    assert len(re.findall(r"-> (PASS|FAIL) \(target <= 10%\)", out)) == 8  # 4 pipelines, 2 TIFF-vs-RGB, 2 sliding
    # derived targets: distance and skeleton, without and with the cache, then where the time goes
    # (and, without the cache, both kept on disk: the map store train.py uses)
    assert len(re.findall(r"derived target (distance|skeleton) .* -> (PASS|FAIL) \(target <= 30%\)", out)) == 6
    assert "where the time goes" in out and "distance map of the whole image" in out


# ----------------------------------------------------------------- class-centred crops ------


def _two_class_mask(channels: bool = False) -> np.ndarray:
    """200x300: a large class 1 (top-left quarter, 15000 px) and a tiny class 2 (3x3 px, far corner)."""
    mask = np.zeros((200, 300), np.uint8)
    mask[:100, :150] = 1
    mask[190:193, 290:293] = 2
    if channels:  # multilabel [H, W, C]: label 0 = the large region, label 1 = the tiny one
        return np.stack([mask == 1, mask == 2], axis=-1).astype(np.uint8)
    return mask


def _tiny_share(transform, mask: np.ndarray, n: int = 400) -> float:
    import albumentations as A

    pipeline = A.Compose([transform], seed=0)
    image = np.zeros((*mask.shape[:2], 3), np.uint8)
    hits = 0
    for _ in range(n):
        out = pipeline(image=image, mask=mask)
        assert out["image"].shape[:2] == out["mask"].shape[:2] == (32, 32)  # always the crop size
        tiny = out["mask"][..., 1] == 1 if mask.ndim == 3 else out["mask"] == 2
        hits += bool(tiny.any())
    return hits / n


def test_class_centred_crop_draws_the_class_uniformly_not_the_pixel():
    import albumentations as A

    # The tiny class is 9 of 15009 labelled pixels and 100+ px from the large one: a crop holds it only
    # when centred on it. Drawn per class, that is half the crops; drawn per pixel, almost never.
    for mask in (_two_class_mask(), _two_class_mask(channels=True)):
        assert 0.4 < _tiny_share(ClassCentredCrop(32, 32, ignore_index=255), mask) < 0.6
    assert _tiny_share(A.CropNonEmptyMaskIfExists(32, 32), _two_class_mask()) < 0.05
    # ignore_index is never a class; a mask without classes gives a random crop; a crop larger than the image says why.
    only_ignored = np.where(_two_class_mask() == 2, 255, 0).astype(np.uint8)
    assert _tiny_share(ClassCentredCrop(32, 32, ignore_index=255), only_ignored) == 0.0
    with pytest.raises(ValueError, match=r"32x32 \(WxH\) crop is larger than the 20x10 image: pad first"):
        A.Compose([ClassCentredCrop(32, 32)])(image=np.zeros((10, 20, 3), np.uint8), mask=np.zeros((10, 20), np.uint8))


def test_class_centred_crop_is_the_crop_stage_and_a_config_target():
    from hydra.utils import instantiate

    stage = crop_stage(64, 255, foreground_fraction=0.5)
    crops = stage[-1].transforms
    assert [type(t).__name__ for t in crops] == ["ClassCentredCrop", "RandomCrop"] and crops[0].p == 0.5
    made = instantiate({"_target_": "datamodules.crops.ClassCentredCrop", "height": 32, "width": 48, "ignore_index": 255})
    assert (made.height, made.width, made.ignore_index) == (32, 48, 255)
    assert "ClassCentredCrop(p=1.0, height=32, width=48, ignore_index=255)" == repr(made)


# -------------------------------------------------------------------------- data.pad -------


def test_pad_false_keeps_the_crop_and_needs_it_to_fit(tmp_path):
    sizes = [(101, 157), (75, 130), (140, 90), (97, 97)]
    root = write_thin_dataset(tmp_path / "d", sizes, split="train")
    write_thin_dataset(tmp_path / "d", [(80, 120), (64, 200)], split="val")
    # Every image is at least 64 px: no padding, no ignore_index needed, the crop is crop_size itself.
    dm = _dm(root, crop_size=64, pad=False, ignore_index=None)
    dm.setup("fit")
    assert dm.effective_crop == 64 and dm.sliding_window == {**dm.sliding_window, "window": 64, "pad": False}
    assert not any(type(t).__name__ == "PadIfNeeded" for t in dm.train_transform.transforms)
    for i in range(len(dm.train_set)):
        sample = dm.train_set[i]
        assert tuple(sample["image"].shape[-2:]) == (64, 64) and set(torch.unique(sample["mask"]).tolist()) <= {0.0, 1.0}
    # Larger than every image: the crop, the largest image and both fixes.
    with pytest.raises(ValueError, match=r"data.crop_size=256 is larger than every training image with data.pad=false: "
                       r"the largest, .*s000.png 157x101 \(WxH\), is smaller than the 256x256 crop. Fix: lower "
                       r"data.crop_size to 64 or less .*, or set data.pad=true \(images are then padded"):
        _dm(root, crop_size=256, pad=False).setup("fit")
    # Larger than some: the smallest image, named, with the count.
    with pytest.raises(ValueError, match=r"data.pad=false: training image .*s001.png is 130x75 \(WxH\), smaller than "
                       r"the 96x96 crop \(2 of 4 training images are\). Fix: lower data.crop_size to 64"):
        _dm(root, crop_size=96, pad=False).setup("fit")
    # scale_range shrinks images before the crop: its smallest factor counts.
    with pytest.raises(ValueError, match=r"130x75 \(WxH\) at the smallest rescale factor 0.7 \(data.scale_range\)"):
        _dm(root, crop_size=64, pad=False, scale_range=[0.7, 1.0]).setup("fit")
    # A validation image smaller than the window is found at start-up, not after an epoch.
    write_thin_dataset(tmp_path / "d", [(50, 70)], split="val", seed=3)  # overwrites val/s000.png
    with pytest.raises(ValueError, match=r"Validation image .*val/images/s000.png is 70x50 \(WxH\), smaller than the "
                       r"64x64 px sliding window, and data.pad=false does not pad: lower data.crop_size \(the window\) "
                       r"to 32 or less, or set data.pad=true"):
        _dm(root, crop_size=64, pad=False, ignore_index=None).setup("fit")
    with pytest.raises(ValueError, match="data.pad must be true or false"):
        _dm(root, pad="no")


def test_pad_false_window_refuses_a_small_image_by_name():
    net = torch.nn.Conv2d(3, 1, 1)
    options = check_window({"window": 64, "pad": False})
    assert whole_image_logits(net, torch.randn(1, 3, 64, 90), options).shape == (1, 1, 64, 90)
    with pytest.raises(ValueError, match=r"Image s007 is 90x40 \(WxH\), smaller than the 64x64 px sliding window"):
        whole_image_logits(net, torch.randn(1, 3, 40, 90), options, ["s007"])
    # pad on (the default, and what checkpoints without the key meant): padded, as before.
    assert whole_image_logits(net, torch.randn(1, 3, 40, 90), {**options, "pad": True}).shape == (1, 1, 40, 90)
    assert check_window({"window": 64})["pad"] is True


def test_crop_size_off_the_stride_fails_from_the_config(tmp_path):
    from segtrain.run import train

    root = write_thin_dataset(tmp_path / "d", ODD)
    cfg = compose_run(["data=folder", f"data.root={root}", "ignore_index=255", "data.crop_size=100"],
                      tmp_path / "run", synthetic=False)
    with pytest.raises(ValueError, match=r"data.crop_size=100 is not a multiple of 32: .*once per encoder stage.*Use e.g. 128"):
        train(cfg)
    cfg = compose_run(["data=folder", f"data.root={root}", "data.pad=maybe"], tmp_path / "run2", synthetic=False)
    with pytest.raises(ValueError, match="data.pad"):
        train(cfg)


def test_pad_false_run_predicts_with_a_progress_bar_and_refuses_small_images(tmp_path, capsys):
    from scripts.predict import PredictArgs, PredictionFailed, predict
    from segtrain.inference import parse_overrides
    from segtrain.run import train

    root = write_thin_dataset(tmp_path / "d", ODD)
    cfg = compose_run(["data=folder", f"data.root={root}", "data.pad=false", "data.crop_size=64", "data.num_workers=0",
                       "data.batch_size=2", "data.val_fraction=0.4", "+trainer.limit_train_batches=1",
                       "~callbacks.prediction_grid"], tmp_path / "run", synthetic=False)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["inference"] == {**torch.load(ckpt, weights_only=True)["inference"],
                                                                 "window": 64, "pad": False}
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    Image.fromarray(rng.integers(0, 255, (97, 131, 3), dtype=np.uint8)).save(tmp_path / "in" / "big.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "small.png")

    def run(source, *extra):
        return predict(parse_overrides(PredictArgs, [f"ckpt_path={ckpt}", f"input={source}", f"output={tmp_path / 'out'}",
                                                     "trainer.accelerator=cpu", "overlay=false", *extra]))

    capsys.readouterr()
    run(tmp_path / "in", "progress=true")
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "masks" / "big.png")).shape, (97, 131))
    err = capsys.readouterr().err
    assert "predicting (images)" in err and "1/1" in err  # the per-image bar (forced on: stderr is no terminal here)
    with pytest.raises(PredictionFailed, match=r"small.png is 50x40 \(WxH\), smaller than the 64x64 px sliding window.*"
                       r"trained with data.pad=false"):
        run(tmp_path / "small.png")
