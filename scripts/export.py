"""Export a trained checkpoint's network to ONNX, TorchScript and shareable safetensors weights.

    python scripts/export.py ckpt_path=logs/runs/<run>/checkpoints/last.ckpt output=model.onnx

Writes ``model.onnx``, ``model.torchscript.pt`` (``torchscript=null`` to skip it) and the folder
``model-weights/`` (``weights_dir=null`` to skip it): ``model.safetensors`` + ``config.json`` in
segmentation-models-pytorch's ``save_pretrained`` layout, with task and preprocessing added
(segtrain/pretrained.py). ``scripts/predict.py ckpt_path=model-weights`` predicts from it, and
``segmentation_models_pytorch.from_pretrained("model-weights")`` loads the network. ONNX and TorchScript take
the *preprocessed* image -- float32 ``[B, 3, H, W]``, resized and normalised like the
validation transforms (``checkpoint["config"]["data"]["val_transforms"]``) -- and return logits
``[B, out_channels, H, W]``: apply ``sigmoid > 0.5`` (binary, multilabel) or ``argmax`` over
channels (multiclass). The batch axis is dynamic; H and W are fixed to the training
``data.image_size`` unless ``dynamic_size=true`` (then any multiple of 32); a checkpoint trained
at native resolution (crops, sliding-window validation) exports dynamic H and W by default, traced
at its window size: tile large images with windows of that size, as docs/predict-export.md shows.

Volumes (a checkpoint of model=dynunet / segresnet, segtrain/network3d.py; also 2D nnU-Net data):
ONNX and TorchScript take the normalised volume float32 ``[B, C, D, H, W]`` (``[B, C, H, W]`` for a
2D nnU-Net dataset) and return logits ``[B, K, D, H, W]``. D, H and W are dynamic (any multiple of
the network's divisor, per axis); the export traces one window (``checkpoint["inference"]["window"]``,
or ``image_size=[D,H,W]``) and the check runs onnxruntime at another size. Large volumes are tiled
with windows of that size as validation did. The safetensors folder is for
segmentation-models-pytorch networks only: ``weights_dir=auto`` skips it for volumes.

ONNX exporter: ``exporter=dynamo`` (default) is ``torch.onnx.export(..., dynamo=True)``, the
torch.export-based exporter that is torch's default since 2.9 and needs ``onnxscript``
(a declared dependency; it runs offline). ``exporter=legacy`` is the older TorchScript-based
exporter (deprecated by torch; ~4x faster to export, kept for environments without onnxscript).
After export the ONNX model is run with onnxruntime (if installed) on a random batch and
compared with PyTorch (``check=true``); the max difference is printed.

The checkpoint is read as data only (segtrain/trust.py); ``trust_checkpoint=true`` skips the
``_target_`` allow-list for a file whose source you trust.

Keys (``key=value``): ckpt_path, output, torchscript, weights_dir, exporter, opset, image_size,
dynamic_size, check, atol, trust_checkpoint.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from segtrain.inference import SIZE_MULTIPLE, InferenceModel, is_volume, load_inference_model, parse_overrides  # noqa: E402
from segtrain.pretrained import save_pretrained  # noqa: E402

EXPORTERS = ("dynamo", "legacy")


@dataclass
class ExportArgs:
    ckpt_path: Any = None  # a .ckpt written by train.py (required)
    output: str = "model.onnx"
    torchscript: Any = "auto"  # a path, "auto" (= <output without .onnx>.torchscript.pt) or null
    weights_dir: Any = "auto"  # safetensors + config.json folder, "auto" (= <output without .onnx>-weights) or null
    exporter: str = "dynamo"  # dynamo | legacy
    opset: int = 18
    image_size: Any = None  # null: the training data.image_size (volumes: the sliding window, [D, H, W])
    dynamic_size: Optional[bool] = None  # also let H and W vary (multiples of 32); null: when trained at native resolution
    check: bool = True  # compare onnxruntime with PyTorch after export
    atol: float = 1e-4
    trust_checkpoint: bool = False  # skip the _target_ allow-list: only for a file whose source you trust


def input_size(config: dict[str, Any], image_size: Any) -> tuple[int, int]:
    """The ``(H, W)`` of the example input: ``image_size`` if given, else the training one.

    Raises:
        ValueError: neither given nor found in the checkpoint's config, or not a multiple of 32.
    """
    size = image_size
    if size is None:
        size = (config.get("data") or {}).get("image_size")
    if size is None:
        resize = ((config.get("data") or {}).get("val_transforms") or {}).get("resize") or {}
        if "height" in resize and "width" in resize:
            size = (resize["height"], resize["width"])
    if size is None:
        raise ValueError("The checkpoint's config has no data.image_size; give the input size: image_size=256")
    h, w = (int(size), int(size)) if isinstance(size, (int, np.integer, str)) else (int(size[0]), int(size[1]))
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"image_size={h}x{w}: the network needs multiples of {SIZE_MULTIPLE}, e.g. image_size={max(32, h // 32 * 32)}")
    return h, w


def export_onnx(
    net: nn.Module, example: torch.Tensor, path: str, exporter: str = "dynamo", opset: int = 18, dynamic_size: bool = False
) -> str:
    """Write ``net`` to ONNX with a dynamic batch axis (input ``image``, output ``logits``).

    Args:
        net: the network in eval mode.
        example: an input ``[B, C, H, W]`` (or ``[B, C, D, H, W]``) to trace with.
        path: the ``.onnx`` file.
        exporter: ``dynamo`` (torch.export-based, torch's default) or ``legacy`` (TorchScript-based).
        opset: ONNX opset version.
        dynamic_size: every spatial axis dynamic too.
    """
    axes = tuple(range(2, example.ndim)) if dynamic_size else ()
    return export_network(net, example, axes, path, exporter, opset)


def export_network(
    net: nn.Module, example: torch.Tensor, dynamic_axes: tuple[int, ...], path: str, exporter: str = "dynamo",
    opset: int = 18,
) -> str:
    """Write ``net`` to ONNX: input ``image``, output ``logits``, the batch axis and ``dynamic_axes`` dynamic.

    Args:
        net: the network in eval mode.
        example: an input to trace with, ``[B, C, *spatial]``; its spatial sizes multiples of the
            network's divisor, and large enough that no feature map has a size-1 axis (which the
            dynamo exporter would fix).
        dynamic_axes: the input axes besides the batch that may vary: ``(2, 3)`` for H, W of images,
            ``(2, 3, 4)`` for D, H, W of volumes, ``()`` for a fixed size.
        path: the ``.onnx`` file.
        exporter: ``dynamo`` (torch.export-based, torch's default) or ``legacy`` (TorchScript-based).
        opset: ONNX opset version.

    Returns:
        ``path``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is unknown; use one of {', '.join(EXPORTERS)}")
    spatial = example.ndim - 2
    bad = [a for a in dynamic_axes if not 2 <= int(a) < example.ndim]
    if bad:
        raise ValueError(f"dynamic_axes {bad} are not spatial axes of an input of {example.ndim} dims: use 2..{example.ndim - 1}")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    common = dict(input_names=["image"], output_names=["logits"], opset_version=int(opset))
    if exporter == "dynamo":
        dims = {0: torch.export.Dim("batch", min=1, max=4096)}
        # Dim.AUTO lets torch.export derive the constraints; explicit "32 * k" dims fail on
        # smp's input-size check. The example should be >= 64 so that no feature map has a
        # size-1 axis (which export would specialise).
        dims.update({int(a): torch.export.Dim.AUTO for a in dynamic_axes})
        # external_data=False: one self-contained .onnx file (fine below protobuf's 2 GB limit).
        large = sum(p.numel() * p.element_size() for p in net.parameters()) > 1.5e9
        torch.onnx.export(net, (example,), path, dynamo=True, dynamic_shapes=(dims,), external_data=large, **common)
    else:
        names = ("depth", "height", "width")[3 - spatial:] if spatial <= 3 else tuple(f"axis{i}" for i in range(spatial))
        axes = {0: "batch", **{int(a): names[int(a) - 2] for a in dynamic_axes}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # we chose it knowingly
            torch.onnx.export(net, (example,), path, dynamo=False, dynamic_axes={"image": axes, "logits": axes}, **common)
    return path


def export_torchscript(net: nn.Module, example: torch.Tensor, path: str) -> str:
    """Trace ``net`` with ``example`` and save it (``torch.jit.load(path)`` gives it back)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        traced = torch.jit.trace(net, example, check_trace=False)
    traced.save(path)
    return path


def onnx_max_error(path: str, net: nn.Module, batch: torch.Tensor) -> float:
    """Largest ``|onnxruntime - PyTorch|`` over the logits of ``batch``."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (ours,) = session.run(["logits"], {"image": batch.numpy()})
    with torch.no_grad():
        ref = net(batch).numpy()
    return float(np.abs(ours - ref).max())


def export(args: Any) -> dict[str, str]:
    """Run the export described by ``args`` (an :class:`ExportArgs` config). Returns the written files."""
    model = load_inference_model(args.ckpt_path, trust=bool(args.trust_checkpoint))
    if is_volume_model(model):
        return export_volume_network(args, model)
    net = model.net.cpu().eval()
    written: dict[str, str] = {}
    if args.weights_dir not in (None, "", "null"):
        folder = os.path.splitext(args.output)[0] + "-weights" if args.weights_dir == "auto" else args.weights_dir
        written["weights"] = save_pretrained(net, model.config, folder, model.preprocessing, model.sliding_window,
                                             model.postprocessing)
    dynamic = bool(model.sliding_window is not None if args.dynamic_size is None else args.dynamic_size)
    window = None if model.sliding_window is None else model.sliding_window["window"]
    h, w = input_size(model.config, args.image_size if args.image_size is not None else window)
    if dynamic:
        h, w = max(h, 2 * SIZE_MULTIPLE), max(w, 2 * SIZE_MULTIPLE)
    channels = int((model.preprocessing or {}).get("channels") or 3)
    example = torch.randn(2, channels, h, w)
    written["onnx"] = export_onnx(net, example, args.output, args.exporter, args.opset, dynamic)
    # A batch size (and, if dynamic, an image size) the example did not have: proves the axes are dynamic.
    size = (h + SIZE_MULTIPLE, w + 2 * SIZE_MULTIPLE) if dynamic else (h, w)
    return finish_export(args, net, example, written, lambda: torch.randn(3, channels, *size),
                         f"a batch of 3 at {size[0]}x{size[1]}")


def finish_export(args: Any, net: nn.Module, example: torch.Tensor, written: dict[str, str],
                  check_input: Callable[[], torch.Tensor], described: str) -> dict[str, str]:
    """After the ONNX file: TorchScript when asked, the onnxruntime check on ``check_input()`` (a shape
    the export was not traced with; ``described`` in the message), and the written paths printed."""
    if args.torchscript not in (None, "", "null"):
        ts = os.path.splitext(args.output)[0] + ".torchscript.pt" if args.torchscript == "auto" else args.torchscript
        written["torchscript"] = export_torchscript(net, example, ts)
    if args.check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed: skipped the check (pip install onnxruntime)")
        else:
            err = onnx_max_error(written["onnx"], net, check_input())
            print(f"onnxruntime vs PyTorch: max |diff| = {err:.2e} on {described}")
            if not err <= float(args.atol):
                raise ValueError(f"The exported ONNX model differs from PyTorch by {err:.2e} > atol={args.atol}; try exporter=legacy")
    for kind, path in written.items():
        print(f"{kind}: {os.path.abspath(path)}")
    return written


def is_volume_model(model: InferenceModel) -> bool:
    """A DynUNet/SegResNet (segtrain/network3d.py) or a volume run's checkpoint (``preprocessing.kind: volume``)."""
    from segtrain.network3d import BUILDERS_3D

    return is_volume(model.preprocessing) or (model.config.get("model") or {}).get("_target_") in BUILDERS_3D


def check_size(window: Any, divisor: tuple[int, ...], source: str) -> list[int]:
    """``window`` as a list of ints, one per axis of ``divisor``, each a multiple of it.

    Raises:
        ValueError: another length, or a size that is not a multiple (naming ``source`` and a size that works).
    """
    if window is None:
        raise ValueError(f"The checkpoint records no sliding window, so the export size is unknown: give {source}=[D,H,W]")
    sizes = [int(window)] * len(divisor) if isinstance(window, (int, np.integer, str)) else [int(w) for w in window]
    if len(sizes) != len(divisor):
        raise ValueError(f"{source}={sizes} needs {len(divisor)} sizes, one per spatial axis of the network")
    if any(s < d or s % d for s, d in zip(sizes, divisor)):
        fixed = [max(d, -(-s // d) * d) for s, d in zip(sizes, divisor)]
        raise ValueError(f"{source}={sizes}: the network needs multiples of {list(divisor)} per axis; use e.g. {fixed}")
    return sizes


def other_size(sizes: list[int], divisor: tuple[int, ...]) -> list[int]:
    """A size the export was not traced with, for the onnxruntime check: one divisor smaller per axis
    where that keeps two (a cheaper run on a CPU than a larger one), else one larger."""
    return [s - d if s - d >= 2 * d else s + d for s, d in zip(sizes, divisor)]


def export_volume_network(args: Any, model: InferenceModel) -> dict[str, str]:
    """The export of :func:`export` for a DynUNet/SegResNet checkpoint (:func:`is_volume_model`).

    The example input is ``[1, C, *window]``; the spatial axes are dynamic unless ``dynamic_size=false``;
    the check runs onnxruntime on ``[1, C, *other size]`` (:func:`other_size`) and compares with PyTorch.
    """
    net = model.net.cpu().eval()
    divisor = tuple(int(d) for d in getattr(net, "divisor", (SIZE_MULTIPLE,) * int(net.spatial_dims)))
    window = (model.sliding_window or {}).get("window")
    source = "image_size" if args.image_size is not None else "the checkpoint's sliding window"
    sizes = check_size(args.image_size if args.image_size is not None else window, divisor, source)
    channels = int((model.preprocessing or {}).get("channels") or model.config["model"]["in_channels"])
    dynamic = args.dynamic_size is not False
    written: dict[str, str] = {}
    if args.weights_dir not in (None, "", "null"):
        if args.weights_dir != "auto":
            raise ValueError(f"weights_dir={args.weights_dir}: the safetensors folder holds segmentation-models-pytorch "
                             f"networks, not {type(net).__name__}; share the .ckpt or the ONNX file, and pass weights_dir=null.")
        print(f"weights folder: skipped ({type(net).__name__} is not a segmentation-models-pytorch network)")
    example = torch.randn(1, channels, *sizes)
    axes = tuple(range(2, example.ndim)) if dynamic else ()
    written["onnx"] = export_network(net, example, axes, args.output, args.exporter, args.opset)
    size = other_size(sizes, divisor) if dynamic else sizes
    return finish_export(args, net, example, written, lambda: torch.randn(1, channels, *size),
                         f"one volume of {'x'.join(map(str, size))}")


def main(argv: list[str] | None = None) -> None:
    export(parse_overrides(ExportArgs, sys.argv[1:] if argv is None else argv, required=("ckpt_path",)))


if __name__ == "__main__":
    main()
