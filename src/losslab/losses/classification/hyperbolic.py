r"""Losses on the Poincaré ball (family ``classification``): Hyp-OC's hyperbolic pairwise
confusion (kind ``paired``).

Ball geometry of curvature :math:`-c` (Ganea et al., "Hyperbolic Neural Networks",
arXiv 1805.09112): Möbius addition

.. math::
    x \oplus_c y = \frac{(1 + 2c\langle x, y\rangle + c\|y\|^2)\, x + (1 - c\|x\|^2)\, y}
                        {1 + 2c\langle x, y\rangle + c^2 \|x\|^2 \|y\|^2},

geodesic distance :math:`d_c(x, y) = \frac{2}{\sqrt c} \operatorname{artanh}(\sqrt c\,
\|(-x) \oplus_c y\|)` and the exponential map at the origin
:math:`\exp_0^c(v) = \tanh(\sqrt c \|v\|)\, v / (\sqrt c \|v\|)`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Choice, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.registry import register

__all__ = ["HypPCLoss", "expmap0", "hyp_pc_loss", "mobius_add", "poincare_distance"]

#: Points are kept at most this far (in units of the radius 1/sqrt(c)) from the boundary, as
#: hyperbolic-network code does, so that artanh stays finite.
BALL_EPS = 1e-5


def _norm(x: Tensor) -> Tensor:
    """Row norms with a zero (not NaN) gradient at the zero vector; NaN rows stay NaN."""
    sq = x.pow(2).sum(-1)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), sq * 0.0)


def mobius_add(x: Tensor, y: Tensor, *, c: float) -> Tensor:
    r"""Möbius addition :math:`x \oplus_c y` of rows of ``x`` and ``y`` (``[..., D]``)."""
    xy = (x * y).sum(-1, keepdim=True)
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c * c * x2 * y2
    return num / den.clamp_min(1e-15)


def expmap0(v: Tensor, *, c: float) -> Tensor:
    r"""Exponential map at the origin :math:`\exp_0^c(v)`, rows projected inside the ball."""
    sc = math.sqrt(c)
    n = _norm(v).unsqueeze(-1)
    # tanh(s n) / (s n) -> 1 as n -> 0; the where keeps the zero row's gradient finite.
    small = n < 1e-12
    safe = torch.where(small, torch.ones_like(n), n)
    scale = torch.where(small, torch.ones_like(n), torch.tanh(sc * safe) / (sc * safe))
    return _project(scale * v, c=c)


def _project(x: Tensor, *, c: float) -> Tensor:
    """Pull rows with :math:`\\sqrt c \\|x\\| > 1 - \\epsilon` back to that radius."""
    top = (1 - BALL_EPS) / math.sqrt(c)
    n = _norm(x).unsqueeze(-1)
    return torch.where(n > top, x * (top / torch.where(n > top, n, torch.ones_like(n))), x)


def poincare_distance(x: Tensor, y: Tensor, *, c: float) -> Tensor:
    r"""Geodesic distance :math:`d_c(x_i, y_i)` between rows (``[N, D]`` -> ``[N]``)."""
    sc = math.sqrt(c)
    w = _norm(mobius_add(-x, y, c=c))
    return 2.0 / sc * torch.atanh((sc * w).clamp(max=1 - BALL_EPS))


_check_hyp_pc = hparams(curvature=Real(gt=0), inputs=Choice("tangent", "ball"))


def hyp_pc_loss(
    a: Tensor,
    b: Tensor,
    *,
    curvature: float = 0.1,
    inputs: Literal["tangent", "ball"] = "tangent",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Hyperbolic pairwise confusion (Hyp-PC): the Poincaré distance between paired samples.

    .. math::
        \ell_i = d_c(x_i, y_i) = \frac{2}{\sqrt c}\operatorname{artanh}\big(\sqrt c\,
        \|(-x_i) \oplus_c y_i\|\big)

    Hyp-OC pulls together pairs of same-class (bona fide) features on the ball; the official
    code pairs the first half of a batch with its second half (``a = f[:M]``, ``b = f[M:]``)
    and adds the term to the hyperbolic cross-entropy with weight 1.

    Args:
        a, b: ``[N, D]`` paired features: tangent vectors at the origin (``inputs="tangent"``,
            default: mapped to the ball by :math:`\exp_0^c`, so any real input is valid) or
            points of the ball (``inputs="ball"``: rows with :math:`\sqrt c \|x\| \ge 1` raise
            ``ValueError``).
        curvature: :math:`c > 0`, the ball has curvature :math:`-c` (default 0.1, the official
            code's default). As :math:`c \to 0`, :math:`d_c(x, y) \to 2 \|x - y\|`.
        inputs: ``"tangent"`` or ``"ball"``.
        reduction: ``"mean"`` over pairs, ``"sum"``, ``"none"`` (``[N]``). The official code
            divides the sum over the ``M`` pairs by the batch size ``2M``, i.e. half our mean.

    Identical rows give 0 with a zero gradient (the distance is not differentiable there).
    Points are kept :math:`10^{-5}` of the radius inside the boundary, so the loss is finite.

    Paper: Narayan et al., "Hyp-OC: Hyperbolic One Class Classification for Face
    Anti-Spoofing", arXiv 2404.14406. The paper's text could not be read here; the formula is
    the standard Poincaré distance, checked against the official code's loss (which evaluates
    ``arctan`` where the distance has ``artanh``; we use the distance, ``artanh``).
    """
    _check_hyp_pc(curvature=curvature, inputs=inputs)
    a, b = prepare_paired(a, b, normalize=False)
    c = float(curvature)
    if inputs == "tangent":
        x, y = expmap0(a, c=c), expmap0(b, c=c)
    else:
        for name, t in (("a", a), ("b", b)):
            if t.numel() and bool((math.sqrt(c) * _norm(t.detach()) >= 1).any()):
                raise ValueError(f"{name} must hold points of the Poincaré ball "
                                 f"(sqrt(curvature) * ||row|| < 1) when inputs='ball'")
        x, y = _project(a, c=c), _project(b, c=c)
    return reduce(poincare_distance(x, y, c=c), reduction)


@register(
    "hyp_pc",
    family="classification",
    kind="paired",
    paper="Hyp-OC: Hyperbolic One Class Classification for Face Anti-Spoofing",
    arxiv="2404.14406",
    summary="Poincare distance d_c(a_i, b_i) = 2/sqrt(c) artanh(sqrt(c) ||-a_i (+)_c b_i||)",
    reduction="per pair",
)
class HypPCLoss(LossModule, function=hyp_pc_loss, check=_check_hyp_pc):
    """Module form of :func:`hyp_pc_loss`."""
