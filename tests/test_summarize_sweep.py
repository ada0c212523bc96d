"""scripts/summarize_sweep.py: on hand-made job folders (every branch, fast) and on a real tiny
multirun (the one tests/test_sweep.py builds; shared through the session cache)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("summarize_sweep", ROOT / "scripts" / "summarize_sweep.py")
summarize_sweep = importlib.util.module_from_spec(_spec)
sys.modules["summarize_sweep"] = summarize_sweep  # dataclasses look their module up there
_spec.loader.exec_module(summarize_sweep)

METRICS_HEADER = ["epoch", "step", "train/loss", "val/dice", "val/iou", "val/loss"]


def _job(root: Path, name: str, overrides: list[str], val_rows=None, failure=None, monitor=("val/dice", "max")):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = {"callbacks": {"model_checkpoint": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                                              "monitor": monitor[0], "mode": monitor[1]}}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if val_rows is not None:
        (job / "csv" / "version_0").mkdir(parents=True)
        with open(job / "csv" / "version_0" / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(METRICS_HEADER)
            for epoch, (dice, iou, loss) in enumerate(val_rows):
                w.writerow([epoch, epoch * 10 + 9, 0.5, "", "", ""])  # a training row: no val values
                w.writerow([epoch, epoch * 10 + 9, "", dice, iou, loss])
    if failure is not None:
        (job / "failure.yaml").write_text(yaml.safe_dump(failure))
    return job


@pytest.fixture()
def fake_multirun(tmp_path):
    root = tmp_path / "multirun"
    common = ["data.image_size=32", "trainer.max_epochs=2"]
    _job(root, "0", ["loss=bce", *common], val_rows=[(0.60, 0.45, 0.7), (0.70, 0.55, 0.6)])
    _job(root, "1", ["loss=dice", *common], val_rows=[(0.80, 0.66, 0.3), (0.75, 0.60, 0.35)])
    _job(root, "2", ["loss=ce", *common], failure={"status": "failed", "error_type": "ValueError",
                                                   "message": "loss ce cannot serve task binary"})
    _job(root, "10", ["loss=focal", *common])  # started, never logged validation
    return root


def test_summary_of_hand_made_jobs(fake_multirun, tmp_path):
    out = tmp_path / "report"
    paths = summarize_sweep.summarize(fake_multirun, out)
    md = paths["md"].read_text()
    assert "sorted by val/dice (max)" in md  # monitor read from the jobs' checkpoint config
    assert "`data.image_size=32`" in md  # shared overrides listed once, not as columns
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| job | status | loss | best_epoch | val/dice |")
    # Best first (dice 0.80 at epoch 0 beats bce's 0.70 at epoch 1), failures after, in job order.
    assert [ln.split("|")[1].strip() for ln in lines[1:]] == ["1", "0", "2", "10"]
    assert "| 1 | ok | dice | 0 | 0.8000 | 0.6600 | 0.3000 |" in md
    assert "| 0 | ok | bce | 1 | 0.7000 | 0.5500 | 0.6000 |" in md
    assert "failed" in lines[3] and "ValueError: loss ce cannot serve task binary" in lines[3]
    assert "incomplete" in lines[4]

    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["job"] for r in rows] == ["1", "0", "2", "10"]
    assert rows[0]["data.image_size"] == "32"  # the CSV keeps every override key
    assert float(rows[0]["val/dice"]) == pytest.approx(0.80) and rows[2]["val/dice"] == ""
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000


def test_monitor_from_config():
    ms = summarize_sweep.monitor_from_config
    assert ms({"monitor": "val/loss", "monitor_mode": "min"}) == ("val/loss", "min")
    assert ms({"callbacks": {"ckpt": {"_target_": "x.ModelCheckpoint", "monitor": "val/iou", "mode": "max"}}}) == ("val/iou", "max")
    assert ms({"callbacks": {"es": {"_target_": "x.EarlyStopping", "monitor": "val/iou"}}}) is None


def test_metric_and_mode_override(fake_multirun, tmp_path):
    paths = summarize_sweep.summarize(fake_multirun, tmp_path, metric="val/loss", mode="min")
    rows = list(csv.DictReader(open(paths["csv"])))
    # min val/loss: dice's 0.30 (epoch 0), then bce's 0.60 (epoch 1).
    assert [(r["job"], r["best_epoch"]) for r in rows[:2]] == [("1", "0"), ("0", "1")]


def test_cli_errors_are_clear(tmp_path, capsys):
    assert summarize_sweep.main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert summarize_sweep.main([str(tmp_path)]) == 2
    assert "No job folders" in capsys.readouterr().err


def _tiny_multirun():
    # The multirun of tests/test_sweep.py (built once per session, whichever test asks first).
    spec = importlib.util.spec_from_file_location("_segtrain_test_sweep", ROOT / "tests" / "test_sweep.py")
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module.tiny_multirun


@pytest.fixture(scope="module")
def real_multirun(tmp_path_factory):
    return _tiny_multirun()(tmp_path_factory)


@pytest.mark.slow
def test_summary_of_a_real_multirun(real_multirun, tmp_path):
    """train.py -m loss=bce,dice,ce: two trained jobs sorted by val/dice, the ce job refused at start-up."""
    assert summarize_sweep.main([str(real_multirun), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok", "refused"]
    assert sorted(r["loss"] for r in rows[:2]) == ["bce", "dice"] and rows[2]["loss"] == "ce"
    dice = [float(r["val/dice"]) for r in rows[:2]]
    assert dice == sorted(dice, reverse=True) and all(0.0 <= d <= 1.0 for d in dice)
    # The table's numbers are the jobs' own best epochs from their metrics.csv.
    for r in rows[:2]:
        logged = [float(x["val/dice"]) for x in csv.DictReader(open(real_multirun / r["job"] / "metrics.csv"))
                  if x.get("val/dice")]
        assert float(r["val/dice"]) == pytest.approx(max(logged))
        assert r["val/iou"] != "" and r["val/loss"] != ""
    assert "cannot serve task=binary" in rows[2]["error"]
    md = (tmp_path / "summary.md").read_text()
    assert "sorted by val/dice (max)" in md and "refused at start-up (config or data error): 2: " in md
    assert "`data.image_size=32`" in md  # the overrides shared by all jobs, listed once
    assert (tmp_path / "summary.png").stat().st_size > 5000


# ----------------------------------------------------------------------- Optuna studies -----

def _hand_made_study(tmp_path):
    """A study as the sweeper leaves it: complete, pruned, failed, interrupted+redone, surplus."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "optuna" / "loss_search.db"
    db.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="loss_search", storage=f"sqlite:///{db}", direction="maximize")
    dists = {"optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True), "loss": CategoricalDistribution(["bce", "dice"])}

    def add(state, value=None, lr=1e-3, loss="bce", steps=(), **attrs):
        job = tmp_path / "runs" / str(len(study.trials))
        job.mkdir(parents=True)
        study.add_trial(create_trial(state=state, value=value, params={"optimizer.lr": lr, "loss": loss},
                                     distributions=dists, user_attrs={"job_dir": str(job), **attrs},
                                     intermediate_values={i: v for i, v in enumerate(steps)}))

    add(TrialState.COMPLETE, 0.61, steps=(0.5, 0.61))                   # 0
    add(TrialState.PRUNED, 0.2, lr=5e-3, steps=(0.2,), pruned_at_step=0)  # 1
    add(TrialState.COMPLETE, 0.74, loss="dice", steps=(0.7, 0.74))      # 2: best
    add(TrialState.FAIL, error="ValueError: loss ce cannot serve task binary")  # 3
    add(TrialState.FAIL, lr=2e-3)                                        # 4: interrupted
    add(TrialState.COMPLETE, 0.55, lr=2e-3, retry_of=4, steps=(0.55,))  # 5: its redo
    add(TrialState.FAIL, surplus="not run")                              # 6: never ran
    return db


def test_summary_of_a_study(tmp_path):
    db = _hand_made_study(tmp_path)
    out = tmp_path / "report"
    assert summarize_sweep.main([str(db), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    # Best first among complete trials, then pruned, then failed; the surplus trial is left out.
    assert [(r["trial"], r["state"]) for r in rows] == [
        ("2", "COMPLETE"), ("0", "COMPLETE"), ("5", "COMPLETE"), ("1", "PRUNED"), ("3", "FAIL"), ("4", "FAIL")]
    assert set(rows[0]) >= {"value", "optimizer.lr", "loss", "duration_s", "validations", "run_folder", "error"}
    assert float(rows[0]["value"]) == pytest.approx(0.74) and rows[0]["loss"] == "dice"
    assert rows[3]["validations"] == "1" and rows[0]["run_folder"].endswith("runs/2")
    assert rows[4]["error"].startswith("ValueError: loss ce") and rows[5]["error"] == "interrupted (redone as trial 5)"
    md = (out / "summary.md").read_text()
    assert "Study `loss_search`" in md and "maximize" in md and "Best: trial 2, value 0.7400." in md
    assert "| 2 | COMPLETE | 0.7400 |" in md
    for name in ("history", "importances", "parallel"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000, name
        assert f"![{name}]({name}.png)" in md


def test_study_sources_and_errors(tmp_path, capsys):
    db = _hand_made_study(tmp_path)
    sweep_dir = tmp_path / "multirun"
    sweep_dir.mkdir()
    (sweep_dir / "optimization_results.yaml").write_text(
        yaml.safe_dump({"study_name": "loss_search", "storage": f"sqlite:///{db}"}))
    # The sweep folder leads to its study; the summary goes into that folder.
    assert summarize_sweep.main([str(sweep_dir)]) == 0
    assert (sweep_dir / "summary.csv").exists() and (sweep_dir / "history.png").exists()
    # A storage URL; default out: <study>_summary next to the file.
    assert summarize_sweep.main([f"sqlite:///{db}", "--study", "loss_search"]) == 0
    assert (db.parent / "loss_search_summary" / "summary.md").exists()
    capsys.readouterr()
    assert summarize_sweep.main([str(db), "--study", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope'" in err and "it holds: loss_search" in err


def test_curves_are_labelled_by_their_overrides(fake_multirun, tmp_path):
    """Each validation curve's legend entry names the job's varying overrides, not its number alone."""
    jobs = summarize_sweep.sort_jobs([summarize_sweep.load_job(d, fake_multirun, "val/dice", "max")
                                      for d in summarize_sweep.find_jobs(fake_multirun)], "val/dice", "max")
    legend = summarize_sweep.plot(jobs, "val/dice", "max", tmp_path / "summary.png", keys=["loss"])
    assert legend == ["1: loss=dice", "0: loss=bce"]  # the two jobs with a curve, best first
