"""Resuming a run: where the checkpoint is, whether it fits this config, and the random state.

What Lightning restores by itself from ``ckpt_path`` (lightning 2.6, checked in its
``_CheckpointConnector``): weights, optimizer and LR-scheduler state, the loops' epoch/step
counters, callback states (best/last checkpoint bookkeeping, early stopping) and the
datamodule's ``state_dict``. What it does *not* save: the random state. Its only use of
``_collect_rng_states`` is to carry the state into spawned DDP workers, so a resumed run would
restart torch, numpy and Python's generators from the seed and draw a different shuffle order,
different dropout masks and different augmentations than the run it continues. The train
sampler (a ``RandomSampler`` without its own generator) draws each epoch's permutation from
torch's global generator when the epoch's iterator is made, and Lightning only calls
``set_epoch`` on samplers that have one (``DistributedSampler``); albumentations 2.0 keeps a
private generator inside every transform of a ``Compose``.

:class:`RandomStateCheckpoint` fills that gap: it stores all of these in the checkpoint and puts
them back when Lightning restores callbacks, which happens after ``datamodule.setup()`` and
before the first epoch's dataloader iterator is created -- so a resume from an end-of-epoch
checkpoint (``last.ckpt``) continues with exactly the numbers the uninterrupted run would have
drawn. A mid-epoch checkpoint restarts that epoch (Lightning warns; batches are not skipped).
"""

from __future__ import annotations

import glob
import os
import random
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.utilities import rank_zero_warn

#: ``ckpt_path`` values that mean "the newest run's last.ckpt".
LATEST = ("latest", "last")

#: Config keys that fix the network's shape: a resumed run must agree with its checkpoint on them.
SHAPE_KEYS = ("task", "num_classes", "model")


# --------------------------------------------------------------------------------------------
# ckpt_path
# --------------------------------------------------------------------------------------------


