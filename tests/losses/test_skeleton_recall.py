"""SkeletonRecallLoss (Kirchhoff et al., ECCV 2024) against the authors' SoftSkeletonRecallLoss formula,
with the skeleton given or computed, ignore_index, gradients, bf16 and bad input."""

import pytest
import torch

from seglosses import CombinedLoss, CrossEntropyLoss
from seglosses.derived import skeleton_from_target, tubed_skeleton
from seglosses.skeleton_recall import SkeletonRecallLoss, skeleton_recall_loss

from _loss_cases import IGNORE, check_bf16_autocast, make_case

MODES = ["binary", "multiclass", "multilabel"]
SPATIAL = {"2d": (9, 10), "3d": (4, 6, 7)}


def _their_loss(x, y, batch_dice, smooth, loss_mask=None):
    """MIC-DKFZ/Skeleton-Recall nnunetv2/training/loss/dice.py SoftSkeletonRecallLoss.forward
    (do_bg=False, ddp off), written out: ``x`` softmax probabilities [B, C, *], ``y`` the
    skeleton as a label map [B, 1, *] (or already one-hot, same shape as x)."""
    shp_x, shp_y = x.shape, y.shape
    x = x[:, 1:]
    axes = list(range(2, len(shp_x)))
    with torch.no_grad():
        if len(shp_x) != len(shp_y):
            y = y.view((shp_y[0], 1, *shp_y[1:]))
        if all(i == j for i, j in zip(shp_x, y.shape)):
            y_onehot = y[:, 1:]
        else:
            gt = y.long()
            y_onehot = torch.zeros(shp_x, device=x.device, dtype=x.dtype)
            y_onehot.scatter_(1, gt, 1)
            y_onehot = y_onehot[:, 1:]
        sum_gt = y_onehot.sum(axes) if loss_mask is None else (y_onehot * loss_mask).sum(axes)
    inter_rec = (x * y_onehot).sum(axes) if loss_mask is None else (x * y_onehot * loss_mask).sum(axes)
    if batch_dice:
        inter_rec = inter_rec.sum(0)
        sum_gt = sum_gt.sum(0)
    rec = (inter_rec + smooth) / (torch.clip(sum_gt + smooth, 1e-8))
    return -rec.mean()


def _reference(mode, x, t, skel, per_image, smooth, ignore):
    """1 + their loss, with the inputs laid out as their trainer does (DC_SkelREC_and_CE_loss:
    ignored pixels set to 0 in the skeleton and masked out with loss_mask)."""
    if mode == "multiclass":
        mask = None if not ignore else (t != IGNORE).unsqueeze(1).to(x.dtype)
        s = skel if mask is None else torch.where(mask[:, 0].bool(), skel, 0)
        return 1.0 + _their_loss(torch.softmax(x, 1), s.unsqueeze(1), not per_image, smooth, mask)
    # sigmoid channels: each is a foreground class of its own; a zero channel 0 stands for the
    # background that their softmax code drops, and the skeleton is passed already one-hot
    t = t if t.ndim == x.ndim else t.unsqueeze(1)
    skel = skel if skel.ndim == x.ndim else skel.unsqueeze(1)
    mask = None if not ignore else (t != IGNORE).to(x.dtype)
    zeros = torch.zeros_like(x[:, :1])
    probs = torch.cat([zeros, torch.sigmoid(x)], 1)
    y = torch.cat([zeros, skel.to(x.dtype) * (1.0 if mask is None else mask)], 1)
    mask = None if mask is None else torch.cat([zeros + 1, mask], 1)[:, 1:]
    return 1.0 + _their_loss(probs, y, not per_image, smooth, mask)


