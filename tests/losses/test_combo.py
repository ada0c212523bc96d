"""CombinedLoss: the weighted sum, per-term values, bad input, and the fused fast paths.

The fused path (seglosses._fused) must equal the composed computation -- the same terms called
one by one, ``CombinedLoss(..., fused=False)`` -- to 1e-6 in float64, value and logit gradient,
over the option families it supports, in 2D and 3D.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglosses import (
    BCELoss,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    TverskyLoss,
)
from seglosses import _fused

DT = torch.float64


def _data(mode, shape, seed=0, ignore=None, soft=False, dtype=DT):
    """Logits and a target for ``mode``; ``shape`` is [B, C, *spatial]. ``ignore`` marks ~25%."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2
    B, C, *sp = shape
    if mode == "multiclass":
        t = torch.randint(0, C, (B, *sp), generator=g)
        if ignore is not None:
            t[torch.rand(t.shape, generator=g) < 0.25] = ignore
    else:
        t = torch.rand(shape, generator=g, dtype=dtype)
        t = t if soft else (t > 0.5).to(dtype)
        if ignore is not None:
            t[torch.rand(t.shape, generator=g) < 0.25] = ignore
    return x, t


def _check_equal(terms, weights, x, t):
    """Fused vs composed: plan exists, values, per-term values and gradients agree to 1e-6."""
    fused = CombinedLoss(terms, weights)
    composed = CombinedLoss(terms, weights, fused=False)
    assert _fused.plan(fused.terms, t) is not None, "expected the fused path to apply"
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    l1, l2 = fused(x1, t), composed(x2, t)
    assert l1.shape == () and torch.isfinite(l1)
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-6)
    assert list(fused.last_values) == list(terms)
    for k in terms:
        torch.testing.assert_close(fused.last_values[k], composed.last_values[k], atol=1e-6, rtol=1e-6)
        assert not fused.last_values[k].requires_grad
    l1.backward()
    l2.backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-6)


REGION_OPTIONS = [
    {},
    {"smooth": 1.0},
    {"squared_pred": True},
    {"log_loss": True, "smooth": 1e-5},
    {"per_image": True},
    {"per_image": True, "squared_pred": True, "log_loss": True},
    {"empty_class": "zero"},
    {"empty_class": "exclude", "smooth": 0.5},
]


@pytest.mark.parametrize("opts", REGION_OPTIONS)
@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
def test_bce_dice_binary(opts, spatial):
    x, t = _data("binary", (3, 1, *spatial), seed=1)
    t[0] = 0  # an image without foreground: empty class per image
    terms = {"bce": BCELoss(), "dice": DiceLoss("binary", **opts)}
    _check_equal(terms, {"bce": 0.7, "dice": 1.3}, x, t)


@pytest.mark.parametrize(
    "bce_opts,dice_opts",
    [
        ({"pos_weight": [2.0, 0.5, 1.0]}, {"class_weights": [1.0, 2.0, 0.5]}),
        ({"label_smoothing": 0.1}, {"include_background": False, "per_image": True}),
        ({"ignore_index": 255, "pos_weight": [3.0, 1.0, 1.0]}, {"ignore_index": 255, "squared_pred": True}),
        ({"ignore_index": -1, "label_smoothing": 0.2}, {"ignore_index": -1, "log_loss": True, "smooth": 1.0}),
    ],
)
@pytest.mark.parametrize("spatial", [(5, 6), (2, 3, 4)])
def test_bce_dice_multilabel(bce_opts, dice_opts, spatial):
    ignore = bce_opts.get("ignore_index")
    x, t = _data("multilabel", (2, 3, *spatial), seed=2, ignore=ignore, soft=ignore is None)
    terms = {"a": DiceLoss("multilabel", **dice_opts), "b": BCELoss(**bce_opts)}
    _check_equal(terms, {"a": 1.0, "b": 2.0}, x, t)


def test_bce_dice_binary_target_without_channel_dim():
    x, t = _data("binary", (2, 1, 5, 5), seed=3)
    _check_equal({"bce": BCELoss(), "dice": DiceLoss("binary")}, None, x, t[:, 0])


