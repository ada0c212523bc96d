"""evaluation/ and scripts/evaluate.py: hand-made cases, the empty-case rules, agreement with torchmetrics, the files.

The expected values are computed by hand (the squares, the broken line) or by torchmetrics on
the same pixels; the empty cases are the rules of ``evaluation.EMPTY_RULES``, never NaN.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import load_script
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_f1_score

from evaluation import FILES, HIGHER_IS_BETTER, METRICS, Evaluator, score_image

BINARY = {"task": "binary", "num_classes": 1}


def _squares(shift: int = 3, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two 20x20 squares, the prediction shifted down by ``shift`` rows."""
    target = np.zeros((size, size), np.uint8)
    target[10:30, 10:30] = 1
    pred = np.zeros_like(target)
    pred[10 + shift:30 + shift, 10:30] = 1
    return pred, target


def _finite(rows: list[dict]) -> bool:
    return all(math.isfinite(row[m]) for row in rows for m in METRICS if m in row)


# --- score_image: hand-made cases -------------------------------------------------------------------


def test_squares_offset_by_three_pixels():
    pred, target = _squares(3)
    (row,) = score_image(pred, target, **BINARY, tolerance=0)
    # Every boundary pixel of one square lies 0 or 3 from the other's boundary, and the
    # top and bottom rows (over 5 % of each boundary) lie exactly 3 away: HD95 = 3.
    assert row["hd95"] == 3.0
    # Dice by hand: 17 shared rows of 20 pixels, 400 pixels each.
    assert row["dice"] == pytest.approx(2 * 340 / 800) and row["iou"] == pytest.approx(340 / 460)
    assert row["precision"] == row["recall"] == pytest.approx(340 / 400)
    assert (row["gt_pixels"], row["pred_pixels"]) == (400, 400)
    # NSD at tolerance 0: the boundary pixels lying on the other boundary, i.e. the left and
    # right columns over the 17 shared rows, of both squares: 2 * 2 * 17 of 2 * 76 boundary pixels.
    assert row["nsd"] == pytest.approx(68 / 152)
    for tolerance in (3, 5):
        assert score_image(pred, target, **BINARY, tolerance=tolerance)[0]["nsd"] == 1.0
    assert score_image(pred, target, **BINARY, tolerance=2.9)[0]["nsd"] < 1.0


def test_spacing_turns_pixels_into_physical_units():
    pred, target = _squares(3)
    (row,) = score_image(pred, target, **BINARY, spacing=[2.0, 0.5], tolerance=5.9)
    assert row["hd95"] == pytest.approx(6.0) and row["nsd"] < 1.0  # 3 rows of 2 units each
    assert score_image(pred, target, **BINARY, spacing=[2.0, 0.5], tolerance=6.0)[0]["nsd"] == 1.0
    missed = score_image(np.zeros_like(pred), target, **BINARY, spacing=[2.0, 0.5])[0]
    assert missed["hd95"] == pytest.approx(math.hypot(64 * 2.0, 64 * 0.5))
    assert score_image(pred, target, **BINARY, spacing=0.5)[0]["hd95"] == 1.5  # one value: every axis


def test_volumes_are_scored_too():
    target = np.zeros((12, 32, 32), np.uint8)
    target[3:9, 8:20, 8:20] = 1
    pred = np.roll(target, 2, axis=1)
    (row,) = score_image(pred, target, **BINARY, tolerance=2)
    assert row["hd95"] == 2.0 and row["nsd"] == 1.0 and 0 < row["dice"] < 1
    block = np.zeros((6, 20, 20), np.uint8)
    block[2:5, 2:8, 2:8] = 1  # skimage's 3-D thinning erases this block: it stands for its own skeleton
    (same,) = score_image(block, block, **BINARY, topology=True)
    assert same["cldice"] == 1.0 and same["components_error"] == 0


def test_empty_cases_follow_the_rules_and_are_never_nan():
    pred, target = _squares(3)
    empty = np.zeros_like(target)
    diagonal = math.hypot(64, 64)
    missed = score_image(empty, target, **BINARY, topology=True)[0]
    assert (missed["dice"], missed["iou"], missed["precision"], missed["recall"]) == (0, 0, 1, 0)
    assert missed["hd95"] == pytest.approx(diagonal) and missed["nsd"] == 0 and missed["cldice"] == 0
    assert missed["components_error"] == 1
    invented = score_image(pred, empty, **BINARY, topology=True)[0]
    assert (invented["dice"], invented["iou"], invented["precision"], invented["recall"]) == (0, 0, 0, 1)
    assert invented["hd95"] == pytest.approx(diagonal) and invented["nsd"] == 0 and invented["cldice"] == 0
    both = score_image(empty, empty, **BINARY, topology=True)[0]
    assert (both["dice"], both["iou"], both["precision"], both["recall"], both["nsd"], both["cldice"]) == (1,) * 6
    assert both["hd95"] == 0 and both["components_error"] == 0
    assert _finite([missed, invented, both])


