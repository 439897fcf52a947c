"""Pair-weighting losses: multi-similarity, circle (pair- and class-level) and supervised
contrastive (kind ``embeddings``). Each weighs its pairs by a softmax over the anchor's row.

See :mod:`losslab.losses.metric_learning` for the call convention (``ref_embeddings``,
``indices``, degenerate batches, reductions).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_reduction, reduce
from losslab._hparams import Choice, Flag, Int, Real, hparams
from losslab._ops.logsumexp import (
    fixed_shift,
    log1p_sum_exp_,
    logsumexp_,
    masked_logsumexp,
    weighted_log1p_sum_exp,
)
from losslab._ops.pairs import Members, pair_batch, validate_batch
from losslab.kernels.matrix_loss import KernelOut, matrix_loss
from losslab.losses.metric_learning._common import (
    PML,
    SIMILARITIES,
    SimilarityName,
    reduce_per_anchor,
)
from losslab.losses.metric_learning.proxy import ProxyLossModule, validate_proxy_inputs
from losslab.registry import register

__all__ = [
    "CircleKernel",
    "CircleLoss",
    "MultiSimilarityKernel",
    "MultiSimilarityLoss",
    "SupConKernel",
    "SupConLoss",
    "circle_loss",
    "ms_terms",
    "multi_similarity_loss",
    "supcon_loss",
]


# --------------------------------------------------------------------------------------------
# Multi-similarity
# --------------------------------------------------------------------------------------------


def ms_terms(s: Tensor, w_pos: Tensor, w_neg: Tensor, alpha: float, beta: float,
             base: float) -> Tensor:
    r"""Per-anchor MS loss with (possibly soft) pair weights ``w_pos``, ``w_neg`` ``[N, M]``:
    :math:`\frac{1}{\alpha}\log(1 + \sum_p w^+ e^{-\alpha(s - \lambda)}) +
    \frac{1}{\beta}\log(1 + \sum_n w^- e^{\beta(s - \lambda)})`."""
    pos = weighted_log1p_sum_exp(-alpha * (s - base), w_pos) / alpha
    neg = weighted_log1p_sum_exp(beta * (s - base), w_neg) / beta
    return pos + neg


@dataclass(frozen=True)
class MultiSimilarityKernel:
    r"""Fused multi-similarity kernel (:class:`~losslab.kernels.matrix_loss.Kernel`): with
    :math:`L = -\alpha(s - \lambda)` on positives and :math:`\beta(s - \lambda)` on negatives,
    :math:`\partial \ell / \partial s` is minus / plus the "softmax with a 1" weight of the pair
    (:func:`~losslab._ops.logsumexp.log1p_sum_exp_`).

    Glossary:

    * ``s_pos`` ``[N, K]``: the similarities of the member slots (positives where
      ``members.pos``); ``keep_pos``: the positives kept by the mining;
    * ``logits`` ``[N, M]``: :math:`\beta(s - \lambda)` on the (mined) negatives, ``-inf``
      elsewhere; ``max_neg``, ``min_pos``: each anchor's hardest negative / positive
      similarity (the mining thresholds); ``cut``: the mining threshold on the logit scale;
    * ``lse_p``, ``lse_n`` ``[N]``: :math:`\log(1 + \sum e^L)` over positives / negatives;
      ``w_pos``: the positives' weights, ``grad``: the negatives' weights, then ``G``.
    """

    alpha: float
    beta: float
    base: float
    epsilon: float
    mining: bool
    cosine: bool
    symmetric: ClassVar[bool] = False
    axis: ClassVar[int] = 1

    def __call__(self, mat: Tensor, members: Members, mean: bool) -> KernelOut:
        s = mat
        s_pos = members.gather(s)  # [N, K]
        logits = s.sub_(self.base).mul_(self.beta)  # negatives
        members.fill_(logits, float("-inf"))
        keep_pos = members.pos
        if self.mining:
            max_neg = logits.amax(dim=1, keepdim=True) / self.beta + self.base
            min_pos = s_pos.masked_fill(~members.pos, float("inf")).amin(dim=1, keepdim=True)
            keep_pos = members.pos & (s_pos - self.epsilon < max_neg)
            # keep negatives with s + eps > min_pos
            cut = self.beta * (min_pos - self.epsilon - self.base)
            logits = torch.where(logits > cut, logits, float("-inf"))
        lse_p, w_pos = log1p_sum_exp_(
            (s_pos - self.base).mul_(-self.alpha).masked_fill_(~keep_pos, float("-inf")), dim=1)
        # cosine: beta (s - base) <= beta (1 - base), a constant shift
        shift = (fixed_shift(self.beta * (1 - self.base), -self.beta * (1 + self.base), s.dtype)
                 if self.cosine else None)
        lse_n, grad = log1p_sum_exp_(logits, dim=1, shift=shift)
        per = lse_p / self.alpha + lse_n / self.beta
        members.add_pos_(grad, w_pos.neg_())
        if mean:
            per /= per.numel()
            grad /= per.numel()
        return KernelOut(per, grad=grad)


_check_multi_similarity = hparams(alpha=Real(gt=0), beta=Real(gt=0), base=Real(),
                                  epsilon=Real(ge=0), mining=Flag(),
                                  metric=Choice(*SIMILARITIES))


def multi_similarity_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    epsilon: float = 0.1,
    mining: bool = True,
    metric: SimilarityName = "cosine",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Multi-similarity loss, with its pair mining.

    .. math::
        \ell_a = \frac{1}{\alpha}\log\Big(1 + \sum_{p \in \tilde P_a} e^{-\alpha(s_{ap} -
        \lambda)}\Big) + \frac{1}{\beta}\log\Big(1 + \sum_{n \in \tilde N_a}
        e^{\beta(s_{an} - \lambda)}\Big)

    where :math:`\tilde P_a, \tilde N_a` are the pairs kept by the paper's mining
    (:func:`losslab._ops.pairs.ms_pair_mining`, margin :math:`\epsilon`). ``mining=False`` uses
    all pairs (PML's ``MultiSimilarityLoss`` alone); ``mining=True`` equals PML's
    ``MultiSimilarityLoss`` + ``MultiSimilarityMiner``. With ``indices``, the given pairs are
    used and no mining is done.

    Args:
        alpha, beta, base: :math:`\alpha = 2, \beta = 50, \lambda = 0.5` (the paper's values).
        epsilon: mining margin (0.1, the paper's). mining: apply the pair mining (default True).
        metric: ``"cosine"`` (default; the paper L2-normalises embeddings) or ``"dot"``.
        reduction: ``"mean"`` over all anchors (the paper's 1/m sum), ``"sum"``, ``"none"``.

    Degenerate batches: the mining keeps a positive only if it is less similar than the
    hardest negative (plus :math:`\epsilon`) and a negative only if it is more similar than
    the easiest positive (minus :math:`\epsilon`), so a one-class batch or a batch of distinct
    labels keeps no pair: zero (not with ``mining=False``, whose positive or negative terms
    remain). NaN embeddings give NaN (the mining's comparisons would otherwise drop them).

    Without ``indices`` the loss and its gradient come from one fused pass
    (:class:`MultiSimilarityKernel`).

    Paper: Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning", arXiv 1904.06627.
    """
    _check_multi_similarity(alpha=alpha, beta=beta, base=base, epsilon=epsilon, mining=mining,
                            metric=metric)
    if indices is None:
        check_reduction(reduction)
        vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
        kernel = MultiSimilarityKernel(alpha, beta, base, epsilon, mining, metric == "cosine")
        return matrix_loss(vb.embeddings, vb.labels, *vb.reference, metric=metric,
                           kernel=kernel, reduction=reduction)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric,
                   allowed=SIMILARITIES)
    per_anchor = ms_terms(b.mat, b.pos.to(b.mat.dtype), b.neg.to(b.mat.dtype), alpha, beta, base)
    return reduce(per_anchor + b.zero(), reduction)


