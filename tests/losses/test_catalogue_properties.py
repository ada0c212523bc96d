"""The contract of every loss, for the losses of issue 14: float64 gradcheck, ignore_index
invariance of loss and gradient, bfloat16 inputs, torch.compile(fullgraph=True), clear
ValueErrors, and defined values (never NaN) for empty classes and all-ignored batches."""

import pytest
import torch

from seglosses import (
    ClDiceLoss,
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

# (mode, factory taking ignore_index)
CASES = {
    "gdl-multiclass": ("multiclass", lambda ii: GeneralizedDiceLoss("multiclass", ignore_index=ii)),
    "gdl-multilabel": ("multilabel", lambda ii: GeneralizedDiceLoss("multilabel", weight_type="simple", per_image=True, ignore_index=ii)),
    "lovasz-binary": ("binary", lambda ii: LovaszLoss("binary", ignore_index=ii)),
    "lovasz-multilabel": ("multilabel", lambda ii: LovaszLoss("multilabel", per_image=True, ignore_index=ii)),
    "lovasz-multiclass": ("multiclass", lambda ii: LovaszLoss("multiclass", ignore_index=ii)),
    "topk-ce": ("multiclass", lambda ii: TopKCrossEntropyLoss(k=30.0, weight=[1.0, 2.0, 0.5], ignore_index=ii, label_smoothing=0.1)),
    "topk-ce-plain": ("multiclass", lambda ii: TopKCrossEntropyLoss(k=30.0, ignore_index=ii)),
    "topk-bce": ("multilabel", lambda ii: TopKBCELoss(k=30.0, pos_weight=[1.0, 2.0, 0.5], ignore_index=ii)),
    "ohem-ce": ("multiclass", lambda ii: OhemCrossEntropyLoss(threshold=0.6, min_kept=5, ignore_index=ii)),
    "ohem-bce": ("binary", lambda ii: OhemBCELoss(threshold=0.6, min_kept=5, ignore_index=ii)),
    "mcc-binary": ("binary", lambda ii: MCCLoss("binary", ignore_index=ii)),
    "mcc-multilabel": ("multilabel", lambda ii: MCCLoss("multilabel", per_image=True, ignore_index=ii)),
    "cldice-binary": ("binary", lambda ii: ClDiceLoss("binary", iterations=2, ignore_index=ii)),
    "cldice-multiclass": ("multiclass", lambda ii: ClDiceLoss("multiclass", iterations=2, ignore_index=ii)),
}
IDS = list(CASES)


@pytest.mark.parametrize("name", IDS)
def test_gradcheck_float64(name):
    mode, factory = CASES[name]
    x, t = make_case(mode, (4, 4))
    x.requires_grad_()
    fn = factory(None)
    assert torch.autograd.gradcheck(lambda v: fn(v, t), (x,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", IDS)
def test_logits_at_ignored_pixels_change_neither_loss_nor_gradient(name):
    mode, factory = CASES[name]
    x, t = make_case(mode, (6, 7), ignore=True)
    ignored = (t == IGNORE) if mode != "multiclass" else (t == IGNORE).unsqueeze(1).expand_as(x)
    y = torch.where(ignored, x + 5 * torch.randn_like(x), x)
    fn = factory(IGNORE)
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    la, lb = fn(a, t), fn(b, t)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.all(a.grad[ignored] == 0)


@pytest.mark.parametrize("name", IDS)
def test_all_ignored_batch_and_empty_classes_are_finite(name):
    mode, factory = CASES[name]
    x, t = make_case(mode, (5, 6))
    x.requires_grad_()
    loss = factory(IGNORE)(x, torch.full_like(t, IGNORE))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    empty = torch.zeros_like(t)  # binary / multilabel: no foreground; multiclass: class 0 only
    assert torch.isfinite(factory(None)(x.detach(), empty))


@pytest.mark.parametrize("name", IDS)
def test_bfloat16_logits_are_upcast_finite_and_close(name):
    mode, factory = CASES[name]
    x, t = make_case(mode, (6, 7), dtype=torch.float32)
    fn = factory(None)
    low = x.bfloat16()
    out = fn(low, t)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, fn(low.float(), t))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(fn(low, t))


@pytest.mark.parametrize("name", IDS)
def test_fullgraph_compile(name):
    mode, factory = CASES[name]
    torch._dynamo.reset()
    fn = factory(IGNORE)
    x, t = make_case(mode, (5, 6), ignore=True, dtype=torch.float32)
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, t), fn(x, t))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: GeneralizedDiceLoss("multiclass", weight_type="cubic"), "weight_type"),
        (lambda: LovaszLoss("multiclass", classes="some"), "classes"),
        (lambda: TopKCrossEntropyLoss(k=0), "percentage"),
        (lambda: TopKCrossEntropyLoss(label_smoothing=1.5), "label_smoothing"),
        (lambda: OhemBCELoss(label_smoothing=-0.1), "label_smoothing"),
        (lambda: OhemCrossEntropyLoss(threshold=1.5), "threshold"),
        (lambda: OhemCrossEntropyLoss(min_kept=-1), "min_kept"),
        (lambda: MCCLoss("multiclass"), "mode"),
        (lambda: ClDiceLoss("binary", iterations=-1), "iterations"),
        (lambda: DeepSupervisionLoss(DiceLoss("binary"), weights=[1.0, float("nan")]), "weights"),
        (lambda: DeepSupervisionLoss(DiceLoss("multiclass"), target_downsample="max"), "nearest"),
    ],
)
def test_bad_options_are_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_input_is_a_value_error():
    x, t = make_case("multiclass", (5, 6))
    with pytest.raises(ValueError, match="class indices"):
        LovaszLoss("multiclass")(x, t + 10)
    with pytest.raises(ValueError, match="shape"):
        TopKCrossEntropyLoss()(x, t[:, :3])
    with pytest.raises(ValueError, match="2D or 3D"):
        ClDiceLoss("multiclass")(x.flatten(2), t.flatten(1))
    with pytest.raises(ValueError, match="one per output"):
        DeepSupervisionLoss(DiceLoss("multiclass"), weights=[1.0])([x, x], t)
