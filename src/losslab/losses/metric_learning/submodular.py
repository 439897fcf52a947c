r"""SCoRe: submodular combinatorial losses over the class-wise sets of a batch (kind
``embeddings``).

Majee, Kothawade, Killamsetty, Iyer, "SCoRe: Submodular Combinatorial Representation
Learning", ICML 2024, arXiv 2310.00165. The batch is the ground set :math:`V` (its ``N``
embeddings), partitioned by the labels into the class sets :math:`A_1, \dots, A_K`; a
submodular set function :math:`f` is evaluated on a similarity kernel :math:`S` of the
embeddings, and the loss is one of the two information measures of the partition:

* **Total Information** :math:`L_{S_f} = \sum_k f(A_k)`;
* **Total Correlation** :math:`L_{C_f} = \sum_k f(A_k) - f(V)` (:math:`V = \cup_k A_k`; the
  information the class sets share, zero when they are independent under :math:`f`).

The three instances (the standard set functions of submodlib / Iyer et al., "Generalized
Submodular Information Measures", arXiv 2006.15412, with :math:`S` over the whole batch):

* Facility Location (``score_fl``): :math:`f(A) = \sum_{i \in V} \max_{j \in A} S_{ij}`;
* Graph Cut (``score_gc``): :math:`f(A) = \sum_{i \in A} \sum_{j \in V} S_{ij} -
  \lambda \sum_{i, j \in A} S_{ij}`;
* Log-Determinant (``score_logdet``): :math:`f(A) = \log\det(S_A + \lambda I_{|A|})`.

Source of the formulas: the abstract and the paper's summary name the two measures (Total
Information, Total Correlation) and the three instances; the text of the paper's equations
could not be retrieved here, so the set functions are the standard ones of the authors' library
and the two measures their standard definitions, checked against the official code
(``amajee11us/SCoRe``: the graph-cut total correlation is :math:`\lambda` times the inter-class
similarity; the log-det objectives add :math:`0.5 I` to the class kernels and subtract the
ground-set log-det; cosine kernels of the normalised features). The official code's constant
scale factors (``temperature / base_temperature``, a loss weight) are not part of the loss.
*Formula from the abstract and the official code, not verified against the paper text.*

Every loss is computed with ``[N, N]`` matrix ops, without a loop over the classes (so it
traces under ``torch.compile``): the per-class maxima of Facility Location by one
``scatter_reduce`` keyed by each class's first member; the class log-determinants as one
log-determinant of the block-diagonal matrix :math:`S \circ P + \lambda I` (``P``: same-class
mask), whose determinant is the product of the class blocks' determinants.

The value is divided by ``N`` (the official code averages over the batch's anchors), so that
its scale does not grow with the batch: ``N *`` the loss is the set-function expression above.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losslab._core import LossModule, zero_loss
from losslab._hparams import Choice, Real, hparams
from losslab._ops.pairs import validate_batch
from losslab.distances import cosine_similarity, squared_euclidean
from losslab.registry import register

__all__ = [
    "FORMS",
    "KERNELS",
    "ScoreFLLoss",
    "ScoreGCLoss",
    "ScoreLogDetLoss",
    "score_fl_loss",
    "score_gc_loss",
    "score_logdet_loss",
    "similarity_kernel",
]

SCORE = "SCoRe: Submodular Combinatorial Representation Learning"
Form = Literal["total_correlation", "total_information"]
FORMS: tuple[str, ...] = ("total_correlation", "total_information")
Kernel = Literal["cosine", "rbf"]
KERNELS: tuple[str, ...] = ("cosine", "rbf")


def similarity_kernel(x: Tensor, *, kernel: str = "cosine", bandwidth: float = 1.0) -> Tensor:
    r"""The ``[N, N]`` similarity kernel of the rows of ``x``: ``"cosine"``
    :math:`S_{ij} = \hat x_i \cdot \hat x_j` (the official code's kernel; PSD, in [-1, 1]) or
    ``"rbf"`` :math:`S_{ij} = \exp(-\|x_i - x_j\|^2 / (2 \sigma^2))` (PD, in (0, 1]: the
    graph-cut and facility-location functions are submodular on a non-negative kernel)."""
    if kernel == "cosine":
        return cosine_similarity(x)
    return torch.exp(squared_euclidean(x) / (-2.0 * bandwidth * bandwidth))


def _setup(embeddings: Tensor, labels: Tensor, ref_embeddings: Tensor | None,
           ref_labels: Tensor | None, indices: object, name: str
           ) -> tuple[Tensor, Tensor, Tensor]:
    """Validated ``(x, labels, same)``: compute-dtype embeddings, int64 labels and the ``[N, N]``
    same-class mask (diagonal included)."""
    if ref_embeddings is not None or ref_labels is not None or indices is not None:
        raise ValueError(f"{name} is a set function of the batch's class partition: "
                         "ref_embeddings, ref_labels and indices= are not supported "
                         "(concatenate a reference set into the batch instead)")
    vb = validate_batch(embeddings, labels, None, None)
    same = vb.labels.unsqueeze(1) == vb.labels.unsqueeze(0)
    return vb.embeddings, vb.labels, same


def _finish(total: Tensor, x: Tensor) -> Tensor:
    """``total / N`` plus a zero connected to ``x`` (NaN when ``x`` holds a NaN)."""
    n = x.shape[0]
    return total / max(n, 1) + zero_loss(x)


_check_fl = hparams(form=Choice(*FORMS), kernel=Choice(*KERNELS), bandwidth=Real(gt=0))


def score_fl_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    form: Form = "total_correlation",
    kernel: Kernel = "cosine",
    bandwidth: float = 1.0,
) -> Tensor:
    r"""SCoRe-FL: the Facility-Location information of the class sets of the batch.

    .. math::
        L_{S_f} = \frac1N \sum_k \sum_{i \in V} \max_{j \in A_k} S_{ij}, \qquad
        L_{C_f} = L_{S_f} - \frac1N \sum_{i \in V} \max_{j \in V} S_{ij}

    Minimising it lowers, for every sample, its largest similarity to each other class (the
    term of its own class is its self-similarity). With the cosine kernel
    :math:`\max_{j \in V} S_{ij} = S_{ii} = 1`, so :math:`L_{S_f} = L_{C_f} + 1`: the two
    forms have the same gradient (the official results table lists FL once for both).
    Per sample :math:`i` the loss sums, over the *other* classes, its largest similarity to
    each of them; the official ``FacilityLocation`` objective instead takes, per sample, one
    (soft) maximum over all other-class samples together -- a different function, not the
    facility-location information written above.

    Args:
        embeddings: ``[N, D]``; labels: ``[N]`` integer class ids (the partition).
        ref_embeddings, ref_labels, indices: not supported (``ValueError``).
        form: ``"total_correlation"`` (default) or ``"total_information"``.
        kernel: ``"cosine"`` (default, the official code's) or ``"rbf"``.
        bandwidth: :math:`\sigma > 0` of the ``"rbf"`` kernel (default 1).

    Returns a scalar (a set function: no ``reduction``); see the module docstring for the
    ``1/N`` scale. A one-class batch is an exact zero in the total-correlation form (the class
    set is the ground set). Half inputs are computed in float32. Paper: Majee et al., "SCoRe:
    Submodular Combinatorial Representation Learning", arXiv 2310.00165 (formula from the
    abstract and the official code, not verified against the paper text).
    """
    _check_fl(form=form, kernel=kernel, bandwidth=bandwidth)
    x, _, same = _setup(embeddings, labels, ref_embeddings, ref_labels, indices, "score_fl")
    n = x.shape[0]
    s = similarity_kernel(x, kernel=kernel, bandwidth=bandwidth)
    # rep[j]: the first member of j's class (argmax of a bool row = its first True); the
    # column rep of G holds the row's maximum over that class
    rep = same.to(torch.uint8).argmax(dim=1)
    g = torch.full_like(s, float("-inf")).scatter_reduce(
        1, rep.unsqueeze(0).expand(n, n), s, reduce="amax", include_self=True)
    is_rep = rep == torch.arange(n, device=rep.device)
    per_row = torch.where(is_rep.unsqueeze(0), g, torch.zeros_like(g)).sum(1)
    if form == "total_correlation":
        per_row = per_row - s.amax(dim=1)
    return _finish(per_row.sum(), x)


@register(
    "score_fl",
    family="metric-learning",
    kind="embeddings",
    paper=SCORE,
    arxiv="2310.00165",
    summary="SCoRe facility location: sum_k sum_i max_{j in A_k} S_ij (- f(V)) over the class "
            "sets, / N",
    reduction=None,
    degenerate=("one_class",),
)
class ScoreFLLoss(LossModule, function=score_fl_loss, check=_check_fl):
    """Module form of :func:`score_fl_loss`."""


_check_gc = hparams(form=Choice(*FORMS), lam=Real(ge=0), kernel=Choice(*KERNELS),
                    bandwidth=Real(gt=0))


def score_gc_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    form: Form = "total_correlation",
    lam: float = 0.5,
    kernel: Kernel = "cosine",
    bandwidth: float = 1.0,
) -> Tensor:
    r"""SCoRe-GC: the Graph-Cut information of the class sets of the batch.

    .. math::
        L_{S_f} = \frac1N \Big(\sum_{i, j \in V} S_{ij} - \lambda \sum_k
        \sum_{i, j \in A_k} S_{ij}\Big), \qquad
        L_{C_f} = \frac{\lambda}{N} \sum_k \sum_{i \in A_k} \sum_{j \in V \setminus A_k} S_{ij}

    (the sums over :math:`A_k \times A_k` include :math:`i = j`). The total correlation is the
    inter-class similarity alone; the total information also pulls every class together (with
    weight :math:`\lambda - 1` on the intra-class similarities) and pushes all pairs apart.

    Args:
        embeddings: ``[N, D]``; labels: ``[N]`` integer class ids (the partition).
        ref_embeddings, ref_labels, indices: not supported (``ValueError``).
        form: ``"total_correlation"`` (default) or ``"total_information"``.
        lam: :math:`\lambda \ge 0` (default 0.5, the official code's ``lamda``; the graph-cut
            function is monotone for :math:`\lambda \le 1/2` on a non-negative kernel).
        kernel: ``"cosine"`` (default) or ``"rbf"``; bandwidth: :math:`\sigma > 0` of the RBF.

    Returns a scalar (a set function: no ``reduction``), scaled by ``1/N``. A one-class batch
    is an exact zero in the total-correlation form. Paper: Majee et al., "SCoRe: Submodular
    Combinatorial Representation Learning", arXiv 2310.00165 (formula from the abstract and the
    official code, not verified against the paper text).
    """
    _check_gc(form=form, lam=lam, kernel=kernel, bandwidth=bandwidth)
    x, _, same = _setup(embeddings, labels, ref_embeddings, ref_labels, indices, "score_gc")
    s = similarity_kernel(x, kernel=kernel, bandwidth=bandwidth)
    zero = torch.zeros_like(s)
    if form == "total_correlation":
        total = lam * torch.where(same, zero, s).sum()
    else:
        total = s.sum() - lam * torch.where(same, s, zero).sum()
    return _finish(total, x)


@register(
    "score_gc",
    family="metric-learning",
    kind="embeddings",
    paper=SCORE,
    arxiv="2310.00165",
    summary="SCoRe graph cut: lam * inter-class similarity (total correlation) or sum S - lam "
            "* intra (total information), / N",
    reduction=None,
    degenerate=("one_class",),
)
class ScoreGCLoss(LossModule, function=score_gc_loss, check=_check_gc):
    """Module form of :func:`score_gc_loss`."""


_check_logdet = hparams(form=Choice(*FORMS), lam=Real(gt=0), kernel=Choice(*KERNELS),
                        bandwidth=Real(gt=0))


def score_logdet_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    form: Form = "total_correlation",
    lam: float = 0.5,
    kernel: Kernel = "cosine",
    bandwidth: float = 1.0,
) -> Tensor:
    r"""SCoRe-LogDet: the Log-Determinant information of the class sets of the batch.

    .. math::
        L_{S_f} = \frac1N \sum_k \log\det(S_{A_k} + \lambda I), \qquad
        L_{C_f} = L_{S_f} - \frac1N \log\det(S_V + \lambda I)

    The total-correlation form is the official detection code's ``LogDet`` objective
    (``SCoRe_Det``: normalised features, ``0.5 I``, the class log-dets minus the ground set's)
    times ``1/N``. Small class log-determinants mean compact classes (near rank-one class
    kernels); the
    subtracted ground-set term rewards a diverse batch. By Fischer's inequality
    :math:`L_{C_f} \ge 0` for every PSD kernel, with equality for one class. Computed as
    :math:`\log\det(S \circ P + \lambda I) = \sum_k \log\det(S_{A_k} + \lambda I)`
    (``P`` the same-class mask: a block-diagonal matrix up to a permutation), one
    ``[N, N]`` log-determinant per term.

    Args:
        embeddings: ``[N, D]``; labels: ``[N]`` integer class ids (the partition).
        ref_embeddings, ref_labels, indices: not supported (``ValueError``).
        form: ``"total_correlation"`` (default, the official code's ``is_cf=True``) or
            ``"total_information"``.
        lam: :math:`\lambda > 0` added to the diagonal (default 0.5, the official code's
            ``0.5 * I``); it keeps the matrices positive definite.
        kernel: ``"cosine"`` (default; the official code uses the features' inner products)
            or ``"rbf"``; bandwidth: :math:`\sigma > 0` of the RBF.

    Returns a scalar (a set function: no ``reduction``), scaled by ``1/N``. A one-class batch
    is an exact zero in the total-correlation form. Paper: Majee et al., "SCoRe: Submodular
    Combinatorial Representation Learning", arXiv 2310.00165 (formula from the abstract and the
    official code, not verified against the paper text).
    """
    _check_logdet(form=form, lam=lam, kernel=kernel, bandwidth=bandwidth)
    x, _, same = _setup(embeddings, labels, ref_embeddings, ref_labels, indices,
                        "score_logdet")
    n = x.shape[0]
    s = similarity_kernel(x, kernel=kernel, bandwidth=bandwidth)
    eye = torch.eye(n, dtype=s.dtype, device=s.device)
    blocks = torch.where(same, s, torch.zeros_like(s)) + lam * eye
    total = torch.linalg.slogdet(blocks).logabsdet
    if form == "total_correlation":
        total = total - torch.linalg.slogdet(s + lam * eye).logabsdet
    return _finish(total, x)


@register(
    "score_logdet",
    family="metric-learning",
    kind="embeddings",
    paper=SCORE,
    arxiv="2310.00165",
    summary="SCoRe log-det: sum_k logdet(S_Ak + lam I) (- logdet(S_V + lam I)), / N",
    reduction=None,
    degenerate=("one_class",),
)
class ScoreLogDetLoss(LossModule, function=score_logdet_loss, check=_check_logdet):
    """Module form of :func:`score_logdet_loss`."""
