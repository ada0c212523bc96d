"""The torch.compile-generated CPU kernels of seglosses._compiled against the eager fused path.

The kernels are opt-in: the tests that run them switch them on explicitly (``small_threshold``),
and one test checks that by default nothing is compiled. The kernels normally start at
MIN_ELEMS (2^20) logits; the tests lower that threshold so that small inputs take the compiled
path (the kernels are compiled for dynamic sizes, so the size does not change what is
compiled). The first test in a process pays the compilation (a C++ build: tens of seconds
with an empty inductor cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import seglosses
from seglosses import BCELoss, CombinedLoss, DiceLoss, _compiled

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def small_threshold(monkeypatch):
    """Compiled kernels for every input size, switched on, and a spy on their use."""
    monkeypatch.setattr(_compiled, "MIN_ELEMS", 1)
    monkeypatch.setattr(_compiled, "_failed", False)
    previous = seglosses.set_cpu_compile(True)
    calls = []
    real_run = _compiled._run

    def spy(name, fn, *args):
        calls.append(name)
        return real_run(name, fn, *args)

    monkeypatch.setattr(_compiled, "_run", spy)
    yield calls
    seglosses.set_cpu_compile(previous)


def _run_loss(loss, x, t):
    xx = x.clone().requires_grad_()
    value = loss(xx, t)
    value.backward()
    return value.detach(), {k: v.detach() for k, v in loss.last_values.items()}, xx.grad


def _eager(loss, x, t):
    previous = seglosses.set_cpu_compile(False)
    try:
        return _run_loss(loss, x, t)
    finally:
        seglosses.set_cpu_compile(previous)


@pytest.mark.parametrize(
    "shape, target_shape, smoothing, soft",
    [
        ((4, 1, 16, 16), (4, 1, 16, 16), 0.0, False),  # 1024 elements: rows of 64 only
        ((3, 1, 7, 9), (3, 7, 9), 0.0, False),  # 189: two rows and a tail of 61; [B, H, W] target
        ((2, 1, 8, 8, 5), (2, 1, 8, 8, 5), 0.1, True),  # 3D, label smoothing, soft targets
    ],
)
def test_compiled_equals_eager(small_threshold, shape, target_shape, smoothing, soft):
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(shape, generator=g)
    x.view(-1)[:3] = torch.tensor([30.0, -30.0, 0.0])  # saturated logits
    t = torch.rand(target_shape, generator=g)
    t = t if soft else (t > 0.6).float()
    loss = CombinedLoss({"bce": BCELoss(label_smoothing=smoothing), "dice": DiceLoss("binary")})
    value, terms, grad = _run_loss(loss, x, t)
    assert small_threshold == ["bce_dice_forward", "bce_dice_backward"]
    ref_value, ref_terms, ref_grad = _eager(loss, x, t)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    for name in ("bce", "dice"):
        torch.testing.assert_close(terms[name], ref_terms[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-9)


def test_compiled_matches_float64_composition(small_threshold):
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(2, 1, 32, 32, generator=g)
    t = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    loss = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")})
    value, _, grad = _run_loss(loss, x, t)
    x64 = x.double().requires_grad_()
    ref = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}, fused=False)(x64, t.double())
    ref.backward()
    assert small_threshold  # the compiled kernels ran for the float32 call
    assert abs(value.double().item() - ref.item()) < 1e-5
    torch.testing.assert_close(grad.double(), x64.grad, rtol=1e-4, atol=1e-10)


def test_compiled_path_checks_target_range(small_threshold):
    loss = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")})
    x = torch.randn(2, 1, 8, 8)
    t = torch.zeros(2, 1, 8, 8)
    t[1, 0, 3, 3] = 2.0
    with pytest.raises(ValueError, match=r"target values must be in \[0, 1\].*\[0, 2\]"):
        loss(x, t)
    assert small_threshold == ["bce_dice_forward"]


def test_second_backward_with_retain_graph(small_threshold):
    loss = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")})
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    value = loss(x, t)
    value.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    value.backward()
    torch.testing.assert_close(x.grad, first)


@pytest.mark.parametrize("where", ["at torch.compile", "at the first call"])
def test_failed_compilation_warns_once_and_falls_back(small_threshold, monkeypatch, where):
    def broken_compile(fn, **kwargs):
        if where == "at torch.compile":  # e.g. a Python that dynamo does not support
            raise RuntimeError("no C++ compiler found")

        def run(*args):  # inductor fails while compiling, on the first call
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(_compiled, "_kernels", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    loss = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")})
    x = torch.randn(2, 1, 8, 8)
    t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    with pytest.warns(RuntimeWarning, match="compiling the fused CPU kernel failed.*no C\\+\\+ compiler"):
        value, _, grad = _run_loss(loss, x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: eager from now on
        again, _, _ = _run_loss(loss, x, t)
    ref_value, _, ref_grad = _eager(loss, x, t)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(again, ref_value)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize(
    "case",
    ["float64", "ignore_index", "pos_weight", "squared_pred", "per_image", "multilabel", "small", "off"],
)
def test_eager_where_the_compiled_kernels_do_not_apply(small_threshold, monkeypatch, case):
    dtype = torch.float64 if case == "float64" else torch.float32
    bce = BCELoss(pos_weight=[2.0] if case == "pos_weight" else None,
                  ignore_index=-1 if case == "ignore_index" else None)
    mode = "multilabel" if case == "multilabel" else "binary"
    dice = DiceLoss(mode, squared_pred=case == "squared_pred", per_image=case == "per_image",
                    ignore_index=-1 if case == "ignore_index" else None)
    if case == "small":
        monkeypatch.setattr(_compiled, "MIN_ELEMS", 10_000)
    if case == "off":
        seglosses.set_cpu_compile(False)
    channels = 3 if case == "multilabel" else 1
    x = torch.randn(2, channels, 8, 8, dtype=dtype)
    t = (torch.rand(2, channels, 8, 8) > 0.5).to(dtype)
    CombinedLoss({"bce": bce, "dice": dice})(x, t)
    assert small_threshold == []


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("1", True), ("0", False),
                                             ("off", False), (" False ", False), ("no", False),
                                             ("yes", True), (" ON ", True), ("true", True)])
def test_environment_variable_values(value, expected):
    assert _compiled._env_allows(value) is expected


def test_unrecognised_environment_value_warns_and_stays_off():
    with pytest.warns(RuntimeWarning, match="SEGLOSSES_CPU_COMPILE='sometimes' is not one of"):
        assert _compiled._env_allows("sometimes") is False


@pytest.mark.parametrize("value, expected", [(None, "False"), ("1", "True"), ("0", "False")])
def test_environment_variable_is_read_at_import(value, expected):
    code = "import seglosses; print(seglosses.cpu_compile_enabled())"
    env = {k: v for k, v in os.environ.items() if k != "SEGLOSSES_CPU_COMPILE"}
    if value is not None:
        env["SEGLOSSES_CPU_COMPILE"] = value
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == expected


# A large binary BCE+Dice call (MIN_ELEMS logits) with torch.compile replaced by a spy, in a
# fresh process without SEGLOSSES_CPU_COMPILE: prints how often torch.compile was called.
_NO_COMPILE_BY_DEFAULT = """
import sys
import torch
calls = []
torch.compile = lambda fn, **kwargs: calls.append(fn.__name__) or fn
import seglosses
from seglosses import BCELoss, CombinedLoss, DiceLoss, _compiled
if sys.argv[1] == "on":
    seglosses.set_cpu_compile(True)
x = torch.randn(4, 1, 512, 512, requires_grad=True)
assert x.numel() >= _compiled.MIN_ELEMS
t = (torch.rand(4, 1, 512, 512) > 0.5).float()
CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")})(x, t).backward()
print(len(calls))
"""


@pytest.mark.parametrize("switch, compiles", [("default", 0), ("on", 2)])
def test_no_loss_call_compiles_unless_asked(switch, compiles):
    env = {k: v for k, v in os.environ.items() if k != "SEGLOSSES_CPU_COMPILE"}
    out = subprocess.run([sys.executable, "-c", _NO_COMPILE_BY_DEFAULT, switch], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == compiles  # "on": the forward and the backward kernel
