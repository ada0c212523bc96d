"""The losses of issue 14 equal their peers: MONAI, segmentation-models-pytorch, kornia, and the
nnU-Net / HRNet formulas (not installable here) written out as references."""

import pytest
import torch
import torch.nn.functional as F

from seglosses import (
    ClDiceLoss,
    CombinedLoss,
    DeepSupervisionLoss,
    DiceLoss,
    GeneralizedDiceLoss,
    LovaszLoss,
    MCCLoss,
    OhemBCELoss,
    OhemCrossEntropyLoss,
    TopKBCELoss,
    TopKCrossEntropyLoss,
)

from _loss_cases import IGNORE, make_case

monai_losses = pytest.importorskip("monai.losses")
smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")


def _onehot(t, c):
    return F.one_hot(t, c).movedim(-1, 1).double()


@pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_generalized_dice_equals_monai_with_an_absent_class(weight_type, per_image, include_background):
    x, t = make_case("multiclass", (6, 7), classes=4)
    t[t == 2] = 1  # class 2 absent: MONAI gives it the largest weight of the present classes
    ours = GeneralizedDiceLoss("multiclass", weight_type=weight_type, smooth=1e-5, per_image=per_image,
                               include_background=include_background)(x, t)
    ref = monai_losses.GeneralizedDiceLoss(softmax=True, w_type=weight_type, batch=not per_image,
                                           include_background=include_background)(x, _onehot(t, 4))
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_generalized_dice_sigmoid_modes_equal_monai(mode):
    x, t = make_case(mode, (5, 6))
    ours = GeneralizedDiceLoss(mode, smooth=1e-5, per_image=True)(x, t)
    ref = monai_losses.GeneralizedDiceLoss(sigmoid=True)(x, t)
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-6, atol=1e-7)


def test_generalized_dice_reductions():
    x, t = make_case("multiclass", (5, 6), batch=3)
    per = GeneralizedDiceLoss("multiclass", per_image=True, reduction="none")(x, t)
    ref = monai_losses.GeneralizedDiceLoss(softmax=True, reduction="none", smooth_nr=0, smooth_dr=0)(x, _onehot(t, 3))
    assert per.shape == (3,)
    torch.testing.assert_close(per, ref.reshape(-1).to(per.dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(GeneralizedDiceLoss("multiclass", per_image=True, reduction="sum")(x, t), per.sum())


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_lovasz_binary_and_multiclass_equal_smp(per_image, ignore):
    ii = IGNORE if ignore else None
    for mode in ("binary", "multiclass"):
        x, t = make_case(mode, (6, 7), ignore=ignore, dtype=torch.float32)
        ours = LovaszLoss(mode, per_image=per_image, ignore_index=ii)(x, t)
        ref = smp_losses.LovaszLoss(mode, per_image=per_image, ignore_index=ii)(x, t)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("radix", [True, False])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_lovasz_at_sizes_sorted_as_integer_keys_equals_smp(monkeypatch, radix, per_image, ignore):
    """From 32768 errors on, float32 on CPU sorts int64 keys in one 1-D sort (lovasz._sorted_rows):
    loss and gradient equal smp's on that path and on the per-row float sort (radix=False)."""
    from seglosses import lovasz

    if radix and not lovasz._RADIX_SORT:
        pytest.skip("this PyTorch build has no FBGEMM radix sort; the float sort serves")
    monkeypatch.setattr(lovasz, "_RADIX_SORT", radix)
    sorted_dtypes = []
    real_sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda x, *a, **k: sorted_dtypes.append((x.dtype, x.ndim)) or real_sort(x, *a, **k))
    ii = IGNORE if ignore else None
    for mode in ("binary", "multiclass"):
        x, t = make_case(mode, (96, 100), batch=2, classes=4, ignore=ignore, dtype=torch.float32)
        grads = []
        for loss in (LovaszLoss(mode, per_image=per_image, ignore_index=ii),
                     smp_losses.LovaszLoss(mode, per_image=per_image, ignore_index=ii)):
            xx = x.clone().requires_grad_()
            value = loss(xx, t)
            value.backward()
            grads.append((value.detach(), xx.grad))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
        # float32 rounding of 1 - I/U (smp) against rank / U (ours), about 1e-7 near 1: atol
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=2.5e-7)
    assert ((torch.int64, 1) in sorted_dtypes) is radix


