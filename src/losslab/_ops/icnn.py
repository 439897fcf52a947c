"""The ICNN score (inter-/intra-class nearest neighbours) of SuSana Distancia, from neighbour
windows: the math shared by the ICNN loss (:func:`losslab.losses.fewshot.icnn_loss`) and the
evaluation metric (:func:`losslab.metrics.icnn.icnn_score`).

Mendez-Ruiz et al., "SuSana Distancia is all you need: Enforcing class separability in metric
learning via two novel distance-based loss functions for few-shot image classification",
arXiv 2305.09062. The algorithm is the released one (``modified_score`` of the authors' code);
``core-papers-spec.md`` §1.4 of the losslab research notes describes it step by step.

Given, for each origin point i, its nearest target points ("window", ascending distances
``d_i1 <= ... <= d_iw``) and whether each neighbour has the same class (``s_ij``):

* ``delta_i`` = distance to the nearest other-class neighbour in the window (``inf`` if none);
* on the first ``k`` neighbours, ``r_ij = d_ij / (delta_i + 1e-7)``, normalised per point by
  ``max(1, max_j r_ij)``;
* same-class term ``lambda_sc = 1 - mean_{i with a same-class nb} (sum_j s_ij r_ij / n_same_i)``;
* other-class term: ``e_ij = d_ij (1 - s_ij) / max_{i,j} d_ij (1 - s_ij)`` (a *global* max),
  ``lambda_dc = |mean_{i with an other-class nb} (sum_j e_ij / n_other_i) + c|`` with ``c = -1``
  when no point has any other-class neighbour (then ``lambda_dc = 1``), else 0;
* ``gamma`` = mean fraction of same-class neighbours among the first ``k`` (forced to 1 by the
  released code whenever ``k`` had to be reduced because the target set is small);
* ``score = ((lambda_sc + lambda_dc) / 2 + gamma) / 2`` in ``[0.25, 1]`` (at least 1/4: a point
  with no same-class neighbour has ``lambda_sc = 1``).
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor

from losslab._core import require

__all__ = ["icnn_effective_k", "icnn_score_from_neighbours"]

_EPS = 1e-7  # the released code's epsilon in the score


@overload
def icnn_effective_k(k: int, n_targets: int) -> tuple[int, bool]: ...
@overload
def icnn_effective_k(k: int, n_targets: Tensor) -> tuple[Tensor, Tensor]: ...
def icnn_effective_k(k: int, n_targets: int | Tensor) -> tuple[int, bool] | tuple[Tensor, Tensor]:
    """``(k_eff, reduced)``: the released code uses ``k = n_targets - 2`` when ``k + 2 >= n``.

    ``n_targets`` may be a 0-d integer tensor (a data-dependent number of targets, under
    ``torch.compile``): then ``k_eff`` and ``reduced`` are 0-d tensors, and the check of at
    least 3 targets is a :func:`losslab._require.require` (an asynchronous assert under
    compile, the same ``ValueError`` eagerly).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(n_targets, Tensor):
        n = n_targets
        require(n >= 3, lambda: _too_few_targets(int(n)))
        reduced = n <= k + 2
        return torch.where(reduced, n - 2, k), reduced
    if n_targets < 3:
        raise ValueError(_too_few_targets(n_targets))
    if k + 2 >= n_targets:
        return n_targets - 2, True
    return k, False


def _too_few_targets(n_targets: int) -> str:
    return (
        f"the ICNN score needs at least 3 target points (k >= 1 neighbours after the "
        f"released code's k = n - 2 reduction), got {n_targets}"
    )


