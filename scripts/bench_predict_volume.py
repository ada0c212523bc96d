"""Peak memory of predicting one CT volume on the CPU by sliding windows (segtrain/predict_volume.py).

    python scripts/bench_predict_volume.py                       # 512 x 512 x 300 voxels (D = 300)
    python scripts/bench_predict_volume.py --size 80 128 128     # a quick check first

What is measured: the whole predict path of scripts/predict.py for one case -- read the NIfTI,
normalise (CT window + z-score), sliding windows of ``--window`` with a small MONAI DynUNet
(``sw_batch_size`` 1, the logits gathered on the CPU), argmax, write the label volume in the
input's frame -- in a fresh child process, whose peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is the figure. Printed beside it: the child's
resident size after its imports and the network were built (the baseline every process pays),
the volume's own size as int16 on disk and as the float32 the network reads, and the time.

Why a child process: ``ru_maxrss`` only ever grows, so the parent -- which generated the volume --
would report its own peak. The volume is a CT-like int16 array (air at -1000, an elliptic body at
40 HU with noise, a few brighter blobs), written uncompressed (``.nii``), so reading it costs no
decompression buffer.

Options: ``--size D H W`` (voxels, z first), ``--window D H W``, ``--overlap``, ``--classes``,
``--filters`` (DynUNet channels per level), ``--tta`` (flip: 8 mirrored passes), ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 1024 ** 3


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=3, default=[300, 512, 512], metavar=("D", "H", "W"),
                   help="volume voxels (z, y, x); default 300 512 512")
    p.add_argument("--window", type=int, nargs=3, default=[96, 160, 160], metavar=("D", "H", "W"),
                   help="sliding window (multiples of the network's divisor 8); default 96 160 160")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap; default 0.5 (nnU-Net's)")
    p.add_argument("--classes", type=int, default=3, help="output classes, background included; default 3")
    p.add_argument("--filters", type=int, nargs="+", default=[4, 8, 16, 32], help="DynUNet filters per level")
    p.add_argument("--tta", default=None, choices=[None, "flip"], help="flip: 8 mirrored passes")
    p.add_argument("--threads", type=int, default=2, help="torch threads; default 2")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # the measured process: the volume to predict
    return p.parse_args(argv)


def ct_like_volume(size: list[int], seed: int = 0):
    """An int16 ``[D, H, W]`` volume in Hounsfield-like units: air, an elliptic body, a few blobs, noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d, h, w = size
    volume = np.full(size, -1000, dtype=np.int16)
    y = (np.arange(h, dtype=np.float32) - h / 2) / (0.42 * h)
    x = (np.arange(w, dtype=np.float32) - w / 2) / (0.48 * w)
    body = (y[:, None] ** 2 + x[None, :] ** 2) <= 1.0  # the same cross-section on every slice: cheap
    for z in range(d):  # slice by slice: no full-size float temporaries
        noise = rng.normal(40, 20, size=(h, w)).astype(np.int16)
        volume[z][body] = noise[body]
    for _ in range(4):
        cz, cy, cx = (int(rng.integers(n // 4, 3 * n // 4)) for n in size)
        r = max(2, min(size) // 10)
        volume[max(0, cz - r):cz + r, max(0, cy - r):cy + r, max(0, cx - r):cx + r] += 80
    return volume


def child(args: argparse.Namespace) -> None:
    """The measured process: predict ``args.child`` and print the figures as one JSON line."""
    import resource

    import torch
    from monai.networks.nets import DynUNet

    from segtrain.predict_volume import list_volume_cases, predict_volume, write_prediction

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    levels = len(args.filters)
    net = DynUNet(3, 1, args.classes, kernel_size=[3] * levels, strides=[1] + [2] * (levels - 1),
                  upsample_kernel_size=[2] * (levels - 1), filters=args.filters).eval()
    pre = {"kind": "volume", "channels": 1,
           "normalization": [{"mode": "ct", "lower": -1000.0, "upper": 1000.0, "mean": 40.0, "std": 300.0}]}
    options = {"window": args.window, "overlap": args.overlap, "mode": "gaussian", "sw_batch_size": 1,
               "sw_device": "cpu", "device": "cpu"}
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    (case,) = list_volume_cases(args.child)
    start = time.perf_counter()
    labels = predict_volume(net, case.images, pre, options, args.tta)
    seconds = time.perf_counter() - start
    write_prediction(labels, Path(args.child).parent / "out", case)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"peak": peak, "baseline": baseline, "seconds": seconds}))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        child(args)
        return
    from datamodules.volumes.io import write_volume

    d, h, w = args.size
    voxels = d * h * w
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii"
        write_volume(path, ct_like_volume(args.size), spacing=(2.5, 0.8, 0.8))
        command = [sys.executable, os.path.abspath(__file__), "--child", str(path), "--size", *map(str, args.size),
                   "--window", *map(str, args.window), "--overlap", str(args.overlap), "--classes", str(args.classes),
                   "--filters", *map(str, args.filters), "--threads", str(args.threads)]
        if args.tta:
            command += ["--tta", args.tta]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"The measured process failed:\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    int16, float32 = voxels * 2 / GIB, voxels * 4 / GIB
    logits = voxels * 4 * args.classes / GIB
    print(f"Volume {w}x{h}x{d} voxels (x y z) = {voxels / 1e6:.1f} M voxels: int16 {int16:.3f} GiB, as float32 "
          f"{float32:.3f} GiB, float32 logits of {args.classes} classes {logits:.3f} GiB")
    print(f"DynUNet filters {args.filters}, window {'x'.join(map(str, args.window))}, overlap {args.overlap}, "
          f"sw_batch_size 1, CPU, {args.threads} thread(s), tta={args.tta}")
    print(f"Peak resident memory:        {figures['peak'] / GIB:.2f} GiB  ({figures['seconds']:.0f} s to predict)")
    print(f"  after imports + network:   {figures['baseline'] / GIB:.2f} GiB")
    extra = (figures["peak"] - figures["baseline"]) / GIB
    print(f"  for the volume itself:     {extra:.2f} GiB  = {extra / float32:.1f} x the float32 volume, "
          f"{extra / int16:.1f} x the int16 file")


if __name__ == "__main__":
    main()
