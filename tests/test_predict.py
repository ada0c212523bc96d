"""scripts/predict.py: masks at the original image size, restored from the checkpoint alone.

The reference for every mask is computed here independently of the script: the network's own
forward pass on the validation-transformed image, logits resized bilinearly to the image size,
then ``sigmoid > 0.5`` (binary, multilabel) or ``argmax`` (multiclass).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reliability_helpers import load_script, run_script, trained_checkpoint, write_images

from segtrain.callbacks import drawing_colors
from segtrain.inference import load_inference_model, postprocess_mask, predict_images, read_image

SIZES = [(40, 50), (64, 64), (33, 17), (32, 32), (100, 20)]


def _load_predict_script():
    return load_script("predict")


def _reference_mask(model, path) -> np.ndarray:
    """The mask written by hand: one pass, resize, threshold, then the postprocessing stored with the checkpoint."""
    image = read_image(str(path))
    x = model.transform(image=image)["image"].float()[None]
    with torch.no_grad():
        logits = model.net(x)
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    if model.task == "multiclass":
        mask = logits.argmax(0).numpy().astype(np.uint8)
    else:
        fg = (torch.sigmoid(logits) > 0.5).numpy().astype(np.uint8) * 255
        mask = fg[0] if model.task == "binary" else fg
    return postprocess_mask(mask, model.task, model.postprocessing)


@pytest.mark.slow
def test_predict_cli_folder_binary(tmp_path):
    """The command from docs/predict-export.md, on a folder of images of different sizes, modes and formats."""
    ckpt = trained_checkpoint("binary", 1)
    images = write_images(tmp_path / "in", SIZES)
    out = tmp_path / "out"
    run_script(["scripts/predict.py", f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={out}",
                "batch_size=2", "trainer.accelerator=cpu"])
    model = load_inference_model(ckpt)
    for path, (h, w) in zip(images, SIZES):
        mask = Image.open(out / "masks" / f"{path.stem}.png")
        assert mask.mode == "L" and mask.size == (w, h)  # PIL sizes are (width, height)
        values = np.array(mask)
        assert set(np.unique(values)) <= {0, 255}
        np.testing.assert_array_equal(values, _reference_mask(model, path))
        ovl = Image.open(out / "overlays" / f"{path.stem}.png")
        assert ovl.mode == "RGB" and ovl.width == w and ovl.height > h  # the image's size + the legend strip
        legend = np.asarray(ovl)[h:]
        assert (legend == 255).all(-1).mean() > 0.5  # a white strip ...
        assert (np.abs(legend.astype(int) - drawing_colors("binary", 1)[0]).sum(-1) == 0).any()  # ... with the class colour
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(f"{p.stem}.png" for p in images)


@pytest.mark.parametrize("task, num_classes", [("multiclass", 3), ("multilabel", 2)])
def test_predict_formats_per_task(tmp_path, task, num_classes):
    ckpt = trained_checkpoint(task, num_classes)
    images = write_images(tmp_path / "in", SIZES[:3])
    script = _load_predict_script()
    args = script.parse_overrides(
        script.PredictArgs, [f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
                             "batch_size=3", "trainer.accelerator=cpu"],
    )
    script.predict(args)
    model = load_inference_model(ckpt)
    for path, (h, w) in zip(images, SIZES):
        expected = _reference_mask(model, path)
        if task == "multiclass":
            mask = Image.open(tmp_path / "out" / "masks" / f"{path.stem}.png")
            # A palette PNG whose pixel values are the class indices.
            assert mask.mode == "P" and mask.size == (w, h)
            values = np.array(mask)
            assert values.max() < num_classes
            np.testing.assert_array_equal(values, expected)
        else:
            for k in range(num_classes):
                mask = Image.open(tmp_path / "out" / "masks" / f"{path.stem}_label{k}.png")
                assert mask.mode == "L" and mask.size == (w, h)
                np.testing.assert_array_equal(np.array(mask), expected[k])


def test_single_image_input_and_in_process_api(tmp_path):
    ckpt = trained_checkpoint("binary", 1)
    (image_path,) = write_images(tmp_path / "in", [(48, 40)])
    script = _load_predict_script()
    written = script.predict(script.parse_overrides(
        script.PredictArgs, [f"ckpt_path={ckpt}", f"input={image_path}", f"output={tmp_path / 'out'}", "overlay=false"]
    ))
    assert [p.rsplit("/", 2)[-2:] for p in written] == [["masks", "img0.png"]]
    model = load_inference_model(ckpt)
    (mask,) = predict_images(model, [read_image(str(image_path))])
    np.testing.assert_array_equal(np.array(Image.open(written[0])), mask)


@pytest.mark.slow
def test_predict_ddp_two_processes_each_image_once(tmp_path):
    """Two CPU ranks (gloo): each writes its share; together every image exactly once, same masks."""
    ckpt = trained_checkpoint("binary", 1)
    images = write_images(tmp_path / "in", SIZES)
    run_script(["scripts/predict.py", f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'ddp'}",
                "batch_size=1", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"])
    model = load_inference_model(ckpt)
    assert sorted(p.name for p in (tmp_path / "ddp" / "masks").iterdir()) == sorted(f"{p.stem}.png" for p in images)
    for path in images:
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "ddp" / "masks" / f"{path.stem}.png")),
                                      _reference_mask(model, path))


def test_predict_from_exported_weights_folder(tmp_path):
    """ckpt_path=<folder written by export.py>: the same masks as from the checkpoint."""
    from segtrain.pretrained import save_pretrained

    ckpt = trained_checkpoint("binary", 1)
    model = load_inference_model(ckpt)
    # As scripts/export.py writes it: the input, the window and the postprocessing chosen on validation.
    folder = save_pretrained(model.net, model.config, tmp_path / "weights", model.preprocessing, model.sliding_window,
                             model.postprocessing)
    images = write_images(tmp_path / "in", SIZES[:2])
    script = _load_predict_script()
    for source, out in ((ckpt, "a"), (folder, "b")):
        script.predict(script.parse_overrides(
            script.PredictArgs, [f"ckpt_path={source}", f"input={tmp_path / 'in'}", f"output={tmp_path / out}", "overlay=false"]
        ))
    for path in images:
        a = np.array(Image.open(tmp_path / "a" / "masks" / f"{path.stem}.png"))
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "b" / "masks" / f"{path.stem}.png")), a)
        np.testing.assert_array_equal(a, _reference_mask(model, path))


def _corrupt(folder, names):
    for name in names:
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a PNG signature, then nothing decodable


def test_unreadable_images_are_listed_and_the_rest_predicted(tmp_path, capsys):
    """20 images, one corrupt: 19 masks, the corrupt one named with its error, exit 0; strict=true fails."""
    ckpt = trained_checkpoint("binary", 1)
    write_images(tmp_path / "in", [(32 + i, 40) for i in range(19)])
    _corrupt(tmp_path / "in", ["broken.png"])
    script = _load_predict_script()
    common = [f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", "overlay=false", "batch_size=4"]
    script.main([*common, f"output={tmp_path / 'out'}"])  # returns: exit status 0
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert len(masks) == 19 and "broken.png" not in masks
    out = capsys.readouterr().out
    assert "1 image(s) could not be read" in out and "broken.png: ImageReadError: Cannot read" in out

    with pytest.raises(SystemExit) as exit_info:
        script.main([*common, f"output={tmp_path / 'strict'}", "strict=true"])
    assert exit_info.value.code == 1
    assert len(list((tmp_path / "strict" / "masks").iterdir())) == 19  # the readable ones are still written
    assert "strict=true" in capsys.readouterr().err


def test_nothing_readable_fails_the_job(tmp_path, capsys):
    ckpt = trained_checkpoint("binary", 1)
    (tmp_path / "in").mkdir()
    _corrupt(tmp_path / "in", ["a.png", "b.jpg"])
    with pytest.raises(SystemExit) as exit_info:
        _load_predict_script().main([f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "2 image(s) could not be read" in err and "no image could be predicted" in err
    assert not (tmp_path / "out" / "masks").exists()
