"""Equal to PyTorch, torchvision and segmentation-models-pytorch where the semantics coincide."""

import pytest
import segmentation_models_pytorch.losses as smp
import torch
import torch.nn.functional as TF
from torchvision.ops import sigmoid_focal_loss

from seglosses import BCELoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss

from _loss_cases import IGNORE, MODES, make_case

SPATIAL = [(5, 6), (3, 4, 5)]  # 2D and 3D


# ---------------------------------------------------------------------------- torch / torchvision


@pytest.mark.parametrize("spatial", SPATIAL)
def test_bce_matches_torch_with_pos_weight_and_smoothing(spatial):
    x, t = make_case("multilabel", spatial, classes=3)
    pw = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    pw_view = pw.view(3, *[1] * len(spatial))
    for s in (0.0, 0.1):
        ts = t * (1 - s) + s / 2
        for red in ("mean", "sum", "none"):
            ours = BCELoss(pos_weight=pw, label_smoothing=s, reduction=red)(x, t)
            ref = TF.binary_cross_entropy_with_logits(x, ts, pos_weight=pw_view, reduction=red)
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_bce_ignore_index_is_masked_mean():
    x, t = make_case("binary", ignore=True)
    valid = t != IGNORE
    ref = TF.binary_cross_entropy_with_logits(x[valid], t[valid])
    torch.testing.assert_close(BCELoss(ignore_index=IGNORE)(x, t), ref)


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("ignore", [False, True])
def test_ce_matches_torch(spatial, ignore):
    x, t = make_case("multiclass", spatial, classes=4, ignore=ignore)
    w = torch.tensor([0.2, 1.0, 2.0, 0.7], dtype=torch.float64)
    ii = IGNORE if ignore else None
    for weight in (None, w):
        for s in (0.0, 0.2):
            for red in ("mean", "sum", "none"):
                ours = CrossEntropyLoss(weight=weight, ignore_index=ii, label_smoothing=s, reduction=red)(x, t)
                ref = TF.cross_entropy(
                    x, t, weight=weight, ignore_index=-100 if ii is None else ii,
                    label_smoothing=s, reduction=red,
                )  # fmt: skip
                torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_sigmoid_focal_matches_torchvision(spatial, mode):
    x, t = make_case(mode, spatial)
    for alpha, gamma in ((0.25, 2.0), (0.6, 0.5), (None, 3.0)):
        for red in ("mean", "sum", "none"):
            ours = FocalLoss(mode, alpha=alpha, gamma=gamma, reduction=red)(x, t)
            ref = sigmoid_focal_loss(x, t, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction=red)
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_sigmoid_focal_soft_labels_match_torchvision():
    g = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(2, 2, 4, 4, generator=g, dtype=torch.float64)
    ours = FocalLoss("multilabel", alpha=0.25, gamma=2.0)(x, t)
    torch.testing.assert_close(ours, sigmoid_focal_loss(x, t, reduction="mean"))


def test_focal_gamma0_equals_bce_and_ce():
    x, t = make_case("multilabel")
    torch.testing.assert_close(FocalLoss("multilabel", gamma=0)(x, t), BCELoss()(x, t))
    x, t = make_case("multiclass", classes=4, ignore=True)
    torch.testing.assert_close(
        FocalLoss("multiclass", gamma=0, ignore_index=IGNORE)(x, t),
        CrossEntropyLoss(ignore_index=IGNORE)(x, t),
    )
    # per-class alpha at gamma 0: alpha-weighted CE summed, divided by the valid pixel count
    a = [0.5, 1.0, 2.0, 0.25]
    valid = (t != IGNORE).sum()
    ref = TF.cross_entropy(x, t, weight=torch.tensor(a, dtype=x.dtype), ignore_index=IGNORE, reduction="sum")
    torch.testing.assert_close(FocalLoss("multiclass", alpha=a, gamma=0, ignore_index=IGNORE)(x, t), ref / valid)


def test_softmax_focal_formula():
    x, t = make_case("multiclass", (4, 5), classes=3)
    p = x.softmax(1).gather(1, t.unsqueeze(1)).squeeze(1)
    ref = (-(1 - p) ** 2.0 * p.log()).mean()
    torch.testing.assert_close(FocalLoss("multiclass", gamma=2.0)(x, t), ref)
    torch.testing.assert_close(
        FocalLoss("multiclass", gamma=2.0, reduction="none")(x, t), -(1 - p) ** 2.0 * p.log()
    )