@pytest.mark.parametrize(
    "ce_opts,dice_opts",
    [
        ({}, {}),
        ({"weight": [0.2, 1.0, 3.0, 1.5]}, {"class_weights": [0.5, 1.0, 1.0, 2.0]}),
        ({"label_smoothing": 0.1}, {"include_background": False}),
        ({"label_smoothing": 0.2, "weight": [1.0, 2.0, 1.0, 0.5]}, {"squared_pred": True, "per_image": True}),
        ({"ignore_index": 255}, {"ignore_index": 255, "smooth": 1.0, "log_loss": True}),
        ({"ignore_index": 255, "weight": [1.0, 2.0, 1.0, 0.5], "label_smoothing": 0.1},
         {"ignore_index": 255, "per_image": True, "empty_class": "exclude"}),
    ],
)
@pytest.mark.parametrize("spatial", [(6, 5), (3, 4, 3)])
def test_ce_dice_multiclass(ce_opts, dice_opts, spatial):
    x, t = _data("multiclass", (2, 4, *spatial), seed=4, ignore=ce_opts.get("ignore_index"))
    t[t == 3] = 2  # class 3 absent from the target: the empty-class policy is exercised
    terms = {"ce": CrossEntropyLoss(**ce_opts), "dice": DiceLoss("multiclass", **dice_opts)}
    _check_equal(terms, {"ce": 1.0, "dice": 0.5}, x, t)


@pytest.mark.parametrize(
    "mode,focal_opts,dice_opts",
    [
        ("binary", {}, {}),
        ("binary", {"alpha": 0.25, "gamma": 0.5}, {"squared_pred": True, "smooth": 1.0}),
        ("multilabel", {"alpha": 0.75, "gamma": 3.0}, {"per_image": True, "class_weights": [1.0, 2.0, 3.0]}),
        ("multilabel", {"ignore_index": 255, "gamma": 1.0}, {"ignore_index": 255, "log_loss": True}),
        ("multiclass", {}, {}),
        ("multiclass", {"alpha": [0.5, 1.0, 2.0], "gamma": 0.5}, {"include_background": False}),
        ("multiclass", {"alpha": 0.25, "gamma": 0.0}, {"squared_pred": True, "per_image": True}),
        ("multiclass", {"ignore_index": 255}, {"ignore_index": 255, "smooth": 1.0}),
    ],
)
@pytest.mark.parametrize("spatial", [(5, 6), (3, 3, 4)])
def test_dice_focal(mode, focal_opts, dice_opts, spatial):
    C = 1 if mode == "binary" else 3
    x, t = _data(mode, (2, C, *spatial), seed=5, ignore=focal_opts.get("ignore_index"))
    terms = {"dice": DiceLoss(mode, **dice_opts), "focal": FocalLoss(mode, **focal_opts)}
    _check_equal(terms, {"dice": 1.0, "focal": 4.0}, x, t)


@pytest.mark.parametrize(
    "region",
    [JaccardLoss("multiclass", smooth=1.0), TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=1.5)],
)
def test_jaccard_and_tversky_pairs_also_fuse(region):
    x, t = _data("multiclass", (2, 3, 5, 4), seed=6)
    _check_equal({"ce": CrossEntropyLoss(), "region": region}, None, x, t)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
def test_channels_last_logits(mode):
    x, t = _data(mode, (2, 3, 5, 6), seed=13)
    x = x.contiguous(memory_format=torch.channels_last)
    if mode == "multiclass":
        terms = {"ce": CrossEntropyLoss(), "dice": DiceLoss("multiclass", squared_pred=True)}
    else:
        terms = {"bce": BCELoss(), "dice": DiceLoss("multilabel")}
    _check_equal(terms, None, x, t)


def test_sync_dist_without_process_group_fuses_and_matches():
    x, t = _data("multiclass", (2, 3, 4, 4), seed=7)
    _check_equal({"ce": CrossEntropyLoss(), "d": DiceLoss("multiclass", sync_dist=True)}, None, x, t)


def test_every_pixel_ignored_gives_zero_and_zero_gradient():
    x, t = _data("multiclass", (1, 3, 4, 4), seed=8)
    t[:] = 255
    loss = CombinedLoss({"ce": CrossEntropyLoss(ignore_index=255), "dice": DiceLoss("multiclass", ignore_index=255)})
    xr = x.clone().requires_grad_()
    out = loss(xr, t)
    out.backward()
    assert out.item() == 0.0 and torch.count_nonzero(xr.grad) == 0


