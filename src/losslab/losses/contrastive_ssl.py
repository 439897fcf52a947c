"""Contrastive and self-supervised objectives on paired views.

Kind ``paired``: ``loss(a[N, D], b[N, D])``; row ``i`` of ``a`` and row ``i`` of ``b`` are a
positive pair (two views of one image, or an image and its caption), every other row of the
other side is a negative. Embeddings are L2-normalised first (``normalize=True``), as all the
papers here do.

Large batches: ``chunk_size`` (default: automatic, tiles once ``N >= 8192``) computes the
losses in row tiles with an exact custom backward (:mod:`losslab.kernels.tiled_contrastive`),
never materialising the ``N x N`` similarity matrix (Inf-CL, arXiv 2410.17243).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import (
    LossModule,
    Reduction,
    check_matrix,
    check_positive,
    check_same_device,
    compute_dtype,
    reduce,
)
from losslab.distances import squared_euclidean
from losslab.kernels.tiled_contrastive import tiled_infonce_terms, tiled_sigmoid_terms
from losslab.registry import register

__all__ = [
    "AlignmentLoss",
    "ClipLoss",
    "InfoNCELoss",
    "SigLipLoss",
    "UniformityLoss",
    "alignment_loss",
    "clip_loss",
    "infonce_loss",
    "siglip_loss",
    "uniformity_loss",
]

AUTO_TILE_FROM = 8192  # batch size from which the tiled path is used by default
DEFAULT_TILE = 1024


def _paired(a: Tensor, b: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    check_matrix("a", a)
    check_matrix("b", b, dim=a.shape[1])
    if b.shape[0] != a.shape[0]:
        raise ValueError(
            f"a and b must have the same number of rows (row i of a pairs with row i of b), "
            f"got {a.shape[0]} and {b.shape[0]}"
        )
    check_same_device(a=a, b=b)
    dtype = compute_dtype(a.dtype)
    a, b = a.to(dtype), b.to(dtype)
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return a, b


def _tile(n: int, chunk_size: int | None) -> int | None:
    """Row tile for the tiled path, or ``None`` for the dense path."""
    if chunk_size is None:
        return DEFAULT_TILE if n >= AUTO_TILE_FROM else None
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    return chunk_size


def _scale(temperature: float | Tensor, like: Tensor) -> Tensor:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError("temperature must be a scalar")
        return (1.0 / temperature.reshape(())).to(like.dtype)
    check_positive("temperature", temperature)
    return torch.tensor(1.0 / temperature, dtype=like.dtype, device=like.device)


def _infonce_terms(a: Tensor, b: Tensor, scale: Tensor, chunk_size: int | None
                   ) -> tuple[Tensor, Tensor]:
    tile = _tile(a.shape[0], chunk_size)
    if tile is not None:
        return tiled_infonce_terms(a, b, scale, tile=tile)
    logits = (a @ b.t()) * scale
    diag = logits.diagonal()
    return torch.logsumexp(logits, 1) - diag, torch.logsumexp(logits, 0) - diag


def infonce_loss(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    normalize: bool = True,
    symmetric: bool = False,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""InfoNCE: each ``a_i`` must pick its partner ``b_i`` among all rows of ``b``.

    .. math::
        \ell_i = -\log \frac{\exp(s(a_i, b_i)/\tau)}{\sum_j \exp(s(a_i, b_j)/\tau)}

    with ``s`` the cosine similarity. ``symmetric=True`` averages the ``a -> b`` and
    ``b -> a`` directions (the CLIP loss, see :func:`clip_loss`). Equal to
    pytorch-metric-learning's ``NTXentLoss`` with ``ref_emb=b`` and one label per pair.

    Args:
        a, b: ``[N, D]`` paired embeddings.
        temperature: ``tau`` (default 0.1, SimCLR's; a 0-d tensor may be passed to learn it).
        normalize: L2-normalise ``a`` and ``b`` first (default True).
        symmetric: average both directions (default False).
        chunk_size: row tile of the memory-efficient path; ``None`` = tiled from N >= 8192.
        reduction: ``"mean"`` over pairs, ``"sum"``, or ``"none"`` (``[N]``).

    Paper: van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive
    Coding", arXiv 1807.03748; tiling after Inf-CL, arXiv 2410.17243.
    """
    a, b = _paired(a, b, normalize)
    dtype = a.dtype
    row, col = _infonce_terms(a, b, _scale(temperature, a), chunk_size)
    per_pair = (row + col) / 2 if symmetric else row
    return reduce(per_pair, reduction).to(dtype)


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
    a, b = _paired(a, b, normalize)
    scale = _scale(temperature, a)
    bias_t = (bias if isinstance(bias, Tensor)
              else torch.tensor(bias, device=a.device)).to(a.dtype).reshape(())
    tile = _tile(a.shape[0], chunk_size)
    if tile is not None:
        rows = tiled_sigmoid_terms(a, b, scale, bias_t, tile=tile)
    else:
        logits = (a @ b.t()) * scale + bias_t
        rows = F.softplus(logits).sum(1) - logits.diagonal()
    return reduce(rows, reduction).to(a.dtype)


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
    check_positive("alpha", alpha)
    a, b = _paired(a, b, normalize)
    sq = (a - b).pow(2).sum(1)
    per_pair = sq if alpha == 2 else sq.clamp_min(torch.finfo(sq.dtype).tiny).pow(alpha / 2)
    return reduce(per_pair, reduction).to(a.dtype)


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
    check_positive("t", t)
    a, b = _paired(a, b, normalize)
    if a.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 rows in a and b, got {a.shape[0]}")
    return ((_log_uniformity(a, t) + _log_uniformity(b, t)) / 2).to(a.dtype)


