"""HausdorffDTLoss (equal to MONAI's HausdorffDTLoss / LogHausdorffDTLoss) and HausdorffERLoss
(equal to kornia's HausdorffERLoss / HausdorffERLoss3D): peers, maps given or computed,
ignore_index, gradients, autocast, empty classes and the errors of bad input."""

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

import seglosses
from seglosses.derived import distance_from_target
from seglosses.hausdorff import HausdorffDTLoss, HausdorffERLoss, hausdorff_dt_loss, hausdorff_er_loss

from _loss_cases import IGNORE, check_bf16_autocast, make_case

monai_losses = pytest.importorskip("monai.losses")
kornia_losses = pytest.importorskip("kornia.losses")

MODES = ["binary", "multiclass", "multilabel"]
SPATIAL = {"2d": (7, 8), "3d": (4, 5, 6)}


def _ignored(mode, x, t):
    if mode == "multiclass":
        return (t == IGNORE).unsqueeze(1).expand_as(x)
    return t == IGNORE


def _check_ignore_invariance(fn, mode, seed, spatial=(6, 7)):
    x, t = make_case(mode, spatial, ignore=True, seed=seed, batch=1)
    mask = _ignored(mode, x, t)
    x2 = x.clone()
    x2[mask] = 50.0  # would flip the thresholded prediction there
    x.requires_grad_()
    loss = fn(x, t)
    loss.backward()
    assert fn(x2, t).item() == pytest.approx(loss.item(), rel=1e-12)
    assert (x.grad[mask] == 0).all() and x.grad[~mask].abs().sum() > 0


# === HausdorffDTLoss vs MONAI ======================================================================

def _monai_dt(mode, log=False, **options):
    cls = monai_losses.LogHausdorffDTLoss if log else monai_losses.HausdorffDTLoss
    if mode == "multiclass":
        return cls(softmax=True, to_onehot_y=True, **options)
    return cls(sigmoid=True, **options)


def _monai_target(mode, t):
    return t.unsqueeze(1) if mode == "multiclass" else t


@pytest.mark.parametrize("dims", SPATIAL, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_dt_equals_monai_float64(mode, dims):
    settings = [(2.0, False, True), (1.5, True, True)]
    if mode != "binary":
        settings.append((2.0, False, False))
    for seed, (alpha, log, include_background) in enumerate(settings):
        x, t = make_case(mode, SPATIAL[dims], seed=seed)
        expected = _monai_dt(mode, log, alpha=alpha, include_background=include_background)(x, _monai_target(mode, t))
        fn = HausdorffDTLoss(mode, alpha=alpha, log=log, include_background=include_background)
        got = fn(x, t)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fn(x, t, distance=distance_from_target(t, mode, x.shape[1])), expected,
                                   rtol=1e-12, atol=1e-14)


def test_dt_empty_masks_are_per_image_and_channel_as_monai():
    """MONAI tests "empty or full" per image *and channel* (it calls distance_field on x[:, [i]]):
    a class absent from one image but present in the other, and a prediction empty in some
    channels, give the same numbers here."""
    x, t = make_case("multilabel", (6, 7), seed=8)
    t[1, 0] = 0.0  # channel 0 empty in image 1, present in image 0
    t[0, 2] = 1.0  # channel 2 full in image 0
    x[1, 1] = -5.0  # channel 1 predicted empty (p < 0.5) in image 1
    expected = _monai_dt("multilabel", include_background=True)(x, t)
    torch.testing.assert_close(HausdorffDTLoss("multilabel")(x, t), expected, rtol=1e-12, atol=1e-14)
    # both target and thresholded prediction empty: the class adds 0 whatever its soft errors
    z = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    assert HausdorffDTLoss("binary")(z - 0.5, z).item() == 0.0


