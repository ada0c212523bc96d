"""What the evaluation costs: the end-of-fit scores against MONAI called directly, TTA and ensembles against one pass.

    PYTHONPATH=. python scripts/bench_eval.py [size=1024] [rounds=5] [image=512x512] [models=5]

One thread. Each pair runs side by side, interleaved (ours, plain, plain, ours, ...), and the
figure is the median of the per-round ratios, so background load hits both sides.

1. End-of-fit evaluation, ms per megapixel: ``evaluation.score_image`` (Dice, IoU, precision,
   recall, HD95, NSD of one binary image) against a plain loop making the same MONAI calls
   (``compute_hausdorff_distance(percentile=95)``, ``compute_surface_dice``) on the same one-hot
   tensors. Target: within 10 %.
2. ``tta=flip`` and a ``models``-model ensemble, relative to one plain pass of the default network
   (conf/model/unet.yaml) on one ``image`` (segtrain/tta.py: 4 passes; ``models`` x 1 pass; ``models``
   x 4 with both).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET = 10.0  # per cent, issue 24


def interleaved(ours: Callable[[], object], plain: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """``(median ours s, median plain s, median ratio)`` of ``rounds`` interleaved pairs."""
    ours(), plain()  # warm-up
    to, tp, ratios = [], [], []
    for r in range(rounds):
        pair = []
        for fn in (ours, plain) if r % 2 == 0 else (plain, ours):
            start = time.perf_counter()
            fn()
            pair.append(time.perf_counter() - start)
        a, b = pair if r % 2 == 0 else pair[::-1]
        to.append(a)
        tp.append(b)
        ratios.append(a / b)
    return statistics.median(to), statistics.median(tp), statistics.median(ratios)


def _discs(size: int, centres, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.any([((yy - cy) ** 2 + (xx - cx) ** 2) <= radius ** 2 for cy, cx in centres], axis=0)


def bench_scores(size: int, rounds: int) -> None:
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    from evaluation import score_image

    target = _discs(size, [(0.3 * size, 0.3 * size), (0.65 * size, 0.6 * size)], 0.15 * size)
    pred = _discs(size, [(0.31 * size, 0.3 * size), (0.66 * size, 0.61 * size), (0.1 * size, 0.9 * size)],
                  0.14 * size)

    def ours():
        score_image(pred.astype(np.uint8), target.astype(np.uint8), task="binary", num_classes=1)

    def plain():
        p = torch.from_numpy(np.stack([~pred, pred]))[None].float()
        t = torch.from_numpy(np.stack([~target, target]))[None].float()
        compute_hausdorff_distance(p, t, include_background=False, percentile=95)
        compute_surface_dice(p, t, class_thresholds=[2.0], include_background=False)

    to, tp, ratio = interleaved(ours, plain, rounds)
    mp = size * size / 1e6
    verdict = "PASS" if 100 * (ratio - 1) <= TARGET else "FAIL"
    print(f"end-of-fit evaluation, binary {size}x{size}: evaluation.score_image {1000 * to / mp:.1f} ms/MP, MONAI "
          f"directly {1000 * tp / mp:.1f} ms/MP, ratio {ratio:.3f} -> {verdict} (target <= {TARGET:.0f}% over)")


def bench_passes(height: int, width: int, models: int, rounds: int) -> None:
    from segtrain.network import build_network
    from segtrain.tta import average_predictions

    torch.manual_seed(0)
    nets = [build_network("unet", "tu-resnet18", "binary", 1, encoder_depth=4,
                          decoder_channels=(64, 32, 16, 16)).eval() for _ in range(models)]
    image = torch.randn(1, 3, height, width)
    with torch.no_grad():
        def plain():
            return nets[0](image)

        cases = {
            "tta=flip (4 passes)": lambda: average_predictions(nets[:1], image, "binary", "flip"),
            f"ensemble of {models}": lambda: average_predictions(nets, image, "binary"),
            f"ensemble of {models} with tta=flip": lambda: average_predictions(nets, image, "binary", "flip"),
        }
        for name, fn in cases.items():
            to, tp, ratio = interleaved(fn, plain, rounds)
            print(f"predict {width}x{height}, {name}: {to:.3f} s against one plain pass {tp:.3f} s -> {ratio:.2f}x")


def main(argv: list[str]) -> None:
    import warnings

    # MONAI 1.6 warns about its own internal call of a deprecated argument on every distance call.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\..*")
    opts = dict(a.split("=", 1) for a in argv)
    torch.set_num_threads(1)
    rounds = int(opts.get("rounds", 5))
    bench_scores(int(opts.get("size", 1024)), rounds)
    h, w = (int(v) for v in opts.get("image", "512x512").split("x"))
    bench_passes(h, w, int(opts.get("models", 5)), max(3, rounds // 2))


if __name__ == "__main__":
    main(sys.argv[1:])
