"""scripts/gpu_check.sh (issue 17) without a GPU: the dry run, the runner, the figures, the loss check.

The GPU run itself needs a GPU machine; here: every path the issue names is in the dry run's
table and composes, a broken step fails the dry run by name, the real-run machinery (timeouts,
prerequisites, figures, table) works on a CPU-only step, and the figure parsers read the
scripts' real output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


figures = _load("gpu_check_figures")
gpu_check_losses = _load("gpu_check_losses")

# The paths issue 17 names, as they appear in the table's "path" column.
ISSUE_PATHS = [
    "train.py trainer=gpu trainer.precision=32-true",
    "train.py trainer=gpu trainer.precision=16-mixed",
    "train.py trainer=gpu trainer.precision=bf16-mixed",
    "train.py trainer=ddp",
    "seglosses fused paths on CUDA",
    "bfloat16 autocast",
    "scripts/bench_losses.py --device cuda",
    "scripts/bench_train.py trainer=gpu",
    "scripts/predict.py trainer.accelerator=gpu",
    "scripts/export.py",
    "model=unet_resnet34 512 px trainer.precision=bf16-mixed: training, NaN check",
    "model=unet_resnet34 512 px trainer.precision=bf16-mixed: images/s",
    "model=unet_resnet34 512 px trainer.precision=16-mixed: training, NaN check",
    "model=unet_resnet34 512 px trainer.precision=16-mixed: images/s",
]


def run_check(*args: str, gpus: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_GPUS"}
    env.update(PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")  # the dry run must not need a GPU
    if gpus is not None:
        env["GPU_CHECK_GPUS"] = gpus
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=420)


def table(out: Path) -> dict[str, dict[str, str]]:
    """summary.md's rows by step name."""
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 5 and cells[0] != "step":
            rows[cells[0]] = dict(zip(("step", "path", "result", "figure", "s"), cells))
    return rows


