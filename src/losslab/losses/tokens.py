r"""Sequence objectives on per-token LM outputs (family ``lm-tokens``, kind ``tokens``).

Kind ``tokens``: ``loss(logits[N, T, V], target[N, T], *, token_weight=None)`` — the layout of
a causal LM's output (batch, time, vocabulary; already shifted so that ``logits[:, t]``
predicts ``target[:, t]``), with ``ignore_index`` (default -100) marking padding and prompt
tokens. Sequence-level losses (``eisl``, ``coverage_ce``) return one value per sequence
(``reduction="none"`` -> ``[N]``; ``"mean"`` over the sequences that have a valid token);
token-level losses return one value per token (``[N, T]``, 0 at ignored tokens; ``"mean"``
over the valid tokens, weighted by ``token_weight`` where the loss takes it, as
``cross_entropy``). A batch whose tokens are all ignored gives 0 with zero gradient. fp16/bf16
logits are computed in float32 and the loss is float32. Bad input (logits not ``[N, T, V]``
float, target not integer ``[N, T]``, ids outside ``[0, V)``) is a ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_float, compute_dtype, reduce
from losslab._hparams import Int, Real, hparams
from losslab.registry import register

__all__ = [
    "CoverageCELoss",
    "EISLLoss",
    "TokenBatch",
    "coverage_ce_loss",
    "eisl_loss",
    "prepare_tokens",
]


# --------------------------------------------------------------------------------------------
# Shared plumbing of the kind
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenBatch:
    """Validated ``(logits, target)`` of the ``tokens`` kind.

    Attributes:
        logits: ``[N, T, V]`` in the compute dtype (float32 for half inputs).
        target: ``[N, T]`` int64 ids with ignored positions replaced by 0.
        valid: ``[N, T]`` bool, False at ``ignore_index``.
        token_weight: ``[N, T]`` weights in the compute dtype, or None.
    """

    logits: Tensor
    target: Tensor
    valid: Tensor
    token_weight: Tensor | None

    def log_probs(self) -> Tensor:
        return F.log_softmax(self.logits, dim=-1)

    def target_log_prob(self, logp: Tensor) -> Tensor:
        """``[N, T]`` log-prob of the target token (0 at ignored positions)."""
        lp = logp.gather(-1, self.target.unsqueeze(-1)).squeeze(-1)
        return torch.where(self.valid, lp, torch.zeros_like(lp))


def prepare_tokens(logits: Tensor, target: Tensor, *, ignore_index: int = -100,
                   token_weight: Tensor | None = None, loss: str = "this loss") -> TokenBatch:
    """Validate the kind's inputs (see the module docstring)."""
    check_float("logits", logits)
    if logits.ndim != 3:
        raise ValueError(f"{loss} needs logits of shape [N, T, V], got {tuple(logits.shape)}")
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer token ids [N, T], got dtype {target.dtype}")
    n, t, v = logits.shape
    if tuple(target.shape) != (n, t):
        raise ValueError(f"target must have shape [{n}, {t}] for logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"logits and target must be on one device, got {logits.device} and "
                         f"{target.device}")
    ids = target.long()
    valid = ids != ignore_index
    bad = valid & ((ids < 0) | (ids >= v))
    if bool(bad.any()):
        raise ValueError(f"target must hold token ids in [0, {v}) or ignore_index="
                         f"{ignore_index}, got {sorted(set(ids[bad].tolist()))[:5]}")
    dtype = compute_dtype(logits.dtype)
    tw = None
    if token_weight is not None:
        if (not isinstance(token_weight, Tensor) or not token_weight.is_floating_point()
                or tuple(token_weight.shape) != (n, t)):
            raise ValueError(f"token_weight must be a float tensor of shape [{n}, {t}]")
        if token_weight.device != logits.device:
            raise ValueError("token_weight must be on the logits' device")
        tw = token_weight.to(dtype)
    return TokenBatch(logits.to(dtype), torch.where(valid, ids, torch.zeros_like(ids)), valid,
                      tw)


def finish_tokens(values: Tensor, batch: TokenBatch, reduction: str) -> Tensor:
    """Reduce per-token values ``[N, T]``: 0 at ignored tokens, ``token_weight``-ed, "mean"
    over the valid tokens (the sum of their weights)."""
    values = torch.where(batch.valid, values, torch.zeros_like(values))
    w = batch.token_weight
    if w is not None:
        w = torch.where(batch.valid, w, torch.zeros_like(w))
        return reduce(values, reduction, weights=w, count=w.sum())
    return reduce(values, reduction, count=batch.valid.sum().to(values.dtype))


def finish_sequences(values: Tensor, has_token: Tensor, reduction: str) -> Tensor:
    """Reduce per-sequence values ``[N]``: 0 for sequences without a valid token, "mean" over
    the others."""
    values = torch.where(has_token, values, torch.zeros_like(values))
    return reduce(values, reduction, count=has_token.sum().to(values.dtype))