def test_lovasz_integer_keys_order_negative_zero_as_zero(monkeypatch):
    """-0.0 has the sign bit set: read as an int32 it would be the smallest key of the next row."""
    from seglosses import lovasz

    errors = torch.rand(2, 3, 8192)
    errors[0, 1, ::7] = -0.0
    errors[1, 2, :100] = 0.0
    gt = (torch.rand(2, 3, 8192) > 0.5).float()
    for per_image in (False, True):
        keys = lovasz._sorted_rows(errors, gt, per_image)
        with monkeypatch.context() as m:
            m.setattr(lovasz, "_RADIX_SORT", False)
            floats = lovasz._sorted_rows(errors, gt, per_image)
        torch.testing.assert_close(keys[0], floats[0], rtol=0, atol=0)
        torch.testing.assert_close(lovasz._lovasz_rows(*keys), lovasz._lovasz_rows(*floats))


def test_lovasz_equals_kornia():
    # kornia is not in the dev extras (pyproject.toml); only this test needs it
    kornia_losses = pytest.importorskip("kornia.losses")
    x, t = make_case("binary", (6, 7), batch=3, dtype=torch.float32)
    torch.testing.assert_close(LovaszLoss("binary", per_image=True)(x, t),
                               kornia_losses.lovasz_hinge_loss(x, t[:, 0].long()), rtol=1e-5, atol=1e-6)
    x, t = make_case("multiclass", (6, 7), batch=3, classes=4, dtype=torch.float32)
    t[t == 3] = 0  # an absent class: kornia averages over all classes
    torch.testing.assert_close(LovaszLoss("multiclass", per_image=True, classes="all")(x, t),
                               kornia_losses.lovasz_softmax_loss(x, t), rtol=1e-5, atol=1e-6)


def test_lovasz_multilabel_is_the_mean_of_per_channel_binary_problems():
    x, t = make_case("multilabel", (5, 6))
    per_channel = [LovaszLoss("binary")(x[:, c : c + 1], t[:, c : c + 1]) for c in range(3)]
    torch.testing.assert_close(LovaszLoss("multilabel")(x, t), torch.stack(per_channel).mean())


def _nnunet_topk(x, t, k, weight=None):  # nnunetv2 TopKLoss: CE per voxel, top k% of all voxels
    res = F.cross_entropy(x, t, weight=weight, reduction="none").reshape(-1)
    return torch.topk(res, int(res.numel() * k / 100), sorted=False).values.mean()


def _hrnet_ohem(x, t, thresh, min_kept, ignore=IGNORE, weight=None):  # HRNet OhemCrossEntropy
    losses = F.cross_entropy(x, t, weight=weight, ignore_index=ignore, reduction="none").reshape(-1)
    mask = t.reshape(-1) != ignore
    tt = t.clone()
    tt[tt == ignore] = 0
    pred = F.softmax(x, 1).gather(1, tt.unsqueeze(1)).reshape(-1)[mask]
    pred, ind = pred.sort()
    threshold = max(pred[min(min_kept, pred.numel() - 1)], thresh)
    return losses[mask][ind][pred < threshold].mean()


@pytest.mark.parametrize("k", [10.0, 37.5, 100.0])
def test_topk_ce_equals_nnunet(k):
    x, t = make_case("multiclass", (8, 8))
    w = torch.tensor([1.0, 2.0, 0.5], dtype=x.dtype)
    torch.testing.assert_close(TopKCrossEntropyLoss(k=k, weight=w)(x, t), _nnunet_topk(x, t, k, w))


def test_topk_with_ignore_index_takes_k_percent_of_the_valid_pixels():
    x, t = make_case("multiclass", (8, 8), ignore=True)
    valid = F.cross_entropy(x, t, ignore_index=IGNORE, reduction="none")[t != IGNORE]
    ref = torch.topk(valid, int(valid.numel() * 0.2)).values.mean()
    torch.testing.assert_close(TopKCrossEntropyLoss(k=20.0, ignore_index=IGNORE)(x, t), ref)


def _autograd_topk(x, t, k, weight, ignore, smoothing):
    """TopK CE by autograd through F.cross_entropy and torch.topk (nnU-Net's graph, ignore-aware):
    the reference for TopK's closed-form backward."""
    loss = F.cross_entropy(x, t, weight=weight, ignore_index=-100 if ignore is None else ignore,
                           label_smoothing=smoothing, reduction="none").reshape(-1)
    if ignore is not None:
        loss = loss[t.reshape(-1) != ignore]
    return torch.topk(loss, max(1, int(loss.numel() * k / 100))).values.mean()


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
@pytest.mark.parametrize("weight", [None, [1.0, 2.0, 0.5]])
@pytest.mark.parametrize("ignore", [None, IGNORE])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("k", [10.0, 100.0])
def test_topk_ce_closed_form_gradient_equals_autograd(spatial, weight, ignore, smoothing, k):
    x, t = make_case("multiclass", spatial, ignore=ignore is not None)
    w = None if weight is None else torch.tensor(weight, dtype=x.dtype)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = TopKCrossEntropyLoss(k=k, weight=weight, ignore_index=ignore, label_smoothing=smoothing)(ours, t)
    expected = _autograd_topk(ref, t, k, w, ignore, smoothing)
    (loss * 3.0).backward()  # an upstream gradient other than 1
    (expected * 3.0).backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours.grad, ref.grad)


