r"""Collaborative Inner Product (CIP) loss (kind ``embeddings``): the features of a class on
one ray, the classes at least orthogonal to each other, from inner products alone.

Li, Xu, Leng, "Rethinking Loss Design for Large-scale 3D Shape Retrieval", ICCV 2019, arXiv
1906.00546. Added to a softmax cross-entropy on the shape features in the paper; here a
registered loss of its own (combine it with :func:`losslab.combine`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule
from losslab._hparams import Real, hparams
from losslab._ops.pairs import pair_batch
from losslab.registry import register

__all__ = ["CIPLoss", "cip_loss"]


_check_cip = hparams(lam=Real(ge=0))


def cip_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    lam: float = 1.0,
) -> Tensor:
    r"""Collaborative Inner Product loss.

    .. math::
        \mathcal L = \frac{1}{|\mathcal P|} \sum_{(i, j) \in \mathcal P}
        \big(\|x_i\| \|x_j\| - x_i \cdot x_j\big)
        + \frac{\lambda}{|\mathcal N|} \sum_{(i, j) \in \mathcal N} [x_i \cdot x_j]_+

    over the positive pairs :math:`\mathcal P` (same label) and negative pairs
    :math:`\mathcal N` of the batch (or against ``ref_embeddings``, or the pairs of
    ``indices``). The first term is zero iff the two features are collinear and point the same
    way (Cauchy-Schwarz), the second iff they are at least orthogonal: the abstract's "features
    of the same class clustered in a linear subspace, inter-class subspaces at least
    orthogonal", with inner products and norms only (no normalisation of the features, so
    their norms stay free to encode intra-class variation). Each part is averaged over its own
    pairs (an empty part is 0).

    *Formula from the abstract, not verified against the paper*: the paper text could not be
    retrieved here (and no official code was found); the two terms are the abstract's two
    constraints written as the least penalties that vanish exactly on them.

    Args:
        embeddings: ``[N, D]`` un-normalised features; labels: ``[N]``.
        ref_embeddings, ref_labels, indices: the pairs against a reference set, or the listed
            pairs (triplets give their two pairs).
        lam: :math:`\lambda \ge 0`, the weight of the orthogonality term (default 1).

    Returns a scalar (two means over pair sets: no ``reduction``). The loss is homogeneous of
    degree 2 in the features and invariant to rotations of the feature space. A one-class
    batch has its collinearity term only, a batch of distinct labels its orthogonality term
    only (neither is declared degenerate). Paper: Li, Xu, Leng, "Rethinking Loss Design for
    Large-scale 3D Shape Retrieval", arXiv 1906.00546.
    """
    _check_cip(lam=lam)
    b = pair_batch(embeddings, labels, ref_embeddings, ref_labels, indices, metric="dot")
    ip = b.mat
    norm_q = torch.linalg.vector_norm(b.embeddings, dim=1)
    norm_r = norm_q if b.ref is b.embeddings else torch.linalg.vector_norm(b.ref, dim=1)
    gap = norm_q.unsqueeze(1) * norm_r.unsqueeze(0) - ip
    zero = torch.zeros_like(ip)
    n_pos = b.pos.sum().clamp_min(1).to(ip.dtype)
    n_neg = b.neg.sum().clamp_min(1).to(ip.dtype)
    intra = torch.where(b.pos, gap, zero).sum() / n_pos
    inter = torch.where(b.neg, ip.clamp_min(0.0), zero).sum() / n_neg
    return intra + lam * inter + b.zero()


@register(
    "cip",
    family="metric-learning",
    kind="embeddings",
    paper="Rethinking Loss Design for Large-scale 3D Shape Retrieval",
    arxiv="1906.00546",
    summary="mean_pos(|x_i||x_j| - x_i.x_j) + lam mean_neg [x_i.x_j]_+: classes on rays, "
            "at least orthogonal",
    reduction=None,
)
class CIPLoss(LossModule, function=cip_loss, check=_check_cip):
    """Module form of :func:`cip_loss`."""
