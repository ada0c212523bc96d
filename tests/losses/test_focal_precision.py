"""Sigmoid focal loss at confident logits: float32 keeps its relative precision (issue 14).

The BCE part ``(1 - t) x - log p`` used to be formed as ``x - t x + ...``, which cancels two
rounded copies of ``x``: at logit 12 with target 1 it gave 5.7e-6 instead of 6.1e-6, and 0
from logit 16 on. The reference is float64 ``softplus`` (``softplus(-x)`` for target 1,
``softplus(x)`` for target 0), exact to float64 rounding at these logits.
"""

import pytest
import torch
import torch.nn.functional as F

from seglosses import CombinedLoss, DiceLoss, FocalLoss

LOGITS = [12.0, 16.0, 30.0, 50.0, 80.0]


def _reference(x: torch.Tensor, t: float, gamma: float) -> torch.Tensor:
    x = x.double()
    ce = F.softplus(-x) if t == 1.0 else F.softplus(x)
    q = torch.sigmoid(-x) if t == 1.0 else torch.sigmoid(x)  # 1 - p_t
    return ce * q**gamma


@pytest.mark.parametrize("t", [0.0, 1.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_unfused_focal_is_relatively_exact(t, sign):
    x = sign * torch.tensor(LOGITS).view(1, 1, -1)
    target = torch.full_like(x, t)
    got = FocalLoss("binary", gamma=0.0, reduction="none")(x, target).double()
    ref = _reference(x, t, 0.0)
    assert torch.all(got > 0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    # the issue's own number: torch's BCE, not 5.722e-06
    one = FocalLoss("binary", gamma=0.0, reduction="none")(torch.tensor([[12.0]]), torch.tensor([[1.0]]))
    torch.testing.assert_close(one, F.binary_cross_entropy_with_logits(torch.tensor([[12.0]]), torch.tensor([[1.0]]), reduction="none"), rtol=1e-5, atol=0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])  # 0.5 takes the fused log-space branch
@pytest.mark.parametrize("t", [0.0, 1.0])
@pytest.mark.parametrize("x0", [12.0, -12.0, 16.0, -16.0])
def test_fused_focal_is_relatively_exact(gamma, t, x0):
    x = torch.tensor([[x0]])
    target = torch.tensor([[t]])
    combo = CombinedLoss({"focal": FocalLoss("binary", gamma=gamma, alpha=None), "dice": DiceLoss("binary")})
    combo(x, target)
    ref = _reference(x, t, gamma)
    got = combo.last_values["focal"].double()
    alone = FocalLoss("binary", gamma=gamma)(x, target).double()
    torch.testing.assert_close(alone, ref.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(got, ref.mean(), rtol=1e-5, atol=0)
