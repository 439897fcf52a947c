"""Sy-CON: the symmetric contrastive loss of continual self-supervised learning (MoCo form).

Kind ``paired``: ``loss(a[N, D], b[N, D], *, past=None, predicted=None, queue=None,
past_queue=None)`` -- ``a`` the current model's queries of one view, ``b`` its (momentum) keys of
the other view, ``past`` the frozen previous-task model's embeddings of ``a``'s view and
``predicted`` the predictor's outputs ``h(a)``. Both terms contrast against the negatives of the
current *and* the past model.

fp16/bf16 inputs are computed in float32 and the loss is returned in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, check_matrix, check_same_device, reduce
from losslab._hparams import Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.distances import normalize_rows
from losslab.registry import register

__all__ = ["SyConLoss", "sy_con_loss"]

_check_sy_con = hparams(temperature=Real(gt=0), past_temperature=Real(gt=0))


def _aligned(name: str, x: Tensor | None, like: Tensor) -> Tensor | None:
    if x is None:
        return None
    check_matrix(name, x, dim=like.shape[1])
    if x.shape[0] != like.shape[0]:
        raise ValueError(f"{name} must have one row per row of a ({like.shape[0]}), got "
                         f"{x.shape[0]}")
    check_same_device(a=like, **{name: x})
    return normalize_rows(x.to(like.dtype))


def _bank(name: str, x: Tensor | None, like: Tensor) -> Tensor | None:
    if x is None:
        return None
    check_matrix(name, x, dim=like.shape[1])
    check_same_device(a=like, **{name: x})
    return normalize_rows(x.to(like.dtype))


def _nce(anchor: Tensor, positive: Tensor, negatives: Tensor, scale: float,
         in_batch: bool) -> Tensor:
    """``[N]`` InfoNCE terms, the positive in column 0; ``in_batch``: the negatives are
    ``[M * N, D]`` blocks of batch rows whose row ``i`` of each block is excluded for anchor
    ``i`` (it is the anchor's own sample)."""
    pos = (anchor * positive).sum(1, keepdim=True) * scale
    neg = (anchor @ negatives.t()) * scale
    if in_batch:
        n = anchor.shape[0]
        idx = torch.arange(n, device=anchor.device)
        own = (idx.unsqueeze(1) == idx.repeat(negatives.shape[0] // n).unsqueeze(0))
        neg = neg.masked_fill(own, float("-inf"))
    return torch.logsumexp(torch.cat([pos, neg], 1), 1) - pos.squeeze(1)


def sy_con_loss(
    a: Tensor,
    b: Tensor,
    *,
    past: Tensor | None = None,
    predicted: Tensor | None = None,
    queue: Tensor | None = None,
    past_queue: Tensor | None = None,
    temperature: float = 0.2,
    past_temperature: float = 0.2,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Sy-CON: a plasticity and a stability InfoNCE term, each against the negatives of both
    the current and the past model.

    With all embeddings L2-normalised, :math:`\mathcal{N} = Q \cup Q^{past}` the negatives of
    the current model (``queue``) and of the past model (``past_queue``),

    .. math::
        \ell_i = -\log \frac{e^{a_i \cdot b_i / \tau}}{e^{a_i \cdot b_i / \tau}
                 + \sum_{n \in \mathcal{N}} e^{a_i \cdot n / \tau}}
               - \log \frac{e^{p_i \cdot f_i / \tau_p}}{e^{p_i \cdot f_i / \tau_p}
                 + \sum_{n \in \mathcal{N}} e^{p_i \cdot n / \tau_p}}

    with :math:`f_i` = ``past`` (the frozen previous model's embedding of ``a_i``'s image
    and view) and :math:`p_i` = ``predicted`` (the predictor's output on :math:`a_i`;
    default :math:`a_i`). The first term learns the new task (plasticity), the second keeps
    the past representation (stability); their symmetric negatives are what lets the sum
    balance the two without a weight. The official code averages the loss over the two view
    orders (call it with the views swapped and average).

    Without queues the negatives are in-batch: the other rows of ``b`` (for ``queue``) and of
    ``past`` (for ``past_queue``) -- each anchor's own sample is left out. Without ``past``
    (the first task: no previous model) only the plasticity term remains, against ``queue``
    or the other rows of ``b``: MoCo/InfoNCE.

    Args:
        a: ``[N, D]`` current model's queries (view 1). b: ``[N, D]`` its keys (view 2).
        past: ``[N, D]`` the frozen past model's embeddings of view 1 (``None``: first task).
        predicted: ``[N, D]`` predictor outputs on ``a`` (default ``a``: identity).
        queue, past_queue: ``[K, D]`` negatives of the current and of the past model
            (MoCo queues); ``None``: in-batch, as above.
        temperature: :math:`\tau` of the plasticity term (default 0.2, MoCo-v2+).
        past_temperature: :math:`\tau_p` of the stability term (default 0.2, the official
            ``--distill_temperature``).
        reduction: ``"mean"`` over the ``N`` anchors, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Cha, Cho, Moon, "Sy-CON: Symmetric Contrastive Loss for Continual Self-Supervised
    Representation Learning", arXiv 2306.05101 (v2: "Regularizing with Pseudo-Negatives for
    Continual Self-Supervised Learning", PNR). The formula is read from the official code
    (``csm9493/PNR``, ``cassle/losses/pnr.py``, ``moco_pnr_loss_func``); the paper's text was
    not found beyond its abstract. The in-batch negatives without queues are this library's
    extension.
    """
    _check_sy_con(temperature=temperature, past_temperature=past_temperature)
    a, b = prepare_paired(a, b, normalize=True)
    n = a.shape[0]
    f = _aligned("past", past, a)
    p = _aligned("predicted", predicted, a)
    q = _bank("queue", queue, a)
    pq = _bank("past_queue", past_queue, a)
    if (q is None) != (pq is None) and f is not None:
        raise ValueError("give both queue and past_queue (the current and the past model's "
                         "negatives) or neither")
    if pq is not None and f is None:
        raise ValueError("past_queue needs past= (the past model's embeddings of a)")
    in_batch = q is None
    if in_batch and n < 2:
        raise ValueError(f"sy_con without queues needs at least 2 pairs (in-batch negatives), "
                         f"got {n}")
    if in_batch:
        negatives = b if f is None else torch.cat([b, f], 0)
    else:
        assert q is not None
        negatives = q if pq is None else torch.cat([q, pq], 0)
    per = _nce(a, b, negatives, 1.0 / temperature, in_batch)
    if f is not None:
        anchor = a if p is None else p
        per = per + _nce(anchor, f, negatives, 1.0 / past_temperature, in_batch)
    return reduce(per, reduction)


@register(
    "sy_con", family="contrastive-ssl", kind="paired",
    paper="Sy-CON: Symmetric Contrastive Loss for Continual Self-Supervised Representation "
    "Learning", arxiv="2306.05101",
    summary="InfoNCE(a, b) + InfoNCE(h(a), past), both against the current and the past "
    "model's negatives", reduction="per anchor",
)
class SyConLoss(LossModule, function=sy_con_loss, check=_check_sy_con):
    """Module form of :func:`sy_con_loss`:
    ``forward(a, b, *, past=None, predicted=None, queue=None, past_queue=None)``."""

    function_only = ("past", "predicted", "queue", "past_queue")

    def forward(self, a: Tensor, b: Tensor, *, past: Tensor | None = None,
                predicted: Tensor | None = None, queue: Tensor | None = None,
                past_queue: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        if index is not None:
            raise ValueError("sy_con takes no index= argument")
        return sy_con_loss(a, b, past=past, predicted=predicted, queue=queue,
                           past_queue=past_queue, **self.call_kwargs())
