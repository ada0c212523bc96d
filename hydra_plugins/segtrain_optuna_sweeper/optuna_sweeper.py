"""The Hydra sweeper class (``hydra.sweeper._target_``); the work is in ``_impl.py``.

Hydra imports every public module of ``hydra_plugins`` at each start (also for single runs and
DDP ranks), so this one imports nothing heavy: Optuna and the sweep loop load in :meth:`sweep`.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Optuna ask-and-tell sweeper with a study database, resume, pruning and parallel workers.

    Configured by ``conf/hydra/sweeper/optuna.yaml`` (every key is described there).
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> Any:
        from ._impl import run_sweep

        return run_sweep(self, arguments)
