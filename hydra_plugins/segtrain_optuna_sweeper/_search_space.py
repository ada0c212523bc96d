"""``hydra.sweeper.params`` (Hydra's override grammar) -> Optuna distributions, and back to overrides.

The grammar is the one of hydra-optuna-sweeper, so existing configs keep working:

    interval(0.2, 2.0)              FloatDistribution(0.2, 2.0)     (Hydra's interval is always float)
    tag(log, interval(1e-5, 1e-1))  FloatDistribution(..., log=True)
    tag(int, interval(8, 64))       IntDistribution(8, 64)          (tag(int, log, ...): log=True)
    choice(a, b, c)  /  a,b,c       CategoricalDistribution
    range(2, 10, 2)                 IntDistribution(2, 8, step=2)   (floats: FloatDistribution with step)
    shuffle(range(...))             CategoricalDistribution of the range's values
    a YAML list [a, b]              CategoricalDistribution
    value                           fixed: passed to every trial as it is

``range`` keeps Hydra's meaning, stop excluded (``range(2, 10, 2)`` is 2, 4, 6, 8):
hydra-optuna-sweeper 1.3 included the stop value, which ``-m`` with the same override does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from omegaconf import ListConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

_CHOICE_TYPES = (str, int, float, bool, type(None))


@dataclass
class SearchSpace:
    """What each trial samples and what every trial gets as it is.

    ``distributions`` and ``keys`` are indexed by the parameter's name in the study (the config
    key, without ``+``/``++``); ``keys`` gives the override key with its prefix.
    """

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """Command-line overrides of one trial: its sampled values, then the fixed ones."""
        return [f"{self.keys[name]}={format_value(value)}" for name, value in params.items()] + list(self.fixed)

    def example(self) -> list[str]:
        """One legal trial (first choice, lower bounds): to check the overrides compose up front."""
        values = {}
        for name, dist in self.distributions.items():
            values[name] = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
        return self.overrides(values)


def format_value(value: Any) -> str:
    """A sampled value written in the override grammar (strings escaped, None as null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return Transformer.str(value)


def _choices(override: Override, key: str) -> list[Any]:
    out = []
    for x in override.sweep_iterator(transformer=Transformer.encode):
        if not isinstance(x, _CHOICE_TYPES):
            raise ValueError(f"hydra.sweeper.params.{key}: choices must be str, int, float, bool or null, got {x!r}")
        out.append(x)
    return out


def distribution(override: Override) -> BaseDistribution | None:
    """The distribution of a sweep override; None for a plain value (a fixed override)."""
    if not override.is_sweep_override():
        return None
    key = override.get_key_element().lstrip("+~")
    value = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(_choices(override, key))
    if override.is_range_sweep():
        if value.shuffle:
            return CategoricalDistribution(_choices(override, key))
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"hydra.sweeper.params.{key}: {override.get_value_element_as_str()} is empty")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(int(value.start), int(values[-1]), step=int(value.step))
        return FloatDistribution(float(value.start), float(values[-1]), step=float(value.step))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if "int" in value.tags:  # Hydra's interval is always float
            return IntDistribution(int(value.start), int(value.end), log=log)
        if log and value.start <= 0:
            raise ValueError(f"hydra.sweeper.params.{key}: tag(log, ...) needs a positive lower bound, got {value.start}")
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"hydra.sweeper.params.{key}: {override.input_line!r} is not supported (use interval, "
                     "tag(log, interval), choice, range or a comma-separated list)")


def _param_lines(params: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    lines = []
    for key, value in (params or {}).items():
        key = f"{prefix}{key}"
        if isinstance(value, Mapping):  # hydra.sweeper.params.a.b=... on the command line nests
            lines += _param_lines(value, key + ".")
            continue
        if isinstance(value, (list, tuple, ListConfig)):  # a YAML list: one of its items
            value = "choice(" + ",".join(format_value(v) for v in value) + ")"
        lines.append(f"{key}={value}")
    return lines


def parse_search_space(params: Mapping[str, Any] | None, arguments: Sequence[str] = ()) -> SearchSpace:
    """Distributions and fixed overrides from ``hydra.sweeper.params`` and the command line.

    Command-line sweeps (``-m hparams_search=optuna 'optimizer.lr=tag(log, interval(1e-4, 1e-2))'``
    or ``loss=dice,bce``) are searched as well; plain command-line values go to every trial.
    A key on the command line replaces the same key of ``params``.
    """
    parser = OverridesParser.create()
    space = SearchSpace()
    for line in [*_param_lines(params), *arguments]:
        try:
            override = parser.parse_override(line)
        except Exception as err:  # noqa: BLE001 -- Hydra's grammar errors: name the key
            raise ValueError(f"hydra.sweeper.params: cannot parse {line!r}: {err}") from None
        key = override.get_key_element()
        name = key.lstrip("+~")
        space.distributions.pop(name, None)
        space.keys.pop(name, None)
        space.fixed = [f for f in space.fixed if f.split("=", 1)[0].lstrip("+~") != name]
        dist = distribution(override)
        if dist is None:
            space.fixed.append(line)
        else:
            space.distributions[name] = dist
            space.keys[name] = key
    return space


def grid(space: SearchSpace) -> dict[str, list[Any]]:
    """The values of every parameter, for Optuna's GridSampler (which needs a finite space)."""
    out = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = list(dist.choices)
        elif dist.step is not None and not getattr(dist, "log", False):
            n = int(round((dist.high - dist.low) / dist.step)) + 1
            out[name] = [dist.low + i * dist.step for i in range(n)]
        else:
            raise ValueError(f"hydra.sweeper.params.{name}: the grid sampler needs a finite set of values "
                             "(choice, range or a list), not an interval")
    return out