def test_absent_classes_and_ignored_pixels_never_give_nan():
    target = np.zeros((48, 48), np.uint8)
    target[5:20, 5:20] = 1
    target[30:45, 30:45] = 255  # unlabelled
    pred = target.copy()
    pred[pred == 255] = 2  # class 2 predicted only where nothing is labelled
    rows = score_image(pred, target, task="multiclass", num_classes=4, ignore_index=255, topology=True)
    assert [row["class"] for row in rows] == [1, 2, 3]  # the background is left out
    one, two, three = rows
    assert one["dice"] == 1.0 and one["hd95"] == 0.0
    for row in (two, three):  # absent on both sides once the ignored pixels count nowhere
        assert (row["dice"], row["hd95"], row["nsd"], row["gt_pixels"], row["pred_pixels"]) == (1, 0, 1, 0, 0)
    assert _finite(rows)
    labels = np.stack([target == 1, target == 2]).astype(np.uint8)  # uint8 [C, H, W] holding 255
    labels[:, 30:45, 30:45] = 255
    ml_pred = np.stack([target == 1, np.ones_like(target, bool)]).astype(np.uint8)
    ml_rows = score_image(ml_pred, labels, task="multilabel", num_classes=2, ignore_index=255)
    assert ml_rows[0]["dice"] == 1.0
    # label 1: predicted everywhere, absent everywhere labelled -> the invented-object rule
    assert ml_rows[1]["pred_pixels"] == 48 * 48 - 15 * 15 and ml_rows[1]["precision"] == 0 and _finite(ml_rows)
    single = score_image(ml_pred[:1], labels[:1], task="multilabel", num_classes=1, ignore_index=255)
    assert [r["class"] for r in single] == [0] and single[0]["dice"] == 1.0


def test_topology_counts_a_broken_line():
    target = np.zeros((32, 64), np.uint8)
    target[15:17, 4:60] = 1
    broken = target.copy()
    broken[:, 30:33] = 0
    (row,) = score_image(broken, target, **BINARY, topology=True)
    assert row["components_error"] == 1 and row["cldice"] < 1
    (same,) = score_image(target, target, **BINARY, topology=True)
    assert same["cldice"] == 1.0 and same["components_error"] == 0
    diagonal = np.eye(32, dtype=np.uint8)  # one structure, linked by corners only
    assert score_image(diagonal, diagonal[::-1].copy(), **BINARY, topology=True)[0]["components_error"] == 0


def test_metric_table_and_directions():
    assert METRICS == ("dice", "iou", "precision", "recall", "hd95", "nsd", "cldice", "components_error")
    assert set(HIGHER_IS_BETTER) == set(METRICS)
    assert not HIGHER_IS_BETTER["hd95"] and not HIGHER_IS_BETTER["components_error"] and HIGHER_IS_BETTER["nsd"]


@pytest.mark.parametrize("kwargs, pred, target, match", [
    ({"task": "binary", "num_classes": 1, "ignore_index": 1}, None, None, "ignore_index=1 is also a class"),
    ({"task": "binary", "num_classes": 1, "spacing": [1, 1, 1]}, None, None, "spacing=.* 3 axes .* 2 spatial"),
    ({"task": "binary", "num_classes": 1, "tolerance": -1}, None, None, "tolerance must be"),
    ({"task": "binary", "num_classes": 1}, np.zeros((8, 8), np.float32), None, "float32 array"),
    ({"task": "binary", "num_classes": 1}, np.zeros((8, 9), np.uint8), None, r"shape \(8, 9\) but target .* \(8, 8\)"),
    ({"task": "binary", "num_classes": 1}, np.full((8, 8), 255, np.uint8), None, r"pred has values \{255\}"),
    ({"task": "multiclass", "num_classes": 3}, None, np.full((8, 8), 7, np.uint8), r"target has values \{7\}"),
    ({"task": "multilabel", "num_classes": 3}, np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8),
     "C=3 labels, got 2"),
])
def test_bad_input_is_a_clear_error(kwargs, pred, target, match):
    pred = np.zeros((8, 8), np.uint8) if pred is None else pred
    target = np.zeros((8, 8), np.uint8) if target is None else target
    with pytest.raises(ValueError, match=match):
        score_image(pred, target, **kwargs)


