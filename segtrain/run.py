"""``train(cfg) -> float``: build everything from the composed config, fit, return the metric.

Order matters for the user: everything that can be checked without data (task, class count,
loss terms against the task, network, loss, optimizer) is checked and built *before* the
datamodule is instantiated, so a config mistake fails in a second with a clear message.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .atomic import AtomicCheckpointIO
from .data_plan import is_folder_data, leaves_to_data, plan_data, save_fingerprint, save_splits
from .errors import TrainingStarted
from .final_evaluation import evaluate_after_fit, evaluate_split, validation_tta
from .final_evaluation import options as final_options
from .lightning_compat import destroy_process_group_at_exit, multirun_ddp_scope
from .losses import build_loss, check_loss_config
from .module import SegmentationModule
from .guards import require_training_batches
from .init_from import apply_init, check_init_keys, init_source_from_config
from .optuna_trial import trial_callbacks
from .resume import LATEST, check_resume_config, interrupted_message, load_checkpoint_config, resolve_ckpt_path
from .run_folder import RunFolderLock, keep_previous_metrics
from .run_log import RUN_LOG, console_log, quiet_known_noise
from .task import validate_task
from .temp_files import clean_killed_writes
from .utils import build
from .validation import check_data_keys, check_types

log = logging.getLogger(__name__)


def validate_config(cfg: DictConfig) -> None:
    """Start-up checks that need no data: key types, task/num_classes, loss terms vs task, monitor mode.

    Raises ``ValueError`` naming the key and the fix.
    """
    check_types(cfg)  # first: a string where a number belongs must not reach the checks below
    if not leaves_to_data(cfg):  # task=auto / num_classes=auto: checked once plan_data has read the masks
        validate_task(cfg.task, cfg.num_classes)
        check_loss_config(cfg.loss, cfg.task, cfg.num_classes)
    if cfg.monitor_mode not in ("min", "max"):
        raise ValueError(f"monitor_mode must be 'min' or 'max', got {cfg.monitor_mode!r}")
    check_data_keys(cfg)
    check_init_keys(cfg)  # init_from starts a new run, ckpt_path resumes one: not both
    final_options(cfg)  # evaluation.* checked before anything trains


def _instantiate_dict(node: Any, what: str) -> list[Any]:
    """Instantiate every entry of a ``name -> {_target_: ...}`` group (callbacks, loggers); skip nulls."""
    if not node:
        return []
    objects = []
    for name, conf in node.items():
        if conf is None:
            continue  # switched off from the command line: callbacks.<name>=null
        if not isinstance(conf, (DictConfig, Mapping)) or "_target_" not in conf:
            raise ValueError(f"{what}.{name} needs a _target_ (a class to build), got {conf!r}")
        objects.append(build(conf))
    return objects


def build_module(cfg: DictConfig) -> SegmentationModule:
    """Network + loss + optimizer/scheduler factories -> :class:`SegmentationModule` (no data needed)."""
    net = build(cfg.model)
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    optimizer = build(cfg.optimizer)
    scheduler, scheduler_config = None, {}
    sched_cfg = cfg.get("scheduler")
    if sched_cfg and sched_cfg.get("scheduler"):
        scheduler = build(sched_cfg.scheduler)
        scheduler_config = {k: v for k, v in OmegaConf.to_container(sched_cfg, resolve=True).items() if k != "scheduler"}
    module = SegmentationModule(
        net=net,
        loss=loss,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_config=scheduler_config,
        task=cfg.task,
        num_classes=cfg.num_classes,
        ignore_index=cfg.get("ignore_index"),
        validation_tta=validation_tta(cfg),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    # The network's training input: the resize, else the crop (data=folder at native resolution).
    size = cfg.data.get("image_size") or cfg.data.get("crop_size")
    if isinstance(size, int):
        # The model summary measures FLOPs and tensor sizes on this input (without one it prints "Total FLOPs: 0").
        channels = cfg.model.get("in_channels") or 3
        module.example_input_array = torch.zeros(1, int(channels), size, size)
    return module


@rank_zero_only
def _save_config(cfg: DictConfig, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(output_dir, "config.yaml"), resolve=True)


def best_metric(trainer: L.Trainer, monitor: str) -> float:
    """The best value of ``monitor`` seen by the checkpoint callback, else its last logged value.

    Returns NaN when the metric was never logged (e.g. no validation ran).
    """
    ckpt = trainer.checkpoint_callback
    score = getattr(ckpt, "best_model_score", None) if ckpt is not None else None
    if score is None:
        score = trainer.callback_metrics.get(monitor)
    return float(score) if score is not None else math.nan


def train(cfg: DictConfig) -> float:
    """Train one run described by ``cfg`` (the composed ``conf/train.yaml``).

    Steps: take the run folder (``paths.output_dir``: refused while another live run holds it or
    when it holds a finished run, unless resuming into it) and tee the console into its
    ``train.log``; seed everything; validate the config; build module (network, loss, optimizer,
    scheduler; with ``init_from``, the network starts from another model's weights); build datamodule, callbacks, loggers, trainer; save the resolved config to
    ``<paths.output_dir>/config.yaml``; ``trainer.fit(ckpt_path=cfg.ckpt_path)``; optionally test.

    Returns:
        the best value of ``cfg.monitor`` (e.g. ``val/dice``) as a float, for sweeps.
    """
    quiet_known_noise()
    destroy_process_group_at_exit()  # Lightning does it for NCCL only; a gloo group left to exit aborts
    with _run_folder(cfg):
        return _train(cfg)


@contextmanager
def _run_folder(cfg: DictConfig) -> Iterator[None]:
    """Rank 0 holds the run folder and logs the console to ``<run>/train.log``; other DDP ranks share both."""
    output_dir = os.path.abspath(str(cfg.paths.output_dir))
    if rank_zero_only.rank != 0:
        yield
        return
    # A missing or unreadable checkpoint is reported here, before the folder is judged by it.
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), runs_root=cfg.paths.get("log_dir"), current_run_dir=output_dir)
    resuming_into = ckpt is not None and os.path.abspath(ckpt).startswith(output_dir + os.sep)
    with RunFolderLock(output_dir, resuming_into=resuming_into), console_log(os.path.join(output_dir, RUN_LOG)):
        if resuming_into and (kept := keep_previous_metrics(output_dir)):
            log.info("Resuming into its own folder: the metrics before the resume are kept in %s", kept)
        clean_killed_writes(output_dir, ckpt)  # <name>.tmp-<pid> of a save killed mid-way, here or resumed from
        yield


def _fit(trainer: L.Trainer, module: SegmentationModule, datamodule: Any, ckpt_path: str | None, output_dir: str) -> None:
    """``trainer.fit``; on Ctrl+C print how to resume; refuse a run that had no training batch."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns KeyboardInterrupt into a graceful stop + sys.exit(1)
            log.warning(interrupted_message(output_dir))
        raise
    require_training_batches(trainer, datamodule)


def _train(cfg: DictConfig) -> float:
    L.seed_everything(cfg.seed, workers=True)
    validate_config(cfg)
    # init_from: an earlier model's network weights for a NEW run, read as data before any data is scanned.
    init = init_source_from_config(cfg)
    # The data, fingerprinted and checked against the config; auto keys resolved (segtrain/data_plan.py).
    fingerprint = plan_data(cfg)
    validate_task(cfg.task, cfg.num_classes)
    check_loss_config(cfg.loss, cfg.task, cfg.num_classes)
    output_dir = str(cfg.paths.output_dir)
    # ckpt_path: a file, a run folder or "latest" (segtrain/resume.py); checked before any data is read.
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), runs_root=cfg.paths.get("log_dir"), current_run_dir=output_dir)
    if ckpt_path is not None:
        # Read as data only; trust_checkpoint=true skips the _target_ allow-list (segtrain/trust.py).
        ckpt_config = load_checkpoint_config(ckpt_path, trust=bool(cfg.get("trust_checkpoint", False)))
        allowed = list(cfg.get("resume_allow_changes") or ())
        latest = str(cfg.get("ckpt_path")).strip().lower() in LATEST  # many differences: another experiment's run
        check_resume_config(ckpt_config, cfg, ckpt_path, allow_changes=allowed, latest=latest)
        log.info("Resuming from %s", ckpt_path)
    module = build_module(cfg)
    if init is not None:  # matched by name and shape; the log lists what was loaded (segtrain/init_from.py)
        apply_init(module.net, init[1], cfg.get("init_from_exclude"), source=init[0])
    # Distance maps / skeletons are computed by the data pipeline only for the loss terms that need them.
    derived = module.loss.derived_targets()
    extra = {"derived_targets": list(derived)} if derived else {}
    if derived and is_folder_data(cfg.data) and cfg.paths.get("cache_dir"):
        # whole-image distance maps and skeletons computed once per mask file, kept between epochs and runs
        extra["derived_cache_dir"] = os.path.join(os.path.abspath(str(cfg.paths.cache_dir)), "derived_maps")
    datamodule = build(cfg.data, **extra)
    if fingerprint is not None:
        # Set as an attribute, not a constructor argument: Hydra would turn the large dict into a DictConfig.
        datamodule.fingerprint = fingerprint
    # + a trial's pruning callback inside an Optuna sweep with a pruner (segtrain/optuna_trial.py).
    # TrainingStarted: a failure records whether any step ran (failure.yaml stage: startup | training).
    callbacks = _instantiate_dict(cfg.get("callbacks"), "callbacks") + trial_callbacks(cfg) + [TrainingStarted()]
    loggers = _instantiate_dict(cfg.get("logger"), "logger")
    # Checkpoints via temp file + fsync + os.replace: a crash never leaves half a last.ckpt (segtrain/atomic.py).
    plugins = [*(build(p) for p in cfg.trainer.get("plugins") or []), AtomicCheckpointIO()]
    trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    _save_config(cfg, output_dir)
    save_fingerprint(fingerprint, output_dir)
    save_splits(cfg, output_dir)
    log.info("Run folder: %s", os.path.abspath(output_dir))
    # Inside a multirun, DDP children re-run this job (not the sweep); cleaned up after (lightning_compat.py).
    with multirun_ddp_scope(trainer):
        _fit(trainer, module, datamodule, ckpt_path, output_dir)
        value = best_metric(trainer, cfg.monitor)
        # The best checkpoint on whole validation images, per image and class (segtrain/final_evaluation.py).
        summary = evaluate_after_fit(trainer, module, datamodule, cfg, output_dir)
        if cfg.get("test_after_fit"):
            ckpt = "best" if getattr(trainer.checkpoint_callback, "best_model_path", "") else None
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
            if final_options(cfg)["enabled"]:
                evaluate_split(trainer, module, datamodule, cfg, output_dir, "test",
                               plan=(summary or {}).get("postprocessing"))
    log.info("Best %s: %.4f (run folder %s)", cfg.monitor, value, os.path.abspath(output_dir))
    return value
