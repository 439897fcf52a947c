"""Contrastive and self-supervised objectives on paired views.

Kind ``paired``: ``loss(a[N, D], b[N, D])``; row ``i`` of ``a`` and row ``i`` of ``b`` are a
positive pair (two views of one image, or an image and its caption), every other row of the
other side is a negative. Embeddings are L2-normalised first (``normalize=True``), as all the
papers here do.

Large batches: ``chunk_size`` (default: automatic, tiles once ``N >= 8192``, with tiles sized
by a 64 MiB workspace budget) computes the losses in row tiles with an exact custom backward
(:mod:`losslab.kernels.tiled_contrastive`), never materialising the ``N x N`` similarity matrix
(Inf-CL, arXiv 2410.17243). At B = 16384, D = 512 that path takes about 0.04x the memory of
the dense computation and less time (``benchmarks/bench_tiled_contrastive.py``).

fp16/bf16 inputs are computed in float32 and the loss is returned in float32
(:func:`losslab._core.compute_dtype`).

This package module holds InfoNCE (with SimCLR's NT-Xent form, ``negatives="both"``), CLIP,
SigLIP, alignment and uniformity; the other objectives of the family live in its modules:
:mod:`~.variants` (``dcl``, ``hard_negative_infonce``, ``multi_positive_infonce``),
:mod:`~.redundancy` (``barlow_twins``, ``vicreg``, ``tldr`` and its ``knn_pairs``),
:mod:`~.icon` (``i_con``), :mod:`~.isogclr` (``isogclr``, per-sample state by ``index=``),
:mod:`~.captioning` (``coca``), :mod:`~.multihead` (``amcl``), :mod:`~.continual`
(``sy_con``), :mod:`~.ordering` (``groco`` and its sorting network), :mod:`~.graph` (``pamc``,
``structcomp`` and ``compress_nodes``), :mod:`~.hpm` (``hpm``: masked-image-modeling
reconstruction plus the hard-patches loss predictor, kind ``regression``) and
:mod:`~.sampling` (G-SimCLR's pseudo-label batch sampler).
Shared helpers are in :mod:`~._common`. The representation metrics (RankMe, alignment,
uniformity) are in :mod:`losslab.metrics.representation`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Choice, Flag, Int, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.distances import NORM_EPS, normalize_rows, squared_euclidean
from losslab.kernels.tiled_contrastive import (
    rows_for_budget,
    tiled_infonce_terms,
    tiled_row_terms,
    tiled_sigmoid_terms,
)
from losslab.losses.contrastive_ssl._common import Negatives, two_view_logits
from losslab.losses.contrastive_ssl._common import check_call as _check_call
from losslab.losses.contrastive_ssl._common import inverse_temperature as _scale
from losslab.registry import register

__all__ = [
    "AlignmentLoss",
    "ClipLoss",
    "InfoNCELoss",
    "SigLipLoss",
    "UniformityLoss",
    "alignment_loss",
    "captioning",
    "clip_loss",
    "continual",
    "graph",
    "hpm",
    "icon",
    "infonce_loss",
    "isogclr",
    "multihead",
    "ordering",
    "redundancy",
    "sampling",
    "siglip_loss",
    "uniformity_loss",
    "variants",
]

AUTO_TILE_FROM = 8192  # batch size from which the tiled path is used by default


#: The hyperparameters of InfoNCE, CLIP and SigLIP (each module uses those it has;
#: ``learnable_temperature`` is their module option).
_check_contrastive = hparams(
    temperature=Real(gt=0),
    bias=Real(),
    normalize=Flag(),
    symmetric=Flag(),
    negatives=Choice("cross", "both"),
    chunk_size=Int(ge=1, optional=True),
    learnable_temperature=Flag(),
)


def _tile(a: Tensor, chunk_size: int | None) -> int | None:
    """Row tile for the tiled path, or ``None`` for the dense path. Automatic: dense below
    ``AUTO_TILE_FROM`` rows, else tiles sized by the kernel's workspace budget."""
    if chunk_size is None:
        n = a.shape[0]
        return rows_for_budget(n, a.element_size()) if n >= AUTO_TILE_FROM else None
    return chunk_size


