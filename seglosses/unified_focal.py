"""Asymmetric Unified Focal loss (Yeung et al., CMIG 2022): an asymmetric focal loss plus an
asymmetric focal Tversky loss, both suppressing the background and enhancing the foreground.

With ``p`` the predicted probabilities, ``y`` the one-hot target, ``delta`` the weight of the
foreground (and of false negatives), ``gamma`` the focal parameter and ``lambda = focal_weight``
(MONAI's ``weight``; renamed because a loss config's ``weight`` key is the term's weight in the
combined loss)::

    L = lambda L_aF + (1 - lambda) L_aFT

    L_aF  = mean over (image, class, pixel) of
              (1 - delta) (1 - p_0)^gamma (-y_0 log p_0)     background (class 0): suppressed
              delta (-y_c log p_c)                           foreground c >= 1: plain CE
    L_aFT = mean over (image, class) of
              1 - TI_0                                       background
              (1 - TI_c)^(1 - gamma)                         foreground c >= 1: enhanced
    TI_c = (TP_c + eps) / (TP_c + delta FN_c + (1 - delta) FP_c + eps)     (per image)

``TP, FN, FP`` are soft counts over each image's pixels, from ``p`` clamped to
``[eps, 1 - eps]``. ``delta > 0.5`` weighs the foreground and false negatives more; ``gamma`` in
[0, 1]: 0 turns both focal modulations off.

Modes:

- ``binary``: the two classes are the background ``1 - sigmoid(x)`` and the foreground
  ``sigmoid(x)`` (target ``[B, 1, *]`` or ``[B, *]``, soft labels allowed). This is MONAI's
  ``AsymmetricUnifiedFocalLoss(weight=focal_weight, gamma, delta)`` applied to ``sigmoid(logits)``: despite its
  docstring, MONAI's forward applies no sigmoid and takes *probabilities* (a one-channel input
  ``p`` becomes ``[1 - p, p]``), with a one-hot (or 0/1 single-channel) target. Here the input is
  logits, like every seglosses loss.
- ``multiclass``: softmax over the classes, class 0 is the background and every other class is
  foreground -- the paper's multiclass formula (the authors' answer to their issue 8 for KiTS19;
  MONAI's gap, Project-MONAI/MONAI#8603: its forward reads channels 0 and 1 only). Two classes
  give the binary loss (softmax of two logits).
- ``multilabel``: each channel is a binary problem as above (its own background ``1 - p_c``);
  the loss is the mean over the channels.

Averaging. Both terms are means over the classes (two per channel in binary / multilabel), as
MONAI computes them; the paper writes both as sums over the classes, and the authors' Keras code
sums the focal term over the classes but averages the Tversky term. So ``L_aF`` here (and in
MONAI) is the authors' focal term divided by the number of classes.

Deviations from MONAI, and why:

- the focal term's ``log p`` and ``(1 - p_0)^gamma`` come from the logits in log space
  (log-sigmoid / log-softmax), not from ``log(clamp(p, eps, 1 - eps))``: the same values while
  ``p`` is in ``[eps, 1 - eps]``, and beyond it the loss keeps growing and keeps a gradient (the
  clamp gives a confidently wrong pixel none) and is finite at any logit;
- ``(1 - TI)^(1 - gamma)`` has a finite gradient (0) where ``TI = 1`` (autograd's is ``inf * 0``);
- ``ignore_index``: ignored pixels are removed from every sum *and* from the focal mean's
  count (MONAI masks the inputs but still divides by every pixel); an image with no valid pixel
  is left out of the Tversky mean;
- the defaults are the paper's and the authors' code's (``focal_weight=0.5, delta=0.6, gamma=0.5``);
  MONAI's ``delta`` default is 0.7.

Empty classes: a class absent from an image has ``TP = FN = 0`` and ``TI = eps / (eps + (1 - delta)
FP)``, close to 0 (so ``L_aFT`` near 1 for it) even for a near-perfect prediction, since the clamp
leaves ``FP >= eps`` per pixel: MONAI's and the authors' behaviour, kept for equality. Never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from ._region import check_input
from ._targets import dense_target, index_target, upcast

NAME = "AsymmetricUnifiedFocalLoss"


def _enhance(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` with a finite gradient at 0 (0 instead of ``inf * 0``)."""
    if exponent == 0:
        return torch.ones_like(base)
    pos = base > 0
    return torch.where(pos, base.clamp_min(torch.finfo(base.dtype).tiny) ** exponent, base * 0.0)


