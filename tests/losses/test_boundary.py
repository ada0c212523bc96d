"""BoundaryLoss (Kervadec et al. 2019): equal to MONAI's BoundaryLoss and to the authors' formula
(LIVIAETS/boundary-loss SurfaceLoss + one_hot2dist, written out below), ignore_index, maps given
or computed, gradients, autocast, empty classes and the errors of bad input."""

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

import seglosses
from seglosses.boundary import BoundaryLoss, boundary_loss
from seglosses.derived import distance_from_target

from _loss_cases import IGNORE, check_bf16_autocast, make_case

monai_losses = pytest.importorskip("monai.losses")

MODES = ["binary", "multiclass", "multilabel"]
SPATIAL = {"2d": (7, 8), "3d": (4, 5, 6)}


def _monai(mode, include_background=True):
    if mode == "multiclass":
        return monai_losses.BoundaryLoss(include_background=include_background, softmax=True, to_onehot_y=True)
    return monai_losses.BoundaryLoss(include_background=include_background, sigmoid=True)


def _monai_target(mode, t):
    return t.unsqueeze(1) if mode == "multiclass" else t


def _ignored(mode, x, t):
    """Bool mask of the logits' entries at ignored pixels."""
    if mode == "multiclass":
        return (t == IGNORE).unsqueeze(1).expand_as(x)
    return t == IGNORE


# --- the peers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", SPATIAL, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_equals_monai_float64(mode, dims):
    for include_background in ([True] if mode == "binary" else [True, False]):
        for seed in range(2):
            x, t = make_case(mode, SPATIAL[dims], seed=seed)
            expected = _monai(mode, include_background)(x, _monai_target(mode, t))
            got = BoundaryLoss(mode, include_background=include_background)(x, t)
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
            maps = distance_from_target(t, mode, x.shape[1])
            given = boundary_loss(x, t, mode, distance=maps, include_background=include_background)
            torch.testing.assert_close(given, expected, rtol=1e-12, atol=1e-14)


def _one_hot2dist(seg, resolution=None):
    """LIVIAETS/boundary-loss utils.one_hot2dist (in float64; their dtype argument)."""
    res = np.zeros(seg.shape, dtype=np.float64)
    for k in range(len(seg)):
        posmask = seg[k].astype(bool)
        if posmask.any():
            negmask = ~posmask
            res[k] = distance_transform_edt(negmask, sampling=resolution) * negmask \
                - (distance_transform_edt(posmask, sampling=resolution) - 1) * posmask
    return res


def _surface_loss(probs, dist_maps, idc):
    """LIVIAETS/boundary-loss losses.SurfaceLoss: einsum("bkwh,bkwh->bkwh", pc, dc).mean()."""
    return (probs[:, idc] * dist_maps[:, idc]).mean()


@pytest.mark.parametrize("spacing", [None, (0.5, 1.5)], ids=["unit", "spacing"])
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_equals_the_authors_formula(mode, spacing):
    x, t = make_case(mode, (9, 8), seed=3)
    if mode == "multiclass":
        probs = x.softmax(1)
        seg = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).numpy()
        cases = [([0, 1, 2], True), ([1, 2], False)]  # idc=[1, ...] is the paper's foreground-only setting
    else:  # the authors' binary setting: softmax over (background, foreground), idc=[1]
        p = torch.sigmoid(x)
        probs = torch.cat([1 - p, p], 1)
        seg = torch.cat([1 - t, t], 1).numpy().astype(np.int64)
        cases = [([1], True)]
    dist = torch.from_numpy(np.stack([_one_hot2dist(s, spacing) for s in seg]))
    for idc, include_background in cases:
        expected = _surface_loss(probs, dist, idc)
        got = boundary_loss(x, t, mode, include_background=include_background, spacing=spacing)
        # our maps are float32, as MONAI's; the authors' here float64
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_soft_targets_are_binarised_as_monai():
    x, t = make_case("multilabel", (6, 7), seed=1)
    soft = t * 0.8 + 0.1  # label smoothing: MONAI's maps see t > 0.5
    expected = _monai("multilabel")(x, soft)
    torch.testing.assert_close(BoundaryLoss("multilabel")(x, soft), expected, rtol=1e-12, atol=1e-14)


# --- the derived map, ignore_index ------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_given_distance_equals_computed(mode):
    x, t = make_case(mode, (6, 7), ignore=True, seed=2)
    fn = BoundaryLoss(mode, ignore_index=IGNORE)
    maps = distance_from_target(t, mode, x.shape[1])
    assert maps.dtype == torch.float32 and maps.shape == x.shape
    torch.testing.assert_close(fn(x, t, distance=maps), fn(x, t), rtol=0, atol=0)
    combo = seglosses.CombinedLoss({"boundary": fn})
    assert combo.derived_targets() == ("distance",) and BoundaryLoss.derived_targets == ("distance",)
    torch.testing.assert_close(combo(x, t, distance=maps), fn(x, t))
    # the given map is used as it is (it is not recomputed from the target)
    assert fn(x, t, distance=maps * 2).item() != pytest.approx(fn(x, t).item())
    if mode == "binary":  # a [B, *spatial] target: the maps keep their channel, [B, 1, *spatial]
        torch.testing.assert_close(fn(x, t[:, 0], distance=maps), fn(x, t), rtol=0, atol=0)


