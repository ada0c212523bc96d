"""Property tests (hypothesis): region losses in [0, 1], ~0 when perfect, finite at +-1e4 logits."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seglosses import BCELoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss

SETTINGS = settings(max_examples=40, deadline=None)
REGION = st.sampled_from(["dice", "jaccard", "tversky"])
MODE = st.sampled_from(["binary", "multiclass", "multilabel"])


def _region(kind, mode, **kw):
    if kind == "dice":
        return DiceLoss(mode, **kw)
    if kind == "jaccard":
        return JaccardLoss(mode, **kw)
    return TverskyLoss(mode, alpha=0.3, beta=0.7, **kw)


@st.composite
def cases(draw, scale=None):
    mode = draw(MODE)
    b = draw(st.integers(1, 2))
    c = 1 if mode == "binary" else draw(st.integers(2, 4))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    s = scale if scale is not None else draw(st.sampled_from([0.1, 1.0, 10.0, 1e4]))
    x = s * torch.randn(b, c, *spatial, generator=g)
    if mode == "multiclass":
        t = torch.randint(0, c, (b, *spatial), generator=g)
    else:
        t = (torch.rand(b, c, *spatial, generator=g) > 0.5).float()
    return mode, x, t


@SETTINGS
@given(case=cases(), kind=REGION, per_image=st.booleans(), smooth=st.sampled_from([0.0, 1e-5, 1.0]),
       policy=st.sampled_from(["penalize_fp", "zero", "exclude"]))
def test_region_loss_in_unit_interval_and_finite(case, kind, per_image, smooth, policy):
    mode, x, t = case
    xg = x.clone().requires_grad_()
    loss = _region(kind, mode, per_image=per_image, smooth=smooth, empty_class=policy)(xg, t)
    loss.backward()
    assert torch.isfinite(loss)
    assert -1e-6 <= loss.item() <= 1.0 + 1e-6
    assert torch.isfinite(xg.grad).all()


@SETTINGS
@given(case=cases(scale=1.0), kind=REGION, per_image=st.booleans())
def test_perfect_confident_prediction_is_zero(case, kind, per_image):
    mode, _, t = case
    if mode == "multiclass":
        c = _.shape[1]
        x = 30.0 * (2 * torch.nn.functional.one_hot(t, c).movedim(-1, 1).float() - 1)
    else:
        x = 30.0 * (2 * t - 1)
    loss = _region(kind, mode, per_image=per_image)(x, t)
    assert loss.item() < 1e-6


@SETTINGS
@given(case=cases(scale=1e4))
def test_all_losses_finite_at_huge_logits(case):
    mode, x, t = case
    losses = [DiceLoss(mode), JaccardLoss(mode), TverskyLoss(mode, gamma=0.5),
              DiceLoss(mode, log_loss=True), FocalLoss(mode, gamma=0.5), FocalLoss(mode, alpha=0.25)]
    losses += [CrossEntropyLoss()] if mode == "multiclass" else [BCELoss()]
    for fn in losses:
        xg = x.clone().requires_grad_()
        loss = fn(xg, t)
        loss.backward()
        assert torch.isfinite(loss), fn
        assert torch.isfinite(xg.grad).all(), fn
