"""Boundary loss (Kervadec et al., MIDL 2019): probabilities weighted by the target's signed distance.

With ``p_c`` the probability of class ``c`` (``sigmoid`` for binary and multilabel, ``softmax``
over the channels for multiclass) and ``phi_c`` the signed distance map of the target's class
``c`` in Kervadec's convention (negative inside, 0 on the pixels of the class that touch its
border, positive outside)::

    phi_c(x) = edt(not c)(x)         outside the class
    phi_c(x) = -(edt(c)(x) - 1)      inside it
    L = 1/|K| sum_{c in K} 1/N sum_{b, x} p_{b,c}(x) phi_{b,c}(x)

``K`` the classes kept (all, or all but channel 0 with ``include_background=False``), ``N`` the
number of pixels of the batch, ``edt(a)`` the Euclidean distance of each pixel of ``a`` to the
nearest pixel outside ``a`` (in pixels, or in the units of ``spacing``). Minimising it moves the
probability mass into the target's classes, the more the farther a pixel lies from them. Its
lowest value (``p = 1`` exactly where ``phi < 0``) is negative and depends on the target, so it
is combined with a region loss (the paper: ``GDL + lambda * L``, lambda ramped up from 0.01).

``phi`` is read off the canonical signed map of :mod:`seglosses.derived`,
``d = edt(not c) - edt(c)``: ``phi = d + 1`` where ``d < 0``, ``d`` elsewhere. A class absent
from the image or covering all of it has no boundary: its map is 0 and so is its term
(as MONAI's ``BoundaryLoss``; the authors' ``one_hot2dist`` also gives 0 for an absent class, but
for a class covering the whole image it returns scipy's distances to a virtual border, an
artefact). Equal to ``monai.losses.BoundaryLoss`` (``sigmoid=True``, or ``softmax=True,
to_onehot_y=True`` for multiclass, the same ``include_background``, ``reduction="mean"``), and to
the authors' ``SurfaceLoss(probs, one_hot2dist(...))`` (LIVIAETS/boundary-loss) on the classes
``idc`` it keeps.

``ignore_index``: ignored pixels belong to no class in the maps (they count as "not c" for every
class, as in :mod:`seglosses.derived`), their terms are masked out and the mean divides by the
number of valid pixels (per class: in multilabel mode a pixel may be ignored in one channel only);
a class with no valid pixel is left out of the class average. Without ignored pixels this is the
plain mean above.

The maps. The training harness computes ``distance`` in the data pipeline, once per sample, on
the whole image before cropping (datamodules), and passes it to the loss
(``loss(logits, target, distance=maps)``); a class absent from the crop but present in the image
then still has its (non-zero) map. Called without it, the loss computes the maps from the
target (:func:`seglosses.derived.distance_from_target`): scipy, on the CPU, every step, on the
crop the loss sees (as MONAI does) -- slower, and it needs scipy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from ._region import check_input
from ._targets import dense_target, index_target, upcast
from .derived import DISTANCE, check_spacing  # numpy and scipy only when a map is computed


# --- checks shared with seglosses/hausdorff.py ---------------------------------------------------

def check_spatial(logits: Tensor, name: str, what: str = "distance maps") -> None:
    """2D ``[B, C, H, W]`` or 3D ``[B, C, D, H, W]`` logits."""
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"{name}: {what} are 2D or 3D: logits must be [B, C, H, W] or [B, C, D, H, W], "
            f"got shape {list(logits.shape)}"
        )


def check_include_background(include_background: bool, mode: str, channels: int | None, name: str) -> bool:
    """``include_background`` as a bool; False needs a channel 0 to drop and another to keep."""
    if not isinstance(include_background, bool):
        raise ValueError(f"{name}: include_background must be True or False, got {include_background!r}")
    if not include_background and (mode == "binary" or (channels is not None and channels < 2)):
        raise ValueError(
            f"{name}: include_background=False drops channel 0, which needs several channels; "
            f"binary mode has one, the foreground (leave include_background=True)"
        )
    return include_background


def check_ignore_index(ignore_index, name: str):
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, float))):
        raise ValueError(f"{name}: ignore_index must be a number (e.g. 255) or None, got {ignore_index!r}")
    return ignore_index


def spacing_for(spacing: tuple[float, ...] | None, logits: Tensor, name: str) -> tuple[float, ...] | None:
    """``spacing`` checked against the logits' spatial dims."""
    spacing = check_spacing(spacing, owner=name)
    if spacing is not None and len(spacing) != logits.ndim - 2:
        raise ValueError(
            f"{name}: spacing has {len(spacing)} values but the logits {list(logits.shape)} have "
            f"{logits.ndim - 2} spatial axes; give one size per axis"
        )
    return spacing


