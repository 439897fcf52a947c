r"""Clustering-based sensitivity sampling: a small weighted subset whose weighted mean loss
estimates the mean loss of the whole dataset.

Axiotis, Cohen-Addad, Henzinger, Jerome, Mirrokni, Saulpic, Woodruff, Wunder, "Data-Efficient
Learning via Clustering-Based Sensitivity Sampling: Foundation Models and Beyond", arXiv
2402.17327 (ICML 2024). The paper's text was not found; this is written from its abstract and
a summary of the method, and is **not verified against the paper**.

Fixed there: the data have embeddings :math:`e_x` with respect to which the model's loss is
Hölder continuous, :math:`|\ell(x) - \ell(y)| \le \lambda \lVert e_x - e_y\rVert^z`; the
method runs :math:`k`-means on all embeddings, evaluates the (expensive) loss only at the
cluster representatives, and sensitivity-samples with *proxy losses* built from the distances
to the centres and the centres' losses; :math:`k + 1/\varepsilon^2` samples give a
:math:`(1 \pm \varepsilon)` estimate of the mean loss up to an additive
:math:`\varepsilon \lambda \Phi_k` (:math:`\Phi_k` the :math:`k`-means cost).

As written here: the representative :math:`r(x)` of a cluster is its member nearest the
centre; the proxy is the Hölder upper bound

.. math::
    \tilde\ell(x) = \ell(r(x)) + \lambda \lVert e_x - e_{r(x)} \rVert^z \;\ge\; \ell(x),

:math:`m` indices are drawn with replacement with :math:`p_x = \tilde\ell(x) / \sum_y
\tilde\ell(y)`, and each draw gets the weight :math:`w = 1 / (n\, m\, p_x)`, so that
:math:`\sum_j w_j \ell(x_j)` is an unbiased estimate of :math:`\frac1n \sum_x \ell(x)`
(exact when the loss equals its proxy). Train on the sample with the weights (e.g.
``reduce(values, "sum", weights=w)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from losslab.train.selection import kmeans

__all__ = [
    "cluster_representatives",
    "sensitivity_probabilities",
    "sensitivity_sample",
]


def _check_embeddings(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point() or x.shape[0] < 1:
        raise ValueError(f"embeddings must be a float tensor [N, D] with N >= 1, got "
                         f"{getattr(x, 'shape', type(x))}")


def cluster_representatives(embeddings: Tensor, k: int, *, iters: int = 100
                            ) -> tuple[Tensor, Tensor]:
    """``k``-means of ``embeddings [N, D]`` (:func:`losslab.train.selection.kmeans`): returns
    ``(assignment [N], representatives [k])``, the dataset index of the member nearest each
    centre (an empty cluster's representative is the point nearest its centre)."""
    _check_embeddings(embeddings)
    labels, centres = kmeans(embeddings, k, iters=iters)
    x = embeddings.detach().to(torch.float64)
    d = torch.cdist(centres, x)  # [k, N]
    inside = labels[None, :] == torch.arange(k)[:, None]
    reps = torch.where(inside, d, torch.full_like(d, math.inf)).argmin(1)
    empty = ~inside.any(1)
    reps = torch.where(empty, d.argmin(1), reps)
    return labels, reps


def sensitivity_probabilities(embeddings: Tensor, assignment: Tensor, representatives: Tensor,
                              representative_loss: Tensor, *, lam: float = 1.0,
                              z: float = 2.0) -> Tensor:
    r"""Sampling probabilities ``[N]`` proportional to the proxy loss
    :math:`\ell(r(x)) + \lambda \lVert e_x - e_{r(x)}\rVert^z` (module docstring).

    Args:
        embeddings: ``[N, D]``.
        assignment: ``[N]`` cluster of each point, in ``[0, k)``.
        representatives: ``[k]`` dataset index of each cluster's representative.
        representative_loss: ``[k]`` the model's loss at each representative (>= 0).
        lam: the Hölder constant :math:`\lambda` (>= 0).
        z: the Hölder exponent :math:`z` (> 0; 2 gives the k-means distances).
    """
    _check_embeddings(embeddings)
    n = embeddings.shape[0]
    if assignment.shape != (n,) or assignment.is_floating_point():
        raise ValueError(f"assignment must be integer cluster ids of shape ({n},)")
    k = representatives.shape[0]
    if representatives.ndim != 1 or representatives.is_floating_point():
        raise ValueError("representatives must be a 1-d integer tensor of dataset indices")
    if representative_loss.shape != (k,) or not representative_loss.is_floating_point():
        raise ValueError(f"representative_loss must be a float tensor of shape ({k},)")
    if bool((representative_loss < 0).any()) or not bool(torch.isfinite(representative_loss)
                                                             .all()):
        raise ValueError("representative_loss must be finite and >= 0")
    if bool((assignment < 0).any()) or bool((assignment >= k).any()):
        raise ValueError(f"assignment must hold cluster ids in [0, {k})")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a finite number > 0, got {z}")
    x = embeddings.detach().to(torch.float64)
    rep = x[representatives.long()][assignment.long()]
    proxy = representative_loss.detach().to(torch.float64)[assignment.long()] \
        + lam * (x - rep).norm(dim=1).pow(z)
    total = proxy.sum()
    if float(total) <= 0:  # every proxy is 0: the loss is 0 everywhere; sample uniformly
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    return proxy / total


def sensitivity_sample(embeddings: Tensor, num_samples: int, *, k: int,
                       loss_fn: Callable[[Tensor], Tensor], lam: float = 1.0, z: float = 2.0,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r"""Clustering-based sensitivity sampling (module docstring): ``(indices [m], weights
    [m])``.

    ``loss_fn(indices)`` returns the model's per-sample loss ``[k]`` at the given dataset
    indices; it is called once, on the ``k`` cluster representatives (the only expensive
    evaluations). ``sum_j weights[j] * loss(indices[j])`` estimates the dataset's mean loss
    without bias.
    """
    _check_embeddings(embeddings)
    n = embeddings.shape[0]
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    assignment, reps = cluster_representatives(embeddings, k)
    rep_loss = loss_fn(reps)
    if not isinstance(rep_loss, Tensor) or rep_loss.shape != (reps.shape[0],):
        raise ValueError(f"loss_fn must return a tensor of shape ({reps.shape[0]},) for the "
                         f"representatives, got {getattr(rep_loss, 'shape', type(rep_loss))}")
    p = sensitivity_probabilities(embeddings, assignment, reps, rep_loss.to(torch.float64),
                                  lam=lam, z=z)
    idx = torch.multinomial(p, num_samples, replacement=True, generator=generator)
    weights = 1.0 / (n * num_samples * p[idx])
    return idx, weights