def _tversky_terms(tp: Tensor, fn: Tensor, fp: Tensor, delta: float, gamma: float, eps: float) -> tuple[Tensor, Tensor]:
    """(background, foreground) Tversky losses from soft counts of the two kinds of class."""
    ti = (tp + eps) / (tp + delta * fn + (1.0 - delta) * fp + eps)
    return ti, _enhance(1.0 - ti, 1.0 - gamma)


def asymmetric_unified_focal_loss(
    logits: Tensor,
    target: Tensor,
    mode: str,
    *,
    focal_weight: float = 0.5,
    delta: float = 0.6,
    gamma: float = 0.5,
    eps: float = 1e-7,
    ignore_index: int | float | None = None,
) -> Tensor:
    """Asymmetric Unified Focal loss; see the module docstring for the formula and conventions.

    Args:
        logits: ``[B, C, *spatial]`` (binary ``C = 1``; multiclass ``C >= 2``, class 0 the
            background).
        target: binary ``[B, 1, *]`` / ``[B, *]`` in [0, 1]; multiclass ``[B, *]`` indices;
            multilabel ``[B, C, *]`` in [0, 1].
        mode: ``"binary" | "multiclass" | "multilabel"``.
        focal_weight: ``lambda`` in [0, 1], the focal term's share (the Tversky term gets ``1 - lambda``).
        delta: in [0, 1], the weight of the foreground in the focal term and of false negatives in
            the Tversky index.
        gamma: in [0, 1], background suppression ``(1 - p_0)^gamma`` and foreground enhancement
            ``(1 - TI)^(1 - gamma)``.
        eps: clamp of the probabilities in the Tversky counts and smoothing of the index, in
            (0, 0.5) (MONAI's and Keras' 1e-7).
        ignore_index: target value whose pixels are removed from every sum and count.
    """
    _checks.check_mode(mode, NAME)
    target = check_input(logits, target, mode, ignore_index, NAME)
    x = upcast(logits)
    B, C = x.shape[:2]
    if mode == "multiclass":
        focal_sum, focal_count, bg, fg, units = _softmax_parts(x.reshape(B, C, -1), target.reshape(B, -1),
                                                             delta, gamma, eps, ignore_index)
        tversky = torch.cat([bg.unsqueeze(-1), fg], dim=-1)  # [B, C]: class 0, then classes 1..C-1
    else:
        focal_sum, focal_count, bg, fg, units = _sigmoid_parts(x.reshape(B, C, -1), target.reshape(B, C, -1),
                                                             delta, gamma, eps, ignore_index)
        tversky = torch.stack([bg, fg], dim=-1)  # [B, C, 2]
    focal = focal_sum / focal_count.clamp_min(1.0)
    if units is None:
        tversky = tversky.mean()
    else:  # images (and channels) without a valid pixel carry no weight
        w = units.reshape(*units.shape, *([1] * (tversky.ndim - units.ndim))).expand_as(tversky)
        tversky = (tversky * w).sum() / w.sum().clamp_min(1.0)
    return focal_weight * focal + (1.0 - focal_weight) * tversky


def _sigmoid_parts(x: Tensor, target: Tensor, delta: float, gamma: float, eps: float, ignore_index):
    """Binary / multilabel: per channel, background ``1 - sigmoid`` and foreground ``sigmoid``.

    Returns (focal sum, focal count, background Tversky loss [B, C], foreground [B, C], weights of
    the Tversky units or None).
    """
    t, mask = dense_target(target, ignore_index, x.dtype)
    log_p = F.logsigmoid(x)
    # -log(1 - p) = x - log p, and the background's modulation (1 - p_0)^gamma = p^gamma = exp(gamma
    # log p): one log-sigmoid for both classes, finite values and gradients at any logit
    focal = ((1.0 - delta) * torch.exp(gamma * log_p) * (x - log_p)) * (1.0 - t) - (delta * t) * log_p
    p = torch.sigmoid(x).clamp(eps, 1.0 - eps)  # the background's is 1 - p, clamped alike (MONAI)
    if mask is not None:  # t is already 0 at ignored pixels
        focal, p = focal * mask, p * mask
    n = x.shape[-1] if mask is None else mask.sum(-1)  # valid pixels per image and channel
    tp, t_sum, p_sum = (t * p).sum(-1), t.sum(-1), p.sum(-1)
    fn, fp = t_sum - tp, p_sum - tp
    # the background (1 - t, 1 - p): TP_0 = sum (1 - t)(1 - p), FN_0 = FP, FP_0 = FN; three sums in all
    tp0 = n - t_sum - p_sum + tp
    ti0, _ = _tversky_terms(tp0, fp, fn, delta, gamma, eps)
    _, fg = _tversky_terms(tp, fn, fp, delta, gamma, eps)
    count = 2.0 * (focal.numel() if mask is None else mask.sum())  # two classes per element
    count = torch.as_tensor(count, dtype=x.dtype, device=x.device)
    units = None if mask is None else (mask.sum(-1) > 0).to(x.dtype)  # [B, C]
    return focal.sum(), count, 1.0 - ti0, fg, units


