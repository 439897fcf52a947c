r"""Selective source-task unlearning: the Gradient Collision (GC) loss of disposable transfer
learning.

Koh, Shon, Lee, Hong, Kim, "Disposable Transfer Learning for Selective Source Task Unlearning"
(ICCV 2023, arXiv 2308.09971): after transfer, the model should keep its target-task accuracy
while its representation stops being useful for the source task (measured by "piggyback
learning" accuracy: how well a model retrained on a little source data recovers). The GC loss
"selectively unlearns the source knowledge by leading the gradient vectors of mini-batches in
different directions": the gradients of the source loss on different source mini-batches are
pushed apart, so that no common descent direction (the source knowledge) survives.

It is a loss on gradients, so it needs the per-mini-batch gradients of the source loss with
``create_graph=True`` (a double backward): :func:`minibatch_gradients` computes them,
:func:`gradient_collision_loss` scores them. A training step of the target model is, with
``lam`` the GC weight::

    grads = minibatch_gradients([source_loss(b) for b in source_batches], params)
    loss = target_loss + lam * gradient_collision_loss(grads)
    loss.backward()

**Formula from the abstract, not verified against the paper** (its text could not be read
here and no official code was found): the abstract fixes the ingredients (gradient vectors of
mini-batches, led in different directions); the pairwise cosine similarity averaged over the
pairs of mini-batches (``similarity="cosine"``) is our reading, ``"dot"`` the unnormalised
inner product.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from losslab._core import Reduction, check_choice, check_positive, check_reduction, reduce

__all__ = ["gradient_collision_loss", "minibatch_gradients"]


def minibatch_gradients(losses: Sequence[Tensor], params: Iterable[Tensor], *,
                        create_graph: bool = True) -> Tensor:
    """The flattened gradients ``[n, P]`` of ``n`` scalar losses (one per mini-batch) with
    respect to ``params`` (``P`` = their total size; a parameter a loss does not reach gets
    zeros). ``create_graph=True`` (default) keeps them differentiable, as a loss on gradients
    needs (double backward)."""
    params = [p for p in params]
    if not params:
        raise ValueError("params must hold at least one tensor that requires grad")
    if any(not (isinstance(p, Tensor) and p.requires_grad) for p in params):
        raise ValueError("params must be tensors that require grad")
    if len(losses) == 0:
        raise ValueError("losses must hold at least one scalar loss (one per mini-batch)")
    rows = []
    for i, loss in enumerate(losses):
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ValueError(f"losses[{i}] must be a scalar tensor, got "
                             f"{getattr(loss, 'shape', type(loss))}")
        grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def gradient_collision_loss(
    gradients: Tensor,
    *,
    similarity: Literal["cosine", "dot"] = "cosine",
    eps: float = 1e-12,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Gradient Collision loss: the similarity of the mini-batch gradients, pair by pair.

    .. math::
        \mathcal{L}_{GC} = \frac{2}{n(n-1)} \sum_{i < j}
            \frac{g_i^\top g_j}{\max(\|g_i\|\,\|g_j\|, \varepsilon)}

    for the gradients :math:`g_1, \dots, g_n` of the source loss on ``n`` source mini-batches
    (rows of ``gradients``). Minimising it leads the gradients in different directions
    (:math:`-1/(n-1)` is the smallest mean cosine ``n`` vectors can have). With
    ``similarity="dot"`` the terms are the inner products :math:`g_i^\top g_j`.

    Formula from the abstract, not verified against the paper (see the module docstring).

    Args:
        gradients: ``[n, P]`` flattened gradients, ``n >= 2`` (:func:`minibatch_gradients`).
        similarity: ``"cosine"`` (default) or ``"dot"``.
        eps: lower bound of the norm product (a zero gradient gives a zero term, no NaN).
        reduction: ``"mean"`` over the ``n(n-1)/2`` pairs, ``"sum"``, or ``"none"`` (the pair
            terms in row-major order of the upper triangle).

    Paper: Koh, Shon, Lee, Hong, Kim, "Disposable Transfer Learning for Selective Source Task
    Unlearning", arXiv 2308.09971.
    """
    check_choice("similarity", similarity, ("cosine", "dot"))
    check_positive("eps", eps)
    check_reduction(reduction)
    if not isinstance(gradients, Tensor) or not gradients.is_floating_point():
        raise ValueError("gradients must be a floating-point tensor [n, P]")
    if gradients.ndim != 2 or gradients.shape[0] < 2:
        raise ValueError(f"gradients must have shape [n, P] with n >= 2 mini-batches, got "
                         f"{tuple(gradients.shape)}")
    gram = gradients @ gradients.T
    if similarity == "cosine":
        norms = gradients.norm(dim=1)
        gram = gram / (norms.unsqueeze(1) * norms.unsqueeze(0)).clamp_min(eps)
    i, j = torch.triu_indices(gram.shape[0], gram.shape[0], offset=1, device=gram.device)
    return reduce(gram[i, j], reduction)
