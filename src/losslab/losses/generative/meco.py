r"""Maximum-likelihood estimation of unnormalised models by compositional optimisation (MECO).

Jiang, Qin, Wu, Chen, Yang, Zhang, "Learning Unnormalized Statistical Models via
Compositional Optimization", arXiv 2306.07485. For an unnormalised model
``p_theta(x) = f_theta(x) / Z(theta)`` and a noise distribution ``q`` that can be sampled and
evaluated, the log partition function is a compositional function,
``log Z = log E_{y ~ q}[f_theta(y) / q(y)]``, whose inner expectation is estimated from noise
samples; the negative log-likelihood

.. math::
    F(\theta) = -\frac1n \sum_i \log f_\theta(x_i) + \log \mathbb E_{y\sim q}
    \frac{f_\theta(y)}{q(y)}

is then minimised by a stochastic compositional method: a moving average ``u`` tracks the
inner expectation across steps and the gradient uses it in place of the inner function.

Kind ``unnormalized``: ``loss(log_density[N], noise_log_density[M], noise_log_q[M])`` --
``log f_theta`` at the data (differentiable), ``log f_theta`` at ``M`` noise samples
(differentiable) and ``log q`` at those samples (a constant). The module keeps ``log u`` in a
buffer (saved by ``state_dict()``; not updated in ``eval()`` mode).

Formula status: the objective is fixed by the abstract (NLL with the log partition function
written as a compositional function over noise samples); the estimator is the standard
moving-average estimator of stochastic compositional optimisation. The paper's full text
(algorithm, step sizes) was not available here: not verified against the paper; the default
``gamma`` is ours.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from losslab._core import LossModule, check_float, check_same_device, compute_dtype
from losslab._hparams import Real, hparams
from losslab.registry import register

__all__ = ["MECOLoss", "meco_loss"]

_check_meco = hparams(gamma=Real(gt=0, le=1))


def _vector(name: str, x: Tensor) -> None:
    check_float(name, x)
    if x.ndim != 1:
        raise ValueError(f"{name} must have shape [N] (one value per sample), got "
                         f"{tuple(x.shape)}")


def meco_loss(log_density: Tensor, noise_log_density: Tensor, noise_log_q: Tensor, *,
              gamma: float = 0.9, log_u: Tensor | None = None, update: bool = True) -> Tensor:
    r"""MECO: the NLL of an unnormalised model with a moving-average partition function.

    With :math:`a_j = \log f_\theta(y_j) - \log q(y_j)` at the ``M`` noise samples and the
    batch estimate :math:`g = \frac1M \sum_j e^{a_j}` of :math:`Z(\theta)`,

    .. math::
        u \leftarrow (1 - \gamma)\,u + \gamma\, g,\qquad
        \text{value} = -\frac1N \sum_i \log f_\theta(x_i) + \log u,\qquad
        \nabla = -\frac1N \sum_i \nabla \log f_\theta(x_i)
        + \frac{1}{u}\,\frac1M \sum_j e^{a_j}\, \nabla a_j

    (``u`` starts at the first batch's ``g``; all in log space, so large energies do not
    overflow). Without state (``log_u=None``) ``u = g``: the plug-in estimate
    ``-mean log f(x) + log mean exp(a)``, whose gradient is exact. With state, ``u`` is a
    constant of the step (the compositional estimator): the gradient is the paper's estimator,
    not the derivative of the value.

    Args:
        log_density: ``[N]`` :math:`\log f_\theta(x_i)` at the data (minus the energy).
        noise_log_density: ``[M]`` :math:`\log f_\theta(y_j)` at noise samples
            :math:`y_j \sim q`.
        noise_log_q: ``[M]`` :math:`\log q(y_j)` (normalised noise log-density; no gradient).
        gamma: moving-average weight of the new batch (1: no memory).
        log_u: scalar state :math:`\log u` (NaN: not yet set), updated in place when
            ``update``; the module form owns it.
        update: write the new ``log u`` into ``log_u``.

    Returns:
        A scalar: the NLL estimate (float32 for half inputs); an empty data batch contributes
        0 to the data term.

    Paper: Jiang, Qin, Wu, Chen, Yang, Zhang, "Learning Unnormalized Statistical Models via
    Compositional Optimization", arXiv 2306.07485 (formula from the abstract and the standard
    moving-average compositional estimator, not verified against the paper's algorithm).
    """
    _check_meco(gamma=gamma)
    _vector("log_density", log_density)
    _vector("noise_log_density", noise_log_density)
    _vector("noise_log_q", noise_log_q)
    if noise_log_q.shape != noise_log_density.shape:
        raise ValueError(f"noise_log_q must have the shape of noise_log_density "
                         f"{tuple(noise_log_density.shape)}, got {tuple(noise_log_q.shape)}")
    if noise_log_density.shape[0] == 0:
        raise ValueError("noise_log_density must hold at least one noise sample (the "
                         "partition function is estimated from them)")
    check_same_device(log_density=log_density, noise_log_density=noise_log_density,
                      noise_log_q=noise_log_q)
    dtype = compute_dtype(log_density.dtype)
    lf = log_density.to(dtype)
    a = noise_log_density.to(dtype) - noise_log_q.detach().to(dtype)
    m = a.shape[0]
    log_g = torch.logsumexp(a, 0) - math.log(m)
    if log_u is None:
        return -lf.sum() / max(lf.shape[0], 1) + log_g
    with torch.no_grad():
        old = log_u.to(dtype)
        blended = torch.logaddexp(old + math.log1p(-gamma) if gamma < 1 else old - math.inf,
                                  log_g + math.log(gamma))
        new = torch.where(torch.isnan(old), log_g.detach(), blended.detach())
        weights = torch.exp(a.detach() - new) / m
        if update:
            log_u.copy_(new.to(log_u.dtype))
    data = -lf.sum() / max(lf.shape[0], 1)
    return data + new + (weights * (a - a.detach())).sum()


@register(
    "meco", family="generative", kind="unnormalized",
    paper="Learning Unnormalized Statistical Models via Compositional Optimization",
    arxiv="2306.07485",
    summary="-mean log f(x) + log u, u a moving average of mean_j f(y_j)/q(y_j) over noise "
    "samples (compositional estimator of log Z)",
    reduction=None,
    surrogate_gradient="the moving average u is a constant of the step (the compositional "
    "estimator); the gradient is (1/u) grad mean f(y)/q(y), not the derivative of log u",
)
class MECOLoss(LossModule, function=meco_loss, check=_check_meco):
    """Module form of :func:`meco_loss`: keeps ``log_u`` (a scalar buffer, NaN until the
    first batch) and updates it in ``train()`` mode.
    ``forward(log_density, noise_log_density, noise_log_q)``."""

    function_only: ClassVar[tuple[str, ...]] = ("log_u", "update")
    log_u: Tensor

    def __init__(self, *, gamma: float = 0.9) -> None:
        super().__init__(gamma=gamma)
        self.register_buffer("log_u", torch.full((), math.nan))

    def forward(self, log_density: Tensor, noise_log_density: Tensor,
                noise_log_q: Tensor) -> Tensor:
        return meco_loss(log_density, noise_log_density, noise_log_q, log_u=self.log_u,
                         update=self.training, **self.call_kwargs())
