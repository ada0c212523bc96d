"""The fused autograd Functions of seglosses._fused against plain float64 autograd compositions.

Each Function returns (pixel term, I, P, T) sums; the reference computes the same four quantities
with ordinary torch ops and lets autograd differentiate. Values and logit gradients (for random
upstream gradients on every output) must agree to 1e-6 in float64. The tests call the Functions
through small adapters that take the arguments of the references (one signature for the four).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seglosses._fused import common
from seglosses._fused.bce import BCERegionFn
from seglosses._fused.ce import CERegionFn
from seglosses._fused.focal import SigmoidFocalRegionFn, SoftmaxFocalRegionFn

ROOT = Path(__file__).resolve().parents[2]
DT = torch.float64


class _Adapter:
    """``apply(x, t, v, weight, smoothing, alpha, gamma, squared, kind)`` -> (pixel, I, P, T)."""

    def __init__(self, family):
        self.family = family

    def apply(self, x, t, v, weight, smoothing, alpha, gamma, squared, kind):
        if self.family == "sigmoid" and kind == "bce":
            pixel, inter, pred, tsum, t_range = BCERegionFn.apply(x, t, v, weight, smoothing, squared, False)
            assert t_range is None
            return pixel, inter, pred, tsum
        if self.family == "sigmoid":
            return SigmoidFocalRegionFn.apply(x, t, v, alpha, gamma, squared)
        if kind == "ce":
            return CERegionFn.apply(x, t, v, weight, smoothing, squared)
        return SoftmaxFocalRegionFn.apply(x, t, v, alpha, gamma, squared)


_SigmoidDiceFn = _Adapter("sigmoid")
_SoftmaxDiceFn = _Adapter("softmax")


def _sigmoid_reference(x, t, v, pos_weight, smoothing, alpha, gamma, squared, kind):
    p = torch.sigmoid(x)
    vv = torch.ones_like(x) if v is None else v
    inter = (p * t * vv).sum(-1)
    pred = ((p * p if squared else p) * vv).sum(-1)
    tsum = (t * vv).sum(-1)
    if kind == "bce":
        ts = t * (1 - smoothing) + smoothing / 2
        pw = None if pos_weight is None else pos_weight.view(1, -1, 1)
        el = F.binary_cross_entropy_with_logits(x, ts, pos_weight=pw, reduction="none")
    else:  # torchvision.ops.sigmoid_focal_loss
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        el = ce * (1 - p_t) ** gamma
        if alpha is not None:
            el = el * (alpha * t + (1 - alpha) * (1 - t))
    pixel = (el * vv).sum() / vv.sum().clamp_min(1)
    return pixel, inter, pred, tsum


def _softmax_reference(x, t, v, weight, smoothing, alpha, gamma, squared, kind):
    num_classes = x.shape[1]
    p = torch.softmax(x, 1)
    vv = torch.ones(t.shape, dtype=x.dtype) if v is None else v
    onehot = F.one_hot(t, num_classes).movedim(-1, 1).to(x.dtype)
    inter = (p * onehot * vv[:, None]).sum(-1)
    pred = ((p * p if squared else p) * vv[:, None]).sum(-1)
    tsum = (onehot * vv[:, None]).sum(-1)
    if kind == "ce":
        tt = t.masked_fill(vv == 0, -100)
        pixel = F.cross_entropy(x, tt, weight=weight, label_smoothing=smoothing)
    else:
        logpt = torch.log_softmax(x, 1).gather(1, t[:, None])[:, 0]
        at = torch.ones_like(logpt) if alpha is None else alpha[t]
        el = -at * (1 - logpt.exp()) ** gamma * logpt
        pixel = (el * vv).sum() / vv.sum().clamp_min(1)
    return pixel, inter, pred, tsum


def _compare(fn, ref, x, args, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out1 = fn.apply(x1, *args)
    out2 = ref(x2, *args)
    for a, b in zip(out1, out2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # random upstream gradients for pixel, I and P (T has none)
    ws = [torch.randn(o.shape, generator=g, dtype=DT) for o in out1[:3]]
    loss1 = sum((w * o).sum() for w, o in zip(ws, out1[:3]))
    loss2 = sum((w * o).sum() for w, o in zip(ws, out2[:3]))
    (g1,) = torch.autograd.grad(loss1, x1)
    (g2,) = torch.autograd.grad(loss2, x2)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-6)


def _backward_twice(fn, x, args):
    """Gradient of one fixed loss of fn's outputs after one backward, and after a second one
    through the same graph (retain_graph=True)."""
    x1 = x.clone().requires_grad_()
    pixel, inter, pred, _ = fn.apply(x1, *args)
    loss = pixel + (inter * 0.3).sum() - (pred * 0.7).sum()
    loss.backward(retain_graph=True)
    first = x1.grad.clone()
    loss.backward()
    return first, x1.grad


def _binary_data(shape, soft, ignore, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=DT) * 3
    t = torch.rand(shape, generator=g, dtype=DT)
    t = t if soft else (t > 0.5).to(DT)
    v = (torch.rand(shape, generator=g) > 0.3).to(DT) if ignore else None
    if v is not None:
        t = t * v
    return x, t, v


@pytest.mark.parametrize(
    "squared,ignore,soft,pw,smoothing",
    [
        (False, False, False, False, 0.0),
        (True, False, True, False, 0.0),
        (False, True, False, True, 0.1),
        (True, True, True, True, 0.2),
        (False, False, True, True, 0.0),
    ],
)
def test_sigmoid_bce_matches_reference(squared, ignore, soft, pw, smoothing):
    x, t, v = _binary_data((2, 3, 40), soft, ignore, seed=1)
    pos_weight = torch.tensor([0.5, 2.0, 3.0], dtype=DT) if pw else None
    args = (t, v, pos_weight, smoothing, None, 2.0, squared, "bce")
    _compare(_SigmoidDiceFn, _sigmoid_reference, x, args)


def test_sigmoid_bce_second_backward_with_retain_graph():
    """The BCE path writes its gradient into the saved probabilities; a second backward through
    the same graph (retain_graph=True) must recompute them, not reuse the overwritten buffer."""
    x, t, v = _binary_data((2, 3, 40), True, True, seed=5)
    args = (t, v, torch.tensor([0.5, 2.0, 3.0], dtype=DT), 0.1, None, 2.0, True, "bce")
    first, both = _backward_twice(_SigmoidDiceFn, x, args)
    x2 = x.clone().requires_grad_()
    rp, ri, rpr, _ = _sigmoid_reference(x2, *args)
    (expected,) = torch.autograd.grad(rp + (ri * 0.3).sum() - (rpr * 0.7).sum(), x2)
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(both, 2 * expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "squared,ignore,soft,pw,smoothing",
    [(False, False, False, False, 0.0), (True, True, True, True, 0.2), (False, True, True, False, 0.1)],
)
def test_sigmoid_bce_chunked_matches_reference(monkeypatch, squared, ignore, soft, pw, smoothing):
    """CPU chunking (cache blocking) with several chunks and a partial last one."""
    monkeypatch.setattr(common, "CPU_CHUNK_ELEMS", 24)
    monkeypatch.setattr(common, "MIN_CHUNK", 5)
    x, t, v = _binary_data((2, 3, 23), soft, ignore, seed=11)
    assert len(common.chunks(x)) == 5
    pos_weight = torch.tensor([0.5, 2.0, 3.0], dtype=DT) if pw else None
    args = (t, v, pos_weight, smoothing, None, 2.0, squared, "bce")
    _compare(_SigmoidDiceFn, _sigmoid_reference, x, args)


@pytest.mark.parametrize(
    "gamma,alpha,squared,ignore,soft",
    [(2.0, 0.25, False, False, False), (0.0, None, True, True, False), (0.5, 0.7, False, True, True),
     (3.0, None, True, False, True), (1.0, 0.25, False, False, False)],
)
def test_sigmoid_focal_matches_reference(gamma, alpha, squared, ignore, soft):
    x, t, v = _binary_data((2, 2, 5, 6), soft, ignore, seed=2)
    x, t = x.flatten(2), t.flatten(2)
    v = None if v is None else v.flatten(2)
    args = (t, v, None, 0.0, alpha, gamma, squared, "focal")
    _compare(_SigmoidDiceFn, _sigmoid_reference, x, args)


def _multiclass_data(b, c, n, ignore, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, n, generator=g, dtype=DT) * 3
    t = torch.randint(0, c, (b, n), generator=g)
    v = (torch.rand(b, n, generator=g) > 0.3).to(DT) if ignore else None
    return x, t, v


@pytest.mark.parametrize(
    "squared,ignore,weighted,smoothing",
    list(itertools.product([False, True], [False, True], [False, True], [0.0, 0.1])),
)
def test_softmax_ce_matches_reference(squared, ignore, weighted, smoothing):
    x, t, v = _multiclass_data(2, 4, 30, ignore, seed=3)
    weight = torch.tensor([0.2, 1.0, 2.0, 0.7], dtype=DT) if weighted else None
    args = (t, v, weight, smoothing, None, 2.0, squared, "ce")
    _compare(_SoftmaxDiceFn, _softmax_reference, x, args)


@pytest.mark.parametrize("kind,ignore", [("ce", False), ("ce", True), ("focal", True)])
def test_softmax_chunked_gradient_and_second_backward(monkeypatch, kind, ignore):
    """Backward scales the saved probabilities into the gradient in place, chunk by chunk
    (several chunks and a partial last one here); a second backward (retain_graph=True) must
    recompute them and give the same gradient again."""
    monkeypatch.setattr(common, "CPU_CHUNK_ELEMS", 40)
    monkeypatch.setattr(common, "MIN_CHUNK", 7)
    x, t, v = _multiclass_data(2, 3, 31, ignore, seed=9)
    assert len(common.chunks(x)) == 5
    args = (t, v, None, 0.0, None, 2.0, False, kind)
    _compare(_SoftmaxDiceFn, _softmax_reference, x, args)
    first, both = _backward_twice(_SoftmaxDiceFn, x, args)
    torch.testing.assert_close(both, 2 * first, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "gamma,alpha,squared,ignore",
    [(2.0, None, False, False), (0.0, None, True, True), (0.5, [0.1, 0.5, 1.0], False, True),
     (3.0, [1.0, 2.0, 0.5], True, False)],
)
def test_softmax_focal_matches_reference(gamma, alpha, squared, ignore):
    x, t, v = _multiclass_data(2, 3, 25, ignore, seed=4)
    a = None if alpha is None else torch.tensor(alpha, dtype=DT)
    args = (t, v, None, 0.0, a, gamma, squared, "focal")
    _compare(_SoftmaxDiceFn, _softmax_reference, x, args)


def test_gradcheck_both_functions():
    x, t, v = _binary_data((1, 2, 7), True, True, seed=5)
    pw = torch.tensor([0.5, 2.0], dtype=DT)
    for args in [(t, v, pw, 0.1, None, 2.0, True, "bce"), (t, v, None, 0.0, 0.25, 0.5, False, "focal")]:
        f = lambda xx, a=args: _SigmoidDiceFn.apply(xx, *a)[:3]  # noqa: E731
        assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),))
    x, t, v = _multiclass_data(1, 3, 6, True, seed=6)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    for args in [(t, v, w, 0.1, None, 2.0, True, "ce"), (t, v, None, 0.0, w, 0.5, False, "focal")]:
        f = lambda xx, a=args: _SoftmaxDiceFn.apply(xx, *a)[:3]
        assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),))


def test_saturated_logits_stay_finite():
    """gamma < 1 at saturated logits: the focal gradient is computed in log space."""
    x = torch.tensor([[[40.0, -40.0, 1e4, -1e4]]], dtype=torch.float32)
    t = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])
    xr = x.clone().requires_grad_()
    out = _SigmoidDiceFn.apply(xr, t, None, None, 0.0, 0.25, 0.5, False, "focal")
    sum(o.sum() for o in out[:3]).backward()
    assert torch.isfinite(xr.grad).all()
    xm = torch.tensor([[[60.0, -60.0], [-60.0, 60.0], [0.0, 0.0]]]).requires_grad_()
    tm = torch.tensor([[0, 1]])
    out = _SoftmaxDiceFn.apply(xm, tm, None, None, 0.0, None, 0.3, False, "focal")
    sum(o.sum() for o in out[:3]).backward()
    assert torch.isfinite(xm.grad).all()


def test_all_ignored_gives_zero_pixel_term_and_gradient():
    x, t, _ = _multiclass_data(1, 3, 5, False, seed=7)
    v = torch.zeros(1, 5, dtype=DT)
    xr = x.clone().requires_grad_()
    pixel, inter, pred, tsum = _SoftmaxDiceFn.apply(xr, t, v, None, 0.1, None, 2.0, False, "ce")
    (pixel + inter.sum() + pred.sum()).backward()
    assert pixel.item() == 0.0 and torch.count_nonzero(xr.grad) == 0
    xb, tb, _ = _binary_data((1, 1, 5), False, False, seed=8)
    vb = torch.zeros_like(xb)
    xr = xb.clone().requires_grad_()
    pixel, inter, pred, _ = _SigmoidDiceFn.apply(xr, tb * vb, vb, None, 0.0, None, 2.0, False, "bce")
    (pixel + inter.sum() + pred.sum()).backward()
    assert pixel.item() == 0.0 and torch.count_nonzero(xr.grad) == 0


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.5])
def test_sigmoid_focal_saturated_matches_torchvision_float32(gamma):
    """Saturated logits (|x| up to 1e4) in float32: finite, and torchvision's value; gradients
    equal torchvision's float64 gradients wherever those are finite (it gives NaN at q = 0)."""
    from torchvision.ops import sigmoid_focal_loss

    x = torch.tensor([[[40.0, -40.0, 1e4, -1e4, 17.0, -17.0, 0.3, -2.0]]])
    t = torch.tensor([[[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.7, 0.2]]])
    x1, x2 = x.clone().requires_grad_(), x.double().requires_grad_()
    pixel = _SigmoidDiceFn.apply(x1, t, None, None, 0.0, 0.25, gamma, False, "focal")[0]
    ref = sigmoid_focal_loss(x2, t.double(), alpha=0.25, gamma=gamma, reduction="mean")
    pixel.backward()
    ref.backward()
    assert torch.isfinite(x1.grad).all()
    torch.testing.assert_close(pixel.double(), ref, atol=1e-6, rtol=1e-5)
    ok = torch.isfinite(x2.grad)
    assert ok.sum() >= 4
    torch.testing.assert_close(x1.grad.double()[ok], x2.grad[ok], atol=1e-6, rtol=1e-4)


