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

import io
import os
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from fsspec.implementations.local import LocalFileSystem


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``.

    Args:
        obj: anything ``torch.save`` accepts.
        path: local destination; its folder is created if missing.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Serialise first: a failure while pickling must not even create the temporary file.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Interrupted or failed: drop our temporary file, leave the previous checkpoint untouched.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


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