class _LearnableTemperature(LossModule):
    """Shared shell for losses whose inverse temperature may be learned (as CLIP's)."""

    def _init_scale(self, temperature: float, learnable: bool) -> None:
        check_positive("temperature", temperature)
        if learnable:
            self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self.log_scale = None

    def _temperature(self) -> float | Tensor:
        if self.log_scale is None:
            return self.hparams["temperature"]
        # CLIP clips the learned logit scale at 100.
        return torch.exp(-self.log_scale.clamp(max=math.log(100.0)))

    def _call_hparams(self) -> dict[str, object]:
        hp = {k: v for k, v in self.hparams.items() if k != "learnable_temperature"}
        hp["temperature"] = self._temperature()
        return hp


@register(
    "infonce", family="contrastive-ssl", kind="paired",
    paper="Representation Learning with Contrastive Predictive Coding", arxiv="1807.03748",
    function=infonce_loss, summary="-log softmax_j(cos(a_i, b_j)/tau)_i",
    peers=("pytorch_metric_learning.losses.NTXentLoss",), reduction="per pair",
    degenerate=(),
)
class InfoNCELoss(_LearnableTemperature):
    """Module form of :func:`infonce_loss` (``learnable_temperature`` learns ``1/tau``)."""

    def __init__(self, *, temperature: float = 0.1, normalize: bool = True,
                 symmetric: bool = False, chunk_size: int | None = None,
                 learnable_temperature: bool = False, reduction: Reduction = "mean") -> None:
        super().__init__(temperature=temperature, normalize=normalize, symmetric=symmetric,
                         chunk_size=chunk_size, learnable_temperature=learnable_temperature,
                         reduction=reduction)
        self._init_scale(temperature, learnable_temperature)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return infonce_loss(a, b, **self._call_hparams())  # type: ignore[arg-type]


@register(
    "clip", family="contrastive-ssl", kind="paired",
    paper="Learning Transferable Visual Models From Natural Language Supervision",
    arxiv="2103.00020", function=clip_loss,
    summary="(CE(l, diag) + CE(l^T, diag))/2, l = cos(a, b)/tau; tiled for large N",
    peers=("open_clip.ClipLoss", "inf_cl.cal_inf_loss"), reduction="per pair",
)
class ClipLoss(_LearnableTemperature):
    """Module form of :func:`clip_loss`; ``learnable_temperature=True`` learns ``log(1/tau)``
    (initialised at ``1/0.07``, clipped at 100, as CLIP)."""

    def __init__(self, *, temperature: float = 0.07, normalize: bool = True,
                 chunk_size: int | None = None, learnable_temperature: bool = False,
                 reduction: Reduction = "mean") -> None:
        super().__init__(temperature=temperature, normalize=normalize, chunk_size=chunk_size,
                         learnable_temperature=learnable_temperature, reduction=reduction)
        self._init_scale(temperature, learnable_temperature)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return clip_loss(a, b, **self._call_hparams())  # type: ignore[arg-type]


@register(
    "siglip", family="contrastive-ssl", kind="paired",
    paper="Sigmoid Loss for Language Image Pre-Training", arxiv="2303.15343",
    function=siglip_loss,
    summary="mean_i sum_j softplus(-z_ij (t cos(a_i, b_j) + b)), z = +1 on the diagonal",
    peers=("open_clip.SigLipLoss",), reduction="per row",
)
class SigLipLoss(_LearnableTemperature):
    """Module form of :func:`siglip_loss`; ``learnable=True`` learns ``t' = log t`` and ``b``
    (initialised at ``log 10`` and ``-10``, the paper's values)."""

    def __init__(self, *, temperature: float = 0.1, bias: float = -10.0, normalize: bool = True,
                 chunk_size: int | None = None, learnable: bool = False,
                 reduction: Reduction = "mean") -> None:
        super().__init__(temperature=temperature, bias=bias, normalize=normalize,
                         chunk_size=chunk_size, learnable=learnable, reduction=reduction)
        self._init_scale(temperature, learnable)
        self.learned_bias = nn.Parameter(torch.tensor(float(bias))) if learnable else None

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        hp = {k: v for k, v in self.hparams.items() if k != "learnable"}
        if self.log_scale is not None:
            hp["temperature"] = torch.exp(-self.log_scale)
            hp["bias"] = self.learned_bias
        return siglip_loss(a, b, **hp)  # type: ignore[arg-type]


@register(
    "alignment", family="contrastive-ssl", kind="paired",
    paper="Understanding Contrastive Representation Learning through Alignment and Uniformity "
    "on the Hypersphere", arxiv="2005.10242", function=alignment_loss,
    summary="||f(x_i) - f(y_i)||^alpha over positive pairs", reduction="per pair",
)
class AlignmentLoss(LossModule):
    """Module form of :func:`alignment_loss`."""

    def __init__(self, *, alpha: float = 2.0, normalize: bool = True,
                 reduction: Reduction = "mean") -> None:
        check_positive("alpha", alpha)
        super().__init__(alpha=alpha, normalize=normalize, reduction=reduction)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return alignment_loss(a, b, **self.hparams)


@register(
    "uniformity", family="contrastive-ssl", kind="paired",
    paper="Understanding Contrastive Representation Learning through Alignment and Uniformity "
    "on the Hypersphere", arxiv="2005.10242", function=uniformity_loss,
    summary="(log E_{i<j} exp(-t ||a_i - a_j||^2) + same for b) / 2", reduction=None,
)
class UniformityLoss(LossModule):
    """Module form of :func:`uniformity_loss`."""

    def __init__(self, *, t: float = 2.0, normalize: bool = True) -> None:
        check_positive("t", t)
        super().__init__(t=t, normalize=normalize)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return uniformity_loss(a, b, **self.hparams)
