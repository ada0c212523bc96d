"""What a checkpoint may make this project do: load it as data only, build only allow-listed classes.

A ``.ckpt`` (or an exported ``config.json``) from a colleague or a model page is data from
elsewhere. Two things would turn it into code:

1. **pickle.** ``torch.load(weights_only=False)`` calls whatever callable the file names while
   unpickling. Every load here is :func:`safe_torch_load`, i.e. ``weights_only=True``: tensors,
   numbers, strings, lists and dicts only. Checkpoints written by this project hold nothing else
   (``tests/test_checkpoint_safety.py`` checks), so nothing legitimate is lost.
2. **``_target_``.** Predict and export rebuild the network and the transforms from
   ``checkpoint["config"]`` with ``hydra.utils.instantiate``, which imports and calls whatever
   each ``_target_`` names. :func:`check_config_targets` therefore admits only an allow-list:
   classes *defined* in segmentation-models-pytorch, albumentations, ``torch.optim`` (optimizers,
   schedulers), Lightning's callbacks/loggers/plugins/strategies and this project's packages,
   plus the project's named factory functions (:data:`ALLOWED_FUNCTIONS`).

Why an allow-list and not a blocklist: Hydra's own blocklist stops ``os.system``, but anything
that writes a file (``pathlib.Path.write_text``), unpickles (``torch.load``, ``numpy.load``,
``pandas.read_pickle``), starts a process (``subprocess.Popen``) or imports a plugin runs just as
well, and such callables are reachable under innocent names too (``segtrain.inference.torch.load``
is ``torch.load``). The set of dangerous callables in an environment is open-ended; the set a
checkpoint of this project needs is small and known. Hence two rules beyond the name prefix: the
resolved object must be a class (functions, methods and classmethods are refused, except the
listed factories), and the class must be defined inside the allowed package, so that a foreign
class re-exported by an allowed module (``segtrain.inference.Path``) does not pass.

``trust_checkpoint=true`` skips the ``_target_`` check for a file whose source the user trusts;
the ``weights_only=True`` load is never relaxed.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

import torch

#: ``(target prefix, package the class must be defined in)``: classes a stored config may name.
ALLOWED_CLASS_PREFIXES: tuple[tuple[str, str], ...] = (
    ("segmentation_models_pytorch.", "segmentation_models_pytorch"),
    ("albumentations.", "albumentations"),
    ("torch.optim.", "torch.optim"),  # optimizers and torch.optim.lr_scheduler
    ("segtrain.", "segtrain"),
    ("seglosses.", "seglosses"),
    ("datamodules.", "datamodules"),
    ("monai.transforms.", "monai.transforms"),  # data=nnunet: the 3D augmentations
    ("lightning.pytorch.callbacks.", "lightning.pytorch.callbacks"),
    ("lightning.pytorch.loggers.", "lightning.pytorch.loggers"),
    ("lightning.pytorch.plugins.", "lightning.pytorch.plugins"),
    ("lightning.pytorch.strategies.", "lightning.pytorch.strategies"),
)

#: Exact targets allowed although they are functions, or outside the prefixes above.
ALLOWED_FUNCTIONS = frozenset({"segtrain.network.build_network", "segtrain.network3d.build_dynunet",
                               "segtrain.network3d.build_segresnet"})
ALLOWED_EXACT_CLASSES = frozenset({"lightning.pytorch.Trainer"})

TRUST_HINT = (
    "If you trust the file's source (you trained it, or someone you trust did), pass "
    "trust_checkpoint=true to build it anyway; otherwise do not use this file."
)


class UntrustedCheckpointError(ValueError):
    """A checkpoint or exported model asks for something this project does not build from a file."""


def _refuse(source: str, key: str, target: Any, why: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"Refusing {source}: {key} = {target!r} {why}. A checkpoint is data; a _target_ in it would be "
        f"imported and called, and only segmentation-models-pytorch, albumentations, torch.optim, Lightning "
        f"callbacks/loggers and this project's classes are built from one. {TRUST_HINT}"
    )


def target_problem(target: Any) -> str | None:
    """Why ``target`` may not be built from a stored config, or ``None`` when it may.

    Modules are imported only for targets under an allowed prefix (installed code, not file
    content); anything else is refused by name alone.
    """
    if not isinstance(target, str) or not target:
        return "is not a dotted class name"
    if target in ALLOWED_FUNCTIONS:
        return None
    parts = target.split(".")
    if any(not p.isidentifier() or p.startswith("_") for p in parts):
        return "is not a public dotted name"
    if target in ALLOWED_EXACT_CLASSES:
        return None
    package = next((pkg for prefix, pkg in ALLOWED_CLASS_PREFIXES if target.startswith(prefix)), None)
    if package is None:
        return "is outside the allow-list"
    from hydra._internal.utils import _locate

    try:
        obj = _locate(target)
    except Exception as err:  # noqa: BLE001 -- any failure to resolve is a refusal
        return f"cannot be resolved ({type(err).__name__})"
    if not inspect.isclass(obj):
        return f"is a {type(obj).__name__}, not a class (only classes are built from a checkpoint)"
    module = getattr(obj, "__module__", "") or ""
    if module != package and not module.startswith(package + "."):
        return f"is {module}.{obj.__qualname__}, a class defined outside {package}"
    return None


def check_config_targets(config: Any, source: str, key: str = "config") -> None:
    """Refuse a stored config with any ``_target_`` off the allow-list, or an unresolved interpolation.

    Walks the whole tree (dicts, lists), so a target hidden in a transform, an optimizer or a
    nested argument is found too.

    Args:
        config: ``checkpoint["config"]`` (plain dicts and lists).
        source: the file, for the message.
        key: the dotted key of ``config`` itself, for the message.

    Raises:
        UntrustedCheckpointError: naming the key, the target and ``trust_checkpoint=true``.
    """
    if isinstance(config, Mapping):
        for name, value in config.items():
            child = f"{key}.{name}"
            if name == "_target_":
                why = target_problem(value)
                if why is not None:
                    raise _refuse(source, child, value, why)
            else:
                check_config_targets(value, source, child)
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_config_targets(value, source, f"{key}[{i}]")
    elif isinstance(config, str) and "${" in config:
        # Stored configs are resolved when saved; an interpolation here would be evaluated at build time.
        raise _refuse(source, key, config, "is an unresolved interpolation")


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, with a message saying what a refusal means.

    Raises:
        UntrustedCheckpointError: the file holds pickled objects other than tensors and plain
            types (torch refused to run them).
    """
    try:
        return torch.load(os.fspath(path), map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        detail = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise UntrustedCheckpointError(
            f"Refusing {os.fspath(path)}: it holds pickled objects other than tensors and plain types "
            f"({detail[:200]}), which loading would run as code. Checkpoints written by this project never "
            "hold such objects, so this file was written by something else or altered. trust_checkpoint=true "
            "does not lift this check: if you trust the file's source, load it yourself with "
            "torch.load(path, weights_only=False) and torch.save only its 'state_dict' and 'config'."
        ) from None


# --------------------------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------------------------


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def recorded_versions() -> dict[str, str]:
    """The versions stored in every checkpoint (``checkpoint["versions"]``), plain strings."""
    import lightning
    import segmentation_models_pytorch as smp

    return {
        "torch": str(torch.__version__),  # a TorchVersion (str subclass) would not load with weights_only
        "lightning": str(lightning.__version__),
        "segmentation_models_pytorch": str(smp.__version__),
        "seglosses": _distribution_version("seglosses"),  # this project (harness and losses)
    }


def major_version(version: str) -> tuple[int, ...] | None:
    """``"2.6.1+cu130" -> (2,)``; for ``0.x`` releases the minor counts as major (``"0.5.0" -> (0, 5)``)."""
    numbers = []
    for part in str(version).split("+")[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        numbers.append(int(digits))
    if not numbers:
        return None
    return tuple(numbers[:2]) if numbers[0] == 0 else (numbers[0],)


def warn_version_mismatch(recorded: Any, source: str) -> list[str]:
    """Warn (``UserWarning``) for each library whose major version differs from the one that wrote ``source``.

    Returns:
        The warning texts (empty when versions agree or the checkpoint records none).
    """
    if not isinstance(recorded, Mapping):
        return []
    messages = []
    for name, now in recorded_versions().items():
        old = recorded.get(name)
        if old is None:
            continue
        a, b = major_version(str(old)), major_version(now)
        if a is not None and b is not None and a != b:
            messages.append(
                f"{source} was written with {name} {old}; this is {name} {now}, another major version. "
                f"Loading may fail or behave differently; if it does, use {name} {old}."
            )
    for text in messages:
        warnings.warn(text, UserWarning, stacklevel=2)
    return messages


def load_checkpoint(
    path: str | os.PathLike, trust: bool = False, map_location: Any = "cpu", mmap: bool = False, check_versions: bool = True
) -> Any:
    """A checkpoint as plain data: :func:`safe_torch_load`, then (unless ``trust``) the ``_target_`` check.

    Also warns when the checkpoint was written with another major version of torch, Lightning,
    segmentation-models-pytorch or this project.
    """
    checkpoint = safe_torch_load(path, map_location=map_location, mmap=mmap)
    if isinstance(checkpoint, Mapping):
        if not trust:
            check_config_targets(checkpoint.get("config"), os.fspath(path))
        if check_versions:
            warn_version_mismatch(checkpoint.get("versions"), os.fspath(path))
    return checkpoint
