"""Errors a person can read: the message and its fix on the console, the traceback in the run folder.

Our data and config checks raise messages that name the problem and the fix, but Hydra printed
each under a 30-140 line traceback, and an error raised in a DataLoader worker reached the
console and ``failure.yaml`` as torch's wrapper ("Caught ValueError in DataLoader worker process
0. Original Traceback ..."). Here:

- :func:`readable_errors` (``train.py``, around a single run): a *data or config error* --
  :data:`READABLE`: ``ValueError`` and ``OSError`` (with their subclasses: ``FileNotFoundError``,
  ``PermissionError``, ``StorageError``, ``RunFolderError`` ...) and OmegaConf's errors (a
  missing or mistyped key, an interpolation that does not resolve) raised by the run -- leaves
  Hydra as :class:`ReadableError`, a ``CompactHydraException``, which Hydra prints as its
  message alone, followed by its own hint ``Set the environment variable HYDRA_FULL_ERROR=1 for
  a complete stack trace.``, and exit status 1::

      Error executing job with overrides: ['data=folder', 'data.root=/data/nope']
      Error: data.root /data/nope does not exist (or is not a folder): pass data.root=...
      (The traceback is in /work/logs/runs/.../train.log.)

  The traceback is in the run folder's ``train.log`` (``segtrain.run_log.console_log``) and
  ``failure.yaml``. Everything else -- ``RuntimeError`` (torch, CUDA out of memory),
  ``AssertionError``, ``TypeError``, ``KeyError`` ...: most likely a bug -- keeps Hydra's
  traceback. ``HYDRA_FULL_ERROR=1`` (Hydra's switch) re-raises every error as it came, so the
  console shows the whole traceback as before. Inside a multirun nothing reaches this point:
  ``segtrain.sweep.run_sweep_job`` records the failed job and the sweep goes on. Mistakes Hydra
  finds before the job starts (an unknown config group option, an override of a key that does
  not exist: ``ConfigCompositionException``) were already one short message and are left to Hydra.
- :func:`unwrap_worker_error`: the error a DataLoader worker raised, as its own type and
  message; the worker's traceback stays on it as ``worker_traceback``.
- :class:`TrainingStarted` and :func:`failure_stage`: whether a run failed at start-up (config
  or data refused before a training batch ended) or during training (``stage`` in
  ``failure.yaml``; ``scripts/summarize_sweep.py`` lists start-up failures apart from trials
  that trained and failed).
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from hydra.errors import CompactHydraException
from omegaconf.errors import OmegaConfBaseException

#: The errors printed without their traceback: data and config errors (see the module docstring).
READABLE: tuple[type[BaseException], ...] = (ValueError, OSError, OmegaConfBaseException)

#: ``failure.yaml``'s ``stage``: refused before a training batch ended, or failed after.
STARTUP, TRAINING = "startup", "training"

# Hydra's own switch (hydra._internal.utils.run_and_report reads it the same way).
_FULL_ERROR = "HYDRA_FULL_ERROR"
# Set on an exception by whoever wrote its traceback into a file (train.log, failure.yaml).
_TRACEBACK_FILES = "segtrain_traceback_files"

# torch.utils._utils.ExceptionWrapper.reraise: "Caught <Type> <where>.\nOriginal <traceback text>".
_WRAPPED = re.compile(r"\ACaught (?P<type>[\w.]+) (?P<where>in .+?)\.\nOriginal (?P<text>Traceback .*)\Z", re.DOTALL)
_TRACEBACK_HEADER = "Traceback (most recent call last):\n"


class ReadableError(CompactHydraException):
    """A data or config error, worded for the console: ``Error: <message>`` and where the traceback is.

    A ``CompactHydraException``: Hydra prints its message without a traceback and exits with status 1.

    Attributes:
        error: the error the run raised (unwrapped from a DataLoader worker).
    """

    def __init__(self, error: BaseException, traceback_file: str | None = None) -> None:
        self.error = error
        text = f"Error: {error}"
        if traceback_file:
            text += f"\n(The traceback is in {traceback_file}.)"
        super().__init__(text)


def is_readable(error: BaseException) -> bool:
    """True for a data or config error (:data:`READABLE`), whose message is the whole story."""
    return isinstance(error, READABLE)


def unwrap_worker_error(error: BaseException) -> BaseException:
    """The exception a DataLoader worker (or pin-memory thread) raised, instead of torch's wrapper.

    torch re-raises a worker's exception in the main process as the same type with the message
    ``"Caught ValueError in DataLoader worker process 0.\\nOriginal Traceback (most recent call
    last): ... ValueError: <message>"``. Returns a new exception of that type whose message is the
    original one, with the main process's traceback and, as attributes, ``worker_traceback`` (the
    worker's traceback text) and ``worker`` (e.g. ``"DataLoader worker process 0"``). Any other
    error, or one whose type cannot be rebuilt from a message, is returned as it is.
    """
    match = _WRAPPED.match(str(error))
    if match is None or match["type"] != type(error).__name__:
        return error
    text = match["text"]
    message = _original_message(text, type(error).__name__)
    if message is None:
        return error
    if isinstance(error, KeyError):
        try:  # the worker formatted KeyError's key with repr(): the key itself again
            message = ast.literal_eval(message)
        except (ValueError, SyntaxError):
            pass
    try:
        unwrapped = type(error)(message)
    except Exception:  # noqa: BLE001 -- a constructor that wants more than a message: keep torch's text
        return error
    unwrapped.worker_traceback = text  # type: ignore[attr-defined]
    unwrapped.worker = match["where"].removeprefix("in ")  # type: ignore[attr-defined]
    unwrapped.__cause__, unwrapped.__context__ = error.__cause__, error.__context__
    unwrapped.__suppress_context__ = error.__suppress_context__
    setattr(unwrapped, _TRACEBACK_FILES, list(getattr(error, _TRACEBACK_FILES, [])))
    return unwrapped.with_traceback(error.__traceback__)


def _original_message(text: str, type_name: str) -> str | None:
    """The message in ``text`` (``traceback.format_exception`` output) of its last exception.

    The last traceback block (the raised exception; a chained cause comes before it) holds the
    frames, each line indented, then ``<module.Type>: <message>`` over as many lines as it has.
    """
    block = text[text.rfind(_TRACEBACK_HEADER) + len(_TRACEBACK_HEADER):] if _TRACEBACK_HEADER in text else text
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if line and not line[0].isspace():
            name, sep, first = line.partition(": ")
            if name.split(".")[-1] != type_name:
                return None
            return "\n".join([first, *lines[i + 1:]]) if sep else ""
    return None


def note_traceback_file(error: BaseException, path: str | os.PathLike) -> None:
    """Remember on ``error`` that its traceback was written into ``path`` (for the console's pointer)."""
    try:
        files = getattr(error, _TRACEBACK_FILES, None)
        if files is None:
            files = []
            setattr(error, _TRACEBACK_FILES, files)
        files.append(os.fspath(path))
    except (AttributeError, TypeError):  # an exception type without attributes: no pointer, nothing lost
        pass


def traceback_files(error: BaseException) -> list[str]:
    """The files :func:`note_traceback_file` recorded for ``error``, first written first."""
    return list(getattr(error, _TRACEBACK_FILES, []))


@contextmanager
def readable_errors() -> Iterator[None]:
    """Around a single run in ``train.py``: a data or config error leaves as :class:`ReadableError`.

    Inside a Hydra multirun, with ``HYDRA_FULL_ERROR=1``, and for every other error the
    exception passes unchanged (see the module docstring).
    """
    from .distributed import is_multirun

    try:
        yield
    except Exception as raised:
        error = unwrap_worker_error(raised)
        if os.environ.get(_FULL_ERROR) == "1" or is_multirun() or not is_readable(error):
            raise
        files = traceback_files(raised)
        readable = ReadableError(error, files[0] if files else None)
        if isinstance(error, OmegaConfBaseException):
            # Hydra prints an OmegaConf cause's message after ours: it would be there twice.
            raise readable from None
        raise readable from error


# ------------------------------------------------------------------- start-up or training -----

_training_started = False


def training_started() -> bool:
    """True once a training batch ended in this process since the last :func:`reset_training_started`.

    Set by :class:`TrainingStarted`, which must be among the trainer's callbacks; without it
    every failure counts as a start-up failure.
    """
    return _training_started


def reset_training_started() -> None:
    """Forget an earlier run's training (each job of a multirun in one process starts afresh)."""
    global _training_started
    _training_started = False


def failure_stage() -> str:
    """``"training"`` when a training batch ended before the failure, else ``"startup"``.

    Start-up: the config, the data or the run folder were refused before a training batch
    ended (an optimizer step had yet to happen; with gradient accumulation the first step comes
    after several batches).
    """
    return TRAINING if _training_started else STARTUP


class TrainingStarted(L.Callback):
    """Marks the run as training at the end of its first training batch (:func:`training_started`).

    Resets the mark when fitting starts, so a resumed or a second run in the same process counts
    from its own first batch.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reset_training_started()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        global _training_started
        _training_started = True
