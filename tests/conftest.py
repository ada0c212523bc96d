"""Shared fixtures for pipeline tests: compose the real ``conf/train.yaml`` in-process.

    def test_x(compose, tmp_path):
        cfg = compose(["loss=dice"], tmp_path)        # the tiny run (reliability_helpers.TINY)
        value = train(cfg)

Composing with Hydra's compose API is what ``python train.py ...`` does minus the process start
(seconds saved per test); ``paths.output_dir`` replaces Hydra's run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]

if str(ROOT) not in sys.path:  # so `segtrain`, `datamodules`, `seglosses` import without install
    sys.path.insert(0, str(ROOT))

from reliability_helpers import compose_run  # noqa: E402  (pytest puts tests/ on sys.path for conftest)


@pytest.fixture
def compose():
    """:func:`reliability_helpers.compose_run` as a fixture: ``compose(overrides, output_dir=None, tiny=True)``."""
    return compose_run


@pytest.fixture
def compose_cfg(tmp_path):
    """``compose_cfg(*overrides)`` -> the composed config with ``paths.output_dir=tmp_path/run``."""

    def _compose(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_run(overrides, tmp_path / "run", tiny=tiny)

    return _compose
