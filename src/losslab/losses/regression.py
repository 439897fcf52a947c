"""Regression losses: robust point losses, a batch-statistics outlier mask, a contrastive
regulariser for imbalanced targets and a discrete-time survival likelihood.

Kind ``regression``: ``loss(pred[N, ...], target[N, ...], *, features=None, weights=None,
inputs=None)``. ``features`` (``[N, D]``, the representation before the regression head),
``weights`` (``[N]``, per-sample weights) and ``inputs`` (``[N, ...]``, the model's inputs) are
call-time inputs that only some losses take (``conr``: features and weights; ``cs_ib``:
features and inputs; ``two_term_hazard``, ``roma_regression``, ``roma_coarse``: weights).
``hazard``, ``two_term_hazard``, ``ordinal`` and ``roma_coarse`` take their own target
encodings (see their docstrings); ``sinkhorn_alignment`` (same family) is of kind ``paired``.

Reductions: the element-wise losses (``huber``, ``charbonnier``, ``barron``) return the
element-wise loss for ``reduction="none"`` and its mean over every element for ``"mean"``, as
``torch.nn.HuberLoss`` does; the per-sample losses (``pseudo_huber``, ``cauchy``, ``z_error``,
``conr``, ``hazard``) return ``[N]`` and average over samples.

Half inputs are computed, and returned, in float32 (:func:`losslab._core.compute_dtype`).
NaN inputs propagate.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import (
    LossModule,
    Reduction,
    check_float,
    check_labels,
    check_same_device,
    compute_dtype,
    reduce,
    require,
    zero_loss,
)
from losslab._hparams import Choice, Flag, Int, PerClass, Real, hparams
from losslab.distances import squared_euclidean
from losslab.registry import register

__all__ = [
    "BarronLoss",
    "CSIBLoss",
    "CauchyLoss",
    "CharbonnierLoss",
    "ConRLoss",
    "HazardLoss",
    "HuberLoss",
    "MSELoss",
    "OrdinalLoss",
    "PrestoHead",
    "PseudoHuberLoss",
    "RoMaCoarseLoss",
    "RoMaRegressionLoss",
    "SinkhornAlignmentLoss",
    "TwoTermHazardLoss",
    "WaveletHFLoss",
    "ZErrorLoss",
    "barron_log_partition",
    "barron_loss",
    "cauchy_loss",
    "charbonnier_loss",
    "conr_loss",
    "cs_conditional_divergence",
    "cs_ib_loss",
    "cs_mutual_information",
    "haar_subbands",
    "hazard_loss",
    "huber_loss",
    "mse_loss",
    "ordinal_loss",
    "presto_penalty",
    "pseudo_huber_loss",
    "roma_anchors",
    "roma_coarse_loss",
    "roma_regression_loss",
    "sinkhorn_alignment_loss",
    "two_term_hazard_loss",
    "wavelet_hf_loss",
    "z_error_loss",
]


def _inputs(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check ``pred`` and ``target`` (float, one shape, at least one dim, one device) and cast
    them to the compute dtype."""
    check_float("pred", pred)
    check_float("target", target)
    if pred.ndim == 0:
        raise ValueError("pred must have one row per sample, shape [N, ...], got a scalar")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    check_same_device(pred=pred, target=target)
    dtype = compute_dtype(pred.dtype)
    return pred.to(dtype), target.to(dtype)


