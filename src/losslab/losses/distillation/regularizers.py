r"""EQ-Net's weight-distribution regulariser (WDR), used beside its progressive
self-distillation (GPG: ``kd`` with ``alpha=0.5, temperature=1`` from the previous subnet).

Kind ``weights``: ``loss(*weights)``, one tensor per layer (e.g. ``[m.weight for m in
model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][1:]``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, check_float, compute_dtype, reduce, require
from losslab._hparams import Real, hparams
from losslab.registry import register

__all__ = ["WDRLoss", "wdr_loss"]

EQNET = "EQ-Net: Elastic Quantization Neural Networks"


def wdr_loss(
    *weights: Tensor,
    skew_rate: float = 1.0,
    kurtosis_rate: float = 0.015,
    kurtosis_target: float = 1.8,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Weight-distribution regularisation: pull each layer's weights towards a symmetric,
    uniform-like distribution (friendlier to every bit-width of a quantisation supernet).

    For layer :math:`l` with weights standardised by their mean and *unbiased* standard
    deviation, :math:`z = (W_l - \bar W_l) / \sigma_l`:

    .. math::
        \mathrm{Skew}_l = \operatorname{mean}(z^3), \quad \mathrm{Kurt}_l =
        \operatorname{mean}(z^4), \qquad
        \ell_l = r_s\, \mathrm{Skew}_l^2 + r_k\, (\mathrm{Kurt}_l - \kappa)^2

    and :math:`L_{WDR} = \operatorname{mean}_l \ell_l` (``reduction="mean"``, the official
    ``kurt_rate * L_kurt + skew_rate * L_skew`` with ``L_x`` the mean over layers of the
    squared deviation). :math:`\kappa = 1.8` is the kurtosis of a uniform distribution.
    The official code applies it to every quantisable layer (Conv2d / Linear) except the
    first in module order: pass those weights.

    Args:
        *weights: one float tensor per layer, each with at least 2 elements and not constant.
        skew_rate: :math:`r_s \ge 0` (default 1.0, official ``skew_rate``).
        kurtosis_rate: :math:`r_k \ge 0` (default 0.015, official ``kurt_rate``).
        kurtosis_target: :math:`\kappa` (default 1.8, the uniform distribution's kurtosis).
        reduction: ``"mean"`` over layers, ``"sum"``, or ``"none"`` (one value per layer).
            No layer at all gives 0 (``"none"``: an empty tensor).

    Formula from the official code (github.com/xuke225/EQ-Net, ``runner/criterion.py``, as
    specified in the project's ``research/core-papers-spec.md`` §7.1); the paper's text was
    not checked beyond its abstract.

    Paper: Xu, Han, Tian, Yang, Zhang, "EQ-Net: Elastic Quantization Neural Networks",
    arXiv 2308.07650 (ICCV 2023).
    """
    _check_wdr(skew_rate=skew_rate, kurtosis_rate=kurtosis_rate,
               kurtosis_target=kurtosis_target)
    terms = []
    for i, w in enumerate(weights):
        check_float(f"weights[{i}]", w)
        if w.numel() < 2:
            raise ValueError(f"weights[{i}] must have at least 2 elements (a standard "
                             f"deviation), got {w.numel()}")
        x = w.reshape(-1).to(compute_dtype(w.dtype))
        sd = x.std()
        require(sd != 0, f"weights[{i}] is constant (zero standard deviation: no shape "
                         f"to regularise)")
        z = (x - x.mean()) / sd
        skew, kurt = z.pow(3).mean(), z.pow(4).mean()
        terms.append(skew_rate * skew.square() + kurtosis_rate * (kurt - kurtosis_target) ** 2)
    if not terms:
        return reduce(torch.zeros(0), reduction)
    devices = {t.device for t in terms}
    if len(devices) > 1:
        raise ValueError(f"weights must be on one device, got {sorted(map(str, devices))}")
    return reduce(torch.stack(terms), reduction)


_check_wdr = hparams(skew_rate=Real(ge=0), kurtosis_rate=Real(ge=0), kurtosis_target=Real())


@register(
    "wdr",
    family="distillation",
    kind="weights",
    paper=EQNET,
    arxiv="2308.07650",
    summary="mean_l [1.0 Skew(W_l)^2 + 0.015 (Kurt(W_l) - 1.8)^2], standardised weights",
    reduction="per layer",
)
class WDRLoss(LossModule, function=wdr_loss, check=_check_wdr):
    """Module form of :func:`wdr_loss` (call it with the layers' weights)."""