@pytest.mark.slow
def test_dry_run_lists_every_issue_path_and_each_composes(tmp_path):
    proc = run_check("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table(tmp_path)
    paths = " ; ".join(r["path"] for r in rows.values())
    for path in ISSUE_PATHS:
        assert path in paths, f"the table lacks {path!r}"
    assert all(r["result"] == "DRY-OK" for r in rows.values()), rows
    # The train.py steps were composed and built, not just printed.
    assert "composes" in rows["train-gpu-bf16-mixed"]["figure"] and "bf16-mixed" in rows["train-gpu-bf16-mixed"]["figure"]
    assert "strategy=ddp devices=2" in rows["train-ddp"]["figure"]
    assert "resnet34" in rows["r34-512-16-mixed-speed"]["figure"]
    # The commands a GPU run would start: on the GPU.
    assert "scripts/bench_losses.py --device cuda" in proc.stdout
    assert "scripts/gpu_check_losses.py --device cuda" in proc.stdout
    assert "trainer.accelerator=gpu" in proc.stdout


@pytest.mark.slow
def test_dry_run_fails_naming_the_broken_steps(tmp_path):
    proc = run_check("--dry-run", "--out", str(tmp_path), "--set", "train-gpu-16-mixed=trainer.no_such_key=1",
                     "--set", "export=opset=abc")
    assert proc.returncode == 1, proc.stdout[-3000:]
    rows = table(tmp_path)
    assert rows["train-gpu-16-mixed"]["result"] == "FAIL" and "no_such_key" in rows["train-gpu-16-mixed"]["figure"]
    assert rows["export"]["result"] == "FAIL" and "opset" in rows["export"]["figure"]
    assert {n for n, r in rows.items() if r["result"] != "DRY-OK"} == {"train-gpu-16-mixed", "export"}
    assert "FAILED: train-gpu-16-mixed export" in proc.stdout


def test_usage_errors_name_the_problem(tmp_path):
    proc = run_check("--dry-run", "--out", str(tmp_path), "--set", "no-such-step=x")
    assert proc.returncode == 2 and "no step no-such-step" in proc.stderr and "train-ddp" in proc.stderr
    proc = run_check("--out", str(tmp_path), gpus="0")
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr


@pytest.mark.slow
def test_real_run_records_pass_and_missing_prerequisite(tmp_path):
    """The runner on CPU-only steps: one that runs (figure from its output), one whose input is missing."""
    proc = run_check("--out", str(tmp_path), "--only", "predict-input,export", gpus="1")
    assert proc.returncode == 1, proc.stdout[-3000:]
    rows = table(tmp_path)
    assert rows["predict-input"]["result"] == "PASS" and rows["predict-input"]["figure"] == "6 files in images/"
    assert int(rows["predict-input"]["s"]) >= 0 and (tmp_path / "logs" / "predict-input.log").is_file()
    assert rows["export"]["result"] == "FAIL" and "needs " in rows["export"]["figure"]
    assert "last.ckpt" in rows["export"]["figure"]


def test_train_figure_fails_on_a_nan_loss(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    log = tmp_path / "log.txt"
    log.write_text("Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2\n")
    good = "epoch,step,train/loss,train/loss_dice,val/dice\n0,3,0.9,0.5,\n0,3,,,0.4\n1,7,0.7,0.4,\n1,7,,,0.5\n"
    (tmp_path / "metrics.csv").write_text(good)
    result, text = figures.figure("train", str(log), str(tmp_path))
    assert result == "PASS" and "0.900 -> 0.700" in text and "val/dice 0.500" in text and "2 DDP" in text
    (tmp_path / "metrics.csv").write_text(good.replace("1,7,0.7,0.4", "1,7,nan,0.4"))
    result, text = figures.figure("train", str(log), str(tmp_path))
    assert result == "FAIL" and "train/loss=nan" in text


def test_bench_train_figure_flags_an_overhead_above_the_goal(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("")
    data = {"harness_images_per_s": 100.0, "plain_images_per_s": 104.0, "overhead_percent": 4.0,
            "precision": "bf16-mixed", "batch_size": 16, "image_size": [512, 512], "device": "cuda:0"}
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert figures.figure("bench-train", str(log), str(tmp_path / "r.json"))[0] == "PASS"
    (tmp_path / "r.json").write_text(json.dumps({**data, "plain_images_per_s": 107.0, "overhead_percent": 7.0}))
    result, text = figures.figure("bench-train", str(log), str(tmp_path / "r.json"))
    assert result == "MISS" and "+7.0 %" in text and "goal <= 5 %" in text


@pytest.mark.slow
def test_bench_losses_figure_reads_the_real_table(tmp_path):
    """The parser against bench_losses.py's own output (its format is all the figure has)."""
    log = tmp_path / "bench.log"
    proc = subprocess.run([sys.executable, "scripts/bench_losses.py", "--quick", "--repeats", "1", "--cases",
                           "binary", "multiclass"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log.write_text(proc.stdout)
    result, text = figures.figure("bench-losses", str(log))
    assert result in ("PASS", "MISS"), text
    for part in ("binary BCE+Dice 2x1x64x64: ours", "multiclass CE+Dice 2x5x32x32: ours", "smp/ours", "monai/ours"):
        assert part in text
    log.write_text("Traceback ...\nRuntimeError: CUDA error\n")
    assert figures.figure("bench-losses", str(log)) == ("FAIL", "no result table in the output")


def test_fused_loss_check_runs_on_cpu_and_can_fail(tmp_path, monkeypatch):
    out = tmp_path / "losses.json"
    assert gpu_check_losses.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["passed"] and len(result["rows"]) == 9
    assert {r["precision"] for r in result["rows"]} == {"float32", "float16", "bfloat16"}
    assert all(r["finite"] and r["grad_rel_err"] > 0 for r in result["rows"])  # really compared
    assert figures.figure("losses", str(out), str(out))[0] == "PASS"
    # Tolerances below float32 rounding: the check must report the failure.
    monkeypatch.setitem(gpu_check_losses.PRECISIONS, "float32", (1.0, 0.0, 0.0))
    assert gpu_check_losses.main(["--device", "cpu", "--quick", "--out", str(out)]) == 1
    assert figures.figure("losses", str(out), str(out))[0] == "FAIL"
