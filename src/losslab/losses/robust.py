"""Losses robust to label noise (family ``robust-noisy``): LDR-KL / ALDR-KL, the comp-sum
members GCE and MAE, the normalized / active-passive losses, and the robust mean teacher's
symmetric consistency (``mean_teacher_sce``, kind ``teacher``).

Kind ``logits``: ``loss(logits[N, C, d1, ...], target[N, d1, ...])`` with integer class ids
(soft targets raise ``ValueError``); ``ignore_index`` (default -100) items are skipped and
``reduction="mean"`` averages over the other items. fp16/bf16 inputs are computed in float32
and the loss is returned in float32 (:func:`losslab._core.compute_dtype`). Class ids (and
``aldr_kl``'s ``index=``) of any integer dtype are accepted; bool tensors are a ``ValueError``.
``aldr_kl`` keeps per-sample state and takes ``index=`` (dataset ids), so it needs logits
``[N, C]``. Hyperparameters are declared with :mod:`losslab._hparams` and checked at
construction and by every functional call.

Masked classes: a ``-inf`` logit gives its class probability 0 for that row. The normalised
losses (NCE, NFL and their active-passive sums) leave masked classes out of their normaliser
(otherwise it is infinite and the loss identically 0); the score normalisations of LDR-KL keep
them masked and average over the other classes. The normalised losses need ``C >= 2`` (with
one class the normaliser is 0).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce, require
from losslab._hparams import Choice, Flag, Int, Real, hparams
from losslab._ops.logits import (
    LogitsBatch,
    comp_sum_items,
    comp_sum_values,
    finish,
    gather_target,
    log_softmax,
    masked_classes,
    one_minus_pt_power,
    prepare,
)
from losslab._ops.teacher import check_teacher_pair
from losslab.registry import register

__all__ = [
    "ALDRKLLoss",
    "GCELoss",
    "LDRKLLoss",
    "MAELoss",
    "MeanTeacherSCELoss",
    "NCELoss",
    "NCEMAELoss",
    "NCERCELoss",
    "NFLLoss",
    "NFLRCELoss",
    "RCELoss",
    "SCELoss",
    "aldr_kl_loss",
    "gce_loss",
    "ldr_kl_loss",
    "mae_loss",
    "mean_teacher_sce_loss",
    "nce_loss",
    "nce_mae_loss",
    "nce_rce_loss",
    "nfl_loss",
    "nfl_rce_loss",
    "rce_loss",
    "sce_loss",
    "transform_scores",
]

LDR = (
    "Label Distributionally Robust Losses for Multi-class Classification: Consistency, "
    "Robustness and Adaptivity"
)
APL = "Normalized Loss Functions for Deep Learning with Noisy Labels"
SCE = "Symmetric Cross Entropy for Robust Learning with Noisy Labels"
RMT = "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"

ScoreTransform = Literal["softplus_mean", "l1_mean"] | None
SCORE_TRANSFORMS = (None, "softplus_mean", "l1_mean")

#: Guards the divisions of the score normalisations (a row of all-zero scores).
_SCORE_EPS = 1e-12

#: The rule every logits loss shares: ``ignore_index`` is any integer (usually -100).
_IGNORE = hparams(ignore_index=Int())
_SCORE_TRANSFORM = Choice("softplus_mean", "l1_mean", optional=True)
#: Weights of the two terms of an active-passive / symmetric loss.
_TERM_WEIGHTS = hparams(alpha=Real(ge=0), beta=Real(ge=0))


# --------------------------------------------------------------------------------------------
# LDR-KL and ALDR-KL
# --------------------------------------------------------------------------------------------


def transform_scores(scores: Tensor, score_transform: ScoreTransform) -> Tensor:
    r"""The score normalisations of the official LDR code.

    * ``None``: the raw logits.
    * ``"softplus_mean"`` (``LDRLoss_V1``): :math:`\tilde f = \operatorname{softplus}(f) /
      \operatorname{mean}_k \operatorname{softplus}(f_k)`.
    * ``"l1_mean"`` (``ALDRLoss``): :math:`\tilde f = f / \operatorname{mean}_k |f_k|`.

    Masked classes (``-inf`` scores) stay ``-inf`` and the means run over the row's other
    classes (:func:`~losslab._ops.logits.masked_classes`).
    """
    _SCORE_TRANSFORM.check("score_transform", score_transform)
    if score_transform is None:
        return scores
    masked = masked_classes(scores)
    zeros = torch.zeros_like(scores)
    if score_transform == "softplus_mean":
        scores = F.softplus(scores)
    # masked entries are 0 in the normalisation (their gradient is then 0, not NaN)
    scores = torch.where(masked, zeros, scores)
    scale = scores.abs().sum(1, keepdim=True) / (~masked).sum(1, keepdim=True).to(scores.dtype)
    out = scores / scale.clamp_min(_SCORE_EPS)
    return torch.where(masked, torch.full_like(out, float("-inf")), out)


def _ldr_kl_values(f: Tensor, batch: LogitsBatch, margin: float, lam: Tensor | float) -> Tensor:
    r""":math:`\lambda (\log \sum_k \exp((\delta_{k,y} + f_k - f_y)/\lambda) - \log K)`."""
    onehot = F.one_hot(batch.class_ids, batch.num_classes).to(f.dtype)
    delta = margin * (1.0 - onehot)
    f_y = gather_target(f, batch).unsqueeze(1)  # not (f * onehot).sum: -inf * 0 is NaN
    lam_col = lam.unsqueeze(1) if isinstance(lam, Tensor) else lam
    lse = torch.logsumexp((delta + f - f_y) / lam_col, dim=1)
    return lam * (lse - math.log(batch.num_classes))


_check_ldr_kl = _IGNORE | hparams(margin=Real(ge=0), lam=Real(gt=0),
                                  score_transform=_SCORE_TRANSFORM)


def ldr_kl_loss(
    logits: Tensor,
    target: Tensor,
    *,
    margin: float = 0.1,
    lam: float = 10.0,
    score_transform: ScoreTransform = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Label-distributionally-robust loss with a KL regulariser (LDR-KL).

    .. math::
        \ell = \max_{p \in \Delta_K} \sum_k p_k(\delta_{k,y} + f_k - f_y) - \lambda\,
        \mathrm{KL}(p \,\|\, \tfrac1K) = \lambda \log \Big(\frac1K \sum_k
        \exp\frac{\delta_{k,y} + f_k - f_y}{\lambda}\Big),\quad \delta_{k,y} = c\,[k \ne y]

    ``lam → 0`` gives the Crammer–Singer loss :math:`\max_k(\delta_{k,y} + f_k - f_y)`,
    ``lam → ∞`` the mean over classes; ``margin=0, lam=1`` is cross-entropy minus ``log K``.
    A masked class (``-inf`` logit) gets weight :math:`p_k = 0` in the maximum; ``K`` is
    always the number of classes ``C`` (a constant of the row).

    Args:
        logits, target: see the module docstring.
        margin: :math:`c \ge 0` (default 0.1, ``--margin`` of the official ``experiment.py``).
        lam: :math:`\lambda > 0` (default 10, ``parameter_set=[10]`` of the official code).
        score_transform: ``None`` (raw logits, default), ``"softplus_mean"`` (the official
            ``LDRLoss_V1``: softplus scores divided by their class mean) or ``"l1_mean"``
            (scores divided by their mean absolute value, as the official ALDR code).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Zhu, Ying, Yang, "Label Distributionally Robust Losses for Multi-class
    Classification: Consistency, Robustness and Adaptivity", arXiv 2112.14869.
    """
    _check_ldr_kl(margin=margin, lam=lam, score_transform=score_transform,
                  ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="ldr_kl")
    f = transform_scores(batch.logits, score_transform)
    return finish(_ldr_kl_values(f, batch, margin, lam), batch, reduction)


