"""LogCoshDiceLoss (Jadon 2020): log(cosh(DiceLoss)) with DiceLoss's options, modes and checks."""

import math

import pytest
import torch

import seglosses
from seglosses import CombinedLoss, DiceLoss, LogCoshDiceLoss
from seglosses import functional as F

from _loss_cases import IGNORE, check_bf16_autocast, make_case

MODES = ["binary", "multiclass", "multilabel"]
OPTION_SETS = [
    {},
    {"ignore_index": IGNORE},
    {"ignore_index": IGNORE, "smooth": 1.0, "per_image": True},
    {"ignore_index": IGNORE, "squared_pred": True, "log_loss": True},
    {"ignore_index": IGNORE, "empty_class": "exclude", "reduction": "none"},
    {"ignore_index": IGNORE, "reduction": "sum"},
]


def _options(mode, options):
    if mode != "binary":
        options = {**options, "include_background": False, "class_weights": [1.0, 2.0, 0.5]}
    return options


@pytest.mark.parametrize("options", OPTION_SETS, ids=repr)
@pytest.mark.parametrize("mode", MODES)
def test_equals_log_cosh_of_dice_float64(mode, options):
    options = _options(mode, options)
    ignore = "ignore_index" in options
    for seed in range(3):
        x, t = make_case(mode, (5, 6), ignore=ignore, seed=seed)
        dice = DiceLoss(mode, **options)(x, t)
        expected = torch.log(torch.cosh(dice))
        got = LogCoshDiceLoss(mode, **options)(x, t)
        assert got.dtype == torch.float64 and got.shape == dice.shape
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(F.log_cosh_dice_loss(x, t, mode, **options), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mode", MODES)
def test_ignored_pixels_change_nothing(mode):
    x, t = make_case(mode, (5, 6), ignore=True)
    fn = LogCoshDiceLoss(mode, ignore_index=IGNORE)
    mask = (t == IGNORE) if mode != "multiclass" else (t == IGNORE).unsqueeze(1).expand_as(x)
    x2 = x.clone()
    x2[mask] = 100.0
    x.requires_grad_()
    loss = fn(x, t)
    loss.backward()
    assert fn(x2, t).item() == pytest.approx(loss.item(), rel=1e-12)
    assert (x.grad[mask] == 0).all()


@pytest.mark.parametrize("options", [{}, {"ignore_index": IGNORE, "per_image": True, "smooth": 0.5}], ids=repr)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(mode, options):
    x, t = make_case(mode, (3, 4), ignore="ignore_index" in options)
    fn = LogCoshDiceLoss(mode, **options)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: fn(z, t), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_finite_under_bfloat16_autocast(mode):
    x, t = make_case(mode, (16, 16), dtype=torch.float32)
    fn = LogCoshDiceLoss(mode)
    check_bf16_autocast(fn, x, t, rel=3e-2, abs=2e-3)


@pytest.mark.parametrize("mode", MODES)
def test_perfect_prediction_is_zero(mode):
    _, t = make_case(mode, (5, 6))
    if mode == "multiclass":
        probs = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).to(torch.float64)
    else:
        probs = t.to(torch.float64).reshape(t.shape[0], -1, *t.shape[-2:])
    for dtype in (torch.float64, torch.float32):
        p = probs.to(dtype)
        assert DiceLoss(mode, from_logits=False)(p, t).item() == 0.0
        assert LogCoshDiceLoss(mode, from_logits=False)(p, t).item() == 0.0
        logits = (2 * p - 1) * 60.0  # saturated logits: sigmoid / softmax equal the target
        assert LogCoshDiceLoss(mode)(logits, t).item() == pytest.approx(0.0, abs=1e-12)


def test_log_cosh_is_safe_where_the_naive_form_overflows():
    x = torch.tensor([0.0, 1e-3, 0.5, -2.0, 50.0, 200.0, -1e4], dtype=torch.float32, requires_grad=True)
    y = F.log_cosh(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert y[0].item() == 0.0
    x64 = x.detach().double()
    expected = torch.where(x64.abs() < 20, torch.log(torch.cosh(x64)), x64.abs() - math.log(2))
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x.grad, torch.tanh(x.detach()))
    assert torch.isinf(torch.log(torch.cosh(torch.tensor(200.0))))  # what the safe form avoids


def test_bad_input_raises_as_dice_does():
    x = torch.randn(2, 3, 4, 4)
    cases = [
        ("multiclass", x, torch.zeros(2, 4, 5, dtype=torch.long)),
        ("multiclass", x, torch.full((2, 4, 4), 7, dtype=torch.long)),
        ("multilabel", x, torch.zeros(2, 1, 4, 4)),
        ("binary", x, torch.zeros(2, 3, 4, 4)),
        ("binary", x[:, :1], torch.full((2, 1, 4, 4), 2.0)),
    ]
    for mode, logits, target in cases:
        with pytest.raises(ValueError) as dice_err:
            DiceLoss(mode)(logits, target)
        with pytest.raises(ValueError, match=None) as ours:
            LogCoshDiceLoss(mode)(logits, target)
        assert str(ours.value) == str(dice_err.value)
    for kwargs in ({"smooth": -1.0}, {"empty_class": "nope"}, {"reduction": "max"}, {"class_weights": [1.0, -1.0]}):
        with pytest.raises(ValueError) as dice_err:
            DiceLoss("multilabel", **kwargs)
        with pytest.raises(ValueError) as ours:
            LogCoshDiceLoss("multilabel", **kwargs)
        assert str(ours.value) == str(dice_err.value)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        LogCoshDiceLoss("multi-class")
    with pytest.raises(ValueError, match=r"include_background"):
        LogCoshDiceLoss("binary", include_background=False)
    with pytest.raises(ValueError, match=r"unknown option"):
        F.log_cosh_dice_loss(x, torch.zeros(2, 4, 4, dtype=torch.long), "multiclass", bogus=0.3)


def test_module_options_and_combination():
    fn = LogCoshDiceLoss("multiclass", smooth=0.5, ignore_index=IGNORE)
    assert fn.mode == "multiclass" and fn.smooth == 0.5 and fn.ignore_index == IGNORE
    fn.smooth = 1.0
    assert fn.options.smooth == 1.0
    assert "LogCoshDiceLoss" in repr(fn) and "smooth=1.0" in repr(fn)
    assert seglosses.LogCoshDiceLoss is LogCoshDiceLoss
    x, t = make_case("multiclass", (5, 6), ignore=True)
    combo = CombinedLoss({"ce": seglosses.CrossEntropyLoss(ignore_index=IGNORE), "lcd": fn})
    total = combo(x, t)
    ce = seglosses.CrossEntropyLoss(ignore_index=IGNORE)(x, t)
    torch.testing.assert_close(total, ce + fn(x, t))  # not fused as a plain Dice