def test_dt_where_it_differs_from_monai():
    """Deliberate differences, all documented: the default include_background (True, as every
    seglosses loss; MONAI: False), binary include_background=False (refused; MONAI warns and
    ignores it), ignore_index (MONAI has none)."""
    x, t = make_case("multiclass", (6, 7), seed=9)
    monai_default = monai_losses.HausdorffDTLoss(softmax=True, to_onehot_y=True)(x, t.unsqueeze(1))
    assert HausdorffDTLoss("multiclass")(x, t).item() != pytest.approx(monai_default.item())
    torch.testing.assert_close(HausdorffDTLoss("multiclass", include_background=False)(x, t), monai_default)
    with pytest.raises(ValueError, match="binary mode"):
        HausdorffDTLoss("binary", include_background=False)
    # ignore_index set but nothing ignored: MONAI's numbers
    torch.testing.assert_close(HausdorffDTLoss("multiclass", ignore_index=IGNORE)(x, t),
                               HausdorffDTLoss("multiclass")(x, t))


def test_dt_spacing_scales_both_fields():
    x, t = make_case("binary", (6, 7), seed=10)
    spacing = (0.5, 2.0)
    p = torch.sigmoid(x)

    def field(mask):
        out = np.zeros(mask.shape)
        for b in range(mask.shape[0]):
            m = mask[b, 0]
            if m.any() and not m.all():
                out[b, 0] = distance_transform_edt(m, sampling=spacing) + distance_transform_edt(~m, sampling=spacing)
        return torch.from_numpy(out).float().double()

    dp, dt = field((p > 0.5).numpy()), field((t > 0.5).numpy())
    expected = ((p - t) ** 2 * (dp ** 2 + dt ** 2)).mean()
    got = HausdorffDTLoss("binary", spacing=spacing)(x, t)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)
    maps = distance_from_target(t, "binary", 1, spacing)
    torch.testing.assert_close(hausdorff_dt_loss(x, t, "binary", distance=maps, spacing=spacing), got)


@pytest.mark.parametrize("mode", MODES)
def test_dt_given_distance_equals_computed_and_ignore(mode):
    x, t = make_case(mode, (6, 7), ignore=True, seed=11)
    fn = HausdorffDTLoss(mode, ignore_index=IGNORE)
    maps = distance_from_target(t, mode, x.shape[1])
    torch.testing.assert_close(fn(x, t, distance=maps), fn(x, t), rtol=0, atol=0)
    assert HausdorffDTLoss.derived_targets == ("distance",)
    torch.testing.assert_close(seglosses.CombinedLoss({"hd": fn})(x, t, distance=maps), fn(x, t))
    _check_ignore_invariance(fn, mode, seed=12)


def test_dt_ignore_mean_over_valid_pixels():
    x, t = make_case("multiclass", (6, 7), ignore=True, seed=13)
    valid = (t != IGNORE).unsqueeze(1)
    p = x.softmax(1)
    oh = torch.nn.functional.one_hot(torch.where(valid[:, 0], t, 0), 3).movedim(-1, 1).double() * valid
    dt = distance_from_target(t, "multiclass", 3).abs().double()
    masks = (p * valid > 0.5).numpy()  # the prediction's masks, ignored pixels in none
    dp = torch.from_numpy(np.stack([[np.abs(_signed(m)) for m in img] for img in masks])).double()
    expected = (((p - oh) ** 2 * (dp ** 2 + dt ** 2) * valid).sum((0, 2, 3)) / valid.sum()).mean()
    torch.testing.assert_close(HausdorffDTLoss("multiclass", ignore_index=IGNORE)(x, t), expected,
                               rtol=1e-6, atol=1e-8)


def _signed(mask):
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, np.float32)
    return (distance_transform_edt(~mask) - distance_transform_edt(mask)).astype(np.float32)