def check_distance(distance, logits: Tensor, name: str) -> Tensor:
    """A given ``distance``: float ``[B, C, *spatial]`` like the logits (C before include_background)."""
    hint = (
        "pass the canonical signed maps of seglosses.derived (distance_from_target(target, mode, C)), "
        "or distance=None to let the loss compute them"
    )
    if not isinstance(distance, Tensor):
        raise ValueError(f"{name}: distance must be a torch.Tensor or None, got {type(distance).__name__}; {hint}")
    if not distance.is_floating_point():
        raise ValueError(
            f"{name}: distance must be a floating-point tensor of signed distances, got dtype "
            f"{distance.dtype} (a mask?); {hint}"
        )
    if tuple(distance.shape) != tuple(logits.shape):
        raise ValueError(
            f"{name}: distance must have the logits' shape [B, C, *spatial] = {list(logits.shape)} "
            f"(one map per channel, channel 0 included), got {list(distance.shape)}; {hint}"
        )
    if _checks._value_checks_active() and not bool(torch.isfinite(distance).all()):
        raise ValueError(
            f"{name}: distance holds NaN or infinite values; {hint} "
            f"(or seglosses.set_checks(False) to skip this check)"
        )
    return distance


# --- pieces shared with seglosses/hausdorff.py ---------------------------------------------------

def probabilities(x: Tensor, target: Tensor, mode: str, ignore_index, *, one_hot: bool):
    """``(p, t, valid)`` for validated inputs.

    ``p``: softmax (multiclass) or sigmoid of the (upcast) logits ``x``; ``t``: the target as
    ``[B, C, *]`` floats with ignored entries 0 (one-hot for multiclass; None unless ``one_hot``);
    ``valid``: the 0/1 mask of valid pixels, ``[B, 1, *]`` (multiclass) or ``[B, C, *]``, or None
    without ``ignore_index``.
    """
    if mode == "multiclass":
        p = F.softmax(x, dim=1)
        idx, valid = index_target(target, ignore_index)
        valid = None if valid is None else valid.unsqueeze(1).to(x.dtype)
        t = None
        if one_hot:
            t = F.one_hot(idx, x.shape[1]).movedim(-1, 1).to(x.dtype)
            t = t if valid is None else t * valid
        return p, t, valid
    p = torch.sigmoid(x)
    t, valid = dense_target(target, ignore_index, x.dtype)
    return p, (t if one_hot else None), valid


def computed_distance(target: Tensor, mode: str, channels: int, ignore_index, spacing) -> Tensor:
    """The canonical signed maps of a validated target (:func:`seglosses.derived.distance_from_target`).

    Binary / multilabel targets are binarised at 0.5 first (ignored entries excluded), as MONAI
    thresholds them: for 0/1 targets this is the target itself; soft targets (label smoothing)
    would otherwise be in no class at all, since derived reads only ``== 1`` as the class.
    """
    from .derived import distance_from_target  # numpy/scipy: only when the maps are computed here

    if mode != "multiclass":
        inside = target > 0.5
        if ignore_index is not None:
            inside &= target != ignore_index
        target = inside.to(torch.uint8)
    return distance_from_target(target, mode, channels, spacing)


