"""``<run>/train.log`` holds the run's whole console (Lightning's log, warnings, errors) without the
noise nobody can act on; a failed single run leaves ``failure.yaml`` like a failed sweep job.

In-process: the successful run is the session's shared tiny run (``trained_checkpoint``); the
failing one fails before training. Python warnings (pytest captures them in-process) and the
Hydra path (Hydra's own file handler not doubled) are checked by the SIGINT test in
tests/test_resume_promises.py, which starts ``train.py``.
"""

from __future__ import annotations

import io
import logging
import sys

import pytest
import yaml
from reliability_helpers import compose_run, trained_checkpoint

from segtrain.run import train
from segtrain.run_log import console_log, record_failed_run


def test_train_log_holds_the_console_without_the_noise():
    text = (trained_checkpoint("binary", 1).parents[1] / "train.log").read_text()
    assert "GPU available" in text  # Lightning's own logger (its handler does not reach Hydra's file)
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in text
    for noise in ("litlogger", "Previous log files", "LeafSpec", "\x1b["):
        assert noise not in text


def test_console_log_tees_every_stream_and_drops_redraws(tmp_path):
    path = tmp_path / "train.log"
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    logger = logging.getLogger("test_run_log.bound_early")
    logger.addHandler(handler)
    real = sys.stderr
    sys.stderr = console  # as a handler bound to the console before the run started
    handler.setStream(console)
    try:
        with console_log(str(path)):
            print("printed")
            logger.warning("logged by a handler made before the run")
            sys.stderr.write("\x1b[2K\x1b[1Aprogress frame\n")  # a progress bar redrawing itself
            sys.stderr.write("\x1b[31mred\x1b[0m\n")
    finally:
        sys.stderr = real
        logger.removeHandler(handler)
    text = path.read_text()
    for line in ("printed", "logged by a handler made before the run", "red\n"):
        assert line in text
    assert "progress frame" not in text and "\x1b" not in text
    assert "logged by a handler" in console.getvalue()  # the console still gets everything


def test_failed_run_leaves_its_traceback_and_failure_yaml(tmp_path):
    run = tmp_path / "run"
    cfg = compose_run(["data.num_samples=3", "data.val_fraction=0.34", "data.batch_size=4", "data.drop_last=true",
                       "callbacks.prediction_grid=null"], run)
    with pytest.raises(ValueError, match="No training batch"):
        record_failed_run(train)(cfg)
    log = (run / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "ValueError: No training batch" in log
    failure = yaml.safe_load((run / "failure.yaml").read_text())
    assert failure["status"] == "failed" and failure["error_type"] == "ValueError"
    assert failure["message"].startswith("No training batch") and "require_training_batches" in failure["traceback"]


def test_noise_is_switched_off_where_it_starts(compose_cfg):
    import logging

    from segtrain.hydra_callbacks import quiet_sweep_logging
    from segtrain.run import build_module

    # debug=limit trains 3 batches an epoch: it logs every step instead of warning about log_every_n_steps.
    limit = compose_cfg("debug=limit", tiny=False)
    assert limit.trainer.log_every_n_steps <= limit.trainer.limit_train_batches
    # The model summary gets an input to measure, so it prints real FLOPs, not "Total FLOPs: 0".
    assert tuple(build_module(compose_cfg()).example_input_array.shape) == (1, 3, 32, 32)
    # Before an Optuna sweep: its records go through Hydra's handlers (no colour codes), alembic is quiet.
    import optuna
    from omegaconf import OmegaConf

    quiet_sweep_logging(OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}}}))
    optuna_log = logging.getLogger("optuna")
    # Optuna's own colour handler is a plain StreamHandler (pytest attaches its capture handlers, subclasses, too).
    assert optuna_log.propagate and not [h for h in optuna_log.handlers if type(h) is logging.StreamHandler]
    assert logging.getLogger("alembic").getEffectiveLevel() == logging.WARNING


def test_a_logger_bound_to_a_replaced_stderr_still_reaches_the_log(tmp_path):
    """Lightning's logger keeps the stderr it saw at import; once sys.stderr was replaced, the tee
    misses its handler, so the log file gets a handler of its own on that logger (and loses it after)."""
    stale = io.StringIO()  # the stderr of an earlier time
    logger = logging.getLogger("test_run_log.non_propagating")
    handler = logging.StreamHandler(stale)
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    path = tmp_path / "train.log"
    try:
        with console_log(str(path)):
            logger.info("GPU available: False")
        logger.info("after the run")
    finally:
        logger.removeHandler(handler)
    assert path.read_text().count("GPU available: False") == 1 and "after the run" not in path.read_text()
    assert "GPU available: False" in stale.getvalue()  # its own console still gets it
