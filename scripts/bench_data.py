"""Throughput of the native-resolution data path against plain loops making the same calls.

    PYTHONPATH=. python scripts/bench_data.py [images=32] [size=700x500] [crop=256] [epochs=3]

1. Training pipeline, images/s: FolderDataModule's train dataset read through a DataLoader
   (decode or cache, crop stage, augment, collate; num_workers=0 so both sides use one core)
   against a loop that opens the same files with PIL, runs the same albumentations Compose
   and stacks the tensors -- side by side, without and with ``data.cache``.
2. Sliding-window validation, seconds per megapixel: segtrain.sliding.whole_image_logits
   (MONAI) against a plain loop over the same windows (same positions, one forward each,
   summed with the same Gaussian weights).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_training(root: Path, crop: int, epochs: int) -> None:
    from torch.utils.data import default_collate

    from datamodules import FolderDataModule
    from datamodules.masks import encode_mask

    for cache in (False, True):
        dm = FolderDataModule(root, task="binary", num_classes=1, crop_size=crop, ignore_index=255, batch_size=8,
                              num_workers=0, val_fraction=0.0, cache=cache)
        dm.setup("fit")
        loader = dm.train_dataloader()
        pairs, transform = dm.train_pairs, dm.train_transform
        decoded = [(np.array(Image.open(i).convert("RGB")), np.array(Image.open(m))) for i, (m,) in pairs]

        def harness():
            for _ in loader:
                pass

        def plain():
            order = np.random.permutation(len(pairs))
            for start in range(0, len(order), 8):
                samples = []
                for k in order[start : start + 8]:
                    if cache:
                        image, mask = decoded[k]
                    else:
                        image = np.array(Image.open(pairs[k][0]).convert("RGB"))
                        mask = np.array(Image.open(pairs[k][1][0]))
                    out = transform(image=image, mask=mask)
                    samples.append({"image": out["image"].float(), "mask": encode_mask(out["mask"], "binary")})
                default_collate(samples)

        th, tp = _time(harness, epochs), _time(plain, epochs)
        n = len(pairs)
        print(f"training pipeline (cache={cache}): harness {n / th:.1f} images/s, plain loop {n / tp:.1f} images/s, "
              f"overhead {100 * (th / tp - 1):+.1f}%")


def bench_sliding(window: int, height: int, width: int) -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval, compute_importance_map

    from segtrain.sliding import check_window, pad_to_stride, whole_image_logits

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 1, 3, padding=1)).eval()
    image = torch.randn(1, 3, height, width)
    options = check_window({"window": window, "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 4})
    padded = pad_to_stride(image)
    roi = (window, window)
    slices = dense_patch_slices(padded.shape[-2:], roi, _get_scan_interval(padded.shape[-2:], roi, 2, (0.25, 0.25)))
    weight = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125, device="cpu")

    @torch.no_grad()
    def plain():
        out = torch.zeros(1, 1, *padded.shape[-2:])
        norm = torch.zeros(1, 1, *padded.shape[-2:])
        for s in slices:
            region = (slice(None), slice(None), *s)
            out[region] += net(padded[region]) * weight
            norm[region] += weight
        return (out / norm)[..., :height, :width]

    @torch.no_grad()
    def harness():
        return whole_image_logits(net, image, options)

    mp = height * width / 1e6
    th, tp = _time(harness, 3), _time(plain, 3)
    print(f"sliding-window validation {width}x{height}, window {window}: harness {th / mp:.3f} s/MP, "
          f"plain loop over the same {len(slices)} windows {tp / mp:.3f} s/MP, overhead {100 * (th / tp - 1):+.1f}%")


def main(argv: list[str]) -> None:
    from datamodules.thin import write_thin_dataset

    opts = dict(a.split("=", 1) for a in argv)
    n, crop, epochs = int(opts.get("images", 32)), int(opts.get("crop", 256)), int(opts.get("epochs", 3))
    w, h = (int(v) for v in opts.get("size", "700x500").split("x"))
    root = Path(opts.get("out", "/tmp/bench_data")) / f"{w}x{h}_{n}"
    if not root.is_dir():
        write_thin_dataset(root, [(h, w)] * n, seed=0)
    torch.set_num_threads(1)
    bench_training(root, crop, epochs)
    bench_sliding(crop, 1000, 1500)


if __name__ == "__main__":
    main(sys.argv[1:])