# --- Evaluator: agreement with torchmetrics, the files ----------------------------------------------


def _blobs(seed: int, classes: int = 4, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A multiclass target of rectangles (every class present) and a prediction with some pixels changed."""
    rng = np.random.default_rng(seed)
    target = np.zeros((size, size), np.uint8)
    for c in range(1, classes):
        r, q = rng.integers(0, size - 12, 2)
        target[r:r + 12, q:q + 12] = c
    pred = target.copy()
    flip = rng.random(target.shape) < 0.15
    pred[flip] = rng.integers(0, classes, int(flip.sum()))
    target[:2] = 255
    return pred, target


def test_multiclass_rows_pooled_dice_and_matrix_agree_with_torchmetrics():
    ev = Evaluator("multiclass", 4, class_names=["bg", "a", "b", "c"], ignore_index=255)
    pairs = [_blobs(seed) for seed in range(3)]
    for i, (pred, target) in enumerate(pairs):
        rows = ev.add(f"im{i}", pred, target)
        f1 = multiclass_f1_score(torch.from_numpy(pred)[None].long(), torch.from_numpy(target)[None].long(), 4,
                                 average=None, ignore_index=255, zero_division=1)
        assert [r["class_name"] for r in rows] == ["a", "b", "c"]
        assert [r["dice"] for r in rows] == pytest.approx(f1[1:].tolist())
    preds = torch.from_numpy(np.stack([p for p, _ in pairs])).long()
    targets = torch.from_numpy(np.stack([t for _, t in pairs])).long()
    pooled = multiclass_f1_score(preds, targets, 4, average=None, ignore_index=255, zero_division=1)
    assert list(ev.pooled_dice().values()) == pytest.approx(pooled[1:].tolist())
    expected = multiclass_confusion_matrix(preds, targets, 4, ignore_index=255).numpy()
    np.testing.assert_array_equal(ev.matrix, expected)
    per_class = ev.per_class()
    assert [e["dice_pooled"] for e in per_class] == pytest.approx(pooled[1:].tolist())
    assert [e["images"] for e in per_class] == [3, 3, 3]


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_write_gives_the_documented_files_and_consistent_means(tmp_path):
    ev = Evaluator("binary", 1, class_names=["vessel"], topology=True)
    pred, target = _squares(3)
    ev.add("shifted", pred, target)
    ev.add("missed", np.zeros_like(target), target)
    ev.add("empty", np.zeros_like(target), np.zeros_like(target))
    summary = ev.write(tmp_path / "out" / "evaluation")
    folder = tmp_path / "out" / "evaluation"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # no temporary file left behind
    metrics = list(METRICS)
    per_image = _read_csv(folder / "per_image.csv")
    assert list(per_image[0]) == ["image", "class", "class_name", *metrics, "gt_pixels", "pred_pixels"]
    assert [r["image"] for r in per_image] == ["shifted", "missed", "empty"]
    assert {r["class_name"] for r in per_image} == {"vessel"}
    per_class = _read_csv(folder / "per_class.csv")
    assert list(per_class[0]) == ["class", "class_name", "images",
                                  *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), "dice_pooled"]
    for m in metrics:
        mean = np.mean([float(r[m]) for r in per_image])
        assert summary["metrics"][m] == pytest.approx(mean) == float(per_class[0][f"{m}_mean"])
        assert summary["per_class"]["vessel"][m] == pytest.approx(mean)
    assert ev.summary() == summary["metrics"]
    on_disk = json.loads((folder / "summary.json").read_text())
    assert on_disk == summary
    assert set(on_disk) == {"images", "task", "metrics", "per_class", "tolerance", "spacing", "empty_rules"}
    assert on_disk["images"] == 3 and on_disk["task"] == "binary" and on_disk["spacing"] is None
    with open(folder / "confusion.csv", newline="") as f:
        matrix = list(csv.reader(f))
    assert matrix[0] == ["target/predicted", "background", "vessel"]
    assert [r[0] for r in matrix[1:]] == ["background", "vessel"]
    assert sum(int(v) for r in matrix[1:] for v in r[1:]) == 3 * 64 * 64
    assert (folder / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multilabel_confusion_rows_and_evaluator_errors(tmp_path):
    ev = Evaluator("multilabel", 2, class_names=["road", "car"])
    pred, target = _squares(3)
    ev.add("a", np.stack([pred, target]), np.stack([target, target]))
    ev.write(tmp_path)
    rows = _read_csv(tmp_path / "confusion.csv")
    assert [list(r.values()) for r in rows] == [["road", str(64 * 64 - 460), "60", "60", "340"],
                                              ["car", str(64 * 64 - 400), "0", "0", "400"]]
    with pytest.raises(ValueError, match="added twice"):
        ev.add("a", pred[None].repeat(2, 0), target[None].repeat(2, 0))
    with pytest.raises(ValueError, match=r"class_names has 2 name\(s\).*takes one name"):
        Evaluator("binary", 1, class_names=["background", "vessel"])
    with pytest.raises(ValueError, match="more than once"):
        Evaluator("multiclass", 3, class_names=["bg", "a", "a"])
    with pytest.raises(ValueError, match="No image was added"):
        Evaluator("binary", 1).write(tmp_path / "none")


def test_the_package_never_imports_the_harness():
    """evaluate sits beside train: segtrain imports it (end-of-fit evaluation), never the reverse."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offending = []
    for path in sorted((root / "evaluation").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offending += [f"{path.name}: {m}" for m in modules
                          if m.split(".")[0] in ("segtrain", "lightning", "hydra", "omegaconf")]
    assert not offending, offending


# --- scripts/evaluate.py ---------------------------------------------------------------------------


def _save(path, mask) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def _folders(tmp_path, names=("a", "b")):
    pred, target = _squares(3)
    for name in names:
        _save(tmp_path / "gt" / f"{name}.png", target)  # 0/1, as training reads them
        _save(tmp_path / "pred" / "masks" / f"{name}.png", pred * 255)  # 0/255, as predict.py writes them
        Image.new("RGB", (64, 64)).save(tmp_path / "pred" / f"{name}_overlay_not_a_mask.jpg")
    return tmp_path / "pred", tmp_path / "gt"


def test_script_scores_matched_masks(tmp_path, capsys):
    main = load_script("evaluate").main
    pred, gt = _folders(tmp_path)
    summary = main([f"pred={pred}", f"gt={gt}", f"output={tmp_path / 'out'}", "task=binary", "tolerance=3",
                    "class_names=[vessel]"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILES)
    assert summary["metrics"]["hd95"] == 3.0 and summary["metrics"]["nsd"] == 1.0
    assert summary["metrics"]["dice"] == pytest.approx(0.85) and summary["images"] == 2
    out = capsys.readouterr().out
    assert "hd95" in out and str(tmp_path / "out") in out
    # multilabel: predict.py's <stem>_label<k>.png against the datamodule's <stem>_<k>.png
    target = _squares(3)[1]
    for k in range(2):
        _save(tmp_path / "mlp" / f"x_label{k}.png", target * 255)
        _save(tmp_path / "mlg" / f"x_{k}.png", target)
    ml = main([f"pred={tmp_path / 'mlp'}", f"gt={tmp_path / 'mlg'}", f"output={tmp_path / 'ml'}", "task=multilabel",
               "num_classes=2"])
    assert ml["metrics"]["dice"] == 1.0 and set(ml["per_class"]) == {"class 0", "class 1"}


def test_script_refuses_bad_folders_before_scoring(tmp_path):
    main = load_script("evaluate").main
    pred, gt = _folders(tmp_path, names=("a", "b", "c"))
    out = tmp_path / "out"
    args = [f"output={out}", "task=binary"]
    (gt / "c.png").unlink()
    _save(gt / "d.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"(?s)1 prediction\(s\) without ground truth .*: c\n.*1 ground truth\(s\) "
                                         r"without prediction .*: d"):
        main([f"pred={pred}", f"gt={gt}", *args])
    (gt / "d.png").unlink()
    (pred / "masks" / "c.png").unlink()
    _save(gt / "b.png", np.zeros((32, 48), np.uint8))
    with pytest.raises(ValueError, match=r"b: .*b.png is 64x64, .*b.png is 32x48"):
        main([f"pred={pred}", f"gt={gt}", *args])
    _save(gt / "b.png", np.full((64, 64), 7, np.uint8))
    with pytest.raises(ValueError, match=r"b.png has values \{7\} that fit no class"):
        main([f"pred={pred}", f"gt={gt}", *args])
    with pytest.raises(FileNotFoundError, match="gt=.*missing does not exist"):
        main([f"pred={pred}", f"gt={tmp_path / 'missing'}", *args])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no mask files"):
        main([f"pred={tmp_path / 'empty'}", f"gt={gt}", *args])
    with pytest.raises(ValueError, match="num_classes=... is required"):
        main([f"pred={pred}", f"gt={gt}", f"output={out}", "task=multiclass"])
    assert not out.exists()  # nothing scored, nothing written
