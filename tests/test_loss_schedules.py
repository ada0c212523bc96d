"""Loss weight schedules in the harness: from the config, logged, resumed, reachable by a sweep."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from reliability_helpers import compose_run

from segtrain.losses import build_loss, check_loss_config
from segtrain.run import train
from seglosses.schedules import Cosine, Linear, Rebalance

# bce falls along a per-step cosine, dice rises linearly by epoch: both kinds of schedule.
SCHEDULED = (
    "loss=bce_dice",
    "loss.terms.dice.weight={schedule:linear,start:0.0,end:1.0,start_epoch:0,end_epoch:2}",
    "loss.terms.bce.weight={schedule:cosine,start:1.0,end:0.2,start_epoch:0,end_epoch:3,per_step:true}",
    "data.num_samples=8",
    "callbacks.prediction_grid=null",
    "evaluation.enabled=false",
)


def test_a_schedule_from_the_command_line_builds_the_loss():
    cfg = compose_run(SCHEDULED)
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert loss.schedules == {"dice": Linear(0.0, 1.0, 0, 2), "bce": Cosine(1.0, 0.2, 0, 3, per_step=True)}
    assert loss.per_step


def test_dice_boundary_reproduces_the_papers_schedule():
    cfg = compose_run(["loss=dice_boundary"])
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert set(loss.schedules) == {"generalized_dice", "boundary"}
    assert loss.schedules["generalized_dice"] == Rebalance("region", rate=0.01, floor=0.01)
    assert loss.schedules["boundary"] == Rebalance("boundary", rate=0.01, floor=0.01)
    # The boundary rate follows the region's: sweeping one key moves both.
    cfg = compose_run(["loss=dice_boundary", "loss.terms.generalized_dice.weight.rate=0.05"])
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert loss.set_epoch(4) == pytest.approx({"generalized_dice": 0.8, "boundary": 0.2})
    assert loss.derived_targets(0) == () and loss.derived_targets(1) == ("distance",)


def test_a_bad_schedule_fails_at_startup_naming_the_term():
    cfg = compose_run(["loss=bce_dice", "loss.terms.dice.weight={schedule:linear,stop:3}"])
    with pytest.raises(ValueError, match=r"'dice'.*no option\(s\) \['stop'\]"):
        check_loss_config(cfg.loss, cfg.task, cfg.num_classes)


def test_a_sweep_can_reach_a_schedule_parameter():
    """hparams_search params are config keys: a schedule's options are keys like any other."""
    cfg = compose_run([*SCHEDULED, "loss.terms.dice.weight.end=0.4"])
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert loss.schedules["dice"].end == 0.4


def _weights_by_epoch(run: Path) -> dict[int, dict[str, float]]:
    rows = {}
    for path in sorted(run.glob("metrics*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                values = {k: float(v) for k, v in row.items() if k.startswith("train/weight_") and v}
                if values:
                    rows[int(row["epoch"])] = values
    return rows


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_weights(tmp_path):
    whole, first, resumed = tmp_path / "whole", tmp_path / "first", tmp_path / "resumed"
    train(compose_run([*SCHEDULED, "trainer.max_epochs=3"], whole))
    train(compose_run([*SCHEDULED, "trainer.max_epochs=1"], first))
    train(compose_run([*SCHEDULED, "trainer.max_epochs=3", f"ckpt_path={first}",
                       "resume_allow_changes=[trainer.max_epochs]"], resumed))
    expected = _weights_by_epoch(whole)
    assert sorted(expected) == [0, 1, 2]
    # dice: the linear ramp per epoch; bce: the epoch mean of a per-step cosine (2 steps an epoch)
    assert [expected[e]["train/weight_dice"] for e in range(3)] == pytest.approx([0.0, 0.5, 1.0])
    bce = Cosine(1.0, 0.2, 0, 3, per_step=True)
    assert [expected[e]["train/weight_bce"] for e in range(3)] == pytest.approx(
        [(bce(e) + bce(e + 0.5)) / 2 for e in range(3)])
    got = {**_weights_by_epoch(first), **_weights_by_epoch(resumed)}
    assert got == expected


def test_distance_maps_are_computed_only_in_epochs_whose_boundary_weight_is_above_0(tmp_path, monkeypatch):
    """loss=dice_boundary: the boundary weight is 0 in epoch 0, so is the pipeline's distance-map work."""
    import datamodules.derived as derived

    calls: list[int] = []
    epoch = {"now": -1}
    original = derived.distance_map

    def counted(*args, **kwargs):
        calls.append(epoch["now"])
        return original(*args, **kwargs)

    monkeypatch.setattr(derived, "distance_map", counted)
    from lightning.pytorch.callbacks import Callback

    class Epoch(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            epoch["now"] = trainer.current_epoch

    cfg = compose_run(["loss=dice_boundary", "trainer.max_epochs=2", "data.num_samples=8",
                       "callbacks.prediction_grid=null", "evaluation.enabled=false"], tmp_path / "run")
    from segtrain import run as run_module

    real_build = run_module._instantiate_dict
    monkeypatch.setattr(run_module, "_instantiate_dict",
                        lambda node, what: real_build(node, what) + ([Epoch()] if what == "callbacks" else []))
    train(cfg)
    assert calls and set(calls) == {1}, calls  # none in epoch 0 (nor its validation), some in epoch 1
    weights = _weights_by_epoch(tmp_path / "run")
    assert weights[0]["train/weight_boundary"] == 0.0 and weights[1]["train/weight_boundary"] == pytest.approx(0.01)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_generalized_dice")]
    assert [bool(r.get("train/loss_boundary")) for r in rows] == [False, True]  # not computed, not logged, at 0
