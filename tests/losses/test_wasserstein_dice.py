"""GeneralizedWassersteinDiceLoss equals MONAI's; its distance matrix is validated; ignore_index,
gradients, bf16 and the multiclass-only rule."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from seglosses.wasserstein_dice import GeneralizedWassersteinDiceLoss, generalized_wasserstein_dice_loss

from _loss_cases import IGNORE, check_bf16_autocast, make_case

monai_losses = pytest.importorskip("monai.losses")

# 4 classes: background far from everything, classes 1-3 closer to each other (unnormalised: max 2)
M4 = [[0.0, 2.0, 2.0, 2.0], [2.0, 0.0, 1.0, 1.4], [2.0, 1.0, 0.0, 0.4], [2.0, 1.4, 0.4, 0.0]]
SPATIAL = {"2d": (6, 7), "3d": (3, 4, 5)}


def _monai(matrix, **kwargs):
    return monai_losses.GeneralizedWassersteinDiceLoss(np.asarray(matrix, dtype=np.float64), **kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighting_mode", ["default", "GDL"])
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_equals_monai_float64(dims, weighting_mode, reduction):
    # MONAI builds the GDL weights 1/(volume+1) in float32: agreement to float32 rounding there
    tol = dict(rtol=1e-12, atol=1e-12) if weighting_mode == "default" else dict(rtol=1e-6, atol=1e-7)
    for seed, (nr, dr) in enumerate([(1e-5, 1e-5), (0.0, 1e-3), (1.0, 1.0)]):
        x, t = make_case("multiclass", SPATIAL[dims], batch=3, classes=4, seed=seed)
        ours = GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=M4, weighting_mode=weighting_mode,
                                              smooth_nr=nr, smooth_dr=dr, reduction=reduction)(x, t)
        ref = _monai(M4, weighting_mode=weighting_mode, smooth_nr=nr, smooth_dr=dr, reduction=reduction)(x, t)
        assert ours.dtype == torch.float64 and ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, **tol)
        functional = generalized_wasserstein_dice_loss(x, t, "multiclass", dist_matrix=M4, smooth_nr=nr, smooth_dr=dr,
                                                       weighting_mode=weighting_mode, reduction=reduction)
        torch.testing.assert_close(functional, ours, rtol=0, atol=0)


def test_default_matrix_is_one_minus_identity_and_matrix_forms_agree():
    x, t = make_case("multiclass", (5, 6), classes=3, seed=3)
    ref = _monai(1.0 - np.eye(3))(x, t)
    torch.testing.assert_close(GeneralizedWassersteinDiceLoss("multiclass")(x, t), ref, rtol=1e-12, atol=1e-12)
    m = [[0, 1, 0.5], [1, 0, 0.25], [0.5, 0.25, 0]]
    forms = [m, np.asarray(m), torch.tensor(m), OmegaConf.create({"m": m}).m]  # a config gives a ListConfig
    values = [GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=f)(x, t) for f in forms]
    for v in values:
        torch.testing.assert_close(v, _monai(m)(x, t), rtol=1e-12, atol=1e-12)
    # with 1 - I every pixel costs 1 - p_t: a Dice of the foreground classes pooled together
    p = torch.softmax(x, 1)
    p_t = p.gather(1, t.unsqueeze(1)).squeeze(1)
    fg = (t != 0).double()
    tp = (fg * p_t).sum((1, 2))
    err = (1 - p_t).sum((1, 2))
    expected = (1 - (2 * tp + 1e-5) / (2 * tp + err + 1e-5)).mean()
    torch.testing.assert_close(GeneralizedWassersteinDiceLoss("multiclass")(x, t), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weighting_mode", ["default", "GDL"])
def test_ignored_pixels_change_nothing(weighting_mode):
    x, t = make_case("multiclass", (6, 7), classes=4, ignore=True, seed=4)
    fn = GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=M4, weighting_mode=weighting_mode,
                                        ignore_index=IGNORE)
    mask = (t == IGNORE).unsqueeze(1).expand_as(x)
    x2 = x.clone()
    x2[mask] = 80.0
    x.requires_grad_()
    loss = fn(x, t)
    loss.backward()
    assert fn(x2, t).item() == pytest.approx(loss.item(), rel=1e-12)
    assert (x.grad[mask] == 0).all() and x.grad.abs().sum() > 0
    # equal to MONAI on a crop holding only the valid pixels of each image (one row per image here)
    keep = t != IGNORE
    rows_x = [x.detach()[b][:, keep[b]].reshape(1, 4, -1) for b in range(t.shape[0])]
    rows_t = [t[b][keep[b]].reshape(1, -1) for b in range(t.shape[0])]
    ref = torch.stack([_monai(M4, weighting_mode=weighting_mode)(rx, rt) for rx, rt in zip(rows_x, rows_t)]).mean()
    tol = dict(rtol=1e-12, atol=1e-12) if weighting_mode == "default" else dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss.detach(), ref, **tol)


@pytest.mark.parametrize("weighting_mode", ["default", "GDL"])
def test_gradcheck_float64(weighting_mode):
    for spatial in ((2, 3), (2, 2, 2)):
        x, t = make_case("multiclass", spatial, classes=4, ignore=True, seed=5)
        fn = GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=M4, weighting_mode=weighting_mode,
                                            ignore_index=IGNORE)
        x.requires_grad_()
        assert torch.autograd.gradcheck(lambda z: fn(z, t), (x,), eps=1e-6, atol=1e-7, fast_mode=True)


def test_finite_under_bfloat16_autocast():
    x, t = make_case("multiclass", (16, 16), classes=4, dtype=torch.float32, seed=6)
    fn = GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=M4)
    check_bf16_autocast(fn, x, t, rel=3e-2, abs=3e-3)


@pytest.mark.parametrize("weighting_mode", ["default", "GDL"])
def test_background_only_images_and_all_ignored_are_defined(weighting_mode):
    x, t = make_case("multiclass", (5, 6), classes=3, seed=7)
    t[1] = 0  # image 1: background only
    perfect = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).double() * 60.0 - 30.0
    fn = GeneralizedWassersteinDiceLoss("multiclass", weighting_mode=weighting_mode, reduction="none")
    per_image = fn(perfect, t)
    assert torch.isfinite(per_image).all() and per_image[1].item() == pytest.approx(0.0, abs=1e-9)
    ref = _monai(1 - np.eye(3), weighting_mode=weighting_mode, reduction="none")(perfect, t)
    torch.testing.assert_close(per_image, ref, rtol=1e-6, atol=1e-9)
    if weighting_mode == "default":  # predicting foreground on it costs ~1: it has no true positives
        assert fn(x, t)[1].item() > 0.99
    # every pixel ignored (and no smoothing): 0 with zero gradient, not 0/0
    x.requires_grad_()
    fn0 = GeneralizedWassersteinDiceLoss("multiclass", weighting_mode=weighting_mode, smooth_nr=0.0, smooth_dr=0.0,
                                         ignore_index=IGNORE)
    loss = fn0(x, torch.full_like(t, IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()
    # one image fully ignored: left out of the mean
    t2 = t.clone()
    t2[0] = IGNORE
    both = GeneralizedWassersteinDiceLoss("multiclass", weighting_mode=weighting_mode, ignore_index=IGNORE)
    torch.testing.assert_close(both(x.detach(), t2), both(x.detach()[1:], t2[1:]))
    assert both.__class__("multiclass", ignore_index=IGNORE, reduction="none")(x.detach(), t2)[0].item() == 0.0


def test_bad_dist_matrix_and_options_raise_clear_errors():
    x, t = make_case("multiclass", (4, 4), classes=3)
    bad = [
        ([[0, 1], [1, 0], [1, 1]], r"must be square"),
        ([[0, 1, 1], [1, 0]], r"must be square|square list of lists"),
        ([[0]], r"C >= 2"),
        ([[0, -1, 1], [1, 0, 1], [1, 1, 0]], r"finite and >= 0"),
        ([[0, float("nan"), 1], [1, 0, 1], [1, 1, 0]], r"finite and >= 0"),
        ([[1, 1, 1], [1, 0, 1], [1, 1, 0]], r"zero diagonal"),
        ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], r"all zeros"),
        ("0 1; 1 0", r"square list of lists"),
        ([0, 1, 1], r"square list of lists"),
        ([["a", "b"], ["c", "d"]], r"must hold numbers"),
    ]
    for matrix, match in bad:
        with pytest.raises(ValueError, match=match):
            GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=matrix)
        with pytest.raises(ValueError, match=match):
            generalized_wasserstein_dice_loss(x, t, dist_matrix=matrix)
    with pytest.raises(ValueError, match=r"dist_matrix is 2 x 2 but the logits have 3 classes"):
        GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=[[0, 1], [1, 0]])(x, t)
    for mode in ("binary", "multilabel"):
        with pytest.raises(ValueError, match=r"multiclass only"):
            GeneralizedWassersteinDiceLoss(mode)
        with pytest.raises(ValueError, match=r"multiclass only"):
            generalized_wasserstein_dice_loss(x, t, mode)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        GeneralizedWassersteinDiceLoss("multi-class")
    with pytest.raises(ValueError, match=r"weighting_mode must be one of"):
        GeneralizedWassersteinDiceLoss("multiclass", weighting_mode="gdl")
    with pytest.raises(ValueError, match=r"smooth_dr must be a finite float >= 0"):
        GeneralizedWassersteinDiceLoss("multiclass", smooth_dr=-1.0)
    with pytest.raises(ValueError, match=r"ignore_index must be an int"):
        GeneralizedWassersteinDiceLoss("multiclass", ignore_index=0.5)
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        GeneralizedWassersteinDiceLoss("multiclass", reduction="max")
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\]"):
        GeneralizedWassersteinDiceLoss("multiclass")(x, t + 3)
    with pytest.raises(ValueError, match=r"multiclass target must hold integer class indices"):
        GeneralizedWassersteinDiceLoss("multiclass")(x, t.double())


def test_module_buffer_and_repr():
    fn = GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=M4, weighting_mode="GDL", ignore_index=IGNORE)
    assert fn.dist_matrix.max().item() == 1.0 and fn.dist_matrix[0, 1].item() == 1.0  # scaled as MONAI
    assert "dist_matrix" in dict(fn.named_buffers()) and not fn.state_dict()
    assert fn.to(torch.float32).dist_matrix.dtype == torch.float32
    assert (fn.mode, fn.weighting_mode, fn.ignore_index, fn.reduction) == ("multiclass", "GDL", IGNORE, "mean")
    assert "classes=4" in repr(fn) and "weighting_mode='GDL'" in repr(fn)
    with pytest.raises(TypeError):
        GeneralizedWassersteinDiceLoss("multiclass", M4)  # options are keyword-only
