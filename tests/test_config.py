"""Config composition and start-up checks (no training; milliseconds to a second each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import seglosses
from segtrain import task as T
from segtrain.callbacks import PredictionGrid
from segtrain.losses import build_loss
from segtrain.run import build_module, train, validate_config

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Every loss config with a task it serves, and the term classes it must build.
LOSSES = {
    "bce": ("binary", {"bce": seglosses.BCELoss}),
    "dice": ("binary", {"dice": seglosses.DiceLoss}),
    "focal": ("binary", {"focal": seglosses.FocalLoss}),
    "jaccard": ("binary", {"jaccard": seglosses.JaccardLoss}),
    "tversky": ("binary", {"tversky": seglosses.TverskyLoss}),
    "bce_dice": ("binary", {"bce": seglosses.BCELoss, "dice": seglosses.DiceLoss}),
    "dice_focal": ("binary", {"dice": seglosses.DiceLoss, "focal": seglosses.FocalLoss}),
    "bce_jaccard": ("multilabel", {"bce": seglosses.BCELoss, "jaccard": seglosses.JaccardLoss}),
    "focal_tversky": ("multiclass", {"tversky": seglosses.TverskyLoss}),
    "ce": ("multiclass", {"ce": seglosses.CrossEntropyLoss}),
    "ce_dice": ("multiclass", {"ce": seglosses.CrossEntropyLoss, "dice": seglosses.DiceLoss}),
    "ce_jaccard": ("multiclass", {"ce": seglosses.CrossEntropyLoss, "jaccard": seglosses.JaccardLoss}),
    # issue 14 (their fast_dev_runs: tests/losses/test_catalogue_train.py)
    "ce_lovasz": ("multiclass", {"ce": seglosses.CrossEntropyLoss, "lovasz": seglosses.LovaszLoss}),
    "bce_lovasz": ("binary", {"bce": seglosses.BCELoss, "lovasz": seglosses.LovaszLoss}),
    "lovasz": ("multilabel", {"lovasz": seglosses.LovaszLoss}),
    "dice_topk": ("multiclass", {"dice": seglosses.DiceLoss, "topk_ce": seglosses.TopKCrossEntropyLoss}),
    "dice_ohem": ("multiclass", {"dice": seglosses.DiceLoss, "ohem_ce": seglosses.OhemCrossEntropyLoss}),
    "dice_cldice": ("binary", {"dice": seglosses.DiceLoss, "cldice": seglosses.ClDiceLoss}),
    "generalized_dice": ("multiclass", {"generalized_dice": seglosses.GeneralizedDiceLoss}),
    "bce_mcc": ("multilabel", {"bce": seglosses.BCELoss, "mcc": seglosses.MCCLoss}),
    "dice_ce": ("multiclass", {"dice": seglosses.DiceLoss, "ce": seglosses.CrossEntropyLoss}),  # nnU-Net's name
    # issue 25 (their fast_dev_runs: tests/losses/test_catalogue_train.py)
    "combo": ("binary", {"bce": seglosses.BCELoss, "dice": seglosses.DiceLoss}),
    "dice_boundary": ("binary", {"generalized_dice": seglosses.GeneralizedDiceLoss, "boundary": seglosses.BoundaryLoss}),
    "dice_ce_skeleton_recall": ("multiclass", {"ce": seglosses.CrossEntropyLoss, "dice": seglosses.DiceLoss,
                                               "skeleton_recall": seglosses.SkeletonRecallLoss}),
}
NUM_CLASSES = {"binary": 1, "multiclass": 4, "multilabel": 3}


def test_every_loss_config_is_covered(compose):
    shipped = {p.stem for p in (CONF_DIR / "loss").glob("*.yaml")}
    assert shipped == set(LOSSES), "add new conf/loss/*.yaml files to LOSSES (and to test_train.py)"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_config_builds_a_combined_loss_in_its_task(name, compose):
    task, expected = LOSSES[name]
    cfg = compose([f"loss={name}", f"task={task}", f"num_classes={NUM_CLASSES[task]}"])
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert isinstance(loss, seglosses.CombinedLoss)
    assert {k: type(v) for k, v in loss.terms.items()} == expected
    for term in loss.terms.values():  # the mode follows the task
        if hasattr(term, "mode"):
            assert term.mode == task


def test_loss_weight_override_reaches_the_combined_loss(compose):
    cfg = compose(["loss=bce_dice", "loss.terms.dice.weight=2", "loss.terms.bce.weight=0.5"])
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert loss.weights == {"bce": 0.5, "dice": 2.0}


def test_term_option_override_reaches_the_term(compose):
    cfg = compose(["loss=dice_focal", "loss.terms.focal.gamma=3", "loss.terms.dice.smooth=1.0"])
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert loss.terms["focal"].gamma == 3.0
    assert loss.terms["dice"].smooth == 1.0


def test_focal_tversky_combo_sets_gamma(compose):
    cfg = compose(["loss=focal_tversky"])
    assert build_loss(cfg.loss, cfg.task, cfg.num_classes).terms["tversky"].gamma == pytest.approx(1.33)


def test_loss_terms_compose_on_the_command_line(compose):
    # Hydra's multi-select of the nested group loss/terms, overriding the combo's own list.
    cfg = compose(["loss=bce_dice", "loss/terms=[dice,focal]", "loss.terms.focal.gamma=1.5"])
    assert list(cfg.loss.terms) == ["dice", "focal"]
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert isinstance(loss.terms["dice"], seglosses.DiceLoss) and loss.terms["focal"].gamma == 1.5
    # Three terms, in a multiclass task.
    cfg = compose(
        ["task=multiclass", "num_classes=3", "loss/terms=[ce,dice,focal]", "loss.terms.ce.weight=0.3"]
    )
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert list(loss.terms) == ["ce", "dice", "focal"] and loss.weights["ce"] == 0.3
    assert loss.terms["dice"].mode == "multiclass"


@pytest.mark.parametrize("override, before, after", [([], True, True), (["loss.cpu_compile=true"], False, True),
                                                      (["loss.cpu_compile=false"], True, False)])
def test_loss_cpu_compile_switch(override, before, after, compose):
    # null (the default) leaves seglosses' setting alone; true/false set it
    previous = seglosses.set_cpu_compile(before)
    try:
        cfg = compose(["loss=bce_dice", *override])
        build_loss(cfg.loss, cfg.task, cfg.num_classes)
        assert seglosses.cpu_compile_enabled() is after
        with pytest.raises(ValueError, match="loss.cpu_compile must be true, false or null"):
            build_loss(compose(["loss.cpu_compile=sometimes"]).loss, cfg.task, cfg.num_classes)
    finally:
        seglosses.set_cpu_compile(previous)


def test_ce_class_weights_become_cross_entropy_weight(compose):
    cfg = compose(["task=multiclass", "num_classes=3", "loss=ce", "loss.terms.ce.class_weights=[0.2,1,1]"])
    loss = build_loss(cfg.loss, cfg.task, cfg.num_classes)
    assert loss.weights == {"ce": 1.0}
    assert torch.allclose(torch.as_tensor(loss.terms["ce"].weight, dtype=torch.float32), torch.tensor([0.2, 1.0, 1.0]))


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["task=multiclass", "num_classes=4", "loss=bce_dice"], ["'bce'", "multiclass", "loss=ce_dice"]),
        (["loss=ce"], ["'ce'", "binary", "loss=bce_dice"]),
        (["loss=ce_dice"], ["'ce'", "binary"]),
        (["task=multilabel", "num_classes=3", "loss=ce_dice"], ["'ce'", "multilabel", "loss=bce_dice"]),
        (["task=multiclass", "num_classes=4", "loss/terms=[bce,dice]"], ["'bce'", "multiclass"]),
        (["task=binary", "num_classes=3"], ["num_classes=1", "multiclass"]),
        (["task=multiclass", "num_classes=1"], ["num_classes >= 2"]),
        (["task=multiclass", "num_classes=-2"], ["negative"]),
        (["task=segmentation"], ["binary, multiclass, multilabel"]),
        (["loss.terms.dice.mode=multiclass"], ["mode='multiclass'", "task=binary"]),
        (["loss.terms.dice.weight=-1"], ["loss.terms.dice.weight", ">= 0"]),
        (["loss.terms.dice.weight=0", "loss.terms.bce.weight=0"], ["all loss weights are 0"]),
        (["+loss.terms.focal.gamma=3"], ["'focal'", "no _target_", "loss/terms"]),
        (["monitor_mode=maximum"], ["monitor_mode"]),
    ],
)
def test_bad_config_fails_at_start_up_before_data(overrides, words, tmp_path, monkeypatch, compose):
    import datamodules

    def no_data(*args, **kwargs):
        raise AssertionError("the datamodule was built before the config was checked")

    monkeypatch.setattr(datamodules.SyntheticDataModule, "__init__", no_data)
    cfg = compose(overrides, tmp_path)
    with pytest.raises(ValueError) as err:
        train(cfg)
    for word in words:
        assert word in str(err.value), f"{word!r} missing from: {err.value}"


def test_unknown_term_option_is_named(compose):
    cfg = compose(["+loss.terms.dice.gama=2"])
    with pytest.raises(ValueError, match=r"'dice'.*unknown option.*gama"):
        build_loss(cfg.loss, cfg.task, cfg.num_classes)


def test_task_mapping():
    assert T.out_channels("binary", 1) == 1
    assert T.out_channels("multiclass", 5) == 5
    assert T.out_channels("multilabel", 3) == 3
    assert T.metric_kwargs("multiclass", 4, ignore_index=255) == {
        "task": "multiclass", "zero_division": 1.0, "num_classes": 4, "average": None, "ignore_index": 255,
    }
    assert T.metric_kwargs("multilabel", 3)["num_labels"] == 3
    assert T.metric_kwargs("multilabel", 1)["task"] == "binary"  # torchmetrics needs >= 2 labels
    with pytest.raises(ValueError, match="integer"):
        T.validate_task("binary", 1.5)


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_model_config_builds_with_task_channels(model, compose):
    # DynUNet/SegResNet (segtrain/network3d.py) take what the harness fills from the data plan; given here for 2D images.
    filled = ["model.in_channels=3", "model.spatial_dims=2", "model.patch_size=[64,64]", "model.spacing=[1,1]"]
    cfg = compose([f"model={model}", "task=multiclass", "num_classes=3", *(filled if model in ("dynunet", "segresnet") else [])])
    net = instantiate(cfg.model).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)


def test_default_model_uses_all_its_parameters(compose):
    # DDP fails on parameters that get no gradient; the default network must have none.
    cfg = compose([])
    net = instantiate(cfg.model)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert unused == []


def test_unknown_architecture_is_a_clear_error(compose, tmp_path):
    cfg = compose(["model.arch=unet3000"], tmp_path)
    with pytest.raises(ValueError, match="unet3000.*unet"):
        build_module(cfg)
    cfg = compose(["model.encoder_name=resnet3"], tmp_path)
    with pytest.raises(ValueError, match="resnet3.*encoder"):
        build_module(cfg)


@pytest.mark.parametrize("scheduler, expected", [("cosine", "CosineAnnealingLR"), ("plateau", "ReduceLROnPlateau"), ("none", None)])
@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_optimizer_and_scheduler_configs(optimizer, scheduler, expected, compose, tmp_path):
    cfg = compose([f"optimizer={optimizer}", f"scheduler={scheduler}"], tmp_path)
    validate_config(cfg)
    out = build_module(cfg).configure_optimizers()
    if expected is None:
        assert isinstance(out, torch.optim.Optimizer)
    else:
        assert type(out["lr_scheduler"]["scheduler"]).__name__ == expected
        assert out["lr_scheduler"]["interval"] == "epoch"


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp", "ddp_cpu"])
def test_trainer_configs_compose(trainer, compose):
    cfg = compose([f"trainer={trainer}"], tiny=False)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if trainer.startswith("ddp"):
        assert cfg.trainer.strategy == "ddp"


@pytest.mark.parametrize("experiment, task", [("multiclass_shapes", "multiclass"), ("multilabel_shapes", "multilabel")])
def test_experiments_set_task_and_a_fitting_loss(experiment, task, compose):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.task == task and cfg.data.task == task and cfg.model.num_classes == cfg.num_classes
    validate_config(cfg)


def test_run_folders_are_timestamped_to_the_microsecond():
    hydra_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "hydra" / "default.yaml"), resolve=False)
    assert hydra_cfg["run"]["dir"] == "${paths.log_dir}/runs/${now:%Y-%m-%d_%H-%M-%S_%f}_${segtrain.pid:}"
    assert hydra_cfg["sweep"]["subdir"] == "${hydra.job.num}"


@pytest.mark.parametrize("task, num_classes", [("binary", 1), ("multiclass", 4), ("multilabel", 3)])
def test_prediction_grid_renders_every_task(task, num_classes):
    image = torch.randn(2, 3, 16, 16)
    if task == "multiclass":
        mask = torch.randint(0, num_classes, (2, 16, 16))
    else:
        mask = (torch.rand(2, num_classes, 16, 16) > 0.5).float()
    logits = torch.randn(2, num_classes, 16, 16)
    grid = PredictionGrid(dirpath=str(Path("unused"))).render(image, mask, logits, task, num_classes)
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3
    assert grid.shape[1] > 2 * 16 and grid.shape[2] > 3 * 16  # 2 rows x 3 columns
