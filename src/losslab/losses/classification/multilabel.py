r"""Multi-label losses (family ``classification``): multi-label cluster discrimination (kind
``embeddings``: a multi-label softmax over cosine similarities to class (cluster) centres
whose positive and negative classes contribute separate terms) and LDAM for multi-label
targets (kind ``logits``, TransICD).

MLCD: formula from the abstract, not verified against the paper: the abstract fixes "a
multi-label classification loss which separates losses from positive classes and negative
classes"; we implement it as the zero-bounded log-sum-exp pair on scaled cosines (the form
that separates the two sets; Su et al., "ZLPR", arXiv 2208.02955). The paper's exact terms
(a margin, its scale) could not be read here.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import (
    LossModule,
    Reduction,
    check_matrix,
    check_same_device,
    compute_dtype,
    reduce,
    require,
    zero_loss,
)
from losslab._hparams import Int, PerClass, Real, hparams
from losslab.distances import normalize_rows
from losslab.registry import register

__all__ = ["LDAMMultilabelLoss", "MLCDLoss", "ldam_multilabel_loss", "mlcd_loss"]


def _multi_hot(labels: Tensor, n: int, num_classes: int) -> Tensor:
    """``[N]`` class ids or ``[N, C]`` 0/1 (bool or integer) targets as a bool ``[N, C]``."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer class ids [N] or a 0/1 (bool or integer) "
                         f"matrix [N, C], got dtype {labels.dtype}")
    if labels.ndim == 1:
        if labels.shape[0] != n:
            raise ValueError(f"labels must have one entry per row of embeddings ({n}), got "
                             f"{labels.shape[0]}")
        if labels.dtype == torch.bool:
            raise ValueError("labels [N] must hold class ids, got a bool tensor")
        require((labels >= 0) & (labels < num_classes), lambda: (  # no graph break
            f"labels must lie in [0, {num_classes}) (the number of centres), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"))
        return F.one_hot(labels.long(), num_classes).bool()
    if labels.ndim == 2:
        if tuple(labels.shape) != (n, num_classes):
            raise ValueError(f"multi-hot labels must have shape [{n}, {num_classes}], got "
                             f"{tuple(labels.shape)}")
        if labels.dtype != torch.bool:
            require((labels == 0) | (labels == 1), "multi-hot labels must hold 0 or 1")
        return labels.bool()
    raise ValueError(f"labels must be [N] class ids or [N, C] multi-hot, got shape "
                     f"{tuple(labels.shape)}")


def _log1p_sum_exp(s: Tensor, mask: Tensor) -> Tensor:
    r""":math:`\log(1 + \sum_{j: mask} e^{s_j})` per row, stable (an empty set gives 0)."""
    neg_inf = torch.full_like(s, float("-inf"))
    zeros = torch.zeros_like(s[:, :1])
    return torch.logsumexp(torch.cat([zeros, torch.where(mask, s, neg_inf)], dim=1), dim=1)


_check_mlcd = hparams(scale=Real(gt=0))


