"""One run per run folder: a lock held for the run's life, and no second run over a finished one.

Two runs given the same ``hydra.run.dir`` interleave rows in one ``metrics.csv`` (until the csv
writer of one crashes) and overwrite each other's checkpoints; a new run in a finished run's
folder deletes its ``metrics.csv`` (Lightning's CSV logger does so with a warning only).
:class:`RunFolderLock` refuses both: the folder is locked (``flock`` on ``<run>/.run.lock``,
released by the OS even when the process is killed) and a folder that already holds a run --
its ``config.yaml``, written by every run at start -- is taken only to resume into it (then the
earlier ``metrics.csv`` is kept as ``metrics.part<N>.csv``, :func:`keep_previous_metrics`).
:func:`check_run_folder` makes the same refusals without writing anything (before Hydra saves
``.hydra/``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time

try:
    import fcntl
except ImportError:  # Windows: no flock; the finished-run check still applies
    fcntl = None

#: The lock file inside the run folder.
LOCK_FILE = ".run.lock"
#: What every run writes at start; its presence marks a folder that already holds a run.
RUN_MARKER = "config.yaml"


class RunFolderError(ValueError):
    """The run folder cannot be used (held by a live run, holds a finished one, not writable)."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # e.g. an id out of range
        return False
    return True


def make_run_folder(folder: str, key: str = "paths.output_dir") -> None:
    """Create ``folder``; an unusable path is a :class:`RunFolderError` naming ``key`` instead of a chain of OSErrors."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise RunFolderError(
            f"{key}: cannot create or write the folder {folder} ({err.strerror or err}). Give a folder you "
            "can write to, e.g. paths.log_dir=$HOME/seg_logs (the run folders go below it)."
        ) from None


def keep_previous_metrics(folder: str) -> str | None:
    """Before a run resumes into its own folder: move ``metrics.csv`` to ``metrics.part<N>.csv``.

    Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts; the epochs before
    the resume are kept beside the new file instead. Returns the new name, or None if there was none.
    """
    current = os.path.join(folder, "metrics.csv")
    if not os.path.isfile(current):
        return None
    n = 1
    while os.path.exists(kept := os.path.join(folder, f"metrics.part{n}.csv")):
        n += 1
    os.replace(current, kept)
    return kept


def _in_use(folder: str, holder: str) -> RunFolderError:
    return RunFolderError(
        f"Run folder {folder} is in use by another live run ({holder}). Two runs in one "
        "folder mix their metrics.csv and overwrite each other's checkpoints: give this run its "
        "own folder (drop hydra.run.dir=..., or pick another one), or wait for that run to end."
    )


def _holds_a_run(folder: str) -> RunFolderError:
    return RunFolderError(
        f"Run folder {folder} already holds a run (its {RUN_MARKER}, metrics.csv, checkpoints/): "
        "a new run there would delete its metrics.csv and overwrite its checkpoints. Give this run a "
        f"new folder (drop hydra.run.dir=...), or resume that run into it: ckpt_path={folder}."
    )


def check_run_folder(folder: str, resuming_into: bool = False) -> None:
    """:class:`RunFolderLock`'s refusals without taking the folder, and without writing anything into it.

    For Hydra's ``on_run_start`` (segtrain/hydra_callbacks.py): Hydra saves the job's ``.hydra/``
    into the run folder before the job starts, so a run refused only by the lock would already
    have rewritten the old run's ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``.

    Raises:
        RunFolderError: as :meth:`RunFolderLock.acquire` would.
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        return
    lock = os.path.join(folder, LOCK_FILE)
    if fcntl is not None and os.path.isfile(lock):
        try:
            fd = os.open(lock, os.O_RDWR)  # read-write: NFS emulates flock with locks that need it
        except OSError:
            fd = None  # not openable: RunFolderLock reports it when the run starts
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise _in_use(folder, RunFolderLock._holder(fd)) from None
            finally:
                os.close(fd)
    if os.path.exists(os.path.join(folder, RUN_MARKER)) and not resuming_into:
        raise _holds_a_run(folder)


class RunFolderLock:
    """Exclusive use of a run folder for one process.

    Args:
        folder: the run folder (``paths.output_dir``).
        resuming_into: True when the run resumes from a checkpoint inside ``folder``: then a
            previous run in it is expected.
    """

    def __init__(self, folder: str, resuming_into: bool = False) -> None:
        self.folder = os.path.abspath(folder)
        self.resuming_into = resuming_into
        self._fd: int | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.folder, LOCK_FILE)

    def acquire(self) -> RunFolderLock:
        """Take the folder, or raise :class:`RunFolderError` saying who holds it and what to do."""
        make_run_folder(self.folder)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise _in_use(self.folder, holder) from None
        if os.path.exists(os.path.join(self.folder, RUN_MARKER)) and not self.resuming_into:
            os.close(fd)
            raise _holds_a_run(self.folder)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, OSError):
            return "a process that has not written its details yet"

    def release(self) -> None:
        """Let the folder go (the lock file stays; removing it would race with a run taking it)."""
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
