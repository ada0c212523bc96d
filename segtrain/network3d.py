"""Networks for volumes (and 2D nnU-Net data): MONAI's DynUNet and SegResNet.

``conf/model/dynunet.yaml`` -> :func:`build_dynunet`, ``conf/model/segresnet.yaml`` ->
:func:`build_segresnet`. Both take ``spatial_dims`` 2 or 3 and return logits
``[B, out_channels, *spatial]`` (``out_channels`` from :func:`segtrain.task.out_channels`), and
both expose ``net.spatial_dims`` and ``net.divisor``: per spatial axis, the number an input's
size must be a multiple of (the product of the network's strides on that axis).

DynUNet is MONAI's implementation of the nnU-Net architecture. Its kernels and strides are
planned from the patch size and the voxel spacing as nnU-Net plans them
(:func:`plan_kernels_strides`, MONAI's tutorial recipe ``get_kernels_strides``): an axis is
halved while its spacing is at most twice the finest one and its size is at least 8; an axis
much coarser than the others gets kernel 1 (no mixing across thick slices) until the
downsampling of the fine axes has caught up. The harness fills ``patch_size`` (the training crop)
and ``spacing`` (the dataset's median spacing) from the data plan.

:func:`check_model_matches_data` is the start-up check that a 2D model meets 2D data and a 3D
model 3D data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import DynUNet, SegResNet
from torch import Tensor

from .task import out_channels

#: Resolution levels of a planned DynUNet at most (5 downsamplings). nnU-Net plans 5 in 3D for
#: its usual 128^3-ish patches; the cap stops a large 2D crop from planning 7, and keeps every
#: divisor <= 32, the stride the 2D sliding window pads to (segtrain/sliding.py).
MAX_LEVELS = 6

#: nnU-Net's widest feature maps: 320 channels in 3D, 512 in 2D (MONAI's DynUNet defaults too).
MAX_FILTERS = {2: 512, 3: 320}

#: The builders of this module, as a config's ``_target_`` names them.
BUILDERS_3D = ("segtrain.network3d.build_dynunet", "segtrain.network3d.build_segresnet")
#: segmentation-models-pytorch: 2D networks only.
BUILDERS_2D = ("segtrain.network.build_network",)

_FILL_HINT = "the harness fills it from the data plan; when building the network yourself, set it"


def _ints(values: Any, name: str, length: int | None = None) -> list[int]:
    """A list of positive ints from a list/tuple/ListConfig, with a message naming ``model.<name>``."""
    try:
        out = [int(v) for v in values]
    except TypeError:
        raise ValueError(f"model.{name}={values!r} must be a list of sizes, one per spatial axis, e.g. [64, 128, 128]") from None
    if any(v < 1 for v in out) or (length is not None and len(out) != length):
        want = f"{length} positive sizes (one per spatial axis)" if length is not None else "positive sizes"
        raise ValueError(f"model.{name}={out} must have {want}")
    return out


def _spatial_dims(spatial_dims: int | None, patch_size: Any, model: str) -> int:
    """``spatial_dims`` as given, else the length of ``patch_size``; 2 or 3."""
    dims = spatial_dims if spatial_dims is not None else (len(patch_size) if patch_size is not None else None)
    if dims is None:
        raise ValueError(f"model.spatial_dims is null for {model} and there is no model.patch_size to read it from: "
                         f"{_FILL_HINT}: model.spatial_dims=3 (volumes) or 2.")
    if int(dims) not in (2, 3):
        raise ValueError(f"model.spatial_dims={dims} for {model}: use 2 (images) or 3 (volumes)")
    return int(dims)


def _in_channels(in_channels: int | None, model: str) -> int:
    if in_channels is None:
        raise ValueError(f"model.in_channels is null for {model}: {_FILL_HINT}: model.in_channels=1 (e.g. one CT channel).")
    if int(in_channels) < 1:
        raise ValueError(f"model.in_channels={in_channels} for {model} must be >= 1")
    return int(in_channels)


def _plain(value: Any) -> Any:
    """Config containers (ListConfig, DictConfig) as tuples and dicts: MONAI unpacks and ``isinstance``-checks them."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return tuple(_plain(v) for v in value)
    return value