@register(
    "ldr_kl",
    family="robust-noisy",
    kind="logits", degenerate=("all_ignored",),
    paper=LDR,
    arxiv="2112.14869",
    summary="lam log mean_k exp((margin [k!=y] + f_k - f_y) / lam), margin=0.1, lam=10",
)
class LDRKLLoss(LossModule, function=ldr_kl_loss, check=_check_ldr_kl):
    """Module form of :func:`ldr_kl_loss`."""


def _check_sample_ids(index: Tensor | None, n: int, num_samples: int) -> Tensor:
    if index is None:
        raise ValueError("aldr_kl needs index= (the dataset ids of the batch, LongTensor [N])")
    if not isinstance(index, Tensor) or index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError("index must be an integer tensor of dataset ids")
    if index.shape != (n,):
        raise ValueError(f"index must have shape [{n}] (one id per row of logits), "
                         f"got {tuple(index.shape)}")
    require((index >= 0) & (index < num_samples), lambda: (  # no graph break under compile
        f"index must hold dataset ids in [0, {num_samples}), got values in "
        f"[{int(index.min())}, {int(index.max())}]"))
    return index.long()


#: ``alpha > 1`` keeps every lambda_i positive (lambda_i >= lam0 (1 - 1/alpha)).
_check_aldr_kl = _IGNORE | hparams(num_samples=Int(ge=1, optional=True), lam0=Real(gt=0),
                                   alpha=Real(gt=1), margin=Real(ge=0),
                                   score_transform=_SCORE_TRANSFORM, update=Flag())


