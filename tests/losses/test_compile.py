"""Every loss traces under torch.compile(fullgraph=True): no .item(), no data-dependent branches.

The eager backend checks the full-graph trace without inductor's C++ compilation (minutes for
the whole list); aot_eager additionally traces the backward through AOTAutograd for a few losses.
"""

import pytest
import torch

from seglosses import BCELoss, CrossEntropyLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss

from _loss_cases import IGNORE, make_case

CASES = [
    ("binary", lambda: BCELoss(pos_weight=[2.0], label_smoothing=0.1)),
    ("multilabel", lambda: BCELoss(ignore_index=IGNORE)),
    ("multiclass", lambda: CrossEntropyLoss(weight=[1.0, 2.0, 0.5], ignore_index=IGNORE)),
    ("multiclass", lambda: CrossEntropyLoss(label_smoothing=0.1)),
    ("binary", lambda: FocalLoss("binary", alpha=0.25)),
    ("multilabel", lambda: FocalLoss("multilabel", gamma=0.5, ignore_index=IGNORE)),
    ("multiclass", lambda: FocalLoss("multiclass", alpha=[0.2, 0.3, 0.5], ignore_index=IGNORE)),
]
for _m in ("binary", "multiclass", "multilabel"):
    CASES += [
        (_m, lambda m=_m: DiceLoss(m, ignore_index=IGNORE, sync_dist=True)),
        (_m, lambda m=_m: DiceLoss(m, squared_pred=True, per_image=True, log_loss=True)),
        (_m, lambda m=_m: JaccardLoss(m, empty_class="exclude")),
        (_m, lambda m=_m: TverskyLoss(m, 0.3, 0.7, 1.5, ignore_index=IGNORE)),
    ]


@pytest.mark.parametrize("mode,factory", CASES)
def test_fullgraph_compile_eager_backend(mode, factory):
    torch._dynamo.reset()
    fn = factory()
    ignore = getattr(fn, "ignore_index", None) is not None
    x, t = make_case(mode, (5, 6), ignore=ignore, dtype=torch.float32)
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = fn(a, t), compiled(b, t)
    torch.testing.assert_close(out, ref)
    ref.backward()
    out.backward()
    torch.testing.assert_close(b.grad, a.grad)


@pytest.mark.parametrize(
    "mode,factory",
    [
        ("multiclass", lambda: DiceLoss("multiclass", ignore_index=IGNORE)),
        ("multiclass", lambda: FocalLoss("multiclass", gamma=0.5, ignore_index=IGNORE)),
        ("multilabel", lambda: TverskyLoss("multilabel", 0.3, 0.7, 1.5, ignore_index=IGNORE)),
    ],
)
def test_fullgraph_compile_aot_eager(mode, factory):
    # aot_eager also traces the backward graph through AOTAutograd (what inductor consumes),
    # at a fraction of inductor's C++ compile time.
    torch._dynamo.reset()
    fn = factory()
    x, t = make_case(mode, (8, 8), ignore=True, dtype=torch.float32)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = fn(a, t), compiled(b, t)
    torch.testing.assert_close(out, ref)
    ref.backward()
    out.backward()
    torch.testing.assert_close(b.grad, a.grad)


def test_functional_with_list_options_compiles():
    torch._dynamo.reset()
    from seglosses import functional as F

    x, t = make_case("multiclass", (5, 6), dtype=torch.float32)

    def fn(z):
        return F.dice_loss(z, t, "multiclass", class_weights=[1.0, 2.0, 3.0]) + F.focal_loss(
            z, t, "multiclass", alpha=[0.2, 0.3, 0.5]
        )

    torch.testing.assert_close(torch.compile(fn, fullgraph=True, backend="eager")(x), fn(x))