def plan_kernels_strides(
    patch_size: Sequence[int], spacing: Sequence[float], max_levels: int | None = MAX_LEVELS
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's kernels and strides for a patch size and spacing (MONAI's ``get_kernels_strides``).

    At each level, per axis: stride 2 where the spacing is at most twice the finest spacing and the
    size is at least 8 (so the deepest feature map keeps >= 4 voxels), else 1; kernel 3 where the
    spacing ratio is at most 2, else 1. Sizes are divided and spacings multiplied by the strides
    until no axis can be halved, or the network has ``max_levels`` levels.

    Args:
        patch_size: the training crop, one size per spatial axis (``[D, H, W]`` or ``[H, W]``).
        spacing: the voxel spacing of the same axes (``(z, y, x)``; any unit).
        max_levels: most resolution levels (downsamplings + 1); ``None``: as many as the recipe plans.

    Returns:
        ``(kernels, strides)`` for ``DynUNet(kernel_size=kernels, strides=strides,
        upsample_kernel_size=strides[1:])``: one entry per level, ``strides[0]`` all 1.

    Raises:
        ValueError: lengths differ, or an axis size is odd where the plan halves it (naming the axis
            and a size that works).
    """
    sizes = _ints(patch_size, "patch_size")
    spacings = [float(s) for s in spacing]
    if len(spacings) != len(sizes) or any(s <= 0 for s in spacings):
        raise ValueError(f"model.spacing={list(spacing)} must hold {len(sizes)} positive spacings, one per axis of "
                         f"model.patch_size={sizes}")
    if max_levels is not None and int(max_levels) < 3:
        raise ValueError(f"model.max_levels={max_levels}: a DynUNet needs at least 3 levels")
    original = list(sizes)
    kernels: list[list[int]] = []
    strides: list[list[int]] = []
    while max_levels is None or len(strides) < int(max_levels) - 1:
        ratio = [s / min(spacings) for s in spacings]
        stride = [2 if r <= 2 and size >= 8 else 1 for r, size in zip(ratio, sizes)]
        kernel = [3 if r <= 2 else 1 for r in ratio]
        if all(s == 1 for s in stride):
            break
        for axis, (size, s) in enumerate(zip(sizes, stride)):
            if size % s:
                factor = s * _product([st[axis] for st in strides])
                good = -(-original[axis] // factor) * factor  # rounded up: the patch keeps its context
                raise ValueError(
                    f"model.patch_size={original}: axis {axis} ({original[axis]}) is halved {len(strides) + 1} times "
                    f"by the nnU-Net plan for spacing {list(spacing)}, so it must be a multiple of {factor}; "
                    f"use e.g. {good} (data.crop_size), or fewer levels (model.max_levels)."
                )
        sizes = [size // s for size, s in zip(sizes, stride)]
        spacings = [sp * s for sp, s in zip(spacings, stride)]
        kernels.append(kernel)
        strides.append(stride)
    strides.insert(0, [1] * len(sizes))
    kernels.append([3] * len(sizes))
    return kernels, strides


def fit_patch(patch_size: Sequence[int], spacing: Sequence[float],
              max_levels: int | None = MAX_LEVELS) -> tuple[list[int], list[int]]:
    """The smallest patch, axis by axis at least ``patch_size``, that the nnU-Net plan divides.

    :func:`plan_kernels_strides` halves an axis while it is at least 8 and not much coarser than
    the finest; each axis is rounded up to ``2 ** halvings`` until the plan no longer changes (as
    nnU-Net pads its planned patch to the network's divisibility). Used on planned patches only: a
    ``data.crop_size`` given by hand that the plan cannot halve stays an error naming the fix.

    Returns:
        ``(patch, divisor)``: the fitted patch and, per axis, what the network divides it by.
    """
    patch = _ints(patch_size, "patch_size")
    factors = [1] * len(patch)
    for _ in range(8):
        sizes, spacings, factors, levels = [float(p) for p in patch], [float(s) for s in spacing], [1] * len(patch), 0
        while max_levels is None or levels < int(max_levels) - 1:
            ratio = [sp / min(spacings) for sp in spacings]
            stride = [2 if r <= 2 and size >= 8 else 1 for r, size in zip(ratio, sizes)]
            if all(st == 1 for st in stride):
                break
            sizes = [size / st for size, st in zip(sizes, stride)]
            spacings = [sp * st for sp, st in zip(spacings, stride)]
            factors = [f * st for f, st in zip(factors, stride)]
            levels += 1
        fitted = [-(-p // f) * f for p, f in zip(patch, factors)]
        if fitted == patch:
            break
        patch = fitted
    return patch, factors


def _product(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def divisor_of(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Per axis, the product of the strides: what an input size must be a multiple of."""
    return tuple(_product([s[axis] for s in strides]) for axis in range(len(strides[0])))


class DeepSupervisedDynUNet(DynUNet):
    """DynUNet whose deep-supervision output is a list, ready for ``seglosses.DeepSupervisionLoss``.

    In training mode with ``deep_supervision=True`` MONAI's DynUNet returns one stacked tensor
    ``[B, 1 + deep_supr_num, C, *spatial]``; this returns ``[main, aux1, aux2, ...]`` (unbound
    along dim 1), each ``[B, C, *spatial]`` at full resolution: MONAI upsamples each auxiliary
    output (nearest) to the input size. In eval mode it returns the main output alone, a tensor,
    as validation, predict and export expect.

    A subclass rather than a wrapper module: the parameter names stay DynUNet's own, so a
    checkpoint trained with deep supervision initialises a network without it (``init_from``
    matches by name; the extra heads are left out) and the other way round.
    """

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:  # noqa: D102 -- see the class docstring
        out = super().forward(x)
        if self.training and self.deep_supervision:
            return list(torch.unbind(out, dim=1))
        return out


def build_dynunet(
    task: str,
    num_classes: int,
    in_channels: int | None,
    spatial_dims: int | None = 3,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    deep_supervision: bool = False,
    deep_supr_num: int = 2,
    filters: Sequence[int] | None = None,
    res_block: bool = False,
    base_filters: int = 32,
    max_filters: int | None = None,
    max_levels: int | None = MAX_LEVELS,
    **kwargs: Any,
) -> DynUNet:
    """MONAI's DynUNet (nnU-Net's U-Net) with kernels and strides planned from the data.

    Args:
        task: ``binary`` | ``multiclass`` | ``multilabel`` (decides the output channels).
        num_classes: classes of the task (1 for binary; with the background for multiclass).
        in_channels: image channels (the harness sets it from the data).
        spatial_dims: 3 (volumes ``[B, C, D, H, W]``) or 2 (images ``[B, C, H, W]``); ``None``: the
            length of ``patch_size``.
        patch_size: the training crop, one size per spatial axis: plans the depth and strides.
        spacing: the voxel spacing of the same axes (``(z, y, x)``; the dataset's median): plans
            which axes are halved (:func:`plan_kernels_strides`). Use ``[1, 1, 1]`` for isotropic voxels.
        deep_supervision: in training mode return ``[main, aux1, ...]`` logits, all at full
            resolution (:class:`DeepSupervisedDynUNet`), for ``seglosses.DeepSupervisionLoss``.
        deep_supr_num: auxiliary outputs with deep supervision (fewer than the levels minus 1;
            nnU-Net supervises every decoder level, MONAI's tutorials use 2-3).
        filters: channels per level, e.g. ``[32, 64, 128, 256, 320, 320]``; longer than the
            planned levels is cut (as MONAI does), shorter is an error. ``None``: ``base_filters``
            doubled per level up to ``max_filters``, as nnU-Net.
        res_block: residual blocks in the encoder and decoder (MONAI's option).
        base_filters: channels of the first level when ``filters`` is ``None`` (nnU-Net: 32;
            small values for tests and CPUs).
        max_filters: the widest level when ``filters`` is ``None``; ``None``: 320 in 3D, 512 in 2D (nnU-Net).
        max_levels: most resolution levels; ``None``: as many as the plan allows (:data:`MAX_LEVELS`).
        **kwargs: passed to ``monai.networks.nets.DynUNet`` (``norm_name``, ``act_name``,
            ``dropout``, ``trans_bias``).

    Returns:
        the network, with ``net.spatial_dims``, ``net.divisor`` (per axis) and ``net.kernel_size`` /
        ``net.strides`` (the plan).

    Raises:
        ValueError: a missing ``in_channels``, ``patch_size`` or ``spacing``, lengths that disagree
            with ``spatial_dims``, a patch size the plan cannot halve, too few levels, too few filters.
    """
    dims = _spatial_dims(spatial_dims, patch_size, "model=dynunet")
    channels = _in_channels(in_channels, "model=dynunet")
    if patch_size is None or spacing is None:
        missing = " and ".join(k for k, v in (("patch_size", patch_size), ("spacing", spacing)) if v is None)
        raise ValueError(
            f"model.{missing} is null: DynUNet plans its kernels and strides from the patch size and the voxel "
            f"spacing; {_FILL_HINT}: model.patch_size=[{', '.join(['128'] * dims)}] model.spacing=[{', '.join(['1.0'] * dims)}]."
        )
    sizes = _ints(patch_size, "patch_size", dims)
    if len(list(spacing)) != dims:
        raise ValueError(f"model.spacing={list(spacing)} must have {dims} values (model.spatial_dims={dims})")
    kernels, strides = plan_kernels_strides(sizes, spacing, max_levels)
    if len(strides) < 3:
        raise ValueError(
            f"model.patch_size={sizes} is too small for a U-Net: the nnU-Net plan (spacing {list(spacing)}) halves it "
            f"only {len(strides) - 1} time(s), DynUNet needs 2 or more: use a patch of at least 16 voxels on the "
            "finest axes (data.crop_size)."
        )
    levels = len(strides)
    if filters is None:
        widest = MAX_FILTERS[dims] if max_filters is None else int(max_filters)
        filters = [min(int(base_filters) * 2**i, widest) for i in range(levels)]
    filters = [int(f) for f in filters]
    if len(filters) < levels:
        raise ValueError(
            f"model.filters={filters} has {len(filters)} entries for the {levels} levels planned for patch {sizes}: "
            f"give {levels} (or more; the extra are unused), or null (base_filters doubled up to max_filters)."
        )
    if deep_supervision and not 1 <= int(deep_supr_num) < levels - 1:
        raise ValueError(
            f"model.deep_supr_num={deep_supr_num}: with {levels} levels a DynUNet has {levels - 1} decoder levels, "
            f"so 1 to {levels - 2} auxiliary outputs."
        )
    net = DeepSupervisedDynUNet(
        spatial_dims=dims, in_channels=channels, out_channels=out_channels(task, num_classes),
        kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:], filters=filters[:levels],
        deep_supervision=bool(deep_supervision), deep_supr_num=int(deep_supr_num), res_block=bool(res_block),
        **{k: _plain(v) for k, v in kwargs.items()},
    )
    net.divisor = divisor_of(strides)
    return net


