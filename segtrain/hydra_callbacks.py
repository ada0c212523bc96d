"""Hydra callback (``hydra.callbacks.startup`` in conf/train.yaml): checks and quieting before Hydra's own work.

Hydra creates the run folder before ``train.py``'s function runs; under an unusable
``paths.log_dir`` (``/proc/x``, a read-only mount) that fails as four chained ``FileNotFoundError``
tracebacks that never name the key. :class:`StartupChecks` creates the folder that will hold the
run folders first and, if it cannot, exits with one line naming ``paths.log_dir`` (a
``SystemExit``: Hydra turns a callback's exceptions into warnings and carries on), and refuses a
``hydra.run.dir`` that holds a live or finished run before Hydra rewrites its ``.hydra/``
(:func:`check_run_dir`). Before a sweep it also routes Optuna's log
through Hydra's logging (no ANSI colour codes in the log files) and keeps the database
migration tool's set-up lines (alembic, used by Optuna's storage) out of it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .run_folder import RunFolderError, check_run_folder, make_run_folder


def check_runs_parent(run_dir: str, log_dir: str | None) -> None:
    """Create the folder that holds ``run_dir`` (the run folder itself is Hydra's to create).

    Raises:
        SystemExit: with the message (exit status 1), naming ``paths.log_dir`` when ``run_dir`` lies
            below it, else ``hydra.run.dir``.
    """
    parent = os.path.dirname(os.path.abspath(run_dir))
    below = log_dir is not None and parent.startswith(os.path.abspath(log_dir))
    key = f"paths.log_dir={log_dir}" if below else f"hydra.run.dir={run_dir}"
    try:
        make_run_folder(parent, key)
    except RunFolderError as err:
        raise SystemExit(f"Error: {err}") from None


def check_run_dir(config: DictConfig) -> None:
    """Refuse a ``hydra.run.dir`` that holds a live or finished run before Hydra writes its ``.hydra/`` there.

    The same refusals as the run folder lock of ``train()`` (segtrain/run_folder.py), made earlier:
    Hydra saves ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` into the run folder
    before the job starts, which would rewrite the old run's record. A run resuming into its own
    folder (``ckpt_path`` inside it) is let through; DDP ranks > 0 share rank 0's folder and skip.

    Raises:
        SystemExit: with the message (exit status 1).
    """
    from .distributed import env_global_rank
    from .resume import resolve_ckpt_path

    if env_global_rank() != 0:
        return
    run_dir = os.path.abspath(str(config.hydra.run.dir))
    try:
        ckpt = resolve_ckpt_path(config.get("ckpt_path"), config.get("paths", {}).get("log_dir"), run_dir)
    except Exception:  # noqa: BLE001 -- a bad ckpt_path is reported by train() with its own message
        ckpt = None
    resuming_into = ckpt is not None and os.path.abspath(ckpt).startswith(run_dir + os.sep)
    try:
        check_run_folder(run_dir, resuming_into)
    except RunFolderError as err:
        raise SystemExit(f"Error: {err}") from None


def quiet_sweep_logging(config: DictConfig) -> None:
    """Optuna's records through Hydra's handlers (no colour codes); no alembic set-up lines."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if "optuna" in str(config.hydra.sweeper.get("_target_", "")):
        import optuna

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()


class StartupChecks(Callback):
    """See the module docstring."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_runs_parent(str(config.hydra.run.dir), config.get("paths", {}).get("log_dir"))
        check_run_dir(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_runs_parent(str(config.hydra.sweep.dir), config.get("paths", {}).get("log_dir"))
        quiet_sweep_logging(config)