def valid_mean(terms: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``terms`` ``[B, C, *]`` (already 0 where ignored) over batch and pixels per class,
    then over the classes; per class over its valid pixels only, a class without any left out.

    Without ``valid`` it is ``terms.mean()``: MONAI's mean over pixels, then classes and batch.
    """
    if valid is None:
        return terms.mean()
    dims = (0, *range(2, terms.ndim))
    count = valid.sum(dims)  # [C] or [1] (multiclass: the same pixels for every class)
    per_class = terms.sum(dims) / count.clamp_min(1.0)
    has = (count > 0).to(terms.dtype).expand_as(per_class)
    # every pixel ignored: 0, still attached to the graph
    return (per_class * has).sum() / has.sum().clamp_min(1.0)


# --- the loss -------------------------------------------------------------------------------------

def boundary_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    distance: Tensor | None = None,
    include_background: bool = True,
    ignore_index: int | float | None = None,
    spacing: Sequence[float] | None = None,
) -> Tensor:
    r"""Boundary loss (Kervadec et al. 2019); see the module docstring.

    ``L = 1/|K| sum_{c in K} mean_{b,x}(p_c phi_c)``, ``phi = d + 1`` where ``d < 0``, ``d``
    elsewhere, ``d = edt(not c) - edt(c)`` the canonical signed map.

    Args:
        logits: ``[B, C, H, W]`` or ``[B, C, D, H, W]``.
        target: binary ``[B, 1, *]`` or ``[B, *]`` 0/1, multiclass ``[B, *]`` class indices,
            multilabel ``[B, C, *]`` 0/1.
        mode: ``"binary" | "multiclass" | "multilabel"``.
        distance: the canonical signed maps ``[B, C, *spatial]`` of the target (C the logits'
            channels, channel 0 included; :mod:`seglosses.derived`). None: computed here from the
            target with scipy on the CPU, every call (slower; the harness computes them in the
            data pipeline, on the whole image).
        include_background: False leaves channel 0 out (the paper's setting for multiclass; not
            allowed in binary mode, whose only channel is the foreground).
        ignore_index: target value of pixels that count for nothing: no class in the maps, no term,
            not in the mean's count.
        spacing: the size of a pixel along each spatial axis (e.g. ``[1.0, 0.5, 0.5]`` mm), for the
            maps computed here; a given ``distance`` is used as it is.
    """
    name = "BoundaryLoss"
    _checks.check_mode(mode, name)
    check_ignore_index(ignore_index, name)
    target = check_input(logits, target, mode, ignore_index, name)
    check_spatial(logits, name)
    check_include_background(include_background, mode, logits.shape[1], name)
    if distance is None:
        distance = computed_distance(target, mode, logits.shape[1], ignore_index, spacing_for(spacing, logits, name))
    else:
        check_distance(distance, logits, name)
        spacing_for(spacing, logits, name)  # still a bad option if wrong
    x = upcast(logits)
    p, _, valid = probabilities(x, target, mode, ignore_index, one_hot=False)
    d = distance.to(x.device)
    # Kervadec's map from the canonical one, in the map's own precision (as MONAI and the authors):
    # -(edt(c) - 1) inside, so the class's border pixels weigh 0 and the map is continuous across it.
    phi = torch.where(d < 0, d + 1.0, d).to(x.dtype)
    if not include_background:
        p, phi = p[:, 1:], phi[:, 1:]
        valid = valid if valid is None or valid.shape[1] == 1 else valid[:, 1:]
    terms = p * phi if valid is None else p * phi * valid
    return valid_mean(terms, valid)


class BoundaryLoss(nn.Module):
    r"""Boundary loss (Kervadec et al., MIDL 2019) as a module; see :func:`boundary_loss`.

    ``L = 1/|K| sum_{c in K} mean_{b,x}(p_c phi_c)`` with ``phi_c`` the target's signed distance
    map (``-(edt(c) - 1)`` inside class ``c``, ``edt(not c)`` outside, 0 for a class absent or
    covering the image). Equals ``monai.losses.BoundaryLoss`` on matching options.

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``; ``p`` is the sigmoid (binary, multilabel)
            or the softmax over the channels (multiclass) of the logits.
        include_background: default True, as MONAI (and every seglosses loss). The paper sums over
            the foreground classes only (``idc=[1]``): for multiclass, False is its setting. In
            binary mode the only channel is the foreground (False is refused); in multilabel mode
            channel 0 is a class like the others.
        ignore_index: target value whose pixels count for nothing (no class in the maps, no term;
            the mean is over the valid pixels).
        spacing: size of a pixel along each spatial axis, for the maps the loss computes itself
            (``distance=None``); default None: 1 per pixel, as MONAI.

    Forward: ``loss(logits, target, distance=None)``. ``distance``: the canonical signed maps
    ``[B, C, *spatial]`` (:mod:`seglosses.derived`), listed in :attr:`derived_targets` so that
    :class:`~seglosses.CombinedLoss` and the harness hand them over; None: computed from the target
    every call (scipy, CPU: slower).
    """

    derived_targets = (DISTANCE,)

    def __init__(
        self,
        mode: str,
        *,
        include_background: bool = True,
        ignore_index: int | float | None = None,
        spacing: Sequence[float] | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        self.mode = _checks.check_mode(mode, name)
        self.include_background = check_include_background(include_background, mode, None, name)
        self.ignore_index = check_ignore_index(ignore_index, name)
        self.spacing = check_spacing(spacing, owner=name)

    def forward(self, logits: Tensor, target: Tensor, *, distance: Tensor | None = None) -> Tensor:
        return boundary_loss(
            logits, target, self.mode, distance=distance, include_background=self.include_background,
            ignore_index=self.ignore_index, spacing=self.spacing,
        )

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, include_background={self.include_background}, "
                f"ignore_index={self.ignore_index}, spacing={self.spacing}")
