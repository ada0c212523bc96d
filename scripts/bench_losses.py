"""Benchmark: forward+backward time and peak memory of combined segmentation losses.

Compares, side by side in one run, for each case:

- ``ours``          seglosses.CombinedLoss, built as users build it (fused fast path, eager
                    kernels: the default)
- ``ours-compiled`` (binary BCE+Dice on CPU) the same with ``seglosses.set_cpu_compile(True)``:
                    the kernels that ``torch.compile`` generates (seglosses/_compiled.py)
- ``ours-composed`` the same CombinedLoss with ``fused=False`` (terms called one by one)
- ``smp``           segmentation-models-pytorch: DiceLoss + SoftBCEWithLogitsLoss (binary),
                    DiceLoss(multiclass) + torch.nn.CrossEntropyLoss, DiceLoss + FocalLoss
- ``monai``         MONAI DiceCELoss / DiceFocalLoss with batch Dice (skipped if not installed)
- ``floor``         binary_cross_entropy_with_logits / cross_entropy alone: one pass over the logits

Cases: binary BCE+Dice 8x1x512x512, multiclass CE+Dice 4x21x256x256, binary Dice+Focal
8x1x512x512 (``--quick``: tiny shapes, for smoke tests). Then one case per loss of issue 14
against its peer on matching options (4x1x256x256 binary, 4x8x128x128 multiclass):
GeneralizedDice vs MONAI, Lovász vs smp and kornia, TopK CE vs nnU-Net's TopKLoss and OHEM CE
vs HRNet's OhemCrossEntropy (both inlined: neither framework is a dependency), MCC vs smp,
clDice vs MONAI, DeepSupervision(Dice) vs MONAI; each ends in a PASS/FAIL line on
``peer / ours >= 1``. Then the distance losses (:func:`build_distance_cases`): Boundary and
HausdorffDT vs MONAI, which computes the target's distance maps in the loss: ``ours`` is given the
maps (as the harness does, from its data pipeline), ``ours+map`` computes them in the timed call
and ``ours-nomap`` lets the loss compute them; HausdorffER vs kornia, 2D and 3D.
Then (:func:`build_skeleton_cases`) SkeletonRecall vs the authors' SoftSkeletonRecallLoss
(inlined; the skeletons given to both, computed outside the timer), GeneralizedWassersteinDice
vs MONAI and AsymmetricUnifiedFocal (binary) vs MONAI.

Method. Each timed call is ``loss(x, t).backward()`` on a fresh leaf copy of the logits (copy made
outside the timer); the implementations are interleaved within every repetition (so load from
other processes hits all of them alike), in an order rotated from one repetition to the next (on
CPU a call pays for the heap its predecessor left: page faults after a trim), after a warm-up,
and the table shows the median over ``--repeats``. Ratios are ``other / ours`` (>1: ours is
faster) and ``ours / floor``.

Memory ("peak MB"): the peak of tensor memory allocated *during* forward+backward, above what was
live before (inputs excluded). On CUDA it is ``torch.cuda.max_memory_allocated`` minus the
baseline; on CPU it is reconstructed from the allocation/free events of ``torch.profiler``
(``profile_memory=True``): its raw allocation/free records replayed in time order --
allocator-level bytes, not RSS. Both include the logits' gradient (kept by the leaf). Measured in a
separate, untimed call.

Usage::

    python scripts/bench_losses.py [--device cpu|cuda] [--repeats 15] [--quick] [--threads N]
                                   [--clock wall|cpu] [--no-value-checks] [--cpu-compile both|off]

``ours`` is timed as users get it by default: the eager fused kernels. On CPU the binary
BCE+Dice case also times ``ours-compiled``, the opt-in compiled kernels; their one-time
compilation happens in the warm-up, outside the timings (the bench prints how long it took).
``--cpu-compile off`` leaves that row out (and compiles nothing). The compiled kernels apply
from 2^20 logits, so with ``--quick`` the row times the eager kernels.

Targets (issue 2) are printed as PASS/FAIL lines at the end, for ``ours`` and, in the binary
case, for ``ours-compiled``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# The profiler (used for CPU memory) logs every start/stop on stderr unless told otherwise.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import seglosses  # noqa: E402
from seglosses import BCELoss, CombinedLoss, CrossEntropyLoss, DiceLoss, FocalLoss  # noqa: E402

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _smp():
    try:
        import segmentation_models_pytorch.losses as sl
    except ImportError:
        return None
    return sl


def _monai():
    try:
        import monai.losses as ml
    except ImportError:
        return None
    return ml


def _cpu_compiled(loss: LossFn) -> LossFn:
    """``loss`` called with seglosses' compiled CPU kernels switched on (backward follows the
    choice its forward made)."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        previous = seglosses.set_cpu_compile(True)
        try:
            return loss(x, t)
        finally:
            seglosses.set_cpu_compile(previous)

    return call


