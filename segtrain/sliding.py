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

Volumes (and 2D nnU-Net images) give ``window`` as a list, one size per spatial axis
(``[D, H, W]``), for images ``[B, C, *spatial]``. Then the window is MONAI's ``roi_size`` as it is:
the datamodule made it a multiple of the network's divisor, and MONAI pads a smaller volume
itself (centred, zeros) and crops the logits back, so no stride padding is needed. Two more
options are passed to MONAI for large volumes: ``sw_device``, where the windows run (the
accelerator), and ``device``, where the volume's logits are gathered (``cpu``: a volume too
large for the accelerator's memory stays on the CPU); ``None``: the image's device.
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
    """Validated sliding-window options ``window``, ``overlap``, ``mode``, ``sw_batch_size``, ``pad``
    (and ``sw_device``, ``device`` where given).

    ``window``: an int (2D images: a multiple of ``stride``), or a list of positive sizes, one per
    spatial axis (volumes: ``[D, H, W]``; the datamodule makes them multiples of the network's divisor).
    ``pad`` (default ``True``; the folder datamodule sets it from ``data.pad``): whether an image
    smaller than the window is padded (else refused). ``sw_device`` / ``device``: see the module
    docstring; kept in the result only when the options hold them, so a 2D checkpoint's
    ``inference`` entry is as before.
    """
    opts = dict(options)
    known = ("window", "overlap", "mode", "sw_batch_size", "pad", "sw_device", "device")
    unknown = set(opts) - set(known)
    if unknown:
        raise ValueError(f"sliding_window has no option(s) {sorted(unknown)}; options: {', '.join(known)}")
    window = _window(opts["window"], stride)
    if not 0.0 <= float(opts.get("overlap", 0.25)) < 1.0:
        raise ValueError(f"sliding_window.overlap must be in [0, 1), got {opts['overlap']}")
    if opts.get("mode", "gaussian") not in MODES:
        raise ValueError(f"sliding_window.mode must be one of {MODES}, got {opts['mode']!r}")
    batch = opts.get("sw_batch_size")
    if batch is not None and int(batch) < 1:
        raise ValueError(f"sliding_window.sw_batch_size must be >= 1 (or null: by device), got {batch}")
    checked = {"window": window, "overlap": float(opts.get("overlap", 0.25)), "mode": opts.get("mode", "gaussian"),
               "sw_batch_size": None if batch is None else int(batch), "pad": bool(opts.get("pad", True))}
    for key in ("sw_device", "device"):
        if key in opts:
            checked[key] = _device(opts[key], key)
    return checked


def _window(value: Any, stride: int) -> int | list[int]:
    """An int window (2D, a multiple of ``stride``) or a list of positive sizes (N-d)."""
    if _is_sizes(value):
        sizes = [int(v) for v in value]
        if len(sizes) not in (2, 3) or any(v < 1 for v in sizes):
            raise ValueError(f"sliding_window.window={list(value)} must hold 2 or 3 positive sizes, one per spatial axis "
                             "([D, H, W] for volumes)")
        return sizes
    window = int(value)
    if window < stride or window % stride:
        raise ValueError(
            f"The sliding window {window} px is not a multiple of {stride}, the stride of a network of "
            f"model.encoder_depth 5 (that of every depth divides it): use e.g. {max(stride, -(-window // stride) * stride)} (data.crop_size)."
        )
    return window


def _is_sizes(value: Any) -> bool:
    """A window given as one size per axis (list, tuple or a config's ListConfig)."""
    return isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig"


def _device(value: Any, key: str) -> str | None:
    """A device name (``cpu``, ``cuda``, ``cuda:1``) or ``None``; an unknown name is an error naming the key."""
    if value is None:
        return None
    try:
        return str(torch.device(str(value)))
    except RuntimeError:
        raise ValueError(f"sliding_window.{key}={value!r} is not a device: use cpu, cuda, cuda:<index>, or null "
                         "(the image's device)") from None


def pad_to_stride(image: Tensor, stride: int = STRIDE) -> Tensor:
    """Zero-pad the last two axes (bottom/right) up to a multiple of ``stride``."""
    h, w = image.shape[-2:]
    if not (h % stride or w % stride):
        return image  # already a multiple (predict.py's batches are): F.pad would still copy the whole image
    return F.pad(image, (0, -w % stride, 0, -h % stride))


