"""Metrix: mixup for deep metric learning, as a wrapper of the losses it applies to.

Embedding-space mixing (the "Metrix/embed" variant of the paper) is what a loss library can do
on its own: it needs only the batch embeddings and labels. Input mixing and feature (manifold)
mixing change the forward pass of the network and belong to the training loop; with them, the
mixed embeddings and their mixing factors can still be scored by :func:`metrix_mixed_terms`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import Tensor, nn

from losslab._core import LossModule, zero_loss
from losslab._hparams import Choice, Int, Kwargs, Real, hparams
from losslab._ops.draws import generator_key, generator_of, register_ordered
from losslab._ops.pairs import validate_batch
from losslab.distances import cosine_similarity, pairwise
from losslab.losses.metric_learning.pairs import contrastive_terms
from losslab.losses.metric_learning.proxy import proxy_anchor_terms, validate_proxy_inputs
from losslab.losses.metric_learning.weighted import ms_terms
from losslab.registry import create, register, spec

__all__ = ["METRIX_BASES", "MetrixLoss", "metrix_loss", "metrix_mixed_terms", "mix_embeddings"]

#: The losses Metrix applies to (the paper's three).
METRIX_BASES: tuple[str, ...] = ("contrastive", "multi_similarity", "proxy_anchor")


#: (``seed``: a module-only option, checked by :class:`MetrixLoss`.)
_check_metrix = hparams(base=Choice(*METRIX_BASES), base_hparams=Kwargs(optional=True),
                        mix_alpha=Real(gt=0), weight=Real(ge=0), seed=Int(ge=0, optional=True))


def _draw_partners(
    labels: Tensor, mix_alpha: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, np.ndarray] | None:
    """The random part of the mixing: ``(rows, partner, lam)`` (the rows that have a sample
    of another class, a uniform such partner of each, their Beta(alpha, alpha) factors, in
    float64), or ``None`` when no row has one (then nothing is drawn). The draws: one
    ``multinomial`` and one ``randint`` from ``generator`` (torch's default one when
    ``None``), which seeds numpy's Beta draws."""
    diff = labels.unsqueeze(1) != labels.unsqueeze(0)
    rows = torch.where(diff.any(1))[0]
    if rows.numel() == 0:
        return None
    partner = torch.multinomial(diff[rows].float(), 1, generator=generator).squeeze(1)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam_np = np.random.default_rng(seed).beta(mix_alpha, mix_alpha, rows.numel())
    return rows, partner, lam_np