# ---------------------------------------------------------------------------- smp region losses


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("ignore", [False, True])
def test_region_losses_match_smp(mode, spatial, ignore):
    x, t = make_case(mode, spatial, classes=3, ignore=ignore)
    ii = IGNORE if ignore else None
    pairs = [
        (DiceLoss(mode, ignore_index=ii), smp.DiceLoss(mode, ignore_index=ii)),
        (DiceLoss(mode, ignore_index=ii, log_loss=True), smp.DiceLoss(mode, ignore_index=ii, log_loss=True)),
        (JaccardLoss(mode, ignore_index=ii), smp.JaccardLoss(mode, ignore_index=ii)),
        (TverskyLoss(mode, 0.3, 0.7, ignore_index=ii), smp.TverskyLoss(mode, alpha=0.3, beta=0.7, ignore_index=ii)),
        (DiceLoss(mode, from_logits=False, ignore_index=ii), smp.DiceLoss(mode, from_logits=False, ignore_index=ii)),
    ]
    if mode != "binary":
        w = [0.5, 1.0, 2.5]
        pairs += [
            (DiceLoss(mode, ignore_index=ii, class_weights=w), smp.DiceLoss(mode, ignore_index=ii, class_weights=w)),
            (JaccardLoss(mode, ignore_index=ii, class_weights=w), smp.JaccardLoss(mode, ignore_index=ii, class_weights=w)),
        ]
    for ours, ref in pairs:
        inp = x if ours.from_logits else (x.softmax(1) if mode == "multiclass" else x.sigmoid())
        xo = inp.clone().requires_grad_()
        xr = inp.clone().requires_grad_()
        lo, lr = ours(xo, t), ref(xr, t)
        torch.testing.assert_close(lo, lr, rtol=1e-10, atol=1e-12, msg=f"{ours!r}")
        lo.backward()
        lr.backward()
        torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-8, atol=1e-12, msg=f"{ours!r}")


def test_zero_policy_matches_smp_with_absent_class():
    x, t = make_case("multiclass", (6, 6), classes=4)
    t[t == 2] = 0  # class 2 absent: smp zeroes it but keeps it in the mean
    ours = DiceLoss("multiclass", empty_class="zero")(x, t)
    torch.testing.assert_close(ours, smp.DiceLoss("multiclass")(x, t))
    # the default policy differs exactly by class 2's false-positive rate / 4
    fp_rate = x.softmax(1)[:, 2].mean()
    torch.testing.assert_close(DiceLoss("multiclass")(x, t), ours + fp_rate / 4)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_saturated_logits_finite_and_exact(gamma):
    # float32 logits far into saturation: torchvision's gradient is NaN for gamma < 1 where
    # 1 - p_t rounds to 0; ours is finite and equals the float64 reference wherever that is finite.
    x = torch.tensor([40.0, -40.0, 1e4, -1e4, 17.0, -17.0, 0.3, -2.0, 90.0, -95.0]).view(1, 1, -1)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.7, 0.2, 1.0, 1.0]).view(1, 1, -1)
    xs = x.clone().requires_grad_()
    loss = FocalLoss("binary", alpha=0.25, gamma=gamma)(xs, t)
    loss.backward()
    x64 = x.double().requires_grad_()
    ref = sigmoid_focal_loss(x64, t.double(), alpha=0.25, gamma=gamma, reduction="mean")
    ref.backward()
    assert torch.isfinite(loss) and torch.isfinite(xs.grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    ok = torch.isfinite(x64.grad)
    assert ok.sum() >= 5
    torch.testing.assert_close(xs.grad.double()[ok], x64.grad[ok], rtol=1e-4, atol=1e-7)
    if gamma < 1:
        xt = x.clone().requires_grad_()
        sigmoid_focal_loss(xt, t, alpha=0.25, gamma=gamma, reduction="mean").backward()
        assert not torch.isfinite(xt.grad).all()  # the failure mode we avoid


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_softmax_focal_saturated_logits(gamma):
    x = torch.tensor([[30.0, 0.0, -5.0], [1e4, 0.0, 1.0], [0.0, 200.0, 0.0], [1.0, 2.0, 3.0]]).T.unsqueeze(0)
    t = torch.tensor([[0, 0, 0, 2]])  # confident right, saturated right, confident wrong, moderate
    xs = x.clone().requires_grad_()
    loss = FocalLoss("multiclass", gamma=gamma, reduction="none")(xs, t)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(xs.grad).all()
    # float64 naive formula (fine in float64 for all but the 1e4 column)
    x64 = x.double().requires_grad_()
    logp = x64.log_softmax(1).gather(1, t.unsqueeze(1)).squeeze(1)
    ref = -(1 - logp.exp()) ** gamma * logp
    ref.sum().backward()
    keep = [0, 2, 3]
    torch.testing.assert_close(loss[0, keep].double(), ref[0, keep], rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(xs.grad[..., keep].double(), x64.grad[..., keep], rtol=1e-3, atol=1e-10)