def mlcd_loss(
    embeddings: Tensor,
    labels: Tensor,
    centers: Tensor,
    *,
    scale: float = 32.0,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Multi-label cluster-discrimination loss: separate positive and negative terms.

    .. math::
        s_k = \sigma \cos(f, w_k),\qquad
        \ell = \log\Big(1 + \sum_{j \in \Omega_n} e^{s_j}\Big)
             + \log\Big(1 + \sum_{i \in \Omega_p} e^{-s_i}\Big)

    with :math:`\Omega_p` the sample's positive classes (its assigned cluster centres),
    :math:`\Omega_n` the others and :math:`w_k` the rows of ``centers``. The threshold between
    positive and negative scores is 0 (no class count is needed at prediction:
    :math:`s_k > 0` means positive). With one positive class the loss is at least the
    cross-entropy :math:`\log(1 + \sum_{j \ne y} e^{s_j - s_y})`, and for any label set it is
    at least the pairwise ranking loss :math:`\log(1 + \sum_{i \in \Omega_p, j \in \Omega_n}
    e^{s_j - s_i})` (tested).

    Args:
        embeddings: ``[N, D]`` features (normalised here).
        labels: ``[N]`` class ids (one positive each) or ``[N, C]`` multi-hot 0/1 (bool or
            integer) targets.
        centers: ``[C, D]`` class / cluster centres (normalised here; the module learns them).
        scale: :math:`\sigma > 0` (default 32: ours, a common cosine-softmax scale; the
            paper's value could not be read).
        ref_embeddings, ref_labels, indices: not supported (``ValueError``).
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    Formula from the abstract, not verified against the paper (see the module docstring).

    Paper: An et al., "Multi-label Cluster Discrimination for Visual Representation
    Learning", arXiv 2407.17331 (ECCV 2024).
    """
    _check_mlcd(scale=scale)
    check_matrix("embeddings", embeddings)
    check_matrix("centers", centers, dim=embeddings.shape[1])
    check_same_device(embeddings=embeddings, labels=labels, centers=centers)
    if ref_embeddings is not None or ref_labels is not None or indices is not None:
        raise ValueError("mlcd compares samples with class centres: ref_embeddings, ref_labels "
                         "and indices= are not supported")
    pos = _multi_hot(labels, embeddings.shape[0], centers.shape[0])
    dt = compute_dtype(embeddings.dtype)
    s = scale * (normalize_rows(embeddings.to(dt)) @ normalize_rows(centers.to(dt)).T)
    per = _log1p_sum_exp(s, ~pos) + _log1p_sum_exp(-s, pos)
    out = reduce(per, reduction)
    if reduction != "none":
        out = out + zero_loss(embeddings, centers)
    return out


@register(
    "mlcd",
    family="classification",
    kind="embeddings",
    paper="Multi-label Cluster Discrimination for Visual Representation Learning",
    arxiv="2407.17331",
    summary="log(1 + sum_neg e^{s_j}) + log(1 + sum_pos e^{-s_i}), s = scale cos(f, w)",
    example_hparams={"num_classes": 4, "embedding_dim": 5},
)
class MLCDLoss(LossModule, function=mlcd_loss,
               check=_check_mlcd | hparams(num_classes=Int(ge=1), embedding_dim=Int(ge=1))):
    """Module form of :func:`mlcd_loss`: owns the class centres (``centers``, an
    ``nn.Parameter [num_classes, embedding_dim]``, standard-normal initialisation)."""

    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("embedding_dim", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
    )
    config: dict[str, Any]

    def configure(self, *, num_classes: int, embedding_dim: int) -> None:
        check = type(self).check
        if check is not None:
            check(num_classes=num_classes, embedding_dim=embedding_dim)
        self.config = {"num_classes": int(num_classes), "embedding_dim": int(embedding_dim)}
        self.centers = nn.Parameter(torch.randn(int(num_classes), int(embedding_dim)))

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        """The loss with this module's centres."""
        return type(self).function(embeddings, labels, self.centers,
                                   ref_embeddings=ref_embeddings, ref_labels=ref_labels,
                                   indices=indices, **self.call_kwargs())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self.config, **self.hparams}.items())


# --------------------------------------------------------------------------------------------
# LDAM for multi-label targets (TransICD)
# --------------------------------------------------------------------------------------------


def _multi_hot_target(logits: Tensor, target: Tensor) -> Tensor:
    """``[N]`` class ids or ``[N, C]`` 0/1 targets (any real or integer dtype, or bool) as a
    ``[N, C]`` float tensor of 0s and 1s in the dtype of ``logits``."""
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    n, c = logits.shape
    if target.ndim == 1 and not target.is_floating_point() and target.dtype != torch.bool:
        if target.shape[0] != n:
            raise ValueError(f"target (class ids) must have shape [{n}], got {tuple(target.shape)}")
        require((target >= 0) & (target < c), lambda: (  # no graph break under compile
            f"target must hold class ids in [0, {c}), got values in "
            f"[{int(target.min())}, {int(target.max())}]"))
        return F.one_hot(target.long(), c).to(logits.dtype)
    if tuple(target.shape) != (n, c):
        raise ValueError(f"target must be [N] class ids or a multi-hot [N, C] = [{n}, {c}] "
                         f"matrix, got shape {tuple(target.shape)}")
    if target.is_complex():
        raise ValueError("multi-hot target must hold 0 or 1 (one column per label)")
    require((target == 0) | (target == 1), "multi-hot target must hold 0 or 1 (one column per "
            "label)")
    return target.to(logits.dtype)