@pytest.mark.parametrize("mode", MODES)
def test_dt_gradcheck_float64(mode):
    x, t = make_case(mode, (3, 4), ignore=True, seed=14, batch=1)
    fn = HausdorffDTLoss(mode, ignore_index=IGNORE, log=mode == "multilabel")
    maps = distance_from_target(t, mode, x.shape[1])
    x.requires_grad_()
    # fast_mode (a random projection of the Jacobian) beyond binary: the suite's time budget
    assert torch.autograd.gradcheck(lambda z: fn(z, t, distance=maps), (x,), eps=1e-6, atol=1e-7,
                                    fast_mode=mode != "binary")


# === HausdorffERLoss vs kornia ====================================================================

def _kornia_er(mode, x, t, alpha=2.0, k=10, exact_kernel=False):
    """kornia's loss on the same logits: it takes probabilities and integer labels [B, 1, *] and
    compares channel c with label == c (see HausdorffERLoss's docstring for the mapping)."""
    cls = kornia_losses.HausdorffERLoss if x.ndim == 4 else kornia_losses.HausdorffERLoss3D
    fn = cls(alpha=alpha, k=k)
    if exact_kernel:  # its weights 0.2 / (1/7) in float64 instead of float32
        fn.kernel = (fn.kernel != 0).double() / (fn.kernel != 0).sum()
    if mode == "multiclass":
        return fn(x.softmax(1), t.unsqueeze(1))
    p = torch.sigmoid(x)
    per_channel = [fn(torch.cat([1 - p[:, [c]], p[:, [c]]], 1), t[:, [c]].long()) for c in range(x.shape[1])]
    return torch.stack(per_channel).mean()


@pytest.mark.parametrize("dims", SPATIAL, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_er_equals_kornia(mode, dims):
    for seed, (alpha, k, exact) in enumerate([(2.0, 10, False), (1.5, 3, True)]):
        x, t = make_case(mode, SPATIAL[dims], seed=seed)
        got = HausdorffERLoss(mode, alpha=alpha, erosions=k)(x, t)
        assert got.dtype == torch.float64
        # kornia's kernel weights are float32: ~1e-7 relative in float64; with them exact, rounding
        tol = {"rtol": 1e-12, "atol": 1e-15} if exact else {"rtol": 1e-6, "atol": 1e-9}
        torch.testing.assert_close(got, _kornia_er(mode, x, t, alpha, k, exact_kernel=exact), **tol)


@pytest.mark.parametrize("dims", SPATIAL, ids=str)
def test_er_gradient_equals_kornia(dims):
    x, t = make_case("multiclass", SPATIAL[dims], seed=15)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    HausdorffERLoss("multiclass")(a, t).backward()
    _kornia_er("multiclass", b, t, exact_kernel=True).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-15)


def test_er_include_background_and_perfect_prediction():
    x, t = make_case("multiclass", (7, 8), seed=16)
    torch.testing.assert_close(hausdorff_er_loss(x, t, "multiclass"), HausdorffERLoss("multiclass")(x, t))
    fg = HausdorffERLoss("multiclass", include_background=False)(x, t)
    kornia = kornia_losses.HausdorffERLoss(reduction="none")
    kornia.kernel = (kornia.kernel != 0).double() / 5
    per_class = kornia(x.softmax(1), t.unsqueeze(1))  # [C, B, 1, H, W]
    torch.testing.assert_close(fg, per_class[1:].mean(), rtol=1e-12, atol=1e-15)
    perfect = (torch.nn.functional.one_hot(t, 3).movedim(-1, 1).double() * 2 - 1) * 60
    perfect.requires_grad_()
    loss = HausdorffERLoss("multiclass")(perfect, t)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(perfect.grad).all()


@pytest.mark.parametrize("mode", MODES)
def test_er_ignored_pixels_change_nothing(mode):
    # not too small: where the first erosion leaves a single pixel its normalised value is 1 whatever
    # the logits, and the whole gradient vanishes (as kornia's)
    _check_ignore_invariance(HausdorffERLoss(mode, ignore_index=IGNORE), mode, seed=17, spatial=(10, 10))


