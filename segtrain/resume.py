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
import shlex
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any


#: ``ckpt_path`` values that mean "the newest run's last.ckpt".
LATEST = ("latest", "last")

#: Config keys that fix the network's shape: a resumed run must agree with its checkpoint on them.
SHAPE_KEYS = ("task", "num_classes", "model")

#: Everything that changes what is trained (dotted prefixes of the resolved config): a resumed run
#: must agree with its checkpoint on these, except the keys given in ``resume_allow_changes``.
RESUME_KEYS = (
    *SHAPE_KEYS, "ignore_index", "seed", "monitor", "monitor_mode", "data", "loss", "optimizer", "scheduler",
    "trainer.max_epochs", "trainer.max_steps", "trainer.precision", "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val", "trainer.gradient_clip_algorithm", "trainer.limit_train_batches",
    "trainer.overfit_batches", "trainer.deterministic",
)

#: Below :data:`RESUME_KEYS`, but changing nothing that is trained: how data is loaded, how many
#: validation windows share a forward pass (the logits are the same; runs before the default
#: ``null`` recorded 4), and the pretrained-weights choice (it only affects the initialisation,
#: which the checkpoint replaces).
RESUME_IGNORED = (
    "model.encoder_weights", "data.num_workers", "data.pin_memory", "data.persistent_workers", "data.validate",
    "data.num_test", "data.sliding_window.sw_batch_size",
)

#: Keys added after runs were recorded, with the value an older run used without naming it: a
#: checkpoint lacking the key matches a run that sets it to this value.
RESUME_IMPLIED = {
    "data.pad": True,
    # the data issue's options: an older run read images/ + masks/ layouts and every channel the
    # 8-bit RGB reader gave (its normalisation lives in its transforms, compared as they are)
    "data.images_dir": None, "data.masks_dir": None, "data.channels": None, "data.normalize": "auto",
    "data.normalize_percentiles": [0.5, 99.5],
    # cross-validation: an older run trained on the single split
    "data.folds": None, "data.fold": None, "data.split_file": None, "data.group_pattern": None,
}

#: More differing keys than this, with ``ckpt_path=latest``: it found another experiment's run.
MANY_CHANGES = 5