def find_latest_checkpoint(runs_root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> str:
    """The newest ``checkpoints/last.ckpt`` below ``runs_root`` (by modification time).

    Args:
        runs_root: folder holding the run folders (searched recursively, so multirun
            sub-folders count too).
        exclude: a run folder to ignore -- the current run's own, which is already created
            when the search runs.

    Raises:
        FileNotFoundError: if there is none, saying where it looked and what to pass instead.
    """
    root = os.path.abspath(os.fspath(runs_root))
    found = glob.glob(os.path.join(glob.escape(root), "**", "checkpoints", "last.ckpt"), recursive=True)
    if exclude is not None:
        skip = os.path.abspath(os.fspath(exclude)) + os.sep
        found = [f for f in found if not f.startswith(skip)]
    if not found:
        raise FileNotFoundError(
            f"ckpt_path=latest: no run under {root} has a checkpoints/last.ckpt to resume from. "
            "Train once first, or pass the file itself: ckpt_path=<run folder>/checkpoints/last.ckpt."
        )
    return max(found, key=os.path.getmtime)


def resolve_ckpt_path(
    ckpt_path: str | os.PathLike | None,
    runs_root: str | os.PathLike | None = None,
    current_run_dir: str | os.PathLike | None = None,
) -> str | None:
    """Turn the user's ``ckpt_path`` into an existing checkpoint file, or ``None`` for a fresh run.

    Accepted forms:

    * ``None`` / ``""`` / ``"null"``: start from scratch;
    * ``latest`` (or ``last``): the newest ``checkpoints/last.ckpt`` under ``runs_root``;
    * a run folder: its ``checkpoints/last.ckpt``;
    * a ``.ckpt`` file.

    Args:
        ckpt_path: the value given on the command line.
        runs_root: where run folders live (needed for ``latest``).
        current_run_dir: this run's own folder, never picked by ``latest``.

    Raises:
        FileNotFoundError: the path (or the latest run) does not exist, naming it and the fix.
        ValueError: the file is not a PyTorch checkpoint (e.g. truncated by a crash).
    """
    if ckpt_path is None or str(ckpt_path).strip() in ("", "null", "None"):
        return None
    text = os.path.expanduser(str(ckpt_path).strip())
    if text.lower() in LATEST:
        if runs_root is None:
            raise ValueError(f"ckpt_path={text} needs the runs folder to search (paths.log_dir is not set).")
        return find_latest_checkpoint(runs_root, exclude=current_run_dir)
    path = os.path.abspath(text)
    if os.path.isdir(path):
        for candidate in (os.path.join(path, "checkpoints", "last.ckpt"), os.path.join(path, "last.ckpt")):
            if os.path.isfile(candidate):
                return check_checkpoint_file(candidate)
        raise FileNotFoundError(
            f"ckpt_path={text} is a folder without checkpoints/last.ckpt. Give a run folder that saved "
            "a checkpoint, the .ckpt file itself, or ckpt_path=latest for the newest run."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"ckpt_path={text} does not exist (resolved to {path}). Give an existing .ckpt file, a run "
            "folder (its checkpoints/last.ckpt is used), or ckpt_path=latest for the newest run."
        )
    return check_checkpoint_file(path)


def check_checkpoint_file(path: str) -> str:
    """Reject a file ``torch.load`` would choke on with an unreadable stack trace.

    ``torch.save`` writes a zip archive; a file cut short (a crash without atomic writes, an
    interrupted copy) or some other file type is not one.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (truncated or not a .ckpt file). Pick another "
            "checkpoint, e.g. the run's checkpoints/last.ckpt or a best-*.ckpt next to it."
        )
    return path


def load_checkpoint_config(path: str) -> dict[str, Any] | None:
    """``checkpoint["config"]`` (the run's resolved config as a plain dict), or ``None`` if absent."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    config = checkpoint.get("config")
    return dict(config) if isinstance(config, Mapping) else None


def _shape_part(value: Any) -> Any:
    # The pretrained-weights choice only affects initialisation, which the checkpoint replaces.
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k != "encoder_weights"}
    return value


def check_resume_config(ckpt_config: Mapping[str, Any] | None, config: Mapping[str, Any], path: str) -> None:
    """Fail early, with the differing key, when a checkpoint cannot be resumed under ``config``.

    Loading weights of another shape fails deep inside ``load_state_dict`` with a wall of
    "size mismatch" lines; this names the setting instead.

    Args:
        ckpt_config: ``checkpoint["config"]`` (``None``: a foreign checkpoint, nothing to compare).
        config: this run's resolved config as a plain dict.
        path: the checkpoint, for the message.

    Raises:
        ValueError: naming the first of :data:`SHAPE_KEYS` that differs, both values and the fix.
    """
    if ckpt_config is None:
        return
    for key in SHAPE_KEYS:
        old, new = _shape_part(ckpt_config.get(key)), _shape_part(config.get(key))
        if old is not None and new is not None and old != new:
            raise ValueError(
                f"Cannot resume from {path}: it was trained with {key}={old!r} but this run has "
                f"{key}={new!r}. Resume with the checkpoint's {key} (drop that override), or start a "
                "new run without ckpt_path."
            )


# --------------------------------------------------------------------------------------------
# random state
# --------------------------------------------------------------------------------------------


def _to_plain(obj: Any) -> Any:
    """numpy arrays -> nested lists, so the checkpoint still loads with ``weights_only=True``."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_plain(v) for v in obj)
    return obj


def _random_sources(root: Any, prefix: str, depth: int = 2) -> Iterator[tuple[str, Any]]:
    """Every generator reachable from ``root``'s attributes, with a stable name.

    Yields ``(name, obj)`` for ``torch.Generator``, ``np.random.Generator``, ``random.Random``
    and for each transform inside an albumentations pipeline (each holds a private numpy and
    Python generator). Attributes are visited in sorted order so names are stable between the
    saving and the resuming process; datasets one level down are searched too.
    """
    import albumentations as A

    seen: set[int] = set()

    def walk_transform(t: Any, name: str) -> Iterator[tuple[str, Any]]:
        yield name, t
        for i, child in enumerate(getattr(t, "transforms", None) or []):
            if isinstance(child, (A.BasicTransform, A.BaseCompose)):
                yield from walk_transform(child, f"{name}.{i}")

    def walk(obj: Any, name: str, level: int) -> Iterator[tuple[str, Any]]:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (torch.Generator, np.random.Generator, random.Random)):
            yield name, obj
            return
        if isinstance(obj, (A.BasicTransform, A.BaseCompose)):
            yield from walk_transform(obj, name)
            return
        if level >= depth or not hasattr(obj, "__dict__") or isinstance(obj, torch.nn.Module):
            return
        for attr in sorted(vars(obj)):
            if attr.startswith("__") or attr in ("trainer", "_trainer"):
                continue
            yield from walk(vars(obj)[attr], f"{name}.{attr}", level + 1)

    yield from walk(root, prefix, 0)


def _get_state(obj: Any) -> Any:
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, np.random.Generator):
        return _to_plain(obj.bit_generator.state)
    if isinstance(obj, random.Random):
        return obj.getstate()
    # An albumentations transform: its two private generators.
    return {"numpy": _to_plain(obj.random_generator.bit_generator.state), "python": obj.py_random.getstate()}


def _set_state(obj: Any, state: Any) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, np.random.Generator):
        obj.bit_generator.state = _from_plain(state)
    elif isinstance(obj, random.Random):
        obj.setstate(_as_python_state(state))
    else:
        obj.random_generator.bit_generator.state = _from_plain(state["numpy"])
        obj.py_random.setstate(_as_python_state(state["python"]))


def _as_python_state(state: Any) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def capture_random_state(datamodule: Any = None) -> dict[str, Any]:
    """The global torch / CUDA / numpy / Python generators and the datamodule's own generators.

    Args:
        datamodule: searched for generators and albumentations pipelines (see
            :func:`_random_sources`); ``None`` captures the global state only.

    Returns:
        A dict of tensors, ints, lists and tuples (loads with ``torch.load(weights_only=True)``).
    """
    state = _to_plain(_collect_rng_states(include_cuda=torch.cuda.is_available()))
    sources = {} if datamodule is None else {n: _get_state(o) for n, o in _random_sources(datamodule, "datamodule")}
    return {"global": state, "sources": sources}


def restore_random_state(state: Mapping[str, Any], datamodule: Any = None) -> list[str]:
    """Put back what :func:`capture_random_state` saved.

    Returns:
        Names saved in ``state`` that this datamodule no longer has (e.g. a transform was
        added or removed by an override) -- those keep their fresh seeded state.
    """
    global_state = _from_plain(dict(state["global"]))
    if not torch.cuda.is_available():
        global_state.pop("torch.cuda", None)
    _set_rng_states(global_state)
    saved = dict(state.get("sources", {}))
    if datamodule is not None:
        for name, obj in _random_sources(datamodule, "datamodule"):
            if name in saved:
                _set_state(obj, saved.pop(name))
    return sorted(saved)


class RandomStateCheckpoint(L.Callback):
    """Saves the random state in every checkpoint and restores it on resume.

    Stored under ``checkpoint["callbacks"]["RandomStateCheckpoint"]``: torch's CPU (and CUDA)
    generator, numpy's and Python's global generators, and every generator found on the
    datamodule -- the albumentations pipelines' private ones included. Captured when the
    checkpoint is written (for ``last.ckpt``: at the end of the epoch, after validation),
    restored when Lightning restores callbacks on ``fit(ckpt_path=...)``, before the next epoch
    draws its shuffle order.

    Under DDP the checkpoint holds rank 0's state (Lightning saves on rank 0 only); every rank
    restores it. ``DistributedSampler`` shuffles from ``seed + epoch``, so the data order is
    still exact; the augmentation stream of ranks > 0 differs from the uninterrupted run.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # state_dict()/load_state_dict() get no trainer argument; keep it to find the datamodule.
        self._trainer = trainer

    def _datamodule(self) -> Any:
        return None if self._trainer is None else self._trainer.datamodule

    def state_dict(self) -> dict[str, Any]:
        return capture_random_state(self._datamodule())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = restore_random_state(state_dict, self._datamodule())
        if missing:
            rank_zero_warn(
                f"Resuming: the checkpoint has random state for {missing}, which this run's datamodule "
                "does not have (a changed data config?); those start from their seed."
            )
