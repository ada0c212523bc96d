"""The Combo loss's FN/FP-asymmetric cross-entropies (Taghanaki et al. 2019): BCELoss(beta=...) and
CrossEntropyLoss(beta=...) against the paper's formulas; never fused; conf/loss/combo.yaml."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF
from omegaconf import OmegaConf

from seglosses import BCELoss, CombinedLoss, CrossEntropyLoss, DiceLoss
from seglosses import _fused
from seglosses import functional as F

from _loss_cases import IGNORE, check_bf16_autocast, make_case

ROOT = Path(__file__).resolve().parents[2]
SPATIAL = {"2d": (5, 6), "3d": (3, 4, 5)}


def _bce_reference(x, t, beta, pos_weight=None, smoothing=0.0, mask=None, reduction="mean"):
    """-[beta w t log p + (1 - beta)(1 - t) log(1 - p)] per element, p = sigmoid(x) (float64)."""
    t = t * (1 - smoothing) + 0.5 * smoothing
    p = torch.sigmoid(x)
    w = 1.0 if pos_weight is None else torch.tensor(pos_weight, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 2))
    loss = -(beta * w * t * torch.log(p) + (1 - beta) * (1 - t) * torch.log(1 - p))
    if mask is not None:
        loss = loss * mask
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / (loss.numel() if mask is None else mask.sum())


def _ce_reference(x, t, beta, weight=None, smoothing=0.0, ignore=None, reduction="mean"):
    """The paper's modified CE on softmax probabilities and the one-hot target, one-vs-rest, averaged
    over every pixel and class (the authors' K.mean of the flattened tensors)."""
    C = x.shape[1]
    valid = None if ignore is None else t != ignore
    tt = t if valid is None else torch.where(valid, t, 0)
    p = torch.softmax(x, 1)
    q = TF.one_hot(tt, C).movedim(-1, 1).to(x.dtype) * (1 - smoothing) + smoothing / C
    w = 1.0 if weight is None else torch.tensor(weight, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 2))
    elem = -w * (beta * q * torch.log(p) + (1 - beta) * (1 - q) * torch.log(1 - p))  # [B, C, *]
    if valid is not None:
        elem = elem * valid.unsqueeze(1)
    per_pixel = elem.mean(1)
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return per_pixel.sum()
    n = per_pixel.numel() if valid is None else valid.sum()
    return elem.sum() / (C * n)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dims", ["2d", "3d"])
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_bce_beta_equals_the_formula_float64(mode, dims, reduction):
    options = [dict(beta=0.7), dict(beta=0.3, label_smoothing=0.1), dict(beta=0.9, ignore=True),
               dict(beta=0.6, pos_weight=True, ignore=True)]
    for seed, opt in enumerate(options):
        x, t = make_case(mode, SPATIAL[dims], ignore=opt.get("ignore", False), seed=seed)
        pw = ([2.0] if mode == "binary" else [2.0, 0.5, 1.0]) if opt.get("pos_weight") else None
        mask = (t != IGNORE).to(x.dtype) if opt.get("ignore") else None
        clean = t if mask is None else t * mask
        fn = BCELoss(pos_weight=pw, label_smoothing=opt.get("label_smoothing", 0.0),
                     ignore_index=IGNORE if mask is not None else None, reduction=reduction, beta=opt["beta"])
        expected = _bce_reference(x, clean, opt["beta"], pw, opt.get("label_smoothing", 0.0), mask, reduction)
        torch.testing.assert_close(fn(x, t), expected, rtol=1e-12, atol=1e-12)
        functional = F.binary_cross_entropy(x, t, pw, opt.get("label_smoothing", 0.0), fn.ignore_index, reduction,
                                            beta=opt["beta"])
        torch.testing.assert_close(functional, fn(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_ce_beta_equals_the_papers_multiclass_form_float64(dims, reduction):
    options = [dict(beta=0.7), dict(beta=0.3, label_smoothing=0.1), dict(beta=0.8, ignore=True),
               dict(beta=0.6, weight=[0.5, 2.0, 1.0, 1.5], ignore=True)]
    for seed, opt in enumerate(options):
        x, t = make_case("multiclass", SPATIAL[dims], classes=4, ignore=opt.get("ignore", False), seed=seed)
        ii = IGNORE if opt.get("ignore") else None
        fn = CrossEntropyLoss(weight=opt.get("weight"), ignore_index=ii, reduction=reduction, beta=opt["beta"],
                              label_smoothing=opt.get("label_smoothing", 0.0))
        expected = _ce_reference(x, t, opt["beta"], opt.get("weight"), opt.get("label_smoothing", 0.0), ii, reduction)
        torch.testing.assert_close(fn(x, t), expected, rtol=1e-12, atol=1e-12)
        functional = F.cross_entropy(x, t, opt.get("weight"), ii, opt.get("label_smoothing", 0.0), reduction,
                                     beta=opt["beta"])
        torch.testing.assert_close(functional, fn(x, t), rtol=0, atol=0)


def test_beta_none_is_the_plain_loss_and_two_classes_match_bce():
    x, t = make_case("binary", (5, 6), seed=4)
    torch.testing.assert_close(BCELoss(beta=None)(x, t), TF.binary_cross_entropy_with_logits(x, t), rtol=0, atol=0)
    torch.testing.assert_close(BCELoss(beta=0.5)(x, t), 0.5 * BCELoss()(x, t))  # beta = 0.5: half the BCE
    xm, tm = make_case("multiclass", (5, 6), classes=3, seed=4)
    torch.testing.assert_close(CrossEntropyLoss(beta=None)(xm, tm), TF.cross_entropy(xm, tm), rtol=0, atol=0)
    # two classes, one-vs-rest: class 1 is the BCE of the logit difference, class 0 that of its negation
    x2 = torch.cat([torch.zeros_like(x), x], 1)
    torch.testing.assert_close(CrossEntropyLoss(beta=0.7)(x2, t[:, 0].long()),
                               0.5 * (BCELoss(beta=0.7)(x, t) + BCELoss(beta=0.7)(-x, 1 - t)))


def test_beta_above_one_half_penalises_false_negatives_more():
    confident = torch.tensor([[[[-3.0]]]])  # predicts background
    fn_cost = BCELoss(beta=0.8)(confident, torch.ones_like(confident))  # a missed foreground pixel
    fp_cost = BCELoss(beta=0.8)(-confident, torch.zeros_like(confident))  # a false alarm, as confident
    assert fn_cost > 3 * fp_cost
    fp_first = BCELoss(beta=0.2)
    assert fp_first(confident, torch.ones_like(confident)) < fp_first(-confident, torch.zeros_like(confident))


def test_ignored_pixels_change_nothing():
    for mode, fn in (("binary", BCELoss(ignore_index=IGNORE, beta=0.7)),
                     ("multilabel", BCELoss(ignore_index=IGNORE, beta=0.3, pos_weight=[1.0, 2.0, 3.0])),
                     ("multiclass", CrossEntropyLoss(ignore_index=IGNORE, beta=0.7, weight=[1.0, 2.0, 0.5]))):
        x, t = make_case(mode, (6, 7), ignore=True, seed=5)
        mask = (t == IGNORE) if mode != "multiclass" else (t == IGNORE).unsqueeze(1).expand_as(x)
        x2 = x.clone()
        x2[mask] = 70.0
        x.requires_grad_()
        loss = fn(x, t)
        loss.backward()
        assert fn(x2, t).item() == pytest.approx(loss.item(), rel=1e-12)
        assert (x.grad[mask] == 0).all() and x.grad.abs().sum() > 0
    # every pixel ignored: 0 and no gradient, not 0/0
    x, t = make_case("multiclass", (4, 4), seed=5)
    x.requires_grad_()
    loss = CrossEntropyLoss(ignore_index=IGNORE, beta=0.7)(x, torch.full_like(t, IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()


def test_gradcheck_float64():
    for spatial in ((3, 4), (2, 2, 3)):
        xb, tb = make_case("multilabel", spatial, ignore=True, seed=6)
        xm, tm = make_case("multiclass", spatial, ignore=True, seed=6)
        bce = BCELoss(ignore_index=IGNORE, beta=0.7, label_smoothing=0.1, pos_weight=[1.0, 2.0, 0.5])
        ce = CrossEntropyLoss(ignore_index=IGNORE, beta=0.3, label_smoothing=0.1, weight=[1.0, 2.0, 0.5])
        for fn, x, t in ((bce, xb, tb), (ce, xm, tm)):
            x.requires_grad_()
            assert torch.autograd.gradcheck(lambda z: fn(z, t), (x,), eps=1e-6, atol=1e-7, fast_mode=True)


def test_saturated_logits_stay_finite_in_float32():
    t = torch.tensor([[0, 1, 2, 1]])
    x = torch.tensor([[[200.0, -200.0, 0.0, 30.0], [-200.0, 200.0, 0.0, 0.0], [0.0, 0.0, 200.0, -30.0]]])
    x = x.reshape(1, 3, 1, 4).requires_grad_()
    t = t.reshape(1, 1, 4)
    loss = CrossEntropyLoss(beta=0.7)(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # pixel 3 is confidently wrong (class 0 at +30 against class 1): its log(1 - p_0) is -30 - log(...) exactly
    moderate = x.detach().double().clamp(-20, 20)
    torch.testing.assert_close(CrossEntropyLoss(beta=0.7)(moderate, t), _ce_reference(moderate, t, 0.7))
    xb = torch.tensor([[[[-100.0, 100.0]]]], requires_grad=True)
    loss = BCELoss(beta=0.9)(xb, torch.tensor([[[[1.0, 0.0]]]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(xb.grad).all() and loss.item() > 40


def test_finite_under_bfloat16_autocast():
    for mode, fn in (("binary", BCELoss(beta=0.7)), ("multiclass", CrossEntropyLoss(beta=0.7))):
        x, t = make_case(mode, (16, 16), dtype=torch.float32, seed=7)
        check_bf16_autocast(fn, x, t, rel=3e-2)


@pytest.mark.parametrize("cls", [BCELoss, CrossEntropyLoss])
def test_bad_beta_raises_a_clear_error(cls):
    for bad in (0.0, 1.0, -0.2, 1.5, True, "0.5", float("nan"), [0.5]):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: beta must be None .* or a float in \(0, 1\)"):
            cls(beta=bad)
    with pytest.raises(TypeError):
        cls(None, None, 0.0, "mean", 0.5)  # beta is keyword-only
    fn = cls(beta=0.25)
    assert fn.beta == 0.25 and "beta=0.25" in repr(fn) and not fn.state_dict()
    assert "beta" not in repr(cls())
    x, t = make_case("binary" if cls is BCELoss else "multiclass", (3, 3))
    fname = F.binary_cross_entropy if cls is BCELoss else F.cross_entropy
    with pytest.raises(ValueError, match=r"beta must be None"):
        fname(x, t, beta=1.0)


@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
def test_combined_loss_with_beta_is_not_fused_and_equals_the_sum(mode):
    x, t = make_case(mode, (8, 9), ignore=True, seed=8)
    pixel = (CrossEntropyLoss if mode == "multiclass" else BCELoss)(ignore_index=IGNORE, beta=0.7)
    dice = DiceLoss(mode, ignore_index=IGNORE, smooth=1.0)
    terms = {"pix": pixel, "dice": dice}
    assert _fused.plan(terms, t) is None
    assert _fused.plan({"pix": type(pixel)(ignore_index=IGNORE), "dice": dice}, t) is not None  # plain: fused
    combo = CombinedLoss(terms, {"pix": 0.3, "dice": 0.7})
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    total = combo(xa, t)
    expected = 0.3 * pixel(xb, t) + 0.7 * dice(xb, t)
    torch.testing.assert_close(total, expected, rtol=0, atol=0)
    total.backward()
    expected.backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)
    assert set(combo.last_values) == {"pix", "dice"}


def test_combo_config_is_the_papers_loss():
    """conf/loss/combo.yaml: alpha * BCE_beta + (1 - alpha) * Dice, the authors' defaults (0.5, 0.5, smooth 1)."""
    cfg = OmegaConf.load(ROOT / "conf" / "loss" / "combo.yaml")
    assert list(cfg.defaults) == [{"terms": ["bce", "dice"]}, "_self_"]
    bce, dice = cfg.terms.bce, cfg.terms.dice
    assert bce.weight + dice.weight == 1.0 and bce.beta == 0.5 and dice.smooth == 1.0
    terms = {"bce": BCELoss(beta=bce.beta), "dice": DiceLoss("binary", smooth=dice.smooth)}
    x, t = make_case("binary", (6, 6), seed=9)
    combo = CombinedLoss(terms, {"bce": bce.weight, "dice": dice.weight})
    p = torch.sigmoid(x)
    bce_beta = -(0.5 * t * torch.log(p) + 0.5 * (1 - t) * torch.log(1 - p)).mean()
    dsc = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    paper = 0.5 * bce_beta - 0.5 * dsc  # L = alpha L_mBCE - (1 - alpha) DSC: ours is that + (1 - alpha)
    torch.testing.assert_close(combo(x, t), paper + 0.5, rtol=1e-12, atol=1e-12)
    for name in ("bce", "ce"):  # the term configs expose beta, off by default
        term = OmegaConf.load(ROOT / "conf" / "loss" / "terms" / f"{name}.yaml")[name]
        assert "beta" in term and term.beta is None