def _skeleton(mode, t, ignore):
    return skeleton_from_target(t, mode, IGNORE if ignore else None)


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("dims", ["2d", "3d"])
@pytest.mark.parametrize("mode", MODES)
def test_equals_the_authors_formula_float64(mode, dims, per_image, ignore):
    for seed, smooth in ((0, 1.0), (1, 1e-5), (2, 0.0)):
        x, t = make_case(mode, SPATIAL[dims], classes=4, ignore=ignore, seed=seed)
        skel = _skeleton(mode, t, ignore)
        ii = IGNORE if ignore else None
        got = SkeletonRecallLoss(mode, smooth=smooth, per_image=per_image, ignore_index=ii)(x, t, skeleton=skel)
        expected = _reference(mode, x, t, skel, per_image, smooth, ignore)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        functional = skeleton_recall_loss(x, t, mode, skeleton=skel, smooth=smooth, per_image=per_image,
                                          ignore_index=ii)
        torch.testing.assert_close(functional, got, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_computed_skeleton_equals_the_given_one(mode):
    x, t = make_case(mode, (12, 11), classes=3, ignore=True, seed=3)
    fn = SkeletonRecallLoss(mode, ignore_index=IGNORE)
    given = skeleton_from_target(t, mode, IGNORE)
    # skeleton_from_target is tubed_skeleton image by image, in the mask's layout and dtype
    one = tubed_skeleton(t[1].numpy(), mode, IGNORE)
    assert given.dtype == t.dtype and tuple(given[1].shape) == one.shape and (given[1].numpy() == one).all()
    assert torch.equal(fn(x, t), fn(x, t, skeleton=given))
    if mode == "binary":  # a [B, *] target and skeleton give the same as [B, 1, *]
        torch.testing.assert_close(fn(x, t[:, 0]), fn(x, t, skeleton=given[:, 0]), rtol=0, atol=0)


def test_the_skeleton_is_a_tube_inside_the_foreground():
    t = torch.zeros(1, 16, 16, dtype=torch.long)
    t[0, 3:12, 2:14] = 2  # a thick bar of class 2
    t[0, 13:15, :] = 1
    skel = skeleton_from_target(t, "multiclass")
    assert set(skel.unique().tolist()) <= {0, 1, 2}
    assert ((skel > 0) <= (t > 0)).all() and (skel[t == 2] == 2).sum() > 0
    assert (skel == 2).sum() < (t == 2).sum()  # thinner than the bar
    # a prediction covering the skeleton only has recall 1 although its Dice is poor
    logits = torch.full((1, 3, 16, 16), -10.0)
    logits[:, 0] = 10.0
    for c in (1, 2):
        logits[0, c][skel[0] == c] = 30.0
    assert SkeletonRecallLoss("multiclass", smooth=0.0)(logits, t, skeleton=skel).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_ignored_pixels_change_nothing(mode):
    x, t = make_case(mode, (8, 9), ignore=True, seed=4)
    skel = _skeleton(mode, t, True)
    mask = (t == IGNORE) if mode != "multiclass" else (t == IGNORE).unsqueeze(1).expand_as(x)
    # a skeleton that (wrongly) marks ignored pixels: still not counted
    skel_dirty = skel.clone()
    skel_dirty[t == IGNORE] = 1
    fn = SkeletonRecallLoss(mode, ignore_index=IGNORE, per_image=True)
    x2 = x.clone()
    x2[mask] = 50.0
    x.requires_grad_()
    loss = fn(x, t, skeleton=skel)
    loss.backward()
    assert fn(x2, t, skeleton=skel).item() == pytest.approx(loss.item(), rel=1e-12)
    assert fn(x.detach(), t, skeleton=skel_dirty).item() == pytest.approx(loss.item(), rel=1e-12)
    assert (x.grad[mask] == 0).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(mode, per_image):
    for spatial in ((4, 5), (2, 3, 4)):
        x, t = make_case(mode, spatial, ignore=True, seed=5)
        skel = _skeleton(mode, t, True)
        skel = skel if skel.any() else (t == 1).to(skel.dtype)  # tiny images may have no skeleton
        fn = SkeletonRecallLoss(mode, per_image=per_image, ignore_index=IGNORE, smooth=0.5)
        x.requires_grad_()
        assert torch.autograd.gradcheck(lambda z: fn(z, t, skeleton=skel), (x,), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_finite_under_bfloat16_autocast(mode):
    x, t = make_case(mode, (16, 16), dtype=torch.float32, seed=6)
    skel = _skeleton(mode, t, False)
    fn = SkeletonRecallLoss(mode)
    check_bf16_autocast(fn, x, t, skeleton=skel, rel=3e-2, abs=3e-3)


@pytest.mark.parametrize("mode", MODES)
def test_empty_classes_and_empty_skeletons_are_defined(mode):
    x, t = make_case(mode, (6, 7), classes=3, seed=7)
    x.requires_grad_()
    empty = torch.zeros_like(t)
    for smooth, expected in ((1.0, 0.0), (0.0, 1.0)):  # nothing to recall: rec = s/s = 1, or the clip's 0
        loss = SkeletonRecallLoss(mode, smooth=smooth)(x, t, skeleton=empty)
        assert loss.item() == pytest.approx(expected)
        loss.backward()
        assert torch.isfinite(x.grad).all() and (x.grad == 0).all()
        x.grad = None
    # every pixel ignored: no sums at all, still finite and without gradient
    ignored = torch.full_like(t, IGNORE)
    loss = SkeletonRecallLoss(mode, ignore_index=IGNORE, smooth=0.0, per_image=True)(x, ignored, skeleton=empty)
    loss.backward()
    assert torch.isfinite(loss) and (x.grad == 0).all()
    # one class without skeleton pixels among others: it costs 0 at smooth=1 (recall of nothing)
    if mode != "binary":
        _, t2 = make_case(mode, (6, 7), classes=3, seed=8)
        skel = _skeleton(mode, t2, False)
        if mode == "multiclass":
            skel[skel == 2] = 0
        else:
            skel[:, 2] = 0
        per_class = _reference(mode, x.detach(), t2, skel, False, 1.0, False)
        assert SkeletonRecallLoss(mode)(x.detach(), t2, skeleton=skel).item() == pytest.approx(per_class.item())


def test_in_a_combined_loss_the_skeleton_reaches_the_term():
    x, t = make_case("multiclass", (10, 10), classes=3, ignore=True, seed=9)
    skel = skeleton_from_target(t, "multiclass", IGNORE)
    srec = SkeletonRecallLoss("multiclass", ignore_index=IGNORE)
    assert SkeletonRecallLoss.derived_targets == ("skeleton",)
    combo = CombinedLoss({"ce": CrossEntropyLoss(ignore_index=IGNORE), "srec": srec})
    expected = CrossEntropyLoss(ignore_index=IGNORE)(x, t) + srec(x, t, skeleton=skel)
    torch.testing.assert_close(combo(x, t, skeleton=skel), expected)
    torch.testing.assert_close(combo(x, t), expected)  # computed from the target when not given


def test_bad_input_raises_clear_errors():
    x = torch.randn(2, 3, 6, 6)
    t = torch.randint(0, 3, (2, 6, 6))
    fn = SkeletonRecallLoss("multiclass")
    cases = [
        (x, t, t[:, :5], r"skeleton must have the target's shape"),
        (x, t, t.float(), r"multiclass skeleton holds class indices"),
        (x, t, t + 5, r"skeleton values must be in \[0, 2\]"),
        (x, t, t.numpy(), r"skeleton must be a torch.Tensor"),
        (x, t.float(), None, r"multiclass target must hold integer class indices"),
        (x[:, :, 0], t[:, 0], t[:, 0], r"2D or 3D"),
    ]
    for logits, target, skel, match in cases:
        with pytest.raises(ValueError, match=match):
            fn(logits, target, skeleton=skel)
    xb, tb = torch.randn(2, 1, 6, 6), (torch.rand(2, 1, 6, 6) > 0.5).float()
    with pytest.raises(ValueError, match=r"skeleton values must be in \[0, 1\]"):
        SkeletonRecallLoss("binary")(xb, tb, skeleton=tb * 2)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        SkeletonRecallLoss("multi-class")
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"smooth must be a finite float >= 0"):
            SkeletonRecallLoss("binary", smooth=bad)
    with pytest.raises(ValueError, match=r"per_image must be True or False"):
        SkeletonRecallLoss("binary", per_image=1)
    with pytest.raises(TypeError):
        SkeletonRecallLoss("binary", 1.0)  # options are keyword-only


def test_module_attributes_and_repr():
    fn = SkeletonRecallLoss("multilabel", smooth=1e-5, per_image=True, ignore_index=IGNORE)
    assert (fn.mode, fn.smooth, fn.per_image, fn.ignore_index) == ("multilabel", 1e-5, True, IGNORE)
    assert "SkeletonRecallLoss(mode='multilabel'" in repr(fn)
    assert not fn.state_dict()
    # 1 - recall: the authors' -recall shifted by one (same gradient)
    x, t = make_case("binary", (6, 6), seed=10)
    skel = _skeleton("binary", t, False)
    x.requires_grad_()
    ours = fn.__class__("binary")(x, t, skeleton=skel)
    (g_ours,) = torch.autograd.grad(ours, x)
    theirs = _reference("binary", x, t, skel, False, 1.0, False) - 1.0
    (g_theirs,) = torch.autograd.grad(theirs, x)
    torch.testing.assert_close(g_ours, g_theirs)
