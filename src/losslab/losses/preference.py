r"""Preference-optimisation losses over per-sequence log-probabilities (family ``preference``).

Kind ``preference``: ``loss(policy_chosen[N], policy_rejected[N], *, ref_chosen=None,
ref_rejected=None, chosen_length=None, rejected_length=None, reference_point=None)``.

* ``policy_chosen`` / ``policy_rejected``: :math:`\log \pi_\theta(y_w \mid x)` and
  :math:`\log \pi_\theta(y_l \mid x)`, the log-probability of the chosen (preferred) and
  rejected completion of pair ``i``, summed over the completion's tokens (``[N]`` float; they
  are log-probabilities, so ``<= 0``). The token-level sum is what ``linear_cross_entropy`` /
  ``cross_entropy`` with ``reduction="none"`` give, negated and summed per sequence.
* ``ref_chosen`` / ``ref_rejected``: the same under the frozen reference model (no gradient
  is needed). For the methods that have a reference model (``dpo``, ``ipo``, ``kto``) ``None``
  means *reference-free*: the log-ratios are the policy log-probs (TRL's
  ``reference_free=True``). Reference-free methods (``simpo``, ``cpo``, ``orpo``) take none.
* ``chosen_length`` / ``rejected_length``: optional ``[N]`` numbers of completion tokens. The
  methods defined on *length-normalised* log-probabilities (``simpo``, ``orpo``; ``ipo`` and
  the NLL term of ``cpo`` as TRL normalises them) divide by them; ``None`` means the inputs
  are already what the method needs (length 1).
* ``reference_point``: KTO's :math:`z_0` (see :func:`kto_reference_point`).
* ``chosen_grad_norm`` / ``rejected_grad_norm``: the per-pair gradient norms of the
  log-probs that ``normalized_preference`` divides by (:func:`logprob_gradient_stats`).

Every loss returns one value per pair (``reduction="none"`` -> ``[N]``; ``"mean"`` averages
over pairs, as TRL does). fp16/bf16 inputs are computed in float32 and return float32.
Bad inputs (not 1-D float tensors, mismatched shapes, devices, non-positive lengths, one
reference without the other) raise ``ValueError``.

References for the definitions: each paper (arXiv id in each docstring), cross-checked in the
tests against TRL 1.16's loss code (``DPOTrainer`` loss types ``sigmoid``/``ipo``/
``sigmoid_norm``, ``CPOTrainer.cpo_loss`` (``sigmoid``, ``simpo``), ``ORPOTrainer.
odds_ratio_loss``, ``KTOTrainer``), restated in the tests.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_choice,
    check_float,
    check_reduction,
    compute_dtype,
    reduce,
    require,
)
from losslab._hparams import Real, hparams
from losslab.kernels.linear_preference import (
    GROUP_WORKSPACE_BYTES,
    linear_pair_loss,
    linear_preference_logps,
)
from losslab.registry import register

__all__ = [
    "CPOLoss",
    "DPOLoss",
    "IPOLoss",
    "KTOLoss",
    "NormalizedPreferenceLoss",
    "ORPOLoss",
    "SimPOLoss",
    "cpo_loss",
    "dpo_loss",
    "ipo_loss",
    "kto_loss",
    "kto_reference_point",
    "linear_preference_loss",
    "log1mexp",
    "logprob_gradient_stats",
    "normalized_preference_loss",
    "orpo_loss",
    "simpo_loss",
]


# --------------------------------------------------------------------------------------------
# Shared plumbing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceBatch:
    """Validated per-pair inputs in the compute dtype (float32 for half inputs)."""

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor | None
    ref_rejected: Tensor | None
    chosen_length: Tensor | None
    rejected_length: Tensor | None

    def logratios(self) -> tuple[Tensor, Tensor]:
        """:math:`\\log \\pi_\\theta - \\log \\pi_\\text{ref}` of chosen and rejected (the policy
        log-probs when reference-free)."""
        if self.ref_chosen is None or self.ref_rejected is None:
            return self.chosen, self.rejected
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected

    def per_token(self, chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
        """``chosen / chosen_length`` and ``rejected / rejected_length`` (unchanged without
        lengths)."""
        if self.chosen_length is not None:
            chosen = chosen / self.chosen_length
        if self.rejected_length is not None:
            rejected = rejected / self.rejected_length
        return chosen, rejected


def _vector(name: str, x: object, n: int | None, device: torch.device | None) -> Tensor:
    check_float(name, x)
    assert isinstance(x, Tensor)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor [N] (one value per pair), got shape "
                         f"{tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}] (as policy_chosen), got "
                         f"{tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} must be on policy_chosen's device {device}, got {x.device}")
    return x


def _length(name: str, x: object, n: int, device: torch.device, dtype: torch.dtype
            ) -> Tensor | None:
    if x is None:
        return None
    if not isinstance(x, Tensor) or x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be a tensor [N] of token counts (int or float)")
    if x.ndim != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} must be on policy_chosen's device {device}, got {x.device}")
    x = x.to(dtype)
    # through require: an async assert under torch.compile, no graph break
    require((x > 0) & torch.isfinite(x), f"{name} must hold finite token counts > 0")
    return x


def prepare_pairs(
    policy_chosen: Tensor, policy_rejected: Tensor, *, ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None, chosen_length: Tensor | None = None,
    rejected_length: Tensor | None = None,
) -> PreferenceBatch:
    """Validate the kind's inputs (see the module docstring) and cast them to the compute
    dtype."""
    _vector("policy_chosen", policy_chosen, None, None)
    n, dev = policy_chosen.shape[0], policy_chosen.device
    _vector("policy_rejected", policy_rejected, n, dev)
    if (ref_chosen is None) != (ref_rejected is None):
        raise ValueError("ref_chosen and ref_rejected must be given together (or neither, "
                         "reference-free)")
    dtype = compute_dtype(torch.promote_types(policy_chosen.dtype, policy_rejected.dtype))
    refs: list[Tensor | None] = [None, None]
    if ref_chosen is not None and ref_rejected is not None:
        refs = [_vector("ref_chosen", ref_chosen, n, dev).to(dtype),
                _vector("ref_rejected", ref_rejected, n, dev).to(dtype)]
    return PreferenceBatch(
        policy_chosen.to(dtype), policy_rejected.to(dtype), refs[0], refs[1],
        _length("chosen_length", chosen_length, n, dev, dtype),
        _length("rejected_length", rejected_length, n, dev, dtype),
    )


def log1mexp(x: Tensor) -> Tensor:
    r""":math:`\log(1 - e^{x})` for :math:`x < 0`, accurate on both sides of :math:`-\log 2`
    (``log(-expm1(x))`` near 0, ``log1p(-exp(x))`` below; Mächler's note)."""
    small = x > -math.log(2.0)
    near = torch.log(-torch.expm1(torch.where(small, x, torch.full_like(x, -1.0))))
    far = torch.log1p(-torch.exp(torch.where(small, torch.full_like(x, -1.0), x)))
    return torch.where(small, near, far)


def _smoothed_sigmoid_loss(u: Tensor, label_smoothing: float) -> Tensor:
    """``-(1 - eps) log sigmoid(u) - eps log sigmoid(-u)``: the logistic preference term with
    the conservative label smoothing of DPO, SimPO and CPO (``eps`` = ``label_smoothing``)."""
    values = -(1.0 - label_smoothing) * F.logsigmoid(u)
    if label_smoothing > 0:
        values = values - label_smoothing * F.logsigmoid(-u)
    return values


def _reference_point(z: object, like: Tensor) -> Tensor:
    if z is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    if isinstance(z, Tensor):
        if z.numel() != 1 or not z.is_floating_point():
            raise ValueError(f"reference_point must be a float scalar, got shape "
                             f"{tuple(z.shape)} dtype {z.dtype}")
        return z.reshape(()).detach().to(like.dtype)
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z):
        raise ValueError(f"reference_point must be a finite float or a scalar tensor, got {z!r}")
    return torch.tensor(float(z), dtype=like.dtype, device=like.device)


