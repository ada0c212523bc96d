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
from dataclasses import dataclass
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from segtrain.inference import SIZE_MULTIPLE, load_inference_model, parse_overrides  # noqa: E402
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
    image_size: Any = None  # null: the training data.image_size
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
        example: an input ``[B, 3, H, W]`` to trace with.
        path: the ``.onnx`` file.
        exporter: ``dynamo`` (torch.export-based, torch's default) or ``legacy`` (TorchScript-based).
        opset: ONNX opset version.
        dynamic_size: H and W dynamic too.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is unknown; use one of {', '.join(EXPORTERS)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    common = dict(input_names=["image"], output_names=["logits"], opset_version=int(opset))
    if exporter == "dynamo":
        dims = {0: torch.export.Dim("batch", min=1, max=4096)}
        if dynamic_size:
            # Dim.AUTO lets torch.export derive the constraints; explicit "32 * k" dims fail on
            # smp's input-size check. The example should be >= 64 so that no feature map has a
            # size-1 axis (which export would specialise).
            dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
        # external_data=False: one self-contained .onnx file (fine below protobuf's 2 GB limit).
        large = sum(p.numel() * p.element_size() for p in net.parameters()) > 1.5e9
        torch.onnx.export(net, (example,), path, dynamo=True, dynamic_shapes=(dims,), external_data=large, **common)
    else:
        axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
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
    if args.torchscript not in (None, "", "null"):
        ts = args.torchscript
        if ts == "auto":
            ts = os.path.splitext(args.output)[0] + ".torchscript.pt"
        written["torchscript"] = export_torchscript(net, example, ts)
    if args.check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed: skipped the check (pip install onnxruntime)")
        else:
            # A batch size (and, if dynamic, an image size) the example did not have: proves the axes are dynamic.
            size = (h + SIZE_MULTIPLE, w + 2 * SIZE_MULTIPLE) if dynamic else (h, w)
            err = onnx_max_error(written["onnx"], net, torch.randn(3, channels, *size))
            print(f"onnxruntime vs PyTorch: max |diff| = {err:.2e} on a batch of 3 at {size[0]}x{size[1]}")
            if not err <= float(args.atol):
                raise ValueError(f"The exported ONNX model differs from PyTorch by {err:.2e} > atol={args.atol}; try exporter=legacy")
    for kind, path in written.items():
        print(f"{kind}: {os.path.abspath(path)}")
    return written


def main(argv: list[str] | None = None) -> None:
    export(parse_overrides(ExportArgs, sys.argv[1:] if argv is None else argv, required=("ckpt_path",)))


if __name__ == "__main__":
    main()
