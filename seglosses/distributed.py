"""All-reduce with autograd, for Dice-type losses computed over the global batch (``sync_dist=True``).

Why and how the gradient scaling works. Each of the ``W`` processes holds local per-class sums
``s_r`` (intersection, prediction and target sums) and computes the same loss ``L(S)`` of the global
sums ``S = sum_r s_r``. The forward pass is an all-reduce (SUM). Its backward is again an
all-reduce (SUM) of the incoming gradients: every rank's ``dL/dS`` is the same ``G``, so rank
``r`` back-propagates ``W * G`` into its own sums, i.e. its logits receive
``W * dL/dS * ds_r/dx_r``. DistributedDataParallel then *averages* the parameter gradients over
the ``W`` ranks: ``(1/W) * sum_r W * G * ds_r/dtheta = G * dS/dtheta = dL/dtheta`` -- exactly the
gradient of the global-batch loss, as if one process had seen the whole batch. (Without the
all-reduce in backward, DDP's averaging would leave the gradient ``W`` times too small.)

This is ``torch.distributed.nn.functional.all_reduce`` (whose backward is that SUM all-reduce);
the wrapper only makes it a no-op when no process group is running (single process, or a world
of one), so ``sync_dist=True`` is safe to leave on in single-device runs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group with more than one rank is running."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Differentiable SUM all-reduce over the default process group (identity without one).

    Forward: ``sum_r tensor_r`` on every rank. Backward: ``sum_r grad_r`` (see the module
    docstring for why this gives the right gradient under DDP's averaging).
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
