"""The temporary files of writes killed mid-way: removed when a run starts in, or resumes from, their folder.

An atomic write (segtrain/atomic.py) goes to ``<name>.tmp-<pid>`` first and renames it over
``<name>``; a SIGKILL during a checkpoint save leaves the temporary file behind for good -- the
size of a checkpoint, ~290 MB for ``unet_resnet34``. :func:`clean_killed_writes` (``train()``,
once the run folder is held) removes those whose process is gone and logs each.
"""

from __future__ import annotations

import logging
import os
import re

from .run_folder import LOCK_FILE, fcntl, pid_alive

log = logging.getLogger(__name__)

#: ``<name>.tmp-<pid>``: a write of segtrain/atomic.py (or config.json) in progress, or killed mid-way.
_TEMP_FILE = re.compile(r"\.tmp-(\d+)$")


def remove_stale_temp_files(folder: str, held: bool = False) -> list[str]:
    """Delete the temporary files that writes killed mid-way left in a run folder; return their paths.

    Those in the run folder and its ``checkpoints/`` whose process is no longer alive on this
    host. Unless ``held`` (this process holds the folder's ``RunFolderLock``), nothing is removed
    while a live run holds the folder: its writes may come from another host.
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder) or (not held and _held_by_a_run(folder)):
        return []
    removed = []
    for sub in (folder, os.path.join(folder, "checkpoints")):
        try:
            names = os.listdir(sub)
        except OSError:
            continue
        for name in names:
            match = _TEMP_FILE.search(name)
            path = os.path.join(sub, name)
            if match is None or pid_alive(int(match.group(1))) or not os.path.isfile(path):
                continue
            try:
                os.remove(path)
            except OSError:
                continue
            removed.append(path)
    return removed


def clean_killed_writes(output_dir: str, ckpt: str | None = None) -> list[str]:
    """At a run's start, with its folder held: the temporary files of killed writes removed and logged.

    In the run's own folder (a start in, or a resume into, that folder) and in the folder of the
    checkpoint it resumes from. Returns the removed paths.
    """
    output_dir = os.path.abspath(output_dir)
    removed = remove_stale_temp_files(output_dir, held=True)
    if ckpt is not None:
        source = os.path.dirname(os.path.abspath(ckpt))
        if os.path.basename(source) == "checkpoints":
            source = os.path.dirname(source)
        if source != output_dir:
            removed += remove_stale_temp_files(source)
    for path in removed:
        log.info("Removed %s: a write killed mid-way left it (its process %s is gone)", path,
                 _TEMP_FILE.search(path).group(1))
    return removed


def _held_by_a_run(folder: str) -> bool:
    lock = os.path.join(folder, LOCK_FILE)
    if fcntl is None or not os.path.isfile(lock):
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return True  # cannot tell: leave the files alone
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
