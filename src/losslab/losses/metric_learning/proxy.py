"""Proxy and normalised-classifier losses for deep metric learning (kind ``embeddings``).

``loss(embeddings[N, D], labels[N])`` with labels in ``[0, C)``. The module owns the proxies /
class weights as an ``nn.Parameter`` ``proxies [C, D]`` (built from ``num_classes`` and
``embedding_dim``, on the shared shell :class:`ProxyLossModule`); the functional form takes them
explicitly: ``proxy_anchor_loss(embeddings, labels, proxies, *, margin=..., alpha=...)``.

These losses compare samples with class proxies, not with each other, so ``ref_embeddings``
and ``indices`` are rejected with a ``ValueError`` (PML does the same for ``ref_emb``).
Embeddings and proxies are L2-normalised inside every loss (cosine similarities), as in the
papers. Note on PML: its class weights ``W`` are ``[D, C]`` (the transpose of ours).
Circle loss's class-level form (:mod:`losslab.losses.metric_learning.weighted`) uses the same
input checks (:func:`validate_proxy_inputs`) and shell.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_matrix,
    check_reduction,
    check_same_device,
    compute_dtype,
    reduce,
    require,
    zero_loss,
)
from losslab._hparams import Flag, Int, Real, hparams
from losslab._ops.logsumexp import fixed_shift, log1p_sum_exp_, weighted_log1p_sum_exp
from losslab._ops.pairs import Members, class_masks
from losslab.distances import cosine_similarity, normalize_rows, squared_euclidean
from losslab.kernels.matrix_loss import KernelOut, matrix_loss
from losslab.losses.metric_learning._common import PML
from losslab.registry import register

__all__ = [
    "PROXY_SHAPE",
    "ArcFaceLoss",
    "CosFaceLoss",
    "MadaCosLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorKernel",
    "ProxyAnchorLoss",
    "ProxyBatch",
    "ProxyLossModule",
    "ProxyNCALoss",
    "arcface_loss",
    "cosface_loss",
    "madacos_loss",
    "normalized_softmax_loss",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "validate_proxy_inputs",
]

EXAMPLE = {"num_classes": 5, "embedding_dim": 8}

#: The proxies' shape, the module-only options of every proxy loss (checked at construction by
#: :meth:`ProxyLossModule.make_proxies` with the module's ``check``).
PROXY_SHAPE = hparams(num_classes=Int(ge=1), embedding_dim=Int(ge=1))


class ProxyBatch(NamedTuple):
    """Validated proxy-loss inputs (:func:`validate_proxy_inputs`): the embeddings and proxies
    in the compute dtype (float32 for half inputs), the labels as int64."""

    embeddings: Tensor
    labels: Tensor
    proxies: Tensor


def validate_proxy_inputs(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    indices: object,
    *,
    name: str,
) -> ProxyBatch:
    """Check a proxy loss's inputs (labels of any integer dtype, indexing the rows of
    ``proxies``); return them as a :class:`ProxyBatch`: embeddings and proxies in the compute
    dtype of the embeddings (float32 for half inputs, a differentiable cast, so fp16 embeddings
    work with fp32 proxies and the loss is computed and returned in float32), labels int64."""
    check_matrix("embeddings", embeddings)
    check_matrix("proxies", proxies, dim=embeddings.shape[1])
    labels = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    check_same_device(embeddings=embeddings, labels=labels, proxies=proxies)
    if ref_embeddings is not None or ref_labels is not None:
        raise ValueError(f"{name} compares samples with class proxies: ref_embeddings / "
                         "ref_labels are not supported")
    if indices is not None:
        raise ValueError(f"{name} compares samples with class proxies: indices= (mined pairs "
                         "or triplets) is not supported")
    c = proxies.shape[0]
    require((labels >= 0) & (labels < c), lambda: (  # no graph break under compile
        f"labels must lie in [0, {c}) (the number of classes / proxies), got "
        f"values in [{int(labels.min())}, {int(labels.max())}]"))
    dt = compute_dtype(embeddings.dtype)
    return ProxyBatch(embeddings.to(dt), labels, proxies.to(dt))


def _finish_ce(per_sample: Tensor, embeddings: Tensor, proxies: Tensor, reduction: str) -> Tensor:
    return reduce(per_sample, reduction) + (
        0.0 if reduction == "none" else zero_loss(embeddings, proxies)
    )


class ProxyLossModule(LossModule):
    """The shell of the losses that own class proxies: ``proxies`` (``nn.Parameter [C, D]``;
    ``None`` for circle's pair-level form), passed to the function by :meth:`forward`.

    ``num_classes`` and ``embedding_dim`` are module options (``module_options``: the generated
    ``__init__`` takes them before the function's hyperparameters, and :meth:`configure` makes
    the proxies from them); ``proxies_optional`` lets both be ``None`` (no proxies). A subclass
    overrides :meth:`reset_parameters` for another initialisation than the normal law.
    """

    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("embedding_dim", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
    )
    proxies_optional: ClassVar[bool] = False

    proxies: nn.Parameter | None
    config: dict[str, Any]

    def configure(self, *, num_classes: int | None, embedding_dim: int | None) -> None:
        self.make_proxies(num_classes, embedding_dim, optional=self.proxies_optional)

    def make_proxies(self, num_classes: int | None, embedding_dim: int | None, *,
                     optional: bool = False) -> None:
        """Create ``proxies [num_classes, embedding_dim]`` (initialised by
        :meth:`reset_parameters`); with ``optional=True`` both may be ``None`` (no proxies)."""
        check = type(self).check
        if check is not None:  # the declared rules of num_classes, embedding_dim (PROXY_SHAPE)
            check(num_classes=num_classes, embedding_dim=embedding_dim)
        self.config = {"num_classes": num_classes, "embedding_dim": embedding_dim}
        if optional and num_classes is None and embedding_dim is None:
            self.proxies = None
            return
        if num_classes is None or embedding_dim is None:
            raise ValueError("num_classes and embedding_dim must be given together" + (
                " (class-level form) or neither" if optional else ""))
        self.config = {"num_classes": int(num_classes), "embedding_dim": int(embedding_dim)}
        self.proxies = nn.Parameter(torch.empty(int(num_classes), int(embedding_dim)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the proxies (standard normal, unless the paper's code says otherwise)."""
        if self.proxies is not None:
            nn.init.normal_(self.proxies)

    @property
    def num_classes(self) -> int | None:
        return self.config["num_classes"]

    @property
    def embedding_dim(self) -> int | None:
        return self.config["embedding_dim"]

    def extra_repr(self) -> str:
        config = {k: v for k, v in self.config.items() if v is not None}
        return ", ".join(f"{k}={v!r}" for k, v in {**config, **self.hparams}.items())

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        """The loss's function with this module's proxies."""
        return type(self).function(embeddings, labels, self.proxies,
                                   ref_embeddings=ref_embeddings, ref_labels=ref_labels,
                                   indices=indices, **self.call_kwargs())


# --------------------------------------------------------------------------------------------
# Proxy-NCA
# --------------------------------------------------------------------------------------------


_check_proxy_nca = hparams(scale=Real(gt=0), exclude_positive=Flag())


def proxy_nca_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    scale: float = 1.0,
    exclude_positive: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Proxy-NCA loss.

    .. math::
        \ell_i = -\log \frac{e^{-s\, d(\hat x_i, \hat p_{y_i})}}
        {\sum_{z \in Z} e^{-s\, d(\hat x_i, \hat p_z)}},\qquad
        d = \|\cdot\|^2 \text{ on L2-normalised vectors}

    with :math:`Z` = the other classes (``exclude_positive=True``, the paper's NCA form) or all
    classes (``exclude_positive=False``: a softmax cross-entropy, as PML's ``ProxyNCALoss``).

    Args:
        proxies: ``[C, D]`` class proxies. scale: :math:`s` (default 1; ProxyNCA++ uses
            1/temperature). exclude_positive: see above (default True).
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies",
    arXiv 1703.07464.
    """
    _check_proxy_nca(scale=scale, exclude_positive=exclude_positive)
    embeddings, labels, proxies = validate_proxy_inputs(
        embeddings, labels, proxies, ref_embeddings, ref_labels, indices, name="proxy_nca")
    x = normalize_rows(embeddings)
    p = normalize_rows(proxies)
    logits = -scale * squared_euclidean(x, p)
    pos, _ = class_masks(labels, proxies.shape[0])
    target = logits.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    denom = logits.masked_fill(pos, float("-inf")) if exclude_positive else logits
    if exclude_positive and proxies.shape[0] == 1:
        return _finish_ce(target * 0.0, embeddings, proxies, reduction)
    per = torch.logsumexp(denom, dim=1) - target
    return _finish_ce(per, embeddings, proxies, reduction)


@register(
    "proxy_nca",
    family="metric-learning",
    kind="embeddings",
    paper="No Fuss Distance Metric Learning using Proxies",
    arxiv="1703.07464",
    summary="-log e^{-d(x, p_y)} / sum_{z != y} e^{-d(x, p_z)} on normalised x, p",
    peers=(f"{PML}.ProxyNCALoss",),
    reduction="per sample",
    example_hparams=EXAMPLE,
)
class ProxyNCALoss(ProxyLossModule, function=proxy_nca_loss,
                   check=_check_proxy_nca | PROXY_SHAPE):
    """Module form of :func:`proxy_nca_loss` (proxies: normal init)."""


# --------------------------------------------------------------------------------------------
# Proxy-Anchor
# --------------------------------------------------------------------------------------------


def proxy_anchor_terms(s: Tensor, w_pos: Tensor, w_neg: Tensor, margin: float,
                       alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-proxy positive and negative terms from similarities ``s [N, C]`` and (possibly
    soft) weights: :math:`\log(1 + \sum_x w^+ e^{-\alpha(s - \delta)})`,
    :math:`\log(1 + \sum_x w^- e^{\alpha(s + \delta)})`, and the with-positive flag."""
    pos = weighted_log1p_sum_exp(-alpha * (s - margin), w_pos, dim=0)
    neg = weighted_log1p_sum_exp(alpha * (s + margin), w_neg, dim=0)
    return pos, neg, (w_pos > 0).any(dim=0)


@dataclass(frozen=True)
class ProxyAnchorKernel:
    r"""Fused Proxy-Anchor kernel (:class:`~losslab.kernels.matrix_loss.Kernel`) over
    ``s [N, C]``, one value per proxy (column, ``axis = 0``). Each sample is the only member
    of its class's column: the positive terms are per-class sums over the ``N`` gathered
    similarities (``index_add``), the negative terms column log-sum-exps with the members
    removed; :math:`\partial/\partial s = \mp\alpha\,W`.

    Glossary:

    * ``label`` ``[N]``: each sample's class (its one member column);
    * ``logit_p`` ``[N]``: :math:`-\alpha(s_{x,y_x} - \delta)`, each sample's positive logit;
      ``shift_p`` ``[C]``: the per-class shift :math:`\max(0, \max_x \text{logit}_p)`;
    * ``total_p``, ``lse_p`` ``[C]``: :math:`1 + \sum_x e^{\text{logit}_p}` (shifted) and its
      log; ``weight_p`` ``[N]``: each sample's softmax-with-a-1 weight in its class;
    * ``logits`` ``[N, C]``: :math:`\alpha(s + \delta)` on the negatives (members
      ``-inf``); ``lse_n`` ``[C]``: the negative terms;
    * ``scale_p``, ``scale_n``: :math:`\alpha` divided by the ``"mean"`` denominators
      (:math:`|P^+|`, the proxies with a positive, and :math:`|P| = C`).
    """

    margin: float
    alpha: float
    symmetric: ClassVar[bool] = False
    axis: ClassVar[int] = 0

    def __call__(self, mat: Tensor, members: Members, mean: bool) -> KernelOut:
        s = mat
        n_classes = s.shape[1]
        label = members.idx[:, 0]
        # positives: log(1 + sum_{x of class p} e^{-a(s_xp - d)}), shifted per class
        logit_p = (members.gather(s).squeeze(1) - self.margin).mul_(-self.alpha)  # [N]
        shift_p = torch.zeros(n_classes, dtype=s.dtype, device=s.device).scatter_reduce_(
            0, label, logit_p, "amax", include_self=True)  # max(0, max of the class)
        exp_p = (logit_p - shift_p[label]).exp_()
        total_p = torch.exp(-shift_p).index_add_(0, label, exp_p)
        lse_p = total_p.log() + shift_p
        weight_p = exp_p / total_p[label]  # [N]
        scale_p = scale_n = self.alpha
        if mean:
            # proxies with a positive: a float64 0-d tensor (the same arithmetic as the
            # Python number it replaces; no sync, no graph break under torch.compile)
            present = torch.zeros(n_classes, dtype=torch.bool, device=s.device)
            n_with = present.index_fill_(0, label, True).sum().to(torch.float64).clamp_min(1.0)
            lse_p = lse_p / n_with
            scale_p, scale_n = self.alpha / n_with, self.alpha / n_classes
        # negatives: log(1 + sum_{x not of class p} e^{a(s_xp + d)}); a (s + d) <= a (1 + d)
        logits = s.add_(self.margin).mul_(self.alpha)
        members.fill_(logits, float("-inf"))
        shift = fixed_shift(self.alpha * (1 + self.margin), -self.alpha * (1 - self.margin),
                            s.dtype)
        lse_n, grad = log1p_sum_exp_(logits, dim=0, shift=shift, scale=scale_n)
        if mean:
            lse_n = lse_n / n_classes
        members.add_pos_(grad, (weight_p * -scale_p).unsqueeze(1))
        return KernelOut(lse_p + lse_n, grad=grad)


_check_proxy_anchor = hparams(margin=Real(), alpha=Real(gt=0))


def proxy_anchor_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin: float = 0.1,
    alpha: float = 32.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Proxy-Anchor loss.

    .. math::
        \mathcal L = \frac{1}{|P^+|}\sum_{p \in P^+}\log\Big(1 + \sum_{x \in X_p^+}
        e^{-\alpha(s(x, p) - \delta)}\Big) + \frac{1}{|P|}\sum_{p \in P}\log\Big(1 +
        \sum_{x \in X_p^-} e^{\alpha(s(x, p) + \delta)}\Big)

    with :math:`s` the cosine similarity, :math:`P^+` the proxies with a positive sample in the
    batch, :math:`X_p^\pm` the batch samples of / not of class :math:`p`.

    Args:
        proxies: ``[C, D]``. margin: :math:`\delta` (0.1), alpha: :math:`\alpha` (32), the
            paper's values.
        reduction: ``"mean"``: the formula above (PML's ``DivisorReducer`` gives the same);
            ``"sum"``: the sum over proxies of both terms without the 1/|P| factors;
            ``"none"``: ``[C]`` per-proxy positive + negative terms.

    The loss and its gradient come from one fused pass over ``[N, C]``
    (:class:`ProxyAnchorKernel`).

    Paper: Kim et al., "Proxy Anchor Loss for Deep Metric Learning", arXiv 2003.13911.
    """
    _check_proxy_anchor(margin=margin, alpha=alpha)
    pb = validate_proxy_inputs(embeddings, labels, proxies, ref_embeddings, ref_labels,
                               indices, name="proxy_anchor")
    check_reduction(reduction)
    return matrix_loss(pb.embeddings, pb.labels, pb.proxies, pb.proxies.shape[0],
                       metric="cosine", kernel=ProxyAnchorKernel(margin, alpha),
                       reduction=reduction)


@register(
    "proxy_anchor",
    family="metric-learning",
    kind="embeddings",
    paper="Proxy Anchor Loss for Deep Metric Learning",
    arxiv="2003.13911",
    summary="1/|P+| sum_p log(1+sum_x+ e^{-a(s-d)}) + 1/|P| sum_p log(1+sum_x- e^{a(s+d)})",
    peers=(f"{PML}.ProxyAnchorLoss",),
    reduction="per proxy",
    example_hparams=EXAMPLE,
)
class ProxyAnchorLoss(ProxyLossModule, function=proxy_anchor_loss,
                      check=_check_proxy_anchor | PROXY_SHAPE):
    """Module form of :func:`proxy_anchor_loss` (proxies: kaiming normal, fan_out, as the
    authors' code)."""

    def reset_parameters(self) -> None:
        if self.proxies is not None:
            nn.init.kaiming_normal_(self.proxies, mode="fan_out")


# --------------------------------------------------------------------------------------------
# Normalized softmax, ArcFace, CosFace, MadaCos
# --------------------------------------------------------------------------------------------


_check_normalized_softmax = hparams(temperature=Real(gt=0))
#: ArcFace's angular margin is in [0, pi) (its fallback for theta + m > pi assumes m >= 0);
#: CosFace's cosine margin may be negative (negative-margin softmax, Liu et al. 2020).
_check_arcface = hparams(margin=Real(ge=0, lt=math.pi), scale=Real(gt=0))
_check_cosface = hparams(margin=Real(), scale=Real(gt=0))
_check_madacos = hparams(alpha=Real(gt=0, lt=1), min_scale=Real(gt=0), prior=Real(gt=0))


def normalized_softmax_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    temperature: float = 0.05,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Normalized softmax: cross-entropy over cosine similarities divided by a temperature.

    .. math:: \ell_i = -\log \mathrm{softmax}_c\big(\hat x_i^\top \hat w_c / T\big)[y_i]

    Args:
        proxies: ``[C, D]`` class weights. temperature: :math:`T` (0.05, the paper's).
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Zhai, Wu, "Classification is a Strong Baseline for Deep Metric Learning",
    arXiv 1811.12649.
    """
    _check_normalized_softmax(temperature=temperature)
    embeddings, labels, proxies = validate_proxy_inputs(
        embeddings, labels, proxies, ref_embeddings, ref_labels, indices,
        name="normalized_softmax")
    logits = cosine_similarity(embeddings, proxies) / temperature
    per = F.cross_entropy(logits, labels.long(), reduction="none")
    return _finish_ce(per, embeddings, proxies, reduction)


def _margin_ce(cos: Tensor, labels: Tensor, target_logit: Tensor, scale: float) -> Tensor:
    logits = cos.scatter(1, labels.long().unsqueeze(1), target_logit.unsqueeze(1)) * scale
    return F.cross_entropy(logits, labels.long(), reduction="none")


def arcface_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin: float = 0.5,
    scale: float = 64.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""ArcFace: additive angular margin on the target class.

    .. math::
        \ell_i = -\log\frac{e^{s \cos(\theta_{y_i} + m)}}{e^{s \cos(\theta_{y_i} + m)} +
        \sum_{j \ne y_i} e^{s \cos\theta_j}}

    When :math:`\theta_{y} + m > \pi` the target logit is :math:`\cos\theta_y - m \sin m`
    (keeps it monotonic; the official code's and PML's rule).

    Args:
        proxies: ``[C, D]`` class weights. margin: :math:`m` in radians (0.5, the paper's;
            PML's default is 28.6 degrees = 0.4992 rad). scale: :math:`s` (64).
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    arXiv 1801.07698.
    """
    _check_arcface(margin=margin, scale=scale)
    embeddings, labels, proxies = validate_proxy_inputs(
        embeddings, labels, proxies, ref_embeddings, ref_labels, indices, name="arcface")
    cos = cosine_similarity(embeddings, proxies)
    target = arc_margin_target(cos.gather(1, labels.long().unsqueeze(1)).squeeze(1), margin)
    return _finish_ce(_margin_ce(cos, labels, target, scale), embeddings, proxies, reduction)


def arc_margin_target(c: Tensor, margin: float) -> Tensor:
    r""":math:`\cos(\theta + m)` of target cosines ``c``, and :math:`\cos\theta - m \sin m`
    where :math:`\theta + m > \pi` (ArcFace's monotonic rule, the official code's and PML's)."""
    c = c.clamp(-1.0, 1.0)
    sin = (1.0 - c * c).clamp_min(torch.finfo(c.dtype).tiny).sqrt()
    cos_m = c * math.cos(margin) - sin * math.sin(margin)
    return torch.where(c >= math.cos(math.pi - margin), cos_m, c - margin * math.sin(margin))


def cosface_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    margin: float = 0.35,
    scale: float = 64.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""CosFace (large margin cosine loss): additive cosine margin on the target class.

    .. math::
        \ell_i = -\log\frac{e^{s(\cos\theta_{y_i} - m)}}{e^{s(\cos\theta_{y_i} - m)} +
        \sum_{j \ne y_i} e^{s\cos\theta_j}}

    Args:
        proxies: ``[C, D]``. margin: :math:`m` (0.35), scale: :math:`s` (64): the paper's.
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition",
    arXiv 1801.09414.
    """
    _check_cosface(margin=margin, scale=scale)
    embeddings, labels, proxies = validate_proxy_inputs(
        embeddings, labels, proxies, ref_embeddings, ref_labels, indices, name="cosface")
    cos = cosine_similarity(embeddings, proxies)
    c = cos.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return _finish_ce(_margin_ce(cos, labels, c - margin, scale), embeddings, proxies, reduction)


def madacos_scale_margin(cos: Tensor, labels: Tensor, *, alpha: float, min_scale: float,
                         prior: float) -> tuple[Tensor, Tensor]:
    r"""The batch's MadaCos scale and margin (no gradient).

    :math:`s = \max(s_{min}, \log(K (1 - \rho)/\rho) / (1 - \tilde c))` with :math:`\tilde c`
    the median target cosine of the batch; :math:`m = \max(0, \tilde c - \log(B \rho / (1 -
    \rho)) / s)` with :math:`B = \sum_{j \ne y} e^{s \cos\theta_j}` of the median sample.
    """
    with torch.no_grad():
        c = cos.gather(1, labels.long().unsqueeze(1)).squeeze(1)
        c_med, idx = c.median(dim=0)
        s = math.log(prior * (1.0 - alpha) / alpha) / (1.0 - c_med).clamp_min(1e-12)
        s = s.clamp_min(min_scale)
        # the median sample's row and its other classes, by tensor index (no graph break)
        at = idx.reshape(1)
        row = cos.index_select(0, at).squeeze(0)
        others = torch.arange(row.shape[0], device=row.device) != labels.long().index_select(0, at)
        # the other classes masked to -inf (static shape): -inf when there are none
        log_b = torch.logsumexp((s * row).masked_fill(~others, float("-inf")), dim=0)
        m = (c_med - (log_b + math.log(alpha / (1.0 - alpha))) / s).clamp_min(0.0)
        return s, m


def madacos_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    alpha: float = 0.1,
    min_scale: float = 32.0,
    prior: float = 9_999_999.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""MadaCos: a CosFace-style loss whose scale and margin adapt to the batch.

    .. math::
        \ell_i = -\log\frac{e^{s(\cos\theta_{y_i} - m)}}{e^{s(\cos\theta_{y_i} - m)} +
        \sum_{j \ne y_i} e^{s\cos\theta_j}}

    with :math:`s, m` from :func:`madacos_scale_margin`: the scale is
    :math:`\log(K(1-\rho)/\rho) / (1 - \tilde c)` (:math:`\tilde c` the batch's median target
    cosine, :math:`K` a prior number of negatives) and the margin sets the target probability
    of the median sample to exactly :math:`\rho` (clamped at :math:`m \ge 0`). Both are
    recomputed each batch and are not differentiated (the official code's custom backward
    multiplies the logit gradient by :math:`s` only).
    Following the official code, the median is the lower median, :math:`B` is that sample's
    negative sum, :math:`K = 9\,999\,999` and :math:`s \ge 32`.

    Args:
        proxies: ``[C, D]`` class weights. alpha: :math:`\rho` (0.1, the code's default).
        min_scale: lower bound of :math:`s` (32). prior: :math:`K`.
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Zhu et al., "Coarse-to-Fine: Learning Compact Discriminative Representation for
    Single-Stage Image Retrieval", arXiv 2308.04008 (official code: bassyess/CFCD).
    """
    _check_madacos(alpha=alpha, min_scale=min_scale, prior=prior)
    embeddings, labels, proxies = validate_proxy_inputs(
        embeddings, labels, proxies, ref_embeddings, ref_labels, indices, name="madacos")
    cos = cosine_similarity(embeddings, proxies)
    s, m = madacos_scale_margin(cos, labels, alpha=alpha, min_scale=min_scale, prior=prior)
    c = cos.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    logits = cos.scatter(1, labels.long().unsqueeze(1), (c - m).unsqueeze(1)) * s
    per = F.cross_entropy(logits, labels.long(), reduction="none")
    return _finish_ce(per, embeddings, proxies, reduction)


@register(
    "normalized_softmax",
    family="metric-learning",
    kind="embeddings",
    paper="Classification is a Strong Baseline for Deep Metric Learning",
    arxiv="1811.12649",
    summary="CE over cos(x, w_c) / T",
    peers=(f"{PML}.NormalizedSoftmaxLoss",),
    reduction="per sample",
    example_hparams=EXAMPLE,
)
class NormalizedSoftmaxLoss(ProxyLossModule, function=normalized_softmax_loss,
                            check=_check_normalized_softmax | PROXY_SHAPE):
    """Module form of :func:`normalized_softmax_loss` (class weights: normal init)."""


@register(
    "arcface",
    family="metric-learning",
    kind="embeddings",
    paper="ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    arxiv="1801.07698",
    summary="CE over s cos(theta + m [target]), cos(x, w_c)",
    peers=(f"{PML}.ArcFaceLoss",),
    reduction="per sample",
    example_hparams=EXAMPLE,
)
class ArcFaceLoss(ProxyLossModule, function=arcface_loss, check=_check_arcface | PROXY_SHAPE):
    """Module form of :func:`arcface_loss` (class weights: normal init)."""


@register(
    "cosface",
    family="metric-learning",
    kind="embeddings",
    paper="CosFace: Large Margin Cosine Loss for Deep Face Recognition",
    arxiv="1801.09414",
    summary="CE over s (cos(x, w_c) - m [target])",
    peers=(f"{PML}.CosFaceLoss",),
    reduction="per sample",
    example_hparams=EXAMPLE,
)
class CosFaceLoss(ProxyLossModule, function=cosface_loss, check=_check_cosface | PROXY_SHAPE):
    """Module form of :func:`cosface_loss` (class weights: normal init)."""


@register(
    "madacos",
    family="metric-learning",
    kind="embeddings",
    paper="Coarse-to-Fine: Learning Compact Discriminative Representation for Single-Stage "
    "Image Retrieval",
    arxiv="2308.04008",
    summary="CE over s (cos - m [target]) with s, m set from the batch median target cosine",
    reduction="per sample",
    example_hparams=EXAMPLE,
    surrogate_gradient="adaptive scale and margin are constants (stop-gradient), as the code",
)
class MadaCosLoss(ProxyLossModule, function=madacos_loss, check=_check_madacos | PROXY_SHAPE):
    """Module form of :func:`madacos_loss` (class weights: uniform(+-1/sqrt(D)), as the
    official code)."""

    def reset_parameters(self) -> None:
        if self.proxies is not None:
            bound = 1.0 / math.sqrt(self.proxies.shape[1])
            nn.init.uniform_(self.proxies, -bound, bound)
