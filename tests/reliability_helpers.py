"""Shared by the tests: the one tiny run (:data:`TINY`), composing the config, scripts in subprocesses.

:func:`trained_checkpoint` trains a tiny network once per test session and task (an
``lru_cache`` on this module, which pytest imports once) so that the predict, export and
bad-input modules share it instead of each paying for a training run.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch import Callback
from omegaconf import DictConfig
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# The one tiny run every training test starts from, in-process (:func:`compose_run`) or as
# train.py arguments; a test adds only what it is about, after these (later overrides win).
# 32 px images, 16 samples, batches of 4, one CPU process, one epoch, no early stopping, no
# progress bar (its refreshes cost time and clutter the captured output). The data part is left
# out for data=folder, whose config has no num_samples.
TINY_DATA = ("data.image_size=32", "data.num_samples=16", "data.batch_size=4", "data.num_workers=0")
TINY_TRAINER = (
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "++trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "callbacks.early_stopping=null",
)
TINY = (*TINY_DATA, *TINY_TRAINER)


def run_script(args: Sequence[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """``python <args>`` from the repository root; raises with the output tail on failure when ``check``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def popen_script(args: Sequence[str], log: Path) -> subprocess.Popen:
    """Start ``python <args>`` in the background, output to ``log``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="1")
    out = open(log, "w")  # noqa: SIM115 -- closed by the OS when the process ends
    # SIGINT at its default in the child: a suite started in the background by a non-interactive
    # shell (`cmd &`) runs with SIGINT ignored, which a child inherits, and Ctrl+C tests then hang.
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_SCRATCH = tempfile.mkdtemp(prefix="seg_reliability_")
atexit.register(shutil.rmtree, _SCRATCH, True)


def compose_run(
    overrides: Sequence[str] = (),
    output_dir: Path | str | None = None,
    tiny: bool = True,
    synthetic: bool = True,
) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``python train.py`` does, minus the process start.

    Args:
        overrides: command-line style overrides, e.g. ``["loss=dice", "loss.terms.dice.weight=2"]``.
        output_dir: the run folder (``paths.output_dir``); required to run ``train(cfg)``.
        tiny: put :data:`TINY` first.
        synthetic: with ``tiny``, include its data part (off for ``data=folder``).
    """
    from hydra import compose, initialize_config_dir

    first = (TINY if synthetic else TINY_TRAINER) if tiny else ()
    last = () if output_dir is None else (f"paths.output_dir={Path(output_dir).as_posix()}",)
    # Dataset fingerprints are cached in the session's scratch folder, not in the checkout's logs/.
    last = (*last, f"paths.cache_dir={Path(_SCRATCH).as_posix()}/cache")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[*first, *overrides, *last])


@functools.lru_cache(maxsize=None)
def trained_checkpoint(task: str = "binary", num_classes: int = 1) -> Path:
    """``last.ckpt`` of a one-epoch run on tiny synthetic data (trained in-process, once per session)."""
    from segtrain.run import train

    run_dir = Path(_SCRATCH) / f"run_{task}"
    loss = {"binary": "bce_dice", "multiclass": "ce_dice", "multilabel": "bce_dice"}[task]
    cfg = compose_run([f"task={task}", f"num_classes={num_classes}", f"loss={loss}"], run_dir)
    train(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file(), f"training wrote no {ckpt}"
    return ckpt


class ExplodeLearningRate(Callback):
    """Test stand-in for a diverging run: from epoch ``epoch`` on, the learning rate is multiplied by 1e12."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] *= 1e12


@functools.lru_cache(maxsize=None)
def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (registered in ``sys.modules``, as dataclasses need)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_images(folder: Path, sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[Path]:
    """RGB PNGs of the given ``(height, width)`` plus, if there are >= 3 sizes, the third as grayscale JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        if i == 2:
            path = folder / f"img{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(path)
        else:
            path = folder / f"img{i}.png"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
