"""The resume promises of docs/reliability.md, through real (tiny, in-process) runs.

* ``last.ckpt`` is rewritten at the end of every epoch, also when the monitored metric does not
  improve (Lightning 2.6 alone writes it only with a new best);
* a resume into a new run folder carries the best score and the best checkpoint's path (what a
  sweep optimises), instead of restarting the best from the resumed epochs;
* a resume under a config that trains something else is refused, naming every differing key,
  unless the key is listed in ``resume_allow_changes``;
* Ctrl+C prints the command that resumes the run (subprocess: a real SIGINT).

The "metric that stops improving" is ``monitor=epoch monitor_mode=min``: epoch 0 is the best and
every later epoch is worse, deterministically (a real metric of a tiny run could go either way).
"""

from __future__ import annotations

import csv
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY, compose_run, popen_script

from segtrain.data_plan import plan_data
from segtrain.lightning_compat import ResumableModelCheckpoint
from segtrain.resume import check_resume_config, config_as_resumed, interrupted_message, resume_differences
from segtrain.run import train

# A metric that never improves after epoch 0 (see the module docstring); 8 samples: 2 batches an epoch.
NOT_IMPROVING = ("monitor=epoch", "monitor_mode=min", "data.num_samples=8", "callbacks.prediction_grid=null")


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _checkpoint_state(ckpt: dict) -> dict:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ResumableModelCheckpoint")]
    return state


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """Two epochs whose metric stops improving after epoch 0."""
    run = tmp_path_factory.mktemp("resume") / "first"
    assert train(compose_run([*NOT_IMPROVING, "trainer.max_epochs=2"], run)) == 0.0
    return run


def test_last_ckpt_is_written_after_every_epoch(first_run):
    assert _ckpt(first_run / "checkpoints" / "last.ckpt")["epoch"] == 1  # Lightning alone: 0, the best epoch
    assert sorted(p.name for p in (first_run / "checkpoints").glob("best*.ckpt")) == ["best_epoch000.ckpt"]


