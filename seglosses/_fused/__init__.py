"""Fused fast paths for the common combinations: BCE+region, CE+region and Focal+region.

Why. Composing independent modules makes each one redo the expensive part: sigmoid/softmax over
the whole logit tensor, a one-hot of the target, and autograd's saved intermediates for every
elementwise op (each is a full pass over memory in backward too). Here one
``torch.autograd.Function`` per pixel term computes the probabilities once and returns only

    pixel  = the mean pixel-wise term (BCE, cross-entropy or focal), a scalar
    I[b,c] = sum_n p t          (intersection, per image and class)
    P[b,c] = sum_n p  or p^2    (prediction sum; p^2 with ``squared_pred``)
    T[b,c] = sum_n t            (target sum; no gradient)

over the valid (not ignored) pixels. The region formula itself -- Dice, Jaccard or Tversky,
smoothing, log loss, per-image vs batch aggregation, class weights, background exclusion, the
empty-class policy, ``sync_dist`` -- only touches these ``[B, C]`` sums and is the very function
the modules use (``overlap_loss_from_sums`` with the region term's ``RegionOptions``), run by
ordinary autograd (a few hundred numbers). Its gradients ``dL/dI``, ``dL/dP`` arrive in the
Function's backward, which writes the logit gradient in closed form:

    sigmoid (binary / multilabel), per element:
        dL/dx = p (1 - p) (gI t + gP [2p if squared]) + g_pix dpixel/dx
    softmax (multiclass), with G_c = gP_c [2 p_c] + gI_c [t = c] and A_n the pixel term:
        dL/dx_c = p_c (G_c - sum_k p_k G_k) + A_n (p_c - [t = c])

Layout: :mod:`.bce` (``BCERegionFn``), :mod:`.ce` (``CERegionFn``), :mod:`.focal`
(``SigmoidFocalRegionFn``, ``SoftmaxFocalRegionFn``), the shared pieces in :mod:`.common`
(chunking, row sums, the sigmoid region gradient) and :mod:`.softmax` (the multiclass sums and
gradient), the dispatch in :mod:`.dispatch`.

Where the time goes on CPU, and what is done about it (scripts/bench_losses.py measures it):

- transcendental functions: one ``sigmoid`` per element for BCE, nothing else per element (the
  BCE value's log factor is summed as the log of products of 64 elements). Multiclass takes
  ``log_softmax`` and then ``exp_`` in place, which on CPU beats ``softmax`` over dim 1 and
  gives ``log p_t`` exactly.
- memory passes: the binary path runs chunk by chunk along the pixels on CPU (cache blocking)
  with in-place kernels, so each chunk is read from main memory about once per direction.
  Backward writes the logit gradient into the probabilities saved by forward: no new
  logit-sized buffer in backward (a fresh multi-MB allocation costs page faults on first touch).
- fixed costs (every tiny tensor op costs microseconds of dispatch, a node in backward more): a
  batch Dice of one channel treats all images as one row, so its sums are BLAS dots; per-chunk
  partial sums are stacked and added once; the target's range check runs inside the chunk
  loop; counts without ignore_index stay Python numbers.

On CPU, large binary BCE+Dice inputs can go one step further, when switched on
(``seglosses.set_cpu_compile(True)``): :mod:`seglosses._compiled` has ``torch.compile``
generate one loop for forward and one for backward, and falls back to the eager passes where
it does not apply or fails.

All sums accumulate in float32 (float64 for float64 logits), also under autocast (bf16/fp16
logits are upcast once; autocast is disabled inside the Functions). The same code runs on CUDA
(one chunk). The Functions trace under ``torch.compile(fullgraph=True)``.

When the fused path applies: see :func:`plan`. Everything else (other pairs, three or more
terms, other reductions, different ignore indices, probabilities as input, gradients w.r.t.
soft targets) runs the composed modules, so the result is always defined.
"""

from .dispatch import FusedLosses, FusedPlan, fused_forward, plan

__all__ = ["FusedLosses", "FusedPlan", "fused_forward", "plan"]
