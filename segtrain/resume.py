"""Resuming a run: where the checkpoint is, and whether it fits this config.

What Lightning restores by itself from ``ckpt_path`` (lightning 2.6, checked in its
``_CheckpointConnector``): weights, optimizer and LR-scheduler state, the loops' epoch/step
counters, callback states (best/last checkpoint bookkeeping, early stopping) and the
datamodule's ``state_dict`` -- which holds the augmentation pipelines' random state
(``SegmentationDataModule.state_dict``). What it does not save, the global random state, is
added by ``segtrain.lightning_compat.RandomStateCheckpoint``.
"""

from __future__ import annotations

import glob
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

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


def load_checkpoint_config(path: str, trust: bool = False) -> dict[str, Any] | None:
    """``checkpoint["config"]`` (the run's resolved config as a plain dict), or ``None`` if absent.

    Read as data only: ``weights_only=True`` and, unless ``trust`` (``trust_checkpoint=true``),
    every ``_target_`` checked against the allow-list (segtrain/trust.py). Versions are checked
    by ``SegmentationModule.on_load_checkpoint`` when Lightning restores the file.
    """
    from .trust import load_checkpoint

    checkpoint = load_checkpoint(path, trust=trust, mmap=True, check_versions=False)
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