def build_cases(quick: bool, device: torch.device, compiled_row: bool = True) -> list[dict]:
    """Each case: name, logits, target per implementation, and the implementations."""
    g = torch.Generator().manual_seed(0)
    binary_shape = (2, 1, 64, 64) if quick else (8, 1, 512, 512)
    mc_shape = (2, 5, 32, 32) if quick else (4, 21, 256, 256)

    xb = torch.randn(binary_shape, generator=g).to(device)
    tb = (torch.rand(binary_shape, generator=g) > 0.7).float().to(device)
    xm = torch.randn(mc_shape, generator=g).to(device)
    B, C, H, W = mc_shape
    tm = torch.randint(0, C, (B, H, W), generator=g).to(device)
    tm_monai = tm.unsqueeze(1)  # MONAI wants [B, 1, H, W]

    sl, ml = _smp(), _monai()
    cases = []

    impls: dict[str, tuple[LossFn, torch.Tensor]] = {
        "ours": (CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}, {"bce": 1.0, "dice": 1.0}), tb),
    }
    if compiled_row and device.type == "cpu":
        bce_dice = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}, {"bce": 1.0, "dice": 1.0})
        impls["ours-compiled"] = (_cpu_compiled(bce_dice), tb)
    impls |= {
        "ours-composed": (
            CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}, {"bce": 1.0, "dice": 1.0}, fused=False),
            tb,
        ),
    }
    if sl is not None:
        d, b = sl.DiceLoss("binary"), sl.SoftBCEWithLogitsLoss()
        impls["smp"] = (lambda x, t, d=d, b=b: d(x, t) + b(x, t), tb)
    if ml is not None:
        impls["monai"] = (ml.DiceCELoss(sigmoid=True, batch=True), tb)
    impls["floor"] = (F.binary_cross_entropy_with_logits, tb)
    cases.append({"name": f"binary BCE+Dice {'x'.join(map(str, binary_shape))}", "x": xb, "impls": impls,
                  "key": "binary"})

    impls = {
        "ours": (CombinedLoss({"ce": CrossEntropyLoss(), "dice": DiceLoss("multiclass")}), tm),
        "ours-composed": (
            CombinedLoss({"ce": CrossEntropyLoss(), "dice": DiceLoss("multiclass")}, fused=False),
            tm,
        ),
    }
    if sl is not None:
        d, ce = sl.DiceLoss("multiclass"), torch.nn.CrossEntropyLoss()
        impls["smp"] = (lambda x, t, d=d, ce=ce: d(x, t) + ce(x, t), tm)
    if ml is not None:
        impls["monai"] = (ml.DiceCELoss(softmax=True, to_onehot_y=True, batch=True), tm_monai)
    impls["floor"] = (F.cross_entropy, tm)
    cases.append({"name": f"multiclass CE+Dice {'x'.join(map(str, mc_shape))}", "x": xm, "impls": impls,
                  "key": "multiclass"})

    impls = {
        "ours": (CombinedLoss({"dice": DiceLoss("binary"), "focal": FocalLoss("binary", alpha=0.25)}), tb),
        "ours-composed": (
            CombinedLoss({"dice": DiceLoss("binary"), "focal": FocalLoss("binary", alpha=0.25)}, fused=False),
            tb,
        ),
    }
    if sl is not None:
        d, f = sl.DiceLoss("binary"), sl.FocalLoss("binary", alpha=0.25)
        impls["smp"] = (lambda x, t, d=d, f=f: d(x, t) + f(x, t), tb)
    if ml is not None:
        impls["monai"] = (ml.DiceFocalLoss(sigmoid=True, batch=True, alpha=0.25), tb)
    impls["floor"] = (F.binary_cross_entropy_with_logits, tb)
    cases.append({"name": f"binary Dice+Focal {'x'.join(map(str, binary_shape))}", "x": xb, "impls": impls,
                  "key": "focal"})
    return cases


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_once(fn: LossFn, x: torch.Tensor, t: torch.Tensor, device: torch.device, clock=time.perf_counter) -> float:
    xx = x.detach().clone().requires_grad_()
    _sync(device)
    start = clock()
    fn(xx, t).backward()
    _sync(device)
    return clock() - start


