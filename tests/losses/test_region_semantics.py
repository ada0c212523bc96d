"""Dice / Jaccard / Tversky semantics: aggregation, empty classes, weights, edge cases."""

import pytest
import torch

from seglosses import DiceLoss, JaccardLoss, TverskyLoss
from seglosses import functional as F

from _loss_cases import IGNORE, MODES, make_case

REGION = (DiceLoss, JaccardLoss, TverskyLoss)


def _dice_per_class(p, t, dims):
    return 1 - 2 * (p * t).sum(dims) / (p.sum(dims) + t.sum(dims))


def test_batch_aggregation_is_per_class_over_the_whole_batch():
    x, t = make_case("multilabel", (5, 5), batch=3, classes=2)
    p = x.sigmoid()
    ref = _dice_per_class(p, t, (0, 2, 3)).mean()
    torch.testing.assert_close(DiceLoss("multilabel")(x, t), ref)


def test_per_image_averages_per_image_dice():
    x, t = make_case("multilabel", (5, 5), batch=3, classes=2)
    t[1:, :, 0, 0] = 1.0  # every class present in every image
    p = x.sigmoid()
    ref = _dice_per_class(p, t, (2, 3)).mean()
    torch.testing.assert_close(DiceLoss("multilabel", per_image=True)(x, t), ref)
    assert not torch.allclose(DiceLoss("multilabel")(x, t), ref)


def test_class_weights_combine_as_weighted_mean():
    x, t = make_case("multiclass", (6, 6), classes=3)
    w = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    p = x.softmax(1)
    oh = torch.nn.functional.one_hot(t, 3).permute(0, 3, 1, 2).to(p.dtype)
    per_class = _dice_per_class(p, oh, (0, 2, 3))
    torch.testing.assert_close(DiceLoss("multiclass", class_weights=w)(x, t), (w * per_class).sum() / w.sum())
    # include_background=False drops class 0 (and its weight)
    torch.testing.assert_close(
        DiceLoss("multiclass", class_weights=w, include_background=False)(x, t),
        (w[1:] * per_class[1:]).sum() / w[1:].sum(),
    )


def test_smooth_enters_numerator_and_denominator():
    x, t = make_case("binary", (4, 4))
    p = x.sigmoid()
    s = 0.7
    ref = 1 - (2 * (p * t).sum() + s) / (p.sum() + t.sum() + s)
    torch.testing.assert_close(DiceLoss("binary", smooth=s)(x, t), ref)
    iou = ((p * t).sum() + s) / (p.sum() + t.sum() - (p * t).sum() + s)
    torch.testing.assert_close(JaccardLoss("binary", smooth=s)(x, t), 1 - iou)


def test_tversky_formula_and_focal_gamma_per_class():
    x, t = make_case("multilabel", (5, 5), classes=2)
    p = x.sigmoid()
    tp = (p * t).sum((0, 2, 3))
    fp, fn = p.sum((0, 2, 3)) - tp, t.sum((0, 2, 3)) - tp
    ti = tp / (tp + 0.3 * fp + 0.7 * fn)
    torch.testing.assert_close(TverskyLoss("multilabel", 0.3, 0.7)(x, t), (1 - ti).mean())
    torch.testing.assert_close(TverskyLoss("multilabel", 0.3, 0.7, gamma=2.0)(x, t), ((1 - ti) ** 2).mean())
    # alpha = beta = 0.5 is Dice, alpha = beta = 1 is Jaccard
    torch.testing.assert_close(TverskyLoss("multilabel", 0.5, 0.5)(x, t), DiceLoss("multilabel")(x, t))
    torch.testing.assert_close(TverskyLoss("multilabel", 1.0, 1.0)(x, t), JaccardLoss("multilabel")(x, t))


@pytest.mark.parametrize("cls", REGION)
def test_empty_class_penalizes_false_positives(cls):
    x, t = make_case("multiclass", (6, 6), classes=3)
    t[t == 2] = 1  # class 2 absent from the target
    base = cls("multiclass")
    fp_rate = x.softmax(1)[:, 2].mean()
    zero = cls("multiclass", empty_class="zero")(x, t)
    torch.testing.assert_close(base(x, t), zero + fp_rate / 3)
    # more predicted mass on the absent class costs more
    x2 = x.clone()
    x2[:, 2] += 3.0
    assert base(x2, t) > base(x, t)
    # "exclude" averages over the present classes only
    excl = cls("multiclass", empty_class="exclude")(x, t)
    torch.testing.assert_close(excl, zero * 3 / 2)
    # gradient pushes the absent class's logits down
    xg = x.clone().requires_grad_()
    base(xg, t).backward()
    assert torch.isfinite(xg.grad).all()
    assert (xg.grad[:, 2] > 0).all()


