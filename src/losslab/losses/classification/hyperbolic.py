r"""Losses on the Poincaré ball (family ``classification``): Hyp-OC's hyperbolic pairwise
confusion (kind ``paired``) and hyperbolic cross-entropy on a gyroplane (hyperbolic MLR)
classifier (kind ``embeddings``, learnable class gyroplanes).

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

import inspect
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_matrix,
    check_same_device,
    compute_dtype,
    reduce,
    require,
    zero_loss,
)
from losslab._hparams import Choice, Int, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.registry import register

__all__ = ["HypCELoss", "HypPCLoss", "expmap0", "hyp_ce_loss", "hyp_mlr_logits", "hyp_pc_loss",
           "mobius_add", "poincare_distance"]

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


def _to_ball(x: Tensor, name: str, c: float, inputs: str) -> Tensor:
    if inputs == "tangent":
        return expmap0(x, c=c)
    require(~(math.sqrt(c) * _norm(x.detach()) >= 1), f"{name} must hold points of the "
            "Poincaré ball (sqrt(curvature) * ||row|| < 1) when inputs='ball'")
    return _project(x, c=c)


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
    and adds the term to the hyperbolic cross-entropy (:func:`hyp_ce_loss`) with a weight
    (``lambda_tpc``; 1 in one of its training scripts).

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
    x, y = _to_ball(a, "a", c, inputs), _to_ball(b, "b", c, inputs)
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


# --------------------------------------------------------------------------------------------
# Hyperbolic cross-entropy (hyperbolic MLR)
# --------------------------------------------------------------------------------------------


def hyp_mlr_logits(x: Tensor, offsets: Tensor, normals: Tensor, *, c: float) -> Tensor:
    r"""Hyperbolic multinomial-logistic-regression scores ``[N, C]`` of ball points ``x``.

    .. math::
        \zeta_k(x) = \frac{\lambda^c_{p_k} \|a_k\|}{\sqrt c}\,
        \operatorname{asinh}\!\Big(\frac{2\sqrt c\, \langle (-p_k) \oplus_c x,\ a_k\rangle}
        {(1 - c\|(-p_k) \oplus_c x\|^2)\, \|a_k\|}\Big),\qquad
        \lambda^c_p = \frac{2}{1 - c\|p\|^2}

    (Ganea et al., arXiv 1805.09112, Eq. 25): the signed, scaled distance of ``x`` to the
    gyroplane through the offset :math:`p_k` (a ball point) with normal :math:`a_k`.
    Builds ``[N, C, D]`` (the Möbius sums of every sample with every offset).
    """
    sc = math.sqrt(c)
    z = mobius_add(-offsets.unsqueeze(0), x.unsqueeze(1), c=c)  # [N, C, D]
    a_norm = _norm(normals).clamp_min(1e-15)  # [C]
    lam = 2.0 / (1 - c * offsets.pow(2).sum(-1)).clamp_min(1e-15)  # [C]
    inner = (z * normals.unsqueeze(0)).sum(-1)  # [N, C]
    den = (1 - c * z.pow(2).sum(-1)).clamp_min(1e-15) * a_norm
    return lam * a_norm / sc * torch.asinh(2 * sc * inner / den)


_check_hyp_ce = hparams(curvature=Real(gt=0), inputs=Choice("tangent", "ball"))


def hyp_ce_loss(
    embeddings: Tensor,
    labels: Tensor,
    offsets: Tensor,
    normals: Tensor,
    *,
    curvature: float = 0.1,
    inputs: Literal["tangent", "ball"] = "tangent",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Hyperbolic cross-entropy (Hyp-CE): softmax cross-entropy over the hyperbolic MLR
    scores :math:`\zeta_k(x)` of :func:`hyp_mlr_logits`.

    .. math::
        \ell = -\log \frac{e^{\zeta_y(x)}}{\sum_k e^{\zeta_k(x)}}

    Args:
        embeddings: ``[N, D]`` features: tangent vectors at the origin (``inputs="tangent"``,
            default: mapped by :math:`\exp_0^c`) or ball points (``inputs="ball"``).
        labels: ``[N]`` class ids in ``[0, C)``.
        offsets: ``[C, D]`` gyroplane offsets :math:`p_k`, points of the ball (rows beyond
            the boundary are pulled inside). normals: ``[C, D]`` normals :math:`a_k`.
        curvature: :math:`c > 0` (default 0.1, Hyp-OC's official default). As
            :math:`c \to 0` the scores tend to the Euclidean :math:`4\langle a_k, x - p_k\rangle`.
        ref_embeddings, ref_labels, indices: not supported (``ValueError``): the loss compares
            samples with class gyroplanes.
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    The module (:class:`HypCELoss`) owns the gyroplanes as parameters in the parametrisation of
    the hyperbolic-network code the paper builds on: :math:`p_k = \exp_0^c(\tilde p_k)` and
    :math:`a_k = (1 - c\|p_k\|^2)\, \tilde a_k` (the transport of a tangent vector at the origin
    to :math:`p_k`). In Hyp-OC the classifier separates bona fide features (class 0) from
    pseudo-negatives sampled around their running mean (class 1); the sampling is a training
    procedure, not part of this loss.

    Paper: Narayan et al., "Hyp-OC: Hyperbolic One Class Classification for Face
    Anti-Spoofing", arXiv 2404.14406 (text not read here; checked against the official code's
    hyperbolic MLR), on Ganea, Bécigneul, Hofmann, "Hyperbolic Neural Networks",
    arXiv 1805.09112.
    """
    _check_hyp_ce(curvature=curvature, inputs=inputs)
    check_matrix("embeddings", embeddings)
    check_matrix("offsets", offsets, dim=embeddings.shape[1])
    check_matrix("normals", normals, dim=embeddings.shape[1])
    if normals.shape[0] != offsets.shape[0]:
        raise ValueError(f"offsets and normals must have one row per class, got "
                         f"{offsets.shape[0]} and {normals.shape[0]}")
    labels = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    check_same_device(embeddings=embeddings, labels=labels, offsets=offsets, normals=normals)
    if ref_embeddings is not None or ref_labels is not None or indices is not None:
        raise ValueError("hyp_ce compares samples with class gyroplanes: ref_embeddings, "
                         "ref_labels and indices= are not supported")
    n_cls = offsets.shape[0]
    require((labels >= 0) & (labels < n_cls), lambda: (  # no graph break under compile
        f"labels must lie in [0, {n_cls}) (the number of classes), got values "
        f"in [{int(labels.min())}, {int(labels.max())}]"))
    dt = compute_dtype(embeddings.dtype)
    c = float(curvature)
    x = _to_ball(embeddings.to(dt), "embeddings", c, inputs)
    logits = hyp_mlr_logits(x, _project(offsets.to(dt), c=c), normals.to(dt), c=c)
    per = F.cross_entropy(logits, labels, reduction="none")
    out = reduce(per, reduction)
    if reduction != "none":
        out = out + zero_loss(embeddings, offsets, normals)
    return out