@contextlib.contextmanager
def _native_output_silenced():
    """Send the C++ profiler's own chatter (kineto's "profiler_start/stop" lines, allocator
    warnings) to /dev/null: it writes to file descriptors 1 and 2 directly, bypassing Python."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def peak_memory(fn: LossFn, x: torch.Tensor, t: torch.Tensor, device: torch.device) -> float:
    """Peak tensor bytes allocated during forward+backward, above the live baseline (MB)."""
    xx = x.detach().clone().requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(xx, t).backward()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _native_output_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(xx, t).backward()
    # The raw allocation (+bytes) and free (-bytes) records with their timestamps, replayed in
    # time order: live bytes after each event; the maximum is the peak. (The per-op FunctionEvents
    # cannot be used: a parent op's self memory lumps its children's frees at its start time.)
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def _kornia():
    try:
        import kornia.losses as kl
    except ImportError:
        return None
    return kl


def _nnunet_topk(x, t, k=10.0):
    """nnU-Net v2's TopKLoss (RobustCrossEntropyLoss, reduction none, then torch.topk), inlined:
    nnunetv2 is a whole framework, not a test dependency."""
    res = F.cross_entropy(x, t, reduction="none").reshape(-1)
    return torch.topk(res, int(res.numel() * k / 100), sorted=False).values.mean()


def _hrnet_ohem(x, t, thresh=0.7, min_kept=100_000, ignore=255):
    """HRNet's OhemCrossEntropy (lib/core/criterion.py), inlined for the same reason."""
    losses = F.cross_entropy(x, t, ignore_index=ignore, reduction="none").reshape(-1)
    mask = t.reshape(-1) != ignore
    tt = torch.where(t == ignore, torch.zeros_like(t), t)
    pred = F.softmax(x, 1).gather(1, tt.unsqueeze(1)).reshape(-1)[mask]
    pred, ind = pred.sort()
    threshold = max(pred[min(min_kept, pred.numel() - 1)], thresh)
    return losses[mask][ind][pred < threshold].mean()