@register(
    "multi_similarity",
    family="metric-learning",
    kind="embeddings",
    paper="Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning",
    arxiv="1904.06627",
    summary="1/a log(1+sum_p e^{-a(s-l)}) + 1/b log(1+sum_n e^{b(s-l)}) over mined pairs",
    peers=(f"{PML}.MultiSimilarityLoss", "pytorch_metric_learning.miners.MultiSimilarityMiner"),
    reduction="per anchor",
    degenerate=("one_class", "no_positives"),
)
class MultiSimilarityLoss(LossModule, function=multi_similarity_loss,
                          check=_check_multi_similarity):
    """Module form of :func:`multi_similarity_loss`."""


# --------------------------------------------------------------------------------------------
# Circle
# --------------------------------------------------------------------------------------------


def _circle_from_sims(s: Tensor, pos: Tensor, neg: Tensor, margin: float,
                      scale: float) -> tuple[Tensor, Tensor]:
    """Per-anchor circle loss (autograd) from similarities and pair masks, and the valid
    flag (at least one positive and one negative)."""
    sd = s.detach()
    logit_p = -scale * F.relu(1 + margin - sd) * (s - (1 - margin))
    logit_n = scale * F.relu(sd + margin) * (s - margin)
    lse_p, has_p = masked_logsumexp(logit_p, pos)
    lse_n, has_n = masked_logsumexp(logit_n, neg)
    valid = has_p & has_n
    x = torch.where(valid, lse_p + lse_n, torch.zeros_like(lse_p))
    return F.softplus(x).masked_fill(~valid, 0.0), valid


