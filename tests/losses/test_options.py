"""RegionOptions: one validated options object shared by the region modules, functional and the
fused path; module attributes read it, assigning one validates again."""

import dataclasses

import pytest
import torch

from seglosses import BCELoss, CombinedLoss, DiceLoss, JaccardLoss, RegionOptions, TverskyLoss
from seglosses import functional as F
from seglosses._fused import plan

from _loss_cases import make_case


def test_options_are_keyword_only_and_normalised():
    with pytest.raises(TypeError):
        RegionOptions("dice", "binary")  # keyword-only
    o = RegionOptions(kind="tversky", mode="multiclass", alpha=1, beta=0, smooth=1, class_weights=[1, 2, 3])
    assert isinstance(o.alpha, float) and isinstance(o.smooth, float)
    assert o.class_weights.dtype == torch.float32 and o.class_weights.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.smooth = 2.0


@pytest.mark.parametrize(
    "options,match",
    [
        ({"kind": "dice", "mode": "binary", "alpha": 0.3}, "alpha is an option of TverskyLoss"),
        ({"kind": "tversky", "mode": "binary", "squared_pred": True}, "squared_pred is an option of DiceLoss"),
        ({"kind": "tversky", "mode": "binary", "alpha": 0, "beta": 0}, "cannot both be 0"),
        ({"kind": "cosine", "mode": "binary"}, "kind must be one of"),
        ({"kind": "jaccard", "mode": "binary", "smooth": True}, "JaccardLoss: smooth must be a float >= 0"),
    ],
)
def test_bad_options_raise_value_error(options, match):
    with pytest.raises(ValueError, match=match):
        RegionOptions(**options)


def test_functional_options_are_keyword_only_and_named_when_unknown():
    x, t = make_case("multiclass", (4, 4))
    with pytest.raises(TypeError):
        F.dice_loss(x, t, "multiclass", True, 1.0)
    with pytest.raises(ValueError, match=r"DiceLoss: unknown option\(s\) \['smoth'\]; the options are .*'smooth'"):
        F.dice_loss(x, t, "multiclass", smoth=1.0)
    with pytest.raises(ValueError, match="alpha is an option of TverskyLoss"):
        F.jaccard_loss(x, t, "multiclass", alpha=0.3)


def test_region_loss_takes_the_options_object():
    x, t = make_case("multilabel", (5, 5))
    o = RegionOptions(kind="jaccard", mode="multilabel", smooth=0.5, per_image=True, class_weights=[1.0, 0.0, 2.0])
    expected = JaccardLoss("multilabel", smooth=0.5, per_image=True, class_weights=[1.0, 0.0, 2.0])(x, t)
    torch.testing.assert_close(F.region_loss(x, t, o), expected)
    torch.testing.assert_close(F.jaccard_loss(x, t, "multilabel", smooth=0.5, per_image=True,
                                              class_weights=[1.0, 0.0, 2.0]), expected)


def test_overlap_loss_from_sums_keyword_form_equals_options_form():
    x, t = make_case("multiclass", (5, 5))
    sums = F.region_sums(x, t, "multiclass")
    o = RegionOptions(kind="tversky", mode="multiclass", alpha=0.3, beta=0.7, gamma=1.5, log_loss=True)
    by_options = F.overlap_loss_from_sums(*sums, o)
    by_keywords = F.overlap_loss_from_sums(*sums, kind="tversky", alpha=0.3, beta=0.7, gamma=1.5, log_loss=True)
    torch.testing.assert_close(by_keywords, by_options)
    torch.testing.assert_close(F.overlap_loss_from_sums(*sums, "tversky", alpha=0.3, beta=0.7, gamma=1.5,
                                                        log_loss=True), by_options)
    assert not torch.allclose(F.overlap_loss_from_sums(*sums, kind="dice"), by_options)
    with pytest.raises(ValueError, match="either a RegionOptions or keyword options"):
        F.overlap_loss_from_sums(*sums, o, smooth=1.0)


def test_module_attributes_read_the_options_and_assignment_validates():
    loss = TverskyLoss("multiclass", 0.3, 0.7, 2.0, smooth=0.1)
    assert (loss.alpha, loss.beta, loss.gamma, loss.smooth) == (0.3, 0.7, 2.0, 0.1)
    assert loss.options.kind == "tversky" and loss.options.alpha == 0.3
    loss.per_image = True
    assert loss.options.per_image is True and loss.per_image is True
    with pytest.raises(ValueError, match="gamma must be a float > 0"):
        loss.gamma = 0.0
    assert loss.gamma == 2.0  # the failed assignment left the options as they were
    dice = DiceLoss("multiclass")
    with pytest.raises(ValueError, match="include_background=False"):
        DiceLoss("binary").include_background = False
    dice.include_background = False
    x, t = make_case("multiclass", (4, 4))
    torch.testing.assert_close(dice(x, t), F.dice_loss(x, t, "multiclass", include_background=False))


def test_moving_the_module_moves_the_options_class_weights():
    dice = DiceLoss("multiclass", class_weights=[1.0, 2.0, 3.0])
    assert dice.options.class_weights is dice.class_weights
    dice.to(torch.float64)
    assert dice.class_weights.dtype == torch.float64
    assert dice.options.class_weights is dice.class_weights


def test_fused_path_reads_the_options_object():
    x, t = make_case("binary", (6, 6), dtype=torch.float32)
    dice = DiceLoss("binary", smooth=1.0)
    combined = CombinedLoss({"bce": BCELoss(), "dice": dice})
    assert plan(combined.terms, t) is not None
    before = combined(x, t)
    dice.smooth = 5.0  # a new options object; the fused path must see it
    after = combined(x, t)
    reference = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary", smooth=5.0)}, fused=False)(x, t)
    torch.testing.assert_close(after, reference)
    assert not torch.allclose(before, after)


def test_each_module_has_attributes_for_its_own_options_only():
    assert not hasattr(DiceLoss("binary"), "alpha") and not hasattr(JaccardLoss("binary"), "gamma")
    assert not hasattr(TverskyLoss("binary"), "squared_pred")
    assert DiceLoss("binary", squared_pred=True).squared_pred is True
