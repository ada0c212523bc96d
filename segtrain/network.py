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
        encoder_weights: ``None`` (random init, works offline) or a pretrained set such as
            ``imagenet`` (downloaded on first use: needs internet).
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
    return smp.create_model(
        arch,
        encoder_name=encoder_name,
        encoder_weights=encoder_weights,
        in_channels=3 if in_channels is None else int(in_channels),
        classes=out_channels(task, num_classes),
        **kwargs,
    )