@pytest.mark.parametrize("cls", REGION)
@pytest.mark.parametrize("policy", ["penalize_fp", "zero", "exclude"])
def test_empty_target_and_empty_prediction_costs_zero(cls, policy):
    # binary, no foreground in the target and a confident empty prediction
    x = torch.full((2, 1, 4, 4), -40.0, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    for kw in ({}, {"per_image": True}, {"log_loss": True}):
        loss = cls("binary", empty_class=policy, **kw)(x, t)
        assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-12)
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(g).all()
    # an exactly empty probability map (from_logits=False) is 0, not 0/0
    loss = cls("binary", from_logits=False, empty_class=policy)(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3))
    assert loss.item() == 0.0


def test_empty_target_with_false_positives_is_penalised_by_default():
    t = torch.zeros(1, 1, 4, 4)
    p = torch.zeros(1, 1, 4, 4)
    p[..., :2, :] = 1.0  # half the image predicted foreground
    assert DiceLoss("binary", from_logits=False)(p, t).item() == pytest.approx(0.5)
    assert DiceLoss("binary", from_logits=False, empty_class="zero")(p, t).item() == 0.0


@pytest.mark.parametrize("cls", REGION)
@pytest.mark.parametrize("mode", MODES)
def test_all_pixels_ignored_gives_zero_and_zero_grad(cls, mode):
    x, t = make_case(mode, (3, 3))
    t = torch.full_like(t, IGNORE)
    for per_image in (False, True):
        xg = x.clone().requires_grad_()
        loss = cls(mode, ignore_index=IGNORE, per_image=per_image)(xg, t)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.equal(xg.grad, torch.zeros_like(x))


@pytest.mark.parametrize("cls", REGION)
@pytest.mark.parametrize("mode", MODES)
def test_one_pixel_batch_of_one_and_3d(cls, mode):
    for spatial, batch in (((1, 1), 1), ((1,), 1), ((3, 4, 5), 1), ((2, 3, 2), 3)):
        x, t = make_case(mode, spatial, batch=batch, classes=2)
        xg = x.clone().requires_grad_()
        loss = cls(mode)(xg, t)
        loss.backward()
        assert torch.isfinite(loss) and 0.0 <= loss.item() <= 1.0
        assert torch.isfinite(xg.grad).all()


def test_one_pixel_dice_value():
    x = torch.tensor([0.3], dtype=torch.float64).view(1, 1, 1, 1)
    t = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    p = torch.sigmoid(x).reshape(())
    torch.testing.assert_close(DiceLoss("binary")(x, t), 1 - 2 * p / (p + 1))


def test_per_image_skips_images_without_valid_pixels():
    x, t = make_case("binary", (4, 4), batch=2)
    t[1] = IGNORE  # image 1 entirely ignored: it must not dilute the mean
    ref = DiceLoss("binary", per_image=True)(x[:1], t[:1])
    torch.testing.assert_close(DiceLoss("binary", per_image=True, ignore_index=IGNORE)(x, t), ref)


def test_region_sums_multiclass_equals_one_hot_sums():
    x, t = make_case("multiclass", (4, 5), classes=3, ignore=True)
    valid = (t != IGNORE).unsqueeze(1).to(x.dtype)
    oh = torch.nn.functional.one_hot(torch.where(t == IGNORE, 0, t), 3).permute(0, 3, 1, 2) * valid
    p = x.softmax(1) * valid
    for per_image, dims in ((False, (0, 2, 3)), (True, (2, 3))):
        i, ps, ts, n = F.region_sums(x, t, "multiclass", per_image=per_image, ignore_index=IGNORE)
        torch.testing.assert_close(i, (p * oh).sum(dims))
        torch.testing.assert_close(ps, p.sum(dims))
        torch.testing.assert_close(ts, oh.sum(dims).to(x.dtype))
        torch.testing.assert_close(n, valid.expand_as(p).sum(dims))
