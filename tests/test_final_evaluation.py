"""Final predictions as the field makes them: TTA, postprocessing chosen on validation, ensembles, the end-of-fit tables."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from reliability_helpers import compose_run

from segtrain.postprocessing import apply_postprocessing, choose_postprocessing, largest_component
from segtrain.tta import average_predictions, check_tta, flips


def _symmetric_net(channels_out: int) -> torch.nn.Module:
    """A convolution whose kernel is symmetric under both flips: the network is flip-equivariant."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, channels_out, 3, padding=1)
    with torch.no_grad():
        w = conv.weight
        conv.weight.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
    return conv.eval()


@pytest.mark.parametrize(("task", "channels"), [("binary", 1), ("multiclass", 3), ("multilabel", 2)])
def test_flip_tta_of_an_equivariant_model_equals_the_plain_pass(task, channels):
    net = _symmetric_net(channels)
    image = torch.randn(2, 2, 24, 20)
    with torch.no_grad():
        plain = net(image)
        tta = average_predictions([net], image, task, "flip")
    if task == "multiclass":  # softmax logits are defined up to a constant per pixel
        torch.testing.assert_close(tta.softmax(1), plain.softmax(1), atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(tta, plain, atol=1e-4, rtol=1e-4)


def test_flip_tta_averages_four_mirrored_passes_in_probability_space():
    net = torch.nn.Conv2d(1, 1, 3, padding=1).eval()  # not equivariant: the average differs from the plain pass
    image = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        expected = sum(torch.sigmoid(net(image.flip(a) if a else image).flip(a) if a else net(image))
                       for a in [(), (-1,), (-2,), (-1, -2)]) / 4
        got = torch.sigmoid(average_predictions([net], image, "binary", "flip"))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert flips(3) == [(), (-1,), (-2,), (-3,), (-1, -2), (-1, -3), (-2, -3), (-1, -2, -3)]
    with pytest.raises(ValueError, match="tta='rotate'.*tta=flip"):
        check_tta("rotate")


def test_an_ensemble_of_one_is_the_model_and_of_two_copies_too():
    net = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    image = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(average_predictions([net], image, "multiclass"), net(image))  # bit for bit
        twice = average_predictions([net, net], image, "multiclass")
    assert torch.equal(twice.argmax(1), net(image).argmax(1))
    torch.testing.assert_close(twice.softmax(1), net(image).softmax(1), atol=1e-5, rtol=1e-5)


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius ** 2


def test_postprocessing_is_kept_only_where_it_raises_the_validation_dice():
    shape = (40, 40)
    # Class 1: one object per image, predicted with a stray blob -> the largest component helps.
    # Class 2: two objects per image, both predicted -> keeping one would hurt: not chosen.
    preds, targets = [], []
    for shift in range(3):
        target = np.zeros(shape, np.int32)
        target[_disc(shape, (10 + shift, 10), 5)] = 1
        target[_disc(shape, (30, 8 + shift), 3) | _disc(shape, (30, 30), 3)] = 2
        pred = target.copy()
        pred[_disc(shape, (5, 32), 2)] = 1  # a false positive of class 1
        preds.append(pred)
        targets.append(target)
    plan, report = choose_postprocessing(preds, targets, "multiclass", 3)
    assert plan == {"largest_component": [1]}
    assert report["1"]["kept"] and report["1"]["dice_largest_component"] > report["1"]["dice"]
    assert not report["2"]["kept"]
    cleaned = apply_postprocessing(preds[0], "multiclass", plan)
    assert (cleaned == targets[0]).all()  # the stray blob is gone, class 2 untouched
    assert largest_component(np.zeros(shape, bool)).sum() == 0


def test_the_end_of_fit_evaluation_writes_tables_logs_and_records_postprocessing(tmp_path):
    from segtrain.run import train

    run = tmp_path / "run"
    train(compose_run(["task=multiclass", "num_classes=3", "loss=ce_dice", "callbacks.prediction_grid=null",
                       "evaluation.tta=flip"], run))
    folder = run / "evaluation"
    for name in ("per_image.csv", "per_class.csv", "confusion.csv", "confusion.png", "summary.json",
                 "postprocessing.json"):
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "summary.json").read_text())
    rows = list(csv.DictReader(open(folder / "per_image.csv")))
    assert {int(r["class"]) for r in rows} == {1, 2} and len(rows) == 2 * summary["images"]
    assert all(np.isfinite(float(r["hd95"])) for r in rows)  # empty cases are defined, never NaN
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "final/val_dice" in header and "final/val_hd95" in header
    plan = json.loads((folder / "postprocessing.json").read_text())["plan"]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["postprocessing"] == plan


def test_bench_eval_runs_small_and_prints_its_figures(capsys):
    """scripts/bench_eval.py end to end on a tiny case (the figures themselves depend on the machine)."""
    from scripts.bench_eval import main

    threads = torch.get_num_threads()
    try:
        main(["size=64", "rounds=1", "image=64x64", "models=2"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "end-of-fit evaluation, binary 64x64" in out and ("-> PASS" in out or "-> FAIL" in out)
    assert out.count("against one plain pass") == 3


@pytest.mark.slow
def test_predict_an_ensemble_of_folds_with_tta_and_the_stored_postprocessing(tmp_path):
    """Two runs (the folds of a multirun folder) predict as one model: probabilities averaged, postprocessing agreed."""
    from scripts.predict import PredictArgs, predict
    from segtrain.inference import ensemble_postprocessing, load_inference_models, parse_overrides
    from segtrain.run import train
    from datamodules.sensor import write_sensor_dataset

    root = write_sensor_dataset(tmp_path / "d", [(64, 64 + 8 * i) for i in range(8)], channels=2, object_channel=1)
    multirun = tmp_path / "multirun"
    for fold in (0, 1):
        train(compose_run(["data=folder", f"data.root={root}", "data.folds=2", f"data.fold={fold}", "data.crop_size=64",
                           "data.num_workers=0", "data.batch_size=4", "callbacks.prediction_grid=null"],
                          multirun / str(fold), synthetic=False))
    models = load_inference_models(multirun)
    assert len(models) == 2 and all(m.postprocessing is not None for m in models)
    assert models[0].transform is not models[1].transform  # each fold normalises with its own statistics
    expected = ensemble_postprocessing(models)
    assert set(expected["largest_component"]) <= set(models[0].postprocessing["largest_component"])
    out = tmp_path / "out"
    args = parse_overrides(PredictArgs, [f"ckpt_path={multirun}", f"input={root / 'val' / 'images'}", f"output={out}",
                                         "tta=flip", "overlay=false", "trainer.accelerator=cpu"])
    written = predict(args)
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(
        p.with_suffix(".png").name for p in (root / "val" / "images").iterdir())
    assert len(written) == 2
    with pytest.raises(ValueError, match="tta='both'"):
        predict(parse_overrides(PredictArgs, [f"ckpt_path={multirun}", f"input={root}", "tta=both"]))


def test_tta_reaches_the_per_epoch_validation_only_when_asked(tmp_path):
    from segtrain.run import build_module

    assert build_module(compose_run(["evaluation.tta=flip"], tmp_path)).validation_tta is None
    cfg = compose_run(["evaluation.tta=flip", "evaluation.validation_tta=true"], tmp_path)
    assert build_module(cfg).validation_tta == "flip"
    with pytest.raises(ValueError, match="evaluation has no option"):
        from segtrain.final_evaluation import options

        options({"evaluation": {"ttta": "flip"}})
