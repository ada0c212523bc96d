"""The troubleshooting catalogue of the harness: every bad input a user can hit, and the message they get.

(The loss package's own argument checks are in tests/losses/test_bad_input.py.)

Each case feeds one mistake through the real entry points (the composed ``conf/train.yaml``,
``segtrain.run``, the datamodule the config builds, scripts/predict.py and scripts/export.py)
and checks that the error names the problem *and* the fix. the troubleshooting table
(docs/reliability.md, "Troubleshooting") lists the same cases in the same order.

Sections: configuration -> data on disk -> runtime (divergence) -> resume -> predict/export.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from PIL import Image
from reliability_helpers import (
    ExplodeLearningRate,
    compose_run,
    load_script,
    trained_checkpoint,
    write_images,
)

from segtrain.guards import DivergenceError
from segtrain.run import build_module, train, validate_config

# ===================================================================== configuration ======


def _check(overrides, tmp_path):
    """What train.py does before touching data: validate, then build the module."""
    cfg = compose_run(overrides, tmp_path / "run")
    validate_config(cfg)
    build_module(cfg)


def test_unknown_loss_name_lists_the_available_ones(tmp_path):
    with pytest.raises(MissingConfigException, match=r"(?s)Could not find 'loss/focl'.*Available options.*focal"):
        compose_run(["loss=focl"], tmp_path)


def test_loss_that_cannot_serve_the_task_fails_before_any_data(tmp_path):
    # data.root points nowhere: the loss error must come first (checked at start-up, no data read).
    cfg = compose_run(["task=multiclass", "num_classes=3", "loss=bce_dice", "data=folder", "data.root=/nonexistent"],
                      tmp_path / "run", synthetic=False)
    with pytest.raises(ValueError, match=r"'bce'.*cannot serve task=multiclass.*Use loss=ce_dice"):
        train(cfg)
    with pytest.raises(ValueError, match=r"'ce'.*cannot serve task=binary.*loss=bce_dice"):
        _check(["loss=ce_dice"], tmp_path)


def test_misspelt_weight_key(tmp_path):
    # Hydra refuses a key the term does not have ...
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'loss.terms.dice.wieght'"):
        compose_run(["loss.terms.dice.wieght=2"], tmp_path)
    # ... and forcing it in with + names the term's real options.
    with pytest.raises(ValueError, match=r"'dice'.*unknown option\(s\) \['wieght'\].*\+ weight"):
        _check(["+loss.terms.dice.wieght=2"], tmp_path)


def test_weight_for_a_term_that_is_not_selected(tmp_path):
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'loss.terms.focal.weight'"):
        compose_run(["loss.terms.focal.weight=2"], tmp_path)
    with pytest.raises(ValueError, match=r"'focal' has no _target_.*'loss/terms=\[\.\.\.,focal\]'"):
        _check(["+loss.terms.focal.weight=2"], tmp_path)


@pytest.mark.parametrize("weight", ["-1", "nan"])
def test_negative_or_nan_weight(tmp_path, weight):
    with pytest.raises(ValueError, match=r"loss.terms.dice.weight must be a number >= 0"):
        _check([f"loss.terms.dice.weight={weight}"], tmp_path)


def test_negative_class_count(tmp_path):
    with pytest.raises(ValueError, match=r"num_classes must not be negative, got num_classes=-2"):
        _check(["num_classes=-2"], tmp_path)


def test_binary_with_several_classes(tmp_path):
    with pytest.raises(ValueError, match=r"task=binary needs num_classes=1.*use task=multiclass"):
        _check(["num_classes=3"], tmp_path)


def test_unknown_architecture(tmp_path):
    with pytest.raises(ValueError, match=r"model.arch='unett' is not a segmentation-models-pytorch architecture.*unet"):
        _check(["model.arch=unett"], tmp_path)


# ===================================================================== data on disk =======


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _dataset(root: Path, n: int = 4, size: int = 32, task: str = "binary") -> Path:
    """A valid folder dataset: n RGB images with 0/255 (binary) or 0..2 index masks."""
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(root / "images" / f"s{i}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        top = 2 if task == "binary" else 3
        mask = rng.integers(0, top, (size, size)).astype(np.uint8)
        _png(root / "masks" / f"s{i}.png", mask * 255 if task == "binary" else mask)
    return root


def _folder(tmp_path, root, task="binary", num_classes=1, validate=True, extra=()):
    """Build the datamodule the way train.py does, and read every sample (validate=True)."""
    cfg = compose_run(
        [f"task={task}", f"num_classes={num_classes}", "loss=" + ("ce_dice" if task == "multiclass" else "bce_dice"),
         "data=folder", f"data.root={root}", "data.image_size=32", "data.batch_size=2", "data.num_workers=0",
         f"data.validate={str(validate).lower()}", *extra],
        tmp_path / "run", synthetic=False,
    )
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm


def test_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.root .*nowhere does not exist.*pass data.root=/path/to/dataset"):
        _folder(tmp_path, tmp_path / "nowhere")


def test_folder_without_images_subfolder(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds neither images/ \+ masks/ nor train/ \+ val/.*put the images in images/"):
        _folder(tmp_path, tmp_path / "data")


def test_empty_images_folder(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No images \(.png.*\) in .*images"):
        _folder(tmp_path, tmp_path / "data")


def test_image_without_mask(tmp_path):
    root = _dataset(tmp_path / "data")
    _png(root / "images" / "orphan.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"No mask for image .*orphan.png \(expected .*masks/orphan.png"):
        _folder(tmp_path, root)


def test_truncated_image_file(tmp_path):
    root = _dataset(tmp_path / "data")
    path = root / "images" / "s1.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"Cannot read .*s1.png.*truncated or not an image"):
        _folder(tmp_path, root)


def test_image_mask_size_mismatch_through_training(tmp_path):
    """Through train(): the fingerprint finds it before the first step, naming both files and both sizes."""
    root = _dataset(tmp_path / "data")
    _png(root / "masks" / "s2.png", np.zeros((16, 32), np.uint8))
    cfg = compose_run(
        ["data=folder", f"data.root={root}", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
         "data.val_fraction=0.25"],
        tmp_path / "run", synthetic=False,
    )
    with pytest.raises(ValueError, match=r"differ in size .*image .*s2.png is 32x32 but mask .*s2.png is 16x32"):
        train(cfg)


def test_binary_mask_with_values_of_no_class(tmp_path):
    root = _dataset(tmp_path / "data")
    _png(root / "masks" / "s0.png", np.full((32, 32), 7, np.uint8))
    with pytest.raises(ValueError, match=r"Mask .*s0.png has values \{7\} that fit no class.*0/1 or 0/255.*task=multiclass"):
        _folder(tmp_path, root)


def test_multiclass_mask_value_above_num_classes(tmp_path):
    root = _dataset(tmp_path / "data", task="multiclass")
    _png(root / "masks" / "s3.png", np.full((32, 32), 5, np.uint8))
    with pytest.raises(ValueError, match=r"s3.png has values \{5\} that fit no class.*0\.\.2.*Raise num_classes"):
        _folder(tmp_path, root, "multiclass", 3)


def test_lossy_jpeg_mask(tmp_path):
    root = _dataset(tmp_path / "data")
    (root / "masks" / "s0.png").unlink()
    yy, xx = np.mgrid[:32, :32]
    disc = (((yy - 15.3) ** 2 + (xx - 14.7) ** 2) < 81).astype(np.uint8) * 255  # round edges: JPEG rings them
    Image.fromarray(disc).save(root / "masks" / "s0.jpg", quality=50)
    with pytest.raises(ValueError, match=r"s0.jpg has values .* fit no class.*save masks as PNG"):
        _folder(tmp_path, root)


def test_sixteen_bit_mask(tmp_path):
    root = _dataset(tmp_path / "data")
    good = np.zeros((32, 32), np.uint16)
    good[:16] = 65535
    _png(root / "masks" / "s0.png", good)  # 0/65535: a valid 16-bit binary mask ...
    dm = _folder(tmp_path, root)
    assert dm.train_set is not None
    bad = good.copy()
    bad[:16] = 1000  # ... 0/1000 is not
    _png(root / "masks" / "s0.png", bad)
    with pytest.raises(ValueError, match=r"s0.png has values \{0, 1000\} that fit no class.*0/65535"):
        _folder(tmp_path, root)


def test_palette_mask(tmp_path):
    root = _dataset(tmp_path / "data", task="multiclass")
    index = np.zeros((32, 32), np.uint8)
    index[:, 16:] = 2
    p = Image.fromarray(index)
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0])
    p.save(root / "masks" / "s1.png")  # 'P' mode: its pixel values are class indices -> fine
    _folder(tmp_path, root, "multiclass", 3)
    index[0, 0] = 4
    p = Image.fromarray(index)
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0])
    p.save(root / "masks" / "s1.png")
    with pytest.raises(ValueError, match=r"s1.png has values \{4\} that fit no class"):
        _folder(tmp_path, root, "multiclass", 3)


def test_colour_mask_without_palette(tmp_path):
    root = _dataset(tmp_path / "data", task="multiclass")
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, 16:] = (255, 0, 0)
    _png(root / "masks" / "s2.png", rgb)
    with pytest.raises(ValueError, match=r"s2.png is a colour \(RGB\) image: give data.palette"):
        _folder(tmp_path, root, "multiclass", 3)


# ===================================================================== runtime ============


def test_diverging_run_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    explode = f"{ExplodeLearningRate.__module__}.ExplodeLearningRate"
    cfg = compose_run(["trainer.max_epochs=3", "data.num_samples=16", "data.batch_size=4",
                       f"+callbacks.explode._target_={explode}", "+callbacks.explode.epoch=1"], run)
    with pytest.raises(DivergenceError) as info:
        train(cfg)
    message = str(info.value)
    last = run / "checkpoints" / "last.ckpt"
    # 16 samples, val_fraction 0.2 -> 13 train samples -> 4 steps per epoch: epoch 0 ends at step 4.
    step = int(re.search(r"diverged at global step (\d+) \(epoch 1, batch \d+\)", message).group(1))
    assert step >= 4
    assert re.search(r"(training loss|gradient of \S+) is (not finite|nan|inf)", message), message
    assert f"The last checkpoint, {last}, is kept unchanged" in message
    assert "ckpt_path=" in message and "optimizer.lr" in message and "gradient_clip_val" in message
    # The checkpoint on disk is epoch 0's, with finite weights: resumable.
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


# ===================================================================== resume =============


def test_resume_from_a_missing_checkpoint(tmp_path):
    cfg = compose_run([f"ckpt_path={tmp_path / 'gone' / 'last.ckpt'}"], tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*gone/last.ckpt does not exist.*ckpt_path=latest"):
        train(cfg)


def test_resume_latest_without_any_run(tmp_path):
    cfg = compose_run(["ckpt_path=latest", f"paths.log_dir={tmp_path / 'logs'}"], tmp_path / "logs" / "runs" / "now")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=latest: no run under .*logs has a checkpoints/last.ckpt"):
        train(cfg)


def test_resume_with_another_task(tmp_path):
    ckpt = trained_checkpoint("binary", 1)
    cfg = compose_run([f"ckpt_path={ckpt}", "task=multiclass", "num_classes=3", "loss=ce_dice"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"task: trained with 'binary' but this run has 'multiclass'"):
        train(cfg)


def test_resume_from_a_truncated_checkpoint(tmp_path):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(trained_checkpoint("binary", 1).read_bytes()[:5000])
    cfg = compose_run([f"ckpt_path={cut}"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"not a readable PyTorch checkpoint \(truncated"):
        train(cfg)


# ===================================================================== predict / export ===


def _predict(*args: str):
    script = load_script("predict")
    return script.predict(script.parse_overrides(script.PredictArgs, list(args), required=("ckpt_path", "input")))


def _export(*args: str):
    script = load_script("export")
    return script.export(script.parse_overrides(script.ExportArgs, list(args), required=("ckpt_path",)))


def test_predict_with_a_missing_checkpoint(tmp_path):
    write_images(tmp_path / "in", [(32, 32)])
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope.ckpt does not exist.*checkpoints/last.ckpt"):
        _predict(f"ckpt_path={tmp_path / 'nope.ckpt'}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}")


def test_predict_on_a_folder_without_images(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    ckpt = trained_checkpoint("binary", 1)
    with pytest.raises(FileNotFoundError, match=r"input=.*in holds no image files \(.png.*Point input at the folder"):
        _predict(f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}")


def test_predict_on_a_missing_input(tmp_path):
    ckpt = trained_checkpoint("binary", 1)
    with pytest.raises(FileNotFoundError, match=r"input=.*missing does not exist. Give an image file or a folder"):
        _predict(f"ckpt_path={ckpt}", f"input={tmp_path / 'missing'}")


def test_predict_on_an_unreadable_image(tmp_path):
    ckpt = trained_checkpoint("binary", 1)
    (path,) = write_images(tmp_path / "in", [(32, 32)])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"Cannot read .*img0.png.*truncated or not an image"):
        _predict(f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}")


def test_predict_and_export_argument_mistakes(tmp_path):
    with pytest.raises(ValueError, match=r"input=\.\.\. is required. Accepted keys: ckpt_path=, input=, output="):
        _predict("ckpt_path=x.ckpt")
    with pytest.raises(ValueError, match=r"Bad argument: .*batchsize.*Accepted keys: .*batch_size="):
        _predict("ckpt_path=x.ckpt", "input=in", "batchsize=4")
    with pytest.raises(ValueError, match=r"'model.ckpt' is not key=value"):
        _export("model.ckpt")
    with pytest.raises(ValueError, match=r"ckpt_path=\.\.\. is required"):
        _export("output=m.onnx")


def test_export_with_a_size_the_network_cannot_take(tmp_path):
    ckpt = trained_checkpoint("binary", 1)
    with pytest.raises(ValueError, match=r"image_size=50x50: the network needs multiples of 32, e.g. image_size=32"):
        _export(f"ckpt_path={ckpt}", f"output={tmp_path / 'm.onnx'}", "image_size=50")


def test_checkpoint_from_elsewhere(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(ValueError, match=r"has no 'config' entry.*checkpoint written by train.py"):
        _export(f"ckpt_path={foreign}", f"output={tmp_path / 'm.onnx'}")
    assert not os.path.exists(tmp_path / "m.onnx")
