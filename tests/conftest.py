"""Shared helpers for pipeline tests: compose the real ``conf/train.yaml`` in-process.

    def test_x(compose, tmp_path):
        cfg = compose(["loss=dice"], tmp_path)        # tiny data, 1 CPU device, no progress bar
        value = train(cfg)

Composing with Hydra's compose API is what ``python train.py ...`` does minus the process start
(seconds saved per test); ``paths.output_dir`` replaces Hydra's run folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose as hydra_compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

if str(ROOT) not in sys.path:  # so `segtrain`, `datamodules`, `seglosses` import without install
    sys.path.insert(0, str(ROOT))

# Small and fast: 32 px images, 16 samples, batches of 4, one CPU process, no rich progress bar
# (its refreshes cost time and clutter the captured output).
TINY = (
    "data.image_size=32",
    "data.num_samples=16",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
)


def compose_config(overrides: Sequence[str] = (), output_dir: str | os.PathLike | None = None, tiny: bool = True) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` (after the tiny defaults when ``tiny``).

    Args:
        overrides: command-line style overrides, e.g. ``["loss=dice", "loss.terms.dice.weight=2"]``.
        output_dir: the run folder (``paths.output_dir``); required to run ``train(cfg)``.
        tiny: prepend :data:`TINY` (later overrides win).
    """
    all_overrides = [*(TINY if tiny else ()), *overrides]
    if output_dir is not None:
        all_overrides.append(f"paths.output_dir={Path(output_dir).as_posix()}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=all_overrides)


@pytest.fixture
def compose():
    """:func:`compose_config` as a fixture (test modules cannot import conftest by name)."""
    return compose_config


@pytest.fixture
def compose_cfg(tmp_path):
    """``compose_cfg(*overrides)`` -> the composed config with ``paths.output_dir=tmp_path/run``."""

    def _compose(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_config(overrides, tmp_path / "run", tiny=tiny)

    return _compose