def icnn_score_from_neighbours(
    distances: Tensor, same_class: Tensor, k: int | Tensor, *,
    gamma_one: bool | Tensor = False, width: Tensor | None = None,
) -> Tensor:
    """ICNN score from neighbour windows (differentiable through ``distances``).

    Args:
        distances: ``[n, w]`` ascending distances of each origin point to its ``w >= k``
            nearest target points.
        same_class: ``[n, w]`` bool, neighbour has the origin point's class.
        k: number of neighbours used by the lambda and gamma terms (``w`` may be larger: the
            nearest other-class distance ``delta`` is searched over the whole window). When
            the window is narrower than ``k``, the released code uses the ``w`` columns it has
            but still divides gamma's count by ``k``; so does this function. ``k`` may be a
            0-d integer tensor ``>= 1`` (a data-dependent k, under ``torch.compile``; not
            checked): then the lambda and gamma terms take all ``w`` columns with those past
            the first ``k`` masked, and gamma's count is divided by ``k`` -- the value and
            gradient of the int ``k``.
        gamma_one: force ``gamma = 1`` (the released code does so when ``k`` was reduced); a
            0-d bool tensor forces it where true.
        width: ``None`` (every column is a neighbour), or a 0-d integer tensor, the number of
            real columns: the window is the first ``width`` columns and the others are
            padding, neither same- nor other-class, in no maximum, their distances unused (they
            may be ``inf``) (``torch.compile``'s static-width form of a data-dependent window;
            the score of the first ``width`` columns, value and gradient).
    """
    if distances.shape != same_class.shape or distances.ndim != 2:
        raise ValueError(
            f"distances and same_class must be [n, w] of one shape, got "
            f"{tuple(distances.shape)} and {tuple(same_class.shape)}"
        )
    if (not isinstance(k, Tensor) and k < 1) or distances.shape[1] < 1:
        raise ValueError(f"k and the window must be >= 1, got k={k}, window={distances.shape[1]}")
    other = ~same_class
    real_k: Tensor | None = None
    if width is not None:
        real = torch.arange(distances.shape[1], device=distances.device) < width
        same_class, other = same_class & real, other & real
        # a padded column's distance (possibly inf) enters no sum (inf * 0 would be nan)
        distances = distances.where(real, 0.0)
        real_k = real if isinstance(k, Tensor) else real[:k]
    inf = torch.full_like(distances, float("inf"))
    delta = torch.where(other, distances, inf).min(dim=1).values

    if isinstance(k, Tensor):  # all columns, those past the first k masked
        in_k = torch.arange(distances.shape[1], device=distances.device) < k
        real_k = in_k if real_k is None else real_k & in_k
        d_k, s_k, o_k = distances, same_class & in_k, other & in_k
    else:
        d_k, s_k, o_k = distances[:, :k], same_class[:, :k], other[:, :k]
    s_f, o_f = s_k.to(distances.dtype), o_k.to(distances.dtype)

    ratio = d_k / (delta + _EPS).unsqueeze(1)
    # (a padded column is in no maximum: -inf there, so the ties and gradients are eager's)
    r_max = ratio if real_k is None else ratio.masked_fill(~real_k, float("-inf"))
    ratio = ratio / r_max.max(dim=1, keepdim=True).values.clamp_min(1.0)
    n_same = s_f.sum(1)
    per_point_sc = (ratio * s_f).sum(1) / (n_same + _EPS)
    # point counts in the distances' dtype: an int64 count + 1e-7 would be float32
    lambda_sc = 1.0 - per_point_sc.sum() / ((n_same > 0).sum().to(s_f.dtype) + _EPS)

    e = d_k * o_f
    e_max = e if real_k is None else e.masked_fill(~real_k, float("-inf"))
    e = e / (e_max.max() + _EPS)
    n_other = o_f.sum(1)
    per_point_dc = e.sum(1) / (n_other + _EPS)
    offset = torch.where(o_k.any(), 0.0, -1.0).to(distances.dtype)
    lambda_dc = (per_point_dc.sum() / ((n_other > 0).sum().to(o_f.dtype) + _EPS) + offset).abs()

    lam = (lambda_sc + lambda_dc) / 2
    if isinstance(gamma_one, Tensor):
        gamma = torch.where(gamma_one, 1.0, (n_same / _as_count(k, n_same)).mean())
    elif gamma_one:
        gamma = torch.ones((), dtype=distances.dtype, device=distances.device)
    else:
        gamma = (n_same / _as_count(k, n_same)).mean()
    return (lam + gamma) / 2


def _as_count(k: int | Tensor, like: Tensor) -> int | Tensor:
    """``k`` as gamma's divisor: the int, or the tensor in ``like``'s dtype."""
    return k.to(like.dtype) if isinstance(k, Tensor) else k
