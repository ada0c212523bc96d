"""Sweeps: failure handling (segtrain/sweep.py), the Optuna search and the SLURM launcher config.

Unit tests run in-process. The multirun tests start ``train.py -m`` in a subprocess on tiny
settings; the multirun with a failing job is built once per session (``tiny_multirun``) and
reused by tests/test_summarize_sweep.py.
"""

from __future__ import annotations

import math

import pytest
import yaml

from segtrain import sweep


def test_worst_value_by_direction():
    assert sweep.worst_value("max") == -math.inf
    assert sweep.worst_value("min") == math.inf
    with pytest.raises(ValueError, match="'max' or 'min'"):
        sweep.worst_value("maximize")


def _boom(cfg):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_failed_job_in_multirun_records_and_returns_worst(tmp_path):
    value = sweep.run_sweep_job(_boom, None, mode="max", output_dir=tmp_path, multirun=True,
                                overrides=["loss=dice", "data.batch_size=512"])
    assert value == -math.inf and isinstance(value, float)
    record = yaml.safe_load((tmp_path / sweep.FAILURE_FILE).read_text())
    assert record["status"] == "failed"
    assert record["error_type"] == "RuntimeError"
    assert "out of memory" in record["message"]
    assert "_boom" in record["traceback"]
    assert record["overrides"] == ["loss=dice", "data.batch_size=512"]
    assert record["returned"] == -math.inf


def test_nan_metric_in_multirun_is_a_failure(tmp_path):
    value = sweep.run_sweep_job(lambda cfg: float("nan"), None, mode="min", output_dir=tmp_path, multirun=True)
    assert value == math.inf
    record = yaml.safe_load((tmp_path / sweep.FAILURE_FILE).read_text())
    assert record["error_type"] == "NonFiniteMetric" and "nan" in record["message"]


def test_single_run_raises_and_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="out of memory"):
        sweep.run_sweep_job(_boom, None, mode="max", output_dir=tmp_path, multirun=False)
    assert not (tmp_path / sweep.FAILURE_FILE).exists()


def test_successful_job_passes_value_through(tmp_path):
    assert sweep.run_sweep_job(lambda cfg: 0.75, None, mode="max", output_dir=tmp_path, multirun=True) == 0.75
    assert not (tmp_path / sweep.FAILURE_FILE).exists()


def test_keyboard_interrupt_still_stops_the_sweep(tmp_path):
    def interrupted(cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep_job(interrupted, None, mode="max", output_dir=tmp_path, multirun=True)