def test_topk_ranks_zero_losses_above_ignored_pixels():
    # Confident pixels have a loss of exactly -0.0 (-log 1), whose sign bit would rank it below
    # the ignored pixels' -1 in the integer ranking; here k percent reaches past the one hard pixel.
    x = torch.zeros(1, 3, 4, 4)
    x[:, 0] = 200.0
    x[0, :, 1, 0] = torch.tensor([0.0, 1.0, 0.0])
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, 0] = IGNORE
    x[0, :, 0] = torch.tensor([0.0, 200.0, 0.0]).unsqueeze(1)  # wrong by far, were they counted
    assert torch.signbit(-torch.log_softmax(x, 1)[:, 0]).any()  # the -0.0 losses are there
    loss = TopKCrossEntropyLoss(k=50.0, ignore_index=IGNORE)(x, t)
    torch.testing.assert_close(loss, _autograd_topk(x, t, 50.0, None, IGNORE, 0.0))
    assert loss > 0


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_topk_of_an_all_ignored_batch_is_zero_whatever_the_logits(bad):
    x = torch.full((2, 3, 4, 4), bad, requires_grad=True)
    loss = TopKCrossEntropyLoss(ignore_index=IGNORE)(x, torch.full((2, 4, 4), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)


def test_topk_ce_propagates_nan_logits_at_valid_pixels_as_the_peer_does():
    x, t = make_case("multiclass", (8, 8), dtype=torch.float32)
    x[0, :, 1, 1] = float("nan")
    assert torch.isnan(_nnunet_topk(x, t, 10.0))
    assert torch.isnan(TopKCrossEntropyLoss(k=10.0)(x, t))


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_topk_and_ohem_ignore_non_finite_logits_at_ignored_pixels(bad):
    x, t = make_case("multiclass", (8, 8), ignore=True)
    y = torch.where((t == IGNORE).unsqueeze(1).expand_as(x), torch.full_like(x, bad), x)
    for fn in (TopKCrossEntropyLoss(k=20.0, ignore_index=IGNORE), OhemCrossEntropyLoss(min_kept=7, ignore_index=IGNORE)):
        torch.testing.assert_close(fn(y, t), fn(x, t))


@pytest.mark.parametrize("min_kept", [0, 7, 40, 10_000])
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_ohem_ce_equals_hrnet(min_kept, threshold):
    x, t = make_case("multiclass", (8, 8), ignore=True)
    ours = OhemCrossEntropyLoss(threshold=threshold, min_kept=min_kept, ignore_index=IGNORE)(x, t)
    torch.testing.assert_close(ours, _hrnet_ohem(x, t, threshold, min_kept))


def test_binary_topk_and_ohem_follow_the_same_rules_on_bce():
    x, t = make_case("binary", (8, 8))
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").reshape(-1)
    torch.testing.assert_close(TopKBCELoss(k=25.0)(x, t), torch.topk(bce, int(bce.numel() * 0.25)).values.mean())
    p = torch.sigmoid(x).reshape(-1)
    p_t = torch.where(t.reshape(-1) > 0.5, p, 1 - p)
    ranked = p_t.sort().values
    thr = max(float(ranked[10]), 0.6)
    torch.testing.assert_close(OhemBCELoss(threshold=0.6, min_kept=10)(x, t), bce[p_t < thr].mean())


def test_mcc_equals_smp_and_multilabel_averages_channels():
    x, t = make_case("binary", (6, 7))
    torch.testing.assert_close(MCCLoss("binary")(x, t), smp_losses.MCCLoss()(torch.sigmoid(x), t))
    x, t = make_case("multilabel", (6, 7))
    per = [smp_losses.MCCLoss()(torch.sigmoid(x[:, c]), t[:, c]) for c in range(3)]
    torch.testing.assert_close(MCCLoss("multilabel")(x, t), torch.stack(per).mean())


@pytest.mark.parametrize("spatial", [(12, 11), (6, 7, 8)])
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_cldice_equals_monai(spatial, mode):
    x, t = make_case(mode, spatial)
    if mode == "binary":
        ref = monai_losses.SoftclDiceLoss(iter_=2, sigmoid=True)(x, t)
    else:
        ref = monai_losses.SoftclDiceLoss(iter_=2, softmax=True, include_background=False)(x, _onehot(t, 3))
    ours = ClDiceLoss(mode, iterations=2, include_background=mode == "binary")(x, t)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("spatial", [(17, 13), (6, 7, 8)])
def test_cldice_gradient_equals_monai(spatial):
    """The skeleton's min/max run as elementwise ops with their own backward (not max_pool):
    the gradient must still be MONAI's (random float64 maps have no ties)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, *spatial, dtype=torch.float64, generator=g, requires_grad=True)
    t = (torch.rand(2, 1, *spatial, generator=g) > 0.6).double()
    ours, = torch.autograd.grad(ClDiceLoss("binary", iterations=3)(x, t), x)
    ref, = torch.autograd.grad(monai_losses.SoftclDiceLoss(iter_=3, sigmoid=True)(x, t), x)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)


def test_dice_plus_cldice_equals_monai_soft_dice_cldice():
    x, t = make_case("multiclass", (12, 12), batch=2)
    t[1, :3] = torch.arange(3).repeat(4)  # every class present in every image
    combo = CombinedLoss({"dice": DiceLoss("multiclass", smooth=1.0, per_image=True), "cldice": ClDiceLoss("multiclass")},
                         {"dice": 0.7, "cldice": 0.3}, fused=False)
    ref = monai_losses.SoftDiceclDiceLoss(alpha=0.3, softmax=True)(x, _onehot(t, 3))
    torch.testing.assert_close(combo(x, t), ref)


def test_deep_supervision_equals_monai_with_normalised_weights():
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(2, 3, s, s, generator=g) for s in (16, 8, 4)]
    t = torch.randint(0, 3, (2, 16, 16), generator=g)
    t[:, :4, :4] = torch.arange(3).repeat(6)[:16].reshape(4, 4)
    ds = DeepSupervisionLoss(DiceLoss("multiclass", smooth=1e-5, per_image=True, empty_class="zero"))
    weights = ds.level_weights(3)
    assert weights == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    ref = monai_losses.DeepSupervisionLoss(monai_losses.DiceLoss(softmax=True, to_onehot_y=True), weights=weights)
    torch.testing.assert_close(ds(outs, t), ref(outs, t.unsqueeze(1).float()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("full, size", [((16, 16), (8, 8)), ((12, 18), (4, 6)), ((16, 16), (4, 4)),
                                        ((8, 12, 16), (4, 4, 4)), ((15, 16), (6, 8))])
@pytest.mark.parametrize("channel_dim", [False, True])
def test_deep_supervision_nearest_is_interpolate_nearest_exact(full, size, channel_dim):
    """Integer factors take a strided view; it must pick the pixels F.interpolate picks (the last
    case, 15 -> 6, is no integer factor and goes through interpolate itself)."""
    from seglosses.deep_supervision import _downsample

    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 5, (2, 3, *full) if channel_dim else (2, *full), generator=g)
    ours = _downsample(t, size, "nearest", channel_dim)
    ref = F.interpolate((t if channel_dim else t.unsqueeze(1)).float(), size=size, mode="nearest-exact").long()
    assert ours.dtype == t.dtype
    assert torch.equal(ours, ref if channel_dim else ref.squeeze(1))


def test_deep_supervision_max_pooling_keeps_thin_foreground():
    t = torch.zeros(1, 1, 8, 8)
    t[0, 0, 3, :] = 1.0  # a one-pixel line: nearest sampling at 1/4 drops it
    seen = []

    class Spy(torch.nn.Module):
        mode = "binary"

        def forward(self, x, target):
            seen.append(target)
            return x.sum() * 0

    DeepSupervisionLoss(Spy(), target_downsample="max")([torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 2, 2)], t)
    assert seen[0].tolist() == [[[[1.0, 1.0], [0.0, 0.0]]]]  # the outputs are visited last to first
    seen.clear()
    DeepSupervisionLoss(Spy())([torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 2, 2)], t)
    assert seen[0].sum() == 0


def test_volumes_equal_the_peers_too():
    x, t = make_case("multiclass", (3, 4, 5), dtype=torch.float32)
    torch.testing.assert_close(LovaszLoss("multiclass")(x, t), smp_losses.LovaszLoss("multiclass")(x, t))
    ref = monai_losses.GeneralizedDiceLoss(softmax=True, batch=True)(x.double(), _onehot(t, 3))
    torch.testing.assert_close(GeneralizedDiceLoss("multiclass", smooth=1e-5)(x.double(), t), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(TopKCrossEntropyLoss(k=20.0)(x, t), _nnunet_topk(x, t, 20.0))
    xb, tb = make_case("binary", (3, 4, 5))
    torch.testing.assert_close(MCCLoss("binary")(xb, tb), smp_losses.MCCLoss()(torch.sigmoid(xb), tb))
