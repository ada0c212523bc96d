"""Where the harness works around Lightning: which versions, why, and what each workaround relies on.

Written for lightning 2.6 (tested with 2.6.6; the behaviour below is unchanged since 2.0).
Every Lightning internal used in the project is used here and nowhere else, and
``tests/test_lightning_compat.py`` checks each one -- its name, its signature and the
behaviour the workaround relies on -- so an upgrade that moves one fails there, naming it,
instead of a sweep hanging or a resume silently drawing other random numbers. Where the
checked internals are missing at run time, :func:`multirun_ddp_scope` raises a ``RuntimeError``
that says so rather than guessing.

1. **DDP re-launch inside a Hydra multirun** (Lightning #11300, Hydra #2070; no public API in
   2.6). With ``strategy=ddp`` on its own, ``_SubprocessScriptLauncher`` re-runs ``sys.argv``
   for every local rank > 0 -- inside ``-m`` that is the *sweep's* command line -- and
   ``_launch_process_observer`` (Fabric's, imported into
   ``lightning.pytorch.strategies.launchers.subprocess_script``) starts a thread that SIGKILLs
   the main process (here: the whole sweep) as soon as one child exits non-zero. :func:`multirun_ddp_scope` hands the children the job's own command line (through
   :data:`segtrain.distributed.RELAUNCH_ENV`, read by ``segtrain.distributed.startup_argv``),
   swaps that observer -- looked up by ``launch()`` as a module global at call time, hence
   replaceable -- for :class:`_SiblingObserver` for the duration of the job, and afterwards
   restores the environment Lightning changed and destroys the process group, so that the next
   job of the sweep starts clean. Lightning's own children command line
   (``_hydra_subprocess_cmd``: ``hydra.job.name=train_ddp_process_<k>``) is what ``startup_argv``
   reproduces for the job's children.
2. **Random state in checkpoints** (public APIs only). Lightning saves weights, optimizer, loop
   counters, callback and datamodule ``state_dict`` s, but not the random state: its only use of
   the generators' state is to carry it into spawned workers. A resumed run would restart
   torch's, numpy's and Python's global generators from the seed and draw another shuffle order
   and other dropout masks. :class:`RandomStateCheckpoint` stores them with every checkpoint and
   puts them back when Lightning restores callback states, which it does after
   ``datamodule.setup()`` and before the first epoch's dataloader iterator draws its
   permutation -- the order this workaround relies on. The augmentation pipelines' own
   generators are the datamodule's business (``SegmentationDataModule.state_dict``).
3. **last.ckpt at every epoch end, and the best score across a resume** (private
   ``ModelCheckpoint`` helpers). Since 2.x ``save_last=True`` writes ``last.ckpt`` only when a
   top-k checkpoint was saved at the same step, so epochs that do not improve the monitored
   metric are lost in a crash; and a resume into a new run folder (another ``dirpath``) drops
   ``best_model_score`` and the top-k table, so the resumed run reports a best that is not the
   best. :class:`ResumableModelCheckpoint` saves ``last.ckpt`` after every validation (reusing
   ``_should_skip_saving_checkpoint``, ``_should_save_on_train_epoch_end``,
   ``_monitor_candidates`` and ``_save_last_checkpoint``) and reloads the best score and paths
   whatever the folder (``ModelCheckpoint`` never deletes files outside its own ``dirpath``).
4. **Gloo process groups at exit** (a private Lightning helper, a torch behaviour). Lightning
   registers ``destroy_process_group`` at exit only for NCCL (``_init_dist_connection`` in
   ``lightning.fabric.utilities.distributed``). A gloo group (DDP on CPU) is left to the
   interpreter's shutdown, where gloo's worker threads die with the process and a rank aborts
   with ``terminate called without an active exception`` (SIGABRT) after its work is done
   (pytorch#190489; it failed this project's CI once, in ``scripts/predict.py`` with two CPU
   ranks). :func:`destroy_process_group_at_exit` registers Lightning's own
   ``_destroy_dist_connection`` for every backend.
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from .distributed import RELAUNCH_ENV, is_multirun, job_argv

log = logging.getLogger(__name__)

#: The Lightning line these workarounds were written and checked for.
CHECKED_LIGHTNING = "2.6"

# --------------------------------------------------------------------------------------------
# 1. DDP re-launch inside a multirun
# --------------------------------------------------------------------------------------------


def _observer_module() -> Any:
    """The Lightning module whose ``_launch_process_observer`` global ``launch()`` calls."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    return subprocess_script


