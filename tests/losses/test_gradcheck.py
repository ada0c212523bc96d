"""torch.autograd.gradcheck in float64 for every loss and option family."""

import pytest
import torch

from seglosses import BCELoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss

from _loss_cases import IGNORE, make_case

CASES = [
    ("binary", BCELoss()),
    ("multilabel", BCELoss(pos_weight=[0.5, 2.0, 1.0], label_smoothing=0.1, reduction="sum")),
    ("binary", BCELoss(ignore_index=IGNORE)),
    ("multiclass", CrossEntropyLoss(weight=[0.5, 2.0, 1.0], label_smoothing=0.1)),
    ("multiclass", CrossEntropyLoss(ignore_index=IGNORE)),
    ("binary", FocalLoss("binary", alpha=0.25)),
    ("multilabel", FocalLoss("multilabel", gamma=0.5, ignore_index=IGNORE)),
    ("multiclass", FocalLoss("multiclass", alpha=[0.2, 0.5, 0.3], gamma=2.0)),
    ("multiclass", FocalLoss("multiclass", gamma=0.7, ignore_index=IGNORE)),
]
for m in ("binary", "multiclass", "multilabel"):
    CASES += [
        (m, DiceLoss(m)),
        (m, DiceLoss(m, smooth=1.0, squared_pred=True, per_image=True)),
        (m, DiceLoss(m, log_loss=True, ignore_index=IGNORE)),
        (m, JaccardLoss(m, ignore_index=IGNORE)),
        (m, JaccardLoss(m, per_image=True, empty_class="exclude")),
        (m, TverskyLoss(m, 0.3, 0.7, gamma=1.5)),
        (m, TverskyLoss(m, 0.7, 0.3, gamma=0.75, ignore_index=IGNORE)),
    ]
CASES += [
    ("multiclass", DiceLoss("multiclass", class_weights=[1.0, 2.0, 3.0], include_background=False)),
    ("multilabel", DiceLoss("multilabel", class_weights=[1.0, 0.5, 3.0], empty_class="zero")),
]


@pytest.mark.parametrize("mode,loss_fn", CASES, ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_gradcheck(mode, loss_fn):
    ignore = getattr(loss_fn, "ignore_index", None) is not None
    x, t = make_case(mode, (3, 4), ignore=ignore)
    if mode == "multiclass":
        t[1][t[1] == 2] = 0  # an image without class 2 exercises the empty-class branch per image
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, t), (x,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradcheck_soft_labels_and_3d():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 2, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.rand(2, 2, 2, 3, 2, dtype=torch.float64, generator=g)
    for loss_fn in (BCELoss(), FocalLoss("multilabel", alpha=0.3), DiceLoss("multilabel"), TverskyLoss("multilabel", 0.2, 0.8)):
        assert torch.autograd.gradcheck(lambda z: loss_fn(z, t), (x,), fast_mode=True)
