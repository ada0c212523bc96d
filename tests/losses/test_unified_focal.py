"""AsymmetricUnifiedFocalLoss equals MONAI's in the binary case (MONAI takes probabilities), follows
the paper's multiclass formula, and is finite where MONAI's clamp loses the gradient."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from seglosses.unified_focal import AsymmetricUnifiedFocalLoss, asymmetric_unified_focal_loss

from _loss_cases import IGNORE, check_bf16_autocast, make_case

monai_losses = pytest.importorskip("monai.losses")

MODES = ["binary", "multiclass", "multilabel"]
SPATIAL = {"2d": (6, 7), "3d": (3, 4, 5)}
PARAMS = [dict(focal_weight=0.5, delta=0.6, gamma=0.5), dict(focal_weight=0.2, delta=0.7, gamma=0.75),
          dict(focal_weight=1.0, delta=0.5, gamma=0.0), dict(focal_weight=0.0, delta=0.3, gamma=1.0)]


def _monai(probs, target, focal_weight, delta, gamma, onehot=False):
    """MONAI's AsymmetricUnifiedFocalLoss: probabilities in (its forward applies no sigmoid), a
    one-channel input p is taken as [1 - p, p]."""
    fn = monai_losses.AsymmetricUnifiedFocalLoss(to_onehot_y=onehot, num_classes=probs.shape[1] if onehot else 2,
                                                 weight=focal_weight, delta=delta, gamma=gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(probs, target)


def _paper_multiclass(x, t, focal_weight, delta, gamma, eps=1e-7):
    """The paper's asymmetric unified focal loss for C classes, class 0 the background, written out
    as the authors' Keras code extends it (their issue 8, KiTS19), averaged over the classes as MONAI."""
    C = x.shape[1]
    p = torch.softmax(x, 1).clamp(eps, 1 - eps)
    y = F.one_hot(t, C).movedim(-1, 1).to(x.dtype)
    ce = -y * torch.log(p)
    back = (1 - delta) * torch.pow(1 - p[:, 0], gamma) * ce[:, 0]
    fore = delta * ce[:, 1:]
    focal = torch.cat([back.unsqueeze(1), fore], 1).mean()
    axes = tuple(range(2, x.ndim))
    tp, fn, fp = (y * p).sum(axes), (y * (1 - p)).sum(axes), ((1 - y) * p).sum(axes)
    ti = (tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps)
    tversky = torch.cat([(1 - ti[:, :1]), torch.pow(1 - ti[:, 1:], 1 - gamma)], 1).mean()
    return focal_weight * focal + (1 - focal_weight) * tversky


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "-".join(f"{v}" for v in p.values()))
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_binary_equals_monai_on_sigmoid_float64(dims, params):
    for seed, soft in ((0, False), (1, True)):
        x, t = make_case("binary", SPATIAL[dims], seed=seed)
        if soft:
            t = torch.rand(t.shape, generator=torch.Generator().manual_seed(seed), dtype=t.dtype)
        ours = AsymmetricUnifiedFocalLoss("binary", **params)(x, t)
        ref = _monai(torch.sigmoid(x), t, **params)
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(AsymmetricUnifiedFocalLoss("binary", **params)(x, t[:, 0]), ours, rtol=0, atol=0)
        torch.testing.assert_close(asymmetric_unified_focal_loss(x, t, "binary", **params), ours, rtol=0, atol=0)