def test_ignored_logits_change_nothing():
    x, t = _data("multilabel", (2, 2, 4, 4), seed=9, ignore=255)
    loss = CombinedLoss({"bce": BCELoss(ignore_index=255), "dice": DiceLoss("multilabel", ignore_index=255)})
    x2 = x.clone()
    x2[t == 255] += 5.0
    a, b = x.clone().requires_grad_(), x2.clone().requires_grad_()
    la, lb = loss(a, t), loss(b, t)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize(
    "terms,target_requires_grad",
    [
        ({"bce": BCELoss(reduction="sum"), "dice": DiceLoss("binary")}, False),
        ({"bce": BCELoss(ignore_index=255), "dice": DiceLoss("binary")}, False),
        ({"bce": BCELoss(), "dice": DiceLoss("binary", from_logits=False)}, False),
        ({"bce": BCELoss(), "dice": DiceLoss("binary"), "f": FocalLoss("binary")}, False),
        ({"bce": BCELoss(), "dice": DiceLoss("binary")}, True),
    ],
)
def test_unsupported_combinations_fall_back_to_composed(terms, target_requires_grad):
    x, t = _data("binary", (2, 1, 4, 4), seed=10)
    t.requires_grad_(target_requires_grad)
    combined = CombinedLoss(terms)
    assert _fused.plan(combined.terms, t) is None
    expected = sum(term(x, t) for term in terms.values())
    torch.testing.assert_close(combined(x, t), expected)
    assert set(combined.last_values) == set(terms)


def test_names_are_arbitrary_dispatch_is_on_types():
    terms = {"dice": BCELoss(), "bce": DiceLoss("binary")}  # misleading names on purpose
    fp = _fused.plan(nn.ModuleDict(terms))
    assert fp is not None and fp.kind == "bce" and fp.region_name == "bce"


def test_composed_weighted_sum_and_last_values():
    x = torch.randn(4, dtype=DT)
    t = torch.zeros(4, dtype=DT)
    combined = CombinedLoss({"mse": nn.MSELoss(), "l1": nn.L1Loss()}, {"mse": 2.0})
    out = combined(x, t)
    torch.testing.assert_close(out, 2.0 * (x**2).mean() + x.abs().mean())
    assert combined.weights == {"mse": 2.0, "l1": 1.0}
    torch.testing.assert_close(combined.last_values["l1"], x.abs().mean())


@pytest.mark.parametrize(
    "terms,weights,match",
    [
        ({}, None, "non-empty"),
        ({"a": nn.L1Loss()}, {"b": 1.0}, "unknown terms"),
        ({"a": lambda x, t: x}, None, "nn.Module"),
        ({"a": nn.L1Loss()}, {"a": "heavy"}, "number"),
        ({"a.b": nn.L1Loss()}, None, "without '.'"),
        ({"a": nn.L1Loss()}, {"a": -0.5}, "finite number >= 0"),
        ({"a": nn.L1Loss()}, {"a": float("nan")}, "finite number >= 0"),
        ({"a": nn.L1Loss()}, {"a": float("inf")}, "finite number >= 0"),
    ],
)
def test_bad_construction_raises_value_error(terms, weights, match):
    with pytest.raises(ValueError, match=match):
        CombinedLoss(terms, weights)


def test_zero_weight_is_allowed():
    x = torch.randn(3, 4)
    combined = CombinedLoss({"a": nn.L1Loss(), "b": nn.MSELoss()}, {"a": 0.0})
    torch.testing.assert_close(combined(x, torch.zeros_like(x)), (x**2).mean())


def test_fused_path_reports_bad_input_like_the_modules():
    combined = CombinedLoss({"ce": CrossEntropyLoss(), "dice": DiceLoss("multiclass")})
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="class indices"):
        combined(x, torch.full((2, 4, 4), 7))
    with pytest.raises(ValueError, match="shape"):
        combined(x, torch.zeros(2, 5, 4, dtype=torch.long))
    bce = CombinedLoss({"bce": BCELoss(pos_weight=[1.0, 2.0]), "dice": DiceLoss("multilabel")})
    with pytest.raises(ValueError, match="pos_weight"):
        bce(x, torch.zeros(2, 3, 4, 4))


@pytest.mark.parametrize(
    "mode,terms",
    [
        ("binary", {"bce": BCELoss(), "dice": DiceLoss("binary")}),
        ("multiclass", {"ce": CrossEntropyLoss(), "dice": DiceLoss("multiclass")}),
        ("multiclass", {"focal": FocalLoss("multiclass"), "dice": DiceLoss("multiclass")}),
        ("multilabel", {"focal": FocalLoss("multilabel", alpha=0.25), "dice": DiceLoss("multilabel")}),
    ],
)
def test_bf16_autocast_is_finite_float32_and_close(mode, terms):
    C = 1 if mode == "binary" else 3
    x, t = _data(mode, (2, C, 16, 16), seed=11, dtype=torch.float32)
    x = x * 10  # saturated logits
    combined = CombinedLoss(terms)
    ref = combined(x, t)
    xr = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = combined(xr.to(torch.bfloat16), t)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(xr.grad).all()
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)


