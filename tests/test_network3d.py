"""segtrain/network3d.py (DynUNet, SegResNet), N-d sliding windows and the 3D ONNX export; all tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segtrain.network3d import (
    build_dynunet,
    build_segresnet,
    check_model_matches_data,
    plan_kernels_strides,
)
from segtrain.sliding import check_window, whole_image_logits

TINY = dict(filters=[4, 8, 16, 32])


def _dynunet(**kwargs):
    torch.manual_seed(0)
    options = dict(task="multiclass", num_classes=3, in_channels=2, patch_size=[16, 32, 32], spacing=[3.0, 1.0, 1.0],
                   **TINY)
    options.update(kwargs)
    return build_dynunet(**options)


# ------------------------------------------------------------------------------------------
# planning: the nnU-Net recipe, lists written out by hand
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "spacing", "kernels", "strides"),
    [
        # isotropic: every axis halved while >= 8 (32 -> 16 -> 8 -> 4), kernel 3 everywhere
        ([32, 32, 32], [1.0, 1.0, 1.0], [[3, 3, 3]] * 4, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]),
        # thick slices (3x): z neither halved nor convolved (kernel 1) until the in-plane spacing is
        # within 2x of it (after one halving: 3 vs 2), then everything is halved
        ([16, 32, 32], [3.0, 1.0, 1.0], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
         [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
        # the synthetic nnU-Net data's spacing (2.0, 0.8, 0.8) and shape: ratio 2.5 on z
        ([24, 32, 40], [2.0, 0.8, 0.8], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
         [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]),
        # 2D, unequal sides: W stops at 6 (< 8) while H is halved once more
        ([64, 48], [1.0, 1.0], [[3, 3]] * 5, [[1, 1], [2, 2], [2, 2], [2, 2], [2, 1]]),
    ],
)
def test_kernels_and_strides_are_the_nnunet_recipes(patch, spacing, kernels, strides):
    assert plan_kernels_strides(patch, spacing) == (kernels, strides)


def test_depth_is_capped_and_bad_patches_are_named():
    _, strides = plan_kernels_strides([256, 256], [1.0, 1.0])
    assert len(strides) == 6  # the recipe alone would halve 6 times (256 -> 4): capped at 5
    assert len(plan_kernels_strides([256, 256], [1.0, 1.0], max_levels=None)[1]) == 7
    with pytest.raises(ValueError, match=r"axis 0 \(36\).*multiple of 8; use e.g. 40"):
        plan_kernels_strides([36, 32, 32], [1.0, 1.0, 1.0])


def test_builder_errors_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match=r"model.patch_size is null.*harness fills it.*model.patch_size=\["):
        build_dynunet("multiclass", 3, 1, patch_size=None, spacing=[1, 1, 1])
    with pytest.raises(ValueError, match="model.spacing is null"):
        build_dynunet("multiclass", 3, 1, patch_size=[32, 32, 32])
    with pytest.raises(ValueError, match="model.in_channels is null"):
        build_dynunet("multiclass", 3, None, patch_size=[32, 32, 32], spacing=[1, 1, 1])
    with pytest.raises(ValueError, match=r"model.patch_size=\[32, 32\] must have 3 positive sizes"):
        build_dynunet("multiclass", 3, 1, spatial_dims=3, patch_size=[32, 32], spacing=[1, 1, 1])
    with pytest.raises(ValueError, match="model.spacing=.*must have 3 values"):
        build_dynunet("multiclass", 3, 1, patch_size=[32, 32, 32], spacing=[1, 1])
    with pytest.raises(ValueError, match=r"model.filters=\[4, 8\] has 2 entries for the 4 levels"):
        build_dynunet("multiclass", 3, 1, patch_size=[32, 32, 32], spacing=[1, 1, 1], filters=[4, 8])
    with pytest.raises(ValueError, match="too small for a U-Net"):
        build_dynunet("multiclass", 3, 1, patch_size=[8, 8, 8], spacing=[1, 1, 1], **TINY)
    with pytest.raises(ValueError, match="deep_supr_num=3.*1 to 2 auxiliary"):
        _dynunet(deep_supervision=True, deep_supr_num=3)
    with pytest.raises(ValueError, match=r"init_filters=4 must be a multiple of 8"):
        build_segresnet("binary", 1, 1, init_filters=4)
    with pytest.raises(ValueError, match=r"patch_size=\[20, 32, 32\] must be a multiple of 8.*\[24, 32, 32\]"):
        build_segresnet("binary", 1, 1, patch_size=[20, 32, 32], init_filters=8)


# ------------------------------------------------------------------------------------------
# shapes, deep supervision
# ------------------------------------------------------------------------------------------


def test_dynunet_shapes_2d_and_3d_and_divisor():
    net = _dynunet()
    assert net.spatial_dims == 3 and net.divisor == (4, 8, 8)
    assert net(torch.randn(2, 2, 8, 24, 40)).shape == (2, 3, 8, 24, 40)  # any multiple of the divisor
    net2d = build_dynunet("binary", 1, 3, spatial_dims=None, patch_size=[32, 32], spacing=[1, 1], **TINY)
    assert net2d.spatial_dims == 2 and net2d.divisor == (8, 8)
    assert net2d(torch.randn(1, 3, 32, 48)).shape == (1, 1, 32, 48)
    # nnU-Net's default widths: 32 doubled, capped at 320 (3D)
    wide = build_dynunet("multiclass", 2, 1, patch_size=[64, 64, 64], spacing=[1, 1, 1])
    assert wide.filters == [32, 64, 128, 256, 320]


def test_deep_supervision_is_a_list_in_training_and_a_tensor_in_eval_and_feeds_the_loss():
    from seglosses import CrossEntropyLoss, DeepSupervisionLoss, DiceLoss

    net = _dynunet(deep_supervision=True, deep_supr_num=2)
    image = torch.randn(2, 2, 16, 32, 32)
    outputs = net.train()(image)
    assert isinstance(outputs, list) and len(outputs) == 3
    assert all(o.shape == (2, 3, 16, 32, 32) for o in outputs)  # MONAI upsampled them: all full resolution
    target = torch.randint(0, 3, (2, 16, 32, 32))
    # all outputs are full size, so DeepSupervisionLoss's target downsampling is a no-op here
    loss = DeepSupervisionLoss(CrossEntropyLoss())(outputs, target) + DeepSupervisionLoss(DiceLoss("multiclass"))(outputs, target)
    loss.backward()
    head = next(iter(net.deep_supervision_heads.parameters()))
    assert torch.isfinite(loss) and head.grad is not None and head.grad.abs().sum() > 0
    with torch.no_grad():
        assert net.eval()(image).shape == (2, 3, 16, 32, 32)
    # the same parameter names as without deep supervision (plus the heads): init_from matches by name
    plain = set(_dynunet().state_dict())
    extra = set(net.state_dict()) - plain
    assert plain < set(net.state_dict()) and all("deep_supervision_heads" in k or "super_head" in k for k in extra)


def test_segresnet_shapes():
    torch.manual_seed(0)
    net = build_segresnet("multilabel", 2, 1, spatial_dims=None, patch_size=[16, 16, 16], init_filters=8)
    assert net.spatial_dims == 3 and net.divisor == (8, 8, 8)
    assert net(torch.randn(1, 1, 16, 24, 16)).shape == (1, 2, 16, 24, 16)
    net2d = build_segresnet("binary", 1, 3, spatial_dims=2, init_filters=8, blocks_down=[1, 1, 1], blocks_up=[1, 1])
    assert net2d.divisor == (4, 4) and net2d(torch.randn(1, 3, 20, 28)).shape == (1, 1, 20, 28)


def test_model_config_and_data_mismatch_is_one_clear_error():
    with pytest.raises(ValueError, match=r"segtrain.network.build_network.*2D only.*3D volumes.*model=dynunet"):
        check_model_matches_data("segtrain.network.build_network", 3)
    with pytest.raises(ValueError, match=r"build_dynunet, model.spatial_dims=3.*3D volumes.*data are 2D images.*model=unet"):
        check_model_matches_data({"_target_": "segtrain.network3d.build_dynunet", "spatial_dims": 3}, 2)
    with pytest.raises(ValueError, match=r"build_segresnet, model.spatial_dims=2.*model.spatial_dims=3"):
        check_model_matches_data("segtrain.network3d.build_segresnet", 3, model_spatial_dims=2)
    check_model_matches_data("segtrain.network.build_network", 2)
    check_model_matches_data({"_target_": "segtrain.network3d.build_dynunet", "spatial_dims": None}, 2)  # filled from the data
    check_model_matches_data("segtrain.network3d.build_dynunet", 3)


def test_model_configs_build_through_hydra():
    from omegaconf import OmegaConf

    from segtrain.utils import build

    for name, extra in (("dynunet", {"filters": [4, 8, 16, 32], "deep_supervision": True}), ("segresnet", {"init_filters": 8})):
        cfg = OmegaConf.merge(OmegaConf.load(f"conf/model/{name}.yaml"),
                              {"task": "multiclass", "num_classes": 3, "in_channels": 2, "patch_size": [16, 32, 32],
                               "spacing": [2.0, 0.8, 0.8], **extra})
        net = build(cfg).eval()
        assert net(torch.randn(1, 2, 16, 32, 32)).shape == (1, 3, 16, 32, 32)


# ------------------------------------------------------------------------------------------
# N-d sliding windows
# ------------------------------------------------------------------------------------------


def test_one_window_over_a_smaller_volume_is_one_forward_pass_of_the_padded_volume():
    net = _dynunet().eval()
    volume = torch.randn(1, 2, 13, 27, 30)
    options = check_window({"window": [16, 32, 32], "overlap": 0.5, "mode": "gaussian", "sw_batch_size": None,
                            "pad": True, "sw_device": None, "device": None})
    assert options["window"] == [16, 32, 32] and options["sw_device"] is None
    with torch.no_grad():
        logits = whole_image_logits(net, volume, options)
        # MONAI pads centred (half before, the rest after) up to the window, then crops back
        padded = F.pad(volume, (1, 1, 2, 3, 1, 2))
        expected = net(padded)[:, :, 1:14, 2:29, 1:31]
    assert logits.shape == (1, 3, 13, 27, 30)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_nd_windows_tile_a_larger_volume_on_the_chosen_devices_and_check_their_options():
    net = _dynunet().eval()
    volume = torch.randn(1, 2, 20, 36, 40)
    options = check_window({"window": [16, 32, 32], "overlap": 0.25, "sw_device": "cpu", "device": "cpu"})
    assert (options["sw_device"], options["device"]) == ("cpu", "cpu")
    with torch.no_grad():
        logits = whole_image_logits(net, volume, options)
        default = whole_image_logits(net, volume, {**options, "sw_device": None, "device": None})
    assert logits.shape == (1, 3, 20, 36, 40) and logits.device.type == "cpu"
    torch.testing.assert_close(logits, default)
    assert "sw_device" not in check_window({"window": 64})  # a 2D checkpoint's inference entry stays as it was
    with pytest.raises(ValueError, match="not a device"):
        check_window({"window": [16, 32, 32], "sw_device": "gpu0"})
    with pytest.raises(ValueError, match="2 or 3 positive sizes"):
        check_window({"window": [16, 0, 32]})
    with pytest.raises(ValueError, match="is one size, for 2D images"):
        whole_image_logits(net, volume, check_window({"window": 64}))
    with pytest.raises(ValueError, match=r"has 2 sizes, but the images have 3 spatial axes"):
        whole_image_logits(net, volume, check_window({"window": [32, 32]}))
    with pytest.raises(ValueError, match=r"Image case_1 is 13x27x30 voxels, smaller than the 16x32x32"):
        whole_image_logits(net, torch.randn(1, 2, 13, 27, 30), {**options, "pad": False}, ["case_1"])


def test_whole_volume_without_windows_pads_to_the_divisor():
    net = _dynunet().eval()
    volume = torch.randn(1, 2, 10, 20, 30)
    with torch.no_grad():
        logits = whole_image_logits(net, volume, None)
        expected = net(F.pad(volume, (0, 2, 0, 4, 0, 2)))[:, :, :10, :20, :30]
    torch.testing.assert_close(logits, expected)


# ------------------------------------------------------------------------------------------
# ONNX export, dynamic D, H, W
# ------------------------------------------------------------------------------------------


def _onnx_matches(path, net, shapes):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in shapes:
        batch = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        (logits,) = session.run(["logits"], {"image": batch.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, net(batch).numpy(), atol=1e-4, rtol=0)
    return session


def test_legacy_onnx_export_of_a_dynunet_has_dynamic_depth_height_width(tmp_path):
    from reliability_helpers import load_script

    export = load_script("export")
    net = _dynunet().eval()
    path = export.export_network(net, torch.randn(1, 2, 16, 32, 32), (2, 3, 4), str(tmp_path / "m.onnx"), "legacy")
    session = _onnx_matches(path, net, [(1, 2, 8, 24, 40), (2, 2, 24, 16, 32)])
    assert session.get_inputs()[0].shape == ["batch", 2, "depth", "height", "width"]


@pytest.mark.slow
def test_export_cli_on_a_volume_checkpoint_with_the_dynamo_exporter(tmp_path):
    """scripts/export.py on a checkpoint of the contract's shape (docs/ARCHITECTURE.md): the window traced,
    onnxruntime checked at another size by the script, and here at two more."""
    from reliability_helpers import load_script

    export = load_script("export")
    model = {"_target_": "segtrain.network3d.build_dynunet", "task": "multiclass", "num_classes": 3, "in_channels": 2,
             "spatial_dims": 3, "patch_size": [16, 32, 32], "spacing": [3.0, 1.0, 1.0], "filters": [4, 8, 16, 32]}
    net = _dynunet().eval()
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "config": {"task": "multiclass", "num_classes": 3, "model": model, "data": {}},
                "inference": {"window": [16, 32, 32], "overlap": 0.5, "mode": "gaussian", "sw_batch_size": None,
                              "pad": True, "sw_device": None, "device": None},
                "preprocessing": {"kind": "volume", "channels": 2, "spatial_dims": 3}}, ckpt)
    written = export.export(export.parse_overrides(export.ExportArgs, [f"ckpt_path={ckpt}", f"output={tmp_path / 'v.onnx'}"]))
    assert set(written) == {"onnx", "torchscript"}  # the safetensors folder is for smp networks: skipped
    _onnx_matches(written["onnx"], net, [(1, 2, 8, 24, 40), (2, 2, 24, 16, 32)])
    scripted = torch.jit.load(written["torchscript"])
    batch = torch.randn(1, 2, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(batch), net(batch))
    with pytest.raises(ValueError, match=r"image_size=\[16, 30, 32\].*multiples of \[4, 8, 8\].*\[16, 32, 32\]"):
        export.export(export.parse_overrides(export.ExportArgs, [f"ckpt_path={ckpt}", "image_size=[16,30,32]"]))