def build_catalogue_cases(quick: bool, device: torch.device) -> list[dict]:
    """The losses of issue 14, each against its peer implementation on matching options."""
    from seglosses import (
        ClDiceLoss, DeepSupervisionLoss, GeneralizedDiceLoss, LovaszLoss, MCCLoss,
        OhemCrossEntropyLoss, TopKCrossEntropyLoss,
    )

    g = torch.Generator().manual_seed(1)
    bshape = (2, 1, 32, 32) if quick else (4, 1, 256, 256)
    mshape = (2, 4, 16, 16) if quick else (4, 8, 128, 128)
    xb = torch.randn(bshape, generator=g).to(device)
    tb = (torch.rand(bshape, generator=g) > 0.7).float().to(device)
    xm = torch.randn(mshape, generator=g).to(device)
    B, C, H, W = mshape
    tm = torch.randint(0, C, (B, H, W), generator=g).to(device)
    sl, ml, kl = _smp(), _monai(), _kornia()
    shape_b, shape_m = "x".join(map(str, bshape)), "x".join(map(str, mshape))
    cases = []

    def add(key, name, x, impls):
        cases.append({"name": name, "x": x, "impls": {k: v for k, v in impls.items() if v is not None},
                      "key": key, "peer_case": True})

    add("gdl", f"GeneralizedDice multiclass {shape_m}", xm, {
        "ours": (GeneralizedDiceLoss("multiclass", smooth=1e-5), tm),
        "monai": None if ml is None else (ml.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=True), tm.unsqueeze(1)),
    })
    add("lovasz_binary", f"Lovasz hinge binary per image {shape_b}", xb, {
        "ours": (LovaszLoss("binary", per_image=True), tb),
        "smp": None if sl is None else (sl.LovaszLoss("binary", per_image=True), tb),
        "kornia": None if kl is None else (kl.lovasz_hinge_loss, tb[:, 0].long()),
    })
    add("lovasz_multiclass", f"Lovasz-softmax multiclass {shape_m}", xm, {
        "ours": (LovaszLoss("multiclass"), tm),
        "smp": None if sl is None else (sl.LovaszLoss("multiclass"), tm),
    })
    add("lovasz_all", f"Lovasz-softmax per image, all classes {shape_m}", xm, {
        "ours": (LovaszLoss("multiclass", per_image=True, classes="all"), tm),
        "kornia": None if kl is None else (kl.lovasz_softmax_loss, tm),
    })
    add("topk", f"TopK CE k=10 {shape_m}", xm, {
        "ours": (TopKCrossEntropyLoss(k=10.0), tm),
        "nnunet": (_nnunet_topk, tm),
    })
    tm_ign = tm.clone()
    tm_ign[:, : max(1, H // 8)] = 255
    add("ohem", f"OHEM CE thresh=0.7 min_kept={B * H * W // 16} {shape_m}", xm, {
        "ours": (OhemCrossEntropyLoss(min_kept=B * H * W // 16, ignore_index=255), tm_ign),
        "hrnet": (lambda x, t, m=B * H * W // 16: _hrnet_ohem(x, t, 0.7, m), tm_ign),
    })
    add("mcc", f"MCC binary {shape_b}", xb, {
        "ours": (MCCLoss("binary"), tb),
        "smp": None if sl is None else (lambda x, t, f=sl.MCCLoss(): f(torch.sigmoid(x), t), tb),
    })
    add("cldice", f"soft clDice binary iter=3 {shape_b}", xb, {
        "ours": (ClDiceLoss("binary"), tb),
        "monai": None if ml is None else (ml.SoftclDiceLoss(sigmoid=True), tb),
    })

    level_shapes = [(B, C, H // f, W // f) for f in (1, 2, 4)]

    class Levels(torch.nn.Module):
        """Three deep-supervision outputs (full, 1/2, 1/4), contiguous pieces of one flat leaf.

        One leaf, so the harness's fresh copy and backward reach every level; split (whose backward
        is one concatenation) rather than pooled from the full output, so that the time is the
        losses' and not a stand-in network's (average pooling's backward would cost more than the
        losses it feeds, alike for both sides).
        """

        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x, t):
            pieces = torch.split(x, [math.prod(s) for s in level_shapes])
            return self.fn([p.view(s) for p, s in zip(pieces, level_shapes)], t)

    x_levels = torch.randn(sum(math.prod(s) for s in level_shapes), generator=g).to(device)
    ds_ours = DeepSupervisionLoss(DiceLoss("multiclass", smooth=1e-5, per_image=True, empty_class="zero"))
    weights = ds_ours.level_weights(3)
    add("deep_supervision", f"DeepSupervision(Dice) 3 levels {shape_m}", x_levels, {
        "ours": (Levels(ds_ours), tm),
        "monai": None if ml is None else (
            Levels(ml.DeepSupervisionLoss(ml.DiceLoss(softmax=True, to_onehot_y=True), weights=weights)),
            tm.unsqueeze(1).float()),
    })
    return cases


#: The keys of build_distance_cases (for --cases).
DISTANCE_CASE_KEYS = ["boundary_binary", "boundary_multiclass", "hausdorff_dt_binary", "hausdorff_dt_multiclass",
                      "hausdorff_er_2d", "hausdorff_er_3d"]


def build_distance_cases(quick: bool, device: torch.device) -> list[dict]:
    """The distance losses against their peers on matching options: BoundaryLoss and HausdorffDTLoss
    vs MONAI, HausdorffERLoss vs kornia (2D, 3D).

    MONAI computes the target's distance maps inside the loss, every call; seglosses takes them from
    the data pipeline (``distance=``). So the boundary and distance-transform cases time three
    seglosses rows: ``ours`` (the maps given, computed once outside the timer: what a training step
    of the harness pays), ``ours+map`` (the maps computed from the whole batch with
    :func:`seglosses.derived.distance_from_target` inside the timed call, then given) and
    ``ours-nomap`` (``distance=None``: the loss computes them itself). HausdorffDT computes the
    prediction's field every call in all rows, as MONAI.
    """
    from seglosses.boundary import BoundaryLoss
    from seglosses.derived import distance_from_target
    from seglosses.hausdorff import HausdorffDTLoss, HausdorffERLoss

    g = torch.Generator().manual_seed(2)
    bshape = (2, 1, 32, 32) if quick else (4, 1, 256, 256)
    mshape = (2, 4, 16, 16) if quick else (4, 4, 128, 128)
    vshape = (1, 2, 6, 8, 8) if quick else (1, 2, 32, 48, 48)

    def blobs(shape: tuple[int, ...]) -> torch.Tensor:
        """Smooth random fields (a blurred noise): targets with regions and boundaries, not salt and pepper."""
        z = torch.randn(shape, generator=g)
        pool = F.avg_pool2d if len(shape) == 4 else F.avg_pool3d
        for _ in range(3):
            z = pool(z, 5, stride=1, padding=2)
        return z

    xb = torch.randn(bshape, generator=g).to(device)
    tb = (blobs(bshape) > 0.05).float().to(device)
    xm = torch.randn(mshape, generator=g).to(device)
    tm = blobs(mshape).argmax(1).to(device)
    xv = torch.randn(vshape, generator=g).to(device)
    tv = blobs(vshape).argmax(1).to(device)
    ml, kl = _monai(), _kornia()
    shape_b, shape_m, shape_v = ("x".join(map(str, s)) for s in (bshape, mshape, vshape))
    cases = []

    def add(key, name, x, impls):
        cases.append({"name": name, "x": x, "impls": {k: v for k, v in impls.items() if v is not None},
                      "key": key, "peer_case": True})

    def with_maps(loss, mode: str, t: torch.Tensor, channels: int) -> dict:
        """ours (maps given), ours+map (maps computed in the call), ours-nomap (distance=None)."""
        maps = distance_from_target(t, mode, channels)
        return {
            "ours": (lambda x, tt, d=maps: loss(x, tt, distance=d), t),
            "ours+map": (lambda x, tt: loss(x, tt, distance=distance_from_target(tt, mode, channels)), t),
            "ours-nomap": (loss, t),
        }

    C = mshape[1]
    add("boundary_binary", f"Boundary binary {shape_b}", xb, {
        **with_maps(BoundaryLoss("binary"), "binary", tb, 1),
        "monai": None if ml is None else (ml.BoundaryLoss(sigmoid=True), tb),
    })
    add("boundary_multiclass", f"Boundary multiclass {shape_m}", xm, {
        **with_maps(BoundaryLoss("multiclass"), "multiclass", tm, C),
        "monai": None if ml is None else (ml.BoundaryLoss(softmax=True, to_onehot_y=True), tm.unsqueeze(1)),
    })
    add("hausdorff_dt_binary", f"HausdorffDT binary alpha=2 {shape_b}", xb, {
        **with_maps(HausdorffDTLoss("binary"), "binary", tb, 1),
        "monai": None if ml is None else (ml.HausdorffDTLoss(sigmoid=True, include_background=True), tb),
    })
    add("hausdorff_dt_multiclass", f"HausdorffDT multiclass, no background {shape_m}", xm, {
        **with_maps(HausdorffDTLoss("multiclass", include_background=False), "multiclass", tm, C),
        "monai": None if ml is None else (ml.HausdorffDTLoss(softmax=True, to_onehot_y=True), tm.unsqueeze(1)),
    })
    add("hausdorff_er_2d", f"HausdorffER multiclass 10 erosions {shape_m}", xm, {
        "ours": (HausdorffERLoss("multiclass"), tm),
        "kornia": None if kl is None else (lambda x, t, f=kl.HausdorffERLoss(): f(x.softmax(1), t), tm.unsqueeze(1)),
    })
    add("hausdorff_er_3d", f"HausdorffER 3D multiclass 10 erosions {shape_v}", xv, {
        "ours": (HausdorffERLoss("multiclass"), tv),
        "kornia": None if kl is None else (lambda x, t, f=kl.HausdorffERLoss3D(): f(x.softmax(1), t), tv.unsqueeze(1)),
    })
    return cases


#: The keys of build_skeleton_cases (for --cases).
SKELETON_CASE_KEYS = ["skeleton_recall", "gwdl", "aufl"]


def _skeleton_recall_reference(x, skel, batch_dice=True, smooth=1.0):
    """MIC-DKFZ/Skeleton-Recall's SoftSkeletonRecallLoss (nnunetv2/training/loss/dice.py; softmax,
    do_bg=False, ddp off), inlined like _nnunet_topk: the skeleton a label map [B, 1, *], one-hot
    encoded, background dropped, sums over space (and batch), -mean recall."""
    probs = torch.softmax(x, 1)[:, 1:]
    axes = list(range(2, x.ndim))
    with torch.no_grad():
        y_onehot = torch.zeros(x.shape, device=x.device, dtype=x.dtype)
        y_onehot.scatter_(1, skel.long(), 1)
        y_onehot = y_onehot[:, 1:]
        sum_gt = y_onehot.sum(axes)
    inter_rec = (probs * y_onehot).sum(axes)
    if batch_dice:
        inter_rec, sum_gt = inter_rec.sum(0), sum_gt.sum(0)
    rec = (inter_rec + smooth) / torch.clip(sum_gt + smooth, 1e-8)
    return -rec.mean()


def build_skeleton_cases(quick: bool, device: torch.device) -> list[dict]:
    """SkeletonRecall vs the authors' formula (inlined), GeneralizedWassersteinDice vs MONAI and
    AsymmetricUnifiedFocal (binary) vs MONAI, on matching options.

    The skeletons are computed once, outside the timer (the harness computes them in its data
    pipeline), and given to both. MONAI's AsymmetricUnifiedFocalLoss takes probabilities: its row
    times ``sigmoid`` plus the loss, as ours (which takes logits) does.
    """
    from seglosses.derived import skeleton_from_target
    from seglosses.skeleton_recall import SkeletonRecallLoss
    from seglosses.unified_focal import AsymmetricUnifiedFocalLoss
    from seglosses.wasserstein_dice import GeneralizedWassersteinDiceLoss

    g = torch.Generator().manual_seed(3)
    bshape = (2, 1, 32, 32) if quick else (4, 1, 256, 256)
    mshape = (2, 4, 16, 16) if quick else (4, 8, 128, 128)

    def blobs(shape: tuple[int, ...]) -> torch.Tensor:
        """Blurred noise: targets with regions (and so skeletons), not salt and pepper."""
        z = torch.randn(shape, generator=g)
        for _ in range(3):
            z = F.avg_pool2d(z, 5, stride=1, padding=2)
        return z

    xb = torch.randn(bshape, generator=g).to(device)
    tb = (blobs(bshape) > 0.05).float().to(device)
    xm = torch.randn(mshape, generator=g).to(device)
    tm = blobs(mshape).argmax(1).to(device)
    skel = skeleton_from_target(tm, "multiclass")
    B, C = mshape[:2]
    # classes on a line: a mistake costs how far apart the two classes are
    dist = [[abs(i - j) / (C - 1) for j in range(C)] for i in range(C)]
    ml = _monai()
    shape_b, shape_m = "x".join(map(str, bshape)), "x".join(map(str, mshape))
    cases = []

    def add(key, name, x, impls):
        cases.append({"name": name, "x": x, "impls": {k: v for k, v in impls.items() if v is not None},
                      "key": key, "peer_case": True})

    srec = SkeletonRecallLoss("multiclass")
    add("skeleton_recall", f"SkeletonRecall multiclass, skeleton given {shape_m}", xm, {
        "ours": (lambda x, t, s=skel: srec(x, t, skeleton=s), tm),
        "skelrec": (lambda x, t, s=skel.unsqueeze(1): _skeleton_recall_reference(x, s), tm),
    })
    add("gwdl", f"GeneralizedWassersteinDice multiclass {shape_m}", xm, {
        "ours": (GeneralizedWassersteinDiceLoss("multiclass", dist_matrix=dist), tm),
        "monai": None if ml is None else (ml.GeneralizedWassersteinDiceLoss(torch.tensor(dist)), tm),
    })
    add("aufl", f"AsymmetricUnifiedFocal binary delta=0.6 {shape_b}", xb, {
        "ours": (AsymmetricUnifiedFocalLoss("binary"), tb),
        "monai": None if ml is None else (
            lambda x, t, f=ml.AsymmetricUnifiedFocalLoss(delta=0.6): f(torch.sigmoid(x), t), tb),
    })
    return cases


def run(args) -> int:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick and args.repeats is None else (args.repeats or 15)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.no_value_checks:
        seglosses.set_checks(False)
    seglosses.set_cpu_compile(False)  # "ours" is the default, eager path whatever the environment says
    cases = [c for c in build_cases(args.quick, device, args.cpu_compile == "both")
             + build_catalogue_cases(args.quick, device)
             + build_distance_cases(args.quick, device)
             + build_skeleton_cases(args.quick, device)
             if not args.cases or c["key"] in args.cases]
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"repeats={repeats} (median, interleaved) clock={args.clock} "
          f"seglosses value checks={'off' if args.no_value_checks else 'on'} "
          f"compiled CPU kernels row={'yes' if args.cpu_compile == 'both' and device.type == 'cpu' else 'no'}")
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for case in cases:
        x, impls = case["x"], case["impls"]
        for k, (fn, t) in impls.items():  # warm-up (first-call allocations, lazy imports)
            start = time.perf_counter()
            for _ in range(2 if not args.quick else 1):
                time_once(fn, x, t, device)
            if k == "ours-compiled":
                print(f"  (ours-compiled warm-up, including the kernels' compilation: "
                      f"{time.perf_counter() - start:.1f} s)")
        times: dict[str, list[float]] = {k: [] for k in impls}
        # Page faults per call: at a few ms per call, a fresh buffer's first touch (512 faults
        # per 2 MiB) can weigh as much as the arithmetic, and which impl pays it depends on the
        # process's allocation history; the column shows when a ratio is made of that.
        faults: dict[str, list[int]] = {k: [] for k in impls}
        keys = list(impls)
        for r in range(repeats):
            # Rotate the order every repeat: a call pays for the allocator state (page faults,
            # trimmed heap) its predecessor left, so a fixed order would bias every impl the same way.
            for k in keys[r % len(keys):] + keys[: r % len(keys)]:
                fn, t = impls[k]
                before = minor_faults()
                times[k].append(time_once(fn, x, t, device, clock))
                faults[k].append(minor_faults() - before)
        mem = {k: peak_memory(fn, x, t, device) for k, (fn, t) in impls.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        results[case["key"]] = {k: (med[k], mem[k]) for k in impls}
        ours = med["ours"]
        print(f"\n{case['name']}")
        print(f"  {'impl':<14} {'median ms':>10} {'peak MB':>9} {'vs ours':>8} {'faults/call':>12}")
        for k in impls:
            ratio = med[k] / ours
            print(f"  {k:<14} {med[k] * 1e3:>10.2f} {mem[k]:>9.1f} {ratio:>7.2f}x "
                  f"{statistics.median(faults[k]):>12.0f}")

    print("\nTargets (time ratios; other/ours must be >= target, ours/floor <= target):")
    failed = 0
    specs = [
        ("binary", "smp", 2.5), ("binary", "monai", 1.5), ("binary", "floor", 1.5),
        ("multiclass", "smp", 3.0), ("multiclass", "monai", 1.5), ("multiclass", "floor", 1.5),
    ]
    for key, other, target in specs:
        res = results.get(key, {})
        if not res:
            continue
        if other not in res:
            print(f"  SKIP {key}: {other} not installed")
            continue
        for subject in ("ours", "ours-compiled"):
            if subject not in res:
                continue
            ours, theirs = res[subject][0], res[other][0]
            if other == "floor":
                ratio, ok = ours / theirs, ours / theirs <= target
                text = f"{subject} / floor = {ratio:.2f} (<= {target})"
            else:
                ratio, ok = theirs / ours, theirs / ours >= target
                text = f"{other} / {subject} = {ratio:.2f} (>= {target})"
            failed += not ok
            print(f"  {'PASS' if ok else 'FAIL'} {key}: {text}")
    # ours+map / ours-nomap (distance losses) are variants of ours, compared with the peer below
    peer_rows = [(c["key"], k) for c in cases if c.get("peer_case") for k in c["impls"] if not k.startswith("ours")]
    if peer_rows:
        print("\nIssue 14 losses (peer time / ours: >= 1 means ours is not slower):")
    for key, other in peer_rows:
        ratio = results[key][other][0] / results[key]["ours"][0]
        failed += ratio < 1.0
        print(f"  {'PASS' if ratio >= 1.0 else 'FAIL'} {key}: {other} / ours = {ratio:.2f}")
        for variant in (v for v in results[key] if v.startswith("ours") and v != "ours"):
            ratio = results[key][other][0] / results[key][variant][0]
            failed += ratio < 1.0
            print(f"  {'PASS' if ratio >= 1.0 else 'FAIL'} {key}: {other} / {variant} = {ratio:.2f}")
    if args.quick:
        print("(--quick: tiny shapes, the targets do not apply)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (median); default 15")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave default)")
    parser.add_argument(
        "--cases", nargs="*", default=None,
        choices=["binary", "multiclass", "focal", "gdl", "lovasz_binary", "lovasz_multiclass", "lovasz_all",
                 "topk", "ohem", "mcc", "cldice", "deep_supervision", *DISTANCE_CASE_KEYS,
                 *SKELETON_CASE_KEYS],
        help="run only these cases (default: all)",
    )
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"],
        help="wall: perf_counter (latency); cpu: process CPU time (robust on a shared machine with "
        "--threads 1; with several threads it sums their CPU time)",
    )
    parser.add_argument(
        "--no-value-checks", action="store_true",
        help="seglosses.set_checks(False) for ours (the target range checks; smp/MONAI have none)",
    )
    parser.add_argument(
        "--cpu-compile", default="both", choices=["both", "off"],
        help="both (default): the binary BCE+Dice case also times ours-compiled, seglosses' opt-in "
        "torch.compile-generated CPU kernels (compiled during the warm-up); off: leave that row out",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
