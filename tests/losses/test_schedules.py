"""Loss weights over training (seglosses/schedules.py) and how CombinedLoss applies them."""

import math

import pytest
import torch
from torch import nn

from seglosses import CombinedLoss, DiceLoss
from seglosses.schedules import Constant, Cosine, Linear, Rebalance, Step, parse_weight


@pytest.mark.parametrize("epoch", [0, 1, 3, 7, 12, 30])
def test_weights_at_given_epochs_equal_the_formulas(epoch):
    lin = Linear(start=0.2, end=1.0, start_epoch=3, end_epoch=13)
    s = min(1.0, max(0.0, (epoch - 3) / 10))
    assert lin(epoch) == pytest.approx(0.2 + 0.8 * s, abs=1e-15)
    cos = Cosine(start=1.0, end=0.0, start_epoch=3, end_epoch=13)
    assert cos(epoch) == pytest.approx(0.5 * (1 + math.cos(math.pi * s)), abs=1e-15)
    step = Step(values=[0.0, 0.5, 2.0], epochs=[3, 12])
    assert step(epoch) == (0.0 if epoch < 3 else 0.5 if epoch < 12 else 2.0)
    region, boundary = Rebalance("region"), Rebalance("boundary")
    alpha = max(0.01, 1 - 0.01 * epoch)  # Kervadec et al.: -0.01 per epoch down to 0.01
    assert region(epoch) == pytest.approx(alpha, abs=1e-15)
    assert boundary(epoch) == pytest.approx(1 - alpha, abs=1e-15)
    assert Constant(0.3)(epoch) == 0.3


def test_rebalance_reaches_its_floor_and_stays():
    region = Rebalance("region", rate=0.1, floor=0.2, start_epoch=2)
    assert [round(region(e), 12) for e in range(0, 14, 2)] == [1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.2]


def test_epochwise_schedules_ignore_the_fraction_and_per_step_ones_use_it():
    assert Linear(0.0, 1.0, 0, 10)(2.9) == Linear(0.0, 1.0, 0, 10)(2) == 0.2
    assert Linear(0.0, 1.0, 0, 10, per_step=True)(2.5) == pytest.approx(0.25)


@pytest.mark.parametrize("spec, fragment", [
    ({"schedule": "linaer"}, "not one of"),
    ({"schedule": "linear", "stop": 1}, "no option(s) ['stop']"),
    ({"schedule": "linear", "start_epoch": 5, "end_epoch": 5}, "end_epoch"),
    ({"schedule": "step", "values": [0, 1], "epochs": [3, 4]}, "one more entry"),
    ({"schedule": "step", "values": [0, 1, 2], "epochs": [4, 3]}, "must increase"),
    ({"schedule": "rebalance", "role": "dice"}, "role must be one of"),
    ({"schedule": "constant", "value": -1}, ">= 0"),
    ({"schedule": "cosine", "end": float("nan")}, "finite"),
    (-0.5, ">= 0"),
    ("1.0", "finite number"),
])
def test_bad_schedules_name_the_term_and_the_fix(spec, fragment):
    with pytest.raises(ValueError, match="'boundary'") as err:
        parse_weight(spec, "boundary")
    assert fragment in str(err.value)


def test_time_must_be_a_non_negative_number():
    with pytest.raises(ValueError, match="epochs >= 0"):
        Linear()(-1)


class _Counting(nn.Module):
    """A term that counts its calls and returns the mean logit (derived targets recorded)."""

    def __init__(self, derived=()):
        super().__init__()
        self.derived_targets = tuple(derived)
        self.calls, self.kwargs = 0, []

    def forward(self, logits, target, **kwargs):
        self.calls += 1
        self.kwargs.append(sorted(kwargs))
        return logits.mean()


def test_weight_zero_calls_no_term_and_is_absent_from_last_values():
    a, b = _Counting(), _Counting(["distance"])
    loss = CombinedLoss({"a": a, "b": b}, {"b": Step([0.0, 2.0], [2])})
    x = torch.ones(1, 1, 4, 4, requires_grad=True)
    for epoch in range(4):
        loss.set_epoch(epoch)
        total = loss(x, torch.zeros(1, 1, 4, 4), distance=torch.zeros(1, 1, 4, 4))
        assert total.item() == pytest.approx(1.0 + (2.0 if epoch >= 2 else 0.0))
        assert set(loss.last_values) == ({"a", "b"} if epoch >= 2 else {"a"})
    assert (a.calls, b.calls) == (4, 2)
    assert a.kwargs == [[]] * 4 and b.kwargs == [["distance"]] * 2  # a derived target only to the term naming it


def test_all_weights_zero_gives_a_zero_with_a_graph():
    loss = CombinedLoss({"a": _Counting()}, {"a": Step([0.0, 1.0], [1])})
    x = torch.ones(1, 1, 2, 2, requires_grad=True)
    total = loss(x, torch.zeros(1, 1, 2, 2))
    total.backward()
    assert total.item() == 0.0 and x.grad is not None and (x.grad == 0).all()


def test_derived_targets_follow_the_weights_of_the_epoch():
    loss = CombinedLoss({"dice": _Counting(), "boundary": _Counting(["distance"]), "skel": _Counting(["skeleton"])},
                        {"boundary": Rebalance("boundary"), "skel": 0.0})
    assert loss.derived_targets() == ("distance", "skeleton")  # what the pipeline may ever need
    assert loss.derived_targets(0) == ()  # rebalance: the boundary weight is 0 in epoch 0
    assert loss.derived_targets(1) == ("distance",)
    ramp = CombinedLoss({"b": _Counting(["distance"])}, {"b": Linear(0.0, 1.0, 3, 5, per_step=True)})
    assert ramp.derived_targets(2) == () and ramp.derived_targets(3) == ("distance",)


def test_fused_pair_with_a_scheduled_weight_equals_the_composed_sum():
    from seglosses import BCELoss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).double()
    weights = {"bce": Linear(0.0, 1.0, 0, 4), "dice": Cosine(1.0, 0.5, 0, 4)}
    fused = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}, weights)
    plain = CombinedLoss({"bce": BCELoss(), "dice": DiceLoss("binary")}, weights, fused=False)
    for epoch in range(5):
        fused.set_epoch(epoch)
        plain.set_epoch(epoch)
        torch.testing.assert_close(fused(x, t), plain(x, t), rtol=1e-12, atol=1e-12)
    fused.set_epoch(0)  # bce weight 0: Dice alone
    torch.testing.assert_close(fused(x, t), DiceLoss("binary")(x, t))


def test_config_mapping_is_parsed_by_combined_loss():
    loss = CombinedLoss({"a": _Counting()}, {"a": {"schedule": "linear", "start": 0.0, "end": 1.0,
                                                   "start_epoch": 0, "end_epoch": 2}})
    assert loss.schedules["a"] == Linear(0.0, 1.0, 0, 2)
    assert loss.set_epoch(1) == {"a": 0.5}
