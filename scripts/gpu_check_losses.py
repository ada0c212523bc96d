"""seglosses' fused paths on a device: forward+backward in float32 and under float16/bfloat16 autocast.

    python scripts/gpu_check_losses.py                    # CUDA, full benchmark shapes
    python scripts/gpu_check_losses.py --device cpu --quick --out result.json

For each fused pair -- binary BCE+Dice 8x1x512x512, multiclass CE+Dice 4x21x256x256, binary
Dice+Focal 8x1x512x512 (``--quick``: tiny shapes) -- it checks that ``CombinedLoss`` takes the
fused path, then runs it three ways and compares each with the composed terms (``fused=False``)
computed in float64 from the *same* logits (so only the loss's own rounding is measured):

- ``float32``: float32 logits, no autocast;
- ``float16``: float16 logits under ``torch.autocast(float16)``, the loss scaled by 2**16 before
  ``backward`` as a GradScaler does (unscaled, a mean over millions of pixels gives per-pixel
  gradients below float16's normal range, and any loss would lose them);
- ``bfloat16``: bfloat16 logits under ``torch.autocast(bfloat16)``, unscaled.

A run passes when every loss and gradient is finite and within the tolerances below (relative:
loss to |loss|, gradient to max |gradient|). Exit status 1 otherwise. ``--out`` writes the
numbers as JSON (scripts/gpu_check.sh reads it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seglosses import BCELoss, CombinedLoss, CrossEntropyLoss, DiceLoss, FocalLoss, _fused  # noqa: E402

# dtype -> (loss scale before backward, loss tolerance, gradient tolerance). The fused path
# computes in float32 whatever the logits' dtype, so the loss is float32-accurate throughout;
# the gradient is rounded once to the logits' dtype (float16: 11 bits, bfloat16: 8 bits).
PRECISIONS = {
    "float32": (1.0, 1e-4, 1e-4),
    "float16": (2.0**16, 1e-4, 2e-3),
    "bfloat16": (1.0, 1e-4, 1.5e-2),
}

CASES = {
    "binary BCE+Dice": ((8, 1, 512, 512), (2, 1, 64, 64), "binary",
                        lambda: {"bce": BCELoss(), "dice": DiceLoss("binary")}),
    "multiclass CE+Dice": ((4, 21, 256, 256), (2, 5, 32, 32), "multiclass",
                           lambda: {"ce": CrossEntropyLoss(), "dice": DiceLoss("multiclass")}),
    "binary Dice+Focal": ((8, 1, 512, 512), (2, 1, 64, 64), "binary",
                          lambda: {"dice": DiceLoss("binary"), "focal": FocalLoss("binary", alpha=0.25)}),
}


def make_inputs(shape: tuple[int, ...], mode: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits (3x the unit scale: some saturated pixels) and a matching target."""
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(shape, generator=g)
    if mode == "binary":
        t = (torch.rand(shape, generator=g) > 0.7).float()
    else:
        b, c, h, w = shape
        t = torch.randint(0, c, (b, h, w), generator=g)
    return x.to(device), t.to(device)


def loss_and_grad(loss_fn, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0, autocast: bool = False):
    """``loss_fn(x, t)`` and d loss / d x (unscaled back in float64 if ``scale`` != 1), both detached."""
    xx = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=x.dtype, enabled=autocast):
        loss = loss_fn(xx, t)
    (loss * scale).backward()
    return loss.detach(), xx.grad.detach().double() / scale


def check_case(name: str, shape, mode: str, make_terms, device: torch.device) -> list[dict]:
    """One row per precision: finite?, relative errors against the float64 composed reference."""
    x32, t = make_inputs(shape, mode, device)
    fused = CombinedLoss(make_terms())
    composed = CombinedLoss(make_terms(), fused=False)
    if _fused.plan(fused.terms, t) is None:
        raise ValueError(f"{name}: CombinedLoss does not take the fused path for these terms; "
                         "this check is about the fused path (see seglosses._fused.plan)")
    rows = []
    for dtype_name, (scale, loss_tol, grad_tol) in PRECISIONS.items():
        x = x32.to(getattr(torch, dtype_name))
        loss, grad = loss_and_grad(fused, x, t, scale, autocast=dtype_name != "float32")
        ref_loss, ref_grad = loss_and_grad(composed, x.double(), t)
        finite = bool(torch.isfinite(loss).all() and torch.isfinite(grad).all())
        loss_err = float((loss.double() - ref_loss).abs() / ref_loss.abs().clamp_min(1e-12))
        grad_err = float((grad - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-30))
        ok = finite and loss_err <= loss_tol and grad_err <= grad_tol
        rows.append({"case": name, "shape": list(shape), "precision": dtype_name, "finite": finite,
                     "loss": float(loss), "loss_rel_err": loss_err, "grad_rel_err": grad_err,
                     "loss_tol": loss_tol, "grad_tol": grad_tol, "ok": ok})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test on CPU)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu for a CPU run)")
    device = torch.device(args.device)
    rows = []
    for name, (full, quick, mode, make_terms) in CASES.items():
        rows += check_case(name, quick if args.quick else full, mode, make_terms, device)
    print(f"device={device} torch={torch.__version__}")
    print(f"  {'case':<20} {'precision':<9} {'finite':<6} {'loss':>9} {'loss err':>9} {'grad err':>9} {'tol':>8}  ok")
    for r in rows:
        print(f"  {r['case']:<20} {r['precision']:<9} {str(r['finite']):<6} {r['loss']:>9.5f} "
              f"{r['loss_rel_err']:>9.1e} {r['grad_rel_err']:>9.1e} {r['grad_tol']:>8.2g}  {'yes' if r['ok'] else 'NO'}")
    passed = all(r["ok"] for r in rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": str(device), "passed": passed, "rows": rows}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