#: Stands for a key one of the two configs does not have.
ABSENT = object()


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


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def resume_differences(ckpt_config: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (checkpoint's value, this run's value)}`` for every :data:`RESUME_KEYS` key that differs.

    A section the checkpoint's config lacks altogether (written by an older segtrain) is not compared.
    """
    old_flat, new_flat = flatten(ckpt_config), flatten(config)
    differences = {}
    for key in sorted(set(old_flat) | set(new_flat)):
        if not _under(key, RESUME_KEYS) or _under(key, RESUME_IGNORED) or key.split(".")[0] not in ckpt_config:
            continue
        old, new = old_flat.get(key, ABSENT), new_flat.get(key, ABSENT)
        if old is ABSENT and key in RESUME_IMPLIED and new == RESUME_IMPLIED[key]:
            continue
        if old != new:
            differences[key] = (old, new)
    return differences


def check_resume_config(
    ckpt_config: Mapping[str, Any] | None,
    config: Any,
    path: str,
    allow_changes: Sequence[str] = (),
    latest: bool = False,
) -> None:
    """Refuse to resume a checkpoint under a config that trains something else, naming every differing key.

    Compared: :data:`RESUME_KEYS` (the task and network, the data source and its sizes, the loss
    terms and weights, optimizer, scheduler, the trainer settings that change the updates). A
    resume that silently swaps the dataset or a loss weight gives a run that is neither the old
    one nor a new one; one that changes the network's shape would fail deep inside
    ``load_state_dict`` with a wall of "size mismatch" lines.

    Args:
        ckpt_config: ``checkpoint["config"]`` (``None``: a foreign checkpoint, nothing to compare).
        config: this run's composed ``DictConfig`` -- then values derived from a changed key (the
            resize of ``data.image_size``, the schedule's ``T_max``) follow it and are not named on
            their own -- or its resolved config as a plain dict.
        path: the checkpoint, for the message.
        allow_changes: dotted keys (or sections, e.g. ``trainer.max_epochs``, ``data``) the user
            changes on purpose (``resume_allow_changes``); never :data:`SHAPE_KEYS`.
        latest: ``path`` was found by ``ckpt_path=latest``: with more than :data:`MANY_CHANGES`
            differing keys it is another experiment's run (a sweep trial under the same
            ``paths.log_dir``), and the message says to pass the run folder instead of proposing
            to allow every key.

    Raises:
        ValueError: listing each changed key with both values, and the three ways out.
    """
    if ckpt_config is None:
        return
    allowed = [str(a) for a in allow_changes]
    if shape := [a for a in allowed if _under(a, SHAPE_KEYS) or any(k.startswith(a + ".") for k in SHAPE_KEYS)]:
        raise ValueError(
            f"resume_allow_changes={shape} cannot include {', '.join(SHAPE_KEYS)}: they fix the network's "
            "shape, so the checkpoint's weights do not fit another value. Start a new run without ckpt_path."
        )
    differences = _differences(ckpt_config, config, allowed)
    if not differences:
        return
    changed = _changed_keys(ckpt_config, config, allowed, differences)
    if latest and len(changed) > MANY_CHANGES:
        run = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        raise ValueError(
            f"ckpt_path=latest picked {path}, the newest checkpoint under paths.log_dir, but that run is a "
            f"different experiment: {len(changed)} keys differ ({', '.join(changed[:6])}, ...). Pass the folder "
            f"of the run you mean: ckpt_path=<run folder> (e.g. logs/runs/<date_time>_<pid>; a sweep's trials "
            f"under the same paths.log_dir count as runs too), or start a new run without ckpt_path. "
            f"(To resume {run} itself, give its own overrides.)"
        )
    old_flat, new_flat = flatten(ckpt_config), flatten(_resolved(config, ckpt_config, []))
    lines = "; ".join(
        f"{k}: trained with {_show(old_flat.get(k, ABSENT))} but this run has {_show(new_flat.get(k, ABSENT))}"
        for k in changed
    )
    derived = len(set(differences) - set(changed))
    if derived:
        lines += f" (and {derived} value(s) derived from them)"
    fixable = [k for k in changed if not _under(k, SHAPE_KEYS)]
    allow_hint = f" resume_allow_changes=[{','.join(fixable)}] if you change them on purpose," if fixable else ""
    raise ValueError(
        f"Cannot resume from {path}: this run trains something else than the checkpoint's run. {lines}. "
        f"Resume with the checkpoint's values (drop those overrides),{allow_hint} or start a new run "
        "without ckpt_path. (Extending a finished run: ckpt_path=... trainer.max_epochs=N "
        "resume_allow_changes=[trainer.max_epochs].)"
    )


def _resolved(config: Any, ckpt_config: Mapping[str, Any], allowed: Sequence[str]) -> Mapping[str, Any]:
    from omegaconf import DictConfig

    return config_as_resumed(config, ckpt_config, allowed) if isinstance(config, DictConfig) else config


def _differences(ckpt_config: Mapping[str, Any], config: Any, allowed: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    found = resume_differences(ckpt_config, _resolved(config, ckpt_config, allowed))
    return {k: v for k, v in found.items() if not _under(k, allowed)}


def _changed_keys(ckpt_config: Mapping[str, Any], config: Any, allowed: list[str], differences: Mapping[str, Any]) -> list[str]:
    """The fewest differing keys whose allowance explains every difference: the keys the user changed."""
    keys: list[str] = []
    remaining = dict(differences)
    while remaining:
        keys.append(next(iter(remaining)))
        remaining = _differences(ckpt_config, config, allowed + keys)
    for key in list(keys):  # a key taken before its source (T_max before trainer.max_epochs) is redundant
        if not _differences(ckpt_config, config, allowed + [k for k in keys if k != key]):
            keys.remove(key)
    return keys


def config_as_resumed(cfg: Any, ckpt_config: Mapping[str, Any] | None, allow_changes: Sequence[str]) -> dict[str, Any]:
    """This run's resolved config with the allowed keys put back to the checkpoint's values.

    What :func:`check_resume_config` compares: the values *derived* from an allowed key (the
    cosine schedule's ``T_max: ${trainer.max_epochs}``) then follow it instead of being reported
    as changes of their own.

    Args:
        cfg: the composed ``DictConfig``.
        ckpt_config: ``checkpoint["config"]`` or ``None``.
        allow_changes: the dotted keys of ``resume_allow_changes``.
    """
    from omegaconf import OmegaConf, open_dict

    probe = cfg.copy()
    if ckpt_config is not None:
        old = flatten(ckpt_config)
        with open_dict(probe):
            for key in allow_changes:
                section = {k: v for k, v in old.items() if k == key or k.startswith(f"{key}.")}
                if key in section:
                    OmegaConf.update(probe, key, section[key], merge=False)
                elif section:
                    OmegaConf.update(probe, key, unflatten(section, key), merge=False)
    return OmegaConf.to_container(probe, resolve=True)


def unflatten(flat: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Inverse of :func:`flatten` for the keys below ``prefix``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key[len(prefix) + 1:].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _show(value: Any) -> str:
    return "(not set)" if value is ABSENT else repr(value)


def resume_command(output_dir: str, overrides: Sequence[str] | None = None) -> str | None:
    """The ``python train.py ... ckpt_path=<run>/checkpoints/last.ckpt`` line that continues a run; None before its first checkpoint.

    Args:
        output_dir: the run folder.
        overrides: the run's command-line overrides; default: Hydra's, when running under Hydra.
    """
    last = os.path.join(os.path.abspath(output_dir), "checkpoints", "last.ckpt")
    if not os.path.isfile(last):
        return None
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    # init_from only starts a run: resuming one takes its weights from the checkpoint (segtrain/init_from.py).
    dropped = ("ckpt_path=", "init_from=", "init_from_exclude=")
    kept = [o for o in overrides if not o.lstrip("+~").startswith(dropped)]
    return " ".join(["python train.py", *(shlex.quote(o) for o in kept), shlex.quote(f"ckpt_path={last}")])


def interrupted_message(output_dir: str, overrides: Sequence[str] | None = None) -> str:
    """What to tell a user whose run stopped on Ctrl+C (SIGINT)."""
    command = resume_command(output_dir, overrides)
    if command is None:
        return "Interrupted before the first checkpoint: nothing to resume; start the run again."
    return f"Interrupted. The last end-of-epoch checkpoint is kept; resume with: {command}"
