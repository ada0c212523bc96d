"""``<run>/train.log``: the whole console of the run (log lines, warnings, errors), and the noise left out of it.

Hydra's job logging writes only the records of loggers that propagate to the root logger into
``train.log``: Lightning's own logger has its own handler and does not propagate, and Python
warnings and tracebacks go to ``sys.stderr``, so the file held two lines. :func:`console_log`
tees ``sys.stdout`` and ``sys.stderr`` (and the logging handlers already bound to them) into the
file for the duration of the run, without ANSI colour codes, and takes Hydra's file handler off
the root logger meanwhile (its lines reach the file through the console). A run that fails
writes its traceback into the file too, and :func:`record_failed_run` leaves ``failure.yaml``
(error, traceback, overrides, start-up or training) in the folder of a failed single run, as
failed sweep jobs do.

:func:`quiet_known_noise` turns off, where it starts, what a user cannot act on. Only messages
without a switch are filtered, each by its exact text.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from .errors import note_traceback_file, reset_training_started

log = logging.getLogger(__name__)

#: The console log in every run folder (the name Hydra's job logging gives it for train.py).
RUN_LOG = "train.log"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A progress bar redrawing itself in a terminal (cursor moves, line erases, tqdm's carriage
# returns): one frame per refresh would flood the file, and metrics.csv holds the numbers.
_REDRAW = re.compile(r"\x1b\[(\d*[ABCDGK]|\?25[lh])|^\r")

#: Messages with no option to switch them off, matched exactly, with why they are noise.
_NOISE_RECORDS = (
    # Lightning advertises its cloud logger whenever another logger (or none: predict.py) is used;
    # no setting disables it.
    "💡 Tip: For seamless cloud logging",
    # ... and its model registry whenever it adds its own ModelCheckpoint (callbacks.model_checkpoint=null).
    "💡 Tip: For seamless cloud uploads and versioning",
)
_NOISE_WARNINGS = (
    # Lightning 2.6 calls a torch pytree API torch deprecated; nothing the user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Every run folder holds Hydra's .hydra/ before the CSV logger starts; a second run in a
    # folder that held a run is refused, and one resuming into it keeps the old metrics.csv
    # as metrics.part<N>.csv (segtrain/run_folder.py): the logger never deletes anything.
    r"Experiment logs directory .* exists and is not empty",
    # Every training value the harness logs is an epoch mean (segtrain/module.py), logged whatever
    # the interval, and the per-step values (logger=mlflow) count the steps across epochs, so a run
    # with fewer batches per epoch than trainer.log_every_n_steps loses nothing.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(text) for text in _NOISE_RECORDS)


def quiet_known_noise() -> None:
    """Silence the messages of :data:`_NOISE_RECORDS` / :data:`_NOISE_WARNINGS` (idempotent)."""
    lightning_log = logging.getLogger("lightning.pytorch")
    if not any(isinstance(f, _DropMessages) for f in lightning_log.filters):
        for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
            logging.getLogger(name).addFilter(_DropMessages())
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class _Tee(io.TextIOBase):
    """Writes to the console stream and, without ANSI codes, to the log file; a terminal to everyone else."""

    def __init__(self, console: TextIO, file: TextIO) -> None:
        self.console, self.file = console, file

    def write(self, text: str) -> int:
        self.console.write(text)
        if not self.file.closed and not _REDRAW.search(text):
            self.file.write(_ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        if not self.file.closed:
            self.file.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.console, "encoding", "utf-8")


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *(l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers]


def _bypassing_loggers(rebound: set[logging.Handler], file: TextIO) -> list[tuple[logging.Logger, logging.Handler]]:
    """Give ``file`` a handler on each non-propagating logger whose console handler the tee missed.

    Lightning's ``lightning.pytorch`` logger keeps the ``sys.stderr`` it saw at import. When
    something replaced ``sys.stderr`` since (a notebook, a test's capture), that handler writes
    past the tee, so the logger gets a handler of its own on the log file, with the console's
    format. Returns the ``(logger, handler)`` pairs added.
    """
    added = []
    for logger in logging.Logger.manager.loggerDict.values():
        if not isinstance(logger, logging.Logger) or logger.propagate:
            continue
        console = [h for h in logger.handlers if type(h) is logging.StreamHandler]  # noqa: E721 -- not file/capture subclasses
        if console and not any(h in rebound for h in console):
            handler = logging.StreamHandler(file)
            handler.setFormatter(console[0].formatter)
            handler.setLevel(console[0].level)
            logger.addHandler(handler)
            added.append((logger, handler))
    return added


@contextmanager
def console_log(path: str) -> Iterator[TextIO]:
    """Tee the console into ``path`` (appended) while the block runs; an exception's traceback goes there too.

    Yields:
        the open log file.
    """
    path = os.path.abspath(path)
    file = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed below
    out, err = sys.stdout, sys.stderr
    tee_out, tee_err = _Tee(out, file), _Tee(err, file)
    root = logging.getLogger()
    hydra_files = [h for h in root.handlers if isinstance(h, logging.FileHandler) and h.baseFilename == path]
    rebound = []
    for handler in _all_handlers():
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.StreamHandler) and stream in (out, err) and handler not in hydra_files:
            rebound.append((handler, stream))
            handler.setStream(tee_out if stream is out else tee_err)
    for handler in hydra_files:
        root.removeHandler(handler)
    bypassing = _bypassing_loggers({handler for handler, _ in rebound}, file)
    sys.stdout, sys.stderr = tee_out, tee_err
    try:
        yield file
    except BaseException as error:
        if not isinstance(error, (KeyboardInterrupt, SystemExit)):
            # The console shows the traceback after the block (Hydra), or, for a data or config
            # error, the message and this file's name (segtrain/errors.py); the file gets it here.
            file.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
            note_traceback_file(error, path)
        raise
    finally:
        sys.stdout, sys.stderr = out, err
        for handler, stream in rebound:
            handler.setStream(stream)
        for logger, handler in bypassing:
            logger.removeHandler(handler)
        for handler in hydra_files:
            root.addHandler(handler)
        file.close()


def record_failed_run(train_fn: Callable[[Any], float]) -> Callable[[Any], float]:
    """``train_fn`` that, outside a multirun, writes ``<run>/failure.yaml`` before re-raising a failure.

    A sweep job's failure is recorded by ``segtrain.sweep.run_sweep_job`` instead. Not recorded:
    a refused run folder (:class:`segtrain.run_folder.RunFolderError`) -- the folder belongs to
    another run. The record's ``stage`` says whether the run failed at start-up or while training
    (``segtrain.errors.failure_stage``), counted from this call.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from .distributed import is_multirun
    from .run_folder import RunFolderError
    from .sweep import record_failure

    def run(cfg: Any) -> float:
        reset_training_started()
        try:
            return train_fn(cfg)
        except Exception as error:
            # DDP ranks > 0 share rank 0's folder: rank 0 records the failure.
            if not is_multirun() and not isinstance(error, RunFolderError) and rank_zero_only.rank == 0:
                try:
                    path = record_failure(str(cfg.paths.output_dir), error, _overrides())
                    note_traceback_file(error, path)
                    log.error("Failure recorded in %s", path)
                except OSError:
                    pass  # an unwritable run folder: the console has the error
            raise

    return run


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
