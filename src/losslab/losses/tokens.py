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

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, check_float, reduce, require
from losslab._hparams import Choice, Flag, Int, Real, hparams
from losslab._ops.tokens import TokenBatch, prepare_tokens
from losslab.registry import register

__all__ = [
    "CoverageCELoss",
    "Dist2Loss",
    "EISLLoss",
    "EMOLoss",
    "NumberTokenLoss",
    "TokenBatch",
    "coverage_ce_loss",
    "dist2_loss",
    "eisl_loss",
    "emo_loss",
    "number_token_loss",
    "prepare_tokens",
]


# --------------------------------------------------------------------------------------------
# Shared plumbing of the kind
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# EMO: earth mover distance bound with a token-embedding transport cost
# --------------------------------------------------------------------------------------------

_check_emo = hparams(ignore_index=Int(), mle=Flag())


def _normalised_rows(e: Tensor, dtype: torch.dtype) -> Tensor:
    e = e.detach().to(dtype)
    return e / torch.linalg.vector_norm(e, dim=1, keepdim=True).clamp(min=1e-12)


def emo_loss(
    logits: Tensor,
    target: Tensor,
    *,
    cost_embedding: Tensor,
    mle: bool = True,
    ignore_index: int = -100,
    token_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""EMO: a differentiable upper bound of the earth mover distance between the model's
    next-token distribution and the data (one-hot) distribution, with the transport cost
    :math:`C(u, v) = 1 - \cos(e_u, e_v)` between (frozen) token embeddings.

    With one-hot data at the target :math:`y` the bound is the expected transport cost of the
    model's distribution :math:`p` to :math:`y` (rows :math:`\hat e = e / \|e\|`):

    .. math::
        \mathrm{DEMD} = \sum_v p_v\, \big(1 - \hat e_v^\top \hat e_y\big)
        = 1 - \hat e_y^\top \sum_v p_v \hat e_v

    ``mle=True`` (default) gives the official training objective, which mixes it with the
    token cross-entropy at the CE's scale:
    :math:`\ell = \tfrac12\big(\mathrm{CE} + \operatorname{sg}[\mathrm{CE}/\mathrm{DEMD}]
    \,\mathrm{DEMD}\big)` (``sg`` = stop-gradient; its value equals CE, its gradient is
    :math:`\tfrac12(\nabla\mathrm{CE} + \tfrac{\mathrm{CE}}{\mathrm{DEMD}}\nabla\mathrm{DEMD})`).
    ``mle=False`` gives DEMD alone (exact gradient). Only the gradient through :math:`p` is
    used: the embeddings are a fixed cost (detached), as in the paper, where they are a frozen
    copy of the LM head.

    Args:
        logits: ``[N, T, V]`` scores; target: ``[N, T]`` ids.
        cost_embedding: ``[V, d]`` token embeddings that define the cost (e.g. a frozen copy of
            the output layer's weight; detached).
        mle: mix with CE as the official code does (default True).
        ignore_index: default -100.
        token_weight: optional ``[N, T]`` weights (call-time input).
        reduction: ``"mean"`` over valid tokens (token-weighted), ``"sum"``, ``"none"``
            (``[N, T]``).

    Paper: Ren, Wu, Xu, Li, Zhu, Lin, "EMO: Earth Mover Distance Optimization for
    Auto-Regressive Language Modeling", arXiv 2310.04691; the combined objective follows the
    official code (DRSY/EMO, ``emo_patch.py``).
    """
    _check_emo(ignore_index=ignore_index, mle=mle)
    b = prepare_tokens(logits, target, ignore_index=ignore_index, token_weight=token_weight,
                       loss="emo")
    v = b.logits.shape[-1]
    check_float("cost_embedding", cost_embedding)
    if cost_embedding.ndim != 2 or cost_embedding.shape[0] != v:
        raise ValueError(f"cost_embedding must have shape [V={v}, d], got "
                         f"{tuple(cost_embedding.shape)}")
    if cost_embedding.device != b.logits.device:
        raise ValueError("cost_embedding must be on the logits' device")
    e = _normalised_rows(cost_embedding, b.logits.dtype)
    logp = b.log_probs()
    expected = logp.exp() @ e  # [N, T, d]
    demd = 1.0 - (expected * e[b.target]).sum(-1)
    if mle:
        ce = -b.target_log_prob(logp)
        ratio = (ce / (demd + 1e-10)).detach()
        values = 0.5 * (ce + ratio * demd)
    else:
        values = demd
    return finish_tokens(values, b, reduction)


@register(
    "emo",
    family="lm-tokens",
    kind="tokens",
    paper="EMO: Earth Mover Distance Optimization for Auto-Regressive Language Modeling",
    arxiv="2310.04691",
    summary="DEMD = sum_v p_v (1 - cos(e_v, e_y)); mle=True: (CE + sg(CE/DEMD) DEMD) / 2",
    reduction="per token",
    degenerate=("all_ignored",),
    example_hparams={"cost_embedding": torch.linspace(-1.0, 1.0, 28).reshape(7, 4).cos()},
    surrogate_gradient="mle=True scales DEMD by the detached ratio CE/DEMD (official code)",
)
class EMOLoss(LossModule, function=emo_loss, check=_check_emo):
    """Module form of :func:`emo_loss`; ``cost_embedding`` is kept as a buffer (saved by
    ``state_dict()``, moved by ``.to()``)."""

    function_only = ("cost_embedding",)

    def __init__(self, *, cost_embedding: Tensor, mle: bool = True, ignore_index: int = -100,
                 reduction: Reduction = "mean") -> None:
        super().__init__(mle=mle, ignore_index=ignore_index, reduction=reduction)
        check_float("cost_embedding", cost_embedding)
        if cost_embedding.ndim != 2:
            raise ValueError(f"cost_embedding must be a [V, d] matrix, got shape "
                             f"{tuple(cost_embedding.shape)}")
        self.register_buffer("cost_embedding", cost_embedding.detach().clone())

    def call_kwargs(self) -> dict[str, object]:
        return {**super().call_kwargs(), "cost_embedding": self.cost_embedding}


# --------------------------------------------------------------------------------------------
# Number token loss
# --------------------------------------------------------------------------------------------

NUMBER_TOKEN_VARIANTS = ("wasserstein", "mse")
_check_number_token = hparams(ignore_index=Int(), variant=Choice(*NUMBER_TOKEN_VARIANTS))


def _token_values(name: str, values: object, v: int, like: Tensor) -> Tensor:
    if values is None:
        raise ValueError(f"{name} is required: a [V] float tensor with each token's numeric "
                         "value and NaN for the other tokens")
    t = torch.as_tensor(values, device=like.device)
    if not t.is_floating_point() or t.ndim != 1 or t.shape[0] != v:
        raise ValueError(f"{name} must be a float tensor [V={v}] (NaN for tokens without a "
                         f"value), got shape {tuple(t.shape)} dtype {t.dtype}")
    t = t.to(like.dtype)
    require(~torch.isinf(t), f"{name} must hold finite values or NaN, got inf")
    require((~torch.isnan(t)).any(), f"{name} marks no token as having a value (all NaN)")
    return t


def number_token_loss(
    logits: Tensor,
    target: Tensor,
    *,
    number_values: Tensor | None = None,
    variant: str = "wasserstein",
    ignore_index: int = -100,
    token_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Number Token Loss: a regression-like loss on the probabilities of the number tokens,
    at the positions whose target is a number token.

    With :math:`\mathcal{N}` the tokens that have a value :math:`x_k` (``number_values``, NaN
    elsewhere), :math:`\tilde p = \operatorname{softmax}(\text{logits}_{\mathcal N})` over
    them only, and :math:`y` the target token's value:

    .. math::
        \text{NTL-WAS}: \ \ell = \sum_{k \in \mathcal N} \tilde p_k\, |x_k - y|
        = W_1(\tilde p, \delta_y), \qquad
        \text{NTL-MSE}: \ \ell = \Big(\sum_{k \in \mathcal N} \tilde p_k x_k - y\Big)^2

    (the Wasserstein-1 distance to a point mass is the expected absolute difference; on the
    ordered 1-D support it equals the L1 distance between the CDFs). Positions whose target is
    not a number token contribute nothing and are not counted. The paper adds it to CE with a
    weight (``losslab.combine``). NaN logits are a ``ValueError`` (a NaN in a non-number
    logit would otherwise vanish silently).

    Args:
        logits: ``[N, T, V]`` scores; target: ``[N, T]`` ids.
        number_values: ``[V]`` float tensor: each number token's value, NaN for the other
            tokens (the official package maps the single-digit tokens 0-9).
        variant: ``"wasserstein"`` (default; the official package's default ``NTLoss``) or
            ``"mse"`` (``NTLossDotProduct``).
        ignore_index: default -100.
        token_weight: optional ``[N, T]`` weights (call-time input).
        reduction: ``"mean"`` over the number-token positions (token-weighted), ``"sum"``,
            ``"none"`` (``[N, T]``, 0 elsewhere).

    Paper: Zausinger, Pennig, Kozina, Sdahl, Sikora, Dendorfer, Kuznetsov, Hagag, Hurtig,
    Krüger, Born et al., "Regress, Don't Guess -- A Regression-like Loss on Number Tokens for
    Language Models", arXiv 2411.02083; definitions as the official package (ai4sd/
    number-token-loss, ``ntloss/core.py``).
    """
    _check_number_token(ignore_index=ignore_index, variant=variant)
    b = prepare_tokens(logits, target, ignore_index=ignore_index, token_weight=token_weight,
                       loss="number_token", reject_nan=True)
    vals = _token_values("number_values", number_values, b.logits.shape[-1], b.logits)
    is_num = ~torch.isnan(vals)
    y = vals[b.target]  # [N, T], NaN at non-number targets
    at_number = b.valid & ~torch.isnan(y)
    y = torch.where(at_number, y, torch.zeros_like(y))
    if torch.compiler.is_compiling():
        # the K number tokens are a data-dependent count (a graph break): the same softmax
        # over all V tokens with the others masked to -inf (p = 0 there, x = 0), at [N, T, V]
        x = torch.where(is_num, vals, torch.zeros_like(vals))
        p = torch.softmax(b.logits.masked_fill(~is_num, float("-inf")), dim=-1)
    else:
        x = vals[is_num]  # [K]
        p = torch.softmax(b.logits[..., is_num], dim=-1)  # [N, T, K]
    if variant == "wasserstein":
        values = (p * (x - y.unsqueeze(-1)).abs()).sum(-1)
    else:
        values = ((p * x).sum(-1) - y).square()
    nb = TokenBatch(b.logits, b.target, at_number, b.token_weight)
    return finish_tokens(values, nb, reduction)


@register(
    "number_token",
    family="lm-tokens",
    kind="tokens",
    paper="Regress, Don't Guess -- A Regression-like Loss on Number Tokens for Language Models",
    arxiv="2411.02083",
    summary="at number targets y: sum_k p~_k |x_k - y| (wasserstein) or (sum_k p~_k x_k - y)^2, "
    "p~ = softmax over number tokens",
    peers=("ntloss.NTLoss", "ntloss.NTLossDotProduct"),
    reduction="per token",
    degenerate=("all_ignored",),
    example_hparams={"number_values": [float("nan"), 0.0, 1.0, 2.0, 3.0, 4.0, float("nan")]},
)
class NumberTokenLoss(LossModule, function=number_token_loss, check=_check_number_token):
    """Module form of :func:`number_token_loss` (``number_values`` kept as a buffer)."""

    tensor_hparams = ("number_values",)


# --------------------------------------------------------------------------------------------
# DIST2: distance-aware soft targets
# --------------------------------------------------------------------------------------------

_check_dist2 = hparams(ignore_index=Int(), temperature=Real(gt=0))


def dist2_loss(
    logits: Tensor,
    target: Tensor,
    *,
    token_values: Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    token_weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""DIST2Loss: cross-entropy against a distance-aware soft target over the metric tokens.

    For a target :math:`y` that is a metric token (``token_values[y]`` is a number), the
    one-hot target is replaced by the discretised exponential-family distribution over the
    metric tokens :math:`\mathcal M`:

    .. math::
        q_v = \frac{\exp(-d(v, y)/\tau)}{\sum_{u \in \mathcal M}\exp(-d(u, y)/\tau)}
        \ (v \in \mathcal M), \qquad d(v, y) = |x_v - x_y|, \qquad
        \ell = -\sum_{v \in \mathcal M} q_v \log p_v

    (``-sum q log p`` = :math:`\mathrm{KL}(q \| p) + H(q)`: the same gradients as the KL).
    Other targets keep the one-hot CE. :math:`\tau \to 0` recovers CE.

    Formula from the abstract (distance-derived exponential-family targets, optimised by KL
    divergence) and the catalog's reading of it; the distance, the temperature default and
    the per-token mixing were not verified against the paper's text. Only 1-D token values
    (numbers, a coordinate) are supported here.

    Args:
        logits: ``[N, T, V]`` scores; target: ``[N, T]`` ids.
        token_values: ``[V]`` float tensor: each metric token's value, NaN for other tokens.
        temperature: :math:`\tau > 0` (default 1, in the units of ``token_values``).
        ignore_index: default -100.
        token_weight: optional ``[N, T]`` weights (call-time input).
        reduction: ``"mean"`` over valid tokens (token-weighted), ``"sum"``, ``"none"``.

    Paper: Chung, Kim, Jo, Park, Min, Yu, "Teaching Metric Distance to Autoregressive
    Multimodal Foundational Models", arXiv 2503.02379.
    """
    _check_dist2(ignore_index=ignore_index, temperature=temperature)
    b = prepare_tokens(logits, target, ignore_index=ignore_index, token_weight=token_weight,
                       loss="dist2")
    vals = _token_values("token_values", token_values, b.logits.shape[-1], b.logits)
    metric = ~torch.isnan(vals)
    logp = b.log_probs()
    y = vals[b.target]  # [N, T]
    at_metric = ~torch.isnan(y)
    safe_vals = torch.where(metric, vals, torch.zeros_like(vals))
    d = (safe_vals - torch.where(at_metric, y, torch.zeros_like(y)).unsqueeze(-1)).abs()
    scores = torch.where(metric, -d / temperature, torch.full_like(d, -math.inf))
    q = torch.softmax(scores, dim=-1)  # [N, T, V], 0 off the metric tokens
    soft = -(q * torch.where(metric, logp, torch.zeros_like(logp))).sum(-1)
    hard = -b.target_log_prob(logp)
    values = torch.where(at_metric, soft, hard)
    return finish_tokens(values, b, reduction)


@register(
    "dist2",
    family="lm-tokens",
    kind="tokens",
    paper="Teaching Metric Distance to Autoregressive Multimodal Foundational Models",
    arxiv="2503.02379",
    summary="-sum_v q_v log p_v, q_v ~ exp(-|x_v - x_y| / tau) over metric tokens; CE elsewhere",
    reduction="per token",
    degenerate=("all_ignored",),
    example_hparams={"token_values": [float("nan"), 0.0, 1.0, 2.0, 3.0, 4.0, float("nan")]},
)
class Dist2Loss(LossModule, function=dist2_loss, check=_check_dist2):
    """Module form of :func:`dist2_loss` (``token_values`` kept as a buffer)."""

    tensor_hparams = ("token_values",)