@pytest.mark.parametrize("params", PARAMS[:2], ids=["paper", "other"])
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_multiclass_two_classes_equals_monai_on_softmax(dims, params):
    x, t = make_case("multiclass", SPATIAL[dims], classes=2, seed=2)
    ours = AsymmetricUnifiedFocalLoss("multiclass", **params)(x, t)
    torch.testing.assert_close(ours, _monai(torch.softmax(x, 1), t.unsqueeze(1), **params, onehot=True),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "-".join(f"{v}" for v in p.values()))
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_multiclass_follows_the_papers_formula(dims, params):
    for classes in (3, 5):
        x, t = make_case("multiclass", SPATIAL[dims], classes=classes, seed=classes)
        ours = AsymmetricUnifiedFocalLoss("multiclass", **params)(x, t)
        torch.testing.assert_close(ours, _paper_multiclass(x, t, **params), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_multilabel_is_the_mean_of_binary_losses_per_channel(dims):
    x, t = make_case("multilabel", SPATIAL[dims], classes=3, seed=6)
    ours = AsymmetricUnifiedFocalLoss("multilabel")(x, t)
    per_channel = [_monai(torch.sigmoid(x[:, c:c + 1]), t[:, c:c + 1], 0.5, 0.6, 0.5) for c in range(3)]
    torch.testing.assert_close(ours, torch.stack(per_channel).mean(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_ignored_pixels_change_nothing(mode):
    x, t = make_case(mode, (6, 7), ignore=True, seed=7)
    fn = AsymmetricUnifiedFocalLoss(mode, ignore_index=IGNORE)
    mask = (t == IGNORE) if mode != "multiclass" else (t == IGNORE).unsqueeze(1).expand_as(x)
    x2 = x.clone()
    x2[mask] = -40.0
    x.requires_grad_()
    loss = fn(x, t)
    loss.backward()
    assert fn(x2, t).item() == pytest.approx(loss.item(), rel=1e-12)
    assert (x.grad[mask] == 0).all() and x.grad.abs().sum() > 0


def test_ignored_pixels_are_out_of_every_count():
    # binary: ignoring pixels equals the loss of the batch cut down to the valid pixels
    x, t = make_case("binary", (1, 12), batch=1, ignore=True, seed=8)
    keep = t[0, 0, 0] != IGNORE
    got = AsymmetricUnifiedFocalLoss("binary", ignore_index=IGNORE)(x, t)
    expected = _monai(torch.sigmoid(x[..., keep]), t[..., keep], 0.5, 0.6, 0.5)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(mode):
    for spatial in ((3, 4), (2, 2, 3)):
        x, t = make_case(mode, spatial, ignore=True, seed=9)
        fn = AsymmetricUnifiedFocalLoss(mode, ignore_index=IGNORE)
        x.requires_grad_()
        assert torch.autograd.gradcheck(lambda z: fn(z, t), (x,), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_finite_under_bfloat16_autocast(mode):
    x, t = make_case(mode, (16, 16), dtype=torch.float32, seed=10)
    fn = AsymmetricUnifiedFocalLoss(mode)
    check_bf16_autocast(fn, x, t, rel=3e-2, abs=3e-3)


@pytest.mark.parametrize("mode", MODES)
def test_saturated_logits_keep_a_finite_gradient(mode):
    x, t = make_case(mode, (5, 6), dtype=torch.float32, seed=11)
    for scale in (40.0, 1e4):
        wrong = (-scale * torch.sign(x)).requires_grad_()  # confident everywhere, right or wrong
        loss = AsymmetricUnifiedFocalLoss(mode)(wrong, t)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(wrong.grad).all()
    # a confidently wrong foreground pixel keeps learning (MONAI's clamp at 1e-7 gives it no gradient)
    xb = torch.tensor([[[[-30.0, 5.0]]]], requires_grad=True)
    tb = torch.tensor([[[[1.0, 1.0]]]])
    AsymmetricUnifiedFocalLoss("binary")(xb, tb).backward()
    assert xb.grad[0, 0, 0, 0] < -0.01


@pytest.mark.parametrize("mode", MODES)
def test_empty_classes_and_perfect_predictions_are_defined(mode):
    x, t = make_case(mode, (5, 6), seed=12)
    t = torch.zeros_like(t)  # no foreground anywhere
    x.requires_grad_()
    loss = AsymmetricUnifiedFocalLoss(mode)(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # a perfect prediction: the focal term vanishes, the Tversky term of the absent foreground
    # stays near 1 (eps / (eps + (1 - delta) FP), FP >= eps per pixel): MONAI's behaviour
    if mode == "multiclass":
        perfect = F.one_hot(t, x.shape[1]).movedim(-1, 1).double() * 80.0 - 40.0
    else:
        perfect = torch.full_like(x, -40.0)
    fn = AsymmetricUnifiedFocalLoss(mode, focal_weight=1.0)
    assert fn(perfect, t).item() == pytest.approx(0.0, abs=1e-12)
    if mode == "binary":
        ref = _monai(torch.sigmoid(perfect), t, 0.0, 0.6, 0.5)
        torch.testing.assert_close(AsymmetricUnifiedFocalLoss(mode, focal_weight=0.0)(perfect, t), ref)
    # every pixel ignored: 0, zero gradient
    x.grad = None
    loss = AsymmetricUnifiedFocalLoss(mode, ignore_index=IGNORE)(x, torch.full_like(t, IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()


def test_bad_input_raises_clear_errors():
    for key in ("focal_weight", "delta", "gamma"):
        for bad in (-0.1, 1.5, True, "0.5", float("nan")):
            with pytest.raises(ValueError, match=rf"{key} must be a float in \[0, 1\]"):
                AsymmetricUnifiedFocalLoss("binary", **{key: bad})
    for bad in (0.0, 0.5, -1e-7):
        with pytest.raises(ValueError, match=r"eps must be a float in \(0, 0.5\)"):
            AsymmetricUnifiedFocalLoss("binary", eps=bad)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        AsymmetricUnifiedFocalLoss("multi-class")
    with pytest.raises(ValueError, match=r"binary mode expects logits with 1 channel"):
        AsymmetricUnifiedFocalLoss("binary")(torch.randn(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\]"):
        AsymmetricUnifiedFocalLoss("multiclass")(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match=r"multilabel target values must be in \[0, 1\]"):
        AsymmetricUnifiedFocalLoss("multilabel")(torch.randn(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0))
    with pytest.raises(TypeError):
        AsymmetricUnifiedFocalLoss("binary", 0.5)  # options are keyword-only


def test_module_attributes_and_repr():
    fn = AsymmetricUnifiedFocalLoss("multiclass", focal_weight=0.3, delta=0.7, gamma=0.2, eps=1e-6, ignore_index=IGNORE)
    assert (fn.mode, fn.focal_weight, fn.delta, fn.gamma, fn.eps, fn.ignore_index) == (
        "multiclass", 0.3, 0.7, 0.2, 1e-6, IGNORE)
    assert "focal_weight=0.3" in repr(fn) and not fn.state_dict()
