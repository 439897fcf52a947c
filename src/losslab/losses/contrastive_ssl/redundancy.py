"""Redundancy-reduction objectives on paired views: Barlow Twins, VICReg and TLDR (Barlow Twins
on k-NN pairs, with its pair builder :func:`knn_pairs`).

Kind ``paired``: ``loss(a[N, D], b[N, D])`` with ``a``, ``b`` the projector outputs of two views
(or, for TLDR, of a sample and one of its input-space neighbours). These losses are statistics
of the whole batch (per-dimension means, variances and correlations), so they are set-level:
no ``reduction``; they need at least 2 rows. The embeddings are not L2-normalised (the papers
standardise or whiten per dimension instead). fp16/bf16 inputs are computed in float32 and the
loss is returned in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule
from losslab._hparams import Int, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.distances import knn
from losslab.registry import register

__all__ = [
    "BarlowTwinsLoss",
    "TLDRLoss",
    "VICRegLoss",
    "barlow_twins_loss",
    "cross_correlation",
    "knn_pairs",
    "tldr_loss",
    "vicreg_loss",
]


def _batch(a: Tensor, b: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    a, b = prepare_paired(a, b, normalize=False)
    if a.shape[0] < 2:
        raise ValueError(f"{loss} needs at least 2 rows in a and b (it uses per-dimension "
                         f"batch statistics), got {a.shape[0]}")
    return a, b


def _standardize(z: Tensor, eps: float) -> Tensor:
    """Per-dimension standardisation over the batch with the biased variance plus ``eps``
    (``BatchNorm1d(affine=False)`` in training mode, as the official Barlow Twins code)."""
    centred = z - z.mean(0)
    return centred / torch.sqrt(centred.pow(2).mean(0) + eps)


def cross_correlation(a: Tensor, b: Tensor, *, eps: float = 1e-5) -> Tensor:
    """The ``[D, D]`` cross-correlation matrix of Barlow Twins,
    :math:`C_{ij} = \\frac1N \\sum_b \\hat a_{bi} \\hat b_{bj}` of the batch-standardised views
    (``eps`` inside the square root of the biased variance)."""
    return _standardize(a, eps).t() @ _standardize(b, eps) / a.shape[0]


def _barlow(c: Tensor, lam: float) -> Tensor:
    diag = c.diagonal()
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lam * off


_check_barlow = hparams(lam=Real(ge=0), eps=Real(ge=0))


def barlow_twins_loss(a: Tensor, b: Tensor, *, lam: float = 5e-3, eps: float = 1e-5) -> Tensor:
    r"""Barlow Twins: the cross-correlation of the two views should be the identity.

    .. math::
        \mathcal{L} = \sum_i (1 - C_{ii})^2 + \lambda \sum_i \sum_{j \ne i} C_{ij}^2, \quad
        C_{ij} = \frac{1}{N} \sum_b \hat a_{b,i} \hat b_{b,j}

    with :math:`\hat a`, :math:`\hat b` standardised per dimension over the batch. The
    invariance term makes each dimension agree across views; the redundancy-reduction term
    decorrelates different dimensions (no negatives, no collapse to a constant).

    Standardisation is the official code's ``BatchNorm1d(affine=False)``: biased variance plus
    ``eps``. (The paper's pseudocode divides by ``z.std(0)``, the unbiased estimate, which
    scales ``C`` by ``(N - 1) / N``.)

    Args:
        a, b: ``[N, D]`` projector outputs of the two views (``N >= 2``).
        lam: :math:`\lambda`, weight of the off-diagonal term (default 5e-3, the paper's).
        eps: added to the variance (default 1e-5, BatchNorm's).

    Returns:
        The scalar loss (set-level: no reduction).

    Paper: Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", arXiv 2103.03230. Equal to lightly's ``BarlowTwinsLoss`` (tests).
    """
    _check_barlow(lam=lam, eps=eps)
    a, b = _batch(a, b, "barlow_twins")
    return _barlow(cross_correlation(a, b, eps=eps), lam)


@register(
    "barlow_twins", family="contrastive-ssl", kind="paired",
    paper="Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
    arxiv="2103.03230",
    summary="sum_i (1 - C_ii)^2 + lam sum_{i != j} C_ij^2, C = cross-correlation of the "
    "batch-standardised views", peers=("lightly.loss.BarlowTwinsLoss",), reduction=None,
)
class BarlowTwinsLoss(LossModule, function=barlow_twins_loss, check=_check_barlow):
    """Module form of :func:`barlow_twins_loss`."""


# --------------------------------------------------------------------------------------------
# VICReg
# --------------------------------------------------------------------------------------------

_check_vicreg = hparams(lam=Real(ge=0), mu=Real(ge=0), nu=Real(ge=0), gamma=Real(gt=0),
                        eps=Real(gt=0))


def _variance_term(z: Tensor, gamma: float, eps: float) -> Tensor:
    std = torch.sqrt(z.var(0) + eps)
    return torch.relu(gamma - std).mean()


def _covariance_term(z: Tensor) -> Tensor:
    n, d = z.shape
    centred = z - z.mean(0)
    cov = centred.t() @ centred / (n - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


def vicreg_loss(
    a: Tensor,
    b: Tensor,
    *,
    lam: float = 25.0,
    mu: float = 25.0,
    nu: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    r"""VICReg: variance-invariance-covariance regularisation.

    .. math::
        \mathcal{L} = \lambda\, s(Z, Z') + \mu\, \tfrac12 \big(v(Z) + v(Z')\big)
            + \nu \big(c(Z) + c(Z')\big)

    with the invariance :math:`s(Z, Z') = \frac{1}{ND} \sum_b \|z_b - z'_b\|^2` (the mean
    squared error), the variance hinge :math:`v(Z) = \frac1D \sum_j \max(0, \gamma -
    \sqrt{\mathrm{Var}(z^j) + \epsilon})` and the covariance :math:`c(Z) = \frac1D
    \sum_{i \ne j} C(Z)_{ij}^2` (unbiased covariances). The variance term keeps every
    dimension's spread at :math:`\gamma` (no collapse), the covariance term decorrelates.

    The paper writes :math:`\mu (v(Z) + v(Z'))`; the official code (whose runs give the
    paper's results with :math:`\lambda = \mu = 25`, :math:`\nu = 1`) averages the two
    variance terms, and this function follows the code (lightly does too).

    Args:
        a, b: ``[N, D]`` expander outputs of the two views (``N >= 2``).
        lam, mu, nu: the weights :math:`\lambda, \mu, \nu` (defaults 25, 25, 1: the paper's).
        gamma: the target standard deviation (default 1). eps: :math:`\epsilon` (1e-4).

    Returns:
        The scalar loss (set-level: no reduction).

    Paper: Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", arXiv 2105.04906. Equal to lightly's ``VICRegLoss`` (tests).
    """
    _check_vicreg(lam=lam, mu=mu, nu=nu, gamma=gamma, eps=eps)
    a, b = _batch(a, b, "vicreg")
    invariance = (a - b).pow(2).mean()
    variance = (_variance_term(a, gamma, eps) + _variance_term(b, gamma, eps)) / 2
    covariance = _covariance_term(a) + _covariance_term(b)
    return lam * invariance + mu * variance + nu * covariance


@register(
    "vicreg", family="contrastive-ssl", kind="paired",
    paper="VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning",
    arxiv="2105.04906",
    summary="lam MSE(a, b) + mu (v(a) + v(b))/2 + nu (c(a) + c(b)); v = mean relu(gamma - std), "
    "c = off-diagonal cov^2 / D", peers=("lightly.loss.VICRegLoss",), reduction=None,
)
class VICRegLoss(LossModule, function=vicreg_loss, check=_check_vicreg):
    """Module form of :func:`vicreg_loss`."""


# --------------------------------------------------------------------------------------------
# TLDR
# --------------------------------------------------------------------------------------------


def knn_pairs(x: Tensor, k: int = 5, *, generator: torch.Generator | None = None,
              chunk_size: int | None = None) -> Tensor:
    """TLDR's positive pairs: for every row of ``x`` one of its ``k`` nearest neighbours.

    The neighbours are the ``k`` nearest other rows in Euclidean distance (the row itself
    excluded), computed once on the input features (TLDR builds the graph offline, then draws
    a neighbour uniformly at random for every sample of every batch). Returns ``[N]`` row
    indices ``j`` so that ``(x[i], x[j])`` is a positive pair; call it again (or index a kept
    ``knn`` graph) for fresh draws.

    Args:
        x: ``[N, F]`` input features (``N >= k + 1``).
        k: neighbours per sample (default 5, the TLDR code's ``n_neighbors``).
        generator: random generator of the draw (default: torch's global one).
        chunk_size: row chunk of the neighbour search (:func:`losslab.distances.knn`).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 2:
        raise ValueError(f"x must be a float tensor [N, F], got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    Int(ge=1).check("k", k)
    if x.shape[0] < k + 1:
        raise ValueError(f"k must be at most N - 1 = {x.shape[0] - 1} (the other rows), got {k}")
    _, neighbours = knn(x.detach(), k=k, exclude_self=True, chunk_size=chunk_size)
    pick = torch.randint(0, k, (x.shape[0],), generator=generator,
                         device=generator.device if generator is not None else x.device)
    return neighbours.gather(1, pick.to(neighbours.device).unsqueeze(1)).squeeze(1)


_check_tldr = hparams(lam=Real(ge=0), loss_scale=Real(gt=0), eps=Real(ge=0))


def tldr_loss(
    a: Tensor,
    b: Tensor,
    *,
    lam: float = 3.9e-3,
    loss_scale: float = 1.0 / 32,
    eps: float = 1e-5,
) -> Tensor:
    r"""TLDR: the Barlow Twins loss between the projections of k-NN pairs.

    .. math::
        \mathcal{L} = s \Big(\sum_i (1 - C_{ii})^2 + \lambda \sum_{i \ne j} C_{ij}^2\Big)

    where row ``i`` of ``a`` is the projection of sample :math:`x_i` and row ``i`` of ``b``
    that of a neighbour :math:`x_j`, :math:`j \in \mathrm{kNN}(x_i)` in input space (built
    by :func:`knn_pairs`): the learned low-dimensional encoder is invariant to the local
    neighbourhood instead of to image augmentations, and redundancy reduction replaces
    negatives. ``C`` is the cross-correlation of the batch-standardised projections, as in
    :func:`barlow_twins_loss`.

    Args:
        a, b: ``[N, D]`` projector outputs of the samples and of their drawn neighbours.
        lam: :math:`\lambda` (default 3.9e-3, TLDR's). loss_scale: :math:`s` (default 1/32,
            TLDR's ``scale_loss``). eps: BatchNorm's variance epsilon (1e-5).

    Returns:
        The scalar loss (set-level: no reduction).

    Paper: Kalantidis, Lassance, Almazán, Larlus, "TLDR: Twin Learning for Dimensionality
    Reduction", arXiv 2110.09455 (defaults from the official code, naver/tldr).
    """
    _check_tldr(lam=lam, loss_scale=loss_scale, eps=eps)
    a, b = _batch(a, b, "tldr")
    return loss_scale * _barlow(cross_correlation(a, b, eps=eps), lam)


@register(
    "tldr", family="contrastive-ssl", kind="paired",
    paper="TLDR: Twin Learning for Dimensionality Reduction", arxiv="2110.09455",
    summary="s * Barlow Twins(a, b) with b the projections of input-space k-NN of a "
    "(knn_pairs)", peers=("lightly.loss.BarlowTwinsLoss",), reduction=None,
)
class TLDRLoss(LossModule, function=tldr_loss, check=_check_tldr):
    """Module form of :func:`tldr_loss`; build the pairs with :func:`knn_pairs`."""
