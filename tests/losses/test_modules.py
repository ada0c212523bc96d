"""Module contract: constructor args as attributes, tensors as buffers, functional == module."""

import inspect

import pytest
import torch

import seglosses
from seglosses import BCELoss, CombinedLoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss
from seglosses import functional as F

from _loss_cases import make_case

TENSOR_ARGS = {"pos_weight", "weight", "class_weights"}


@pytest.mark.parametrize(
    "fn",
    [
        BCELoss(pos_weight=[1.0, 2.0], label_smoothing=0.1, ignore_index=255, reduction="sum"),
        CrossEntropyLoss(weight=[1.0, 2.0], ignore_index=255, label_smoothing=0.1, reduction="none"),
        DiceLoss("multiclass", from_logits=False, smooth=1.0, squared_pred=True, log_loss=True, per_image=True,
                 ignore_index=255, class_weights=[1.0, 2.0], include_background=False, sync_dist=True,
                 empty_class="zero"),
        JaccardLoss("multilabel", smooth=0.5, class_weights=[1.0, 2.0], empty_class="exclude"),
        TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=1.5, smooth=0.1, per_image=True),
        FocalLoss("multiclass", alpha=[0.25, 0.75], gamma=1.0, ignore_index=255, reduction="sum"),
        FocalLoss("binary", alpha=0.25, gamma=2.0),
        FocalLoss("multilabel", weight=[1.0, 2.0], pos_weight=[2.0, 1.0], include_background=False),
        seglosses.GeneralizedDiceLoss("multiclass", weight_type="simple", smooth=1.0, per_image=True,
                                      include_background=False, ignore_index=255, reduction="none"),
        seglosses.LovaszLoss("multiclass", per_image=True, classes="all", ignore_index=255),
        seglosses.TopKCrossEntropyLoss(k=5.0, weight=[1.0, 2.0], ignore_index=255, label_smoothing=0.1),
        seglosses.TopKBCELoss(k=5.0, pos_weight=[2.0]),
        seglosses.OhemCrossEntropyLoss(threshold=0.5, min_kept=10, weight=[1.0, 2.0]),
        seglosses.OhemBCELoss(threshold=0.5, min_kept=10, pos_weight=[2.0]),
        seglosses.MCCLoss("multilabel", eps=1e-3, per_image=True, ignore_index=255, from_logits=False),
        seglosses.ClDiceLoss("multiclass", iterations=5, smooth=0.5, eps=1e-3, include_background=False),
        seglosses.DeepSupervisionLoss(DiceLoss("binary"), weights=[1.0, 0.5], target_downsample="max"),
    ],
    ids=lambda f: type(f).__name__,
)
def test_constructor_args_are_attributes_and_tensors_are_buffers(fn):
    sig = inspect.signature(type(fn).__init__)
    buffers = dict(fn.named_buffers())
    for name in list(sig.parameters)[1:]:
        assert hasattr(fn, name), name
        value = getattr(fn, name)
        if isinstance(value, torch.Tensor):
            assert name in buffers and name in TENSOR_ARGS | {"alpha"}
    moved = fn.to(torch.float64)
    for name, buf in moved.named_buffers():
        assert buf.dtype == torch.float64, name
    assert not fn.state_dict()  # options are config, not checkpoint state


def test_contract_signatures():
    def names(cls):
        return list(inspect.signature(cls.__init__).parameters)[1:]

    assert names(BCELoss) == ["pos_weight", "label_smoothing", "ignore_index", "reduction", "beta"]
    assert names(CrossEntropyLoss) == ["weight", "ignore_index", "label_smoothing", "reduction", "beta"]
    assert names(DiceLoss)[:10] == ["mode", "from_logits", "smooth", "squared_pred", "log_loss", "per_image",
                                    "ignore_index", "class_weights", "include_background", "sync_dist"]
    assert names(TverskyLoss)[:4] == ["mode", "alpha", "beta", "gamma"]
    assert names(FocalLoss) == ["mode", "alpha", "gamma", "ignore_index", "reduction", "weight", "pos_weight",
                                "include_background"]
    assert seglosses.CombinedLoss is CombinedLoss


def test_functional_equals_modules():
    x, t = make_case("multiclass", (4, 4))
    torch.testing.assert_close(F.dice_loss(x, t, "multiclass", smooth=1.0), DiceLoss("multiclass", smooth=1.0)(x, t))
    torch.testing.assert_close(F.jaccard_loss(x, t, "multiclass"), JaccardLoss("multiclass")(x, t))
    torch.testing.assert_close(
        F.tversky_loss(x, t, "multiclass", alpha=0.2, beta=0.8), TverskyLoss("multiclass", 0.2, 0.8)(x, t)
    )
    torch.testing.assert_close(F.focal_loss(x, t, "multiclass", gamma=1.0), FocalLoss("multiclass", gamma=1.0)(x, t))
    torch.testing.assert_close(F.cross_entropy(x, t, weight=[1.0, 2.0, 3.0]), CrossEntropyLoss(weight=[1.0, 2.0, 3.0])(x, t))


def test_loss_works_in_a_combined_loss_and_a_training_step():
    x, t = make_case("binary", (8, 8), dtype=torch.float32)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    loss_fn = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}, {"bce": 0.5, "dice": 0.5})
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(net(x), t)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
    assert set(loss_fn.last_values) == {"bce", "dice"}
