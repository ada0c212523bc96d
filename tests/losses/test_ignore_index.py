"""ignore_index is a masked mean: logits at ignored pixels change neither the loss nor its gradient."""

import pytest
import torch

from seglosses import BCELoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss

from _loss_cases import IGNORE, make_case

LOSSES = [
    ("binary", lambda: BCELoss(ignore_index=IGNORE)),
    ("multilabel", lambda: BCELoss(ignore_index=IGNORE, pos_weight=[1.0, 2.0, 0.5], label_smoothing=0.1)),
    ("multiclass", lambda: CrossEntropyLoss(ignore_index=IGNORE)),
    ("multiclass", lambda: CrossEntropyLoss(weight=[1.0, 2.0, 0.5], ignore_index=IGNORE, label_smoothing=0.1)),
    ("binary", lambda: FocalLoss("binary", alpha=0.25, ignore_index=IGNORE)),
    ("multilabel", lambda: FocalLoss("multilabel", gamma=0.5, ignore_index=IGNORE)),
    ("multiclass", lambda: FocalLoss("multiclass", alpha=[0.2, 0.3, 0.5], ignore_index=IGNORE)),
]
for _mode in ("binary", "multiclass", "multilabel"):
    LOSSES += [
        (_mode, lambda m=_mode: DiceLoss(m, ignore_index=IGNORE)),
        (_mode, lambda m=_mode: DiceLoss(m, ignore_index=IGNORE, per_image=True, squared_pred=True)),
        (_mode, lambda m=_mode: JaccardLoss(m, ignore_index=IGNORE, log_loss=True)),
        (_mode, lambda m=_mode: TverskyLoss(m, 0.3, 0.7, 1.5, ignore_index=IGNORE)),
    ]


@pytest.mark.parametrize("mode,factory", LOSSES)
def test_logits_at_ignored_pixels_do_not_matter(mode, factory):
    loss_fn = factory()
    x, t = make_case(mode, (5, 6), ignore=True)
    ignored = (t == IGNORE) if mode != "multiclass" else (t == IGNORE).unsqueeze(1).expand_as(x)
    assert ignored.any()
    x2 = x.clone()
    x2[ignored] = torch.randn(int(ignored.sum()), dtype=x.dtype) * 50  # wildly different logits
    a, b = x.clone().requires_grad_(), x2.clone().requires_grad_()
    la, lb = loss_fn(a, t), loss_fn(b, t)
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14)
    assert (a.grad[ignored] == 0).all()


@pytest.mark.parametrize("mode,factory", LOSSES)
def test_every_pixel_ignored_is_zero_with_zero_grad(mode, factory):
    x, t = make_case(mode, (3, 4))
    t = torch.full_like(t, IGNORE)
    xg = x.clone().requires_grad_()
    loss = factory()(xg, t)
    loss.backward()
    assert loss.item() == 0.0  # torch's cross_entropy gives NaN here
    assert torch.equal(xg.grad, torch.zeros_like(x))


def test_in_range_ignore_index_for_multiclass():
    # ignoring class 0 (e.g. "unlabelled" as index 0) equals dropping those pixels
    x, t = make_case("multiclass", (6, 6), classes=3)
    keep = (t != 0).view(-1)
    xf = x.permute(0, 2, 3, 1).reshape(-1, 3)[keep].T.unsqueeze(0).unsqueeze(-1)  # [1, C, n, 1]
    tf = t.reshape(-1)[keep].view(1, -1, 1)
    torch.testing.assert_close(
        CrossEntropyLoss(ignore_index=0)(x, t), CrossEntropyLoss()(xf, tf)
    )
    torch.testing.assert_close(
        FocalLoss("multiclass", ignore_index=0)(x, t), FocalLoss("multiclass")(xf, tf)
    )
    torch.testing.assert_close(
        DiceLoss("multiclass", ignore_index=0, empty_class="exclude")(x, t),
        DiceLoss("multiclass", empty_class="exclude")(xf, tf),
    )
