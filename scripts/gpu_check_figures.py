"""One figure per step of scripts/gpu_check.sh, read from what the step wrote.

    python scripts/gpu_check_figures.py KIND LOG [ARGS...]

Prints one line, ``RESULT<TAB>FIGURE``: RESULT is ``PASS``, ``MISS`` (it ran, a performance goal
of issue 17 was missed) or ``FAIL`` (its output shows it did not work: a NaN loss, missing
files). LOG is the step's captured output. Kinds and their ARGS:

    train RUN_DIR              metrics.csv: first and last train/loss, last val/dice, any NaN
    losses JSON                scripts/gpu_check_losses.py --out: worst errors per precision
    bench-losses               scripts/bench_losses.py's table: ours (ms), smp/ours, monai/ours
    bench-train JSON [GOAL%]   scripts/bench_train.py --out: images/s, harness overhead (goal 5 %)
    count DIR N                at least N files in DIR (predict's masks, its input images)
    export                     export.py's "max |diff|" line and the files it wrote

Standard library only: it runs once per step, so it starts in a fraction of a second.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path


class StepFailed(Exception):
    """The step's output shows it did not work; the message is the figure."""


def _num(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def train(log: str, run_dir: str) -> tuple[str, str]:
    metrics = Path(run_dir) / "metrics.csv"
    if not metrics.is_file():
        raise StepFailed(f"no {metrics}")
    rows = list(csv.DictReader(metrics.open()))
    losses = [(row.get("epoch", "?"), key, _num(value)) for row in rows for key, value in row.items()
              if "loss" in key and value not in ("", None)]
    train_loss = [v for _, k, v in losses if k == "train/loss"]
    if not train_loss:
        raise StepFailed(f"no train/loss logged in {metrics}")
    bad = [f"{k}={v} (epoch {e})" for e, k, v in losses if not math.isfinite(v)]
    if bad:
        raise StepFailed(f"NaN/inf loss: {', '.join(bad[:3])}")
    dice = [_num(r["val/dice"]) for r in rows if r.get("val/dice") not in ("", None)]
    figure = f"train/loss {train_loss[0]:.3f} -> {train_loss[-1]:.3f}"
    if dice:
        figure += f", val/dice {dice[-1]:.3f}"
    figure += ", NaN: no"
    world = re.findall(r"MEMBER: \d+/(\d+)", log)
    if world:
        figure += f", {world[-1]} DDP process(es)"
    if not (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
        raise StepFailed(figure + "; but no checkpoints/last.ckpt")
    return "PASS", figure


def losses(log: str, path: str) -> tuple[str, str]:
    result = json.loads(Path(path).read_text())
    worst: dict[str, float] = {}
    for row in result["rows"]:
        worst[row["precision"]] = max(worst.get(row["precision"], 0.0), row["grad_rel_err"])
    nan = any(not row["finite"] for row in result["rows"])
    figure = (f"{len({r['case'] for r in result['rows']})} fused pairs on {result['device']}; max grad rel err "
              + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + f"; NaN: {'yes' if nan else 'no'}")
    if not result["passed"]:
        raise StepFailed(figure + " (beyond tolerance)")
    return "PASS", figure


_CASE = re.compile(r"^(binary BCE\+Dice|multiclass CE\+Dice|binary Dice\+Focal) (\S+)$")
_ROW = re.compile(r"^\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x(?:\s+\d+)?$")  # then faults/call


def bench_losses(log: str) -> tuple[str, str]:
    """Goal (issue 17): ours faster than smp and MONAI on both cases, i.e. other/ours > 1."""
    cases: dict[str, dict[str, float]] = {}
    current = None
    for line in log.splitlines():
        if m := _CASE.match(line):
            current = cases.setdefault(m.group(0), {})
        elif current is not None and (m := _ROW.match(line)):
            current[m.group(1)] = float(m.group(2))
    if not cases or not all("ours" in c for c in cases.values()):
        raise StepFailed("no result table in the output")
    parts, missed = [], False
    for name, ms in cases.items():
        text = [f"ours {ms['ours']:.2f} ms"]
        for other in ("smp", "monai"):
            if other in ms:
                text.append(f"{other}/ours {ms[other] / ms['ours']:.2f}x")
                missed |= ms[other] <= ms["ours"]
            else:
                text.append(f"{other} not installed")
                missed = True
        parts.append(f"{name}: {', '.join(text)}")
    return ("MISS" if missed else "PASS"), "; ".join(parts) + (" (goal: faster than both)" if missed else "")


def bench_train(log: str, path: str, goal: str = "5") -> tuple[str, str]:
    r = json.loads(Path(path).read_text())
    for key in ("harness_images_per_s", "plain_images_per_s", "overhead_percent"):
        if not math.isfinite(r[key]):
            raise StepFailed(f"{key} is {r[key]}")
    figure = (f"harness {r['harness_images_per_s']:.0f} img/s, plain loop {r['plain_images_per_s']:.0f} img/s, "
              f"overhead {r['overhead_percent']:+.1f} % ({r['precision']}, batch {r['batch_size']}, "
              f"{'x'.join(map(str, r['image_size']))}, {r['device']})")
    if r["overhead_percent"] > float(goal):
        return "MISS", figure + f" (goal <= {goal} %)"
    return "PASS", figure


def count(log: str, folder: str, n: str) -> tuple[str, str]:
    files = [p for p in Path(folder).glob("*") if p.is_file()] if Path(folder).is_dir() else []
    if len(files) < int(n):
        raise StepFailed(f"{len(files)} file(s) in {folder}, expected >= {n}")
    return "PASS", f"{len(files)} files in {Path(folder).name}/"


def export(log: str) -> tuple[str, str]:
    written = re.findall(r"^(onnx|torchscript): (\S+)$", log, flags=re.M)
    missing = [p for _, p in written if not Path(p).is_file()]
    if not written or missing:
        raise StepFailed(f"files not written: {missing or 'onnx, torchscript'}")
    diff = re.findall(r"max \|diff\| = (\S+)", log)
    check = f"onnxruntime max |diff| {diff[-1]}" if diff else "onnxruntime check skipped"
    return "PASS", f"{' + '.join(k for k, _ in written)} written; {check}"


KINDS = {"train": train, "losses": losses, "bench-losses": bench_losses, "bench-train": bench_train,
         "count": count, "export": export}


def figure(kind: str, log_path: str, *args: str) -> tuple[str, str]:
    """(result, figure) for one step; never raises (a broken figure is a failed step)."""
    if kind not in KINDS:
        return "FAIL", f"unknown figure kind {kind!r}; one of {', '.join(KINDS)}"
    try:
        log = Path(log_path).read_text(errors="replace")
        return KINDS[kind](log, *args)
    except StepFailed as err:
        return "FAIL", str(err)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return "FAIL", f"cannot read the step's output: {type(err).__name__}: {err}"


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    result, text = figure(*sys.argv[1:])
    print(f"{result}\t{text.replace(chr(9), ' ').replace(chr(10), ' ')}")