@pytest.mark.parametrize("mode", MODES)
def test_er_gradcheck_float64(mode):
    x, t = make_case(mode, (4, 5), ignore=mode == "multilabel", seed=18, batch=1)
    fn = HausdorffERLoss(mode, erosions=3, ignore_index=IGNORE)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: fn(z, t), (x,), eps=1e-6, atol=1e-7, fast_mode=mode != "binary")


# === both: precision, empty classes, bad input ===================================================

@pytest.mark.parametrize("loss", ["dt", "er"])
@pytest.mark.parametrize("mode", MODES)
def test_finite_under_bfloat16_autocast(mode, loss):
    x, t = make_case(mode, (12, 12), dtype=torch.float32)
    fn = HausdorffDTLoss(mode) if loss == "dt" else HausdorffERLoss(mode)
    check_bf16_autocast(fn, x, t, rel=0.1, abs=1e-2)


@pytest.mark.parametrize("cls", [HausdorffDTLoss, HausdorffERLoss])
def test_empty_classes_are_defined(cls):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(2, 5, 6, dtype=torch.long)  # classes 1 and 2 absent, class 0 everywhere
    loss = cls("multiclass")(x, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    if cls is HausdorffDTLoss:
        torch.testing.assert_close(loss, _monai_dt("multiclass", include_background=True)(x, t.unsqueeze(1)))
    else:
        torch.testing.assert_close(loss, _kornia_er("multiclass", x, t), rtol=1e-6, atol=1e-9)
    y = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    logits = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    assert cls("multilabel", ignore_index=IGNORE)(logits, y + IGNORE).item() == 0.0  # every pixel ignored


def test_bad_input_raises_clear_errors():
    x, t = make_case("multiclass", (5, 6))
    maps = distance_from_target(t, "multiclass", 3)
    for cls in (HausdorffDTLoss, HausdorffERLoss):
        for alpha in (0.0, -1.0, float("nan"), float("inf"), True, "2"):
            with pytest.raises(ValueError, match=r"alpha .* must be a finite float > 0"):
                cls("binary", alpha=alpha)
        with pytest.raises(ValueError, match=r"include_background=False .* binary mode"):
            cls("binary", include_background=False)
        with pytest.raises(ValueError, match=r"2D or 3D"):
            cls("multiclass")(x[..., 0], t[..., 0])
        with pytest.raises(ValueError, match=r"multiclass target must have shape"):
            cls("multiclass")(x, t[:, :4])
        with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\]"):
            cls("multiclass")(x, t + 3)
        with pytest.raises(TypeError):
            cls("binary", 2.0)  # options are keyword-only
    for erosions in (0, -2, 1.5, True, None):
        with pytest.raises(ValueError, match=r"erosions must be an int >= 1"):
            HausdorffERLoss("binary", erosions=erosions)
    with pytest.raises(ValueError, match=r"log must be True or False"):
        HausdorffDTLoss("binary", log="yes")
    fn = HausdorffDTLoss("multiclass")
    with pytest.raises(ValueError, match=r"distance must have the logits' shape"):
        fn(x, t, distance=maps[..., :3])
    with pytest.raises(ValueError, match=r"distance must be a floating-point tensor"):
        fn(x, t, distance=maps > 0)
    with pytest.raises(ValueError, match=r"spacing must hold finite sizes > 0"):
        HausdorffDTLoss("binary", spacing=[float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"spacing has 1 values"):
        HausdorffDTLoss("multiclass", spacing=[1.0])(x, t)
    with pytest.raises(TypeError):
        HausdorffERLoss("binary")(x[:, :1], t, distance=maps)  # no derived target
    assert HausdorffERLoss.derived_targets == ()
    assert "erosions=10" in repr(HausdorffERLoss("binary")) and "alpha=2.0" in repr(HausdorffDTLoss("binary"))
