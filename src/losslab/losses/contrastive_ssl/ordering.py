"""GroCo: self-supervised learning with group ordering constraints, trained through a
differentiable sorting network.

Kind ``paired``: ``loss(a[N, D], b[N, D])``, row ``i`` of ``a`` and of ``b`` two views of one
image. Each view's rows are anchors in turn; an anchor's positive is its other view, its
negatives are the ``num_negatives`` most similar other rows of its own view. The relaxed
odd-even sorting network (:func:`soft_sort`) sorts the anchor's similarities; the loss asks
that every positive lands above every negative.

fp16/bf16 inputs are computed in float32 and the loss is returned in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Flag, Int, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.registry import register

__all__ = ["GroCoLoss", "groco_loss", "soft_sort"]


def soft_sort(x: Tensor, *, steepness: float = 1.0) -> tuple[Tensor, Tensor]:
    r"""Relaxed odd-even transposition sort of the rows of ``x[B, n]`` (ascending).

    ``n`` layers; layer ``l`` compares the neighbours ``(i, i + 1)`` for ``i = l mod 2,
    l mod 2 + 2, ...``. A comparison replaces the hard swap by the Cauchy-relaxed one of
    Petersen et al. (arXiv 2105.04019),

    .. math::
        \alpha = \tfrac{1}{\pi}\arctan\big(s\,(x_{i+1} - x_i)\big) + \tfrac12,\quad
        x_i' = \alpha x_i + (1 - \alpha) x_{i+1},\quad
        x_{i+1}' = (1 - \alpha) x_i + \alpha x_{i+1},

    and mixes the same two columns of the relaxed permutation matrix, started at the
    identity. As ``s -> inf`` this is the exact sorting network.

    Returns:
        ``(sorted [B, n], P [B, n, n])`` with ``P[b, r, c]`` the weight of input ``r`` at
        sorted position ``c``: rows and columns sum to one and ``sorted = x @ P`` per row.
    """
    n = x.shape[1]
    # a real (non-overlapping) tensor: inductor mis-compiles index_copy of an expanded
    # identity (the compiled loss differed from eager by 7% on torch 2.13)
    p = torch.eye(n, dtype=x.dtype, device=x.device).expand(x.shape[0], n, n).contiguous()
    for layer in range(n):
        i = torch.arange(layer % 2, n - 1, 2, device=x.device)
        if i.numel() == 0:
            continue
        j = i + 1
        xi, xj = x[:, i], x[:, j]
        alpha = torch.atan(steepness * (xj - xi)) / math.pi + 0.5
        lo, hi = alpha * xi + (1 - alpha) * xj, (1 - alpha) * xi + alpha * xj
        x = x.index_copy(1, i, lo).index_copy(1, j, hi)
        pi, pj = p[:, :, i], p[:, :, j]
        al = alpha.unsqueeze(1)
        p = p.index_copy(2, i, al * pi + (1 - al) * pj).index_copy(2, j,
                                                                (1 - al) * pi + al * pj)
    return x, p


_check_groco = hparams(num_negatives=Int(ge=1), steepness=Real(gt=0), stop_gradient=Flag())


def _groco_anchor_terms(anchor: Tensor, positive: Tensor, k: int, steepness: float,
                        stop_gradient: bool) -> Tensor:
    """``[N]`` GroCo terms of the anchors (rows of ``anchor``, unit norm): positive = the
    same row of ``positive``, negatives = the ``k`` most similar other rows of ``anchor``."""
    n = anchor.shape[0]
    cand_pos = positive.detach() if stop_gradient else positive
    cand_neg = anchor.detach() if stop_gradient else anchor
    pos = (anchor * cand_pos).sum(1, keepdim=True)  # [N, 1]
    sims = anchor @ cand_neg.t()
    eye = torch.eye(n, dtype=torch.bool, device=anchor.device)
    sims = sims.masked_fill(eye, float("-inf"))
    neg = torch.topk(sims, k, dim=1).values.flip(1)  # ascending
    _, perm = soft_sort(torch.cat([neg, pos], 1), steepness=steepness)
    # probability that each input lands among the k lowest positions (the negatives' block)
    in_neg_block = perm[:, :, :k].sum(2).clamp(0, 1)
    # binary cross-entropy, negatives' target 1, the positive's 0, each log clamped at -100
    # as torch's BCE (written out so that a NaN input propagates instead of raising)
    log_in = torch.log(in_neg_block).clamp(min=-100)
    log_out = torch.log1p(-in_neg_block).clamp(min=-100)
    bce = torch.cat([-log_in[:, :k], -log_out[:, k:]], 1)
    return bce.mean(1)


def groco_loss(
    a: Tensor,
    b: Tensor,
    *,
    num_negatives: int = 10,
    steepness: float = 1.0,
    stop_gradient: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""GroCo: the positive group must sort above the negative group.

    For anchor :math:`a_i` (and, in turn, :math:`b_i`) with cosine similarities
    :math:`s^+ = \cos(a_i, b_i)` to its positive and :math:`s^-_1 \le \dots \le s^-_k` to its
    ``k = min(num_negatives, N - 1)`` most similar other rows of its own view, the vector
    :math:`x = (s^-_1, \dots, s^-_k, s^+)` (negatives first, each group pre-ordered) is sorted
    by the relaxed odd-even network (:func:`soft_sort`, Cauchy relaxation, ``steepness``),
    giving the relaxed permutation :math:`P`. With :math:`q_r = \sum_{c \le k} P_{rc}` the
    probability that element ``r`` lands in the lowest ``k`` positions and :math:`t_r = 1`
    for the negatives, 0 for the positive,

    .. math::
        \ell(a_i) = \frac{1}{k + 1} \sum_{r} \mathrm{BCE}(q_r, t_r)

    -- the paper's group ordering constraint: how much of a positive sorts below a negative.
    (The official code averages this term and the same term for the positives' block,
    :math:`\mathrm{BCE}(1 - q_r, 1 - t_r)`, which is identical because the rows of
    :math:`P` sum to one.) The pair's value is the mean of its two anchors.

    Args:
        a, b: ``[N, D]`` two views (``N >= 2``); rows are L2-normalised (cosine similarity).
        num_negatives: ``k``, the hardest negatives per anchor (default 10, the paper's
            ImageNet setting; at most ``N - 1`` are used).
        steepness: the sorting relaxation's steepness (default 1, the official configs).
        stop_gradient: the positives and negatives are constants, only the anchor receives
            gradient (default True, the official code's ``stop_grad``).
        reduction: ``"mean"`` over the ``N`` pairs, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Shvetsova, Petersen, Kukleva, Schiele, Kuehne, "Learning by Sorting:
    Self-supervised Learning with Group Ordering Constraints", ICCV 2023, arXiv 2301.02009.
    The formula is read from the official code (``ninatu/learning_by_sorting``,
    ``losses/groco.py``, two views) -- only the paper's abstract was found; the sorting
    network follows Petersen et al., arXiv 2105.04019 (checked against ``diffsort``).
    """
    _check_groco(num_negatives=num_negatives, steepness=steepness, stop_gradient=stop_gradient)
    a, b = prepare_paired(a, b, normalize=True)
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"groco needs at least 2 pairs in a and b (an anchor's negatives are "
                         f"the other rows of its view), got {n}")
    k = min(num_negatives, n - 1)
    per_pair = (_groco_anchor_terms(a, b, k, steepness, stop_gradient)
                + _groco_anchor_terms(b, a, k, steepness, stop_gradient)) / 2
    return reduce(per_pair, reduction)


@register(
    "groco", family="contrastive-ssl", kind="paired",
    paper="Learning by Sorting: Self-supervised Learning with Group Ordering Constraints",
    arxiv="2301.02009",
    summary="BCE between a relaxed sorting network's permutation of (top-k negative sims, "
    "positive sim) and the order 'negatives below positives'",
    peers=("diffsort.DiffSortNet",), reduction="per pair",
    surrogate_gradient="stop_gradient=True (the official default) treats the positives and "
    "negatives as constants: only the anchors receive gradient",
)
class GroCoLoss(LossModule, function=groco_loss, check=_check_groco):
    """Module form of :func:`groco_loss`."""