@dataclass(frozen=True)
class CircleKernel:
    r"""Fused circle kernel (:class:`~losslab.kernels.matrix_loss.Kernel`; ``mat`` = cosine
    similarities to batch samples or to class proxies). With :math:`\alpha` held constant,
    :math:`\partial \ell_a/\partial s_{aj} = \sigma(x_a)\,\mathrm{softmax}_j\,(\mp\gamma
    \alpha_j)` on positives / negatives.

    Glossary:

    * ``s_pos`` ``[N, K]``: the similarities of the member slots;
    * ``slope_p`` ``[N, K]``: :math:`-\gamma\alpha_p = -\gamma[1 + m - s_p]_+`; ``slope``
      ``[N, M]``: :math:`\gamma\alpha_n = \gamma[s_n + m]_+` (constants of the gradient);
    * ``lse_p``, ``lse_n`` ``[N]``: the log-sum-exps of the positive logits
      :math:`-\gamma\alpha_p(s_p - 1 + m)` and the negative logits
      :math:`\gamma\alpha_n(s_n - m)`; ``w_pos``, ``grad``: their softmax weights;
    * ``x = lse_p + lse_n``: the loss is ``softplus(x)``, its derivative ``sig = sigmoid(x)``;
      ``valid``: anchors with a positive and a negative.
    """

    margin: float
    scale: float
    symmetric: ClassVar[bool] = False
    axis: ClassVar[int] = 1

    def __call__(self, mat: Tensor, members: Members, mean: bool) -> KernelOut:
        m, g = self.margin, self.scale
        s = mat
        s_pos = members.gather(s)  # [N, K]
        slope_p = (1.0 + m - s_pos).clamp_min_(0.0).mul_(-g)  # -g [1 + m - s]_+
        lse_p, w_pos = logsumexp_((s_pos - (1.0 - m)).mul_(slope_p).masked_fill_(
            ~members.pos, float("-inf")), 1)
        slope = (s + m).clamp_min_(0.0).mul_(g)  # g [s + m]_+
        logits = s.sub_(m).mul_(slope)
        members.fill_(logits, float("-inf"))
        lse_n, grad = logsumexp_(logits, dim=1)
        valid = (members.n_pos > 0) & (members.n_neg > 0)
        x = torch.where(valid, lse_p + lse_n, 0.0)
        per = F.softplus(x).masked_fill_(~valid, 0.0)
        sig = torch.sigmoid(x).masked_fill_(~valid, 0.0)
        if mean:  # a 0-d tensor count: the same division, no sync (no graph break)
            count = valid.sum().clamp_min(1).to(per.dtype)
            per /= count
            sig /= count
        grad.mul_(slope).mul_(sig.unsqueeze(1))
        members.add_pos_(grad, w_pos.mul_(slope_p).mul_(sig.unsqueeze(1)))
        return KernelOut(per, grad=grad)


#: (``num_classes``, ``embedding_dim``: the module's optional class-level form.)
_check_circle = hparams(margin=Real(), scale=Real(gt=0), num_classes=Int(ge=1, optional=True),
                        embedding_dim=Int(ge=1, optional=True))