def _infonce_terms(a: Tensor, b: Tensor, scale: Tensor, chunk_size: int | None, *,
                   normalize: bool, columns: bool) -> tuple[Tensor, Tensor | None]:
    """``(row, col)`` InfoNCE terms of raw (compute-dtype) embeddings; ``col`` only when
    ``columns``. The tiled path normalises inside the kernel (no normalised copy is kept)."""
    tile = _tile(a, chunk_size)
    if tile is not None:
        if columns:
            return tiled_infonce_terms(a, b, scale, tile=tile, normalize=normalize,
                                       eps=NORM_EPS)
        return tiled_row_terms(a, b, scale, tile=tile, normalize=normalize, eps=NORM_EPS), None
    if normalize:
        a, b = normalize_rows(a), normalize_rows(b)
    logits = (a @ b.t()) * scale
    diag = logits.diagonal()
    col = torch.logsumexp(logits, 0) - diag if columns else None
    return torch.logsumexp(logits, 1) - diag, col


# --------------------------------------------------------------------------------------------
# Learned temperature (module option of InfoNCE, CLIP and SigLIP)
# --------------------------------------------------------------------------------------------


def _learned_log_scale(temperature: float) -> nn.Parameter:
    """The learned logit scale ``log(1 / temperature)`` (CLIP's and SigLIP's parametrisation),
    initialised at the given temperature."""
    return nn.Parameter(torch.tensor(math.log(1.0 / temperature)))


def _clipped_temperature(log_scale: Tensor) -> Tensor:
    """``tau = exp(-log_scale)`` with the logit scale ``1 / tau`` clipped at 100, as CLIP."""
    return torch.exp(-log_scale.clamp(max=math.log(100.0)))


class _LearnedTemperature(LossModule):
    """Shell base of InfoNCE, CLIP and SigLIP: the module option ``learnable_temperature``
    (``module_options``, kept in ``self.config``) learns the logit scale ``log(1/tau)`` as the
    parameter ``log_scale``, passed to the function as the (clipped) temperature."""

    module_options = (inspect.Parameter("learnable_temperature", inspect.Parameter.KEYWORD_ONLY,
                                        default=False, annotation="bool"),)

    def configure(self, *, learnable_temperature: bool) -> None:
        _check_contrastive(learnable_temperature=learnable_temperature)
        self.config = {"learnable_temperature": learnable_temperature}
        temperature = self.hparams["temperature"]
        self.log_scale = _learned_log_scale(temperature) if learnable_temperature else None

    def call_kwargs(self) -> dict[str, Any]:
        kwargs = super().call_kwargs()
        if self.log_scale is not None:
            kwargs["temperature"] = _clipped_temperature(self.log_scale)
        return kwargs


