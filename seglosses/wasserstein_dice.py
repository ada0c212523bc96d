"""Generalized Wasserstein Dice loss (Fidon et al., BrainLes 2017): a Dice in which a mistake costs
the distance between the predicted and the true class (multiclass only).

With ``M`` a ``C x C`` matrix of distances between classes (``M[l, c]``: how wrong it is to predict
``c`` where the truth is ``l``; zero diagonal) and ``p`` the softmax of the logits, each pixel's
error is the Wasserstein distance between ``p`` and the one-hot target, which for a one-hot
target is the expected distance::

    W_i = sum_c M[t_i, c] p_ic

and per image (sums over its valid pixels)::

    "default":  TP = sum_i a_{t_i} (1 - W_i),  a_l = 0 for the background (class 0), 1 otherwise
                L = 1 - (2 TP + smooth_nr) / (2 TP + sum_i W_i + smooth_dr)
    "GDL":      a_{b,l} = 1 / (number of pixels of class l in image b + 1)   (Tilborghs et al. 2020)
                L = 1 - (2 TP + smooth_nr) / (sum_i a_{t_i} (2 - W_i) + smooth_dr)

averaged over the images (``reduction="mean"``). ``M`` is scaled so that its largest entry is 1
(``1 - W`` is then a similarity in [0, 1]), as MONAI does. This equals MONAI's
``GeneralizedWassersteinDiceLoss(dist_matrix, weighting_mode, smooth_nr, smooth_dr)`` (which has
no ``ignore_index``); ``dist_matrix=None`` is ``1 - I`` (every class equally far from every
other), with which ``W_i = 1 - p_{t_i}`` and the "default" loss is a Dice of the foreground
classes pooled together.

Empty classes: there are no per-class terms, so an absent class needs no rule. An image with only
background has ``TP = 0`` under "default" (the background earns no true positives): its loss is
0 for a perfect prediction and close to 1 as soon as foreground is predicted (MONAI's
behaviour). Never NaN: the denominator is at least ``smooth_dr`` (floored at the smallest normal
float when ``smooth_dr = 0``).

``ignore_index``: ignored pixels are removed from every sum (and from the class volumes of "GDL");
an image with no valid pixel is left out of the mean (0 with ``reduction="none"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _checks
from ._targets import index_target, upcast

NAME = "GeneralizedWassersteinDiceLoss"
WEIGHTING_MODES = ("default", "GDL")


def check_dist_matrix(dist_matrix, loss: str = NAME) -> Tensor | None:
    """A class-distance matrix (list of lists, array or tensor) as a float64 ``[C, C]`` tensor,
    scaled to a largest entry of 1; None stays None (``1 - I``, built for the logits' classes).

    Raises ``ValueError`` unless it is square, finite, non-negative, with a zero diagonal and
    at least one positive entry.
    """
    if dist_matrix is None:
        return None
    if isinstance(dist_matrix, Tensor):
        m = dist_matrix.detach().to("cpu", torch.float64)
    else:
        try:
            import numpy as np

            if isinstance(dist_matrix, np.ndarray):
                dist_matrix = dist_matrix.tolist()
        except ImportError:  # a torch-only install has no numpy: then it is no ndarray either
            pass
        rows = list(dist_matrix) if isinstance(dist_matrix, Sequence) and not isinstance(dist_matrix, str) else None
        if rows is None or not all(isinstance(r, Sequence) and not isinstance(r, str) for r in rows):
            raise ValueError(
                f"{loss}: dist_matrix must be a square list of lists (one row of class distances per class, "
                f"e.g. [[0, 1, 1], [1, 0, 0.5], [1, 0.5, 0]]), got {dist_matrix!r}"
            )
        if any(len(r) != len(rows) for r in rows):
            raise ValueError(
                f"{loss}: dist_matrix must be square C x C (C rows of C class distances), got rows of "
                f"lengths {[len(r) for r in rows]}"
            )
        try:
            m = torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{loss}: dist_matrix must hold numbers, got {dist_matrix!r}") from None
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(
            f"{loss}: dist_matrix must be square C x C with C >= 2 (one row and column per class), "
            f"got shape {list(m.shape)}"
        )
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
        raise ValueError(f"{loss}: dist_matrix must be finite and >= 0, got {m.tolist()}")
    if bool((m.diagonal() != 0).any()):
        raise ValueError(
            f"{loss}: dist_matrix must have a zero diagonal (a class is at distance 0 from itself), "
            f"got diagonal {m.diagonal().tolist()}"
        )
    top = float(m.max())
    if top == 0:
        raise ValueError(
            f"{loss}: dist_matrix is all zeros: every mistake would cost nothing; give the distances "
            f"between classes (e.g. 1 off the diagonal)"
        )
    # MONAI divides by the largest entry: the loss reads 1 - W as a similarity, so W must be <= 1.
    return m / top if top != 1 else m


def generalized_wasserstein_dice_loss(
    logits: Tensor,
    target: Tensor,
    mode: str = "multiclass",
    *,
    dist_matrix=None,
    weighting_mode: str = "default",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Generalized Wasserstein Dice loss; see the module docstring.

    Args:
        logits: ``[B, C, *spatial]`` (softmax over dim 1).
        target: ``[B, *spatial]`` class indices in ``[0, C)`` or ``ignore_index``.
        mode: must be ``"multiclass"`` (the distance is between one true class and a distribution).
        dist_matrix: ``C x C`` class distances (zero diagonal, finite, >= 0), or None for ``1 - I``.
        weighting_mode: ``"default"`` (Fidon et al.: background 0, other classes 1) or ``"GDL"``
            (inverse class volume + 1 per image, Tilborghs et al.).
        smooth_nr, smooth_dr: added to the numerator and the denominator (MONAI's 1e-5).
        ignore_index: class index whose pixels are removed from every sum.
        reduction: ``"mean"`` over images | ``"sum"`` | ``"none"`` (``[B]``, one loss per image).
    """
    _checks.check_mode(mode, NAME)
    if mode != "multiclass":
        raise ValueError(
            f"{NAME} is multiclass only (mode={mode!r}): its cost is the distance between the true class "
            f"and the predicted distribution over classes; use mode='multiclass' with class-index targets "
            f"(and a softmax network), or a Dice loss for binary/multilabel masks"
        )
    _checks.check_reduction(reduction, NAME)
    if weighting_mode not in WEIGHTING_MODES:
        raise ValueError(f"{NAME}: weighting_mode must be one of {WEIGHTING_MODES}, got {weighting_mode!r}")
    return _gwdl(logits, target, check_dist_matrix(dist_matrix), weighting_mode, smooth_nr, smooth_dr,
                 ignore_index, reduction)


def _gwdl(logits: Tensor, target: Tensor, dist_matrix: Tensor | None, weighting_mode: str, smooth_nr: float,
          smooth_dr: float, ignore_index, reduction: str) -> Tensor:
    """The loss for validated options (``dist_matrix`` from :func:`check_dist_matrix`, or None)."""
    _checks.check_logits(logits, NAME)
    _checks.check_multiclass_target(logits, target, ignore_index, NAME)
    x = upcast(logits)
    B, C = x.shape[:2]
    if dist_matrix is None:
        m = 1.0 - torch.eye(C, dtype=x.dtype, device=x.device)
    else:
        if dist_matrix.shape[0] != C:
            raise ValueError(
                f"{NAME}: dist_matrix is {dist_matrix.shape[0]} x {dist_matrix.shape[0]} but the logits have "
                f"{C} classes (channel dim 1); give one row and column per class"
            )
        m = dist_matrix.to(device=x.device, dtype=x.dtype)
    t, valid = index_target(target.reshape(B, -1), ignore_index)
    p = torch.softmax(x.reshape(B, C, -1), dim=1)
    # W_i = sum_c M[t_i, c] p_ic: row t_i of M p (a C x C matmul, no [B, C, C, N] expansion).
    wass = torch.matmul(m, p).gather(1, t.unsqueeze(1)).squeeze(1)  # [B, N]
    v = None if valid is None else valid.to(x.dtype)
    if weighting_mode == "GDL":
        ones = torch.ones_like(wass) if v is None else v
        volumes = x.new_zeros(B, C).scatter_add(1, t, ones)  # valid pixels of each class, per image
        alpha = (volumes + 1.0).reciprocal().gather(1, t)  # [B, N]
    else:
        alpha = (t != 0).to(x.dtype)
    if v is not None:
        alpha, wass = alpha * v, wass * v
    true_pos = (alpha * (1.0 - wass)).sum(1)
    if weighting_mode == "GDL":
        denom = (alpha * (2.0 - wass)).sum(1)
    else:
        denom = 2.0 * true_pos + wass.sum(1)
    floor = torch.finfo(x.dtype).tiny  # smooth_dr = 0 and nothing to count: 0/0 otherwise
    loss = 1.0 - (2.0 * true_pos + smooth_nr) / (denom + smooth_dr).clamp_min(floor)
    if v is not None:
        counted = (v.sum(1) > 0).to(x.dtype)  # an image with every pixel ignored has no loss
        loss = loss * counted
        if reduction == "mean":
            return loss.sum() / counted.sum().clamp_min(1.0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


class GeneralizedWassersteinDiceLoss(nn.Module):
    """Generalized Wasserstein Dice loss as a module; see :func:`generalized_wasserstein_dice_loss`.

    Args:
        mode: must be ``"multiclass"`` (taken so that every seglosses loss is built alike; a
            clear error otherwise).
        dist_matrix: ``C x C`` distances between classes, a list of lists (as a config gives it),
            array or tensor: zero diagonal, finite, >= 0; scaled so that its largest entry is 1.
            ``None`` (default): ``1 - I``, every class equally far from every other -- no default
            can know which of your classes are close.
        weighting_mode: ``"default"`` | ``"GDL"``.
        smooth_nr, smooth_dr: numerator and denominator smoothing (MONAI's 1e-5).
        ignore_index: class index whose pixels are removed from every sum.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (one value per image).

    The matrix is stored as a non-persistent buffer ``dist_matrix`` (float64, scaled), so
    ``.to(device)`` moves it and checkpoints do not hold it.
    """

    def __init__(
        self,
        mode: str,
        *,
        dist_matrix=None,
        weighting_mode: str = "default",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        name = type(self).__name__
        _checks.check_mode(mode, name)
        if mode != "multiclass":
            raise ValueError(
                f"{name} is multiclass only (mode={mode!r}): use task=multiclass (class-index masks), "
                f"or a Dice loss for binary/multilabel masks"
            )
        self.mode = mode
        if weighting_mode not in WEIGHTING_MODES:
            raise ValueError(f"{name}: weighting_mode must be one of {WEIGHTING_MODES}, got {weighting_mode!r}")
        for key, value in (("smooth_nr", smooth_nr), ("smooth_dr", smooth_dr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
                raise ValueError(f"{name}: {key} must be a finite float >= 0, got {value!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"{name}: ignore_index must be an int class index, got {ignore_index!r}")
        self.weighting_mode = weighting_mode
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)
        self.ignore_index = ignore_index
        self.reduction = _checks.check_reduction(reduction, name)
        self.register_buffer("dist_matrix", check_dist_matrix(dist_matrix, name), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        # the matrix was validated once, here; the functional form validates it every call
        return _gwdl(logits, target, self.dist_matrix, self.weighting_mode, self.smooth_nr, self.smooth_dr,
                     self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        c = None if self.dist_matrix is None else self.dist_matrix.shape[0]
        return (
            f"classes={c if c else 'any (1 - I)'}, weighting_mode={self.weighting_mode!r}, "
            f"smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}, ignore_index={self.ignore_index}"
        )
