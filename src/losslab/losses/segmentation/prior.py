"""Label-free losses with a class-proportion prior: prior-aware entropy minimisation
(source-free domain adaptation) and RePRI's transductive few-shot segmentation loss.

Kind ``dense`` (see :mod:`losslab.losses.segmentation.overlap` for the input conventions).
Both are built from the per-pixel distributions over the *outcomes* of a pixel (the ``C``
classes of a softmax input; foreground and background of a single sigmoid logit), their
Shannon entropy :math:`H(p_i) = -\\sum_k p_{ik} \\log p_{ik}` and the predicted class
proportions :math:`\\hat\\tau_k = \\frac{1}{|\\Omega|} \\sum_i p_{ik}`; the KL divergence of the
predicted proportions to the prior, :math:`\\mathrm{KL}(\\hat\\tau \\,\\|\\, \\tau) = \\sum_k
\\hat\\tau_k \\log(\\hat\\tau_k / \\tau_k)`, takes :math:`\\log(\\tau_k + 10^{-10})` (both official
codes add that ``1e-10``), so a zero prior class costs a large finite penalty, not inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from losslab._core import PROB_ATOL, LossModule, Reduction, check_probabilities, reduce
from losslab._hparams import Int, PerClass, Real, hparams
from losslab._ops.dense import DenseBatch, check_unit_interval, prepare_dense
from losslab.losses.segmentation.compound import pixel_log_probs
from losslab.registry import register

__all__ = ["EntropyPriorLoss", "RePRILoss", "entropy_prior_loss", "repri_loss"]

_EPS = 1e-10

_check_entropy_prior = hparams(lambda_prior=Real(ge=0), ignore_index=Int())
_check_repri = hparams(lambda_ce=Real(ge=0), lambda_kl=Real(ge=0), lambda_ent=Real(ge=0),
                       prior=PerClass(ge=0, scalar=Real(ge=0, le=1), optional=True),
                       ignore_index=Int())


def _outcome_probs(batch: DenseBatch) -> tuple[Tensor, Tensor, Tensor]:
    """``(p, log p, y)`` over the outcomes of each pixel, ``[G, K, S]``, 0 at ignored pixels."""
    logp, y = pixel_log_probs(batch)
    valid = batch.valid.unsqueeze(1)
    p = torch.where(valid, logp.exp(), torch.zeros_like(logp))
    return p, logp, y


def _kl(tau_hat: Tensor, tau: Tensor) -> Tensor:
    """``sum_k tau_hat_k (log tau_hat_k - log(tau_k + 1e-10))`` over the last dim."""
    return (torch.xlogy(tau_hat, tau_hat) - tau_hat * torch.log(tau + _EPS)).sum(-1)


def _proportion_target(logits: Tensor, target: Tensor) -> Tensor | None:
    """``[N, K]`` prior proportions when ``target`` is given as proportions (``[N, C]``, or
    ``[N, 1]`` foreground fractions for a single logit), else ``None``."""
    if not (isinstance(logits, Tensor) and isinstance(target, Tensor)
            and target.is_floating_point() and target.ndim == 2 and logits.ndim >= 3):
        return None
    n, c = logits.shape[0], logits.shape[1]
    if tuple(target.shape) != (n, c):
        raise ValueError(f"target as class proportions must have shape [N, C] = {[n, c]}, got "
                         f"{list(target.shape)}")
    if c == 1:
        check_unit_interval("target", target)
        t = target.to(logits.dtype if logits.is_floating_point() else torch.float32)
        return torch.cat([t, 1 - t], 1)
    check_probabilities("target", target, dim=1)
    return target


def entropy_prior_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_prior: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Prior-aware entropy minimisation (AdaEnt / "SFDA" loss), per image.

    .. math::
        \ell = \frac{1}{|\Omega|} \sum_{i \in \Omega} H(p_i)
        + \lambda\, \mathrm{KL}(\hat\tau \,\|\, \tau_e),\qquad
        \hat\tau_k = \frac{1}{|\Omega|} \sum_{i \in \Omega} p_{ik}

    The entropy term needs no label; :math:`\tau_e` is the class-ratio prior of the image.

    Args:
        logits: ``[N, C, *spatial]`` (softmax) or ``[N, 1, *spatial]`` (sigmoid: outcomes
            foreground, background).
        target: the prior, either as class proportions ``[N, C]`` (``[N, 1]`` foreground
            fractions for a single logit; the paper's per-image class-ratio prior estimated
            from anatomical knowledge) or as a mask (class ids ``[N, *spatial]`` or soft labels)
            whose class proportions over the non-ignored pixels are :math:`\tau_e` (the official
            code's ``curi=False`` mode, e.g. proportions of a coarse or pseudo label).
        lambda_prior: :math:`\lambda` (default 1, the official ``lamb_consprior``; the entropy
            weight ``lamb_se`` is 1 too). The official code also weights the entropy per class
            (``weights_se``, e.g. 0.1/0.9); here every class weighs 1.
        ignore_index: pixels of a class-id target to leave out of both terms.
        reduction: ``"none"`` gives ``[N]``; ``"mean"`` averages over images with a non-ignored
            pixel; a batch whose pixels are all ignored gives 0 with zero gradient.

    Paper: Bateson, Kervadec, Dolz, Lombaert, Ben Ayed, "Source-Free Domain Adaptation for Image
    Segmentation", arXiv 2108.03152 (code: github.com/mathilde-b/SFDA, ``EntKLProp``).
    """
    _check_entropy_prior(lambda_prior=lambda_prior, ignore_index=ignore_index)
    prior = _proportion_target(logits, target)
    if prior is not None:
        mask_target = torch.zeros((logits.shape[0], *logits.shape[2:]), dtype=torch.long,
                                  device=logits.device)
        batch = prepare_dense(logits, mask_target, ignore_index=ignore_index, per_image=True,
                              loss="entropy_prior")
    else:
        batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=True,
                              loss="entropy_prior")
    p, logp, y = _outcome_probs(batch)
    n_pix = batch.valid.sum(1).to(p.dtype)
    denom = n_pix.clamp_min(1).unsqueeze(1)
    entropy = -(p * logp).sum((1, 2)) / denom[:, 0]
    tau_hat = p.sum(2) / denom
    tau = prior.to(p.dtype) if prior is not None else y.sum(2) / denom
    values = entropy + lambda_prior * _kl(tau_hat, tau)
    has = n_pix > 0
    values = torch.where(has, values, torch.zeros_like(values))
    return reduce(values, reduction, count=has.to(values.dtype).sum())


