"""The Hydra sweeper class (``hydra.sweeper._target_``); the work is in ``_impl.py``.

Hydra imports every public module of ``hydra_plugins`` at each start (also for single runs and
DDP ranks), so this one imports nothing heavy: Optuna and the sweep loop load in :meth:`sweep`.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# A left-over hydra-optuna-sweeper (an older install of this project) registers schemas under the
# same config names (hydra/sweeper/optuna, hydra/sweeper/sampler/*), which breaks composing ours.
if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
    warnings.warn("hydra-optuna-sweeper is installed; this project no longer uses it and its configs clash "
                  "with hparams_search=optuna: pip uninstall hydra-optuna-sweeper", stacklevel=1)


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
