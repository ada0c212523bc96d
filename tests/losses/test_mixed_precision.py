"""Mixed precision: float32 results under autocast, float32 accumulation for float16 inputs."""

import pytest
import segmentation_models_pytorch.losses as smp
import torch

from seglosses import BCELoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss

from _loss_cases import make_case


def _all_losses(mode):
    losses = [DiceLoss(mode), DiceLoss(mode, squared_pred=True, per_image=True), JaccardLoss(mode),
              TverskyLoss(mode, 0.3, 0.7, 1.5), FocalLoss(mode, alpha=0.25 if mode != "multiclass" else None)]
    losses += [CrossEntropyLoss(label_smoothing=0.1)] if mode == "multiclass" else [BCELoss()]
    return losses


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_autocast_bfloat16_gives_float32_close_to_float32(mode):
    x, t = make_case(mode, (16, 16), batch=2, dtype=torch.float32)
    conv = torch.nn.Conv2d(x.shape[1], x.shape[1], 1)
    torch.nn.init.eye_(conv.weight.view(x.shape[1], x.shape[1]))
    torch.nn.init.zeros_(conv.bias)
    for fn in _all_losses(mode):
        ref = fn(conv(x), t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = conv(x)  # bfloat16, as a network under autocast produces
            assert logits.dtype == torch.bfloat16
            loss = fn(logits, t)
        assert loss.dtype == torch.float32, fn
        assert torch.isfinite(loss)
        assert loss.item() == pytest.approx(ref.item(), rel=2e-2, abs=2e-3), fn
        loss.backward()  # backward through the bfloat16 network works


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_return_float32(dtype):
    for mode in ("binary", "multiclass", "multilabel"):
        x, t = make_case(mode, (8, 8), dtype=torch.float32)
        for fn in _all_losses(mode):
            xh = x.to(dtype).requires_grad_()
            loss = fn(xh, t)
            assert loss.dtype == torch.float32
            assert loss.item() == pytest.approx(fn(xh.detach().float(), t).item(), rel=1e-5, abs=1e-6)
            loss.backward()
            assert xh.grad.dtype == dtype and torch.isfinite(xh.grad).all()


def test_dice_on_large_float16_volume_does_not_overflow():
    # 96^3 voxels: sum(p) + sum(t) exceeds float16's max (65504); smp (and MONAI) return NaN/inf.
    g = torch.Generator().manual_seed(0)
    x32 = 2 * torch.randn(1, 1, 96, 96, 96, generator=g)
    t = (torch.rand(1, 1, 96, 96, 96, generator=g) > 0.3).float()
    x16 = x32.half()
    ours = DiceLoss("binary")(x16, t.half())
    ref = DiceLoss("binary")(x16.double(), t.double())  # same float16 logits, exact float64 maths
    assert torch.isfinite(ours) and ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    theirs = smp.DiceLoss("binary")(x16, t.half())
    assert not torch.isfinite(theirs) or abs(theirs.item() - ref.item()) > 1e-2  # the reason we upcast
