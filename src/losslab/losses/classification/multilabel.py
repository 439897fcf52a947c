r"""Multi-label cluster discrimination (family ``classification``, kind ``embeddings``): a
multi-label softmax over cosine similarities to class (cluster) centres whose positive and
negative classes contribute separate terms.

Formula from the abstract, not verified against the paper: the abstract of MLCD fixes "a
multi-label classification loss which separates losses from positive classes and negative
classes"; we implement it as the zero-bounded log-sum-exp pair on scaled cosines (the form
that separates the two sets; Su et al., "ZLPR", arXiv 2208.02955). The paper's exact terms
(a margin, its scale) could not be read here.
"""

from __future__ import annotations

import inspect
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
    zero_loss,
)
from losslab._hparams import Int, Real, hparams
from losslab.distances import normalize_rows
from losslab.registry import register

__all__ = ["MLCDLoss", "mlcd_loss"]


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
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}) (the number of centres), "
                             f"got values in [{int(labels.min())}, {int(labels.max())}]")
        return F.one_hot(labels.long(), num_classes).bool()
    if labels.ndim == 2:
        if tuple(labels.shape) != (n, num_classes):
            raise ValueError(f"multi-hot labels must have shape [{n}, {num_classes}], got "
                             f"{tuple(labels.shape)}")
        if labels.dtype != torch.bool and bool(((labels != 0) & (labels != 1)).any()):
            raise ValueError("multi-hot labels must hold 0 or 1")
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
