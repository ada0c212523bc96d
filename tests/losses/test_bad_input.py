"""Bad input -> ValueError from seglosses saying what was expected and what came."""

import pytest
import torch

import seglosses
from seglosses import BCELoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss

MODE_LOSSES = [DiceLoss, JaccardLoss, TverskyLoss, FocalLoss]


@pytest.mark.parametrize("cls", MODE_LOSSES)
def test_unknown_mode(cls):
    with pytest.raises(ValueError, match=r"mode must be one of .*'multi-class'"):
        cls("multi-class")


@pytest.mark.parametrize("cls", MODE_LOSSES)
def test_shape_mismatch(cls):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"target must have shape \[B, \*spatial\] = \[2, 4, 4\].*got \[2, 4, 5\]"):
        cls("multiclass")(x, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"squeeze"):
        cls("multiclass")(x, torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"multilabel target must have shape \[2, 3, 4, 4\].*got \[2, 1, 4, 4\]"):
        cls("multilabel")(x, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"binary mode expects logits with 1 channel"):
        cls("binary")(x, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"binary target must have shape"):
        cls("binary")(x[:, :1], torch.zeros(2, 1, 4, 3))


def test_bce_and_ce_shape_mismatch():
    with pytest.raises(ValueError, match=r"BCELoss: .*target must have shape \[2, 3, 4\].*got \[2, 3, 5\]"):
        BCELoss()(torch.randn(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: multiclass target must have shape"):
        CrossEntropyLoss()(torch.randn(2, 3, 4), torch.zeros(3, 4, dtype=torch.long))


@pytest.mark.parametrize(
    "fn, target",
    [
        (BCELoss(), torch.zeros(0, 1, 4, 4)),
        (DiceLoss("binary"), torch.zeros(0, 1, 4, 4)),
        (FocalLoss("binary"), torch.zeros(0, 1, 4, 4)),
        (seglosses.CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}), torch.zeros(0, 1, 4, 4)),
        (CrossEntropyLoss(), torch.zeros(0, 4, 4, dtype=torch.long)),
        (JaccardLoss("multiclass"), torch.zeros(0, 4, 4, dtype=torch.long)),
        (seglosses.CombinedLoss({"ce": CrossEntropyLoss(), "dice": DiceLoss("multiclass")}),
         torch.zeros(0, 4, 4, dtype=torch.long)),
    ],
)
def test_empty_batch(fn, target):
    channels = 1 if target.is_floating_point() else 3
    with pytest.raises(ValueError, match=r"logits are empty \(shape \(0, %d, 4, 4\)\).*skip empty batches" % channels):
        fn(torch.zeros(0, channels, 4, 4, requires_grad=True), target)


@pytest.mark.parametrize("fn", [CrossEntropyLoss(), DiceLoss("multiclass"), FocalLoss("multiclass")])
def test_multiclass_target_dtype(fn):
    with pytest.raises(ValueError, match=r"integer class indices .*got dtype torch.float32"):
        fn(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4))


@pytest.mark.parametrize("cls", [DiceLoss, JaccardLoss, TverskyLoss, FocalLoss])
def test_logits_must_be_float(cls):
    with pytest.raises(ValueError, match=r"logits must be a floating-point tensor.*torch.int64"):
        cls("binary")(torch.zeros(2, 1, 4, 4, dtype=torch.long), torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize("fn", [CrossEntropyLoss(), DiceLoss("multiclass"), FocalLoss("multiclass"),
                                CrossEntropyLoss(ignore_index=255)])
def test_class_index_out_of_range(fn):
    t = torch.zeros(2, 4, 4, dtype=torch.long)
    t[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\].*got values in \[0, 3\]"):
        fn(torch.randn(2, 3, 4, 4), t)
    t[0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"got values in \[-1, 0\]"):
        fn(torch.randn(2, 3, 4, 4), t)


@pytest.mark.parametrize("fn", [BCELoss(), DiceLoss("binary"), FocalLoss("binary"), TverskyLoss("binary")])
def test_binary_target_out_of_unit_interval(fn):
    t = torch.zeros(2, 1, 4, 4)
    t[0, 0, 0, 0] = 255.0  # e.g. a void label without ignore_index
    with pytest.raises(ValueError, match=r"target values must be in \[0, 1\].*got values in \[0, 255\]"):
        fn(torch.randn(2, 1, 4, 4), t)


def test_value_checks_can_be_switched_off():
    x = torch.randn(2, 3, 4, 4)
    t = torch.zeros(2, 4, 4, dtype=torch.long)
    t[0, 0, 0] = 255  # treated as ignore_index=None: an invalid label
    assert seglosses.checks_enabled()
    previous = seglosses.set_checks(False)
    try:
        assert previous is True and not seglosses.checks_enabled()
        DiceLoss("multiclass")(x, t.clamp_max(2))  # runs without the value pass
        tb = torch.full((2, 1, 4, 4), 0.5)
        tb[0, 0, 0, 0] = 7.0
        BCELoss()(torch.randn(2, 1, 4, 4), tb)  # no range check: computes with the bad value
    finally:
        seglosses.set_checks(previous)
    # structural checks still run with value checks off
    seglosses.set_checks(False)
    with pytest.raises(ValueError, match="target must have shape"):
        DiceLoss("multiclass")(x, torch.zeros(2, 4, 5, dtype=torch.long))
    seglosses.set_checks(True)


def test_weight_vectors_of_wrong_length():
    x = torch.randn(2, 3, 4, 4)
    t = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"weight has 2 values but the logits have 3 classes"):
        CrossEntropyLoss(weight=[1.0, 2.0])(x, t)
    with pytest.raises(ValueError, match=r"class_weights has 4 values but the logits have 3 classes"):
        DiceLoss("multiclass", class_weights=[1.0, 1.0, 1.0, 1.0])(x, t)
    with pytest.raises(ValueError, match=r"alpha has 2 values but the logits have 3 classes"):
        FocalLoss("multiclass", alpha=[0.5, 0.5])(x, t)
    with pytest.raises(ValueError, match=r"pos_weight has 2 values but the logits have 3 classes"):
        BCELoss(pos_weight=[1.0, 2.0])(x, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"binary mode has one class, so class_weights needs 1 value"):
        DiceLoss("binary", class_weights=[1.0, 2.0])


def test_bad_options():
    with pytest.raises(ValueError, match="empty_class must be one of"):
        DiceLoss("binary", empty_class="skip")
    with pytest.raises(ValueError, match="include_background=False"):
        DiceLoss("binary", include_background=False)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        BCELoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        CrossEntropyLoss(reduction="batchmean")
    with pytest.raises(ValueError, match="gamma must be a float >= 0"):
        FocalLoss("binary", gamma=-1.0)
    with pytest.raises(ValueError, match="per-class alpha list is for mode='multiclass'"):
        FocalLoss("binary", alpha=[0.25])
    with pytest.raises(ValueError, match="alpha must be in"):
        FocalLoss("binary", alpha=1.5)
    with pytest.raises(ValueError, match="smooth must be a float >= 0"):
        JaccardLoss("binary", smooth=-1.0)
    with pytest.raises(ValueError, match="gamma must be a float > 0"):
        TverskyLoss("binary", gamma=0.0)
    with pytest.raises(ValueError, match="class_weights must be finite and >= 0"):
        DiceLoss("multiclass", class_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="at least 2 channels"):
        DiceLoss("multiclass")(torch.randn(2, 1, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long))


def test_focal_target_with_grad():
    t = torch.rand(2, 1, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="no gradient with respect to the target"):
        FocalLoss("binary")(torch.randn(2, 1, 4, 4), t)