def test_softmax_ce_extreme_logits_match_cross_entropy_float32():
    """A target probability that underflows in float32 still gives the exact CE (no log(0))."""
    x = torch.tensor([[[1e4, 0.0, -50.0], [0.0, 120.0, 3.0], [-1e4, -120.0, 2.0]]])  # [1, 3, 3]
    t = torch.tensor([[2, 0, 1]])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    pixel = _SoftmaxDiceFn.apply(x1, t, None, None, 0.1, None, 2.0, False, "ce")[0]
    ref = F.cross_entropy(x2, t, label_smoothing=0.1)
    pixel.backward()
    ref.backward()
    assert torch.isfinite(pixel) and pixel.item() > 1000
    torch.testing.assert_close(pixel, ref)
    torch.testing.assert_close(x1.grad, x2.grad)



def test_bench_script_runs_quick(capsys):
    """scripts/bench_losses.py --quick runs end to end (tiny shapes; no timing assertions)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_losses", ROOT / "scripts" / "bench_losses.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--repeats", "1", "--cases", "binary", "multiclass"]) == 0
    out = capsys.readouterr().out
    for row in ("binary BCE+Dice", "multiclass CE+Dice", "ours", "ours-compiled", "ours-composed", "floor", "peak MB"):
        assert row in out
    assert out.count("PASS") + out.count("FAIL") >= 2
