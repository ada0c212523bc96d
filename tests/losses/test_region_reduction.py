"""reduction="none" / "sum" for Dice, Jaccard and Tversky (issue 14): users weight terms themselves."""

import pytest
import torch
import torch.nn.functional as F

from seglosses import CombinedLoss, CrossEntropyLoss, DiceLoss, JaccardLoss, TverskyLoss

from _loss_cases import make_case

monai_losses = pytest.importorskip("monai.losses")


def _every_class_in_every_image(batch=3):
    x, t = make_case("multiclass", (6, 7), batch=batch)
    t[:, 0, :3] = torch.arange(3)
    return x, t


def test_per_image_none_equals_monai_per_image_and_class():
    x, t = _every_class_in_every_image()
    ours = DiceLoss("multiclass", smooth=1e-5, per_image=True, reduction="none")(x, t)
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, reduction="none")(x, t.unsqueeze(1))
    assert ours.shape == (3, 3)
    torch.testing.assert_close(ours, ref.reshape(3, 3).to(ours.dtype))
    # MONAI smooths its Jaccard as (2 I + s) / (2 (P + T - I) + s): compare unsmoothed
    jac = JaccardLoss("multiclass", per_image=True, reduction="none")(x, t)
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, jaccard=True, reduction="none",
                                smooth_nr=0.0, smooth_dr=0.0)(x, t.unsqueeze(1))
    torch.testing.assert_close(jac, ref.reshape(3, 3).to(jac.dtype))


@pytest.mark.parametrize("cls", [DiceLoss, JaccardLoss, TverskyLoss])
@pytest.mark.parametrize("per_image", [False, True])
def test_none_and_sum_are_consistent_with_the_mean(cls, per_image):
    x, t = make_case("multiclass", (6, 7), batch=3)
    t[t == 2] = 1  # an absent class (empty_class="exclude" gives it no weight)
    kw = {"per_image": per_image, "empty_class": "exclude", "class_weights": [1.0, 2.0, 0.5]}
    none = cls("multiclass", reduction="none", **kw)(x, t)
    assert none.shape == ((3, 3) if per_image else (3,))
    assert torch.all(none[..., 2] == 0)
    w = torch.tensor([1.0, 2.0, 0.0], dtype=x.dtype)  # class 2 excluded
    weighted = (none * w).sum()
    torch.testing.assert_close(cls("multiclass", reduction="sum", **kw)(x, t), weighted)
    denom = w.sum() * (3 if per_image else 1)
    torch.testing.assert_close(cls("multiclass", **kw)(x, t), weighted / denom)


def test_reduction_is_validated_and_disables_fusion():
    with pytest.raises(ValueError, match="reduction"):
        DiceLoss("binary", reduction="max")
    with pytest.raises(ValueError, match="sync_dist"):
        DiceLoss("binary", per_image=True, sync_dist=True, reduction="sum")
    x, t = make_case("multiclass", (5, 6))
    dice = DiceLoss("multiclass", reduction="sum")
    combo = CombinedLoss({"ce": CrossEntropyLoss(), "dice": dice})
    torch.testing.assert_close(combo(x, t), F.cross_entropy(x, t) + dice(x, t))