def pad_to_multiple(image: Tensor, divisor: Sequence[int]) -> Tensor:
    """Zero-pad the spatial axes (at their ends) up to multiples of ``divisor`` (one per spatial axis)."""
    sizes = image.shape[2:]
    pads = [-size % int(d) for size, d in zip(sizes, divisor)]
    if not any(pads):
        return image
    # F.pad takes (before, after) pairs from the last axis backwards.
    return F.pad(image, [p for pad in reversed(pads) for p in (0, pad)])


def _check_fits(sizes: Sequence[int], window: Sequence[int], name: str) -> None:
    """With padding off, a volume smaller than the window on any axis is an error naming it."""
    if all(s >= w for s, w in zip(sizes, window)):
        return
    raise ValueError(
        f"{name} is {'x'.join(map(str, sizes))} voxels, smaller than the {'x'.join(map(str, window))} sliding window, and "
        "data.pad=false does not pad: lower data.crop_size (the window) or set data.pad=true."
    )


def whole_image_logits(
    net: Callable[[Tensor], Tensor],
    image: Tensor,
    options: Mapping[str, Any] | None,
    names: Sequence[str] | None = None,
) -> Tensor:
    """Logits ``[B, K, *spatial]`` for images ``[B, C, H, W]`` or volumes ``[B, C, D, H, W]`` of any size.

    Args:
        net: the network (or any callable ``[B, C, *spatial] -> [B, K, *spatial]``).
        image: the batch.
        options: ``None``: one forward pass of the padded batch (images: H, W up to :data:`STRIDE`,
            as always; volumes: every axis up to ``net.divisor``, else :data:`STRIDE`); else
            sliding windows (:func:`check_window` options: an int window for 2D images, a list for
            N-d ones; see the module docstring).
        names: the batch's file stems or case ids, for the message when ``options["pad"]`` is false
            and an image is smaller than the window.

    Raises:
        ValueError: a list window whose length is not the image's number of spatial axes, or an
            image smaller than the window with ``pad`` false.
    """
    if options is not None and _is_sizes(options["window"]):
        return _nd_logits(net, image, options, names)
    if options is not None and image.ndim != 4:
        raise ValueError(f"sliding_window.window={options['window']} is one size, for 2D images; these have "
                         f"{image.ndim - 2} spatial axes: give one size per axis, e.g. [128, 128, 128].")
    if options is None and image.ndim != 4:
        divisor = getattr(net, "divisor", None) or (STRIDE,) * (image.ndim - 2)
        crop = tuple(slice(0, s) for s in image.shape[2:])
        return net(pad_to_multiple(image, divisor))[(..., *crop)]
    h, w = image.shape[-2:]
    if options is not None and not options.get("pad", True):
        check_fits_window((h, w), options["window"], f"Image {names[0]}" if names else "An image")
    padded = pad_to_stride(image)
    if options is None:
        return net(padded)[..., :h, :w]
    from monai.inferers import sliding_window_inference

    window = options["window"]
    roi = (min(window, padded.shape[-2]), min(window, padded.shape[-1]))
    batch = options.get("sw_batch_size") or sw_batch_size_for(options.get("sw_device") or padded.device)
    logits = sliding_window_inference(
        padded, roi_size=roi, sw_batch_size=batch, predictor=net,
        overlap=options["overlap"], mode=options["mode"], progress=False,
        sw_device=options.get("sw_device"), device=options.get("device"),
    )
    return logits[..., :h, :w]


def _nd_logits(net: Callable[[Tensor], Tensor], image: Tensor, options: Mapping[str, Any],
               names: Sequence[str] | None) -> Tensor:
    """Sliding windows of ``options["window"]`` (a list, one size per spatial axis) over ``image``."""
    from monai.inferers import sliding_window_inference

    window = [int(w) for w in options["window"]]
    sizes = list(image.shape[2:])
    if len(window) != len(sizes):
        raise ValueError(
            f"sliding_window.window={window} has {len(window)} sizes, but the images have {len(sizes)} spatial axes "
            f"({'x'.join(map(str, sizes))}): give one size per axis (data.crop_size)."
        )
    if not options.get("pad", True):
        _check_fits(sizes, window, f"Image {names[0]}" if names else "An image")
    sw_device = options.get("sw_device")
    batch = options.get("sw_batch_size") or sw_batch_size_for(sw_device or image.device)
    # roi = the window, never shrunk: MONAI pads a smaller volume up to it (centred) and crops the
    # logits back, and the window is a multiple of the network's divisor while the volume need not be.
    return sliding_window_inference(
        image, roi_size=window, sw_batch_size=batch, predictor=net, overlap=options["overlap"],
        mode=options["mode"], progress=False, sw_device=sw_device, device=options.get("device"),
    )
