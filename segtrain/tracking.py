"""MLflow tracking (``logger=mlflow``, conf/logger/mlflow.yaml): an embedded SQLite store by default.

What a run records (``mlflow ui --backend-store-uri sqlite:///logs/mlflow.db`` shows it):

* params: the whole resolved run config, flattened (``model/encoder_name``, ``loss/terms/dice/weight``
  ..., values cut at 250 characters by Lightning);
* metrics: every key the module logs per epoch (``train/loss``, ``train/loss_<term>``,
  ``val/loss_<term>``, ``val/dice`` ...) and, every ``trainer.log_every_n_steps`` steps, the
  combined loss and each term as ``train/loss_step``, ``train/loss_<term>_step``;
* tags: ``run_dir`` (the run folder) and, inside a multirun, ``study_name`` (the Optuna sweeper's
  ``hydra.sweeper.study_name``) and ``trial_number`` (the Optuna trial's number; in a plain
  multirun the job number); the run is named ``<study_name>-trial<n>`` there, else
  after its run folder;
* artifacts: ``predictions/`` (the prediction pictures) and the best and last checkpoints
  (Lightning's ``log_model=True``: ``<checkpoint name>/<file>`` with its score in ``metadata.yaml``).

The store: ``tracking_uri=null`` means ``sqlite:///<paths.log_dir>/mlflow.db`` (MLflow 3 no
longer accepts its old ``./mlruns`` file store; SQLite needs no server), artifacts in
``<paths.log_dir>/mlartifacts``; ``MLFLOW_TRACKING_URI`` or ``logger.mlflow.tracking_uri=...``
(a server, another database) replace it. MLflow is an optional extra (``pip install -e '.[mlflow]'``):
this module imports it only when a logger is built, and says how to install it when it is missing.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

INSTALL_HINT = "pip install 'mlflow>=3'   (or, in a checkout: pip install -e '.[mlflow]')"


def require_mlflow() -> None:
    """Stop at start-up, with the install command, when ``logger=mlflow`` is chosen but MLflow is missing.

    Raises:
        ValueError: MLflow cannot be imported.
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ValueError(f"logger=mlflow needs MLflow, which is not installed. Install it: {INSTALL_HINT}") from None


def default_tracking_uri(log_dir: str | os.PathLike) -> str:
    """``sqlite:///<absolute log_dir>/mlflow.db`` (the folder is created)."""
    folder = os.path.abspath(os.fspath(log_dir))
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, 'mlflow.db')}"


def sweep_tags() -> dict[str, str]:
    """``study_name`` and ``trial_number`` inside a Hydra multirun (empty otherwise).

    In an Optuna sweep they come from the job's link to its trial (``SEGTRAIN_OPTUNA_TRIAL``), so
    they are the study's own trial number also when a resumed study's job numbers start again at 0.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .optuna_trial import TrialLink

    link = TrialLink.from_env()
    if link is not None:
        return {"trial_number": str(link.number), "study_name": link.study}
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    tags = {"trial_number": str(hc.job.num)}
    study = (hc.get("sweeper") or {}).get("study_name")
    if study:
        tags["study_name"] = str(study)
    return tags


class MLflowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` with this project's defaults and the prediction pictures.

    Args:
        log_dir: where the default SQLite store and the artifacts go (``paths.log_dir``).
        run_dir: this run's folder (``paths.output_dir``): the MLflow run name and the ``run_dir`` tag.
        predictions_dir: folder of prediction pictures uploaded as ``predictions/`` when the run ends.
        tracking_uri: ``None``: ``$MLFLOW_TRACKING_URI`` if set, else :func:`default_tracking_uri`.
        artifact_location: ``None`` with the default store: ``<log_dir>/mlartifacts``.
        tags: extra run tags; :func:`sweep_tags` are added inside a multirun.
        **kwargs: ``MLFlowLogger``'s own (``experiment_name``, ``log_model``, ``prefix`` ...).
    """

    def __init__(
        self,
        log_dir: str = "logs",
        run_dir: str | None = None,
        predictions_dir: str | None = None,
        experiment_name: str = "segtrain",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: Any = True,
        **kwargs: Any,
    ) -> None:
        require_mlflow()
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            tracking_uri = default_tracking_uri(log_dir)
            artifact_location = artifact_location or os.path.join(os.path.abspath(log_dir), "mlartifacts")
        sweep = sweep_tags()
        tags = {**(dict(tags) if tags else {}), **sweep}
        if sweep:  # a job folder is named by its number alone: say which study it belongs to
            run_name = run_name or f"{sweep.get('study_name', 'multirun')}-trial{sweep['trial_number']}"
        if run_dir:
            tags.setdefault("run_dir", os.path.abspath(run_dir))
            run_name = run_name or os.path.basename(os.path.normpath(run_dir))
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=tracking_uri,
            tags=tags,
            log_model=log_model,
            artifact_location=artifact_location,
            **kwargs,
        )
        self.predictions_dir = predictions_dir

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        # Also after a failed run: the pictures so far show what went wrong.
        if self._initialized and self.predictions_dir and os.path.isdir(self.predictions_dir):
            if any(f.endswith(".png") for f in os.listdir(self.predictions_dir)):
                self.experiment.log_artifacts(self.run_id, self.predictions_dir, "predictions")
        super().finalize(status)


class MLflowRunDetails(Callback):
    """What the logger cannot see by itself: the whole run config, and the loss terms per step.

    Lightning passes a logger only the module's hyper-parameters and the values logged per
    epoch; this callback gives every :class:`MLflowLogger` of the trainer the full resolved
    config (``SegmentationModule.config``) as params when fitting starts, and the combined loss
    and each term's value every ``trainer.log_every_n_steps`` training steps.
    """

    def __init__(self) -> None:
        require_mlflow()

    @staticmethod
    def _loggers(trainer) -> list[MLFlowLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]

    def on_fit_start(self, trainer, pl_module) -> None:
        config = getattr(pl_module, "config", None)
        if config:
            for logger in self._loggers(trainer):
                logger.log_hyperparams(config)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % max(1, trainer.log_every_n_steps) or trainer.sanity_checking:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        values = {"train/loss_step": float(loss)} if loss is not None else {}
        for name, value in getattr(pl_module.loss, "last_values", {}).items():
            values[f"train/loss_{name}_step"] = float(value)
        for logger in self._loggers(trainer):
            logger.log_metrics(values, step=step)
