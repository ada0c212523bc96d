"""Checked sweeper settings: direction, search space, sampler, pruner, storage (no launcher needed).

Every mistake is a ValueError naming the config key, raised before a trial is created.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from segtrain.optuna_trial import build_pruner, normalize_storage

from ._search_space import SearchSpace, grid, parse_search_space

log = logging.getLogger(__name__)

_DIRECTIONS = {"maximize": "max", "minimize": "min"}
_KNOWN = {"direction", "study_name", "storage", "n_trials", "n_jobs", "sampler", "pruner", "params",
          "heartbeat_interval", "grace_period"}


@dataclass
class Settings:
    direction: str
    study_name: str
    storage: str
    n_trials: int
    n_jobs: int
    space: SearchSpace
    make_sampler: Callable[[], optuna.samplers.BaseSampler]
    pruner_conf: dict[str, Any] | None
    heartbeat_interval: float
    grace_period: float


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def check_direction(direction: Any, monitor_mode: Any) -> str:
    """``maximize``/``minimize``: the one given, else the one ``monitor_mode`` implies."""
    implied = {"max": "maximize", "min": "minimize"}.get(str(monitor_mode)) if monitor_mode is not None else None
    if direction is None:
        if implied is None:
            raise ValueError("hydra.sweeper.direction: set maximize or minimize (the config has no monitor_mode "
                             "to take it from)")
        return implied
    if str(direction) not in _DIRECTIONS:
        raise ValueError(f"hydra.sweeper.direction must be maximize, minimize or null (follow monitor_mode), "
                         f"got {direction!r}; train.py returns one metric, so a study has one direction")
    if implied is not None and str(direction) != implied:
        raise ValueError(f"hydra.sweeper.direction={direction} contradicts monitor_mode={monitor_mode}: the "
                         f"study would optimise {str(direction)[:-3]}ing the metric the checkpoint and "
                         "early stopping treat the other way. Set one of them (or direction=null to follow "
                         "monitor_mode).")
    return str(direction)


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{prefix}{k}"
            out.append(key)
            out += _dotted_keys(v, key + ".")
    return out


def check_keys(space: SearchSpace, config: DictConfig) -> None:
    """Every searched config key (``a.b.c``, no ``+``) must exist in the composed config."""
    tree = OmegaConf.to_container(config, resolve=False)
    tree.pop("hydra", None)
    known = None
    for name, key in space.keys.items():
        if key != name or "." not in name or "/" in name or "@" in name:
            continue  # +key adds a key; group overrides (loss=dice) are checked by composing
        node = tree
        for part in name.split("."):
            node = node.get(part, KeyError) if isinstance(node, Mapping) else KeyError
        if node is KeyError:
            known = known if known is not None else _dotted_keys(tree)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"hydra.sweeper.params.{name}: {name!r} is not a key of the composed config.{hint} "
                             f"To add a new key, write +{name}.")


def _sampler_factory(conf: Any, space: SearchSpace) -> Callable[[], optuna.samplers.BaseSampler]:
    conf = _plain(conf)
    if not isinstance(conf, Mapping) or "_target_" not in conf:
        raise ValueError(f"hydra.sweeper.sampler must be a mapping with a _target_ (e.g. hydra/sweeper/sampler=tpe), "
                         f"got {conf!r}")
    target = conf["_target_"]
    try:
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"hydra.sweeper.sampler: unknown sampler {target!r} ({err}). Choose "
                         "hydra/sweeper/sampler=tpe|random|cmaes|grid or a class of optuna.samplers.") from None
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise ValueError(f"hydra.sweeper.sampler: {target!r} is not an Optuna sampler (optuna.samplers.BaseSampler)")
    if issubclass(cls, optuna.samplers.CmaEsSampler) and importlib.util.find_spec("cmaes") is None:
        # Optuna imports it only at the first relative sample, i.e. after trials have run.
        raise ValueError("hydra.sweeper.sampler: the CMA-ES sampler needs the cmaes package: pip install cmaes")
    extra = {"search_space": grid(space)} if issubclass(cls, optuna.samplers.GridSampler) else {}
    seed = conf.get("seed")

    def make(trial_seed: int | None = seed) -> optuna.samplers.BaseSampler:
        kwargs = {**conf, **extra, **({"seed": trial_seed} if "seed" in conf else {})}
        try:
            return instantiate(kwargs)
        except Exception as err:  # noqa: BLE001 -- bad argument, missing package (cmaes)
            cause = err.__cause__ or err
            raise ValueError(f"hydra.sweeper.sampler: cannot build {target}: {cause}") from None

    make()  # fail now, not at the first trial
    if seed is None or extra:
        # GridSampler: its seed shuffles the grid once, and trial k takes grid point k, so every
        # worker needs the same seed (distinct points come from the trial numbers).
        return make
    from ._seeding import SeedPerTrial

    return lambda: SeedPerTrial(make, int(seed))


def default_storage(config: DictConfig, study_name: str) -> str:
    log_dir = OmegaConf.select(config, "paths.log_dir")
    if log_dir is None:
        raise ValueError("hydra.sweeper.storage is null (an SQLite file under paths.log_dir) but the config has no "
                         "paths.log_dir: set hydra.sweeper.storage")
    return f"sqlite:///{Path(str(log_dir)) / 'optuna' / (study_name + '.db')}"


def read_settings(settings: Mapping[str, Any], config: DictConfig, arguments: list[str]) -> Settings:
    """Check ``hydra.sweeper`` (as passed to the sweeper) against the composed ``config``."""
    unknown = sorted(set(settings) - _KNOWN)
    if unknown:
        raise ValueError(f"hydra.sweeper: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    direction = check_direction(settings.get("direction"), OmegaConf.select(config, "monitor_mode"))
    study_name = str(settings.get("study_name") or OmegaConf.select(config, "hydra.job.name") or "sweep")
    n_trials, n_jobs = settings.get("n_trials"), settings.get("n_jobs", 1)
    for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"hydra.sweeper.{key} must be an integer >= 1, got {value!r}")
    space = parse_search_space(_plain(settings.get("params")), arguments)
    if not space.distributions:
        raise ValueError("hydra.sweeper.params: nothing to search (give interval/choice/range values)")
    check_keys(space, config)
    make_sampler = _sampler_factory(settings.get("sampler"), space)
    if isinstance(make_sampler(), optuna.samplers.GridSampler):
        size = math.prod(len(v) for v in grid(space).values())
        if size < n_trials:
            log.info("Grid sampler: n_trials %d -> %d (the grid's size)", n_trials, size)
            n_trials = size
    pruner_conf = _plain(settings.get("pruner"))
    build_pruner(pruner_conf)  # fail now
    if pruner_conf is not None:
        json.dumps(pruner_conf)  # handed to the jobs as JSON
    storage = settings.get("storage") or default_storage(config, study_name)
    heartbeat, grace = float(settings.get("heartbeat_interval", 15)), float(settings.get("grace_period", 120))
    if not 0 < heartbeat < grace:
        raise ValueError(f"hydra.sweeper: need 0 < heartbeat_interval < grace_period, got {heartbeat} and {grace}")
    return Settings(direction, study_name, normalize_storage(str(storage)), n_trials, n_jobs, space, make_sampler,
                    pruner_conf, heartbeat, grace)
