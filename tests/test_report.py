"""report/ through scripts/summarize_sweep.py on hand-made job folders (no training).

The fake runs hold the files the end-of-fit evaluation writes (evaluation/summary.json,
per_image.csv), a config.yaml with data.fold, and for older runs a metrics.csv only. Every
p-value is recomputed here with scipy on pairs built from the data the test wrote, not from
report's own pairing.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy.stats import wilcoxon

import report

ROOT = Path(__file__).resolve().parents[1]
summarize_sweep = sys.modules.get("summarize_sweep")  # loaded once per session (tests/test_summarize_sweep.py too)
if summarize_sweep is None:
    _spec = importlib.util.spec_from_file_location("summarize_sweep", ROOT / "scripts" / "summarize_sweep.py")
    summarize_sweep = importlib.util.module_from_spec(_spec)
    sys.modules["summarize_sweep"] = summarize_sweep  # dataclasses look their module up there
    _spec.loader.exec_module(summarize_sweep)

CLASSES = {"1": "road", "2": "car"}
METRICS = ["dice", "iou", "precision", "recall", "hd95", "nsd"]
IMAGES_PER_FOLD = 4


def _per_image(rng: random.Random, fold: int, quality: float) -> list[dict]:
    """One row per image and class; dice near ``quality`` (+-0.03), precision pure noise."""
    rows = []
    for i in range(IMAGES_PER_FOLD):
        for c, name in CLASSES.items():
            dice = quality + rng.uniform(-0.03, 0.03)
            rows.append({"image": f"f{fold}_img{i}", "class": c, "class_name": name, "dice": dice,
                         "iou": dice / (2 - dice), "precision": rng.uniform(0.6, 0.9), "recall": rng.uniform(0.6, 0.9),
                         "hd95": 40 * (1 - dice) + rng.uniform(0, 1), "nsd": dice - 0.05,
                         "gt_pixels": 100, "pred_pixels": 95})
    return rows


def _summary(rows: list[dict]) -> dict:
    metrics = {m: statistics.mean(r[m] for r in rows) for m in METRICS}
    per_class = {name: {m: statistics.mean(r[m] for r in rows if r["class_name"] == name) for m in METRICS}
                 for name in CLASSES.values()}
    return {"images": IMAGES_PER_FOLD, "task": "multiclass", "metrics": metrics, "per_class": per_class}


def _job(root: Path, name: str, overrides: list[str], fold: int | None, rows: list[dict] | None = None,
         val: dict | None = None, failure: dict | None = None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = {"data": {"fold": fold}, "callbacks": {"ckpt": {"_target_": "x.ModelCheckpoint", "monitor": "val/dice",
                                                         "mode": "max"}}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job / "config.yaml").write_text(yaml.safe_dump(cfg))
    if rows is not None:
        (job / "evaluation").mkdir()
        (job / "evaluation" / "summary.json").write_text(json.dumps(_summary(rows)))
        with open(job / "evaluation" / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["image", "class", "class_name", *METRICS, "gt_pixels", "pred_pixels"])
            writer.writeheader()
            writer.writerows(rows)
    val = val or ({"val/dice": _summary(rows)["metrics"]["dice"]} if rows else None)
    if val is not None:
        with open(job / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["epoch", "step", "train/loss", "val/loss", *val])
            writer.writeheader()
            writer.writerow({"epoch": 0, "step": 9, "train/loss": 0.5})
            writer.writerow({"epoch": 0, "step": 9, "val/loss": 0.4, **val})
    if failure is not None:
        (job / "failure.yaml").write_text(yaml.safe_dump(failure))
    return job


@pytest.fixture()
def cv_multirun(tmp_path):
    """2 losses x 3 folds; bce_dice's fold 2 is an old run (metrics.csv only); a refused and a failed job."""
    root, rng = tmp_path / "multirun", random.Random(0)
    data: dict[str, dict[int, list[dict] | None]] = {"dice_focal": {}, "bce_dice": {}}
    fallback = {"val/dice": 0.79, "val/iou": 0.66, "val/loss": 0.3, "val/loss_dice": 0.2}
    n = 0
    for fold in range(3):
        for loss, quality in (("dice_focal", 0.86), ("bce_dice", 0.78)):
            overrides = [f"loss={loss}", "data.folds=3", f"data.fold={fold}"]
            if loss == "bce_dice" and fold == 2:
                _job(root, str(n), overrides, fold, val=fallback)
                data[loss][fold] = None
            else:
                data[loss][fold] = _per_image(rng, fold, quality)
                _job(root, str(n), overrides, fold, data[loss][fold])
            n += 1
    _job(root, "6", ["loss=ce_dice", "data.folds=3", "data.fold=0"], 0,
         failure={"stage": "startup", "error_type": "ValueError", "message": "loss ce_dice cannot serve task binary"})
    _job(root, "7", ["loss=dice_focal", "data.folds=3", "data.fold=1"], 1,
         failure={"stage": "training", "error_type": "RuntimeError", "message": "CUDA out of memory"})
    return root, data, fallback