def test_float16_volume_sums_do_not_overflow():
    # 96^3 = 884736 voxels: sum(p) overflows float16 (max 65504); the fused sums are float32.
    x = torch.full((1, 1, 96, 96, 96), 3.0, dtype=torch.float16)
    t = torch.ones(1, 1, 96, 96, 96, dtype=torch.float16)
    out = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")})(x, t)
    assert torch.isfinite(out)


@pytest.mark.parametrize(
    "mode,terms",
    [
        ("binary", {"bce": BCELoss(), "dice": DiceLoss("binary", squared_pred=True)}),
        ("multiclass", {"ce": CrossEntropyLoss(label_smoothing=0.1), "dice": DiceLoss("multiclass")}),
        ("multiclass", {"f": FocalLoss("multiclass", gamma=2.0), "d": DiceLoss("multiclass", ignore_index=255)}),
    ],
)
def test_torch_compile_fullgraph(mode, terms):
    import seglosses

    if "f" in terms:
        terms["f"].ignore_index = 255
    C = 1 if mode == "binary" else 3
    x, t = _data(mode, (2, C, 8, 8), seed=12, dtype=torch.float32, ignore=255 if "f" in terms else None)
    combined = CombinedLoss(terms)
    assert _fused.plan(combined.terms, t) is not None
    torch._dynamo.reset()
    compiled = torch.compile(combined, fullgraph=True, backend="eager")
    previous = seglosses.set_checks(False)  # value checks read data back; the compiled path skips them
    try:
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_c = compiled(xc, t)
        out_e = combined(xe, t)
        out_c.backward()
        out_e.backward()
    finally:
        seglosses.set_checks(previous)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(xc.grad, xe.grad)


# --------------------------------------------------------------------------------------------
# sync_dist on the fused path: two CPU processes (gloo) under DDP == one process, whole batch
def _ddp_cases():
    out = []
    # (no ignore_index: with unequal valid counts per rank, the average of per-rank CE means is
    # not the global mean -- a property of DDP averaging, the same on the composed path)
    x, t = _data("multiclass", (4, 3, 5, 5), seed=20)
    t[2:][t[2:] == 2] = 1  # class 2 only on rank 0: presence must be decided globally
    out.append(("ce", x, t, lambda s: {
        "ce": CrossEntropyLoss(label_smoothing=0.1),
        "dice": DiceLoss("multiclass", sync_dist=s)}))
    x, t = _data("binary", (4, 1, 5, 5), seed=21)
    out.append(("bce", x, t, lambda s: {"bce": BCELoss(), "dice": DiceLoss("binary", squared_pred=True, sync_dist=s)}))
    return out


def _ddp_worker(rank: int, port: int, out_dir: str):
    import os

    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results = {}
        for name, x, t, terms in _ddp_cases():
            torch.manual_seed(0)
            net = torch.nn.parallel.DistributedDataParallel(torch.nn.Conv2d(x.shape[1], x.shape[1], 1).double())
            combined = CombinedLoss(terms(True), {list(terms(True))[0]: 0.5})
            assert _fused.plan(combined.terms, t) is not None
            half = slice(2 * rank, 2 * rank + 2)
            loss = combined(net(x[half]), t[half])
            loss.backward()
            results[name] = {"values": combined.last_values, "grads": [p.grad.clone() for p in net.parameters()]}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fused_sync_dist_two_processes_equal_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name, x, t, terms in _ddp_cases():
        torch.manual_seed(0)
        net = torch.nn.Conv2d(x.shape[1], x.shape[1], 1).double()
        ref_terms = terms(False)
        pixel_name = list(ref_terms)[0]
        combined = CombinedLoss(ref_terms, {pixel_name: 0.5})
        combined(net(x), t).backward()  # one process, whole batch
        for r in range(2):
            got = ranks[r][name]
            # the Dice term is the global-batch Dice on every rank ...
            torch.testing.assert_close(got["values"]["dice"], combined.last_values["dice"])
            # ... the pixel term is each rank's own mean (DDP's averaging makes it global)
            half = slice(2 * r, 2 * r + 2)
            with torch.no_grad():
                local = ref_terms[pixel_name](net(x[half]), t[half])
            torch.testing.assert_close(got["values"][pixel_name], local)
            for g_ddp, p in zip(got["grads"], net.parameters()):
                torch.testing.assert_close(g_ddp, p.grad, msg=f"{name}: DDP-averaged gradient, rank {r}")