@register(
    "hyp_ce",
    family="classification",
    kind="embeddings",
    paper="Hyp-OC: Hyperbolic One Class Classification for Face Anti-Spoofing",
    arxiv="2404.14406",
    summary="CE over hyperbolic MLR scores (signed gyroplane distances on the Poincare ball)",
    example_hparams={"num_classes": 4, "embedding_dim": 5},
)
class HypCELoss(LossModule, function=hyp_ce_loss,
                check=_check_hyp_ce | hparams(num_classes=Int(ge=1), embedding_dim=Int(ge=1))):
    """Module form of :func:`hyp_ce_loss`: owns the class gyroplanes (``offset_params`` and
    ``normal_params``, ``[num_classes, embedding_dim]`` each, initialised as the official
    code: Kaiming-uniform)."""

    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("embedding_dim", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
    )
    config: dict[str, Any]

    def configure(self, *, num_classes: int, embedding_dim: int) -> None:
        check = type(self).check
        if check is not None:
            check(num_classes=num_classes, embedding_dim=embedding_dim)
        self.config = {"num_classes": int(num_classes), "embedding_dim": int(embedding_dim)}
        self.offset_params = nn.Parameter(torch.empty(int(num_classes), int(embedding_dim)))
        self.normal_params = nn.Parameter(torch.empty(int(num_classes), int(embedding_dim)))
        nn.init.kaiming_uniform_(self.offset_params, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.normal_params, a=math.sqrt(5))

    def gyroplanes(self) -> tuple[Tensor, Tensor]:
        """The offsets :math:`p_k` (ball points) and normals :math:`a_k` of the classes."""
        c = float(self.hparams["curvature"])
        p = expmap0(self.offset_params, c=c)
        a = self.normal_params * (1 - c * p.pow(2).sum(-1, keepdim=True))
        return p, a

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        """The loss with this module's gyroplanes."""
        p, a = self.gyroplanes()
        return type(self).function(embeddings, labels, p, a, ref_embeddings=ref_embeddings,
                                   ref_labels=ref_labels, indices=indices, **self.call_kwargs())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self.config, **self.hparams}.items())