def infonce_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    normalize: bool = True,
    symmetric: bool = False,
    negatives: Negatives = "cross",
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""InfoNCE: each ``a_i`` must pick its partner ``b_i`` among all rows of ``b``.

    .. math::
        \ell_i = -\log \frac{\exp(s(a_i, b_i)/\tau)}{\sum_j \exp(s(a_i, b_j)/\tau)}

    with ``s`` the cosine similarity. ``symmetric=True`` averages the ``a -> b`` and
    ``b -> a`` directions (the CLIP loss, see :func:`clip_loss`). Equal to
    pytorch-metric-learning's ``NTXentLoss`` with ``ref_emb=b`` and one label per pair.

    ``negatives="both"`` is SimCLR's NT-Xent: the ``2N`` embeddings ``z = [a; b]`` are all
    anchors, each with its partner as positive and the other ``2N - 2`` embeddings of *both*
    views as negatives,

    .. math::
        \ell_r = -\log \frac{\exp(s(z_r, z_{r^+})/\tau)}{\sum_{k \ne r} \exp(s(z_r, z_k)/\tau)}

    averaged over the ``2N`` anchors (``symmetric`` is implied). Equal to PML's
    ``NTXentLoss`` on ``cat([a, b])`` with labels ``cat([arange(N), arange(N)])`` and to
    lightly's ``NTXentLoss``. It is computed densely (``2N x 2N``; ``chunk_size`` must be
    ``None``).

    Args:
        a, b: ``[N, D]`` paired embeddings.
        temperature: ``tau`` (default 0.1, SimCLR's; a 0-d tensor may be passed to learn it).
        normalize: L2-normalise ``a`` and ``b`` first (default True).
        symmetric: average both directions (default False).
        negatives: ``"cross"`` (default: the other view's rows, CPC/CLIP) or ``"both"``
            (NT-Xent, SimCLR: both views' other rows).
        chunk_size: row tile of the memory-efficient path; ``None`` = tiled from N >= 8192
            (``negatives="cross"`` only).
        reduction: ``"mean"`` over pairs, ``"sum"``, or ``"none"`` (``[N]``; with
            ``"both"``, the mean of the pair's two anchors).

    Paper: van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive
    Coding", arXiv 1807.03748; tiling after Inf-CL, arXiv 2410.17243.
    """
    _check_call(_check_contrastive, temperature=temperature, normalize=normalize,
                symmetric=symmetric, negatives=negatives, chunk_size=chunk_size)
    a, b = prepare_paired(a, b, normalize=False)
    if negatives == "both":
        if chunk_size is not None:
            raise ValueError("chunk_size must be None with negatives='both' (NT-Xent is "
                             "computed densely)")
        return reduce(_nt_xent_terms(a, b, _scale(temperature, a), normalize=normalize),
                      reduction)
    row, col = _infonce_terms(a, b, _scale(temperature, a), chunk_size, normalize=normalize,
                              columns=symmetric)
    per_pair = (row + col) / 2 if col is not None else row
    return reduce(per_pair, reduction)


def _nt_xent_terms(a: Tensor, b: Tensor, scale: Tensor, *, normalize: bool) -> Tensor:
    """Per-pair NT-Xent terms ``[N]``: the mean of anchors ``a_i`` and ``b_i``."""
    logits, positive, negative = two_view_logits(a, b, scale, "both", normalize=normalize)
    keep = negative.clone()
    keep[torch.arange(keep.shape[0], device=keep.device), positive] = True
    lse = torch.logsumexp(logits.masked_fill(~keep, float("-inf")), 1)
    per_anchor = lse - logits.gather(1, positive.unsqueeze(1)).squeeze(1)
    n = a.shape[0]
    return (per_anchor[:n] + per_anchor[n:]) / 2


@register(
    "infonce", family="contrastive-ssl", kind="paired",
    paper="Representation Learning with Contrastive Predictive Coding", arxiv="1807.03748",
    summary="-log softmax_j(cos(a_i, b_j)/tau)_i",
    peers=("pytorch_metric_learning.losses.NTXentLoss",), reduction="per pair",
)
class InfoNCELoss(_LearnedTemperature, function=infonce_loss, check=_check_contrastive):
    """Module form of :func:`infonce_loss`.

    ``learnable_temperature=True`` (a module option, kept in ``self.config``) learns the logit
    scale ``log(1/tau)`` as the parameter ``log_scale``, initialised at ``log(1/temperature)``
    and clipped at ``log 100`` (as CLIP)."""


def clip_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor = 0.07,
    normalize: bool = True,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""CLIP's symmetric contrastive loss: the mean of image->text and text->image InfoNCE.

    .. math::
        \ell_i = \tfrac12\Big(-\log \mathrm{softmax}_j(l_{ij})_i
                 - \log \mathrm{softmax}_j(l_{ji})_i\Big), \quad
        l_{ij} = \cos(a_i, b_j) / \tau

    Args:
        a, b: ``[N, D]`` image and text embeddings, row ``i`` matching row ``i``.
        temperature: ``tau`` (CLIP initialises ``1/tau`` at ``1/0.07`` and learns it; the
            module does with ``learnable_temperature=True``).
        normalize: L2-normalise first (default True). chunk_size: see :func:`infonce_loss`.
        reduction: ``"mean"`` over pairs, ``"sum"``, or ``"none"`` (``[N]``, the mean of the
            pair's two directions).

    Paper: Radford et al., "Learning Transferable Visual Models From Natural Language
    Supervision", arXiv 2103.00020; memory-efficient tiling: Cheng et al., "Breaking the
    Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss", arXiv 2410.17243.
    """
    return infonce_loss(a, b, temperature=temperature, normalize=normalize, symmetric=True,
                        chunk_size=chunk_size, reduction=reduction)


@register(
    "clip", family="contrastive-ssl", kind="paired",
    paper="Learning Transferable Visual Models From Natural Language Supervision",
    arxiv="2103.00020",
    summary="(CE(l, diag) + CE(l^T, diag))/2, l = cos(a, b)/tau; tiled for large N",
    peers=("open_clip.ClipLoss", "inf_cl.cal_inf_loss"), reduction="per pair",
)
class ClipLoss(_LearnedTemperature, function=clip_loss, check=_check_contrastive):
    """Module form of :func:`clip_loss`.

    ``learnable_temperature=True`` (a module option, kept in ``self.config``) learns
    ``log(1/tau)`` as the parameter ``log_scale`` (initialised at ``log(1/0.07)`` by default,
    clipped at ``log 100``, as CLIP)."""


def siglip_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    bias: float | Tensor = -10.0,
    normalize: bool = True,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""SigLIP: an independent binary (sigmoid) loss on every pair.

    .. math::
        \ell_i = \sum_j \log\big(1 + \exp(-z_{ij}(t\, \cos(a_i, b_j) + b))\big),
        \quad z_{ij} = 1 \text{ if } i = j \text{ else } -1

    and the paper's loss is the mean over ``i`` (the sum over all pairs divided by ``N``).
    Defaults are the paper's initialisation: ``t = exp(t') = 10`` (``temperature = 1/t =
    0.1``) and ``b = -10``, which starts training near the prior of few positives.

    Args:
        a, b: ``[N, D]`` paired embeddings.
        temperature: ``1/t`` (0-d tensors allowed, to learn it). bias: ``b``.
        normalize: L2-normalise first. chunk_size: see :func:`infonce_loss`.
        reduction: ``"mean"`` over rows ``i`` (the paper's), ``"sum"``, or ``"none"``
            (``[N]``: row ``i``'s sum over ``j``).

    Paper: Zhai, Mustafa, Kolesnikov, Beyer, "Sigmoid Loss for Language Image Pre-Training",
    arXiv 2303.15343.
    """
    _check_call(_check_contrastive, temperature=temperature, bias=bias, normalize=normalize,
                chunk_size=chunk_size)
    a, b = prepare_paired(a, b, normalize=False)
    scale = _scale(temperature, a)
    bias_t = (bias if isinstance(bias, Tensor)
              else torch.tensor(bias, device=a.device)).to(a.dtype).reshape(())
    tile = _tile(a, chunk_size)
    if tile is not None:
        rows = tiled_sigmoid_terms(a, b, scale, bias_t, tile=tile, normalize=normalize,
                                   eps=NORM_EPS)
    else:
        if normalize:
            a, b = normalize_rows(a), normalize_rows(b)
        logits = (a @ b.t()) * scale + bias_t
        rows = F.softplus(logits).sum(1) - logits.diagonal()
    return reduce(rows, reduction)


@register(
    "siglip", family="contrastive-ssl", kind="paired",
    paper="Sigmoid Loss for Language Image Pre-Training", arxiv="2303.15343",
    summary="mean_i sum_j softplus(-z_ij (t cos(a_i, b_j) + b)), z = +1 on the diagonal",
    peers=("open_clip.SigLipLoss",), reduction="per row",
)
class SigLipLoss(_LearnedTemperature, function=siglip_loss, check=_check_contrastive):
    """Module form of :func:`siglip_loss`.

    ``learnable_temperature=True`` (a module option, kept in ``self.config``) learns *both* of
    the paper's scalars: ``t' = log t`` as the parameter ``log_scale`` (initialised at
    ``log(1/temperature)`` = ``log 10``, not clipped) and the bias ``b`` as the parameter
    ``learned_bias`` (initialised at ``bias`` = -10)."""

    def configure(self, *, learnable_temperature: bool) -> None:
        super().configure(learnable_temperature=learnable_temperature)
        bias = self.hparams["bias"]
        self.learned_bias = (nn.Parameter(torch.tensor(float(bias))) if learnable_temperature
                             else None)

    def call_kwargs(self) -> dict[str, Any]:
        kwargs = LossModule.call_kwargs(self)  # not clipped, unlike InfoNCE/CLIP
        if self.log_scale is not None:
            kwargs["temperature"] = torch.exp(-self.log_scale)
            kwargs["bias"] = self.learned_bias
        return kwargs


def alignment_loss(
    a: Tensor,
    b: Tensor,
    *,
    alpha: float = 2.0,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Alignment: positive pairs should map to nearby points.

    .. math::
        \ell_i = \|f(x_i) - f(y_i)\|_2^{\alpha}

    Args:
        a, b: ``[N, D]`` paired embeddings (on the hypersphere: ``normalize=True``).
        alpha: the exponent (paper default 2).
        reduction: ``"mean"`` over pairs (the paper's expectation), ``"sum"``, ``"none"``.

    Paper: Wang & Isola, "Understanding Contrastive Representation Learning through Alignment
    and Uniformity on the Hypersphere", arXiv 2005.10242.
    """
    _check_alignment(alpha=alpha, normalize=normalize)
    a, b = prepare_paired(a, b, normalize=normalize)
    sq = (a - b).pow(2).sum(1)
    per_pair = sq if alpha == 2 else sq.clamp_min(torch.finfo(sq.dtype).tiny).pow(alpha / 2)
    return reduce(per_pair, reduction)


_check_alignment = hparams(alpha=Real(gt=0), normalize=Flag())


@register(
    "alignment", family="contrastive-ssl", kind="paired",
    paper="Understanding Contrastive Representation Learning through Alignment and Uniformity "
    "on the Hypersphere", arxiv="2005.10242",
    summary="||f(x_i) - f(y_i)||^alpha over positive pairs", reduction="per pair",
)
class AlignmentLoss(LossModule, function=alignment_loss, check=_check_alignment):
    """Module form of :func:`alignment_loss`."""


def _log_uniformity(x: Tensor, t: float) -> Tensor:
    n = x.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    sq = squared_euclidean(x)[iu[0], iu[1]]
    return torch.logsumexp(-t * sq, 0) - math.log(sq.numel())


def uniformity_loss(
    a: Tensor,
    b: Tensor,
    *,
    t: float = 2.0,
    normalize: bool = True,
) -> Tensor:
    r"""Uniformity: embeddings should spread over the hypersphere.

    .. math::
        \mathcal{L}_{unif} = \log \mathop{\mathbb{E}}_{i < j} \exp(-t \|f_i - f_j\|^2)

    computed within ``a`` and within ``b`` and averaged, as the paper's loss
    ``L_align + lambda (L_unif(x) + L_unif(y)) / 2``. A set-level loss (no reduction); it
    needs at least 2 rows. Combine with :func:`alignment_loss` via
    ``losslab.combine({"alignment": 1.0, "uniformity": 1.0})``.

    Args:
        a, b: ``[N, D]`` paired embeddings (``N >= 2``).
        t: the Gaussian-kernel scale (paper default 2). normalize: L2-normalise first.

    Paper: Wang & Isola, arXiv 2005.10242.
    """
    _check_uniformity(t=t, normalize=normalize)
    a, b = prepare_paired(a, b, normalize=normalize)
    if a.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 rows in a and b, got {a.shape[0]}")
    return (_log_uniformity(a, t) + _log_uniformity(b, t)) / 2


_check_uniformity = hparams(t=Real(gt=0), normalize=Flag())


@register(
    "uniformity", family="contrastive-ssl", kind="paired",
    paper="Understanding Contrastive Representation Learning through Alignment and Uniformity "
    "on the Hypersphere", arxiv="2005.10242",
    summary="(log E_{i<j} exp(-t ||a_i - a_j||^2) + same for b) / 2", reduction=None,
)
class UniformityLoss(LossModule, function=uniformity_loss, check=_check_uniformity):
    """Module form of :func:`uniformity_loss`."""


# The other contrastive modules register their losses on import (after the names above exist).
from losslab.losses.contrastive_ssl import (  # noqa: E402
    captioning,
    continual,
    graph,
    hpm,
    icon,
    isogclr,
    multihead,
    ordering,
    redundancy,
    sampling,
    variants,
)