def mix_embeddings(
    embeddings: Tensor, labels: Tensor, *, mix_alpha: float = 2.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Mix every sample with a random sample of another class.

    Returns ``(mixed [K, D], lam [K], labels_i [K], labels_j [K])`` with
    :math:`v_k = \lambda_k x_i + (1 - \lambda_k) x_j`, :math:`\lambda_k \sim
    \mathrm{Beta}(\alpha, \alpha)`; samples without a sample of another class are skipped
    (that is all of them in a one-class batch and none otherwise).
    """
    _check_metrix(mix_alpha=mix_alpha)
    with torch.no_grad():
        drawn = _draw_partners(labels, mix_alpha, generator)
        if drawn is None:
            e = embeddings[:0]
            return e, e.new_zeros(0), labels[:0], labels[:0]
        rows, partner, lam_np = drawn
        lam = torch.as_tensor(lam_np, dtype=embeddings.dtype, device=embeddings.device)
    mixed = lam.unsqueeze(1) * embeddings[rows] + (1 - lam.unsqueeze(1)) * embeddings[partner]
    return mixed, lam, labels[rows], labels[partner]


# --------------------------------------------------------------------------------------------
# The draws under torch.compile: a custom op, so that the compiled module draws what eager does
# --------------------------------------------------------------------------------------------

@torch.library.custom_op("losslab::metrix_draws", mutates_args=())
def _metrix_draws(labels: Tensor, mix_alpha: float, generator_key: int) -> tuple[Tensor, Tensor]:
    """:func:`_draw_partners` with static shapes: ``(partner [N] int64, lam [N] float64)``,
    -1 and 0 in the rows without a partner. It runs eagerly inside the compiled graph, so it
    makes the eager draws from the same generator (``generator_key``: see
    :mod:`losslab._ops.draws`), the same values and the same number of them."""
    n = labels.shape[0]
    partner = torch.full((n,), -1, dtype=torch.long, device=labels.device)
    lam = torch.zeros(n, dtype=torch.float64, device=labels.device)
    generator = generator_of(generator_key, "losslab::metrix_draws")
    drawn = _draw_partners(labels, mix_alpha, generator)
    if drawn is not None:
        rows, p, lam_np = drawn
        partner[rows] = p
        lam[rows] = torch.as_tensor(lam_np, dtype=torch.float64, device=labels.device)
    return partner, lam


@_metrix_draws.register_fake
def _(labels: Tensor, mix_alpha: float, generator_key: int) -> tuple[Tensor, Tensor]:
    n = labels.shape[0]
    return (labels.new_empty(n, dtype=torch.long),
            labels.new_empty(n, dtype=torch.float64))


#: An ordered side effect (it advances a generator): each call kept, in order, never merged.
_ORDERED = register_ordered(_metrix_draws)

#: Older torch only (no effectful custom ops): the eager mixing, through a graph break.
_mix_through_a_break = cast(Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]],
                            torch.compiler.disable(mix_embeddings))


def _mix_static(
    embeddings: Tensor, labels: Tensor, mix_alpha: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`mix_embeddings` with static shapes (the ``torch.compile`` path): every row is
    mixed (``[N, D]``; eager's K is N or 0) and ``has`` (0-d bool) says whether the rows have
    partners (no one-class batch). Same draws, same mixes."""
    partner, lam64 = _metrix_draws(labels, mix_alpha, generator_key(generator))
    has = (partner >= 0).any()
    p = partner.clamp_min(0)
    lam = lam64.to(embeddings.dtype)
    mixed = lam.unsqueeze(1) * embeddings + (1 - lam.unsqueeze(1)) * embeddings[p]
    return mixed, lam, labels, labels[p], has


def _soft_labels(anchor_labels: Tensor, lam: Tensor, li: Tensor, lj: Tensor) -> Tensor:
    """``[A, K]`` positive-ness of mixed sample k for label a: lam[a==li] + (1-lam)[a==lj]."""
    a = anchor_labels.unsqueeze(1)
    return lam * (a == li).to(lam.dtype) + (1 - lam) * (a == lj).to(lam.dtype)


def metrix_mixed_terms(
    embeddings: Tensor,
    labels: Tensor,
    mixed: Tensor,
    lam: Tensor,
    labels_i: Tensor,
    labels_j: Tensor,
    *,
    base: str = "multi_similarity",
    proxies: Tensor | None = None,
    base_hparams: Mapping[str, Any] | None = None,
) -> Tensor:
    r"""The mixed part of Metrix: the base loss with interpolated labels (a scalar; a helper
    of :func:`metrix_loss`, not a registered loss).

    A mixed sample :math:`v = \lambda x_i + (1-\lambda) x_j` is a positive of anchor :math:`a`
    with weight :math:`y = \lambda [y_i = y_a] + (1 - \lambda)[y_j = y_a]` and a negative with
    weight :math:`1 - y`; the base loss's sums over positives / negatives become these weighted
    sums (the paper's generic mixed loss):

    * contrastive: :math:`\sum y\,\ell^+(d_{av}) / \sum y + \sum (1-y)\,\ell^-(d_{av}) /
      \sum (1-y)`;
    * multi_similarity: :math:`\frac1\alpha\log(1 + \sum_v y\,e^{-\alpha(s_{av}-\lambda)}) +
      \frac1\beta\log(1 + \sum_v (1-y)\,e^{\beta(s_{av}-\lambda)})`, mean over anchors (no
      pair mining on mixed pairs);
    * proxy_anchor: the proxies are the anchors, the mixed samples the data, with class
      weights :math:`y_c`.
    """
    _check_metrix(base=base)
    hp = dict(base_hparams or {})
    hp.pop("reduction", None)
    if mixed.shape[0] == 0:
        return zero_loss(embeddings)
    if base == "proxy_anchor":
        if proxies is None:
            raise ValueError("metrix with base='proxy_anchor' needs the proxies")
        classes = torch.arange(proxies.shape[0], device=proxies.device)
        w = _soft_labels(classes, lam, labels_i, labels_j).t()  # [K, C]
        s = cosine_similarity(mixed, proxies)
        pos, neg, with_pos = proxy_anchor_terms(s, w, 1 - w, hp.get("margin", 0.1),
                                                hp.get("alpha", 32.0))
        n_pos = with_pos.sum().clamp_min(1).to(s.dtype)
        return pos.sum() / n_pos + neg.sum() / proxies.shape[0]
    y = _soft_labels(labels, lam, labels_i, labels_j)  # [N, K]
    if base == "contrastive":
        metric = hp.get("metric", "euclidean")
        mat = pairwise(embeddings, mixed, metric=metric, eps=0.0)
        pos_t, neg_t = contrastive_terms(mat, metric in ("cosine", "dot"),
                                          hp.get("pos_margin", 0.0), hp.get("neg_margin", 1.0),
                                          hp.get("power", 1.0))
        wp, wn = y, 1 - y
        return (wp * pos_t).sum() / wp.sum().clamp_min(1e-12) + (wn * neg_t).sum() / wn.sum(
        ).clamp_min(1e-12)
    s = pairwise(embeddings, mixed, metric=hp.get("metric", "cosine"))
    per = ms_terms(s, y, 1 - y, hp.get("alpha", 2.0), hp.get("beta", 50.0), hp.get("base", 0.5))
    return per.mean()


def metrix_loss(
    embeddings: Tensor,
    labels: Tensor,
    proxies: Tensor | None = None,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    base: str = "multi_similarity",
    base_hparams: Mapping[str, Any] | None = None,
    mix_alpha: float = 2.0,
    weight: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Metrix (embedding mixup): :math:`\mathcal L = \mathcal L_{base}(X) + w\,
    \widetilde{\mathcal L}_{base}(X, V)`.

    :math:`V` mixes every sample with a random sample of another class
    (:func:`mix_embeddings`, :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)`), and the mixed
    loss :func:`metrix_mixed_terms` scores the clean anchors against :math:`V` with interpolated
    labels. ``ref_embeddings`` / ``indices`` are passed to the clean loss only.

    Args:
        proxies: ``[C, D]`` for ``base="proxy_anchor"``.
        base: ``"contrastive"``, ``"multi_similarity"`` (default) or ``"proxy_anchor"``.
        base_hparams: hyperparameters of the base loss (shared by both parts).
        mix_alpha: :math:`\alpha` of the Beta law (2). weight: :math:`w` (1).
        generator: seeds the mixing.

    Not covered: input and feature (manifold) mixup, which need the network's forward pass
    (score their outputs with :func:`metrix_mixed_terms`), and the "utilization" metric.

    Degenerate batches: a one-class batch is zero with the default base (multi-similarity,
    zero there by its mining) since no sample has a partner of another class to mix with. A
    batch of distinct labels is not: every mix is a partial positive (weight
    :math:`\lambda`) of its own anchor, so the mixed loss is non-zero, as in the paper.
    Half inputs are computed in float32 and return float32.

    Under ``torch.compile`` the draws run eagerly inside a custom op
    (``losslab::metrix_draws``, static ``[N]`` partners and factors; an ordered side effect,
    so no call is merged or dropped) and the mixing is traced: no graph break, and the same
    draws from the same generator (torch's default one or ``generator``), so the compiled
    loss equals the eager one for the same seed, value and gradient.

    Paper: Venkataramanan et al., "It Takes Two to Tango: Mixup for Deep Metric Learning",
    arXiv 2106.04990.
    """
    _check_metrix(base=base, base_hparams=base_hparams, mix_alpha=mix_alpha, weight=weight)
    vb = validate_batch(embeddings, labels, ref_embeddings, ref_labels)
    hp = dict(base_hparams or {})
    fn = spec(base).function
    if base == "proxy_anchor":
        if proxies is None:
            raise ValueError("metrix with base='proxy_anchor' needs proxies [C, D]")
        proxies = validate_proxy_inputs(embeddings, labels, proxies, ref_embeddings,
                                        ref_labels, indices, name="metrix(proxy_anchor)").proxies
        clean = fn(vb.embeddings, vb.labels, proxies, **hp)
    else:
        clean = fn(embeddings, labels, ref_embeddings=ref_embeddings, ref_labels=ref_labels,
                   indices=indices, **hp)
    if clean.ndim != 0:
        raise ValueError("metrix needs a scalar base loss (reduction 'mean' or 'sum')")
    if weight == 0:
        return clean
    # the mixed part in the compute dtype (float32 for half inputs), as the clean part
    if torch.compiler.is_compiling() and _ORDERED:
        mixed, lam, li, lj, has = _mix_static(vb.embeddings, vb.labels, mix_alpha, generator)
        terms = metrix_mixed_terms(vb.embeddings, vb.labels, mixed, lam, li, lj, base=base,
                                   proxies=proxies, base_hparams=hp)
        # a one-class batch: no mix (eager's K = 0), the zero of metrix_mixed_terms
        terms = torch.where(has, terms, zero_loss(vb.embeddings))
        return clean + weight * terms
    mix = _mix_through_a_break if torch.compiler.is_compiling() else mix_embeddings
    mixed, lam, li, lj = mix(vb.embeddings, vb.labels, mix_alpha=mix_alpha, generator=generator)
    return clean + weight * metrix_mixed_terms(vb.embeddings, vb.labels, mixed, lam, li, lj,
                                              base=base, proxies=proxies, base_hparams=hp)


@register(
    "metrix",
    family="metric-learning",
    kind="embeddings",
    paper="It Takes Two to Tango: Mixup for Deep Metric Learning",
    arxiv="2106.04990",
    summary="base loss + w * base loss on embedding mixes with interpolated labels",
    reduction=None,
    degenerate=("one_class",),
)
class MetrixLoss(LossModule, function=metrix_loss, check=_check_metrix):
    """Module form of :func:`metrix_loss`: wraps a base loss (name or module).

    ``MetrixLoss(base="proxy_anchor", base_hparams={"num_classes": 100, "embedding_dim": 128})``
    builds the base module (which owns the proxies); an ``nn.Module`` base is used as is.
    ``seed`` (a module-only option, in ``self.config``) makes the mixing reproducible: the
    module owns the random generator that the function takes as ``generator=``.
    """

    #: the function's ``generator=`` is the module's own state, not a hyperparameter
    function_only: ClassVar[tuple[str, ...]] = ("generator",)

    def __init__(self, *, base: str | nn.Module = "multi_similarity",
                 base_hparams: Mapping[str, Any] | None = None, mix_alpha: float = 2.0,
                 weight: float = 1.0, seed: int | None = None) -> None:
        _check_metrix(base_hparams=base_hparams, seed=seed)
        if isinstance(base, nn.Module):
            name = getattr(getattr(base, "spec", None), "name", None)
            _check_metrix(base=name)
            module = base
            hp = dict(getattr(base, "hparams", {}))
        else:
            _check_metrix(base=base)
            name, module = base, create(base, **dict(base_hparams or {}))
            hp = dict(getattr(module, "hparams", {}))
        super().__init__(base=name, base_hparams=hp, mix_alpha=mix_alpha, weight=weight)
        self.config = {"seed": seed}
        self.base_loss = module
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        proxies = getattr(self.base_loss, "proxies", None)
        return metrix_loss(embeddings, labels, proxies, ref_embeddings=ref_embeddings,
                           ref_labels=ref_labels, indices=indices, generator=self.generator,
                           **self.call_kwargs())


def __getattr__(name: str) -> Any:
    if name == "Metrix":  # the former name of MetrixLoss, kept for one release (0.2 removes it)
        warnings.warn("Metrix is deprecated, use MetrixLoss", DeprecationWarning, stacklevel=2)
        return MetrixLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