_check_ldam_multilabel = hparams(label_counts=PerClass(ge=0), margin=Real(ge=0))


def ldam_multilabel_loss(
    logits: Tensor,
    target: Tensor,
    *,
    label_counts: Sequence[float] | Tensor,
    margin: float = 3.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""LDAM for multi-label targets: per-label binary cross-entropy on logits from which a
    label-frequency margin is subtracted at the positive labels.

    .. math::
        \Delta_j = \frac{C}{n_j^{1/4}},\qquad
        \ell = \frac1L \sum_{j=1}^{L} \operatorname{BCE}\big(z_j - y_j \Delta_j,\ y_j\big)
        = \frac1L \sum_j \Big[ y_j \operatorname{softplus}(\Delta_j - z_j)
            + (1 - y_j) \operatorname{softplus}(z_j) \Big]

    with :math:`n_j` the training frequency of label :math:`j` (a label never seen, ``0``,
    gets :math:`\Delta_j = C`, as the official code) and :math:`C` = ``margin``. Rare labels
    get larger margins (LDAM's :math:`n^{-1/4}` rule, Cao et al., arXiv 1906.07413, applied
    label-wise). ``margin=0`` is ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Args:
        logits: ``[N, L]`` one score per label.
        target: ``[N, L]`` multi-hot 0/1 (float, integer or bool), or ``[N]`` class ids (one
            positive label per row).
        label_counts: ``[L]`` label frequencies :math:`n_j \ge 0`.
        margin: :math:`C \ge 0` (default 3.0, the official code's ``C``).
        reduction: ``"mean"`` over samples of the mean over labels (= the mean over all
            ``N·L`` entries, as the official training loop), ``"sum"``, ``"none"``
            (``[N]``, each row's mean over labels).

    Paper: Biswas, Pham, Zhang, "TransICD: Transformer Based Code-wise Attention Model for
    Explainable ICD Coding", arXiv 2104.10652 (the formula checked against the official code;
    the paper's text was not read here).
    """
    _check_ldam_multilabel(label_counts=label_counts, margin=margin)
    check_matrix("logits", logits)
    check_same_device(logits=logits, target=target)
    y = _multi_hot_target(logits.to(compute_dtype(logits.dtype)), target)
    z = logits.to(y.dtype)
    counts = torch.as_tensor(label_counts, dtype=z.dtype, device=z.device)
    if counts.ndim != 1 or counts.shape[0] != z.shape[1]:
        raise ValueError(f"label_counts must have one value per label ([{z.shape[1]}]), got "
                         f"shape {tuple(counts.shape)}")
    root = counts.pow(0.25)
    delta = margin / torch.where(root == 0, torch.ones_like(root), root)
    # y is 0/1, so BCE(z - y delta, y) is one softplus per entry; the where (not y * ...)
    # keeps a masked (-inf) negative label at 0 instead of 0 * inf = NaN.
    per = torch.where(y > 0, F.softplus(delta - z), F.softplus(z)).mean(1)
    return reduce(per, reduction)  # an empty batch: 0, still connected to the graph


@register(
    "ldam_multilabel",
    family="classification",
    kind="logits",
    paper="TransICD: Transformer Based Code-wise Attention Model for Explainable ICD Coding",
    arxiv="2104.10652",
    summary="mean_j BCE(z_j - y_j C / n_j^(1/4), y_j): LDAM margins for multi-label targets",
    example_hparams={"label_counts": (40.0, 10.0, 3.0, 1.0)},
)
class LDAMMultilabelLoss(LossModule, function=ldam_multilabel_loss,
                         check=_check_ldam_multilabel):
    """Module form of :func:`ldam_multilabel_loss` (``label_counts`` kept as a buffer)."""

    tensor_hparams = ("label_counts",)
