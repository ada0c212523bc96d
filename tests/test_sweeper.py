"""The Optuna sweeper's parts, in-process and fast: grammar, settings checks, counting, seeding,
the job's link to its trial and the pruning callback (the sweeps themselves: test_sweeper_runs.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.segtrain_optuna_sweeper import _impl, _search_space, _settings
from segtrain import optuna_trial

ROOT = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["hparams_search=optuna", *overrides], return_hydra_config=True)


def _settings_of(cfg, **changes):
    settings = dict(cfg.hydra.sweeper)
    settings.pop("_target_"), settings.pop("_recursive_")
    settings.update(changes)
    return settings


# ------------------------------------------------------------------------------ grammar -----

def test_params_grammar_gives_the_distributions():
    space = _search_space.parse_search_space({
        "a": "interval(0.2, 2.0)", "b": "tag(log, interval(1e-5, 1.0))", "c": "tag(int, log, interval(1, 8))",
        "d": "choice(adam, sgd)", "e": "range(2, 10, 2)", "f": "range(0.1, 0.5, 0.1)", "g": "1,2,3",
        "h": ["x", "y"], "i": "shuffle(range(3))", "fixed": "7",
    }, ["+new.key=choice(true,false)", "g=4,5"])
    d = space.distributions
    assert d["a"] == FloatDistribution(0.2, 2.0) and d["b"] == FloatDistribution(1e-5, 1.0, log=True)
    assert d["c"] == IntDistribution(1, 8, log=True) and d["d"] == CategoricalDistribution(["adam", "sgd"])
    # range keeps Hydra's meaning: the stop value is excluded, as with -m.
    assert d["e"] == IntDistribution(2, 8, step=2)
    assert d["f"].step == pytest.approx(0.1) and d["f"].high == pytest.approx(0.4)
    assert d["g"] == CategoricalDistribution([4, 5])  # the command line replaces the params entry
    assert d["h"] == CategoricalDistribution(["x", "y"]) and sorted(d["i"].choices) == [0, 1, 2]
    assert d["new.key"] == CategoricalDistribution([True, False]) and space.keys["new.key"] == "+new.key"
    assert space.fixed == ["fixed=7"]
    overrides = space.overrides({"new.key": False, "a": 0.5, "d": "sgd"})
    assert overrides == ["+new.key=false", "a=0.5", "d=sgd", "fixed=7"]
    assert _search_space.grid(_search_space.parse_search_space({"e": "range(2, 10, 2)", "d": "a,b"})) == {
        "e": [2, 4, 6, 8], "d": ["a", "b"]}
    with pytest.raises(ValueError, match=r"hydra.sweeper.params.a: the grid sampler needs"):
        _search_space.grid(space)


@pytest.mark.parametrize("value", ["sqlite:////tmp/x.db", "it's", "C:\\logs\\", "a\\'b", "${oc.env:HOME}",
                                   json.dumps({"_target_": "optuna.pruners.ThresholdPruner", "lower": 2.0})])
def test_quoted_env_values_survive_hydras_parser(value):
    override = OverridesParser.create().parse_override(f"++hydra.job.env_set.X={_impl.quote(value)}")
    assert override.value() == value.replace("${", "\\${")  # the escape OmegaConf undoes, no interpolation
    from omegaconf import OmegaConf

    assert OmegaConf.create({"v": override.value()}).v == value


# ----------------------------------------------------------------------- settings checks -----

def test_settings_of_the_shipped_search():
    cfg = _compose()
    s = _settings.read_settings(_settings_of(cfg), cfg, [])
    assert s.direction == "maximize" and s.study_name == "loss_search" and s.n_trials == 20
    assert s.storage == "sqlite:///" + str((Path(cfg.paths.log_dir) / "optuna" / "loss_search.db").resolve())
    assert set(s.space.distributions) == {"loss.terms.dice.weight", "loss.terms.focal.weight",
                                          "loss.terms.focal.gamma", "loss.terms.dice.smooth", "optimizer.lr"}
    assert s.pruner_conf is None


@pytest.mark.parametrize("overrides, changes, message", [
    ([], {"direction": "minimize"}, r"direction=minimize contradicts monitor_mode=max"),
    (["hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler"], {}, r"hydra.sweeper.sampler: unknown sampler 'optuna.samplers.NoSuchSampler'"),
    (["hydra.sweeper.sampler._target_=optuna.pruners.MedianPruner"], {}, r"hydra.sweeper.sampler: 'optuna.pruners.MedianPruner' is not an Optuna sampler"),
    (["hydra.sweeper.pruner={_target_: optuna.pruners.NoSuchPruner}"], {}, r"hydra.sweeper.pruner: cannot build 'optuna.pruners.NoSuchPruner'"),
    (["hydra/sweeper/pruner=median", "+hydra.sweeper.pruner.n_startup=3"], {}, r"hydra.sweeper.pruner: cannot build 'optuna.pruners.MedianPruner'"),
    (["+hydra.sweeper.params.optimizer.lrr='interval(0.1, 1.0)'"], {}, r"hydra.sweeper.params.optimizer.lrr: 'optimizer.lrr' is not a key .* Did you mean optimizer.lr\b"),
    ([], {"n_trials": 0}, r"hydra.sweeper.n_trials must be an integer >= 1"),
    ([], {"seed": 3}, r"hydra.sweeper: unknown key\(s\) seed"),
    (["hydra/sweeper/sampler=grid"], {}, r"hydra.sweeper.params.loss.terms.dice.weight: the grid sampler needs"),
])
def test_bad_settings_name_the_key(overrides, changes, message):
    cfg = _compose(*overrides)
    with pytest.raises(ValueError, match=message):
        _settings.read_settings(_settings_of(cfg, **changes), cfg, [])


def test_cmaes_needs_its_package():
    import importlib.util

    cfg = _compose("hydra/sweeper/sampler=cmaes", "hydra.sweeper.sampler.seed=3")
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(ValueError, match="needs the cmaes package: pip install cmaes"):
            _settings.read_settings(_settings_of(cfg), cfg, [])
    else:
        assert _settings.read_settings(_settings_of(cfg), cfg, []).make_sampler() is not None


def test_direction_follows_monitor_mode():
    assert _settings.check_direction(None, "min") == "minimize"
    assert _settings.check_direction("maximize", None) == "maximize"
    with pytest.raises(ValueError, match="set maximize or minimize"):
        _settings.check_direction(None, None)


def test_storage_that_cannot_be_opened_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"hydra.sweeper.storage: cannot open the Optuna storage 'nosuchdb://x/y'"):
        optuna_trial.open_storage("nosuchdb://x/y")
    file_in_the_way = tmp_path / "file"
    file_in_the_way.write_text("")
    with pytest.raises(ValueError, match=r"hydra.sweeper.storage: cannot open .*journal:"):
        optuna_trial.open_storage(f"journal:{file_in_the_way}/study.log")
    assert optuna_trial.describe_storage("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"


# ------------------------------------------------------------------ counting and seeding -----

def _frozen(state, **user_attrs):
    return optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                     user_attrs=user_attrs)


def test_what_counts_as_finished():
    assert _impl.is_finished(_frozen(TrialState.COMPLETE)) and _impl.is_finished(_frozen(TrialState.PRUNED))
    assert _impl.is_finished(_frozen(TrialState.FAIL, error="ValueError: boom"))  # the job failed: a result
    assert not _impl.is_finished(_frozen(TrialState.FAIL))  # interrupted or surplus: redone / not run
    assert not _impl.is_finished(_frozen(TrialState.WAITING)) and _impl.is_active(_frozen(TrialState.WAITING))


def test_seed_per_trial_gives_workers_distinct_and_reproducible_draws(tmp_path):
    from hydra_plugins.segtrain_optuna_sweeper._seeding import SeedPerTrial

    def draws(storage):
        make = lambda seed: optuna.samplers.RandomSampler(seed=seed)  # noqa: E731
        study = optuna.create_study(storage=storage, sampler=SeedPerTrial(make, 7), study_name="s", load_if_exists=True)
        return [study.ask({"x": FloatDistribution(0, 1)}).params["x"] for _ in range(3)]

    first = draws(f"sqlite:///{tmp_path / 'a.db'}")
    assert len(set(first)) == 3  # same configured seed, distinct trials
    assert draws(f"sqlite:///{tmp_path / 'b.db'}") == first  # reproducible
    # Two workers on one study: trial numbers differ, so do their draws.
    shared = f"sqlite:///{tmp_path / 'c.db'}"
    one, other = draws(shared), draws(shared)
    assert set(one).isdisjoint(other)


# ------------------------------------------------------------- the job's side of a trial -----

class _Strategy:
    def __init__(self, decision_of_rank0=None):
        self.decision_of_rank0 = decision_of_rank0

    def broadcast(self, obj, src=0):
        return obj if self.decision_of_rank0 is None else self.decision_of_rank0


class _Trainer:
    def __init__(self, value, rank0=True, decision_of_rank0=None):
        self.sanity_checking = False
        self.is_global_zero = rank0
        self.callback_metrics = {"val/dice": value}
        self.strategy = _Strategy(decision_of_rank0)
        self.should_stop = False


def test_pruning_callback_reports_and_stops(tmp_path):
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(storage=storage, study_name="p", direction="maximize")
    trial = study.ask()
    link = optuna_trial.TrialLink(storage, "p", trial.number, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5})
    assert optuna_trial.TrialLink.from_env(link.env()) == link
    cb = optuna_trial.OptunaPruning("val/dice", link)
    cb.on_validation_end(_Trainer(0.8), None)  # above the bound: goes on
    trainer = _Trainer(0.3)
    cb.on_validation_end(trainer, None)
    assert trainer.should_stop and cb.pruned_at == 1
    frozen = study.trials[0]
    assert frozen.intermediate_values == {0: 0.8, 1: 0.3} and frozen.user_attrs["pruned_at_step"] == 1
    # Another rank never opens the storage; it stops because rank 0's decision is broadcast.
    other = optuna_trial.OptunaPruning("val/dice", optuna_trial.TrialLink("nosuchdb://x", "p", 0, {}))
    follower = _Trainer(0.9, rank0=False, decision_of_rank0=True)
    other.on_validation_end(follower, None)
    assert follower.should_stop


def test_no_link_no_callbacks(monkeypatch):
    monkeypatch.delenv(optuna_trial.ENV_TRIAL, raising=False)
    assert optuna_trial.trial_callbacks({"monitor": "val/dice"}) == []
    monkeypatch.setenv(optuna_trial.ENV_TRIAL, "not json")
    with pytest.raises(ValueError, match="SEGTRAIN_OPTUNA_TRIAL must be the JSON"):
        optuna_trial.TrialLink.from_env()


def test_failed_trial_job_raises_after_recording(tmp_path):
    from segtrain import sweep

    def boom(cfg):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(optuna_trial.SweepJobFailed, match="RuntimeError: CUDA out of memory"):
        sweep.run_sweep_job(boom, None, mode="max", output_dir=tmp_path, multirun=True, optuna_trial=True)
    assert (tmp_path / sweep.FAILURE_FILE).exists()
    with pytest.raises(optuna_trial.SweepJobFailed, match="NonFiniteMetric"):
        sweep.run_sweep_job(lambda cfg: math.nan, None, mode="max", output_dir=tmp_path, multirun=True,
                            optuna_trial=True)
    assert os.environ.get(optuna_trial.ENV_TRIAL) is None


# ------------------------------------------------------- the loop, with a fake launcher -----

class _FakeLauncher:
    """Runs no training: each job returns its trial's x (or what ``outcome`` says)."""

    def __init__(self, outcome=None):
        self.outcome = outcome or (lambda link, x: x)
        self.launched: list[int] = []

    def launch(self, batch, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        returns = []
        for overrides in batch:
            env = next(o for o in overrides if optuna_trial.ENV_TRIAL in o).split("=", 1)[1]
            link = optuna_trial.TrialLink.from_env({optuna_trial.ENV_TRIAL: OverridesParser.create().parse_override(
                f"k={env}").value()})
            x = float(next(o for o in overrides if o.startswith("x=")).split("=", 1)[1])
            self.launched.append(link.number)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            try:
                ret.return_value = self.outcome(link, x)
            except Exception as err:  # noqa: BLE001 -- as Hydra's run_job does
                ret.return_value, ret.status = err, JobStatus.FAILED
            returns.append(ret)
        return returns


def _run(tmp_path, n_trials, launcher, storage=None):
    from types import SimpleNamespace

    space = _search_space.parse_search_space({"x": "interval(0.0, 1.0)"})
    s = _settings.Settings("maximize", "study", storage or f"sqlite:///{tmp_path / 's.db'}", n_trials, 1, space,
                           lambda: optuna.samplers.RandomSampler(seed=0), None, 0.2, 1.0)
    sweeper = SimpleNamespace(launcher=launcher, config=SimpleNamespace(hydra=SimpleNamespace(
        sweep=SimpleNamespace(dir=str(tmp_path / "sweep")))))
    return _impl.SweepRun(sweeper, s), s


@pytest.mark.timeout(60)
def test_stale_trial_is_redone_and_the_study_ends_at_n_trials(tmp_path):
    run, s = _run(tmp_path, 4, _FakeLauncher())
    for _ in range(3):  # three finished trials of a killed sweep ...
        t = run.study.ask({"x": FloatDistribution(0, 1)})
        run.study.tell(t, 0.5)
    dead = run.study.ask({"x": FloatDistribution(0, 1)})  # ... and the one it was running
    run.storage.set_trial_system_attr(dead._trial_id, _impl.HEARTBEAT_ATTR, 0.0)
    run.run()  # the redo, queued, is taken although 3 finished + 1 queued already make 4
    trials = run.study.get_trials()
    assert [t.state.name for t in trials].count("COMPLETE") == 4 and trials[dead.number].state == TrialState.FAIL
    assert len(trials) == 5
    redo = next(t for t in trials if t.user_attrs.get("retry_of") == dead.number)
    assert redo.params == trials[dead.number].params and redo.value == pytest.approx(redo.params["x"])
    assert yaml_load(tmp_path / "sweep" / "optimization_results.yaml")["n_finished"] == 4


def yaml_load(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


def test_a_trial_over_budget_is_surplus_and_not_run(tmp_path):
    launcher = _FakeLauncher()
    run, s = _run(tmp_path, 2, launcher)
    run.study.tell(run.study.ask({"x": FloatDistribution(0, 1)}), 0.1)
    other = run.study.ask({"x": FloatDistribution(0, 1)})  # another worker runs the last slot
    run.storage.set_trial_system_attr(other._trial_id, _impl.HEARTBEAT_ATTR, 1e12)
    assert run._ask(1) == []  # a race: this worker asked although the slots were taken
    surplus = run.study.get_trials()[-1]
    assert surplus.state == TrialState.FAIL and "surplus" in surplus.user_attrs and launcher.launched == []
    assert not _impl.is_finished(surplus)
    run.heartbeat.stop()


def test_job_outcomes_become_trial_states(tmp_path):
    def outcome(link, x):
        if link.number == 0:
            raise optuna_trial.SweepJobFailed("RuntimeError: CUDA out of memory")
        if link.number == 1:
            link.trial().set_user_attr(optuna_trial.ATTR_PRUNED, 0)
            return x
        if link.number == 2:
            return math.nan
        if link.number == 3:
            raise KeyError("boom")
        return x

    run, s = _run(tmp_path, 5, _FakeLauncher(outcome))
    run.run()
    t = run.study.get_trials()
    assert [x.state.name for x in t] == ["FAIL", "PRUNED", "FAIL", "FAIL", "COMPLETE"]
    assert t[0].user_attrs["error"] == "RuntimeError: CUDA out of memory"
    assert t[2].user_attrs["error"] == "the job returned nan" and t[3].user_attrs["error"] == "KeyError: 'boom'"
