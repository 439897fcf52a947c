"""I-Con: representation learning as a KL divergence between neighbour distributions.

Every anchor ``i`` has a *supervisory* distribution :math:`p(\\cdot|i)` over the other samples
(same label, an augmentation partner, input-space Gaussian neighbours, ...) and a *learned*
one :math:`q(\\cdot|i)`, a softmax of a kernel of the embeddings; the loss is the average
:math:`\\mathrm{KL}(p(\\cdot|i)\\,\\|\\,q(\\cdot|i))`. :func:`i_con_divergence` is the general
form on any ``p`` and any learned logits; the registered ``i_con`` loss (kind ``embeddings``)
takes ``p`` uniform over the anchor's same-label samples (the supervised-contrastive instance)
with optional uniform debiasing. The tests check that its instances give the values of SNE,
InfoNCE (NT-Xent) and SupCon.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_matrix,
    compute_dtype,
    reduce,
)
from losslab._hparams import Choice, Flag, Real, hparams
from losslab.distances import normalize_rows, squared_euclidean
from losslab.registry import register

__all__ = ["IConLoss", "i_con_divergence", "i_con_loss", "learned_neighbour_logits"]

Kernel = Literal["cosine", "gaussian"]


def i_con_divergence(p: Tensor, logits: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    r"""The I-Con objective for given neighbour distributions:
    :math:`\ell_i = \mathrm{KL}(p(\cdot|i) \| q(\cdot|i))`, :math:`q(\cdot|i) =
    \mathrm{softmax}_j(\text{logits}_{ij})`.

    Args:
        p: ``[N, M]`` supervisory distributions, rows summing to 1 (an all-zero row marks an
            anchor without supervision: it gives 0 and is not counted by ``"mean"``).
        logits: ``[N, M]`` learned logits; ``-inf`` entries (e.g. the anchor itself) are
            outside the support of ``q`` and must have ``p = 0``.
        reduction: ``"mean"`` over supervised anchors, ``"sum"``, ``"none"`` (``[N]``).

    Terms with :math:`p_{ij} = 0` contribute nothing (:math:`0 \log 0 = 0`).
    """
    if p.shape != logits.shape or p.ndim != 2:
        raise ValueError(f"p and logits must be matrices of one shape [N, M], got "
                         f"{tuple(p.shape)} and {tuple(logits.shape)}")
    log_q = torch.log_softmax(logits, 1)
    support = p > 0
    cross = torch.where(support, p * log_q.masked_fill(~support, 0.0), torch.zeros_like(p))
    per_anchor = torch.xlogy(p, p).sum(1) - cross.sum(1)
    supervised = support.any(1)
    return reduce(per_anchor, reduction, count=supervised.sum().to(per_anchor.dtype))


def learned_neighbour_logits(embeddings: Tensor, *, temperature: float, kernel: Kernel,
                             normalize: bool) -> Tensor:
    """``[N, N]`` logits of the learned distribution ``q(j|i)``, the anchor itself at
    ``-inf``: ``cos(f_i, f_j) / temperature`` (``"cosine"``) or
    ``-||f_i - f_j||^2 / temperature`` (``"gaussian"``; SNE is ``temperature = 1`` without
    normalisation)."""
    f = normalize_rows(embeddings) if normalize else embeddings
    if kernel == "cosine":
        logits = (f @ f.t()) / temperature
    else:
        logits = -squared_euclidean(f) / temperature
    eye = torch.eye(f.shape[0], dtype=torch.bool, device=f.device)
    return logits.masked_fill(eye, float("-inf"))


_check_icon = hparams(temperature=Real(gt=0), kernel=Choice("cosine", "gaussian"),
                      debias=Real(ge=0, lt=1), normalize=Flag())


def i_con_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.1,
    kernel: Kernel = "cosine",
    debias: float = 0.0,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""I-Con with label supervision: KL from the same-label neighbour distribution to the
    learned one.

    .. math::
        \ell_i = \sum_{j \ne i} p(j|i) \log\frac{p(j|i)}{q(j|i)}, \quad
        p(j|i) = (1 - \alpha) \frac{[y_j = y_i]}{|P(i)|} + \frac{\alpha}{N - 1}, \quad
        q(j|i) = \frac{\exp k(f_i, f_j)}{\sum_{l \ne i} \exp k(f_i, f_l)}

    with :math:`k` the cosine similarity over :math:`\tau` (``kernel="cosine"``) or
    :math:`-\|f_i - f_j\|^2/\tau` (``"gaussian"``), and :math:`\alpha` = ``debias``, the
    paper's debiasing that mixes a uniform distribution into the supervision (some "negatives"
    are neighbours after all). With :math:`\alpha = 0` this is SupCon's :math:`L_{out}` minus
    the constant entropy :math:`\log |P(i)|`; with one positive per anchor (the two views of
    SimCLR, labels ``cat([arange(N), arange(N)])``) it is NT-Xent exactly.

    Args:
        embeddings: ``[N, D]``. labels: ``[N]`` integer labels (positives share a label).
        temperature: :math:`\tau` (default 0.1). kernel: ``"cosine"`` (default) or
            ``"gaussian"``. debias: :math:`\alpha \in [0, 1)` (default 0).
        normalize: L2-normalise the embeddings first (default True).
        reduction: ``"mean"`` over anchors with a supervisory distribution (at least one
            positive, or ``debias > 0``), ``"sum"``, ``"none"`` (``[N]``).

    Degenerate batches: with every label distinct and ``debias = 0`` no anchor has a
    supervisory distribution and the loss is 0 (zero gradient).

    Paper: Alshammari, Hershey, Feldmann, Freeman, Hamilton, "I-Con: A Unifying Framework for
    Representation Learning", arXiv 2504.16929.
    """
    _check_icon(temperature=temperature, kernel=kernel, debias=debias, normalize=normalize)
    check_matrix("embeddings", embeddings)
    labels = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    f = embeddings.to(compute_dtype(embeddings.dtype))
    n = f.shape[0]
    if n < 2:  # no neighbours: no supervisory distribution (a zero loss, zero gradient)
        return reduce(f.sum(1) * 0.0, reduction, count=0.0)
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(f.device) & ~eye
    count = same.sum(1, keepdim=True)
    p = same.to(f.dtype) / count.clamp_min(1).to(f.dtype)
    if debias > 0 and n > 1:
        uniform = (~eye).to(f.dtype) / (n - 1)
        p = torch.where(count > 0, (1 - debias) * p + debias * uniform, debias * uniform)
        p = p / p.sum(1, keepdim=True)
    logits = learned_neighbour_logits(f, temperature=temperature, kernel=kernel,
                                      normalize=normalize)
    return i_con_divergence(p, logits, reduction=reduction)


@register(
    "i_con", family="contrastive-ssl", kind="embeddings",
    paper="I-Con: A Unifying Framework for Representation Learning", arxiv="2504.16929",
    summary="mean_i KL(p(.|i) || q(.|i)), p uniform over same-label neighbours (+ debias), "
    "q = softmax_j(cos(f_i, f_j)/tau)", reduction="per anchor", degenerate=("no_positives",),
)
class IConLoss(LossModule, function=i_con_loss, check=_check_icon):
    """Module form of :func:`i_con_loss`."""
