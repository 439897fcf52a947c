"""Label-free quality metrics of learned representations: RankMe (effective rank), and the
alignment and uniformity of Wang & Isola. Results are Python floats (no gradient).

RankMe tracks dimensional collapse during self-supervised training without labels; alignment
and uniformity are the two properties the contrastive losses optimise (the losses of the same
names, :func:`losslab.losses.contrastive_ssl.alignment_loss` and ``uniformity_loss``, are their
differentiable forms).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["alignment", "rankme", "uniformity"]


def _matrix(name: str, x: object, *, min_rows: int = 1) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 2:
        raise ValueError(f"{name} must be a float tensor [N, D], got "
                         f"{getattr(x, 'shape', type(x).__name__)}"
                         f"{'' if not isinstance(x, Tensor) else f' of dtype {x.dtype}'}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got {x.shape[0]}")
    return x.detach().to(torch.float64)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def rankme(embeddings: Tensor, *, eps: float = 1e-7) -> float:
    r"""RankMe: the effective rank of an embedding matrix.

    .. math::
        \mathrm{RankMe}(Z) = \exp\Big(-\sum_{k=1}^{\min(N, D)} p_k \log p_k\Big), \quad
        p_k = \frac{\sigma_k(Z)}{\|\sigma(Z)\|_1} + \epsilon

    with :math:`\sigma_k` the singular values of ``Z``. It lies in ``[1, min(N, D)]`` (up to
    the :math:`\epsilon` smoothing): ``r`` for ``r`` equal non-zero singular values, about 1
    for a collapsed embedding. The paper computes it on about 25k embeddings (at least as many
    rows as dimensions) and finds it correlates with downstream accuracy across
    hyperparameters of the same method.

    Args:
        embeddings: ``[N, D]`` (not centred, not normalised: as the paper).
        eps: :math:`\epsilon` (default 1e-7, the paper's).

    Reference: Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the downstream
    performance of pretrained self-supervised representations by their rank", arXiv
    2210.02885.
    """
    z = _matrix("embeddings", embeddings)
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps >= 0
            and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if float(total) == 0.0:
        return 1.0  # the zero matrix: fully collapsed
    p = s / total + eps
    return float(torch.exp(-torch.xlogy(p, p).sum()))  # 0 log 0 = 0 (eps = 0)


def alignment(a: Tensor, b: Tensor, *, alpha: float = 2.0) -> float:
    r"""Alignment of positive pairs: :math:`\mathbb{E}_i \|f(x_i) - f(y_i)\|_2^{\alpha}` of the
    L2-normalised embeddings (lower is better; 0 when the two views coincide, at most
    :math:`2^\alpha`).

    Args:
        a, b: ``[N, D]`` embeddings of the two views (row ``i`` of ``a`` pairs with row ``i``
            of ``b``). alpha: the exponent (default 2, the paper's).

    Reference: Wang & Isola, "Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere", arXiv 2005.10242.
    """
    x, y = _matrix("a", a), _matrix("b", b)
    if y.shape != x.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0
            and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    d = (_unit(x) - _unit(y)).norm(dim=1)
    return float(d.pow(alpha).mean())


def uniformity(embeddings: Tensor, *, t: float = 2.0, chunk_size: int = 1024) -> float:
    r"""Uniformity: :math:`\log \mathbb{E}_{i < j} \exp(-t \|f_i - f_j\|_2^2)` of the
    L2-normalised embeddings (lower is more uniform on the hypersphere; 0 for a collapsed
    set).

    Computed in row chunks with a running log-sum-exp: memory ``chunk_size x N``.

    Args:
        embeddings: ``[N, D]`` (``N >= 2``). t: the kernel scale (default 2, the paper's).
        chunk_size: rows per chunk.

    Reference: Wang & Isola, arXiv 2005.10242.
    """
    z = _unit(_matrix("embeddings", embeddings, min_rows=2))
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0
            and math.isfinite(t)):
        raise ValueError(f"t must be a finite number > 0, got {t!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    n = z.shape[0]
    parts = []
    for start in range(0, n, chunk_size):
        rows = z[start:start + chunk_size]
        sq = (2 - 2 * rows @ z.t()).clamp_min(0)
        i = torch.arange(start, start + rows.shape[0]).unsqueeze(1)
        j = torch.arange(n).unsqueeze(0)
        parts.append(torch.logsumexp((-t * sq).masked_fill(j <= i, float("-inf")).flatten(), 0))
    return float(torch.logsumexp(torch.stack(parts), 0) - math.log(n * (n - 1) / 2))
