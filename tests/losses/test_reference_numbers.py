"""The worked numbers of docs/losses.md#reference-values (seed 000), reproduced exactly."""

import pytest
import torch

from seglosses import BCELoss, DiceLoss, FocalLoss
from seglosses import functional as F

X = torch.tensor(
    [[1.9072, 1.1079, 1.4906], [-0.6584, -0.0512, 0.7608], [-0.0614, 0.6583, 0.1095]],
    dtype=torch.float64,
).view(1, 1, 3, 3)
T = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.float64).view(1, 1, 3, 3)


def test_bce_worked_number():
    assert BCELoss()(X, T).item() == pytest.approx(0.800007, abs=5e-7)
    # also as [B, *spatial] target and through the functional API
    assert F.binary_cross_entropy(X, T[:, 0]).item() == pytest.approx(0.800007, abs=5e-7)


def test_dice_worked_number():
    loss = DiceLoss("binary", smooth=1e-5)(X, T)
    assert (1 - loss).item() == pytest.approx(0.5796486, abs=5e-8)
    assert loss.item() == pytest.approx(0.4203514, abs=5e-8)


def test_squared_denominator_worked_number():
    loss = DiceLoss("binary", squared_pred=True, smooth=0.0)(X, T)
    assert loss.item() == pytest.approx(0.2968927, abs=5e-8)


def test_binary_focal_worked_number():
    loss = FocalLoss("binary", alpha=0.25, gamma=2.0)(X, T)
    assert loss.item() == pytest.approx(0.2184734, abs=5e-8)


def test_worked_numbers_in_float32():
    x, t = X.float(), T.float()
    assert BCELoss()(x, t).item() == pytest.approx(0.800007, abs=2e-6)
    assert DiceLoss("binary", smooth=1e-5)(x, t).item() == pytest.approx(0.4203514, abs=2e-6)
