"""logger=mlflow: a tiny run, then MLflow's own client reads back what it recorded in the SQLite store."""

from __future__ import annotations

import sys

import pytest
from reliability_helpers import compose_run

from segtrain.run import train


def test_tiny_run_is_tracked_in_sqlite(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "logs" / "runs" / "tiny"
    cfg = compose_run(["logger=mlflow", f"paths.log_dir={tmp_path / 'logs'}", "trainer.log_every_n_steps=1"], run_dir)
    train(cfg)
    db = tmp_path / "logs" / "mlflow.db"
    assert db.is_file()  # the default store: SQLite under paths.log_dir, nothing to start
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("segtrain").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.tags["run_dir"] == str(run_dir)

    params = run.data.params  # the flattened run config
    assert params["model/encoder_name"] == cfg.model.encoder_name
    assert params["loss/terms/dice/weight"] == str(cfg.loss.terms.dice.weight)
    assert params["optimizer/lr"] == str(cfg.optimizer.lr)

    metrics = set(run.data.metrics)
    for term in ("bce", "dice"):
        assert {f"train/loss_{term}", f"val/loss_{term}", f"train/loss_{term}_step"} <= metrics, metrics
    assert {"val/dice", "train/loss", "train/loss_step"} <= metrics
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_dice_step")]
    assert steps == [1, 2, 3, 4]  # 16 samples, 80% train, batches of 4: every step logged
    dice = client.get_metric_history(run.info.run_id, "val/dice")
    assert len(dice) == 1 and 0.0 <= dice[0].value <= 1.0

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"predictions", "last"} <= artifacts and any(a.startswith("best_epoch") for a in artifacts), artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "predictions")] == ["predictions/epoch_000.png"]
    assert "last/last.ckpt" in {a.path for a in client.list_artifacts(run.info.run_id, "last")}


def test_sweep_trials_are_tagged():
    """Inside a multirun: the Optuna study name and the trial (job) number."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from reliability_helpers import ROOT
    from segtrain.tracking import sweep_tags

    assert sweep_tags() == {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["hparams_search=optuna", "hydra.job.num=7"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        assert sweep_tags() == {"study_name": "loss_search", "trial_number": "7"}
    finally:
        HydraConfig.instance().cfg = None


def test_without_mlflow_installed_start_up_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets when it is not installed
    with pytest.raises(ValueError, match=r"logger=mlflow needs MLflow.*pip install 'mlflow>=3'"):
        train(compose_run(["logger=mlflow", f"paths.log_dir={tmp_path}"], tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_optuna_trials_are_tagged_with_the_studys_trial_number(monkeypatch):
    """In an Optuna sweep the tags come from the job's trial link, not the (restarting) job number."""
    from segtrain.optuna_trial import ENV_TRIAL, TrialLink
    from segtrain.tracking import sweep_tags

    link = TrialLink("sqlite:///unused.db", "loss_search", 12, None)
    monkeypatch.setenv(ENV_TRIAL, link.env()[ENV_TRIAL])
    assert sweep_tags() == {"study_name": "loss_search", "trial_number": "12"}