def _uses_script_relaunch(trainer: L.Trainer) -> bool:
    """True when ``trainer.fit`` will re-run the script for ranks > 0 (``strategy=ddp`` on its own)."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    strategy = trainer.strategy
    launcher = getattr(strategy, "launcher", None)
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not strategy.cluster_environment.creates_processes_externally
        and trainer.num_devices * trainer.num_nodes > 1
    )


@contextmanager
def replaced_child_observer(observer: Callable[[list[subprocess.Popen]], None]) -> Iterator[None]:
    """Let Lightning's script launcher call ``observer(child_processes)`` instead of its own watchdog.

    Sets ``_launch_process_observer`` in the launcher's module for the duration of the block and
    puts the original back afterwards, also on errors.

    Raises:
        RuntimeError: this Lightning no longer has the function, or it takes other arguments:
            the workaround would silently do nothing (see the module docstring).
    """
    module = _observer_module()
    original = getattr(module, "_launch_process_observer", None)
    if original is None or list(inspect.signature(original).parameters) != ["child_processes"]:
        import lightning

        raise RuntimeError(
            f"lightning {lightning.__version__} changed {module.__name__}._launch_process_observer, which "
            f"segtrain.lightning_compat replaces for DDP inside a multirun (written for lightning "
            f"{CHECKED_LIGHTNING}). Run DDP jobs one at a time (no -m), use hydra/launcher=slurm, or "
            "install lightning 2.6 until the workaround is updated."
        )
    module._launch_process_observer = observer
    try:
        yield
    finally:
        module._launch_process_observer = original


class _SiblingObserver:
    """Replaces Lightning's child-process observer for the DDP children of a multirun job.

    Lightning's observer SIGKILLs the *main* process as soon as a child exits non-zero: inside
    a multirun the main process is the whole sweep, so one failing rank would end the sweep.
    This one only kills the remaining children; the job's own process (rank 0) then fails in
    its next collective (gloo at once, NCCL after the process-group timeout) or by itself, and
    the sweep records that job as failed (segtrain/sweep.py) and goes on.
    """

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.failures: list[tuple[int, int]] = []  # (local rank, exit code)
        self.children: list[subprocess.Popen] = []

    def __call__(self, child_processes: list[subprocess.Popen]) -> None:
        self.children = child_processes

        def watch() -> None:
            while not self.stopped.wait(1.0):
                codes = [p.poll() for p in child_processes]
                if all(c == 0 for c in codes):
                    return
                failed = [(rank, c) for rank, c in enumerate(codes, start=1) if c not in (None, 0)]
                if failed:
                    self.failures = failed
                    log.error("DDP child rank(s) failed (local rank, exit code): %s; stopping the others", failed)
                    for p in child_processes:
                        if p.poll() is None:
                            p.kill()
                    return

        threading.Thread(target=watch, daemon=True, name="segtrain-ddp-children").start()

    def reap(self, timeout: float = 60.0) -> None:
        """Stop watching; give the children ``timeout`` seconds to exit, then kill them."""
        self.stopped.set()
        for p in self.children:
            try:
                p.wait(timeout=max(timeout, 0.01))
            except subprocess.TimeoutExpired:
                log.warning("DDP child %s still running after the job; killing it", p.pid)
                p.kill()
                p.wait()


@contextmanager
def multirun_ddp_scope(trainer: L.Trainer, original_argv: Sequence[str] | None = None) -> Iterator[None]:
    """Wrap ``trainer.fit/validate/test`` of a multirun job so that DDP works inside the sweep.

    Outside a multirun it does nothing. Inside one, when the trainer will re-launch the script,
    it publishes :func:`segtrain.distributed.job_argv` in ``RELAUNCH_ENV`` for the children and
    swaps Lightning's child observer for :class:`_SiblingObserver`; on exit it restores every
    environment variable changed inside the scope and destroys the process group, so the next
    job of the sweep starts from a clean process.

    Args:
        trainer: the ``lightning.Trainer`` of this job. Wrap *all* its calls (fit, then test):
            Lightning starts the children once per Trainer, on the first call.
        original_argv: the command line of the sweep (default ``sys.argv``).
    """
    if not is_multirun():
        yield
        return
    before = dict(os.environ)
    observer = _SiblingObserver()
    relaunch = _uses_script_relaunch(trainer)
    if relaunch:
        os.environ[RELAUNCH_ENV] = json.dumps(job_argv(sys.argv if original_argv is None else original_argv))
        log.info("DDP inside a multirun: ranks > 0 re-run this job's own overrides")
    try:
        if relaunch:
            with replaced_child_observer(observer):
                yield
        else:
            yield
    except BaseException:
        # Rank 0 failed: Lightning leaves the children waiting in a collective for it; stop them now.
        observer.reap(timeout=0)
        raise
    finally:
        observer.reap()
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------
# 2. Random state in checkpoints
# --------------------------------------------------------------------------------------------


def capture_global_random_state() -> dict[str, Any]:
    """torch's CPU (and CUDA) generator, numpy's and Python's global generators.

    Returns:
        Tensors, strings, ints, floats, lists and tuples only, so a checkpoint holding it still
        loads with ``torch.load(weights_only=True)`` (numpy's key array becomes a list).
    """
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, key.tolist(), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_random_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_global_random_state` returned (CUDA only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if "torch.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch.cuda"])
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RandomStateCheckpoint(L.Callback):
    """Saves the global random state in every checkpoint and restores it on resume.

    Stored under ``checkpoint["callbacks"]["RandomStateCheckpoint"]``
    (:func:`capture_global_random_state`). Captured when the checkpoint is written (for
    ``last.ckpt``: at the end of the epoch, after validation), restored when Lightning restores
    callbacks on ``fit(ckpt_path=...)``, before the next epoch draws its shuffle order: a resume
    from an end-of-epoch checkpoint continues with exactly the numbers the uninterrupted run
    would have drawn. A mid-epoch checkpoint restarts that epoch (Lightning warns; batches are
    not skipped).

    Under DDP the checkpoint holds rank 0's state (Lightning saves on rank 0 only); every rank
    restores it. ``DistributedSampler`` shuffles from ``seed + epoch``, so the data order is
    still exact; the augmentation stream of ranks > 0 differs from the uninterrupted run.
    """

    def state_dict(self) -> dict[str, Any]:
        return capture_global_random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" not in state_dict:
            rank_zero_warn(
                "Resuming: the checkpoint's random state was written by an older segtrain in another "
                "format; the run continues from the seed's random state instead (not bit-exact)."
            )
            return
        restore_global_random_state(state_dict)


# --------------------------------------------------------------------------------------------
# 3. last.ckpt at every epoch end; the best score across a resume
# --------------------------------------------------------------------------------------------

#: What ``ModelCheckpoint.load_state_dict`` skips when the checkpoint came from another folder.
_BEST_STATE = ("best_model_score", "best_model_path", "best_k_models", "kth_best_model_path", "kth_value")


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps two promises Lightning 2.6 breaks (module docstring, item 3).

    * ``save_last=True`` rewrites ``last.ckpt`` after every validation (every epoch by default),
      not only when a new best was saved: a crash loses at most the epoch in progress.
    * On a resume from another run folder, the best score, the best checkpoint's path and the
      top-k table are reloaded (they point into the old folder, whose files are never deleted),
      so ``best_model_score`` -- what a sweep optimises -- is the best of the whole run.
    """

    def _save_last_if_not_saved(self, trainer: L.Trainer) -> None:
        # After super(): a top-k save at this step already wrote last.ckpt and marks the step saved.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            super().load_state_dict(state_dict)
            return
        # Lightning would warn that the best score is not reloaded, then forget it: carry it instead.
        # A file that is also in this folder (the run folder was copied or moved) is this folder's.
        moved = _Relocate(state_dict.get("dirpath"), self.dirpath)
        for key in _BEST_STATE:
            if key in state_dict:
                value = state_dict[key]
                if key == "best_k_models":
                    value = {moved(path): score for path, score in value.items()}
                setattr(self, key, moved(value) if key.endswith("_path") else value)
        if (last := moved(state_dict.get("last_model_path", ""))) and os.path.dirname(last) == self.dirpath:
            self.last_model_path = last  # else a copied folder's last.ckpt would make Lightning write last-v1.ckpt
        if self.best_model_path:
            log.info("Resumed best %s: %s (%s)", self.monitor, _as_float(self.best_model_score), self.best_model_path)


class _Relocate:
    """``old_dir/name`` -> ``new_dir/name`` where that file exists; other paths unchanged."""

    def __init__(self, old_dir: str | None, new_dir: str | None) -> None:
        self.old_dir, self.new_dir = old_dir, new_dir

    def __call__(self, path: str) -> str:
        if not path or not self.old_dir or not self.new_dir or os.path.dirname(path) != self.old_dir:
            return path
        candidate = os.path.join(self.new_dir, os.path.basename(path))
        return candidate if os.path.isfile(candidate) else path


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------------
# 4. Gloo process groups at exit
# --------------------------------------------------------------------------------------------

_destroy_registered = False


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group at exit, whatever its backend (module docstring, item 4).

    Call it once per process before the Trainer starts (``train``, ``predict``); calling it again
    does nothing. At exit the handler does nothing when no process group is up.
    """
    global _destroy_registered
    if not _destroy_registered:
        from lightning.fabric.utilities.distributed import _destroy_dist_connection

        atexit.register(_destroy_dist_connection)
        _destroy_registered = True