@register(
    "entropy_prior",
    family="segmentation",
    kind="dense",
    paper="Source-Free Domain Adaptation for Image Segmentation",
    arxiv="2108.03152",
    summary="mean pixel entropy + lambda KL(predicted class proportions || prior), per image",
    reduction="per image",
    degenerate=("all_ignored",),
)
class EntropyPriorLoss(LossModule, function=entropy_prior_loss, check=_check_entropy_prior):
    """Module form of :func:`entropy_prior_loss`."""


def _prior_vector(prior: float | Sequence[float] | Tensor | None, batch: DenseBatch,
                  q_hat: Tensor) -> Tensor:
    k = q_hat.shape[-1]
    if prior is None:
        return q_hat.detach()
    if isinstance(prior, (int, float)):
        if batch.binary:
            return q_hat.new_tensor([float(prior), 1 - float(prior)])
        if k != 2:
            raise ValueError(f"prior as one number (the foreground proportion) needs a binary "
                             f"input (C = 1 or 2), got C = {k}; give one proportion per class")
        return q_hat.new_tensor([1 - float(prior), float(prior)])
    t = torch.as_tensor(prior, dtype=q_hat.dtype, device=q_hat.device).reshape(-1)
    if batch.binary:  # outcomes (foreground, background); classes are (background, fg)
        t = torch.cat([t, 1 - t]) if t.numel() == 1 else t.flip(0)
    if t.numel() != k:
        raise ValueError(f"prior must have one proportion per class ({k}), got {t.numel()}")
    if abs(float(t.sum()) - 1) > PROB_ATOL:
        raise ValueError(f"prior (class proportions) must sum to 1, got {float(t.sum()):.6g}")
    return t