_check_beta = hparams(beta=Real(gt=0))


# --------------------------------------------------------------------------------------------
# DPO, IPO
# --------------------------------------------------------------------------------------------

_check_dpo = hparams(beta=Real(gt=0), label_smoothing=Real(ge=0, le=0.5))


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Direct Preference Optimization: the Bradley-Terry likelihood of the implicit reward.

    With log-ratios :math:`r_w = \log\pi_\theta(y_w) - \log\pi_\text{ref}(y_w)`,
    :math:`r_l` likewise, and :math:`\Delta = r_w - r_l`:

    .. math::
        \ell = -(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon \log\sigma(-\beta\Delta)

    :math:`\varepsilon = 0` (default) is the paper's Eq. 7; :math:`\varepsilon > 0` is the
    "conservative DPO" of label noise :math:`\varepsilon` (TRL's ``label_smoothing``).

    Args:
        policy_chosen, policy_rejected: ``[N]`` summed log-probs of the completions.
        ref_chosen, ref_rejected: ``[N]`` reference-model log-probs; ``None``: reference-free.
        beta: :math:`\beta > 0`, the KL-regularisation strength (default 0.1, as TRL and the
            paper's summarisation runs).
        label_smoothing: :math:`\varepsilon \in [0, 0.5]` (default 0).
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Rafailov, Sharma, Mitchell, Ermon, Manning, Finn, "Direct Preference Optimization:
    Your Language Model is Secretly a Reward Model", arXiv 2305.18290.
    """
    _check_dpo(beta=beta, label_smoothing=label_smoothing)
    b = prepare_pairs(policy_chosen, policy_rejected, ref_chosen=ref_chosen,
                      ref_rejected=ref_rejected)
    rw, rl = b.logratios()
    u = beta * (rw - rl)
    values = _smoothed_sigmoid_loss(u, label_smoothing)
    return reduce(values, reduction)


@register(
    "dpo", family="preference", kind="preference",
    paper="Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    arxiv="2305.18290",
    summary="-log sigmoid(beta ((logp_w - ref_w) - (logp_l - ref_l))), beta=0.1",
    peers=("trl.DPOTrainer(loss_type='sigmoid')",),
    reduction="per pair",
)
class DPOLoss(LossModule, function=dpo_loss, check=_check_dpo):
    """Module form of :func:`dpo_loss`."""


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    chosen_length: Tensor | None = None,
    rejected_length: Tensor | None = None,
    beta: float = 0.1,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Identity Preference Optimization (:math:`\Psi`-PO with identity :math:`\Psi`).

    .. math::
        \ell = \Big(\Delta - \frac{1}{2\beta}\Big)^2, \qquad
        \Delta = \frac{r_w}{L_w} - \frac{r_l}{L_l}

    with log-ratios :math:`r` as :func:`dpo_loss` (the paper's Eq. 17 with :math:`\tau =
    \beta`). The paper writes :math:`\Delta` on sequence log-ratios (:math:`L = 1`, the
    default); given ``chosen_length``/``rejected_length`` the log-ratios are averaged per
    token, as TRL's ``loss_type="ipo"`` does (confirmed there with the authors).

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: as :func:`dpo_loss`.
        chosen_length, rejected_length: optional ``[N]`` completion token counts.
        beta: :math:`\beta = \tau > 0` (default 0.1); the target margin is :math:`1/(2\beta)`.
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Azar, Rowland, Piot, Guo, Calandriello, Valko, Munos, "A General Theoretical
    Paradigm to Understand Learning from Human Preferences", arXiv 2310.12036.
    """
    _check_beta(beta=beta)
    b = prepare_pairs(policy_chosen, policy_rejected, ref_chosen=ref_chosen,
                      ref_rejected=ref_rejected, chosen_length=chosen_length,
                      rejected_length=rejected_length)
    rw, rl = b.per_token(*b.logratios())
    return reduce((rw - rl - 1.0 / (2.0 * beta)).square(), reduction)


@register(
    "ipo", family="preference", kind="preference",
    paper="A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arxiv="2310.12036",
    summary="(delta log-ratio - 1/(2 beta))^2, per-token log-ratios given lengths, beta=0.1",
    peers=("trl.DPOTrainer(loss_type='ipo')",),
    reduction="per pair",
)
class IPOLoss(LossModule, function=ipo_loss, check=_check_beta):
    """Module form of :func:`ipo_loss`."""


# --------------------------------------------------------------------------------------------
# KTO
# --------------------------------------------------------------------------------------------

_check_kto = hparams(beta=Real(gt=0), desirable_weight=Real(ge=0),
                     undesirable_weight=Real(ge=0))


def kto_reference_point(policy_mismatched: Tensor, ref_mismatched: Tensor) -> Tensor:
    r"""KTO's reference point :math:`z_0 = \max(0, \operatorname{mean}_j
    [\log\pi_\theta(y'_j|x_j) - \log\pi_\text{ref}(y'_j|x_j)])`, detached.

    The inputs are the log-probs of *mismatched* completions :math:`y'_j` (another example's
    completion under prompt :math:`x_j`; TRL cycles the batch's completions by one), the
    paper's biased estimate of :math:`\mathrm{KL}(\pi_\theta \| \pi_\text{ref})`. It is not
    back-propagated (paper, Section 4.1). Returns a 0-dim tensor for ``reference_point=``.
    """
    _vector("policy_mismatched", policy_mismatched, None, None)
    _vector("ref_mismatched", ref_mismatched, policy_mismatched.shape[0], policy_mismatched.device)
    if policy_mismatched.shape[0] == 0:
        return policy_mismatched.new_zeros(()).detach()
    return (policy_mismatched - ref_mismatched).mean().clamp(min=0).detach()


def kto_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    reference_point: Tensor | float | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Kahneman-Tversky Optimization on paired data (each pair gives one desirable and one
    undesirable example).

    .. math::
        \ell_i = \tfrac12\Big[\lambda_D\big(1 - \sigma(\beta(r_{w,i} - z_0))\big)
            + \lambda_U\big(1 - \sigma(\beta(z_0 - r_{l,i}))\big)\Big]

    with log-ratios :math:`r` as :func:`dpo_loss` and the reference point :math:`z_0` (a
    detached constant). The mean over pairs equals the paper's (and TRL's) mean over the
    :math:`2N` examples.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: as :func:`dpo_loss`.
        reference_point: :math:`z_0`, a float or 0-dim tensor (detached). The paper estimates
            it from mismatched completions: :func:`kto_reference_point`. Default ``None``:
            :math:`z_0 = 0`, what TRL uses when it computes no KL term.
        beta: :math:`\beta > 0` (default 0.1, as the paper and TRL).
        desirable_weight, undesirable_weight: :math:`\lambda_D, \lambda_U \ge 0` (default 1).
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Ethayarajh, Xu, Muennighoff, Jurafsky, Kiela, "KTO: Model Alignment as Prospect
    Theoretic Optimization", arXiv 2402.01306.
    """
    _check_kto(beta=beta, desirable_weight=desirable_weight,
               undesirable_weight=undesirable_weight)
    b = prepare_pairs(policy_chosen, policy_rejected, ref_chosen=ref_chosen,
                      ref_rejected=ref_rejected)
    rw, rl = b.logratios()
    z = _reference_point(reference_point, rw)
    chosen = 1.0 - torch.sigmoid(beta * (rw - z))
    rejected = 1.0 - torch.sigmoid(beta * (z - rl))
    return reduce(0.5 * (desirable_weight * chosen + undesirable_weight * rejected), reduction)


@register(
    "kto", family="preference", kind="preference",
    paper="KTO: Model Alignment as Prospect Theoretic Optimization",
    arxiv="2402.01306",
    summary="(l_D (1 - sigmoid(beta (r_w - z0))) + l_U (1 - sigmoid(beta (z0 - r_l)))) / 2",
    peers=("trl.KTOTrainer",),
    reduction="per pair",
)
class KTOLoss(LossModule, function=kto_loss, check=_check_kto):
    """Module form of :func:`kto_loss`."""


# --------------------------------------------------------------------------------------------
# Reference-free: SimPO, CPO, ORPO
# --------------------------------------------------------------------------------------------

_check_simpo = hparams(beta=Real(gt=0), gamma=Real(ge=0), label_smoothing=Real(ge=0, le=0.5))


def simpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    chosen_length: Tensor | None = None,
    rejected_length: Tensor | None = None,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Simple Preference Optimization: a reference-free margin on the average log-likelihood.

    .. math::
        \ell = -\log\sigma\Big(\frac{\beta}{L_w}\log\pi_\theta(y_w)
            - \frac{\beta}{L_l}\log\pi_\theta(y_l) - \gamma\Big)

    (the paper's Eq. 6), with :math:`\varepsilon`-smoothing as :func:`dpo_loss` when
    ``label_smoothing > 0`` (TRL's ``CPOTrainer(loss_type="simpo")``). Pass
    ``chosen_length``/``rejected_length`` (or already averaged log-probs).

    Args:
        policy_chosen, policy_rejected: ``[N]`` summed (or, without lengths, averaged)
            log-probs.
        chosen_length, rejected_length: optional ``[N]`` completion token counts.
        beta: :math:`\beta > 0`, the reward scale (default 2.0, the value of most of the
            paper's setups).
        gamma: :math:`\gamma \ge 0`, the target reward margin (default 1.0, i.e.
            :math:`\gamma/\beta = 0.5`; the paper tunes :math:`\gamma/\beta` around 0.5).
        label_smoothing: :math:`\varepsilon \in [0, 0.5]` (default 0).
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Meng, Xia, Chen, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", arXiv 2405.14734.
    """
    _check_simpo(beta=beta, gamma=gamma, label_smoothing=label_smoothing)
    b = prepare_pairs(policy_chosen, policy_rejected, chosen_length=chosen_length,
                      rejected_length=rejected_length)
    aw, al = b.per_token(b.chosen, b.rejected)
    u = beta * (aw - al) - gamma
    values = _smoothed_sigmoid_loss(u, label_smoothing)
    return reduce(values, reduction)


@register(
    "simpo", family="preference", kind="preference",
    paper="SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arxiv="2405.14734",
    summary="-log sigmoid(beta (logp_w/|y_w| - logp_l/|y_l|) - gamma), beta=2, gamma=1",
    peers=("trl.experimental.cpo.CPOTrainer(loss_type='simpo')",),
    reduction="per pair",
)
class SimPOLoss(LossModule, function=simpo_loss, check=_check_simpo):
    """Module form of :func:`simpo_loss`."""


_check_cpo = hparams(beta=Real(gt=0), nll_weight=Real(ge=0), label_smoothing=Real(ge=0, le=0.5))


def cpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    chosen_length: Tensor | None = None,
    beta: float = 0.1,
    nll_weight: float = 1.0,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Contrastive Preference Optimization: a reference-free DPO term plus an NLL
    (behaviour-cloning) term on the chosen completion.

    .. math::
        \ell = -(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)
            - \alpha\, \frac{\log\pi_\theta(y_w)}{L_w},
        \qquad \Delta = \log\pi_\theta(y_w) - \log\pi_\theta(y_l)

    (the paper's Eq. 3 + :math:`\mathcal{L}_\text{NLL}`; TRL's ``CPOTrainer`` with
    ``loss_type="sigmoid"``, ``cpo_alpha`` = :math:`\alpha`). TRL's NLL is the mean token CE
    over all chosen tokens of the batch; per pair it is :math:`-\log\pi_\theta(y_w)/L_w`, which
    averages to TRL's value when the chosen lengths are equal.

    Args:
        policy_chosen, policy_rejected: ``[N]`` summed log-probs.
        chosen_length: optional ``[N]`` chosen token counts (for the NLL term).
        beta: :math:`\beta > 0` (default 0.1, as TRL and the paper).
        nll_weight: :math:`\alpha \ge 0` (default 1.0, as the paper's unweighted sum and TRL's
            ``cpo_alpha``).
        label_smoothing: :math:`\varepsilon \in [0, 0.5]` (default 0).
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Xu, Sharaf, Chen, Tan, Shen, Van Durme, Murray, Kim, "Contrastive Preference
    Optimization: Pushing the Boundaries of LLM Performance in Machine Translation",
    arXiv 2401.08417.
    """
    _check_cpo(beta=beta, nll_weight=nll_weight, label_smoothing=label_smoothing)
    b = prepare_pairs(policy_chosen, policy_rejected, chosen_length=chosen_length)
    u = beta * (b.chosen - b.rejected)
    values = _smoothed_sigmoid_loss(u, label_smoothing)
    nll, _ = b.per_token(-b.chosen, -b.rejected)
    return reduce(values + nll_weight * nll, reduction)


@register(
    "cpo", family="preference", kind="preference",
    paper="Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in "
    "Machine Translation",
    arxiv="2401.08417",
    summary="-log sigmoid(beta (logp_w - logp_l)) - nll_weight logp_w/|y_w|, beta=0.1",
    peers=("trl.experimental.cpo.CPOTrainer(loss_type='sigmoid')",),
    reduction="per pair",
)
class CPOLoss(LossModule, function=cpo_loss, check=_check_cpo):
    """Module form of :func:`cpo_loss`."""


#: Largest per-token log-prob used by ORPO's odds (``log(1 - p)`` is ``-inf`` at ``p = 1``).
ORPO_MAX_LOGP = -1e-6


def orpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    chosen_length: Tensor | None = None,
    rejected_length: Tensor | None = None,
    beta: float = 0.1,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Odds Ratio Preference Optimization: NLL of the chosen completion plus a log-odds-ratio
    penalty, no reference model.

    With the length-normalised log-likelihoods :math:`a = \log\pi_\theta(y)/L` and
    :math:`\mathrm{odds}(y) = e^{a}/(1 - e^{a})`:

    .. math::
        \ell = -a_w - \beta \log\sigma\Big(\log\frac{\mathrm{odds}(y_w)}{\mathrm{odds}(y_l)}
        \Big), \quad
        \log\frac{\mathrm{odds}(y_w)}{\mathrm{odds}(y_l)} = (a_w - a_l)
            - \big(\log(1-e^{a_w}) - \log(1-e^{a_l})\big)

    (the paper's Eqs. 4-7, :math:`\lambda = \beta`; TRL's ``odds_ratio_loss``, whose NLL is
    the mean token CE of the chosen completions; per pair it is :math:`-a_w`). :math:`a` is
    capped at ``ORPO_MAX_LOGP`` (-1e-6) so that :math:`\log(1 - e^a)` stays finite; log-probs
    must be ``<= 0``.

    Args:
        policy_chosen, policy_rejected: ``[N]`` summed (or, without lengths, averaged)
            log-probs, ``<= 0``.
        chosen_length, rejected_length: optional ``[N]`` completion token counts.
        beta: :math:`\lambda > 0`, weight of the odds-ratio term (default 0.1, as TRL and the
            paper's main runs).
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference
    Model", arXiv 2403.07691.
    """
    _check_beta(beta=beta)
    b = prepare_pairs(policy_chosen, policy_rejected, chosen_length=chosen_length,
                      rejected_length=rejected_length)
    require(~(b.chosen > 0) & ~(b.rejected > 0),
            "policy_chosen and policy_rejected must be log-probabilities (<= 0)")
    aw, al = b.per_token(b.chosen, b.rejected)
    aw, al = aw.clamp(max=ORPO_MAX_LOGP), al.clamp(max=ORPO_MAX_LOGP)
    log_odds = (aw - al) - (log1mexp(aw) - log1mexp(al))
    return reduce(-aw - beta * F.logsigmoid(log_odds), reduction)


@register(
    "orpo", family="preference", kind="preference",
    paper="ORPO: Monolithic Preference Optimization without Reference Model",
    arxiv="2403.07691",
    summary="-a_w - beta log sigmoid(log odds(a_w) - log odds(a_l)), a = logp/|y|, beta=0.1",
    peers=("trl.experimental.orpo.ORPOTrainer",),
    reduction="per pair",
)
class ORPOLoss(LossModule, function=orpo_loss, check=_check_beta):
    """Module form of :func:`orpo_loss`."""


# --------------------------------------------------------------------------------------------
# Gradient entanglement: pairwise-normalised preference optimisation and its diagnostic
# --------------------------------------------------------------------------------------------


def logprob_gradient_stats(
    policy_chosen: Tensor, policy_rejected: Tensor, params: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-pair gradient norms and inner product of the chosen and rejected log-probs:
    :math:`\|\nabla_\theta \log\pi(y_w)\|`, :math:`\|\nabla_\theta \log\pi(y_l)\|` and
    :math:`\langle \nabla_\theta \log\pi(y_w), \nabla_\theta \log\pi(y_l)\rangle`.

    The quantities of the gradient-entanglement condition (the inner product is large
    relative to the individual norms: a margin loss then moves both log-probs together), and
    the norms that :func:`normalized_preference_loss` takes. One backward pass per pair and
    response (``2N``), graph retained; the results are detached ``[N]`` tensors.

    Args:
        policy_chosen, policy_rejected: ``[N]`` log-probs, functions of ``params``.
        params: the parameters :math:`\theta` (e.g. ``list(model.parameters())`` or the
            output layer only).

    Paper: Yuan, Zeng, Wu, Wang, Wang, Leqi, "A Common Pitfall of Margin-based Language Model
    Alignment: Gradient Entanglement", arXiv 2410.13828.
    """
    b = prepare_pairs(policy_chosen, policy_rejected)
    if not params:
        raise ValueError("params must be a non-empty list of tensors that require grad")
    norms_w, norms_l, inner = [], [], []
    for i in range(b.chosen.shape[0]):
        gw = torch.autograd.grad(policy_chosen[i], params, retain_graph=True, allow_unused=True)
        gl = torch.autograd.grad(policy_rejected[i], params, retain_graph=True,
                                 allow_unused=True)
        fw = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(gw, params, strict=True)])
        fl = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(gl, params, strict=True)])
        norms_w.append(fw.norm())
        norms_l.append(fl.norm())
        inner.append(fw @ fl)
    if not norms_w:
        z = b.chosen.new_zeros(0)
        return z, z, z
    return (torch.stack(norms_w).detach(), torch.stack(norms_l).detach(),
            torch.stack(inner).detach())


_check_normalized = hparams(beta=Real(gt=0), eps=Real(gt=0))


def normalized_preference_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    *,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    chosen_grad_norm: Tensor | None = None,
    rejected_grad_norm: Tensor | None = None,
    beta: float = 0.1,
    eps: float = 1e-8,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Pairwise-normalised preference optimisation: DPO whose update uses the chosen and
    rejected log-prob gradients *normalised separately*, so that neither response's gradient
    dominates (the remedy the gradient-entanglement paper proposes for margin losses).

    With log-ratios :math:`r` as :func:`dpo_loss` and the detached gradient norms
    :math:`g_w = \|\nabla\log\pi(y_w)\|`, :math:`g_l = \|\nabla\log\pi(y_l)\|` (from
    :func:`logprob_gradient_stats`):

    .. math::
        \ell = -\log\sigma\Big(\beta\Big(\frac{r_w}{g_w + \epsilon}
            - \frac{r_l}{g_l + \epsilon}\Big)\Big), \qquad
        \nabla_\theta \ell = -\beta\,\sigma(-\beta m)\Big(\frac{\nabla\log\pi(y_w)}{g_w+\epsilon}
            - \frac{\nabla\log\pi(y_l)}{g_l+\epsilon}\Big)

    i.e. the DPO weight times the pairwise-normalised gradient difference. Without norms
    (``None``) it is :func:`dpo_loss`.

    Formula from the abstract and a published summary ("pairwise normalized gradient
    descent"); the exact form (where the DPO weighting enters, the eps) was not verified
    against the paper's text.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: as :func:`dpo_loss`.
        chosen_grad_norm, rejected_grad_norm: ``[N]`` gradient norms (detached; call-time).
        beta: :math:`\beta > 0` (default 0.1, as DPO).
        eps: :math:`\epsilon > 0` added to the norms (default 1e-8).
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Yuan, Zeng, Wu, Wang, Wang, Leqi, "A Common Pitfall of Margin-based Language Model
    Alignment: Gradient Entanglement", arXiv 2410.13828 (ICLR 2025).
    """
    _check_normalized(beta=beta, eps=eps)
    b = prepare_pairs(policy_chosen, policy_rejected, ref_chosen=ref_chosen,
                      ref_rejected=ref_rejected)
    rw, rl = b.logratios()
    n, dev = rw.shape[0], rw.device
    if (chosen_grad_norm is None) != (rejected_grad_norm is None):
        raise ValueError("chosen_grad_norm and rejected_grad_norm must be given together")
    if chosen_grad_norm is not None and rejected_grad_norm is not None:
        gw = _vector("chosen_grad_norm", chosen_grad_norm, n, dev).detach().to(rw.dtype)
        gl = _vector("rejected_grad_norm", rejected_grad_norm, n, dev).detach().to(rw.dtype)
        require(~(gw < 0) & ~(gl < 0), "chosen_grad_norm and rejected_grad_norm must be >= 0")
        rw, rl = rw / (gw + eps), rl / (gl + eps)
    return reduce(-F.logsigmoid(beta * (rw - rl)), reduction)


@register(
    "normalized_preference", family="preference", kind="preference",
    paper="A Common Pitfall of Margin-based Language Model Alignment: Gradient Entanglement",
    arxiv="2410.13828",
    summary="-log sigmoid(beta (r_w / |grad log pi_w| - r_l / |grad log pi_l|)), norms "
    "detached",
    reduction="per pair",
)
class NormalizedPreferenceLoss(LossModule, function=normalized_preference_loss,
                               check=_check_normalized):
    """Module form of :func:`normalized_preference_loss`."""


# --------------------------------------------------------------------------------------------
# Fused with the LM head: the losses above straight from hidden states
# --------------------------------------------------------------------------------------------

#: The losses :func:`linear_preference_loss` applies, by name (one formula each, above).
FUSED_PREFERENCE_LOSSES: dict[str, Callable[..., Tensor]] = {
    "dpo": dpo_loss, "ipo": ipo_loss, "kto": kto_loss, "simpo": simpo_loss, "cpo": cpo_loss,
    "orpo": orpo_loss, "normalized_preference": normalized_preference_loss,
}


def linear_preference_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    loss: str = "dpo",
    bias: Tensor | None = None,
    ref_chosen: Tensor | None = None,
    ref_rejected: Tensor | None = None,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    chunk_size: int | None = None,
    strategy: str = "auto",
    group_workspace_bytes: int = GROUP_WORKSPACE_BYTES,
    reduction: Reduction = "mean",
    **hparams_: Any,
) -> Tensor:
    r"""A preference loss computed from the LM head's hidden states, chunked: no ``N x V``
    logits in the forward or the backward pass (Liger's fused linear preference losses, here
    exact and without Triton).

    The per-sequence log-probabilities :math:`\log\pi_\theta(y_w)`,
    :math:`\log\pi_\theta(y_l)` (sums over the scored tokens) and the token counts
    :math:`L_w, L_l` come from :func:`losslab.kernels.linear_preference.linear_preference_logps`;
    then the loss named ``loss`` is applied to them: :func:`dpo_loss`, :func:`ipo_loss`,
    :func:`kto_loss`, :func:`simpo_loss`, :func:`cpo_loss`, :func:`orpo_loss` or
    :func:`normalized_preference_loss` (their docstrings hold the formulas, defaults and
    papers). The losses that take ``chosen_length``/``rejected_length`` (``ipo``, ``simpo``,
    ``cpo``'s NLL term, ``orpo``) get the token counts, i.e. they see average log-probs, as
    TRL and Liger compute them (``ipo`` per token is TRL's ``loss_type="ipo"``; for the
    paper's sequence-level IPO call :func:`ipo_loss` on
    :func:`~losslab.kernels.linear_preference.linear_preference_logps`' sums).

    Args:
        hidden: ``[2B, T, d]``: the ``B`` chosen completions, then the ``B`` rejected ones
            (Liger's and TRL's concatenated layout; pair ``i`` is rows ``i`` and ``B + i``).
        weight: ``[V, d]`` LM head; ``bias``: optional ``[V]``.
        target: ``[2B, T]`` next-token ids aligned with ``hidden`` (already shifted), with
            ``ignore_index`` at prompt and padding positions.
        loss: one of ``FUSED_PREFERENCE_LOSSES`` (default ``"dpo"``).
        ref_chosen, ref_rejected: ``[B]`` reference-model sequence log-probs, or
        ref_hidden, ref_weight, ref_bias: the reference model's ``[2B, T, d']`` hidden
            states and head, whose sequence log-probs are computed here without gradient
            (the same chunked path; ``ref_weight`` defaults to ``weight``). Only for the
            losses with a reference model (``dpo``, ``ipo``, ``kto``,
            ``normalized_preference``); none of them: reference-free.
        ignore_index: target value of unscored positions (default -100).
        softcap: logit softcap ``c`` (both heads), or None.
        chunk_size: tokens per chunk of the ``"recompute"`` strategy and of the two-pass
            fallback of ``"grad_in_forward"`` (None: the 48 MiB budget of the fused
            cross-entropy).
        strategy: ``"grad_in_forward"`` (pairs in groups, gradients in the forward pass:
            three GEMMs, as the naive computation; ``reduction="mean"``/``"sum"``; a group's
            ``[tokens, V]`` logits take at most ``group_workspace_bytes``),
            ``"recompute"`` (token chunks, logits recomputed in backward: four GEMMs, 48 MiB;
            any reduction) or ``"auto"`` (default: grad-in-forward for ``"mean"``/``"sum"``
            when a gradient is needed and the inputs are not float16, else recompute). See
            :mod:`losslab.kernels.linear_preference`.
        group_workspace_bytes: the pair-group workspace of ``"grad_in_forward"`` (default
            256 MiB; a pair larger than it takes two passes over 48 MiB token chunks).
        reduction: ``"mean"`` over pairs, ``"sum"`` or ``"none"`` (``[B]``).
        **hparams_: the chosen loss's hyperparameters (``beta``, ``label_smoothing``,
            ``gamma``, ``nll_weight``, ``reference_point``, ...), validated by it.

    Returns:
        The loss (float32 for half inputs). Gradients reach ``hidden``, ``weight`` and
        ``bias``; the reference inputs are constants.

    Equals ``FUSED_PREFERENCE_LOSSES[loss]`` applied to the sequence sums of
    ``log_softmax(hidden @ weight.T + bias).gather(-1, target)`` (the tests check values and
    gradients against that materialised float64 reference for every loss).
    """
    if loss not in FUSED_PREFERENCE_LOSSES:
        raise ValueError(f"loss must be one of {tuple(FUSED_PREFERENCE_LOSSES)}, got {loss!r}")
    fn = FUSED_PREFERENCE_LOSSES[loss]
    accepted = set(inspect.signature(fn).parameters)
    own = {"ref_chosen", "ref_rejected", "chosen_length", "rejected_length", "reduction"}
    unknown = sorted(set(hparams_) - (accepted - own - {"policy_chosen", "policy_rejected"}))
    if unknown:
        raise ValueError(f"loss={loss!r} takes no hyperparameter(s) {unknown}; it takes "
                         f"{sorted(accepted - own - {'policy_chosen', 'policy_rejected'})}")
    check_choice("strategy", strategy, ("auto", "grad_in_forward", "recompute"))
    check_reduction(reduction)
    if strategy == "grad_in_forward" and reduction == "none":
        raise ValueError("strategy='grad_in_forward' needs reduction 'mean' or 'sum' (each "
                         "pair's own upstream gradient needs strategy='recompute')")
    kwargs: dict[str, Any] = dict(hparams_)
    has_ref = ref_hidden is not None or ref_chosen is not None or ref_rejected is not None
    if has_ref and "ref_chosen" not in accepted:
        raise ValueError(f"loss={loss!r} is reference-free: pass no ref_chosen/ref_rejected/"
                         f"ref_hidden")
    if ref_hidden is not None:
        if ref_chosen is not None or ref_rejected is not None:
            raise ValueError("give either ref_hidden (and ref_weight) or ref_chosen and "
                             "ref_rejected, not both")
        if not isinstance(ref_hidden, Tensor) or not isinstance(hidden, Tensor) or \
                tuple(ref_hidden.shape[:-1]) != tuple(hidden.shape[:-1]):
            raise ValueError(f"ref_hidden must have shape [2B, T, d'] with [2B, T] = "
                             f"{tuple(getattr(hidden, 'shape', ())[:-1])}, got "
                             f"{tuple(getattr(ref_hidden, 'shape', ()))}")
        with torch.no_grad():
            ref = linear_preference_logps(
                ref_hidden.detach(), (ref_weight if ref_weight is not None else weight).detach(),
                target, bias=ref_bias.detach() if ref_bias is not None else None,
                ignore_index=ignore_index, softcap=softcap, chunk_size=chunk_size)
        kwargs.update(ref_chosen=ref.chosen, ref_rejected=ref.rejected)
    elif ref_weight is not None or ref_bias is not None:
        raise ValueError("ref_weight and ref_bias need ref_hidden")
    elif ref_chosen is not None or ref_rejected is not None:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError("ref_chosen and ref_rejected must be given together (or neither, "
                             "reference-free)")
        kwargs.update(ref_chosen=ref_chosen.detach(), ref_rejected=ref_rejected.detach())
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(x, Tensor) and x.requires_grad for x in (hidden, weight, bias))
    if strategy == "auto":
        strategy = "grad_in_forward" if reduction != "none" and needs_grad and \
            getattr(hidden, "dtype", None) != torch.float16 else "recompute"
    uses_length = [n for n in ("chosen_length", "rejected_length") if n in accepted]

    def check_lengths(chosen_n: Tensor, rejected_n: Tensor) -> None:
        for name, n in (("chosen_length", chosen_n), ("rejected_length", rejected_n)):
            if name in uses_length and bool((n == 0).any()):
                raise ValueError(f"target: every {name.split('_')[0]} completion needs at "
                                 f"least one scored token (not ignore_index={ignore_index}) "
                                 f"for loss={loss!r}, which averages over them")

    if strategy == "recompute":
        pol = linear_preference_logps(hidden, weight, target, bias=bias,
                                      ignore_index=ignore_index, softcap=softcap,
                                      chunk_size=chunk_size)
        check_lengths(pol.chosen_length, pol.rejected_length)
        lengths = dict(chosen_length=pol.chosen_length, rejected_length=pol.rejected_length)
        kwargs.update({n: lengths[n] for n in uses_length})
        return fn(pol.chosen, pol.rejected, reduction=reduction, **kwargs)
    if isinstance(target, Tensor) and target.ndim == 2:
        n_scored = (target != ignore_index).sum(1)
        half = n_scored.shape[0] // 2
        check_lengths(n_scored[:half], n_scored[half:])
    refs = {k: kwargs.pop(k) for k in ("ref_chosen", "ref_rejected") if k in kwargs}
    if refs:  # validated on the whole batch (each group sees a slice)
        prepare_pairs(refs["ref_chosen"], refs["ref_rejected"])
        n_pairs = getattr(hidden, "shape", (0,))[0] // 2
        if refs["ref_chosen"].shape[0] != n_pairs:
            raise ValueError(f"ref_chosen and ref_rejected must have shape [{n_pairs}] (one "
                             f"value per pair), got {tuple(refs['ref_chosen'].shape)}")

    def pair_loss(c: Tensor, r: Tensor, n_c: Tensor, n_r: Tensor, pairs: slice) -> Tensor:
        kw = dict(kwargs)
        kw.update({k: v[pairs] for k, v in refs.items()})
        kw.update({n: x for n, x in (("chosen_length", n_c), ("rejected_length", n_r))
                   if n in uses_length})
        return fn(c, r, reduction="none", **kw)

    out, _ = linear_pair_loss(hidden, weight, target, pair_loss, bias=bias,
                              ignore_index=ignore_index, softcap=softcap, reduction=reduction,
                              group_workspace_bytes=group_workspace_bytes,
                              chunk_size=chunk_size)
    return out