def _rows(x: Tensor) -> Tensor:
    """``x[N, ...]`` as ``[N, prod(...)]`` (also for N = 0)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def _per_sample_sq(diff: Tensor) -> Tensor:
    """Squared L2 norm of each row of ``diff[N, ...]``: ``[N]``."""
    return _rows(diff.pow(2)).sum(1)


# --------------------------------------------------------------------------------------------
# Squared error (the baseline), Huber and Charbonnier
# --------------------------------------------------------------------------------------------


def mse_loss(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    r"""Squared error, element-wise: :math:`(x - y)^2`, the baseline of the robust losses
    (equal to ``torch.nn.MSELoss``; Barron's loss at ``alpha=2`` is half of it).

    Args:
        pred, target: ``[N, ...]`` predictions and targets of one shape.
        reduction: ``"mean"`` over every element, ``"sum"`` or ``"none"`` (``[N, ...]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Legendre (1805) / Gauss (1809), least squares (no arXiv id).
    """
    pred, target = _inputs(pred, target)
    return reduce((pred - target).pow(2), reduction)


@register("mse", family="regression", kind="regression", paper="Nouvelles methodes pour la "
          "determination des orbites des cometes (least squares)", arxiv="",
          summary="(x - y)^2", peers=("torch.nn.MSELoss",), reduction="per element")
class MSELoss(LossModule, function=mse_loss):
    """Module form of :func:`mse_loss`."""


_check_huber = hparams(delta=Real(gt=0))


def huber_loss(pred: Tensor, target: Tensor, *, delta: float = 1.0,
               reduction: Reduction = "mean") -> Tensor:
    r"""Huber loss, element-wise: quadratic near 0, linear beyond ``delta``.

    .. math::
        \ell(x) = \begin{cases} \tfrac12 x^2 & |x| \le \delta \\
        \delta (|x| - \tfrac12 \delta) & \text{otherwise} \end{cases},\quad x = pred - target

    Equal to ``torch.nn.HuberLoss(delta=delta)``; ``SmoothL1Loss(beta)`` is ``huber / beta``.

    Args:
        pred, target: ``[N, ...]`` predictions and targets of one shape.
        delta: the transition point (default 1, torch's).
        reduction: ``"mean"`` over every element, ``"sum"`` or ``"none"`` (``[N, ...]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Huber, "Robust Estimation of a Location Parameter", Ann. Math. Statist. 1964 (no
    arXiv id).
    """
    _check_huber(delta=delta)
    pred, target = _inputs(pred, target)
    x = (pred - target).abs()
    quad = 0.5 * x.pow(2)
    lin = delta * (x - 0.5 * delta)
    return reduce(torch.where(x <= delta, quad, lin), reduction)


@register("huber", family="regression", kind="regression", paper="Robust Estimation of a "
          "Location Parameter", arxiv="", summary="0.5 x^2 if |x| <= delta else "
          "delta (|x| - delta / 2)", peers=("torch.nn.HuberLoss", "torch.nn.SmoothL1Loss"),
          reduction="per element")
class HuberLoss(LossModule, function=huber_loss, check=_check_huber):
    """Module form of :func:`huber_loss`."""


_check_charbonnier = hparams(eps=Real(gt=0))


def charbonnier_loss(pred: Tensor, target: Tensor, *, eps: float = 1e-3,
                     reduction: Reduction = "mean") -> Tensor:
    r"""Charbonnier loss, element-wise: a differentiable L1, :math:`\sqrt{x^2 + \epsilon^2}`.

    Args:
        pred, target: ``[N, ...]`` predictions and targets of one shape.
        eps: :math:`\epsilon` (default 1e-3, LapSRN's).
        reduction: ``"mean"`` over every element, ``"sum"`` or ``"none"`` (``[N, ...]``).

    Returns:
        The loss, float32 for half inputs. ``(charbonnier - eps) / eps`` is Barron's loss at
        ``alpha=1, scale=eps`` (kornia's ``charbonnier_loss`` at ``eps=1``).

    Paper: Lai, Huang, Ahuja, Yang, "Deep Laplacian Pyramid Networks for Fast and Accurate
    Super-Resolution", arXiv 1704.03915 (after Charbonnier et al., ICIP 1994).
    """
    _check_charbonnier(eps=eps)
    pred, target = _inputs(pred, target)
    return reduce(((pred - target).pow(2) + eps * eps).sqrt(), reduction)


@register("charbonnier", family="regression", kind="regression", paper="Deep Laplacian "
          "Pyramid Networks for Fast and Accurate Super-Resolution", arxiv="1704.03915",
          summary="sqrt(x^2 + eps^2)", peers=("kornia.losses.charbonnier_loss",),
          reduction="per element")
class CharbonnierLoss(LossModule, function=charbonnier_loss, check=_check_charbonnier):
    """Module form of :func:`charbonnier_loss`."""


# --------------------------------------------------------------------------------------------
# Barron's general and adaptive robust loss
# --------------------------------------------------------------------------------------------

#: Range of the learned shape of the adaptive loss (the distribution is normalisable only for
#: alpha >= 0; the reference code's default range).
ALPHA_RANGE = (0.001, 1.999)
#: Smallest learned scale of the adaptive loss (the reference code's default).
SCALE_LO = 1e-5
_QUAD_NODES = 256


@lru_cache(maxsize=4)
def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def _rho(z2: Tensor, alpha: Tensor | float) -> Tensor:
    r"""Barron's :math:`\rho` at unit scale from ``z2 = (x / c)^2``, with the limits at
    ``alpha`` in {0, 2} (float alpha) and a generic form otherwise."""
    if not isinstance(alpha, Tensor):
        if alpha == 2:
            return 0.5 * z2
        if alpha == 0:
            return torch.log1p(0.5 * z2)
    b = (alpha - 2).abs() if isinstance(alpha, Tensor) else abs(alpha - 2)
    # (b / a) * ((z2 / b + 1)^(a / 2) - 1), via expm1/log1p for accuracy near 0
    return (b / alpha) * torch.expm1(0.5 * alpha * torch.log1p(z2 / b))


def barron_log_partition(alpha: Tensor | float, *, dtype: torch.dtype = torch.float64
                         ) -> Tensor:
    r"""``log Z(alpha)`` of Barron's distribution :math:`p(x) = \exp(-\rho(x, \alpha, 1)) / Z`,
    for ``alpha`` in ``[0, 2]``, by Gauss-Legendre quadrature after ``x = tan t`` (differentiable
    in ``alpha``). ``Z(2) = sqrt(2 pi)`` (normal), ``Z(0) = pi sqrt(2)`` (Cauchy); it agrees
    with the golden values ``Z(n/d)`` published in the reference implementation's tests to a
    relative 1e-9."""
    nodes, w = _gauss_legendre(_QUAD_NODES)
    device = alpha.device if isinstance(alpha, Tensor) else None
    t = torch.as_tensor((nodes + 1) * (math.pi / 4), dtype=dtype, device=device)  # (0, pi/2)
    wt = torch.as_tensor(w * (math.pi / 4), dtype=dtype, device=device)
    x2 = torch.tan(t).pow(2)
    a = alpha.to(dtype).reshape(-1, 1) if isinstance(alpha, Tensor) else alpha
    integrand = torch.exp(-_rho(x2, a)) * (1 + x2)  # sec^2 t = 1 + tan^2 t
    out = torch.log(2 * (integrand * wt).sum(-1))
    return out.reshape(alpha.shape) if isinstance(alpha, Tensor) else out.reshape(())


_check_barron = hparams(alpha=Real(), scale=Real(gt=0), density=Flag())


def barron_loss(pred: Tensor, target: Tensor, *, alpha: float | Tensor = 1.0,
                scale: float | Tensor = 1.0, density: bool = False,
                reduction: Reduction = "mean") -> Tensor:
    r"""Barron's general robust loss, element-wise, with shape ``alpha`` and scale ``c``.

    .. math::
        \rho(x, \alpha, c) = \frac{|\alpha - 2|}{\alpha}
        \left(\left(\frac{(x/c)^2}{|\alpha - 2|} + 1\right)^{\alpha/2} - 1\right)

    with the limits :math:`\tfrac12 (x/c)^2` at ``alpha=2`` (L2), :math:`\log(\tfrac12 (x/c)^2
    + 1)` at ``alpha=0`` (Cauchy); ``alpha=1`` is the pseudo-Huber / Charbonnier
    :math:`\sqrt{(x/c)^2 + 1} - 1`, ``alpha=-2`` Geman-McClure, and ``alpha -> -inf`` Welsch
    (a large negative ``alpha`` approaches it; infinite values are not accepted).

    ``density=True`` returns the negative log-likelihood of the paper's distribution,
    :math:`\rho(x, \alpha, c) + \log c + \log Z(\alpha)` (:func:`barron_log_partition`), for
    ``alpha`` in ``[0, 2]``: the adaptive loss, where ``alpha`` and ``c`` are learned (the module
    option ``adaptive=True`` of :class:`BarronLoss`).

    Args:
        pred, target: ``[N, ...]`` predictions and targets of one shape.
        alpha: shape (default 1, the smoothed L1); a 0-d tensor may be passed to learn it.
        scale: ``c > 0`` (default 1); a 0-d tensor may be passed to learn it.
        density: return the negative log-likelihood (default False: :math:`\rho`).
        reduction: ``"mean"`` over every element, ``"sum"`` or ``"none"`` (``[N, ...]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Barron, "A General and Adaptive Robust Loss Function", arXiv 1701.03077.
    """
    _check_barron(**{k: v for k, v in (("alpha", alpha), ("scale", scale))
                     if not isinstance(v, Tensor)}, density=density)
    pred, target = _inputs(pred, target)
    if density and not isinstance(alpha, Tensor) and not 0 <= alpha <= 2:
        raise ValueError(f"density=True needs alpha in [0, 2] (normalisable), got {alpha!r}")
    a: Tensor | float = alpha.to(pred.dtype) if isinstance(alpha, Tensor) else float(alpha)
    c: Tensor | float = scale.to(pred.dtype) if isinstance(scale, Tensor) else float(scale)
    z2 = ((pred - target) / c).pow(2)
    loss = _rho(z2, a)
    if density:
        log_c = c.log() if isinstance(c, Tensor) else math.log(c)
        loss = loss + log_c + barron_log_partition(a, dtype=pred.dtype).to(pred.device)
    return reduce(loss, reduction)


_check_barron_module = _check_barron | hparams(adaptive=Flag())


def _inverse_sigmoid_range(value: float, lo: float, hi: float) -> float:
    p = (value - lo) / (hi - lo)
    return math.log(p / (1 - p))


class _AdaptiveBarron(LossModule):
    """Shell base of :class:`BarronLoss`: the module option ``adaptive`` learns ``alpha`` (a
    sigmoid into :data:`ALPHA_RANGE`) and ``scale`` (softplus + :data:`SCALE_LO`) as the
    parameters ``alpha_logit`` and ``scale_raw``, initialised at the given values, and trains on
    the negative log-likelihood (``density=True``), as the paper's adaptive loss does."""

    module_options = (inspect.Parameter("adaptive", inspect.Parameter.KEYWORD_ONLY,
                                        default=False, annotation="bool"),)

    def configure(self, *, adaptive: bool) -> None:
        _check_barron_module(adaptive=adaptive)
        self.config = {"adaptive": adaptive}
        self.alpha_logit: nn.Parameter | None = None
        self.scale_raw: nn.Parameter | None = None
        if adaptive:
            lo, hi = ALPHA_RANGE
            alpha, scale = float(self.hparams["alpha"]), float(self.hparams["scale"])
            if not lo < alpha < hi:
                raise ValueError(f"adaptive=True needs an initial alpha in ({lo}, {hi}), got "
                                 f"{alpha!r}")
            if scale <= SCALE_LO:
                raise ValueError(f"adaptive=True needs an initial scale > {SCALE_LO}, got "
                                 f"{scale!r}")
            self.alpha_logit = nn.Parameter(torch.tensor(_inverse_sigmoid_range(alpha, lo, hi)))
            s = scale - SCALE_LO
            self.scale_raw = nn.Parameter(torch.tensor(s + math.log(-math.expm1(-s))))

    @property
    def alpha(self) -> Tensor | float:
        """The current shape (learned when ``adaptive``)."""
        if self.alpha_logit is None:
            return float(self.hparams["alpha"])
        lo, hi = ALPHA_RANGE
        return lo + (hi - lo) * torch.sigmoid(self.alpha_logit)

    @property
    def scale(self) -> Tensor | float:
        """The current scale (learned when ``adaptive``)."""
        if self.scale_raw is None:
            return float(self.hparams["scale"])
        return F.softplus(self.scale_raw) + SCALE_LO

    def call_kwargs(self) -> dict[str, Any]:
        kwargs = super().call_kwargs()
        if self.alpha_logit is not None:
            kwargs.update(alpha=self.alpha, scale=self.scale, density=True)
        return kwargs


@register("barron", family="regression", kind="regression", paper="A General and Adaptive "
          "Robust Loss Function", arxiv="1701.03077",
          summary="|a-2|/a (((x/c)^2/|a-2| + 1)^(a/2) - 1); adaptive: + log c + log Z(a)",
          peers=("kornia.losses.charbonnier_loss", "kornia.losses.cauchy_loss",
                 "kornia.losses.geman_mcclure_loss", "kornia.losses.welsch_loss"),
          reduction="per element")
class BarronLoss(_AdaptiveBarron, function=barron_loss, check=_check_barron_module):
    """Module form of :func:`barron_loss` (``adaptive=True``: learned alpha and scale)."""


# --------------------------------------------------------------------------------------------
# Pseudo-Huber (iCT) and Cauchy (improved latent consistency training)
# --------------------------------------------------------------------------------------------

LCT_PAPER = "Improved Training Technique for Latent Consistency Models"
_check_c = hparams(c=Real(gt=0, optional=True))


def _c_value(c: float | None, pred: Tensor) -> float:
    """``c``, or iCT's default ``0.00054 sqrt(d)`` with ``d`` the per-sample dimension."""
    if c is not None:
        return float(c)
    d = max(1, pred[0].numel()) if pred.shape[0] else max(1, math.prod(pred.shape[1:]))
    return 0.00054 * math.sqrt(d)


def pseudo_huber_loss(pred: Tensor, target: Tensor, *, c: float | None = None,
                      reduction: Reduction = "mean") -> Tensor:
    r"""Pseudo-Huber loss per sample, iCT's consistency metric:
    :math:`\sqrt{\lVert x - y\rVert_2^2 + c^2} - c` over each sample's trailing dims.

    Args:
        pred, target: ``[N, ...]`` predictions and targets of one shape.
        c: the scale (default None: ``0.00054 sqrt(d)``, iCT's, with ``d`` the size of one
            sample).
        reduction: ``"mean"`` over samples, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: the baseline of Dao et al., "Improved Training Technique for Latent Consistency
    Models", arXiv 2502.01441 (from Song & Dhariwal, "Improved Techniques for Training
    Consistency Models", arXiv 2310.14189).
    """
    _check_c(c=c)
    pred, target = _inputs(pred, target)
    cv = _c_value(c, pred)
    return reduce((_per_sample_sq(pred - target) + cv * cv).sqrt() - cv, reduction)


@register("pseudo_huber", family="regression", kind="regression", paper=LCT_PAPER,
          arxiv="2502.01441", summary="sqrt(||x - y||^2 + c^2) - c per sample")
class PseudoHuberLoss(LossModule, function=pseudo_huber_loss, check=_check_c):
    """Module form of :func:`pseudo_huber_loss`."""


def cauchy_loss(pred: Tensor, target: Tensor, *, c: float | None = None,
                reduction: Reduction = "mean") -> Tensor:
    r"""Cauchy loss per sample: :math:`\log\big(1 + \lVert x - y\rVert_2^2 / (2 c^2)\big)`,
    which replaces iCT's pseudo-Huber loss to damp the impulsive outliers of latent spaces (its
    gradient decays as ``1 / ||x - y||`` instead of staying bounded away from 0).

    This is Barron's loss at ``alpha=0`` on the per-sample residual norm. The exact form of the
    paper's equation (the factor 2, the default ``c``; the paper anneals ``c`` with a schedule)
    is from the abstract and the Barron family, not verified against the paper text.

    Args:
        pred, target: ``[N, ...]`` predictions and targets of one shape.
        c: the scale (default None: ``0.00054 sqrt(d)``, as :func:`pseudo_huber_loss`).
        reduction: ``"mean"`` over samples, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Dao, Doan, Liu, Le, Metaxas, "Improved Training Technique for Latent Consistency
    Models", arXiv 2502.01441.
    """
    _check_c(c=c)
    pred, target = _inputs(pred, target)
    cv = _c_value(c, pred)
    return reduce(torch.log1p(_per_sample_sq(pred - target) / (2 * cv * cv)), reduction)


@register("cauchy", family="regression", kind="regression", paper=LCT_PAPER,
          arxiv="2502.01441", summary="log(1 + ||x - y||^2 / (2 c^2)) per sample",
          peers=("kornia.losses.cauchy_loss",))
class CauchyLoss(LossModule, function=cauchy_loss, check=_check_c):
    """Module form of :func:`cauchy_loss`."""


# --------------------------------------------------------------------------------------------
# Z-error: batch z-score mask
# --------------------------------------------------------------------------------------------

_check_z_error = hparams(threshold=Real(gt=0))


def z_error_loss(pred: Tensor, target: Tensor, *, threshold: float = 2.0,
                 reduction: Reduction = "mean") -> Tensor:
    r"""Z-error loss: the squared error of the samples whose loss is within ``threshold``
    standard deviations of the batch mean; the others are masked out of the batch.

    .. math::
        L_i = \overline{(x_i - y_i)^2},\quad z_i = \frac{L_i - \mu_L}{\sigma_L},\quad
        m_i = [\,|z_i| \le \tau\,],\quad \mathcal L = \frac{\sum_i m_i L_i}{\sum_i m_i}

    with :math:`\mu_L, \sigma_L` the batch mean and (unbiased) standard deviation, treated as
    constants (the mask carries no gradient). A batch of one sample or of equal losses keeps
    every sample. Formula from the abstract and a summary of the technical note (z-scores of
    the per-sample MSE in the batch, masked mean over inliers), not verified against the paper
    text; the default threshold 2 is the note's example.

    Args:
        pred, target: ``[N, ...]`` predictions and targets of one shape.
        threshold: :math:`\tau`, in batch standard deviations (default 2).
        reduction: ``"mean"`` over the kept samples, ``"sum"``, or ``"none"`` (``[N]``,
            masked samples 0).

    Returns:
        The loss, float32 for half inputs.

    Paper: Godin, "Z-Error Loss for Training Neural Networks", arXiv 2506.02154.
    """
    _check_z_error(threshold=threshold)
    pred, target = _inputs(pred, target)
    per = _rows((pred - target).pow(2)).mean(1)
    with torch.no_grad():
        if per.numel() < 2:
            keep = torch.ones_like(per)
        else:
            mu, sd = per.mean(), per.std()
            z = torch.where(sd > 0, (per - mu) / torch.where(sd > 0, sd, torch.ones_like(sd)),
                            torch.zeros_like(per))
            keep = (z.abs() <= threshold).to(per.dtype)
            keep = torch.where(torch.isnan(per), torch.ones_like(keep), keep)  # NaN propagates
    return reduce(per, reduction, weights=keep)


@register("z_error", family="regression", kind="regression", paper="Z-Error Loss for Training "
          "Neural Networks", arxiv="2506.02154",
          summary="mean of (x - y)^2 over samples with |z-score of their loss| <= threshold")
class ZErrorLoss(LossModule, function=z_error_loss, check=_check_z_error):
    """Module form of :func:`z_error_loss`."""


# --------------------------------------------------------------------------------------------
# ConR: contrastive regulariser for imbalanced regression
# --------------------------------------------------------------------------------------------

ConRBase = Literal["l1", "mse"]
_check_conr = hparams(base=Choice("l1", "mse"), beta=Real(ge=0), omega=Real(gt=0),
                      temperature=Real(gt=0), pushing=Real(ge=0))


def _row_distance(v: Tensor) -> Tensor:
    """Pairwise euclidean distance of the rows of ``v[N, ...]`` (absolute difference for
    scalar targets): ``[N, N]``, exact zeros on the diagonal."""
    flat = _rows(v)
    return (flat.unsqueeze(1) - flat.unsqueeze(0)).pow(2).sum(-1).sqrt()


def conr_loss(pred: Tensor, target: Tensor, *, features: Tensor | None = None,
              weights: Tensor | None = None, base: ConRBase = "l1", beta: float = 1.0,
              omega: float = 1.0, temperature: float = 0.07, pushing: float = 0.01,
              reduction: Reduction = "mean") -> Tensor:
    r"""A base regression loss plus ConR, the contrastive regulariser for imbalanced targets.

    For anchor ``j``, positives are the other samples with close labels,
    :math:`P_j = \{i \ne j: d(y_i, y_j) \le \omega\}`, and negatives the samples with far labels
    but close predictions (the disagreements of feature and label space),
    :math:`N_j = \{q: d(y_q, y_j) > \omega,\ d(\hat y_q, \hat y_j) \le \omega\}`. With
    :math:`s_{jk} = \cos(z_j, z_k) / \tau` on the features and the pushing weight
    :math:`S_{jq} = w_j \exp(e \cdot d(y_j, y_q))`,

    .. math::
        \ell_j = -\frac{1}{|P_j|}\sum_{i \in P_j} \log
        \frac{e^{s_{ji}}}{\sum_{i' \in P_j} e^{s_{ji'}} + \sum_{q \in N_j} S_{jq} e^{s_{jq}}}

    for anchors with positives and negatives (0 otherwise), and the loss of sample ``j`` is
    ``base(pred_j, y_j) + beta * w_j * l_j``: :math:`\mathcal L = \mathcal L_R + \beta
    \mathcal L_{ConR}`. The predictions only select the negatives (no gradient through them in
    ConR). Positives are the batch's other samples (the paper also pairs augmented views:
    pass both views as rows). ``w_j`` are the per-sample weights (the paper's density-based
    weights, e.g. inverse label frequency; default 1). The defaults ``omega = 1``,
    ``temperature = 0.07`` and ``pushing = 0.01`` are the official code's.

    Args:
        pred, target: ``[N]`` or ``[N, d]`` predictions and (continuous) labels.
        features: ``[N, D]`` features before the regression head (required).
        weights: ``[N]`` non-negative per-sample weights ``w`` (default 1).
        base: the regression loss ``"l1"`` (default, the paper's AgeDB setting) or ``"mse"``,
            averaged over each sample's label dims.
        beta: weight of ConR (default 1).
        omega: label / prediction distance threshold :math:`\omega` (default 1, label units).
        temperature: :math:`\tau` (default 0.07).
        pushing: :math:`e`, growth of the pushing weight with the label distance (0.01).
        reduction: ``"mean"`` over samples, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Keramati, Meng, Evans, "ConR: Contrastive Regularizer for Deep Imbalanced
    Regression", arXiv 2309.06651.
    """
    _check_conr(base=base, beta=beta, omega=omega, temperature=temperature, pushing=pushing)
    pred, target = _inputs(pred, target)
    n = pred.shape[0]
    if features is None:
        raise ValueError("conr needs features=[N, D], the representation before the head")
    check_float("features", features)
    if features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"features must have shape [{n}, D] (one row per sample of pred), got "
                         f"{tuple(features.shape)}")
    check_same_device(pred=pred, features=features)
    feats = features.to(pred.dtype)
    if weights is None:
        w = torch.ones(n, dtype=pred.dtype, device=pred.device)
    else:
        check_float("weights", weights)
        if weights.shape != (n,):
            raise ValueError(f"weights must have shape [{n}], got {tuple(weights.shape)}")
        if not bool((weights.detach() >= 0).all()):
            raise ValueError("weights must be non-negative and finite")
        w = weights.to(pred.dtype)
    diff = pred - target
    per = _rows(diff.abs() if base == "l1" else diff.pow(2)).mean(1)
    if n < 2:
        return reduce(per, reduction)
    with torch.no_grad():
        d_y = _row_distance(target.detach())
        d_p = _row_distance(pred.detach())
        eye = torch.eye(n, dtype=torch.bool, device=pred.device)
        pos = (d_y <= omega) & ~eye
        neg = (d_y > omega) & (d_p <= omega)
        valid = pos.any(1) & neg.any(1)
        log_push = w.detach().clamp_min(torch.finfo(pred.dtype).tiny).log().unsqueeze(1) + \
            pushing * d_y
    z = F.normalize(feats, dim=1)
    s = z @ z.T / temperature
    used = pos | neg
    # rows without a valid anchor use every entry (finite), then contribute 0
    used = torch.where(valid.unsqueeze(1), used, torch.ones_like(used))
    terms = torch.where(neg, s + log_push, s).masked_fill(~used, float("-inf"))
    log_den = torch.logsumexp(terms, dim=1)
    n_pos = pos.sum(1).clamp_min(1).to(pred.dtype)
    pos_mean = torch.where(pos, s, torch.zeros_like(s)).sum(1) / n_pos
    con = torch.where(valid, log_den - pos_mean, torch.zeros_like(log_den))
    return reduce(per + beta * w * con, reduction)


@register("conr", family="regression", kind="regression", paper="ConR: Contrastive "
          "Regularizer for Deep Imbalanced Regression", arxiv="2309.06651",
          summary="base(pred, y) + beta * InfoNCE over label-close positives and "
          "prediction-close, label-far negatives weighted w exp(e d(y_j, y_q))")
class ConRLoss(LossModule, function=conr_loss, check=_check_conr):
    """Module form of :func:`conr_loss` (call ``loss(pred, target, features=z)``)."""


# --------------------------------------------------------------------------------------------
# Discrete-time hazard (survival) likelihood
# --------------------------------------------------------------------------------------------


def _survival_target(target: Tensor, n: int, bins: int) -> tuple[Tensor, Tensor]:
    """``target[N, 2]`` = (time bin, event) -> (int64 bins in [0, T), bool events)."""
    if target.shape != (n, 2):
        raise ValueError(f"target must have shape [{n}, 2] (time bin, event), got "
                         f"{tuple(target.shape)}")
    t = target.detach()
    time, event = t[:, 0], t[:, 1]
    # data checks through require: async asserts under torch.compile, no graph break
    require((time >= 0) & (time < bins) & (time == time.round()), lambda: (
        f"target[:, 0] must hold integer time bins in [0, {bins}) (the columns of pred), got "
        f"{time[:8].tolist()}"))
    require((event == 0) | (event == 1), lambda: (
        f"target[:, 1] must hold event indicators 0 or 1, got {event[:8].tolist()}"))
    return time.long(), event.bool()


def hazard_loss(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    r"""Discrete-time hazard loss: the negative log-likelihood of a survival time under
    per-interval hazards :math:`h_t = \sigma(\text{pred}_t)`.

    A sample observed up to bin :math:`k` with event indicator :math:`\delta` has

    .. math::
        -\log L = -\sum_{t < k} \log(1 - h_t) - \delta \log h_k - (1 - \delta) \log(1 - h_k)

    (an event in bin ``k``, or survival through bin ``k`` when censored there). Computed with
    ``logsigmoid``: finite for any finite logits. The censoring convention (a sample censored
    in bin ``k`` survived it) is the common one of discrete-time survival models; the
    ad-discontinuation paper's exact convention is not verified.

    Args:
        pred: ``[N, T]`` hazard logits, one per time bin.
        target: ``[N, 2]``: the time bin in ``[0, T)`` (integer-valued) and the event
            indicator (1 event, 0 censored).
        reduction: ``"mean"`` over samples, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs. The concordance index of the predicted risk is
        :func:`losslab.metrics.regression.concordance_index`.

    Paper: discrete-time hazard model (Tutz & Schmid, "Modeling Discrete Time-to-Event Data",
    2016), as the ad-discontinuation survival paper of the catalog uses it (no arXiv id).
    """
    check_float("pred", pred)
    check_float("target", target)
    if pred.ndim != 2:
        raise ValueError(f"pred must have shape [N, T] (hazard logits per bin), got "
                         f"{tuple(pred.shape)}")
    check_same_device(pred=pred, target=target)
    n, bins = pred.shape
    time, event = _survival_target(target, n, bins)
    x = pred.to(compute_dtype(pred.dtype))
    cols = torch.arange(bins, device=x.device).unsqueeze(0)
    at = cols == time.unsqueeze(1)
    before = cols < time.unsqueeze(1)
    log_h, log_s = F.logsigmoid(x), F.logsigmoid(-x)
    survive = before | (at & ~event.unsqueeze(1))
    died = at & event.unsqueeze(1)
    zero = torch.zeros_like(x)
    ll = torch.where(survive, log_s, zero) + torch.where(died, log_h, zero)
    return reduce(-ll.sum(1), reduction)


@register("hazard", family="regression", kind="regression", paper="Modeling Discrete "
          "Time-to-Event Data (discrete-time hazard likelihood)", arxiv="",
          summary="-sum_{t<k} log(1 - h_t) - d log h_k - (1 - d) log(1 - h_k)")
class HazardLoss(LossModule, function=hazard_loss):
    """Module form of :func:`hazard_loss`."""


# --------------------------------------------------------------------------------------------
# Ordinal regression: cumulative logits (proportional odds / PRESTO)
# --------------------------------------------------------------------------------------------

ORDINAL_PAPER = "Predicting Rare Events by Shrinking Towards Proportional Odds"
OrdinalForm = Literal["cumulative", "binary"]
_check_ordinal = hparams(form=Choice("cumulative", "binary"),
                         threshold_weights=PerClass(ge=0, optional=True),
                         eps=Real(gt=0, lt=1))


def _ordinal_target(pred: Tensor, target: Tensor) -> Tensor:
    check_float("pred", pred)
    if pred.ndim != 2:
        raise ValueError(f"pred must have shape [N, K-1] (one cumulative logit per threshold), "
                         f"got {tuple(pred.shape)}")
    y = check_labels("target", target, pred.shape[0], of="pred")
    check_same_device(pred=pred, target=y)
    k = pred.shape[1] + 1
    require((y >= 0) & (y < k), lambda: (
        f"target must hold ordered categories in [0, {k}) (K = thresholds + 1), got values in "
        f"[{int(y.min())}, {int(y.max())}]"))
    return y


def ordinal_loss(pred: Tensor, target: Tensor, *, form: OrdinalForm = "cumulative",
                 threshold_weights: Sequence[float] | Tensor | None = None, eps: float = 1e-6,
                 reduction: Reduction = "mean") -> Tensor:
    r"""Ordinal regression loss on cumulative logits :math:`\eta_k = \operatorname{logit}
    P(y \le k \mid x)`, ``k = 0 .. K-2``.

    ``form="cumulative"`` (default): the negative log-likelihood of the cumulative-logit model,
    :math:`-\log\big(\sigma(\eta_y) - \sigma(\eta_{y-1})\big)` with :math:`\sigma(\eta_{-1}) = 0`
    and :math:`\sigma(\eta_{K-1}) = 1` -- the proportional odds model when
    :math:`\eta_k = \alpha_k + \beta^\top x`, and PRESTO's when every threshold has its own
    weights :math:`\eta_k = \alpha_k + \beta_k^\top x` (add :func:`presto_penalty` of the
    :math:`\beta_k` to shrink them towards proportional odds; :class:`PrestoHead` is that
    head). A non-monotone pair of thresholds gives a category probability below ``eps``; it is
    floored at ``eps`` (heads that keep the thresholds ordered never reach it).

    ``form="binary"``: the binary decomposition :math:`\sum_k w_k\,
    \mathrm{BCE}(\eta_k, [y \le k])`, with per-threshold weights ``w`` (``threshold_weights``,
    default 1): each threshold is a logistic regression, as PRESTO's per-threshold weights
    make it; finite and defined for any logits.

    Args:
        pred: ``[N, K-1]`` cumulative logits.
        target: ``[N]`` ordered categories in ``[0, K)`` (any integer dtype).
        form: ``"cumulative"`` (likelihood) or ``"binary"`` (per-threshold logistic losses).
        threshold_weights: ``[K-1]`` non-negative weights of the thresholds (``"binary"``).
        eps: floor of a category probability (``"cumulative"``; default 1e-6).
        reduction: ``"mean"`` over samples, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Faletto, Bien, "Predicting Rare Events by Shrinking Towards Proportional Odds",
    arXiv 2305.18700 (the cumulative-logit likelihood with threshold-specific weights and a
    fused L1 penalty on adjacent weight vectors; the likelihood form is the standard one of
    cumulative-logit models, not checked line by line against the paper).
    """
    _check_ordinal(form=form, threshold_weights=threshold_weights, eps=eps)
    y = _ordinal_target(pred, target)
    x = pred.to(compute_dtype(pred.dtype))
    n, t = x.shape
    if form == "binary":
        below = (y.unsqueeze(1) <= torch.arange(t, device=x.device)).to(x.dtype)
        per = F.binary_cross_entropy_with_logits(x, below, reduction="none")
        if threshold_weights is not None:
            w = torch.as_tensor(threshold_weights, dtype=x.dtype, device=x.device)
            if w.shape != (t,):
                raise ValueError(f"threshold_weights must have one weight per threshold ({t}), "
                                 f"got shape {tuple(w.shape)}")
            per = per * w
        return reduce(per.sum(1), reduction)
    if threshold_weights is not None:
        raise ValueError("threshold_weights applies to form='binary' only")
    cdf = torch.sigmoid(x)
    zeros = torch.zeros((n, 1), dtype=x.dtype, device=x.device)
    upper = torch.cat([cdf, zeros + 1], 1).gather(1, y.unsqueeze(1)).squeeze(1)
    lower = torch.cat([zeros, cdf], 1).gather(1, y.unsqueeze(1)).squeeze(1)
    # the top / bottom categories in log space: log(1 - sigma(eta)) = logsigmoid(-eta)
    last = F.logsigmoid(-x[:, -1]) if t else torch.zeros(n, dtype=x.dtype, device=x.device)
    first = F.logsigmoid(x[:, 0]) if t else torch.zeros(n, dtype=x.dtype, device=x.device)
    mid = (upper - lower).clamp_min(eps).log()
    logp = torch.where(y == 0, first, torch.where(y == t, last, mid))
    return reduce(-logp, reduction)


@register("ordinal", family="regression", kind="regression", paper=ORDINAL_PAPER,
          arxiv="2305.18700", summary="-log(sigma(eta_y) - sigma(eta_{y-1})) "
          "(binary: sum_k w_k BCE(eta_k, [y <= k]))")
class OrdinalLoss(LossModule, function=ordinal_loss, check=_check_ordinal):
    """Module form of :func:`ordinal_loss`."""

    tensor_hparams = ("threshold_weights",)


def presto_penalty(weight: Tensor, *, lam: float = 1.0) -> Tensor:
    r"""PRESTO's fused penalty :math:`\lambda \sum_{k \ge 1} \lVert \beta_k - \beta_{k-1}
    \rVert_1` over the threshold-specific weight vectors ``weight[K-1, D]`` (rows
    :math:`\beta_k`): zero exactly for the proportional odds model (all rows equal).

    Paper: Faletto, Bien, arXiv 2305.18700.
    """
    hparams(lam=Real(ge=0))(lam=lam)
    check_float("weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must have shape [K-1, D], got {tuple(weight.shape)}")
    return lam * (weight[1:] - weight[:-1]).abs().sum()


class PrestoHead(nn.Module):
    r"""PRESTO's head: cumulative logits :math:`\eta_k = \alpha_k + \beta_k^\top x` with one
    weight vector per threshold; :meth:`penalty` is :func:`presto_penalty` of the weights.
    Initialised at the proportional odds model (equal rows, increasing intercepts)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2:
            raise ValueError("PrestoHead needs in_features >= 1 and num_classes >= 2")
        beta = torch.randn(in_features) / math.sqrt(in_features)
        self.weight = nn.Parameter(beta.repeat(num_classes - 1, 1))
        self.bias = nn.Parameter(torch.linspace(-1.0, 1.0, num_classes - 1))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T + self.bias

    def penalty(self, lam: float = 1.0) -> Tensor:
        return presto_penalty(self.weight, lam=lam)


# --------------------------------------------------------------------------------------------
# Sinkhorn feature alignment (Feature-aligned N-BEATS)
# --------------------------------------------------------------------------------------------

_check_sinkhorn = hparams(epsilon=Real(gt=0), n_iters=Int(ge=1))


def _entropic_ot(cost: Tensor, epsilon: float, n_iters: int, symmetric: bool) -> Tensor:
    """Entropic OT value ``<a, f> + <b, g>`` between uniform weights, from log-domain Sinkhorn
    iterations on ``cost[N, M]`` (the symmetric, averaged update for a self term)."""
    n, m = cost.shape
    log_a = torch.full((n,), -math.log(n), dtype=cost.dtype, device=cost.device)
    log_b = torch.full((m,), -math.log(m), dtype=cost.dtype, device=cost.device)
    f = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(m, dtype=cost.dtype, device=cost.device)
    for _ in range(n_iters):
        f_new = -epsilon * torch.logsumexp(log_b + (g - cost) / epsilon, dim=1)
        if symmetric:
            f = 0.5 * (f + f_new)
            g = f
        else:
            f = f_new
            g = -epsilon * torch.logsumexp(log_a.unsqueeze(1) + (f.unsqueeze(1) - cost)
                                           / epsilon, dim=0)
    return f.mean() + g.mean()


def sinkhorn_alignment_loss(a: Tensor, b: Tensor, *, epsilon: float = 0.1,
                            n_iters: int = 50) -> Tensor:
    r"""Sinkhorn divergence between two feature sets (uniform weights), the alignment term of
    Feature-aligned N-BEATS.

    .. math::
        S_\epsilon(\alpha, \beta) = \mathrm{OT}_\epsilon(\alpha, \beta)
        - \tfrac12 \mathrm{OT}_\epsilon(\alpha, \alpha) - \tfrac12 \mathrm{OT}_\epsilon(\beta,
        \beta)

    with :math:`\mathrm{OT}_\epsilon` the entropic optimal-transport value for the cost
    :math:`C_{ij} = \tfrac12 \lVert a_i - b_j\rVert^2` (GeomLoss's ``p=2`` convention), from
    ``n_iters`` log-domain Sinkhorn iterations (the gradient is that of the unrolled
    iterations). :math:`S_\epsilon \ge 0`, and it is 0 for equal sets. The paper sums it over
    the stacks' features and over pairs of source domains, next to the forecasting loss;
    sum the calls accordingly. Small ``epsilon`` needs more iterations to converge.

    Args:
        a, b: ``[N, D]`` features of two domains (equal-size domain batches, as the paper
            samples them; the rows are not paired).
        epsilon: entropic regularisation :math:`\epsilon` (default 0.1).
        n_iters: Sinkhorn iterations (default 50).

    Returns:
        The divergence (a scalar: a set-level loss), float32 for half inputs.

    Paper: Lee, Kim, Cho, Kim, "Feature-aligned N-BEATS with Sinkhorn divergence", arXiv
    2305.15196 (the divergence is Feydy et al.'s, arXiv 1810.08278).
    """
    _check_sinkhorn(epsilon=epsilon, n_iters=n_iters)
    check_float("a", a)
    check_float("b", b)
    if a.ndim != 2 or b.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must be feature sets of one shape [N, D] (equal-size domain "
                         f"batches), got {tuple(a.shape)} and {tuple(b.shape)}")
    check_same_device(a=a, b=b)
    if a.shape[0] == 0:
        return zero_loss(a, b)
    dtype = compute_dtype(a.dtype)
    x, y = a.to(dtype), b.to(dtype)
    ab = _entropic_ot(0.5 * squared_euclidean(x, y), epsilon, n_iters, False)
    aa = _entropic_ot(0.5 * squared_euclidean(x), epsilon, n_iters, True)
    bb = _entropic_ot(0.5 * squared_euclidean(y), epsilon, n_iters, True)
    return ab - 0.5 * (aa + bb)


@register("sinkhorn_alignment", family="regression", kind="paired",
          paper="Feature-aligned N-BEATS with Sinkhorn divergence", arxiv="2305.15196",
          summary="OT_eps(a, b) - (OT_eps(a, a) + OT_eps(b, b)) / 2, cost |x - y|^2 / 2",
          peers=("geomloss.SamplesLoss", "ot.sinkhorn2"), reduction=None)
class SinkhornAlignmentLoss(LossModule, function=sinkhorn_alignment_loss,
                            check=_check_sinkhorn):
    """Module form of :func:`sinkhorn_alignment_loss`."""


# --------------------------------------------------------------------------------------------
# 3-D wavelet high-frequency loss (FedVSR)
# --------------------------------------------------------------------------------------------

_check_wavelet = hparams(dims=Int(ge=1, le=3))


def _haar_split(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """One level of the orthonormal Haar transform along ``dim``: ``(low, high)``; an odd
    length is extended by repeating its last sample (PyWavelets' ``symmetric`` mode)."""
    if x.shape[dim] % 2:
        x = torch.cat([x, x.narrow(dim, x.shape[dim] - 1, 1)], dim)
    even = x.narrow(dim, 0, x.shape[dim] // 2 * 2)
    shape = list(even.shape)
    shape[dim: dim + 1] = [shape[dim] // 2, 2]
    pairs = even.reshape(shape)
    first, second = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    return (first + second) / math.sqrt(2), (first - second) / math.sqrt(2)


def haar_subbands(x: Tensor, dims: int = 3) -> list[Tensor]:
    """The ``2^dims`` subbands of a one-level Haar transform over the last ``dims`` dims of
    ``x``; the first is the all-low band (``LLL`` for 3-D)."""
    bands = [x]
    for d in range(x.ndim - dims, x.ndim):
        bands = [b for band in bands for b in _haar_split(band, d)]
    return bands


def wavelet_hf_loss(pred: Tensor, target: Tensor, *, dims: int = 3,
                    reduction: Reduction = "mean") -> Tensor:
    r"""Wavelet high-frequency loss: the L1 distance between the high-frequency subbands of a
    one-level Haar transform of prediction and target over the last ``dims`` dims (3: time,
    height and width of a video clip ``[N, C, T, H, W]``), averaged over the coefficients of
    each sample.

    .. math::
        \ell = \frac{1}{|\mathcal H|}\sum_{s \in \mathcal H} \lVert W_s(\hat x) - W_s(x)
        \rVert_1,\quad \mathcal H = \text{the } 2^{d} - 1 \text{ bands other than } LLL

    The low band is left to the pixel loss it is added to. Formula from the FedVSR abstract
    (a 3-D DWT loss on high frequencies), with the Haar wavelet; not verified against the paper
    text or its code.

    Args:
        pred, target: ``[N, ..., T, H, W]`` predictions and targets of one shape (at least
            ``dims`` trailing dims).
        dims: number of trailing dims transformed (default 3).
        reduction: ``"mean"`` over samples, ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: "FedVSR: Towards Model-Agnostic Federated Learning in Video Super-Resolution"
    (no arXiv id found; code alimd94/FedVSR).
    """
    _check_wavelet(dims=dims)
    pred, target = _inputs(pred, target)
    if pred.ndim < dims + 1:
        raise ValueError(f"pred must have shape [N, ...] with at least {dims} trailing dims to "
                         f"transform, got {tuple(pred.shape)}")
    if pred.shape[0] == 0:
        return reduce(pred.reshape(0), reduction)
    bands = haar_subbands(pred - target, dims)[1:]  # linear: W(p) - W(t) = W(p - t)
    per = torch.stack([_rows(b.abs()).mean(1) for b in bands], 1).mean(1)
    return reduce(per, reduction)


@register("wavelet_hf", family="regression", kind="regression",
          paper="FedVSR: Towards Model-Agnostic Federated Learning in Video Super-Resolution",
          arxiv="", summary="mean |DWT_s(pred) - DWT_s(target)| over the 7 high-frequency "
          "3-D Haar subbands", example_hparams={"dims": 1})
class WaveletHFLoss(LossModule, function=wavelet_hf_loss, check=_check_wavelet):
    """Module form of :func:`wavelet_hf_loss`."""


# --------------------------------------------------------------------------------------------
# Cauchy-Schwarz divergence information bottleneck (CS-IB)
# --------------------------------------------------------------------------------------------

_check_cs_ib = hparams(beta=Real(ge=0), sigma=Real(gt=0), normalized=Flag())


def _gaussian_gram(a: Tensor, b: Tensor | None, sigma: float) -> Tensor:
    """``exp(-|a_i - b_j|^2 / (2 sigma^2))`` of the rows of ``a`` and ``b`` (default ``a``)."""
    d = squared_euclidean(_rows(a), None if b is None else _rows(b))
    return torch.exp(-d / (2 * sigma * sigma))


def _log2_floor(x: Tensor) -> Tensor:
    return torch.log2(x.clamp_min(torch.finfo(x.dtype).tiny))


def cs_conditional_divergence(x: Tensor, y: Tensor, y_hat: Tensor, *, sigma: float = 1.0
                              ) -> Tensor:
    r"""Empirical conditional Cauchy-Schwarz divergence :math:`D_{CS}(p(y|x) \,\Vert\,
    q(\hat y|x))` with Gaussian kernels of width ``sigma``:

    .. math::
        D = \log_2 \Omega(L_{yy}) + \log_2 \Omega(L_{\hat y\hat y}) - 2 \log_2
        \Omega(L_{\hat y y}),\quad \Omega(L) = \sum_j \frac{\sum_i K_{ji} L_{ji}}
        {\sum_i K_{ji}^2}

    with :math:`K` the Gram matrix of ``x``. Non-negative; 0 when ``y_hat == y``.
    """
    k = _gaussian_gram(x, None, sigma)
    den = k.pow(2).sum(1)

    def omega(gram: Tensor) -> Tensor:
        return ((k * gram).sum(1) / den).sum()

    return (_log2_floor(omega(_gaussian_gram(y, None, sigma)))
            + _log2_floor(omega(_gaussian_gram(y_hat, None, sigma)))
            - 2 * _log2_floor(omega(_gaussian_gram(y_hat, y, sigma))))


def cs_mutual_information(x: Tensor, t: Tensor, *, sigma: float = 1.0,
                          normalized: bool = False) -> Tensor:
    r"""Empirical Cauchy-Schwarz quadratic mutual information of ``x[N, ...]`` and
    ``t[N, ...]`` with Gaussian kernels:

    .. math::
        I_{CS} = \log_2 \frac{\operatorname{tr}(K_x K_t)}{N^2}
        + \log_2 \frac{\sum K_x \sum K_t}{N^4} - 2 \log_2 \frac{1^\top K_x K_t 1}{N^3}

    (>= 0 by the Cauchy-Schwarz inequality). ``normalized=True`` divides by
    :math:`\sqrt{I_{CS}(x; x)\, I_{CS}(t; t)}`, as the official code trains with.
    """
    n = x.shape[0]
    kx, kt = _gaussian_gram(x, None, sigma), _gaussian_gram(t, None, sigma)

    def qmi(a: Tensor, b: Tensor) -> Tensor:
        return (_log2_floor((a * b).sum() / n ** 2)
                + _log2_floor(a.sum() * b.sum() / n ** 4)
                - 2 * _log2_floor((a.sum(0) * b.sum(0)).sum() / n ** 3))

    out = qmi(kx, kt)
    if normalized:
        scale = (qmi(kx, kx) * qmi(kt, kt)).clamp_min(torch.finfo(out.dtype).tiny).sqrt()
        out = out / scale
    return out


def cs_ib_loss(pred: Tensor, target: Tensor, *, features: Tensor | None = None,
               inputs: Tensor | None = None, beta: float = 0.01, sigma: float = 1.0,
               normalized: bool = True) -> Tensor:
    r"""Cauchy-Schwarz divergence information bottleneck for regression:

    .. math::
        \mathcal L = D_{CS}\big(p(y|x) \,\Vert\, q(\hat y|x)\big) + \beta\, I_{CS}(x; t)

    the prediction term (:func:`cs_conditional_divergence`) replaces the MSE, and the
    compression term (:func:`cs_mutual_information`) penalises the information the
    representation ``t`` keeps about the input ``x``; both are kernel estimates on the batch
    (a set-level loss). Defaults (``beta = 0.01``, ``sigma = 1`` on standardised inputs,
    normalised CS-QMI) are the official code's.

    Args:
        pred, target: ``[N]`` or ``[N, d]`` predictions and targets.
        features: ``[N, K]`` the bottleneck representation ``t`` (required).
        inputs: ``[N, ...]`` the model's inputs ``x`` (required).
        beta: weight of the compression term (default 0.01).
        sigma: Gaussian kernel width (default 1).
        normalized: normalised CS-QMI (default True).

    Returns:
        The loss (a scalar), float32 for half inputs.

    Paper: Yu, Yu, Løkse, Jenssen, Principe, "Cauchy-Schwarz Divergence Information
    Bottleneck for Regression", arXiv 2404.17951.
    """
    _check_cs_ib(beta=beta, sigma=sigma, normalized=normalized)
    pred, target = _inputs(pred, target)
    n = pred.shape[0]
    for name, v in (("features", features), ("inputs", inputs)):
        if v is None:
            raise ValueError(f"cs_ib needs {name}=[N, ...] (the representation t and the "
                             f"model inputs x)")
        check_float(name, v)
        if v.ndim < 1 or v.shape[0] != n:
            raise ValueError(f"{name} must have one row per sample ({n}), got "
                             f"{tuple(v.shape)}")
        check_same_device(pred=pred, **{name: v})
    assert features is not None and inputs is not None
    if n == 0:
        return zero_loss(pred, features)
    x, t = inputs.to(pred.dtype), features.to(pred.dtype)
    div = cs_conditional_divergence(x, target, pred, sigma=sigma)
    return div + beta * cs_mutual_information(x, t, sigma=sigma, normalized=normalized)


@register("cs_ib", family="regression", kind="regression", paper="Cauchy-Schwarz Divergence "
          "Information Bottleneck for Regression", arxiv="2404.17951",
          summary="D_CS(p(y|x) || q(y_hat|x)) + beta I_CS(x; t), Gaussian-kernel estimates",
          reduction=None)
class CSIBLoss(LossModule, function=cs_ib_loss, check=_check_cs_ib):
    """Module form of :func:`cs_ib_loss` (``loss(pred, y, features=t, inputs=x)``)."""


# --------------------------------------------------------------------------------------------
# Two-term (multi-task) discrete-time hazard likelihood with per-sample (CTR) weights
# --------------------------------------------------------------------------------------------

AD_SURVIVAL_PAPER = ("Ad Creative Discontinuation Prediction with Multi-Modal Multi-Task Neural "
                     "Survival Networks")
_check_two_term = hparams(split=Int(ge=1), short_weight=Real(ge=0), long_weight=Real(ge=0))


def _sample_weights(weights: Tensor | None, shape: tuple[int, ...], like: Tensor
                    ) -> Tensor | None:
    """Validate optional non-negative per-sample ``weights`` of ``shape``; cast like ``like``."""
    if weights is None:
        return None
    check_float("weights", weights)
    if tuple(weights.shape) != shape:
        raise ValueError(f"weights must have shape {list(shape)} (one per sample), got "
                         f"{tuple(weights.shape)}")
    check_same_device(pred=like, weights=weights)
    w = weights.detach()
    require(torch.isfinite(w) & (w >= 0), "weights must be finite and non-negative")
    return weights.to(like.dtype)


def two_term_hazard_loss(pred: Tensor, target: Tensor, *, weights: Tensor | None = None,
                         split: int, short_weight: float = 1.0, long_weight: float = 1.0,
                         reduction: Reduction = "mean") -> Tensor:
    r"""Two-term (short-term / long-term) discrete-time hazard loss with per-sample weights:
    the multi-task survival objective of the ad-discontinuation paper, as its abstract fixes it.

    The ``T`` time bins are split at ``split`` into a short-term horizon ``[0, split)`` and a
    long-term horizon ``[split, T)``, each predicted by its own head (the two column blocks of
    ``pred``; concatenate the heads' hazard logits). With hazards
    :math:`h_t = \sigma(\text{pred}_t)` and the per-bin log-likelihood :math:`l_t` of
    :func:`hazard_loss` (:math:`\log(1 - h_t)` for a bin survived, :math:`\log h_k` for the
    event bin ``k``, :math:`\log(1 - h_k)` for the bin of censoring),

    .. math::
        \ell_i = w_i \Big(\lambda_s \underbrace{-\sum_{t < \text{split}} l_t}_{\text{short}}
        + \lambda_l \underbrace{-\sum_{t \ge \text{split}} l_t}_{\text{long}}\Big)

    The short-term term is the likelihood of the sample's history inside the short horizon (a
    sample still running at ``split`` survived all of it); the long-term term is the likelihood
    of the rest, conditional on reaching ``split`` (zero for a sample that ended before). The
    two terms factor the likelihood, :math:`P(T, \delta) = P(\text{short}) \cdot
    P(\text{rest} \mid T \ge \text{split})`, so with ``short_weight = long_weight = 1`` the loss
    is exactly :func:`hazard_loss` (tested); the weights rebalance the two tasks. ``weights``
    are the per-sample weights of the paper's click-through-rate weighting (pass each ad's
    CTR, or any non-negative importance), which make the creatives that contribute to sales
    count more.

    Formula from the abstract, not verified against the paper: the abstract fixes a hazard-based
    loss, a two-term estimation with multi-task learning and a CTR weighting of the loss; the
    split of the horizon into two likelihood terms, the linear task weights and the weighted
    mean below are this implementation's reading of it.

    Args:
        pred: ``[N, T]`` hazard logits, short-term head's ``split`` columns first.
        target: ``[N, 2]``: the time bin in ``[0, T)`` (integer-valued) and the event
            indicator (1 event / discontinued, 0 censored / still running).
        weights: optional ``[N]`` non-negative per-sample weights (the ads' CTR).
        split: first bin of the long-term horizon, ``1 <= split < T``.
        short_weight, long_weight: :math:`\lambda_s, \lambda_l` (default 1 each).
        reduction: ``"mean"`` (weighted mean :math:`\sum_i \ell_i / \sum_i w_i`; the plain
            mean over samples without ``weights``), ``"sum"`` or ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs. Evaluate with
        :func:`losslab.metrics.regression.concordance_index` (the paper's metric).

    Paper: Kitada, Iyatomi, Seki, "Ad Creative Discontinuation Prediction with Multi-Modal
    Multi-Task Neural Survival Networks", arXiv 2204.11588 (Applied Sciences 2022).
    """
    _check_two_term(split=split, short_weight=short_weight, long_weight=long_weight)
    check_float("pred", pred)
    check_float("target", target)
    if pred.ndim != 2:
        raise ValueError(f"pred must have shape [N, T] (hazard logits per bin), got "
                         f"{tuple(pred.shape)}")
    check_same_device(pred=pred, target=target)
    n, bins = pred.shape
    if split >= bins:
        raise ValueError(f"split must be below the number of bins T = {bins} (both horizons "
                         f"need a bin), got {split}")
    time, event = _survival_target(target, n, bins)
    x = pred.to(compute_dtype(pred.dtype))
    w = _sample_weights(weights, (n,), x)
    cols = torch.arange(bins, device=x.device).unsqueeze(0)
    at = cols == time.unsqueeze(1)
    survive = (cols < time.unsqueeze(1)) | (at & ~event.unsqueeze(1))
    died = at & event.unsqueeze(1)
    zero = torch.zeros_like(x)
    ll = torch.where(survive, F.logsigmoid(-x), zero) + torch.where(died, F.logsigmoid(x), zero)
    per = -(short_weight * ll[:, :split].sum(1) + long_weight * ll[:, split:].sum(1))
    return reduce(per, reduction, weights=w)


@register("two_term_hazard", family="regression", kind="regression", paper=AD_SURVIVAL_PAPER,
          arxiv="2204.11588", summary="w_i (l_s * NLL(bins < split) + l_l * NLL(bins >= split)), "
          "discrete-time hazards, w = CTR", example_hparams={"split": 2})
class TwoTermHazardLoss(LossModule, function=two_term_hazard_loss, check=_check_two_term):
    """Module form of :func:`two_term_hazard_loss` (``loss(pred, target, weights=ctr)``)."""


# --------------------------------------------------------------------------------------------
# RoMa: robust regression of refined matches, regression-by-classification of coarse matches
# --------------------------------------------------------------------------------------------

ROMA_PAPER = "RoMa: Revisiting Robust Losses for Dense Feature Matching"
_check_roma = hparams(alpha=Real(gt=0, le=2), scale=Real(gt=0))


def _match_inputs(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = _inputs(pred, target)
    if pred.ndim < 2:
        raise ValueError(f"pred must have shape [N, ..., d] (match coordinates, last dim the "
                         f"coordinates), got {tuple(pred.shape)}")
    return pred, target


def roma_regression_loss(pred: Tensor, target: Tensor, *, weights: Tensor | None = None,
                         alpha: float = 0.5, scale: float = 1e-4,
                         reduction: Reduction = "mean") -> Tensor:
    r"""RoMa's robust regression loss of the refined matches: a generalised Charbonnier loss of
    the end-point error.

    .. math::
        \ell = c^{\alpha} \Big(\big(\tfrac{r}{c}\big)^2 + 1\Big)^{\alpha / 2},
        \qquad r = \lVert \hat x - x \rVert_2

    (the Euclidean end-point error of each match, over the last dim). Up to the constant and
    the factor, this is Barron's loss of shape ``alpha`` at scale :math:`c / \sqrt{|\alpha -
    2|}` (tested): quadratic for :math:`r \ll c`, :math:`\propto r^{\alpha}` beyond, so that at
    ``alpha = 0.5`` outliers (wrong coarse matches) pull less than with L1. ``alpha = 1`` is
    :math:`\sqrt{r^2 + c^2}` (Charbonnier on the end-point error; at ``c = 1`` on 1-D residuals
    kornia's ``charbonnier_loss`` plus 1, tested). The value at ``r = 0`` is
    :math:`c^\alpha`, not 0 (a constant; the official code's form). The paper's defaults are
    ``alpha = 0.5`` and ``c = 1e-4`` in the normalised ``[-1, 1]`` image coordinates, times
    the refiner's stride (``c_s = s c``, s = 1, 2, 4, 8): pass ``scale = s * 1e-4`` per scale.
    The loss is applied where the ground-truth match is valid (``weights``: 0/1 validity or a
    soft certainty); the certainty head is trained apart with a BCE of weight 0.01.

    Verified against the official code (``RobustLosses.regression_loss``, Parskatt/RoMa); the
    paper's Section 3.4 text was not found.

    Args:
        pred, target: ``[N, ..., d]`` predicted and ground-truth match coordinates.
        weights: optional ``[N, ...]`` non-negative per-match weights (validity mask).
        alpha: shape :math:`\alpha \in (0, 2]` (default 0.5, the paper's).
        scale: :math:`c > 0` (default 1e-4, the paper's at stride 1).
        reduction: ``"mean"`` over matches (weighted mean with ``weights``), ``"sum"`` or
            ``"none"`` (``[N, ...]``, one value per match).

    Returns:
        The loss, float32 for half inputs.

    Paper: Edstedt, Sun, Bökman, Wadenbäck, Felsberg, "RoMa: Robust Dense Feature Matching"
    (first version "RoMa: Revisiting Robust Losses for Dense Feature Matching"), arXiv
    2305.15404.
    """
    _check_roma(alpha=alpha, scale=scale)
    pred, target = _match_inputs(pred, target)
    w = _sample_weights(weights, tuple(pred.shape[:-1]), pred)
    r2 = (pred - target).pow(2).sum(-1)
    # c^a (r^2 / c^2 + 1)^(a / 2) in log space: no overflow of (r / c)^2 at small c
    loss = torch.exp(alpha * math.log(scale) + 0.5 * alpha * torch.log1p(r2 / (scale * scale)))
    return reduce(loss, reduction, weights=w)


@register("roma_regression", family="regression", kind="regression", paper=ROMA_PAPER,
          arxiv="2305.15404", summary="c^a ((|x_hat - x| / c)^2 + 1)^(a/2), a = 0.5, c = 1e-4 "
          "(times the stride)", reduction="per match")
class RoMaRegressionLoss(LossModule, function=roma_regression_loss, check=_check_roma):
    """Module form of :func:`roma_regression_loss` (``loss(pred, target, weights=valid)``)."""


def roma_anchors(resolution: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """The ``[R^2, 2]`` anchor coordinates ``(x, y)`` of RoMa's coarse classifier: the centres
    of an ``R x R`` grid of cells on ``[-1, 1]^2``, anchor ``k = iy * R + ix`` at
    ``(-1 + (2 ix + 1) / R, -1 + (2 iy + 1) / R)`` (decode a prediction with
    ``roma_anchors(R)[logits.argmax(-1)]``)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    c = (torch.arange(resolution, dtype=torch.float64) * 2 + 1) / resolution - 1
    iy, ix = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([ix, iy], -1).reshape(-1, 2).to(dtype=dtype, device=device)


def roma_coarse_loss(pred: Tensor, target: Tensor, *, weights: Tensor | None = None,
                     reduction: Reduction = "mean") -> Tensor:
    r"""RoMa's coarse loss: regression by classification over a grid of anchor matches.

    The coarse matcher predicts, for each pixel, logits over :math:`K = R^2` anchors, the
    centres of an ``R x R`` grid on the normalised image ``[-1, 1]^2`` (:func:`roma_anchors`).
    Its target is the anchor nearest to the ground-truth match :math:`x`,

    .. math::
        \ell = -\log \operatorname{softmax}(z)_{k^*}, \qquad
        k^* = \arg\min_k \lVert a_k - x \rVert_2

    a cross-entropy that can express several modes (unlike a regression, which averages them),
    followed in RoMa by :func:`roma_regression_loss` on the refined matches. On a grid the
    nearest anchor is the per-axis nearest cell, ``ix = clamp(floor((x + 1) R / 2), 0,
    R - 1)`` (a match on a cell border, equidistant to two anchors, takes the upper one;
    matches outside ``[-1, 1]`` take the border anchor). The paper's resolution is
    ``R = 64`` (4096 anchors). Like the regression loss it is applied to the valid matches
    (``weights``).

    Verified against the official code (``RobustLosses.gm_cls_loss``, Parskatt/RoMa).

    Args:
        pred: ``[N, R^2]`` anchor logits (anchor ``k = iy * R + ix``).
        target: ``[N, 2]`` ground-truth matches ``(x, y)`` in ``[-1, 1]``.
        weights: optional ``[N]`` non-negative per-match weights (validity mask).
        reduction: ``"mean"`` over matches (weighted mean with ``weights``), ``"sum"`` or
            ``"none"`` (``[N]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Edstedt, Sun, Bökman, Wadenbäck, Felsberg, "RoMa: Robust Dense Feature Matching",
    arXiv 2305.15404.
    """
    check_float("pred", pred)
    check_float("target", target)
    if pred.ndim != 2:
        raise ValueError(f"pred must have shape [N, R^2] (anchor logits), got "
                         f"{tuple(pred.shape)}")
    n, k = pred.shape
    res = round(k**0.5)  # not math.isqrt: it also traces for a symbolic k (dynamic=True)
    if res * res != k or k == 0:
        raise ValueError(f"pred must have R^2 columns (an R x R anchor grid), got {k}")
    if tuple(target.shape) != (n, 2):
        raise ValueError(f"target must have shape [{n}, 2] (match coordinates x, y), got "
                         f"{tuple(target.shape)}")
    check_same_device(pred=pred, target=target)
    x = pred.to(compute_dtype(pred.dtype))
    w = _sample_weights(weights, (n,), x)
    t = target.detach().to(torch.float64)
    require(torch.isfinite(t), "target must hold finite match coordinates")
    cell = torch.floor((t + 1) * (res / 2)).clamp(0, res - 1).long()
    anchor = cell[:, 1] * res + cell[:, 0]
    return reduce(F.cross_entropy(x, anchor, reduction="none"), reduction, weights=w)


@register("roma_coarse", family="regression", kind="regression", paper=ROMA_PAPER,
          arxiv="2305.15404", summary="CE(anchor logits, nearest anchor of the match) on an "
          "R x R grid of [-1, 1]^2")
class RoMaCoarseLoss(LossModule, function=roma_coarse_loss):
    """Module form of :func:`roma_coarse_loss` (``loss(logits, match_xy, weights=valid)``)."""