def aldr_kl_loss(
    logits: Tensor,
    target: Tensor,
    *,
    index: Tensor | None = None,
    lambdas: Tensor | None = None,
    num_samples: int | None = None,
    lam0: float = 10.0,
    alpha: float = 2.0,
    margin: float = 0.1,
    score_transform: ScoreTransform = None,
    update: bool = True,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Adaptive LDR-KL: LDR-KL with a per-sample :math:`\lambda_i` kept across visits.

    One alternating step per visit of sample ``i`` (as the official code):

    1. :math:`\hat p = \operatorname{normalise}(\operatorname{softmax}(\tilde f / \lambda_i^{old})
       + 10^{-5})`, :math:`\mathrm{KL}_i = \sum_k \hat p_k \log(K \hat p_k)`;
    2. :math:`\lambda_i \leftarrow \lambda_0 - \lambda_0 \mathrm{KL}_i / (\alpha \log K)`
       (detached; stored in ``lambdas[index]``; in :math:`[\lambda_0(1 - 1/\alpha), \lambda_0]`);
    3. :math:`\ell_i = \lambda_i \log \frac1K \sum_k \exp\frac{\delta_{k,y} + \tilde f_k -
       \tilde f_y}{\lambda_i} - \frac{\alpha \log K}{2 \lambda_0} (\lambda_i - \lambda_0)^2`.

    Step 2 is the exact maximiser over :math:`\lambda` of
    :math:`-\lambda \mathrm{KL} - \frac{\alpha \log K}{2\lambda_0}(\lambda - \lambda_0)^2`:
    confident predictions get a small :math:`\lambda` (Crammer–Singer-like), uncertain ones
    keep :math:`\lambda \approx \lambda_0` (robust, mean-like). The last term of step 3 is
    constant in the logits; it is kept so values match the official code.

    Args:
        logits: ``[N, C]`` (``C >= 2``); target: ``[N]`` class ids.
        index: ``[N]`` dataset ids in ``[0, num_samples)`` (required with ``lambdas``). With
            duplicate ids in a batch, one of the updates wins. Ignored items are not updated.
        lambdas: ``[num_samples]`` buffer of per-sample :math:`\lambda` (initialised to
            ``lam0``), updated in place under ``no_grad`` when ``update=True``. ``None``: every
            sample is on its first visit (:math:`\lambda^{old} = \lambda_0`), nothing is stored.
        num_samples: size of the dataset; if given, must equal ``len(lambdas)`` (the module
            form owns the buffer and passes both).
        lam0: :math:`\lambda_0` (default 10, official README/run_demo).
        alpha: :math:`\alpha > 1` (default 2, official README/run_demo).
        margin: :math:`c \ge 0` (default 0.1, official code).
        score_transform: ``None`` (default), ``"l1_mean"`` (the official ALDR normalisation) or
            ``"softplus_mean"`` (its ``softplus=True`` form, used for CIFAR-100).
        update: write the new :math:`\lambda_i` into ``lambdas`` (False: evaluate only; the
            loss still uses the freshly computed :math:`\lambda_i`).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Zhu, Ying, Yang, arXiv 2112.14869 (Algorithm 1, "ALDR-KL").
    """
    _check_aldr_kl(num_samples=num_samples, lam0=lam0, alpha=alpha, margin=margin,
                   score_transform=score_transform, update=update, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, spatial_ok=False,
                    loss="aldr_kl")
    n = batch.logits.shape[0]
    if lambdas is not None:
        if num_samples is not None and lambdas.shape != (num_samples,):
            raise ValueError(f"lambdas must have shape [{num_samples}] (num_samples), "
                             f"got {tuple(lambdas.shape)}")
        idx = _check_sample_ids(index, n, lambdas.shape[0])
    elif index is not None and num_samples is not None:
        _check_sample_ids(index, n, num_samples)
    k = batch.num_classes
    log_k = math.log(k)
    f = transform_scores(batch.logits, score_transform)
    with torch.no_grad():
        if lambdas is None:
            lam_old = torch.full((n,), float(lam0), dtype=f.dtype, device=f.device)
        else:
            lam_old = lambdas[idx].to(f.dtype)
        p = torch.softmax(f / lam_old.unsqueeze(1), dim=1) + 1e-5
        p = p / p.sum(1, keepdim=True)
        kl = (p * (p * k).log()).sum(1)
        lam = lam0 - lam0 * kl / (alpha * log_k)
        if update and lambdas is not None:
            keep = batch.valid
            lambdas[idx[keep]] = lam[keep].to(lambdas.dtype)
    values = _ldr_kl_values(f, batch, margin, lam)
    values = values - (alpha * log_k / (2 * lam0)) * (lam - lam0).pow(2)
    return finish(values, batch, reduction)


@register(
    "aldr_kl",
    family="robust-noisy",
    kind="logits", degenerate=("all_ignored",),
    paper=LDR,
    arxiv="2112.14869",
    summary="LDR-KL with per-sample lambda_i = lam0 - lam0 KL(p_i||u)/(alpha log K), by index",
    needs_index=True,
    example_hparams={"num_samples": 64},
)
class ALDRKLLoss(LossModule, function=aldr_kl_loss, check=_check_aldr_kl):
    """Module form of :func:`aldr_kl_loss`; keeps the per-sample lambdas in the buffer
    ``lambdas`` (saved by ``state_dict()``). ``forward(logits, target, *, index)``; in
    ``eval()`` mode the lambdas are not updated.

    ``num_samples`` (the dataset size, the length of ``lambdas``) is required here; it defaults
    to ``None`` only because it is optional in the function (which then keeps no state).
    """

    function_only = ("lambdas", "update")  # the module's buffer and its train/eval mode
    lambdas: Tensor

    def __init__(
        self,
        *,
        num_samples: int | None = None,
        lam0: float = 10.0,
        alpha: float = 2.0,
        margin: float = 0.1,
        score_transform: ScoreTransform = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
    ) -> None:
        if num_samples is None:
            raise ValueError("aldr_kl needs num_samples (the dataset size: one lambda per "
                             "sample)")
        super().__init__(
            num_samples=num_samples, lam0=lam0, alpha=alpha, margin=margin,
            score_transform=score_transform, ignore_index=ignore_index, reduction=reduction,
        )
        self.register_buffer("lambdas", torch.full((num_samples,), float(lam0)))

    def forward(self, logits: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        return aldr_kl_loss(logits, target, index=index, lambdas=self.lambdas,
                            update=self.training, **self.call_kwargs())


# --------------------------------------------------------------------------------------------
# Members of the comp-sum family: GCE and MAE
# --------------------------------------------------------------------------------------------


_check_gce = _IGNORE | hparams(q=Real(gt=0, le=1))


def gce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    q: float = 0.7,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Generalized cross-entropy :math:`(1 - p_y^q)/q` (comp-sum with ``tau = 1 + q``).

    ``q → 0`` is cross-entropy, ``q = 1`` is :math:`1 - p_y` (half the MAE).

    Args:
        q: :math:`q \in (0, 1]` (default 0.7, the paper's choice).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Zhang, Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks
    with Noisy Labels", arXiv 1805.07836 (a member of the comp-sum family, arXiv 2304.07288;
    :func:`~losslab.losses.classification.comp_sum_loss`).
    """
    _check_gce(q=q, ignore_index=ignore_index)
    return comp_sum_items(logits, target, tau=1.0 + q, scale=1.0, ignore_index=ignore_index,
                          reduction=reduction, loss="gce")


@register(
    "gce",
    family="robust-noisy",
    kind="logits", degenerate=("all_ignored",),
    paper="Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
    arxiv="1805.07836",
    summary="(1 - p_y^q) / q, q=0.7 (comp_sum with tau = 1 + q)",
)
class GCELoss(LossModule, function=gce_loss, check=_check_gce):
    """Module form of :func:`gce_loss`."""


def mae_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Mean absolute error between the one-hot target and the softmax:
    :math:`\|e_y - p\|_1 = 2(1 - p_y)`.

    Twice comp-sum with ``tau = 2``. (Some released code, e.g. Ma et al.'s, uses
    :math:`1 - p_y`; scale the weight by 2 to compare.)

    Args:
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Ghosh, Kumar, Sastry, "Robust Loss Functions under Label Noise for Deep Neural
    Networks", arXiv 1712.09482.
    """
    _IGNORE(ignore_index=ignore_index)
    return comp_sum_items(logits, target, tau=2.0, scale=2.0, ignore_index=ignore_index,
                          reduction=reduction, loss="mae")


@register(
    "mae",
    family="robust-noisy",
    kind="logits", degenerate=("all_ignored",),
    paper="Robust Loss Functions under Label Noise for Deep Neural Networks",
    arxiv="1712.09482",
    summary="||e_y - softmax||_1 = 2 (1 - p_y)",
)
class MAELoss(LossModule, function=mae_loss, check=_IGNORE):
    """Module form of :func:`mae_loss`."""


# --------------------------------------------------------------------------------------------
# Normalized losses and active-passive combinations (Ma et al.), symmetric CE (Wang et al.)
# --------------------------------------------------------------------------------------------


def _unmasked_log_probs(logp: Tensor, batch: LogitsBatch) -> Tensor:
    """``log p`` with masked classes (``-inf`` logits) replaced by 0, i.e. by :math:`p = 1`:
    their terms ``-log p`` and :math:`-(1-p)^\\gamma \\log p` vanish from a normaliser, with a
    zero (not NaN) gradient."""
    return torch.where(masked_classes(batch.logits), torch.zeros_like(logp), logp)


def _nce_values(logp: Tensor, batch: LogitsBatch) -> Tensor:
    """Normalized CE: :math:`-\\log p_y / -\\sum_k \\log p_k` (in [0, 1]), the sum over the
    classes that are not masked. A row whose only unmasked class is the target (the
    normaliser is 0) gives 0."""
    denom = _unmasked_log_probs(logp, batch).sum(1)
    denom = torch.where(denom < 0, denom, -torch.ones_like(denom))
    return gather_target(logp, batch) / denom


def _nfl_values(logp: Tensor, batch: LogitsBatch, gamma: float) -> Tensor:
    """Normalized focal: :math:`FL_y / \\sum_k FL_k`, :math:`FL_k = -(1-p_k)^\\gamma \\log p_k`,
    the sum over the classes that are not masked."""
    def focal_terms(lp: Tensor) -> Tensor:
        return -one_minus_pt_power(lp, gamma) * lp

    denom = focal_terms(_unmasked_log_probs(logp, batch)).sum(1)
    fl_y = focal_terms(gather_target(logp, batch))
    return fl_y / denom.clamp_min(torch.finfo(denom.dtype).tiny)


def _rce_values(logp: Tensor, batch: LogitsBatch, log_zero: float) -> Tensor:
    """Reverse CE with :math:`\\log 0 := A`: :math:`-A (1 - p_y)`."""
    return -log_zero * comp_sum_values(gather_target(logp, batch), 2.0)


def _mae_values(logp: Tensor, batch: LogitsBatch) -> Tensor:
    return 2.0 * comp_sum_values(gather_target(logp, batch), 2.0)


#: ``log_zero < 0``: the value that replaces log 0 in every RCE term.
_check_rce = _IGNORE | hparams(log_zero=Real(lt=0))
_check_nfl = _IGNORE | hparams(gamma=Real(ge=0))
_check_sce = _check_rce | _TERM_WEIGHTS
_check_nce_rce = _check_rce | _TERM_WEIGHTS
_check_nfl_rce = _check_rce | _check_nfl | _TERM_WEIGHTS
_check_nce_mae = _IGNORE | _TERM_WEIGHTS


def nce_loss(
    logits: Tensor, target: Tensor, *, ignore_index: int = -100, reduction: Reduction = "mean"
) -> Tensor:
    r"""Normalized cross-entropy: :math:`\ell = \frac{-\log p_y}{-\sum_k \log p_k}`.

    The sum runs over the classes that are not masked (``-inf`` logits, see the module
    docstring); a row whose only unmasked class is its target gives 0.

    Args:
        logits, target: see the module docstring (``C >= 2``: with one class the normaliser
            is 0).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Ma, Huang, Wang, Romano, Erfani, Bailey, "Normalized Loss Functions for Deep
    Learning with Noisy Labels", arXiv 2006.13554.
    """
    _IGNORE(ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="nce")
    return finish(_nce_values(log_softmax(batch), batch), batch, reduction)


@register(
    "nce",
    family="robust-noisy",
    kind="logits",
    degenerate=("all_ignored",),
    paper=APL,
    arxiv="2006.13554",
    summary="-log p_y / -sum_k log p_k",
)
class NCELoss(LossModule, function=nce_loss, check=_IGNORE):
    """Module form of :func:`nce_loss`."""


def nfl_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 0.5,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Normalized focal loss:
    :math:`\ell = \frac{(1-p_y)^\gamma \log p_y}{\sum_k (1-p_k)^\gamma \log p_k}`,
    the sum over the classes that are not masked (``C >= 2``).

    Args:
        gamma: focusing parameter :math:`\gamma \ge 0` (default 0.5, the value of the authors'
            released configs).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Ma et al., arXiv 2006.13554.
    """
    _check_nfl(gamma=gamma, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="nfl")
    return finish(_nfl_values(log_softmax(batch), batch, gamma), batch, reduction)


@register(
    "nfl",
    family="robust-noisy",
    kind="logits",
    degenerate=("all_ignored",),
    paper=APL,
    arxiv="2006.13554",
    summary="FL_y / sum_k FL_k, FL_k = -(1-p_k)^gamma log p_k, gamma=0.5",
)
class NFLLoss(LossModule, function=nfl_loss, check=_check_nfl):
    """Module form of :func:`nfl_loss`."""


def rce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    log_zero: float = -4.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Reverse cross-entropy :math:`-\sum_k p_k \log q_k` with the one-hot label ``q`` and
    :math:`\log 0 := A`, which is :math:`-A (1 - p_y)`.

    Args:
        log_zero: :math:`A < 0` (default -4, as both papers state; the released code clamps
            the one-hot label at 1e-4, i.e. ``A = log(1e-4) ≈ -9.21``).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Wang, Ma, Chen, Luo, Yi, Bailey, "Symmetric Cross Entropy for Robust Learning with
    Noisy Labels", arXiv 1908.06112.
    """
    _check_rce(log_zero=log_zero, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="rce")
    return finish(_rce_values(log_softmax(batch), batch, log_zero), batch, reduction)


@register(
    "rce",
    family="robust-noisy",
    kind="logits",
    degenerate=("all_ignored",),
    paper=SCE,
    arxiv="1908.06112",
    summary="-sum_k p_k log q_k with log 0 = A = -4: -A (1 - p_y)",
)
class RCELoss(LossModule, function=rce_loss, check=_check_rce):
    """Module form of :func:`rce_loss`."""


def sce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.1,
    beta: float = 1.0,
    log_zero: float = -4.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Symmetric cross-entropy: :math:`\ell = \alpha\, \mathrm{CE} + \beta\, \mathrm{RCE}`.

    Args:
        alpha, beta: weights (defaults 0.1 / 1.0, the paper's CIFAR-10 setting).
        log_zero: :math:`A` of RCE (default -4, see :func:`rce_loss`).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy Labels",
    arXiv 1908.06112.
    """
    _check_sce(alpha=alpha, beta=beta, log_zero=log_zero, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="sce")
    logp = log_softmax(batch)
    ce = -gather_target(logp, batch)
    return finish(alpha * ce + beta * _rce_values(logp, batch, log_zero), batch, reduction)


@register(
    "sce",
    family="robust-noisy",
    kind="logits",
    degenerate=("all_ignored",),
    paper=SCE,
    arxiv="1908.06112",
    summary="alpha CE + beta RCE, alpha=0.1, beta=1, A=-4",
)
class SCELoss(LossModule, function=sce_loss, check=_check_sce):
    """Module form of :func:`sce_loss`."""


def nce_rce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    log_zero: float = -4.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Active-passive loss NCE+RCE: :math:`\alpha\, \mathrm{NCE} + \beta\, \mathrm{RCE}`.

    Args:
        alpha, beta: weights (defaults 1 / 1, the paper's CIFAR-10 setting; CIFAR-100 used
            10 / 0.1).
        log_zero: :math:`A` of RCE (default -4).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Ma et al., arXiv 2006.13554.
    """
    _check_nce_rce(alpha=alpha, beta=beta, log_zero=log_zero, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="nce_rce")
    logp = log_softmax(batch)
    values = alpha * _nce_values(logp, batch) + beta * _rce_values(logp, batch, log_zero)
    return finish(values, batch, reduction)


@register(
    "nce_rce",
    family="robust-noisy",
    kind="logits",
    degenerate=("all_ignored",),
    paper=APL,
    arxiv="2006.13554",
    summary="alpha NCE + beta RCE, alpha=beta=1",
)
class NCERCELoss(LossModule, function=nce_rce_loss, check=_check_nce_rce):
    """Module form of :func:`nce_rce_loss`."""


def nfl_rce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.5,
    log_zero: float = -4.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Active-passive loss NFL+RCE: :math:`\alpha\, \mathrm{NFL}_\gamma + \beta\, \mathrm{RCE}`.

    Args:
        alpha, beta: weights (defaults 1 / 1, CIFAR-10). gamma: of NFL (default 0.5).
        log_zero: :math:`A` of RCE (default -4).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Ma et al., arXiv 2006.13554.
    """
    _check_nfl_rce(alpha=alpha, beta=beta, gamma=gamma, log_zero=log_zero,
                   ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="nfl_rce")
    logp = log_softmax(batch)
    values = alpha * _nfl_values(logp, batch, gamma) + beta * _rce_values(logp, batch, log_zero)
    return finish(values, batch, reduction)


@register(
    "nfl_rce",
    family="robust-noisy",
    kind="logits",
    degenerate=("all_ignored",),
    paper=APL,
    arxiv="2006.13554",
    summary="alpha NFL + beta RCE, alpha=beta=1, gamma=0.5",
)
class NFLRCELoss(LossModule, function=nfl_rce_loss, check=_check_nfl_rce):
    """Module form of :func:`nfl_rce_loss`."""


def nce_mae_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Active-passive loss NCE+MAE: :math:`\alpha\, \mathrm{NCE} + \beta\, \mathrm{MAE}`, with
    :math:`\mathrm{MAE} = 2(1 - p_y)` (:func:`mae_loss`; the
    released code uses :math:`1 - p_y`, so its ``beta`` is twice ours).

    Args:
        alpha, beta: weights (defaults 1 / 1, CIFAR-10).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Ma et al., arXiv 2006.13554.
    """
    _check_nce_mae(alpha=alpha, beta=beta, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2, loss="nce_mae")
    logp = log_softmax(batch)
    values = alpha * _nce_values(logp, batch) + beta * _mae_values(logp, batch)
    return finish(values, batch, reduction)


@register(
    "nce_mae",
    family="robust-noisy",
    kind="logits",
    degenerate=("all_ignored",),
    paper=APL,
    arxiv="2006.13554",
    summary="alpha NCE + beta MAE, MAE = 2(1 - p_y), alpha=beta=1",
)
class NCEMAELoss(LossModule, function=nce_mae_loss, check=_check_nce_mae):
    """Module form of :func:`nce_mae_loss`."""




# ---------------------------------------------------------------------------------------------
# Robust mean teacher: symmetric cross-entropy between student and teacher distributions
# ---------------------------------------------------------------------------------------------


def mean_teacher_sce_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    target: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Symmetric cross-entropy between the student's and the (mean) teacher's predictions.

    .. math::
        \ell_i = -\tfrac12 \sum_c \big(q_{ic} \log p_{ic} + p_{ic} \log q_{ic}\big),
        \qquad p_i = \operatorname{softmax}(s_i),\ q_i = \operatorname{softmax}(t_i)

    The consistency loss of the robust mean teacher (RMT) for test-time adaptation: the
    cross-entropy of the teacher's soft prediction under the student plus the reverse term,
    with equal weights. The paper prefers this symmetric form to the usual soft cross-entropy
    (first term only) for its gradient behaviour in mean-teacher adaptation; that argument is
    taken from the abstract and the official code here, not re-derived. The gradient flows
    through both terms of the student; pass the teacher's logits detached (an EMA teacher has
    no gradient anyway).
    RMT's training objective averages this loss over the student's predictions of the test
    image and of an augmented view, both against the teacher on the test image:
    ``0.5 * (mean_teacher_sce_loss(s, t) + mean_teacher_sce_loss(s_aug, t))`` (the official
    code's ``symmetric_entropy``), plus the contrastive alignment to source prototypes of
    :func:`losslab.train.mean_teacher.prototype_alignment_loss`.

    Unlike the noisy-label SCE (:func:`sce_loss`, CE + reverse CE against a one-hot label with a
    clipped :math:`\log 0`), both distributions here are soft, so no clipping is needed. Classes
    with probability 0 under both (``-inf`` in both, a shared mask) contribute 0; a class the
    teacher excludes while the student does not gives an infinite loss, as the formula says.

    Args:
        student_logits: ``[N, C]`` student scores :math:`s`.
        teacher_logits: ``[N, C]`` teacher scores :math:`t` (pass them detached).
        target: unused (accepted for the ``teacher`` kind's signature; must be ``None``).
        reduction: ``"mean"`` over rows (the official code's ``.mean(0)``), ``"sum"``, or
            ``"none"`` (``[N]``).

    Symmetric in its two arguments; at :math:`p = q` it equals the entropy :math:`H(p)`, its
    minimum over the student for a fixed teacher is not at :math:`p = q` in general (it is a
    consistency loss, not a divergence).

    Paper: Döbler, Marsden, Yang, "Robust Mean Teacher for Continual and Gradual Test-Time
    Adaptation", arXiv 2211.13081 (code: the authors' ``test-time-adaptation`` repository,
    ``methods/rmt.py``).
    """
    if target is not None:
        raise ValueError("mean_teacher_sce takes no target (it compares two predictions); "
                         "got a target")
    s, t = check_teacher_pair(student_logits, teacher_logits)
    log_p = F.log_softmax(s, dim=1)
    log_q = F.log_softmax(t, dim=1)
    p, q = log_p.exp(), log_q.exp()
    # 0 log 0 = 0: a where() before each product, so a shared -inf mask never meets 0 * inf in
    # the value or the gradient.
    zero = torch.zeros_like(p)
    cross = q * torch.where(q > 0, log_p, zero)
    reverse = p * torch.where(p > 0, log_q, zero)
    return reduce(-0.5 * (cross + reverse).sum(1), reduction)


_check_mean_teacher_sce = hparams()


@register(
    "mean_teacher_sce",
    family="robust-noisy",
    kind="teacher",
    paper=RMT,
    arxiv="2211.13081",
    summary="-1/2 sum_c (q log p + p log q), student p vs mean-teacher q (test-time adaptation)",
)
class MeanTeacherSCELoss(LossModule, function=mean_teacher_sce_loss,
                         check=_check_mean_teacher_sce):
    """Module form of :func:`mean_teacher_sce_loss`."""