def build_segresnet(
    task: str,
    num_classes: int,
    in_channels: int | None,
    spatial_dims: int | None = 3,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    init_filters: int = 16,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout_prob: float | None = None,
    **kwargs: Any,
) -> SegResNet:
    """MONAI's SegResNet (Myronenko 2018, without the VAE branch).

    Args:
        task: ``binary`` | ``multiclass`` | ``multilabel`` (decides the output channels).
        num_classes: classes of the task (1 for binary; with the background for multiclass).
        in_channels: image channels (the harness sets it from the data).
        spatial_dims: 3 (volumes) or 2 (images); ``None``: the length of ``patch_size``, else 3.
        patch_size: the training crop, if known: checked to be a multiple of ``net.divisor``.
        spacing: accepted for a config shared with DynUNet (the harness fills both); unused, since
            SegResNet halves every axis at every level.
        init_filters: channels of the first level, doubled per level; a multiple of the GroupNorm
            groups (8 unless ``norm`` says otherwise). MONAI's BraTS tutorial uses 16 (its class default is 8).
        blocks_down: residual blocks per encoder level; their count sets the depth
            (``len(blocks_down) - 1`` halvings).
        blocks_up: residual blocks per decoder level (one fewer than ``blocks_down``).
        dropout_prob: dropout after the first convolution, ``None``: none.
        **kwargs: passed to ``monai.networks.nets.SegResNet`` (``norm``, ``act``, ``upsample_mode``).

    Returns:
        the network, with ``net.spatial_dims`` and ``net.divisor`` (``2 ** (len(blocks_down) - 1)`` per axis).

    Raises:
        ValueError: a missing ``in_channels``, ``init_filters`` not a multiple of the groups, block counts
            that do not pair up, a ``patch_size`` not a multiple of the divisor.
    """
    dims = _spatial_dims(spatial_dims if spatial_dims is not None or patch_size is not None else 3, patch_size,
                         "model=segresnet")
    channels = _in_channels(in_channels, "model=segresnet")
    down, up = [int(b) for b in blocks_down], [int(b) for b in blocks_up]
    if len(up) != len(down) - 1 or len(down) < 2:
        raise ValueError(f"model.blocks_up={up} must have one entry fewer than model.blocks_down={down} (one per decoder level)")
    norm = _plain(kwargs.get("norm", ("GROUP", {"num_groups": 8})))
    group_norm = isinstance(norm, tuple) and len(norm) == 2 and str(norm[0]).upper() == "GROUP"
    groups = int(norm[1].get("num_groups", 8)) if group_norm else 1
    if int(init_filters) % groups:
        raise ValueError(f"model.init_filters={init_filters} must be a multiple of {groups}: SegResNet normalises in "
                         f"{groups} groups; use e.g. {-(-int(init_filters) // groups) * groups}")
    divisor = (2 ** (len(down) - 1),) * dims
    if patch_size is not None:
        sizes = _ints(patch_size, "patch_size", dims)
        if any(s % d for s, d in zip(sizes, divisor)):
            fixed = [-(-s // d) * d for s, d in zip(sizes, divisor)]
            raise ValueError(f"model.patch_size={sizes} must be a multiple of {divisor[0]} on every axis (SegResNet halves "
                             f"it {len(down) - 1} times): use e.g. {fixed} (data.crop_size), or fewer model.blocks_down.")
    net = SegResNet(
        spatial_dims=dims, init_filters=int(init_filters), in_channels=channels,
        out_channels=out_channels(task, num_classes), dropout_prob=dropout_prob, blocks_down=tuple(down),
        blocks_up=tuple(up), **{k: _plain(v) for k, v in kwargs.items()},
    )
    net.divisor = divisor
    return net


def check_model_matches_data(
    model_cfg_target: str | Mapping[str, Any], spatial_dims_of_data: int, model_spatial_dims: int | None = None
) -> None:
    """A start-up check: the model config can take the data's images (2D) or volumes (3D).

    Args:
        model_cfg_target: the model config's ``_target_`` (``cfg.model._target_``), or the model
            config itself (then its ``spatial_dims`` is read too).
        spatial_dims_of_data: 2 (images) or 3 (volumes), as the data plan found them.
        model_spatial_dims: the model config's ``spatial_dims`` when ``model_cfg_target`` is a string;
            ``None``: not set (the harness fills it from the data, so any data fits).

    Raises:
        ValueError: an smp (2D) model with volumes, or a DynUNet/SegResNet config fixed to the
            other number of dimensions; naming the model config, the data and the fix.
    """
    if isinstance(model_cfg_target, Mapping):
        if model_spatial_dims is None:
            model_spatial_dims = model_cfg_target.get("spatial_dims")
        target = str(model_cfg_target.get("_target_", ""))
    else:
        target = str(model_cfg_target)
    data = int(spatial_dims_of_data)
    if target in BUILDERS_2D and data == 3:
        raise ValueError(
            f"The model config (_target_ {target}: a segmentation-models-pytorch network, 2D only) cannot take the "
            "data's 3D volumes [C, D, H, W]: use model=dynunet (nnU-Net's U-Net) or model=segresnet."
        )
    if target in BUILDERS_3D and model_spatial_dims is not None and int(model_spatial_dims) != data:
        kind = {2: "2D images", 3: "3D volumes"}
        fix = "model=unet (or another smp model) or" if data == 2 else ""
        raise ValueError(
            f"The model config (_target_ {target}, model.spatial_dims={model_spatial_dims}) is built for "
            f"{kind.get(int(model_spatial_dims), model_spatial_dims)}, but the data are {kind.get(data, data)}: use "
            f"{fix} model.spatial_dims={data}, or null (set from the data)."
        )