def test_ignore_index_mean_over_valid_pixels():
    mode = "multiclass"
    x, t = make_case(mode, (6, 7), ignore=True, seed=4)
    valid = (t != IGNORE).unsqueeze(1).double()
    d = distance_from_target(t, mode, 3).double()  # ignored pixels are in no class
    phi = torch.where(d < 0, d + 1, d)
    expected = (x.softmax(1) * phi * valid).sum((0, 2, 3)) / valid.sum()
    got = BoundaryLoss(mode, ignore_index=IGNORE)(x, t)
    torch.testing.assert_close(got, expected.mean(), rtol=1e-12, atol=1e-14)
    # no pixel ignored: ignore_index changes nothing (MONAI's plain mean)
    x, t = make_case(mode, (6, 7), seed=4)
    torch.testing.assert_close(BoundaryLoss(mode, ignore_index=IGNORE)(x, t), _monai(mode)(x, t.unsqueeze(1)))


@pytest.mark.parametrize("mode", MODES)
def test_ignored_pixels_change_nothing(mode):
    x, t = make_case(mode, (6, 7), ignore=True, seed=5)
    fn = BoundaryLoss(mode, ignore_index=IGNORE)
    mask = _ignored(mode, x, t)
    x2 = x.clone()
    x2[mask] = 100.0
    x.requires_grad_()
    loss = fn(x, t)
    loss.backward()
    assert fn(x2, t).item() == pytest.approx(loss.item(), rel=1e-12)
    assert (x.grad[mask] == 0).all() and x.grad[~mask].abs().sum() > 0


def test_every_pixel_ignored_is_zero_with_a_graph():
    x, t = make_case("multilabel", (4, 5))
    x.requires_grad_()
    loss = BoundaryLoss("multilabel", ignore_index=IGNORE)(x, torch.full_like(t, IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()


# --- gradients, precision, empty classes ---------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(mode):
    x, t = make_case(mode, (3, 4), ignore=True, seed=6)
    fn = BoundaryLoss(mode, ignore_index=IGNORE)
    maps = distance_from_target(t, mode, x.shape[1])
    x.requires_grad_()
    # fast_mode (a random projection of the Jacobian) beyond binary: the suite's time budget
    assert torch.autograd.gradcheck(lambda z: fn(z, t, distance=maps), (x,), eps=1e-6, atol=1e-8,
                                    fast_mode=mode != "binary")


@pytest.mark.parametrize("mode", MODES)
def test_finite_under_bfloat16_autocast(mode):
    x, t = make_case(mode, (12, 12), dtype=torch.float32)
    fn = BoundaryLoss(mode)
    check_bf16_autocast(fn, x, t, rel=3e-2, abs=2e-2)


def test_empty_and_full_classes_add_nothing():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(2, 5, 6, dtype=torch.long)  # class 0 covers everything; 1 and 2 are absent
    loss = BoundaryLoss("multiclass")(x, t)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss, _monai("multiclass")(x, t.unsqueeze(1)))
    # binary: an empty image adds 0; a partly empty batch is the mean over all images
    xb, tb = make_case("binary", (5, 6), seed=7)
    tb[1] = 0
    torch.testing.assert_close(BoundaryLoss("binary")(xb, tb), _monai("binary")(xb, tb), rtol=1e-12, atol=1e-14)
    assert BoundaryLoss("binary")(xb[1:], tb[1:]).item() == 0.0


# --- bad input ----------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors():
    x, t = make_case("multiclass", (5, 6))
    maps = distance_from_target(t, "multiclass", 3)
    fn = BoundaryLoss("multiclass")
    with pytest.raises(ValueError, match=r"distance must have the logits' shape .*\[2, 3, 5, 6\]"):
        fn(x, t, distance=maps[:, 1:])
    with pytest.raises(ValueError, match=r"distance must be a floating-point tensor"):
        fn(x, t, distance=maps.long())
    with pytest.raises(ValueError, match=r"distance must be a torch.Tensor"):
        fn(x, t, distance=maps.numpy())
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        fn(x, t, distance=torch.full_like(maps, float("nan")))
    with pytest.raises(ValueError, match=r"2D or 3D"):
        fn(x[..., 0], t[..., 0])
    with pytest.raises(ValueError, match=r"multiclass target must have shape"):
        fn(x, t[:, :4])
    with pytest.raises(ValueError, match=r"spacing must hold finite sizes > 0"):
        BoundaryLoss("binary", spacing=[1.0, float("inf")])
    with pytest.raises(ValueError, match=r"spacing must hold finite sizes > 0"):
        BoundaryLoss("binary", spacing=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"spacing must be a list"):
        BoundaryLoss("binary", spacing=1.0)
    with pytest.raises(ValueError, match=r"spacing has 3 values but the logits .* have 2 spatial axes"):
        BoundaryLoss("multiclass", spacing=[1.0, 1.0, 1.0])(x, t)
    with pytest.raises(ValueError, match=r"include_background=False .* binary mode"):
        BoundaryLoss("binary", include_background=False)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        BoundaryLoss("multi-class")
    with pytest.raises(TypeError):
        BoundaryLoss("binary", True)  # options are keyword-only


def test_module_repr_and_functional_agree():
    fn = BoundaryLoss("multiclass", include_background=False, ignore_index=IGNORE, spacing=[1, 2])
    assert fn.spacing == (1.0, 2.0)
    assert "include_background=False" in repr(fn) and "ignore_index=255" in repr(fn)
    x, t = make_case("multiclass", (5, 6), ignore=True)
    torch.testing.assert_close(
        fn(x, t), boundary_loss(x, t, "multiclass", include_background=False, ignore_index=IGNORE, spacing=[1, 2]))
