"""Logits for whole images of any size: padding to the network's stride, sliding windows.

Used by validation and test (segtrain/module.py), the prediction pictures and predict.py, so
that all of them see an image the same way. The window inference is MONAI's
``sliding_window_inference`` (plain tensors): windows of ``window`` px with ``overlap``,
``gaussian`` blending of overlapping windows, ``sw_batch_size`` windows per forward pass (the
memory bound; ``None``: :func:`sw_batch_size_for` the image's device). Before it, the image is
padded (bottom/right, zeros = the mean colour after normalisation) to a multiple of the stride,
and the window shrinks to the padded image where the image is smaller, so one window covering
the image is exactly one plain forward pass.
With ``pad`` off (``data.pad=false``, option ``pad: False``) an image smaller than the window is
an error naming the image, instead (:func:`datamodules.crops.check_fits_window`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.crops import check_fits_window

STRIDE = 32
MODES = ("gaussian", "constant")


def sw_batch_size_for(device: torch.device) -> int:
    """Windows per forward pass when ``sw_batch_size`` is ``None``: 1 on a CPU, 4 on an accelerator.

    On a CPU one window per pass is the fastest: with 4 windows of 256 px per pass the smp U-Net
    of conf/model/unet.yaml took 3-27 % longer per window (runs on a shared 2-core machine, 1 or 2
    threads), with 512 px windows 24-40 %: the activations of 4 windows outgrow the caches
    (scripts/bench_data.py, docs/benchmarks.md). An accelerator keeps the earlier default of 4,
    which keeps it busier (not measured here).
    """
    return 1 if torch.device(device).type == "cpu" else 4


def check_window(options: Mapping[str, Any], stride: int = STRIDE) -> dict[str, Any]:
    """Validated sliding-window options ``window``, ``overlap``, ``mode``, ``sw_batch_size``, ``pad``.

    ``pad`` (default ``True``; the folder datamodule sets it from ``data.pad``): whether an image
    smaller than the window is padded (else refused).
    """
    opts = dict(options)
    unknown = set(opts) - {"window", "overlap", "mode", "sw_batch_size", "pad"}
    if unknown:
        raise ValueError(f"sliding_window has no option(s) {sorted(unknown)}; options: window, overlap, mode, sw_batch_size, pad")
    window = int(opts["window"])
    if window < stride or window % stride:
        raise ValueError(
            f"The sliding window {window} px is not a multiple of {stride}, the stride of a network of "
            f"model.encoder_depth 5 (that of every depth divides it): use e.g. {max(stride, -(-window // stride) * stride)} (data.crop_size)."
        )
    if not 0.0 <= float(opts.get("overlap", 0.25)) < 1.0:
        raise ValueError(f"sliding_window.overlap must be in [0, 1), got {opts['overlap']}")
    if opts.get("mode", "gaussian") not in MODES:
        raise ValueError(f"sliding_window.mode must be one of {MODES}, got {opts['mode']!r}")
    batch = opts.get("sw_batch_size")
    if batch is not None and int(batch) < 1:
        raise ValueError(f"sliding_window.sw_batch_size must be >= 1 (or null: by device), got {batch}")
    return {"window": window, "overlap": float(opts.get("overlap", 0.25)), "mode": opts.get("mode", "gaussian"),
            "sw_batch_size": None if batch is None else int(batch), "pad": bool(opts.get("pad", True))}


def pad_to_stride(image: Tensor, stride: int = STRIDE) -> Tensor:
    h, w = image.shape[-2:]
    if not (h % stride or w % stride):
        return image  # already a multiple (predict.py's batches are): F.pad would still copy the whole image
    return F.pad(image, (0, -w % stride, 0, -h % stride))


def whole_image_logits(
    net: Callable[[Tensor], Tensor],
    image: Tensor,
    options: Mapping[str, Any] | None,
    names: Sequence[str] | None = None,
) -> Tensor:
    """Logits ``[B, C, H, W]`` for images ``[B, 3, H, W]`` of any ``H, W``.

    ``options`` ``None``: one forward pass of the stride-padded batch; else sliding windows
    (:func:`check_window` options). With ``options["pad"]`` false, an image smaller than the
    window is a ``ValueError`` naming it (``names``: the batch's file stems, for the message).
    """
    h, w = image.shape[-2:]
    if options is not None and not options.get("pad", True):
        check_fits_window((h, w), options["window"], f"Image {names[0]}" if names else "An image")
    padded = pad_to_stride(image)
    if options is None:
        return net(padded)[..., :h, :w]
    from monai.inferers import sliding_window_inference

    window = options["window"]
    roi = (min(window, padded.shape[-2]), min(window, padded.shape[-1]))
    batch = options.get("sw_batch_size") or sw_batch_size_for(padded.device)
    logits = sliding_window_inference(
        padded, roi_size=roi, sw_batch_size=batch, predictor=net,
        overlap=options["overlap"], mode=options["mode"], progress=False,
    )
    return logits[..., :h, :w]