def repri_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_ce: float = 1.0,
    lambda_kl: float = 1.0,
    lambda_ent: float = 1.0,
    prior: float | Sequence[float] | Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    r"""RePRI: the transductive loss of one few-shot segmentation task.

    .. math::
        \mathcal{L} = \lambda_{CE}\, \mathrm{CE}_S + \lambda_{KL}\,
        \mathrm{KL}(\hat p_Q \,\|\, \pi) + \lambda_H\, H_Q,\qquad
        \mathrm{CE}_S = -\frac{1}{|S|} \sum_{i \in S} \sum_k y_{ik} \log p_{ik},\quad
        H_Q = -\frac{1}{|Q|} \sum_{i \in Q} \sum_k p_{ik} \log p_{ik}

    with :math:`\hat p_Q = \frac{1}{|Q|} \sum_{i \in Q} p_i` the predicted
    foreground/background proportion of the query pixels and :math:`\pi` its prior.

    Input layout (one task per call): the labelled pixels of ``target`` are the support set
    :math:`S`; the pixels equal to ``ignore_index`` are the unlabelled query set :math:`Q`.
    Put the support images and the query image(s) in one batch and set the query targets to
    ``ignore_index``. A task without query pixels has only the CE term; without support
    pixels only the query terms; an empty batch gives 0 with zero gradient.

    Args:
        logits: ``[N, C, *spatial]`` (softmax over background + classes, ``C = 2`` in the
            paper) or ``[N, 1, *spatial]`` (sigmoid; outcomes foreground, background).
        target: ``[N, *spatial]`` class ids, ``ignore_index`` at query pixels.
        lambda_ce, lambda_kl, lambda_ent: the term weights (defaults 1, 1, 1: the official
            ``weights = [1.0, 'auto', 'auto']`` for one shot, ``'auto' = 1 / shots``).
        prior: :math:`\pi`: the foreground proportion (a number, for binary tasks) or one
            proportion per class (background first; two entries for a single logit too);
            ``None`` (default) uses the detached current query
            proportion, the paper's initial estimate, for which the KL term is 0 with zero
            gradient: the paper re-estimates :math:`\pi` from the prediction after
            :math:`t_\pi` steps and passes it in from then on.
        ignore_index: the class id that marks query pixels.

    Returns a scalar (one task; no ``reduction``).

    Paper: Boudiaf, Kervadec, Masud, Piantanida, Ben Ayed, Dolz, "Few-Shot Segmentation Without
    Meta-Learning: A Good Transductive Inference Is All You Need?", arXiv 2012.06166.
    """
    _check_repri(lambda_ce=lambda_ce, lambda_kl=lambda_kl, lambda_ent=lambda_ent, prior=prior,
                 ignore_index=ignore_index)
    if isinstance(target, Tensor) and not target.is_floating_point() and \
            target.dtype != torch.bool:
        is_support = target != ignore_index
        labels = torch.where(is_support, target, torch.zeros_like(target))
    else:  # soft or bool targets: rejected by prepare_dense below
        is_support, labels = None, target
    # every pixel is read (query pixels are the ignored ones): prepare with them as class 0
    batch = prepare_dense(logits, labels, ignore_index=ignore_index, per_image=False,
                          soft_ok=False, loss="repri")
    assert is_support is not None
    p, logp, y = _outcome_probs(batch)  # [1, K, S]
    support = is_support.reshape(1, -1).to(p.dtype)
    query = 1 - support
    n_s, n_q = support.sum(), query.sum()
    ce = -(y * logp).sum(1).mul(support).sum() / n_s.clamp_min(1)
    entropy = -(p * logp).sum(1).mul(query).sum() / n_q.clamp_min(1)
    p_q = p * query.unsqueeze(1)
    q_hat = p_q.sum(2)[0] / n_q.clamp_min(1)
    # no query pixel: a placeholder proportion, so that the masked KL has a finite gradient
    q_hat = torch.where(n_q > 0, q_hat, torch.full_like(q_hat, 1 / q_hat.shape[0]))
    kl = _kl(q_hat, _prior_vector(prior, batch, q_hat))
    query_terms = torch.where(n_q > 0, lambda_kl * kl + lambda_ent * entropy,
                              torch.zeros_like(entropy))
    out = lambda_ce * ce + query_terms
    if math.prod(batch.shape) == 0:
        return out * 0.0
    return out


@register(
    "repri",
    family="segmentation",
    kind="dense",
    paper="Few-Shot Segmentation Without Meta-Learning: A Good Transductive Inference Is All "
    "You Need?",
    arxiv="2012.06166",
    summary="CE(support) + KL(query proportion || prior) + H(query); query = ignored pixels",
    reduction=None,
)
class RePRILoss(LossModule, function=repri_loss, check=_check_repri):
    """Module form of :func:`repri_loss`."""
