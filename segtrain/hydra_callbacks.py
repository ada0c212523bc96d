"""Hydra callback (``hydra.callbacks.startup`` in conf/train.yaml): checks and quieting before Hydra's own work.

Hydra creates the run folder before ``train.py``'s function runs; under an unusable
``paths.log_dir`` (``/proc/x``, a read-only mount) that fails as four chained ``FileNotFoundError``
tracebacks that never name the key. :class:`StartupChecks` creates the folder that will hold the
run folders first and, if it cannot, exits with one line naming ``paths.log_dir`` (a
``SystemExit``: Hydra turns a callback's exceptions into warnings and carries on). Before a sweep it also routes Optuna's log
through Hydra's logging (no ANSI colour codes in the log files) and keeps the database
migration tool's set-up lines (alembic, used by Optuna's storage) out of it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .run_folder import RunFolderError, make_run_folder


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

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_runs_parent(str(config.hydra.sweep.dir), config.get("paths", {}).get("log_dir"))
        quiet_sweep_logging(config)
