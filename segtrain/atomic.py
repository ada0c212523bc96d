"""Atomic checkpoint writes: a crash (SIGKILL, power loss) leaves the old file or the new one, never half of one.

Why not Lightning's own ``TorchCheckpointIO``? It serialises to memory and writes inside an fsspec
transaction, but fsspec's local transaction writes the bytes to a temporary file in the *system*
temp directory (``tempfile.mkstemp()``) and commits with ``shutil.move``. When ``/tmp`` and the
run folder are on different filesystems (a local ``/tmp`` and an NFS/Lustre run folder is the
common cluster layout) ``shutil.move`` falls back to copy-then-delete, and a kill during the copy
leaves a truncated ``last.ckpt`` that no longer loads. It also never calls ``fsync``, so after a
power loss the renamed file may be empty.

``AtomicCheckpointIO`` writes ``<name>.tmp-<pid>`` next to the target, ``fsync``s it and
``os.replace``s it over the target -- a rename within one directory, which POSIX guarantees to be
atomic -- then ``fsync``s the directory so the rename itself survives a power loss. Remote paths
(``s3://`` ...) keep Lightning's behaviour.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from fsspec.implementations.local import LocalFileSystem
from omegaconf import OmegaConf

#: ``${segtrain.pid:}`` in conf/hydra/default.yaml: the run folder's name ends with the process id.
PID_RESOLVER = "segtrain.pid"


def register_run_dir_resolver() -> None:
    """Register ``${segtrain.pid:}``, this process's id, so two trainings never share a run folder.

    ``${now:...%f}`` alone is not enough: two trainings started in the same microsecond (a job
    array, a script starting several runs) get the same name, and Hydra opens an existing run
    folder without complaint. Two live processes on one machine never share a process id.
    Cached, so a config pickled to another process (a launcher's job) keeps the value. Called
    when this module is imported -- ``segtrain.run`` imports it, and ``train.py`` imports
    ``segtrain.run`` before Hydra composes the config.
    """
    if not OmegaConf.has_resolver(PID_RESOLVER):
        OmegaConf.register_new_resolver(PID_RESOLVER, lambda: str(os.getpid()), use_cache=True)


register_run_dir_resolver()


class StorageError(OSError):
    """A write that failed (full disk, unwritable or missing folder), naming the file and the cause.

    An ``OSError`` with the original ``errno``, so callers testing ``err.errno == errno.ENOSPC`` still can.
    """


@contextmanager
def storage_errors(path: str | os.PathLike, what: str, kept: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a :class:`StorageError` that names it.

    A write to a full disk fails inside ``write``/``close`` with ``[Errno 28] No space left on
    device`` and no file name; this adds the file, what it is and what was kept.

    Args:
        path: the file being written.
        what: what it is, e.g. ``"checkpoint"``.
        kept: what the user still has, appended to the message.
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        cause = err.strerror or str(err) or errno.errorcode.get(err.errno or 0, "unknown error")
        raise StorageError(
            err.errno, f"Could not write {what} {os.fspath(path)}: {cause}. {kept}Free space or fix the folder's "
            "permissions, then run again."
        ) from err


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` under this process's umask: the permissions ``open()`` gives a new file (0644 under umask 022)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put straight back
    os.umask(mask)
    return mode & ~mask


def usual_permissions(path: str | os.PathLike) -> None:
    """Give a file whose writer chose private permissions the ones ``open()`` gives (the umask's).

    safetensors (0.8) writes ``model.safetensors`` at 0600: the file docs say to share was
    unreadable to anyone else, while the ``config.json`` beside it was not.
    """
    os.chmod(path, umask_mode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``.

    Args:
        obj: anything ``torch.save`` accepts.
        path: local destination; its folder is created if missing.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    with storage_errors(folder, "the checkpoint folder"):
        os.makedirs(folder, exist_ok=True)
    # Serialise first: a failure while pickling must not even create the temporary file.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    kept = f"The previous {os.path.basename(path)} (if any) is intact; resume from it with ckpt_path={path}. "
    with storage_errors(path, "the checkpoint", kept):
        atomic_write_bytes(buffer.getbuffer(), path)


def atomic_write_bytes(data: bytes | memoryview, path: str) -> None:
    """Write ``data`` to ``path`` via ``<path>.tmp-<pid>`` + ``fsync`` + ``os.replace``: all or nothing."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Interrupted or failed: drop our temporary file, leave the previous file untouched.
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_dir(folder: str) -> None:
    """Persist a rename: the new directory entry is only durable once the directory is synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` plugin whose local saves go through :func:`atomic_torch_save`.

    Use as ``Trainer(plugins=[AtomicCheckpointIO()])``; every checkpoint the trainer writes
    (``ModelCheckpoint`` best/last, ``trainer.save_checkpoint``) then goes through it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save ``checkpoint`` to ``path`` atomically (local paths) or as Lightning does (remote ones).

        Args:
            checkpoint: the state dict the trainer dumps.
            path: destination file.
            storage_options: unsupported, as in ``TorchCheckpointIO``.
        """
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


class _AtomicExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, but every save rewrites ``metrics.csv`` atomically.

    Lightning appends rows, and rewrites the whole file in place when a new metric key appears
    (``_rewrite_with_new_header``): a full disk during that rewrite truncates every metric logged
    so far. Here the old rows are read, the new ones added and the file replaced in one rename, so
    a failed save leaves the previous ``metrics.csv`` as it was, and the error names the file.
    """

    def save(self) -> None:
        if not self.metrics or not isinstance(self._fs, LocalFileSystem):
            return super().save()
        self._record_new_keys()
        rows: list[dict[str, Any]] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                rows = list(csv.DictReader(f))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows + self.metrics)
        with storage_errors(self.metrics_file_path, "the metrics file", "The metrics saved before are intact. "):
            atomic_write_bytes(buffer.getvalue().encode(), self.metrics_file_path)
        self.metrics = []


class AtomicCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` (same files, same arguments) writing ``metrics.csv`` atomically."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AtomicExperimentWriter(log_dir=self.log_dir)
        return self._experiment