def _softmax_parts(x: Tensor, target: Tensor, delta: float, gamma: float, eps: float, ignore_index):
    """Multiclass: softmax, class 0 the background. Same returns as :func:`_sigmoid_parts`
    (Tversky losses: background [B], foreground [B, C - 1])."""
    B, C, _ = x.shape
    t, valid = index_target(target, ignore_index)
    lse = torch.logsumexp(x, dim=1)  # [B, N]
    logp_t = x.gather(1, t.unsqueeze(1)).squeeze(1) - lse
    log_not_bg = torch.logsumexp(x[:, 1:], dim=1) - lse  # log(1 - p_0), no cancellation at p_0 -> 1
    is_bg = (t == 0).to(x.dtype)
    scale = is_bg * ((1.0 - delta) * torch.exp(gamma * log_not_bg)) + (1.0 - is_bg) * delta
    focal = scale * (-logp_t)
    v = None if valid is None else valid.to(x.dtype)
    p = torch.softmax(x, dim=1).clamp(eps, 1.0 - eps)
    if v is not None:
        focal = focal * v
        p = p * v.unsqueeze(1)
    # Soft counts per image and class without a one-hot: TP by scatter of p_t, FN = n - TP, FP = P - TP.
    p_t = p.gather(1, t.unsqueeze(1)).squeeze(1)
    ones = torch.ones_like(p_t) if v is None else v
    tp = x.new_zeros(B, C).scatter_add(1, t, p_t)
    n = x.new_zeros(B, C).scatter_add(1, t, ones)
    psum = p.sum(-1)
    fn, fp = n - tp, psum - tp
    ti, fg = _tversky_terms(tp, fn, fp, delta, gamma, eps)
    count = C * (focal.numel() if v is None else v.sum())  # the mean over (image, class, pixel)
    count = torch.as_tensor(count, dtype=x.dtype, device=x.device)
    units = None if v is None else (v.sum(-1) > 0).to(x.dtype)  # [B]
    return focal.sum(), count, 1.0 - ti[:, 0], fg[:, 1:], units


def _check_unit(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise ValueError(f"{NAME}: {name} must be a float in [0, 1], got {value!r}")
    return float(value)


class AsymmetricUnifiedFocalLoss(nn.Module):
    """Asymmetric Unified Focal loss as a module; see :func:`asymmetric_unified_focal_loss`.

    Args:
        mode: ``"binary" | "multiclass" | "multilabel"``.
        focal_weight: ``lambda`` in [0, 1], the share of the asymmetric focal loss (0.5; MONAI's
            ``weight``, renamed: in a loss config ``weight`` is the term's weight in the sum).
        delta: in [0, 1], weight of the foreground / of false negatives (the paper's 0.6; MONAI 0.7).
        gamma: in [0, 1], background suppression and foreground enhancement (0.5).
        eps: probability clamp and Tversky smoothing, in (0, 0.5) (1e-7).
        ignore_index: target value whose pixels are removed from every sum and count.
    """

    def __init__(
        self,
        mode: str,
        *,
        focal_weight: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        eps: float = 1e-7,
        ignore_index: int | float | None = None,
    ):
        super().__init__()
        self.mode = _checks.check_mode(mode, NAME)
        self.focal_weight = _check_unit(focal_weight, "focal_weight")
        self.delta = _check_unit(delta, "delta")
        self.gamma = _check_unit(gamma, "gamma")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 < eps < 0.5):
            raise ValueError(
                f"{NAME}: eps must be a float in (0, 0.5) (it clamps probabilities to [eps, 1 - eps]), got {eps!r}"
            )
        self.eps = float(eps)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return asymmetric_unified_focal_loss(
            logits, target, self.mode, focal_weight=self.focal_weight, delta=self.delta, gamma=self.gamma, eps=self.eps,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, focal_weight={self.focal_weight}, delta={self.delta}, gamma={self.gamma}, "
            f"eps={self.eps}, ignore_index={self.ignore_index}"
        )