def circle_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor | None = None,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin: float = 0.4,
    scale: float = 80.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Circle loss, pair-level (batch pairs) or class-level (``proxies`` = class weights).

    .. math::
        \ell_a = \log\Big[1 + \sum_n e^{\gamma \alpha_n (s_n - \Delta_n)}
        \sum_p e^{-\gamma \alpha_p (s_p - \Delta_p)}\Big],\quad
        \alpha_p = [1 + m - s_p]_+,\ \alpha_n = [s_n + m]_+,\
        \Delta_p = 1 - m,\ \Delta_n = m

    on cosine similarities; :math:`\alpha_p, \alpha_n` are not differentiated (as in the paper).
    Pair-level: :math:`s_p, s_n` are the anchor's similarities to the positives/negatives of the
    batch (or ``indices``). Class-level (``proxies`` ``[C, D]`` given): :math:`s_p = \cos(x,
    w_y)` and :math:`s_n = \cos(x, w_j), j \ne y` (labels in ``[0, C)``; ``ref_embeddings`` and
    ``indices`` are then rejected).

    Args:
        proxies: ``[C, D]`` class weights for the class-level form (default ``None``:
            pair-level).
        margin: :math:`m` (default 0.4); scale: :math:`\gamma` (default 80). These are the
            paper's values for fine-grained image retrieval (face recognition: 0.25 / 256).
        reduction: ``"mean"`` over anchors with at least one positive and one negative (equal to
            PML's ``AvgNonZeroReducer`` since the loss of such an anchor is > 0), ``"sum"``,
            ``"none"`` (``[N]``, 0 for invalid anchors).

    Without ``indices`` both forms are one fused pass (:class:`CircleKernel`); the class-level
    form equals the pair-level form against ``ref_embeddings=proxies``,
    ``ref_labels=arange(C)``.

    Paper: Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
    arXiv 2002.10857.
    """
    _check_circle(margin=margin, scale=scale)
    check_reduction(reduction)
    kernel = CircleKernel(margin, scale)
    if proxies is not None:
        pb = validate_proxy_inputs(embeddings, labels, proxies, ref_embeddings, ref_labels,
                                   indices, name="circle (class-level)")
        return matrix_loss(pb.embeddings, pb.labels, pb.proxies, pb.proxies.shape[0],
                           metric="cosine", kernel=kernel, reduction=reduction)
    if indices is None:
        vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
        return matrix_loss(vb.embeddings, vb.labels, *vb.reference, metric="cosine",
                           kernel=kernel, reduction=reduction)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric="cosine")
    per_anchor, valid = _circle_from_sims(b.mat, b.pos, b.neg, margin, scale)
    z = b.zero()
    return reduce_per_anchor(per_anchor + z, reduce(per_anchor, "mean", count=valid.sum()) + z,
                             reduction)


@register(
    "circle",
    family="metric-learning",
    kind="embeddings",
    paper="Circle Loss: A Unified Perspective of Pair Similarity Optimization",
    arxiv="2002.10857",
    summary="softplus(lse_n g a_n (s_n - m) + lse_p -g a_p (s_p - 1 + m)), pair or class level",
    peers=(f"{PML}.CircleLoss",),
    reduction="per anchor",
    surrogate_gradient="alpha_p, alpha_n are constants (stop-gradient), as in the paper",
    degenerate=("one_class", "no_positives"),
)
class CircleLoss(ProxyLossModule, function=circle_loss, check=_check_circle):
    """Module form of :func:`circle_loss`.

    With ``num_classes`` and ``embedding_dim`` the module is the class-level form and owns the
    class weights ``proxies`` (``nn.Parameter [C, D]``, normal init); otherwise pair-level
    (``proxies`` is ``None``).
    """

    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation="int | None"),
        inspect.Parameter("embedding_dim", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation="int | None"),
    )
    proxies_optional = True


# --------------------------------------------------------------------------------------------
# SupCon
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupConKernel:
    r"""Fused SupCon kernel (:class:`~losslab.kernels.matrix_loss.Kernel`):
    :math:`\partial \ell_i / \partial s_{ij} = (\mathrm{softmax}_j - [j \in P(i)] / |P(i)|)
    / \tau` over :math:`A(i)` (every reference but the anchor).

    Glossary: ``x = s / tau`` ``[N, M]`` (the anchor itself ``-inf``); ``valid``: anchors with
    a positive and a negative; ``inv_p = 1 / |P(i)|``; ``pos_mean``: the mean of ``x`` over
    the positives; ``lse``, ``grad``: :math:`\log\sum_{A(i)} e^x` and its softmax weights;
    ``w``: ``valid / tau`` (divided by the ``"mean"`` count).
    """

    temperature: float
    cosine: bool
    symmetric: ClassVar[bool] = False
    axis: ClassVar[int] = 1

    def __call__(self, mat: Tensor, members: Members, mean: bool) -> KernelOut:
        t = self.temperature
        x = mat.div_(t)
        valid = (members.n_pos > 0) & (members.n_neg > 0)
        inv_p = 1.0 / members.n_pos.clamp_min(1).to(x.dtype)
        pos_mean = members.gather(x).masked_fill_(~members.pos, 0.0).sum(1).mul_(inv_p)
        if members.self_ref:
            x.fill_diagonal_(float("-inf"))
        # cosine: s / t in [-1/t, 1/t], a constant shift
        shift = fixed_shift(1 / t, -1 / t, x.dtype) if self.cosine else None
        lse, grad = logsumexp_(x, dim=1, shift=shift)
        per = torch.where(valid, lse - pos_mean, 0.0)
        w = valid.to(x.dtype) / t
        if mean:  # a 0-d tensor count: the same division, no sync (no graph break)
            count = valid.sum().clamp_min(1).to(per.dtype)
            per /= count
            w /= count
        grad.mul_(w.unsqueeze(1))
        members.add_pos_(grad, (-(inv_p * w)).unsqueeze(1).expand_as(members.idx))
        return KernelOut(per, grad=grad)


_check_supcon = hparams(temperature=Real(gt=0), metric=Choice(*SIMILARITIES))


def supcon_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    temperature: float = 0.1,
    metric: SimilarityName = "cosine",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Supervised contrastive loss (the "L_out" form), as a masked log-sum-exp over ``[N, M]``.

    .. math::
        \ell_i = -\frac{1}{|P(i)|}\sum_{p \in P(i)} \log
        \frac{e^{s_{ip}/\tau}}{\sum_{a \in A(i)} e^{s_{ia}/\tau}}

    with :math:`A(i)` the positives and negatives of anchor :math:`i` (every other sample), on
    cosine similarities of the (L2-normalised) embeddings. O(N·M) memory: no ``[P, N]``
    positive-by-negative matrix (PML's NT-Xent builds one).

    Args:
        temperature: :math:`\tau` (default 0.1, the paper's). metric: ``"cosine"`` or ``"dot"``.
        reduction: ``"mean"`` over anchors with at least one positive and one negative,
            ``"sum"``, ``"none"`` (``[N]``).

    Degenerate batches: an anchor without a positive has no term (the mean over :math:`P(i)`
    is empty), and one without a negative is left out as PML's ``SupConLoss`` does, so a batch
    of distinct labels and a one-class batch are zero. (The paper's :math:`L_{out}` would give
    an anchor without negatives :math:`\log\sum_{P(i)} e^{s/\tau} - \mathrm{mean}_{P(i)}
    s/\tau \ge \log|P(i)|`: no contrast with any other class, only a pull of its positives'
    similarities towards each other.)

    Without ``indices`` the loss and its gradient come from one fused pass
    (:class:`SupConKernel`).

    Paper: Khosla et al., "Supervised Contrastive Learning", arXiv 2004.11362.
    """
    _check_supcon(temperature=temperature, metric=metric)
    if indices is None:
        check_reduction(reduction)
        vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
        kernel = SupConKernel(temperature, metric == "cosine")
        return matrix_loss(vb.embeddings, vb.labels, *vb.reference, metric=metric,
                           kernel=kernel, reduction=reduction)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric=metric,
                   allowed=SIMILARITIES)
    x = b.mat / temperature
    lse, _ = masked_logsumexp(x, b.pos | b.neg)
    n_pos = b.pos.sum(1)
    valid = (n_pos > 0) & b.neg.any(1)
    lse = torch.where(valid, lse, torch.zeros_like(lse))
    pos_sum = x.masked_fill(~b.pos, 0.0).sum(1)
    per_anchor = (lse - pos_sum / n_pos.clamp_min(1).to(x.dtype)).masked_fill(~valid, 0.0)
    z = b.zero()
    return reduce_per_anchor(per_anchor + z, reduce(per_anchor, "mean", count=valid.sum()) + z,
                             reduction)


@register(
    "supcon",
    family="metric-learning",
    kind="embeddings",
    paper="Supervised Contrastive Learning",
    arxiv="2004.11362",
    summary="-1/|P(i)| sum_p log softmax_{a != i}(s_ia / T)[p]",
    peers=(f"{PML}.SupConLoss",),
    reduction="per anchor",
    degenerate=("one_class", "no_positives"),
)
class SupConLoss(LossModule, function=supcon_loss, check=_check_supcon):
    """Module form of :func:`supcon_loss`."""
