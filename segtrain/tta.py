"""Test-time augmentation and ensembles: predictions averaged in probability space.

``tta=flip`` runs the network on the image and on its mirrors along the spatial axes (2D:
horizontal, vertical and both, 4 passes; 3D: the 8 mirrors of three axes), flips each output
back and averages the *probabilities* (sigmoid for binary and multilabel, softmax for
multiclass), as nnU-Net's mirroring does. An ensemble averages the probabilities of several
models the same way. The average is returned as logits again (``log p - log(1 - p)``, or
``log p``), so everything downstream -- thresholds, argmax, ``segtrain.task.logits_to_mask``,
resizing to the original size -- is unchanged: the decision ``p > 0.5`` / ``argmax p`` is the
same on these logits.

Cost: ``tta=flip`` is 4 forward passes per image in 2D (8 in 3D); scripts/bench_eval.py
measures it against one plain pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch
from torch import Tensor

MODES = (None, "flip")
#: Logit clamp of the averaged probabilities: log(p) of an exact 0 or 1 would be -inf / inf.
_EPS = 1e-7


def check_tta(mode: str | None) -> str | None:
    """``None`` / ``"none"`` (one pass) or ``"flip"``; anything else is a ``ValueError``."""
    if mode in (None, "none", "null", False):
        return None
    if mode not in MODES:
        raise ValueError(f"tta={mode!r} is not a test-time augmentation: use tta=flip (mirrored passes) or tta=null")
    return mode


def flips(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every combination of mirrored spatial axes, the identity first: 2D ``[(), (-1,), (-2,), (-1, -2)]``."""
    axes = [-(i + 1) for i in range(spatial_dims)]
    return [combo for k in range(spatial_dims + 1) for combo in combinations(axes, k)]


def to_probabilities(logits: Tensor, task: str) -> Tensor:
    """Sigmoid (binary, multilabel) or softmax over the classes (multiclass), in float32."""
    logits = logits.float()
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


def to_logits(probabilities: Tensor, task: str) -> Tensor:
    """The inverse of :func:`to_probabilities` up to the clamp: logits whose decisions are the probabilities'."""
    p = probabilities.clamp(_EPS, 1 - _EPS)
    return torch.log(p) if task == "multiclass" else torch.log(p) - torch.log1p(-p)


def average_predictions(predictors: Sequence[Callable[[Tensor], Tensor]], image: Tensor | Sequence[Tensor], task: str,
                        tta: str | None = None) -> Tensor:
    """Logits of the probability average over ``predictors`` (an ensemble; one model: itself) and, with
    ``tta="flip"``, over the mirrored passes of each.

    Args:
        predictors: callables ``image [B, C, *spatial] -> logits [B, K, *spatial]`` (whole-image
            inference: segtrain.sliding.whole_image_logits with the model's window options).
        image: the batch, or one batch per predictor (ensemble members that normalise differently,
            e.g. the folds of a cross-validation, each with its own dataset statistics).
        task: ``binary`` | ``multiclass`` | ``multilabel`` (decides sigmoid or softmax).
        tta: ``None`` or ``"flip"``.

    A single predictor without TTA returns its logits unchanged (bit for bit).
    """
    tta = check_tta(tta)
    images = list(image) if isinstance(image, (list, tuple)) else [image] * len(predictors)
    if len(images) != len(predictors):
        raise ValueError(f"{len(images)} input batches for {len(predictors)} predictors: give one each, or one for all")
    mirrors = flips(images[0].ndim - 2) if tta == "flip" else [()]
    if len(predictors) == 1 and mirrors == [()]:
        return predictors[0](images[0])
    total = None
    for predict, image in zip(predictors, images):
        for axes in mirrors:
            out = predict(image.flip(axes) if axes else image)
            p = to_probabilities(out.flip(axes) if axes else out, task)
            total = p if total is None else total.add_(p)
    return to_logits(total / (len(predictors) * len(mirrors)), task)