# --------------------------------------------------------------------------------------------
# EISL
# --------------------------------------------------------------------------------------------

#: EISL's floor on the log-probabilities before matching (the official code's
#: ``relu(x + 20) - 20``): a token the model rules out costs at most 20 nats per position.
EISL_LOG_FLOOR = -20.0

_check_eisl = hparams(ignore_index=Int(), max_order=Int(ge=1), min_order=Int(ge=1),
                      temperature=Real(gt=0))


def eisl_loss(
    logits: Tensor,
    target: Tensor,
    *,
    min_order: int = 2,
    max_order: int = 4,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Edit-Invariant Sequence Loss: every target n-gram is matched against the model's
    n-grams at *all* output positions, so shifted, inserted or deleted tokens in a noisy
    target cost little.

    With :math:`c_{ij} = \max(\log p_i(y_j), -20)` (output position :math:`i`, target position
    :math:`j`), the n-gram match (a convolution with an identity kernel over the
    ``T x T`` cost map) and a softmax over output positions:

    .. math::
        s^{(n)}_{ij} = \frac1n \sum_{k=0}^{n-1} c_{i+k,\,j+k}, \qquad
        q^{(n)}_{ij} = \operatorname{softmax}_i\big(s^{(n)}_{\cdot j} / \tau\big), \qquad
        \ell = -\sum_{n} w_n \,\frac{1}{J_n}\sum_{j} \sum_i q^{(n)}_{ij}\, s^{(n)}_{ij}

    over the orders :math:`n \in [\text{min\_order}, \text{max\_order}]` with
    :math:`w_n = 1/\#\text{orders}`, :math:`J_n` the number of target n-grams. Only windows
    whose tokens are all valid (not ``ignore_index``) count, on both the target and the output
    side (outputs and targets are aligned: ``T`` positions each). Orders longer than the
    sequences are skipped, as in the official code. The paper trains with EISL mixed with CE;
    combine them with :func:`losslab.combine`.

    Deviation from the official code: it weights output positions with a Gumbel-softmax sample
    (:math:`\tau = 1`) at every call; this function uses the noise-free softmax, so that the
    loss is deterministic (gradients flow through :math:`q` in both).

    Args:
        logits: ``[N, T, V]`` decoder scores; target: ``[N, T]`` token ids.
        min_order, max_order: the n-gram orders used (default 2..4; the official code takes a
            list ``--ngram``, e.g. ``2,3,4``).
        temperature: :math:`\tau > 0` of the position softmax (default 1, as the code's
            Gumbel-softmax).
        ignore_index: target id of padding (default -100).
        reduction: ``"mean"`` over sequences, ``"sum"`` or ``"none"`` (``[N]``).

    Paper: Liu, Yang, Tao, Liang, Bao, Li, He, Cui, Hu, "Don't Take It Literally: An
    Edit-Invariant Sequence Loss for Text Generation", arXiv 2106.15078 (NAACL 2022); the
    formula follows the official code (guangyliu/EISL, ``batch_log_EISL_cnn``).
    """
    _check_eisl(min_order=min_order, max_order=max_order, temperature=temperature,
                ignore_index=ignore_index)
    if min_order > max_order:
        raise ValueError(f"min_order must be <= max_order, got {min_order} > {max_order}")
    b = prepare_tokens(logits, target, ignore_index=ignore_index, loss="eisl")
    n_seq, t, _ = b.logits.shape
    logp = b.log_probs().clamp(min=EISL_LOG_FLOOR)
    # cost[b, i, j] = log p_i(y_j)
    cost = logp.gather(-1, b.target.unsqueeze(1).expand(n_seq, t, t))
    valid = b.valid.to(cost.dtype)
    orders = [n for n in range(min_order, max_order + 1) if n <= t]
    total = torch.zeros(n_seq, dtype=cost.dtype, device=cost.device)
    if not orders:
        return finish_sequences(total + cost.sum((1, 2)) * 0, b.valid.any(1), reduction)
    neg = torch.finfo(cost.dtype).min
    for n in orders:
        m = t - n + 1
        s = torch.zeros(n_seq, m, m, dtype=cost.dtype, device=cost.device)
        win = torch.ones(n_seq, m, dtype=cost.dtype, device=cost.device)
        for k in range(n):
            s = s + cost[:, k:k + m, k:k + m]
            win = win * valid[:, k:k + m]
        s = s / n
        ok_i = win.bool().unsqueeze(2)  # output windows (rows)
        ok_j = win.bool()  # target windows (columns)
        scores = torch.where(ok_i, s / temperature, torch.full_like(s, neg))
        q = torch.softmax(scores, dim=1)
        matched = torch.where(ok_i, q * s, torch.zeros_like(s)).sum(1)  # [N, m] per target j
        matched = torch.where(ok_j, matched, torch.zeros_like(matched))
        count = ok_j.sum(1).to(cost.dtype)
        per = matched.sum(1) / count.clamp(min=1)
        total = total - per / len(orders)
    return finish_sequences(total, b.valid.any(1), reduction)


@register(
    "eisl",
    family="lm-tokens",
    kind="tokens",
    paper="Don't Take It Literally: An Edit-Invariant Sequence Loss for Text Generation",
    arxiv="2106.15078",
    summary="-mean_n mean_j sum_i softmax_i(s_ij) s_ij, s_ij = n-gram mean of "
    "log p_{i+k}(y_{j+k}); orders 2..4",
    reduction="per sequence",
    degenerate=("all_ignored",),
)
class EISLLoss(LossModule, function=eisl_loss, check=_check_eisl):
    """Module form of :func:`eisl_loss`."""


# --------------------------------------------------------------------------------------------
# Coverage (pass@N) loss
# --------------------------------------------------------------------------------------------

#: log p below which coverage_ce uses its first-order form -log N - log p (error
#: below N e^-30, absolute).
COVERAGE_ASYMPTOTIC_BELOW = -30.0

_check_coverage = hparams(ignore_index=Int(), num_samples=Int(ge=1))


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0`` (accurate on both sides of ``-log 2``)."""
    small = x > -0.6931471805599453
    near = torch.log(-torch.expm1(torch.where(small, x, torch.full_like(x, -1.0))))
    far = torch.log1p(-torch.exp(torch.where(small, torch.full_like(x, -1.0), x)))
    return torch.where(small, near, far)


def coverage_ce_loss(
    logits: Tensor,
    target: Tensor,
    *,
    num_samples: int = 16,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The pass@N-aligned, confidence-limiting loss ("Direct Coverage Optimization"): the
    negative log-probability that at least one of :math:`N` independent samples is the target.

    With the sequence probability :math:`p = \pi_\theta(y|x) = \exp\sum_t \log p_t(y_t)` over
    the valid tokens:

    .. math::
        \ell = -\log\big(1 - (1 - p)^N\big)
        = -\operatorname{log1mexp}\big(N \operatorname{log1mexp}(\log p)\big)

    computed in log space (``log1mexp(x) = log(1 - e^x)``). :math:`N = 1` is the sequence
    cross-entropy :math:`-\log p`. The gradient with respect to :math:`\log p` is
    :math:`-N p (1-p)^{N-1} / (1 - (1-p)^N)`, which vanishes as :math:`p \to 1`: the loss
    stops pushing a sequence once it is likely to be found among :math:`N` samples (the
    confidence limit). :math:`\log p` is capped at -1e-6 (finite gradient at :math:`p = 1`);
    below :math:`\log p = -30` the first-order form :math:`-\log N - \log p` is used (the
    exact one underflows; absolute error :math:`< N e^{-30}`).

    Formula: the pass@N coverage :math:`1-(1-p)^N` is stated in the abstract's terms and in
    the authors' blog post on "Direct Coverage Optimization"; the equation itself was not
    verified against the paper's text.

    Args:
        logits: ``[N, T, V]`` scores; target: ``[N, T]`` ids (``ignore_index`` for prompt and
            padding tokens).
        num_samples: :math:`N \ge 1`, the pass@N budget the model is trained for (default 16,
            a choice; the paper varies it).
        ignore_index: default -100.
        reduction: ``"mean"`` over sequences with a valid token, ``"sum"``, ``"none"``
            (``[N]``).

    Paper: Chen, Raventós, Cheng, Ganguli, Druckmann, "Rethinking Fine-Tuning when Scaling
    Test-Time Compute: Limiting Confidence Improves Mathematical Reasoning", arXiv 2502.07154.
    """
    _check_coverage(num_samples=num_samples, ignore_index=ignore_index)
    b = prepare_tokens(logits, target, ignore_index=ignore_index, loss="coverage_ce")
    seq = b.target_log_prob(b.log_probs()).sum(1).clamp(max=-1e-6)
    # below log p = -30 (N p < 1e-11 for N <= 1e2) the exact form underflows (log(1 - e^s)
    # rounds to 0): there -log(1 - (1-p)^N) = -log N - log p + O(N p)
    far = seq < COVERAGE_ASYMPTOTIC_BELOW
    exact = -_log1mexp(num_samples * _log1mexp(seq.clamp(min=COVERAGE_ASYMPTOTIC_BELOW)))
    values = torch.where(far, -math.log(num_samples) - seq, exact)
    return finish_sequences(values, b.valid.any(1), reduction)


@register(
    "coverage_ce",
    family="lm-tokens",
    kind="tokens",
    paper="Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting Confidence Improves "
    "Mathematical Reasoning",
    arxiv="2502.07154",
    summary="-log(1 - (1 - p(y|x))^N), p the sequence probability; N=16",
    reduction="per sequence",
    degenerate=("all_ignored",),
)
class CoverageCELoss(LossModule, function=coverage_ce_loss, check=_check_coverage):
    """Module form of :func:`coverage_ce_loss`."""
