"""Bayesian Flow Networks: the continuous-time losses for continuous, discretised and discrete
data, with the Bayesian flow (sender/receiver updates in closed form) and the output
parameterisations of the paper.

Graves, Srivastava, Atkinson, Gomez, "Bayesian Flow Networks", arXiv 2308.07037.
Training step of a BFN, for data ``x`` and ``t ~ U(0, 1)`` per sample:

1. draw the input parameters from the Bayesian flow distribution ``p_F(theta | x; t)``
   (:func:`bfn_continuous_flow` for continuous/discretised data, :func:`bfn_discrete_flow`
   for discrete data);
2. run the network on ``(theta, t)`` and turn its output into the output distribution
   (:func:`bfn_continuous_output`, :func:`bfn_discretised_output`; a softmax for discrete
   data);
3. the loss ``L^inf(x)`` at ``t``: :func:`bfn_continuous_loss`, :func:`bfn_discretised_loss`,
   :func:`bfn_discrete_loss` -- the limit ``n -> inf`` of the discrete-time loss, i.e. the KL
   divergence between the sender distribution ``p_S(y | x; alpha) = N(x, 1/alpha)`` and the
   receiver distribution ``p_R(y | theta; t, alpha) = E_{p_O(x' | theta; t)} p_S(y | x';
   alpha)`` per unit of accuracy.

Verification: the formulas (flows, output parameterisations, losses) were checked against the
authors' code (nnaisense/bayesian-flow-networks, ``model.py`` and ``probability.py``); the
paper's full text was not available here, so equation numbers are not cited.

Kinds: ``bfn_continuous`` and ``bfn_discretised`` are of kind ``regression``
(``loss(pred, target, *, time)``), ``bfn_discrete`` of kind ``logits``
(``loss(logits[N, K, ...], target[N, ...], *, time)``); ``time`` is ``[N]`` (one ``t`` per
sample) or of the target's shape. ``reduction="none"`` returns the loss per element (per
variable ``d`` of ``x``); summing a sample's elements gives the paper's ``L^inf(x)``;
``"mean"`` averages over every element (as the authors' code does).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_float,
    check_same_device,
    compute_dtype,
    reduce,
    require,
)
from losslab._hparams import Int, Real, hparams
from losslab._ops.logits import finish, prepare
from losslab.registry import register

__all__ = [
    "BFNContinuousLoss",
    "BFNDiscreteLoss",
    "BFNDiscretisedLoss",
    "bfn_continuous_flow",
    "bfn_continuous_loss",
    "bfn_continuous_output",
    "bfn_discrete_flow",
    "bfn_discrete_loss",
    "bfn_discretised_loss",
    "bfn_discretised_mean",
    "bfn_discretised_output",
    "bfn_discretised_probs",
]

_check_bfn = hparams(sigma_1=Real(gt=0, lt=1), beta_1=Real(gt=0), num_bins=Int(ge=2),
                     num_classes=Int(ge=1), t_min=Real(ge=0, lt=1), ignore_index=Int())


def _time(time: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
          device: torch.device) -> Tensor:
    """Validate ``time`` (``[N]`` or ``shape``, values in [0, 1]) and broadcast it to
    ``shape``."""
    if time is None:
        raise ValueError("time= is required: the per-sample time t in [0, 1] at which the "
                         "network's output was computed (shape [N])")
    if not isinstance(time, Tensor) or not time.is_floating_point():
        raise ValueError("time must be a floating-point tensor of times t in [0, 1]")
    if time.device != device:
        raise ValueError(f"time must be on the inputs' device {device}, got {time.device}")
    n = shape[0]
    if tuple(time.shape) == (n,):
        t = time.reshape(n, *([1] * (len(shape) - 1))).expand(shape)
    elif tuple(time.shape) == shape:
        t = time
    else:
        raise ValueError(f"time must have shape [{n}] (one t per sample) or {list(shape)}, "
                         f"got {tuple(time.shape)}")
    t = t.detach().to(dtype)
    require((t >= 0) & (t <= 1), "time must hold values in [0, 1]")
    return t


# --------------------------------------------------------------------------------------------
# Bayesian flows and output parameterisations
# --------------------------------------------------------------------------------------------


def bfn_continuous_flow(x: Tensor, time: Tensor, *, sigma_1: float = 0.001,
                        generator: torch.Generator | None = None) -> Tensor:
    r"""A draw of the input mean from the Bayesian flow of continuous data:

    .. math::
        \mu \sim p_F(\cdot \mid x; t) = \mathcal N\big(\gamma(t)\,x,\ \gamma(t)(1-\gamma(t))
        I\big),\qquad \gamma(t) = 1 - \sigma_1^{2t}

    (the input precision is ``rho = 1 / (1 - gamma)``, not needed by the network).
    ``time``: ``[N]`` or ``x``'s shape. arXiv 2308.07037 (continuous data).
    """
    check_float("x", x)
    t = _time(time, tuple(x.shape), x.dtype, x.device)
    gamma = 1 - sigma_1 ** (2 * t)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                        device=generator.device if generator is not None else x.device)
    return gamma * x + (gamma * (1 - gamma)).sqrt() * noise.to(x.device)


def bfn_discrete_flow(target: Tensor, time: Tensor, *, num_classes: int, beta_1: float = 3.0,
                      generator: torch.Generator | None = None) -> Tensor:
    r"""A draw of the input probabilities from the Bayesian flow of discrete data:

    .. math::
        \theta = \mathrm{softmax}(y),\quad
        y \sim \mathcal N\big(\beta(t)(K e_x - 1),\ \beta(t) K I\big),\quad \beta(t) = \beta_1 t^2

    Returns ``[N, K, ...]`` (classes in dim 1, as logits). ``target``: class ids
    ``[N, ...]``; ``time``: ``[N]`` or ``target``'s shape. arXiv 2308.07037 (discrete data).
    """
    _check_bfn(num_classes=num_classes, beta_1=beta_1)
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError("target must hold integer class ids")
    t = _time(time, tuple(target.shape), torch.get_default_dtype(), target.device)
    e = torch.nn.functional.one_hot(target.long(), num_classes).movedim(-1, 1).to(t.dtype)
    beta = (beta_1 * t * t).unsqueeze(1)
    noise = torch.randn(e.shape, generator=generator, dtype=e.dtype,
                        device=generator.device if generator is not None else e.device)
    y = beta * (num_classes * e - 1) + (beta * num_classes).sqrt() * noise.to(e.device)
    return torch.softmax(y, dim=1)


def _gamma(t: Tensor, sigma_1: float, t_min: float) -> Tensor:
    return 1 - sigma_1 ** (2 * t.clamp_min(t_min))


def bfn_continuous_output(eps_hat: Tensor, mu: Tensor, time: Tensor, *, sigma_1: float = 0.001,
                          t_min: float = 1e-6, x_min: float = -1.0, x_max: float = 1.0
                          ) -> Tensor:
    r"""The paper's data prediction for continuous data from a noise prediction:

    .. math::
        \hat x(\theta, t) = \begin{cases} 0 & t < t_{min} \\
        \mathrm{clip}_{[x_{min}, x_{max}]}\Big(\frac{\mu}{\gamma(t)} -
        \sqrt{\tfrac{1-\gamma(t)}{\gamma(t)}}\,\hat\epsilon(\theta, t)\Big) & \text{else}
        \end{cases}

    Defaults ``t_min = 1e-6``, range ``[-1, 1]`` (the paper's). arXiv 2308.07037.
    """
    check_float("eps_hat", eps_hat)
    t = _time(time, tuple(mu.shape), mu.dtype, mu.device)
    g = _gamma(t, sigma_1, t_min)
    x = (mu / g - ((1 - g) / g).sqrt() * eps_hat).clamp(x_min, x_max)
    return torch.where(t < t_min, torch.zeros_like(x), x)


def bfn_discretised_output(mu_eps: Tensor, ln_sigma_eps: Tensor, mu: Tensor, time: Tensor, *,
                           sigma_1: float = 0.001, t_min: float = 1e-6) -> Tensor:
    r"""The output distribution's parameters for discretised data from the network's noise
    prediction ``(mu_eps, ln_sigma_eps)``:

    .. math::
        \mu_x = \frac{\mu}{\gamma} - \sqrt{\tfrac{1-\gamma}{\gamma}}\,\mu_\epsilon,\quad
        \sigma_x = \sqrt{\tfrac{1-\gamma}{\gamma}}\,\exp(\ln\sigma_\epsilon);\qquad
        (\mu_x, \sigma_x) = (0, 1)\ \text{for}\ t < t_{min}

    Returns ``[N, 2, ...]``: ``mu_x`` and ``ln sigma_x`` (the ``pred`` of
    :func:`bfn_discretised_loss`). arXiv 2308.07037.
    """
    t = _time(time, tuple(mu.shape), mu.dtype, mu.device)
    g = _gamma(t, sigma_1, t_min)
    ratio = ((1 - g) / g).sqrt()
    mean = mu / g - ratio * mu_eps
    ln_sd = ratio.log() + ln_sigma_eps
    small = t < t_min
    mean = torch.where(small, torch.zeros_like(mean), mean)
    ln_sd = torch.where(small, torch.zeros_like(ln_sd), ln_sd)
    return torch.stack([mean, ln_sd], 1)


def bfn_discretised_probs(mean: Tensor, ln_sd: Tensor, num_bins: int) -> Tensor:
    r"""The discretised output distribution over ``K = num_bins`` bins of [-1, 1]:
    ``p(k) = F(k_r) - F(k_l)`` with ``F`` the CDF of ``N(mean, exp(ln_sd)^2)``, bin edges
    ``k_l = 2(k-1)/K - 1``, ``k_r = 2k/K - 1``, and the first (last) bin's left (right) edge
    at ``-inf`` (``+inf``) so that the bins hold all the mass. Returns ``[..., K]``."""
    edges = torch.arange(1, num_bins, dtype=mean.dtype, device=mean.device) * (2 / num_bins) - 1
    sd = ln_sd.exp().clamp_min(torch.finfo(mean.dtype).tiny).unsqueeze(-1)
    cdf = 0.5 * (1 + torch.erf((edges - mean.unsqueeze(-1)) / (sd * math.sqrt(2))))
    zeros = torch.zeros_like(cdf[..., :1])
    return torch.diff(cdf, dim=-1, prepend=zeros, append=zeros + 1)


def bfn_discretised_mean(mean: Tensor, ln_sd: Tensor, num_bins: int) -> Tensor:
    r""":math:`\hat k(\theta, t) = \sum_k p_O(k \mid \theta; t)\, k_c` with bin centres
    ``k_c = (2k - 1)/K - 1``."""
    centres = (torch.arange(1, num_bins + 1, dtype=mean.dtype, device=mean.device) * 2 - 1
               ) / num_bins - 1
    return (bfn_discretised_probs(mean, ln_sd, num_bins) * centres).sum(-1)


# --------------------------------------------------------------------------------------------
# The continuous-time losses
# --------------------------------------------------------------------------------------------


def _regression_inputs(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    check_float("pred", pred)
    check_float("target", target)
    check_same_device(pred=pred, target=target)
    dtype = compute_dtype(pred.dtype)
    return pred.to(dtype), target.to(dtype)


def bfn_continuous_loss(pred: Tensor, target: Tensor, *, time: Tensor | None = None,
                        sigma_1: float = 0.001, reduction: Reduction = "mean") -> Tensor:
    r"""Continuous-time BFN loss for continuous data:

    .. math::
        L^\infty(x) = -\ln\sigma_1\ \mathbb E_{t \sim U(0,1),\ p_F(\theta \mid x; t)}
        \frac{\|x - \hat x(\theta, t)\|^2}{\sigma_1^{2t}}

    evaluated at the given ``t`` (one Monte-Carlo sample of the expectation): per element
    ``-ln(sigma_1) * sigma_1^(-2t) * (x - x_hat)^2``.

    Args:
        pred: ``[N, ...]`` the network's data prediction ``x_hat(theta, t)``
            (:func:`bfn_continuous_output` builds it from a noise prediction).
        target: ``[N, ...]`` the data ``x``.
        time: ``[N]`` (or ``[N, ...]``) the times ``t`` in [0, 1] at which ``theta`` was drawn
            (:func:`bfn_continuous_flow`).
        sigma_1: standard deviation of the input distribution at ``t = 1`` (0.001, the
            paper's CIFAR-10 setting).
        reduction: ``"mean"`` over every element, ``"sum"`` or ``"none"`` (``[N, ...]``; the
            sum over a sample's elements is ``L^inf(x)``).

    Half precision: the true gradient ``2 (-ln sigma_1) sigma_1^(-2t) (x_hat - x)`` exceeds
    float16's range (65504) once ``sigma_1^(-2t) |x_hat - x| > 4700`` (at ``sigma_1 = 0.001``:
    ``t = 0.9`` and an error of 0.02 already), whatever the input scale -- the loss weights
    late times by up to ``1 / sigma_1^2``. The value is computed in float32, but float16
    *inputs* get finite gradients only for early times or small errors (the contract suite
    checks float16 gradients at input scale 1 and ``t <= 0.45``: weight <= 501).

    Paper: Graves, Srivastava, Atkinson, Gomez, "Bayesian Flow Networks", arXiv 2308.07037.
    """
    _check_bfn(sigma_1=sigma_1)
    pred, target = _regression_inputs(pred, target)
    if pred.ndim == 0 or pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape [N, ...], got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    t = _time(time, tuple(target.shape), pred.dtype, pred.device)
    weight = -math.log(sigma_1) * sigma_1 ** (-2 * t)
    return reduce(weight * (target - pred).pow(2), reduction)


def bfn_discretised_loss(pred: Tensor, target: Tensor, *, time: Tensor | None = None,
                         num_bins: int = 256, sigma_1: float = 0.001,
                         reduction: Reduction = "mean") -> Tensor:
    r"""Continuous-time BFN loss for discretised data:

    .. math::
        L^\infty(x) = -\ln\sigma_1\ \mathbb E_{t,\ p_F(\theta \mid x; t)}
        \frac{\|x - \hat k(\theta, t)\|^2}{\sigma_1^{2t}},\qquad
        \hat k = \sum_{k=1}^K p_O(k \mid \theta; t)\, k_c

    with the discretised output distribution :func:`bfn_discretised_probs` over ``K`` bins of
    [-1, 1] (bin centres ``k_c = (2k-1)/K - 1``).

    Args:
        pred: ``[N, 2, ...]`` the output distribution's ``mu_x`` (``pred[:, 0]``) and
            ``ln sigma_x`` (``pred[:, 1]``) per element (:func:`bfn_discretised_output`).
        target: ``[N, ...]`` the data, bin centres in [-1, 1].
        time: ``[N]`` (or ``[N, ...]``) the times ``t`` in [0, 1].
        num_bins: ``K`` (256 for 8-bit images, the paper's CIFAR-10 setting).
        sigma_1: as in :func:`bfn_continuous_loss` (0.001 for 256 bins in the paper).
        reduction: ``"mean"`` over every element of ``target``, ``"sum"`` or ``"none"``.

    Paper: Graves et al., "Bayesian Flow Networks", arXiv 2308.07037. The authors' code also
    clamps ``sigma_x`` to [1e-3, 10]; this loss does not.
    """
    _check_bfn(sigma_1=sigma_1, num_bins=num_bins)
    pred, target = _regression_inputs(pred, target)
    if pred.ndim < 2 or pred.shape[1] != 2 or pred.shape[:1] + pred.shape[2:] != target.shape:
        raise ValueError(f"pred must have shape [N, 2, ...] (mu_x and ln sigma_x of each "
                         f"element of target {tuple(target.shape)}), got {tuple(pred.shape)}")
    require((target >= -1) & (target <= 1), "target (discretised data) must lie in [-1, 1]")
    t = _time(time, tuple(target.shape), pred.dtype, pred.device)
    k_hat = bfn_discretised_mean(pred[:, 0], pred[:, 1], num_bins)
    weight = -math.log(sigma_1) * sigma_1 ** (-2 * t)
    return reduce(weight * (target - k_hat).pow(2), reduction)


def bfn_discrete_loss(logits: Tensor, target: Tensor, *, time: Tensor | None = None,
                      beta_1: float = 3.0, ignore_index: int = -100,
                      reduction: Reduction = "mean") -> Tensor:
    r"""Continuous-time BFN loss for discrete data:

    .. math::
        L^\infty(x) = K \beta_1\ \mathbb E_{t \sim U(0,1),\ p_F(\theta \mid x; t)}\
        t\, \big\|e_x - \hat e(\theta, t)\big\|^2,\qquad
        \hat e = \sum_k p_O(k \mid \theta; t)\, e_k = \mathrm{softmax}(\text{logits})

    per variable (element) at the given ``t``. It is zero exactly when the output
    distribution puts all its mass on the data.

    Args:
        logits: ``[N, K, ...]`` the network's output logits (``p_O = softmax`` over dim 1).
        target: ``[N, ...]`` class ids ``x`` (``ignore_index`` items are skipped).
        time: ``[N]`` (or ``[N, ...]``) the times ``t`` in [0, 1] at which ``theta`` was drawn
            (:func:`bfn_discrete_flow`).
        beta_1: the accuracy schedule's final value, ``beta(t) = beta_1 t^2`` (3 for
            binarised MNIST in the paper, 0.75 for text8).
        ignore_index: target value of items to skip.
        reduction: ``"mean"`` over the non-ignored elements, ``"sum"`` or ``"none"``
            (``[N, ...]``).

    Paper: Graves et al., "Bayesian Flow Networks", arXiv 2308.07037.
    """
    _check_bfn(beta_1=beta_1, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="bfn_discrete")
    k = batch.num_classes
    item = batch.item_shape
    t = _time(time, item, batch.logits.dtype, batch.logits.device).reshape(-1)
    probs = torch.softmax(batch.logits, dim=1)
    e = torch.nn.functional.one_hot(batch.class_ids, k).to(probs.dtype)
    values = k * beta_1 * t * (e - probs).pow(2).sum(1)
    return finish(values, batch, reduction)


@register("bfn_continuous", family="generative", kind="regression",
          paper="Bayesian Flow Networks", arxiv="2308.07037",
          summary="-ln(sigma_1) sigma_1^(-2t) ||x - x_hat(theta, t)||^2 (continuous data)",
          reduction="per element", half_input_scale=1.0)
class BFNContinuousLoss(LossModule, function=bfn_continuous_loss, check=_check_bfn):
    """Module form of :func:`bfn_continuous_loss`: ``forward(pred, target, *, time)``."""


@register("bfn_discretised", family="generative", kind="regression",
          paper="Bayesian Flow Networks", arxiv="2308.07037",
          summary="-ln(sigma_1) sigma_1^(-2t) ||x - k_hat(theta, t)||^2, k_hat the mean of the "
          "discretised output distribution over K bins", reduction="per element",
          example_hparams={"num_bins": 16})
class BFNDiscretisedLoss(LossModule, function=bfn_discretised_loss, check=_check_bfn):
    """Module form of :func:`bfn_discretised_loss`: ``forward(pred[N, 2, ...], target,
    *, time)``."""


@register("bfn_discrete", family="generative", kind="logits",
          paper="Bayesian Flow Networks", arxiv="2308.07037",
          summary="K beta_1 t ||e_x - softmax(logits)||^2 (discrete data)",
          reduction="per element", degenerate=("all_ignored",))
class BFNDiscreteLoss(LossModule, function=bfn_discrete_loss, check=_check_bfn):
    """Module form of :func:`bfn_discrete_loss`: ``forward(logits, target, *, time)``."""