def test_resume_into_a_new_folder_keeps_the_best(first_run, tmp_path):
    run = tmp_path / "resumed"
    overrides = [*NOT_IMPROVING, "trainer.max_epochs=3", f"ckpt_path={first_run}", "resume_allow_changes=[trainer.max_epochs]"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = train(compose_run(overrides, run))
    assert not [w for w in caught if "won't be reloaded" in str(w.message)]
    assert value == 0.0  # epoch 0's score; without the carried best, the resumed epoch 2 (score 2)
    last = _ckpt(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 2
    state = _checkpoint_state(last)
    assert float(state["best_model_score"]) == 0.0
    assert state["best_model_path"] == str(first_run / "checkpoints" / "best_epoch000.ckpt")
    assert (first_run / "checkpoints" / "best_epoch000.ckpt").is_file()  # the old folder is never pruned


def test_resume_into_its_own_folder(first_run, tmp_path):
    """A requeued cluster job: same folder, ckpt_path=<folder>; the earlier metrics stay beside the new."""
    run = tmp_path / "requeued"
    shutil.copytree(first_run, run)
    overrides = [*NOT_IMPROVING, "trainer.max_epochs=3", f"ckpt_path={run}", "resume_allow_changes=[trainer.max_epochs]"]
    assert train(compose_run(overrides, run)) == 0.0
    assert _ckpt(run / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert {int(r["epoch"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("epoch")} == {2}
    assert {int(r["epoch"]) for r in csv.DictReader(open(run / "metrics.part1.csv")) if r.get("epoch")} == {0, 1}


def test_resume_with_other_data_is_refused_naming_the_keys(first_run, tmp_path):
    overrides = [*NOT_IMPROVING, "trainer.max_epochs=3", f"ckpt_path={first_run}", "data.image_size=64",
                 "loss.terms.dice.weight=2"]
    with pytest.raises(ValueError) as info:
        train(compose_run(overrides, tmp_path / "run"))
    message = str(info.value)
    for part in ("data.image_size: trained with 32 but this run has 64",
                 "loss.terms.dice.weight: trained with 1.0 but this run has 2",
                 "trainer.max_epochs: trained with 2 but this run has 3",
                 # the resize sizes and T_max follow the keys changed: counted, not listed as changes
                 "(and 5 value(s) derived from them)",
                 "resume_allow_changes=[data.image_size,loss.terms.dice.weight,trainer.max_epochs]"):
        assert part in message, message
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything was built


def test_allowed_keys_and_their_derived_values_pass(first_run):
    ckpt_config = _ckpt(first_run / "checkpoints" / "last.ckpt")["config"]
    cfg = compose_run([*NOT_IMPROVING, "trainer.max_epochs=5"], first_run)
    plan_data(cfg)  # as train() does before comparing: model.in_channels follows the data (3)
    # scheduler.scheduler.T_max is ${trainer.max_epochs}: a difference of its own without the allowance ...
    assert "scheduler.scheduler.T_max" in resume_differences(ckpt_config, config_as_resumed(cfg, ckpt_config, []))
    # ... and none with it.
    check_resume_config(ckpt_config, cfg, "x.ckpt", allow_changes=["trainer.max_epochs"])
    with pytest.raises(ValueError, match=r"resume_allow_changes=\['model'\] cannot include task, num_classes, model"):
        check_resume_config(ckpt_config, cfg, "x.ckpt", allow_changes=["model"])


def test_data_source_change_is_refused(tmp_path):
    old = {"task": "binary", "num_classes": 1, "model": {"arch": "unet"},
           "data": {"_target_": "datamodules.FolderDataModule", "root": "/data/a", "num_workers": 2}}
    new = {**old, "data": {"_target_": "datamodules.SyntheticDataModule", "num_workers": 0, "num_samples": 16}}
    with pytest.raises(ValueError) as info:
        check_resume_config(old, new, "x.ckpt")
    message = str(info.value)
    assert "data._target_: trained with 'datamodules.FolderDataModule'" in message
    assert "data.root: trained with '/data/a' but this run has (not set)" in message
    assert "num_workers" not in message  # how data is loaded changes nothing that is trained


def test_windows_per_pass_change_nothing_trained():
    """A run from before sliding_window.sw_batch_size=null (it recorded 4) resumes under the new default."""
    old = {"task": "binary", "num_classes": 1, "model": {"arch": "unet"},
           "data": {"_target_": "datamodules.FolderDataModule", "root": "/d", "sliding_window": {"overlap": 0.25, "sw_batch_size": 4}}}
    new = {**old, "data": {**old["data"], "sliding_window": {"overlap": 0.25, "sw_batch_size": None}}}
    check_resume_config(old, new, "x.ckpt")
    changed = {**old, "data": {**old["data"], "sliding_window": {"overlap": 0.5, "sw_batch_size": None}}}
    with pytest.raises(ValueError, match=r"data.sliding_window.overlap: trained with 0.25"):
        check_resume_config(old, changed, "x.ckpt")


def test_a_run_from_before_data_pad_resumes_with_its_implied_value():
    """data.pad is newer than some checkpoints: absent there means padding on (what they did)."""
    old = {"task": "binary", "num_classes": 1, "model": {"arch": "unet"},
           "data": {"_target_": "datamodules.FolderDataModule", "root": "/d", "crop_size": 512}}
    check_resume_config(old, {**old, "data": {**old["data"], "pad": True}}, "x.ckpt")
    with pytest.raises(ValueError, match=r"data.pad: trained with \(not set\) but this run has False"):
        check_resume_config(old, {**old, "data": {**old["data"], "pad": False}}, "x.ckpt")


def test_resume_command_after_an_interrupt(tmp_path):
    assert "nothing to resume" in interrupted_message(str(tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    message = interrupted_message(str(tmp_path), ["loss=dice", "ckpt_path=old.ckpt", "data.root=my data"])
    assert message.endswith(f"python train.py loss=dice 'data.root=my data' ckpt_path={last}")


@pytest.mark.slow
def test_sigint_prints_how_to_resume(tmp_path):
    """A real Ctrl+C (SIGINT) once the first last.ckpt exists: the run says how to resume it."""
    run = tmp_path / "run"
    log = tmp_path / "console.log"
    # overfit_batches: Lightning warns that it turns shuffling off, a Python warning for train.log to hold
    # (the logging interval's, which tiny runs used to give, is known noise now: segtrain/run_log.py).
    proc = popen_script(["train.py", *TINY, "trainer.max_epochs=50", "+trainer.overfit_batches=1",
                         f"hydra.run.dir={run}"], log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not (run / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.05)
    assert proc.poll() is None, log.read_text()[-3000:]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) != 0
    text = log.read_text()
    assert "resume with: python train.py" in text and f"ckpt_path={run}/checkpoints/last.ckpt" in text, text[-3000:]
    log_text = (run / "train.log").read_text()
    assert "resume with" in log_text  # the whole console is in train.log ...
    assert "GPU available" in log_text and "requested to overfit" in log_text  # ... Lightning's log, warnings
    assert log_text.count("Run folder:") == 1  # Hydra's own file handler is not doubled
    for noise in ("litlogger", "Previous log files", "LeafSpec"):  # what nobody can act on
        assert noise not in text


def test_checkpoint_callback_is_the_resumable_one(compose_cfg):
    from hydra.utils import instantiate

    cb = instantiate(compose_cfg().callbacks.model_checkpoint)
    assert isinstance(cb, ResumableModelCheckpoint) and cb.save_last


def test_the_model_checkpoint_internals_it_relies_on():
    """segtrain/lightning_compat.py item 3 calls these private ModelCheckpoint helpers; an upgrade that
    renames one fails here by name (the runs above would only show a missing last.ckpt)."""
    import inspect

    from lightning.pytorch.callbacks import ModelCheckpoint

    expected = {
        "_should_skip_saving_checkpoint": ["self", "trainer"],
        "_should_save_on_train_epoch_end": ["self", "trainer"],
        "_monitor_candidates": ["self", "trainer"],
        "_save_last_checkpoint": ["self", "trainer", "monitor_candidates"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(ModelCheckpoint, name)).parameters) == params, name
    state = ModelCheckpoint(dirpath="unused").state_dict()
    assert {"dirpath", "last_model_path", "best_model_score", "best_model_path", "best_k_models"} <= set(state)
