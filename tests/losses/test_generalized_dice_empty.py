"""Generalized Dice of an empty target (issue 25): a ``smooth`` below Dice's 1e-7 floor is
honoured, so the loss is MONAI's (0 with no class present, as the docstring promises), in
float64, per image and pooled, multilabel and multiclass; and it stays finite, with a finite
gradient, under bfloat16 / float16 autocast."""

import pytest
import torch
import torch.nn.functional as F

from seglosses import GeneralizedDiceLoss

monai_losses = pytest.importorskip("monai.losses")

SMOOTHS = [0.0, 1e-30, 1e-12, 1e-8, 1e-7, 1e-5, 1.0]


def _logits(c, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(2, c, 5, 6, generator=g)).to(dtype)


def _monai(smooth, per_image, **kw):
    # MONAI with smooth 0 divides 0 by 0 when no class is present; ours defines it as 0
    return monai_losses.GeneralizedDiceLoss(smooth_nr=smooth, smooth_dr=smooth, batch=not per_image, **kw)


@pytest.mark.parametrize("smooth", SMOOTHS)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
def test_empty_multilabel_target_equals_monai(smooth, per_image, weight_type):
    x, t = _logits(3), torch.zeros(2, 3, 5, 6, dtype=torch.float64)
    ours = GeneralizedDiceLoss("multilabel", weight_type=weight_type, smooth=smooth, per_image=per_image)(x, t)
    if smooth > 0:
        ref = _monai(smooth, per_image, sigmoid=True, w_type=weight_type)(x, t)
        torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-10, atol=1e-12)
    if weight_type != "uniform":  # no class present: every weight 0, loss 1 - s/s = 0 (or 0 by rule)
        assert ours.item() == 0.0


@pytest.mark.parametrize("smooth", SMOOTHS)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("weight_type", ["square", "simple"])
def test_empty_multiclass_foreground_equals_monai(smooth, per_image, weight_type):
    # all background with include_background=False: no foreground class present
    x, t = _logits(4, seed=1), torch.zeros(2, 5, 6, dtype=torch.long)
    ours = GeneralizedDiceLoss("multiclass", weight_type=weight_type, smooth=smooth, per_image=per_image,
                               include_background=False)(x, t)
    assert ours.item() == 0.0
    if smooth > 0:
        ref = _monai(smooth, per_image, softmax=True, w_type=weight_type,
                     include_background=False)(x, F.one_hot(t, 4).movedim(-1, 1).double())
        torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("smooth", [1e-8, 1e-5])
def test_empty_target_and_empty_prediction_is_zero(smooth):
    # probabilities all 0 against an empty target: a perfect prediction, loss 0 for every weighting
    p, t = torch.zeros(2, 3, 5, 6, dtype=torch.float64), torch.zeros(2, 3, 5, 6, dtype=torch.float64)
    for weight_type in ("square", "simple", "uniform"):
        loss = GeneralizedDiceLoss("multilabel", weight_type=weight_type, smooth=smooth, from_logits=False)(p, t)
        ref = _monai(smooth, False, w_type=weight_type)(p, t)
        assert loss.item() == 0.0 and ref.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("smooth", [0.0, 1e-8, 1e-5])
@pytest.mark.parametrize("empty", [True, False])
def test_autocast_finite_with_small_smooth(dtype, smooth, empty):
    x = _logits(3, dtype=torch.float32).requires_grad_()
    t = torch.zeros(2, 3, 5, 6) if empty else (torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    with torch.autocast("cpu", dtype=dtype):
        loss = GeneralizedDiceLoss("multilabel", smooth=smooth, per_image=True)(x.to(dtype), t)
    loss.backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    if empty:
        assert loss.item() == 0.0
