"""FocalLoss's options from issue 14: include_background, per-channel weight and pos_weight."""

import pytest
import torch

from seglosses import BCELoss, CombinedLoss, DiceLoss, FocalLoss

from _loss_cases import IGNORE, make_case


def test_pos_weight_at_gamma_zero_is_bce_with_pos_weight():
    x, t = make_case("multilabel", (5, 6), ignore=True)
    pw = [2.0, 0.5, 3.0]
    ours = FocalLoss("multilabel", gamma=0.0, pos_weight=pw, ignore_index=IGNORE)(x, t)
    torch.testing.assert_close(ours, BCELoss(pos_weight=pw, ignore_index=IGNORE)(x, t))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_pos_weight_and_weight_gradcheck(gamma):
    x, t = make_case("multilabel", (3, 4))
    x.requires_grad_()
    fn = FocalLoss("multilabel", alpha=0.25, gamma=gamma, weight=[1.0, 0.2, 2.0], pos_weight=[3.0, 1.0, 0.5])
    assert torch.autograd.gradcheck(lambda v: fn(v, t), (x,))


def test_weight_multiplies_each_channel_and_keeps_the_plain_mean():
    x, t = make_case("multilabel", (5, 6))
    w = torch.tensor([1.0, 0.2, 2.0], dtype=x.dtype)
    per = FocalLoss("multilabel", reduction="none")(x, t)
    torch.testing.assert_close(FocalLoss("multilabel", weight=w)(x, t), (per * w.view(1, 3, 1, 1)).mean())


def test_include_background_false():
    x, t = make_case("multilabel", (5, 6))
    torch.testing.assert_close(FocalLoss("multilabel", include_background=False)(x, t),
                               FocalLoss("multilabel")(x[:, 1:], t[:, 1:]))
    x, t = make_case("multiclass", (5, 6), ignore=True)
    per = FocalLoss("multiclass", reduction="none", ignore_index=IGNORE)(x, t)
    keep = (t != 0) & (t != IGNORE)
    torch.testing.assert_close(FocalLoss("multiclass", include_background=False, ignore_index=IGNORE)(x, t), per[keep].mean())


def test_options_take_the_composed_path_in_a_combination():
    x, t = make_case("multilabel", (5, 6))
    focal = FocalLoss("multilabel", weight=[1.0, 0.2, 2.0], pos_weight=[2.0, 1.0, 1.0], include_background=False)
    dice = DiceLoss("multilabel")
    torch.testing.assert_close(CombinedLoss({"f": focal, "d": dice})(x, t), focal(x, t) + dice(x, t))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "binary", "include_background": False}, "binary"),
        ({"mode": "multiclass", "weight": [1.0, 2.0]}, "alpha"),
        ({"mode": "multiclass", "pos_weight": [1.0, 2.0]}, "alpha"),
        ({"mode": "multilabel", "weight": [1.0, -2.0]}, "weight"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FocalLoss(**kwargs)


def test_weight_length_is_checked():
    x, t = make_case("multilabel", (4, 4))
    with pytest.raises(ValueError, match="weight has 2 values"):
        FocalLoss("multilabel", weight=[1.0, 2.0])(x, t)