def _image_pairs(data: dict, metric: str, best: str, other: str) -> tuple[list[float], list[float]]:
    """Per image (folds both evaluated): the mean over classes, best's and other's, in image order."""
    a, b = {}, {}
    for fold in range(3):
        if data[best][fold] is None or data[other][fold] is None:
            continue
        for rows, into in ((data[best][fold], a), (data[other][fold], b)):
            for r in rows:
                into.setdefault(r["image"], []).append(r[metric])
    images = sorted(a)
    return [statistics.mean(a[i]) for i in images], [statistics.mean(b[i]) for i in images]


def _rows(path: Path) -> dict[tuple[str, str, str], dict]:
    return {(r["group"], r["metric"], r["class"]): r for r in csv.DictReader(open(path))}


def test_two_losses_three_folds(cv_multirun, tmp_path):
    root, data, fallback = cv_multirun
    out = tmp_path / "out"
    paths = summarize_sweep.summarize(root, out)
    assert {"md", "csv", "png", "comparison_md", "comparison_csv", "comparison_png"} <= set(paths)
    assert paths["comparison_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(paths["comparison_csv"])
    assert {g for g, _, _ in rows} == {"dice_focal", "bce_dice"}  # grouped without the fold; ce_dice refused

    # Means and sample stds over the folds; bce_dice's fold 2 from metrics.csv.
    fold_dice = {loss: [_summary(rows_)["metrics"]["dice"] if rows_ else fallback["val/dice"]
                        for rows_ in data[loss].values()] for loss in data}
    for loss, values in fold_dice.items():
        row = rows[(loss, "dice", "")]
        assert float(row["mean"]) == pytest.approx(statistics.mean(values))
        assert float(row["std"]) == pytest.approx(statistics.stdev(values))
        assert row["n_folds"] == "3"
    # Per class: the fallback run has none, so bce_dice's classes average two folds.
    road = [_summary(data["bce_dice"][f])["per_class"]["road"]["dice"] for f in (0, 1)]
    assert float(rows[("bce_dice", "dice", "road")]["mean"]) == pytest.approx(statistics.mean(road))
    assert rows[("bce_dice", "dice", "road")]["n_folds"] == "2"

    # 3 folds < 6: images, restricted to the ones both groups evaluated (folds 0 and 1).
    assert rows[("dice_focal", "dice", "")]["best"] == "True" and rows[("dice_focal", "dice", "")]["p_value"] == ""
    for metric in ("dice", "hd95", "precision", "iou"):
        best = next(g for g in data if rows[(g, metric, "")]["best"] == "True")
        other = next(g for g in data if g != best)
        row = rows[(other, metric, "")]
        a, b = _image_pairs(data, metric, best, other)
        expected = wilcoxon(a, b).pvalue
        assert row["test"] == "images" and row["n_pairs"] == str(2 * IMAGES_PER_FOLD), metric
        assert float(row["p_value"]) == pytest.approx(expected), metric
        assert float(row["p_holm"]) == pytest.approx(expected)  # one comparison: Holm changes nothing
        assert row["significant"] == str(expected < 0.05), metric
    assert rows[("dice_focal", "hd95", "")]["best"] == "True"  # lower is better for hd95
    assert float(rows[("bce_dice", "dice", "")]["p_value"]) == pytest.approx(2 / 2 ** 8)  # every image lower

    md = paths["comparison_md"].read_text()
    assert "**Best by dice: dice_focal**" in md
    assert "| 2 | bce_dice |" in md and "images (n=8): p=0.00781, Holm 0.00781 \\*" in md
    assert "0.0625" in md and "independent" in md and "Holm" in md
    assert "Read from metrics.csv" in md and ": 5." in md  # the run without evaluation/
    assert "left out: 6 (refused" in md and "left out: 7 (failed: RuntimeError: CUDA out of memory)" in md
    assert "Not ranked" in md and "loss_dice" in md  # loss values are not comparable across losses
    assert "## dice per class" in md and "| configuration | road | car |" in md
    assert (out / "summary.md").exists() and (out / "summary.csv").exists()  # the summary is still written


def test_six_folds_use_the_fold_level_test(tmp_path):
    root = tmp_path / "multirun"
    folds = {"dice_focal": [0.80 + 0.01 * k for k in range(6)], "bce_dice": [0.78 + 0.009 * k for k in range(6)]}
    for loss, values in folds.items():
        for k, value in enumerate(values):
            rows = [{**r, "dice": value} for r in _per_image(random.Random(k), k, value)]
            _job(root, f"{loss}_{k}", [f"loss={loss}", "data.folds=6", f"data.fold={k}"], k, rows)
    paths = summarize_sweep.summarize(root, tmp_path / "out")
    row = _rows(paths["comparison_csv"])[("bce_dice", "dice", "")]
    expected = wilcoxon(folds["dice_focal"], folds["bce_dice"]).pvalue
    assert row["test"] == "folds" and row["n_pairs"] == "6"
    assert float(row["p_value"]) == pytest.approx(expected) == pytest.approx(2 / 2 ** 6)
    assert row["significant"] == "True"
    assert "folds (n=6): p=0.0312" in paths["comparison_md"].read_text()


def test_single_trainings_are_not_tested(tmp_path):
    """One run per configuration and no folds: the table without tests, saying why."""
    root = tmp_path / "multirun"
    for i, loss in enumerate(("bce", "dice")):
        _job(root, str(i), [f"loss={loss}"], None, _per_image(random.Random(i), 0, 0.7 + 0.1 * i))
    paths = summarize_sweep.summarize(root, tmp_path / "out")
    md = paths["comparison_md"].read_text()
    assert "trained once, so no test was run" in md and "data.folds=5" in md
    assert all(r["p_value"] == "" and r["test"] == "" for r in _rows(paths["comparison_csv"]).values())
    one = tmp_path / "one"
    _job(one, "0", ["loss=bce"], None, _per_image(random.Random(0), 0, 0.7))
    assert "Only one configuration" in summarize_sweep.summarize(one, tmp_path / "o1")["comparison_md"].read_text()


def test_metric_choice_and_direction(cv_multirun, tmp_path, capsys):
    root, _, _ = cv_multirun
    assert summarize_sweep.main([str(root), "--metric", "hd95", "--out", str(tmp_path / "a")]) == 0
    md = (tmp_path / "a" / "comparison.md").read_text()
    assert "by hd95 (lower is better)" in md and "**Best by hd95: dice_focal**" in md
    assert "sorted by val/dice (max)" in (tmp_path / "a" / "summary.md").read_text()  # the table keeps its metric
    assert "Comparison: 6 runs" in capsys.readouterr().out  # the comparison is printed too
    assert summarize_sweep.main([str(root), "--metric", "hd95", "--mode", "max"]) == 2
    assert "hd95 is better lower" in capsys.readouterr().err
    assert summarize_sweep.main([str(root), "--metric", "assd"]) == 2
    assert "pass --mode max or --mode min" in capsys.readouterr().err


def test_wilcoxon_ties_and_holm():
    assert report.wilcoxon([0.8, 0.7, 0.9], [0.8, 0.7, 0.9]) == (1.0, "all differences zero")
    p, note = report.wilcoxon([0.8, 0.7, 0.9, 0.6, 0.5, 0.4], [0.8, 0.6, 0.8, 0.5, 0.4, 0.3])
    assert 0 < p < 1 and "tied" in note  # a zero and tied differences: scipy's tie handling, noted
    assert p == pytest.approx(wilcoxon([0.8, 0.7, 0.9, 0.6, 0.5, 0.4], [0.8, 0.6, 0.8, 0.5, 0.4, 0.3]).pvalue)
    assert report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert report.holm([]) == []


def test_study_folder_compares_its_complete_trials(tmp_path):
    """An Optuna sweep: the trials' run folders, complete trials only (a pruned one left out)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", direction="maximize")
    dist = {"loss": CategoricalDistribution(["bce", "dice"]), "data.fold": CategoricalDistribution([0, 1])}
    for n, (loss, fold, state) in enumerate([("bce", 0, TrialState.COMPLETE), ("dice", 0, TrialState.COMPLETE),
                                             ("bce", 1, TrialState.COMPLETE), ("dice", 1, TrialState.PRUNED)]):
        rows = _per_image(random.Random(n), fold, 0.7 if loss == "bce" else 0.8)
        job = _job(tmp_path / "sweep", str(n), [f"loss={loss}", f"data.fold={fold}"], fold, rows)
        study.add_trial(create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                     params={"loss": loss, "data.fold": fold}, distributions=dist,
                                     user_attrs={"job_dir": str(job)}))
    sweep = tmp_path / "sweep"
    (sweep / "optimization_results.yaml").write_text(yaml.safe_dump({"study_name": "s", "storage": f"sqlite:///{db}"}))
    assert summarize_sweep.main([str(sweep)]) == 0
    rows = _rows(sweep / "comparison.csv")
    assert rows[("bce", "dice", "")]["n_folds"] == "2" and rows[("dice", "dice", "")]["n_folds"] == "1"
    assert rows[("dice", "dice", "")]["best"] == "True"
    assert rows[("bce", "dice", "")]["note"] == "not tested: the best trained once"
    assert "left out: trial 3 (pruned)" in (sweep / "comparison.md").read_text()


@pytest.mark.slow  # 10-17 s on 2 busy cores: the script imports evaluation (torch, MONAI, torchmetrics)
def test_script_runs_from_the_repository_root_without_pythonpath(cv_multirun, tmp_path):
    """issue 27: ``python scripts/summarize_sweep.py DIR`` as a user runs it, no PYTHONPATH."""
    root, _, _ = cv_multirun
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT") if k in os.environ}
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    done = subprocess.run([sys.executable, "scripts/summarize_sweep.py", str(root), "--out", str(tmp_path / "o")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Best by dice: dice_focal" in done.stdout and (tmp_path / "o" / "comparison.png").exists()
