"""Segmentation network factory around segmentation-models-pytorch.

Any smp architecture (``Unet``, ``UnetPlusPlus``, ``FPN``, ``DeepLabV3Plus``, ``PSPNet``,
``Linknet``, ``MAnet``, ``PAN``, ``UPerNet``, ``Segformer`` ...) and any of its encoders is
chosen by config (``conf/model/*.yaml``). The output channels follow from the top-level
``task``/``num_classes`` via :func:`segtrain.task.out_channels`; the network returns logits.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from .encoder_weights import hub_download, is_weights_path, load_encoder_weights
from .task import out_channels


def build_network(
    arch: str,
    encoder_name: str,
    task: str,
    num_classes: int,
    encoder_weights: str | None = None,
    in_channels: int | None = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build ``smp.create_model(arch, encoder_name, encoder_weights, in_channels, classes, **kwargs)``.

    Args:
        arch: smp architecture name, case-insensitive (``unet``, ``fpn``, ``deeplabv3plus`` ...).
        encoder_name: smp encoder (``resnet18``, ``efficientnet-b0``, ``mit_b0`` ...).
        task: ``binary`` | ``multiclass`` | ``multilabel`` (decides the output channels).
        num_classes: classes of the task (1 for binary).
        encoder_weights: ``None`` (random init, works offline); a pretrained set such as
            ``imagenet`` (downloaded on first use, then read from the cache offline; a failed
            download is one ``ValueError`` with the fixes); or the path of a local weights file
            (``.pth``/``.pt``/``.bin``/``.safetensors``): the network is built with random
            weights and the file is mapped onto ``net.encoder`` by name and shape, a 3-channel
            first conv adapted to ``in_channels`` as smp does (segtrain/encoder_weights.py).
        in_channels: image channels; the harness sets it from the data (its fingerprint), ``None``: 3.
        **kwargs: passed to the architecture (``encoder_depth``, ``decoder_channels`` ...).

    Returns:
        an ``nn.Module`` mapping ``[B, in_channels, H, W]`` to logits ``[B, out_channels, H, W]``.
    """
    archs = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
    if str(arch).lower() not in archs:
        raise ValueError(f"model.arch={arch!r} is not a segmentation-models-pytorch architecture; choose one of {archs}")
    encoders = smp.encoders.get_encoder_names()
    # "tu-<name>" selects any timm model as encoder (smp's timm universal encoder).
    if encoder_name not in encoders and not str(encoder_name).startswith("tu-"):
        raise ValueError(
            f"model.encoder_name={encoder_name!r} is not a segmentation-models-pytorch encoder; "
            f"e.g. resnet18, resnet34, efficientnet-b0, mobilenet_v2, or tu-<timm model> (all: smp.encoders.get_encoder_names())"
        )
    # Lists from the config (ListConfig) become tuples: smp checks lengths and indexes them.
    kwargs = {k: tuple(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v for k, v in kwargs.items()}
    channels = 3 if in_channels is None else int(in_channels)

    def create(weights: str | None) -> nn.Module:
        return smp.create_model(arch, encoder_name=encoder_name, encoder_weights=weights, in_channels=channels,
                                classes=out_channels(task, num_classes), **kwargs)

    if encoder_weights is None:
        return create(None)
    if is_weights_path(encoder_weights):
        net = create(None)
        load_encoder_weights(net.encoder, encoder_weights, channels)
        return net
    weights = str(encoder_weights)
    with hub_download(encoder_name, weights):
        try:
            return create(weights)
        except KeyError as err:  # smp: "Wrong pretrained weights `x` for encoder `y`. Available options are: [...]"
            raise ValueError(
                f"model.encoder_weights={weights!r} is neither a weight set of {encoder_name} nor a file path: "
                f"{err.args[0] if err.args else err}. Pass one of those, a path (containing '/'), or null."
            ) from None
