"""Issue 27: promises a new user found broken, each checked as the user met it.

1. a resume that trains longer follows the new schedule (cosine ``T_max``), not the checkpoint's;
2. a run refused in a finished run's folder leaves every byte of that run (``.hydra/`` too);
4. the overlays of predict.py and the training pictures pair colours and names alike;
5. an Optuna resume re-queues a dead local worker's trial at once;
6. temporary files of a checkpoint save killed mid-way are removed at the next start;
7. predict.py stops on SIGTERM between batches, keeps its masks, says how many, exits 143;
8. the exported ``model.safetensors`` has the umask's permissions;
9. ``config.json`` records what tiling needs, and the README's ONNX snippet runs from it;
10. ``ckpt_path=latest`` that finds another experiment says so;
11. no known console noise (logging interval, FLOPs 0, Lightning's tip, LeafSpec in predict);
12. the config-group table of docs/training.md lists every conf/ option; the crop message fits any depth.

(3, the scripts' start from the repository root, is another engineer's.)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import ROOT, TINY, compose_run, popen_script, trained_checkpoint

from segtrain.run import train

BASE_LR, ETA_MIN = 0.003, 1.0e-5  # conf/optimizer/adamw.yaml, conf/scheduler/cosine.yaml


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _cosine(epoch: int, epochs: int) -> float:
    return ETA_MIN + (BASE_LR - ETA_MIN) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def _lrs(metrics: Path) -> list[float]:
    with open(metrics, newline="") as f:
        return [float(row["lr-AdamW"]) for row in csv.DictReader(f) if row.get("lr-AdamW")]


# ------------------------------------------------------------------ 1, 6, 11: a resumed run -----

class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """2 epochs, then a save killed mid-way (its temp files planted), then resumed to 4 epochs in a new folder."""
    root = tmp_path_factory.mktemp("longer")
    small = ["data.num_samples=8", "callbacks.prediction_grid=null"]  # 2 training batches an epoch
    records, logger = _Records(), logging.getLogger("segtrain")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(compose_run([*small, "trainer.max_epochs=2"], root / "first"))
            dead = _dead_pid()
            stale = [root / "first" / "checkpoints" / f"last.ckpt.tmp-{dead}", root / "first" / f"metrics.csv.tmp-{dead}"]
            live = root / "first" / "checkpoints" / f"best.ckpt.tmp-{os.getpid()}"  # a live process's: kept
            for path in (*stale, live):
                path.write_bytes(b"half a checkpoint")
            train(compose_run([*small, "trainer.max_epochs=4", f"ckpt_path={root / 'first'}",
                               "resume_allow_changes=[trainer.max_epochs]"], root / "resumed"))
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return {"root": root, "warnings": [str(w.message) for w in caught], "log": records.lines, "stale": stale, "live": live}


@pytest.mark.slow
def test_a_resume_to_train_longer_follows_the_new_cosine_schedule(resumed):
    """Issue 27.1: the extra epochs ran at eta_min, then the rate climbed back up (T_max stayed 2)."""
    assert _lrs(resumed["root"] / "first" / "metrics.csv") == pytest.approx([_cosine(e, 2) for e in range(2)])
    # The resumed epochs 2 and 3 are those of the cosine schedule computed for 4 epochs.
    assert _lrs(resumed["root"] / "resumed" / "metrics.csv") == pytest.approx([_cosine(e, 4) for e in (2, 3)])
    last = torch.load(resumed["root"] / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["lr_schedulers"][0]["T_max"] == 4
    assert any("T_max 2 -> 4" in line for line in resumed["log"])


@pytest.mark.slow
def test_temp_files_of_a_killed_save_are_removed_at_the_resume(resumed):
    """Issue 27.6: a SIGKILL during a checkpoint save left <name>.ckpt.tmp-<pid> in checkpoints/ for good."""
    for path in resumed["stale"]:
        assert not path.exists()
        assert any(str(path) in line and "killed" in line for line in resumed["log"]), resumed["log"]
    assert resumed["live"].exists()


@pytest.mark.slow
def test_a_small_run_does_not_warn_about_the_logging_interval(resumed):
    """Issue 27.11: 2 batches an epoch < log_every_n_steps=10; every training value is an epoch mean anyway."""
    assert not [w for w in resumed["warnings"] if "smaller than the logging interval" in w]


def test_a_plateau_schedule_takes_new_values_and_refuses_a_flipped_mode():
    import functools

    from torch.optim.lr_scheduler import ReduceLROnPlateau

    from segtrain.schedule import follow_config

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    restored = ReduceLROnPlateau(optimizer, mode="max", patience=3)
    restored.step(0.5)
    changed = follow_config(restored, functools.partial(ReduceLROnPlateau, mode="max", patience=7), optimizer)
    assert changed == {"patience": (3, 7)} and restored.patience == 7 and restored.best == 0.5
    with pytest.raises(ValueError, match=r"mode changed .*measured the other way round"):
        follow_config(restored, functools.partial(ReduceLROnPlateau, mode="min", patience=7), optimizer)


# ------------------------------------------------------------------ 2: a refused run folder -----

@pytest.mark.slow
def test_a_refused_run_leaves_every_byte_of_the_old_run(tmp_path):
    """Issue 27.2: the refusal came after Hydra had rewritten <old run>/.hydra/*.yaml."""
    old = tmp_path / "old"
    for name in ("config.yaml", "train.log", "metrics.csv", ".hydra/config.yaml", ".hydra/hydra.yaml",
                 ".hydra/overrides.yaml", "checkpoints/last.ckpt"):
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        (old / name).write_text(f"the old run's {name}\n")
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={old}", f"paths.log_dir={tmp_path}", *TINY],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "already holds a run" in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    after = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    assert after == before


def test_a_live_runs_folder_is_refused_without_writing(tmp_path):
    from segtrain.run_folder import RunFolderError, RunFolderLock, check_run_folder

    check_run_folder(str(tmp_path / "new"))  # a folder Hydra has yet to create: nothing to refuse
    with RunFolderLock(str(tmp_path)):
        lock = (tmp_path / ".run.lock").read_bytes()
        with pytest.raises(RunFolderError, match="in use by another live run"):
            check_run_folder(str(tmp_path))
        assert (tmp_path / ".run.lock").read_bytes() == lock


# ------------------------------------------------------------------ 4: one legend -----

@pytest.mark.parametrize("task, num_classes, names, expected", [
    ("binary", 1, None, ["foreground"]),
    ("binary", 1, ["cell"], ["cell"]),
    ("binary", 1, ["background", "cell"], ["cell"]),
    ("multiclass", 3, None, ["class 1", "class 2"]),
    ("multiclass", 3, ["background", "road", "car"], ["road", "car"]),  # data.class_names: background first
    ("multiclass", 3, ["road", "car"], ["road", "car"]),  # a datamodule's class_names: the drawn classes
    ("multilabel", 3, None, ["class 0", "class 1", "class 2"]),
    ("multilabel", 3, ["cell", "edge", "dust"], ["cell", "edge", "dust"]),
])
def test_the_legend_pairs_each_colour_with_its_class(task, num_classes, names, expected):
    from datamodules.masks import class_palette
    from segtrain.callbacks import legend_entries

    layers = num_classes - 1 if task == "multiclass" else num_classes
    colours = [tuple(c) for c in class_palette(layers + 1)[1:].tolist()]  # class k (label k-1): palette[k]
    assert legend_entries(task, num_classes, names) == list(zip(expected, colours))


def test_a_name_count_that_fits_no_form_is_refused():
    from segtrain.callbacks import legend_entries

    with pytest.raises(ValueError, match=r"2 class names .* do not fit task=multiclass num_classes=4"):
        legend_entries("multiclass", 4, ["a", "b"])


def test_predict_overlays_and_training_pictures_share_the_legend(monkeypatch, tmp_path):
    """Issue 27.4: with data.class_names=[background, road, car] predict labelled red "background"."""
    from segtrain import callbacks
    from segtrain.callbacks import PredictionGrid, drawing_colors
    from segtrain.inference import save_overlay

    shown: list[list[tuple[str, tuple[int, int, int]]]] = []
    real = callbacks.legend_strip
    monkeypatch.setattr(callbacks, "legend_strip", lambda entries, *a, **k: shown.append(entries) or real(entries, *a, **k))
    names = ["background", "road", "car"]
    red, green = drawing_colors("multiclass", 3)
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    save_overlay(image, mask, "multiclass", 3, str(tmp_path), "x", names)
    PredictionGrid(str(tmp_path), tile_size=40).render(torch.zeros(1, 3, 40, 40), torch.zeros(1, 40, 40, dtype=torch.long),
                                                       torch.zeros(1, 3, 40, 40), "multiclass", 3, names)
    assert shown[0] == [("road", red), ("car", green)]
    assert shown[1][:2] == shown[0]  # then the two error colours


# ------------------------------------------------------------------ 5: a dead local sweep worker -----

def test_a_dead_local_workers_trial_is_requeued_at_once(tmp_path):
    """Issue 27.5: the resume waited the whole grace period for a worker whose process was gone."""
    from types import SimpleNamespace

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from hydra_plugins.segtrain_optuna_sweeper import _impl, _search_space, _settings

    space = _search_space.parse_search_space({"x": "interval(0.0, 1.0)"})
    s = _settings.Settings("maximize", "study", f"sqlite:///{tmp_path / 's.db'}", 4, 1, space,
                           lambda: optuna.samplers.RandomSampler(seed=0), None, 0.2, 3600.0)
    sweeper = SimpleNamespace(launcher=None, config=None)
    run = _impl.SweepRun(sweeper, s)
    try:
        dead, elsewhere, alive = (run.study.ask({"x": FloatDistribution(0, 1)}) for _ in range(3))
        here = _impl.this_worker()
        for trial, worker in ((dead, {**here, "pid": _dead_pid()}), (elsewhere, {"host": "another-host", "pid": _dead_pid()}),
                              (alive, here)):
            run.storage.set_trial_system_attr(trial._trial_id, _impl.WORKER_ATTR, worker)
            run.storage.set_trial_system_attr(trial._trial_id, _impl.HEARTBEAT_ATTR, time.time())  # a fresh beat
        finished, running = run.census()
        states = {t.number: t for t in run.study.get_trials()}
        assert states[dead.number].state == TrialState.FAIL and "error" not in states[dead.number].user_attrs
        assert states[elsewhere.number].state == states[alive.number].state == TrialState.RUNNING
        assert [t.user_attrs.get("retry_of") for t in states.values() if t.state == TrialState.WAITING] == [dead.number]
        # A trial the sweep asks records its worker (host, pid).
        (mine,) = run._ask(1)
        assert run.storage.get_trial(mine._trial_id).system_attrs[_impl.WORKER_ATTR] == here
    finally:
        run.heartbeat.stop()


# ------------------------------------------------------------------ 6: temp files, unit -----

def test_only_dead_processes_temp_files_go_and_never_under_a_live_run(tmp_path):
    from segtrain.run_folder import RunFolderLock
    from segtrain.temp_files import remove_stale_temp_files

    (tmp_path / "checkpoints").mkdir()
    dead = tmp_path / "checkpoints" / f"last.ckpt.tmp-{_dead_pid()}"
    live = tmp_path / "checkpoints" / f"last.ckpt.tmp-{os.getpid()}"
    plain = tmp_path / "checkpoints" / "last.ckpt"
    for path in (dead, live, plain):
        path.write_bytes(b"x")
    with RunFolderLock(str(tmp_path)):  # held by a live run (here: an open lock of this process)
        assert remove_stale_temp_files(str(tmp_path)) == []
        assert dead.exists()
    assert remove_stale_temp_files(str(tmp_path)) == [str(dead)]
    assert live.exists() and plain.exists() and not dead.exists()


# ------------------------------------------------------------------ 7, 11: predict and SIGTERM -----

@pytest.fixture(scope="module")
def terminated(tmp_path_factory):
    """predict.py on 300 images, one a batch, SIGTERM as soon as its first mask is written."""
    root = tmp_path_factory.mktemp("sigterm")
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    for i in range(300):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "in" / f"img{i:03d}.png")
    out = root / "out"
    proc = popen_script(["scripts/predict.py", f"ckpt_path={trained_checkpoint('binary', 1)}", f"input={root / 'in'}",
                         f"output={out}", "batch_size=1", "trainer.accelerator=cpu"], root / "predict.log")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not list((out / "masks").glob("*.png")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"returncode": proc.returncode, "output": (root / "predict.log").read_text(),
            "masks": sorted((out / "masks").glob("*.png"))}


@pytest.mark.slow
def test_predict_stops_on_sigterm_and_keeps_what_it_wrote(terminated):
    """Issue 27.7: predict.py ignored SIGTERM (under `timeout` it ran to the end)."""
    assert terminated["returncode"] == 143, terminated["output"][-3000:]
    found = re.search(r"Stopped by SIGTERM: masks of (\d+) of 300 image\(s\) written to .* and kept", terminated["output"])
    assert found, terminated["output"][-3000:]
    assert int(found.group(1)) == len(terminated["masks"]) < 300
    for mask in terminated["masks"]:  # whole files (atomic writes)
        assert Image.open(mask).size == (48, 48)


@pytest.mark.slow
def test_predict_prints_no_known_noise(terminated):
    """Issue 27.11: Lightning's litlogger tip and the _pytree LeafSpec deprecation in predict."""
    for noise in ("litlogger", "LeafSpec", "💡"):
        assert noise not in terminated["output"]


def test_the_model_summary_measures_a_folder_run_at_its_crop(tmp_path):
    """Issue 27.11: "Total FLOPs: 0" for data=folder, which had no example input."""
    from segtrain.run import build_module

    cfg = compose_run(["data=folder", "data.root=/nonexistent", "data.crop_size=64"], tmp_path, synthetic=False)
    assert tuple(build_module(cfg).example_input_array.shape) == (1, 3, 64, 64)


# ------------------------------------------------------------------ 8, 9: the exported folder -----

def _tiny_net():
    from segtrain.network import build_network

    torch.manual_seed(0)
    return build_network("unet", "tu-resnet18", "binary", 1, encoder_depth=4, decoder_channels=[16, 8, 8, 8]).eval()


def test_the_exported_weights_have_the_umasks_permissions(tmp_path):
    """Issue 27.8: model.safetensors, the file docs say to share, was 0600."""
    from segtrain.pretrained import save_pretrained

    old = os.umask(0o022)
    try:
        folder = Path(save_pretrained(_tiny_net(), {"task": "binary", "num_classes": 1}, tmp_path / "w"))
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert modes == {"model.safetensors": "0o644", "config.json": "0o644", "README.md": "0o644"}


def _doc_block(path: Path, marker: str) -> str:
    """The python block of ``path`` that contains ``marker``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S) if marker in b]
    assert len(blocks) == 1, f"{path.name}: expected one python block with {marker!r}"
    return blocks[0]


@pytest.mark.parametrize("doc", ["README.md", "docs/predict-export.md"])
def test_the_onnx_tiling_snippet_runs_from_config_json(doc, tmp_path, monkeypatch):
    """Issue 27.9: the snippet hard-coded roi_size=(512, 512); it reads the window and padding from config.json."""
    from reliability_helpers import load_script

    from segtrain.pretrained import save_pretrained
    from segtrain.sliding import whole_image_logits

    net = _tiny_net()
    window = {"window": 64, "overlap": 0.25, "mode": "gaussian", "sw_batch_size": None, "pad": True}
    save_pretrained(net, {"task": "binary", "num_classes": 1}, tmp_path / "model-weights", None, window)
    meta = json.loads((tmp_path / "model-weights" / "config.json").read_text())["_segtrain"]
    assert meta["inference"] == window and meta["size_multiple"] == 32
    load_script("export").export_onnx(net, torch.randn(1, 3, 64, 64), str(tmp_path / "model.onnx"), "legacy",
                                      dynamic_size=True)
    image = torch.randn(1, 3, 100, 75, generator=torch.Generator().manual_seed(0))  # several windows, padded
    monkeypatch.chdir(tmp_path)
    scope = {"image": image}
    exec(compile(_doc_block(ROOT / doc, "sliding_window_inference"), doc, "exec"), scope)
    with torch.no_grad():
        expected = whole_image_logits(net, image, window)
    assert scope["logits"].shape == (1, 1, 100, 75)
    torch.testing.assert_close(scope["logits"], expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ 10: latest finds a sweep trial -----

def test_latest_that_finds_another_experiment_says_so(tmp_path):
    """Issue 27.10: ckpt_path=latest picked a sweep trial and proposed resume_allow_changes=[19 keys]."""
    from omegaconf import OmegaConf

    other = OmegaConf.to_container(compose_run([], tmp_path / "x"), resolve=True)
    other.update(seed=7, monitor_mode="min")
    other["optimizer"].update(lr=0.1, weight_decay=0.5)
    other["data"].update(num_samples=64, batch_size=8)
    other["scheduler"]["scheduler"]["eta_min"] = 0.5
    trial = tmp_path / "logs" / "multiruns" / "sweep" / "3" / "checkpoints"
    trial.mkdir(parents=True)
    torch.save({"config": other, "state_dict": {}}, trial / "last.ckpt")
    cfg = compose_run(["ckpt_path=latest", f"paths.log_dir={tmp_path / 'logs'}"], tmp_path / "logs" / "runs" / "new")
    with pytest.raises(ValueError) as raised:
        train(cfg)
    message = str(raised.value)
    assert "ckpt_path=latest picked" in message and "different experiment" in message, message
    assert "ckpt_path=<run folder>" in message and "resume_allow_changes=[" not in message


# ------------------------------------------------------------------ 12: docs and messages -----

def _table_rows() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "training.md").read_text().split("## Configuration groups", 1)[1]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            options = re.sub(r"\([^()]*\)", "", cells[1])  # the notes in brackets name other things
            rows[cells[0].strip("`")] = set(re.findall(r"`([\w/]+)`", options))
    return rows


def test_the_config_group_table_lists_every_option():
    """Issue 27.12: the table lacked logger: mlflow and the newer losses that `train.py --help` lists."""
    conf = ROOT / "conf"
    groups = {p.name: p for p in conf.iterdir() if p.is_dir() and p.name != "hydra"}
    groups["loss/terms"] = conf / "loss" / "terms"
    rows = _table_rows()
    assert set(rows) == set(groups)
    for group, folder in groups.items():
        options = {p.stem for p in folder.glob("*.yaml")}
        assert rows[group] == options, f"docs/training.md, group {group}: missing {options - rows[group]}, " \
                                       f"not in conf/: {rows[group] - options}"


def test_the_crop_message_holds_for_any_encoder_depth():
    """Issue 27.12: "halves it 5 times" while the default U-Net has encoder depth 4 (stride 16)."""
    from datamodules.crops import check_crop_size

    with pytest.raises(ValueError) as raised:
        check_crop_size(100)
    assert "5 times" not in str(raised.value) and "model.encoder_depth" in str(raised.value)
