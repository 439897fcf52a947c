r"""Per-token and per-sample weightings of the LM loss: the functions whose output feeds
``token_weight=`` of :func:`~losslab.losses.classification.cross_entropy_loss`,
:func:`~losslab.losses.sequence.linear_cross_entropy_loss` and the ``tokens`` losses.

They are not losses (no registry entry): each maps detached losses to detached weights, which
the loss then uses as constants — the papers treat the weights as constants in the gradient.

* :func:`talr_weights` — Token-Adaptive Loss Reweighting (arXiv 2509.20758): down-weights hard
  (low-probability) tokens.
* :func:`loss_reweighting_weights` — instance-level loss-based reweighting (LinUpper,
  Quadratic, Extremes; arXiv 2502.06733).
* :func:`order_matters_weights` / :func:`set_output_loss` — the set-output loss of "Order
  Matters" (arXiv 1511.06391): the loss of the best of several candidate output orderings.
* :func:`sample_to_token_weight` — broadcast per-sequence weights to ``[N, T]`` token weights.

Typical use (weights from a first, detached pass of the per-token losses)::

    per_tok = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # [N, T]
    w = talr_weights(per_tok, valid=labels != -100)
    loss = cross_entropy_loss(logits.transpose(1, 2), labels, token_weight=w)
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import Reduction, check_choice, check_float, check_positive, reduce

__all__ = [
    "REWEIGHT_STRATEGIES",
    "loss_reweighting_weights",
    "order_matters_weights",
    "sample_to_token_weight",
    "set_output_loss",
    "talr_weights",
]


def _valid_mask(losses: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return torch.ones(losses.shape, dtype=torch.bool, device=losses.device)
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.shape != losses.shape:
        raise ValueError(f"valid must be a bool tensor of the losses' shape {tuple(losses.shape)}")
    return valid


def _losses(name: str, losses: object, ndim: int | None = None) -> Tensor:
    check_float(name, losses)
    assert isinstance(losses, Tensor)
    if ndim is not None and losses.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(losses.shape)}")
    return losses.detach()


# --------------------------------------------------------------------------------------------
# TALR
# --------------------------------------------------------------------------------------------


def talr_weights(
    token_losses: Tensor,
    *,
    valid: Tensor | None = None,
    temperature: float | None = None,
) -> Tensor:
    r"""Token-Adaptive Loss Reweighting: per-token weights that shrink with the token's loss.

    .. math::
        w_i = n \, \frac{\exp(-\ell_i/\tau)}{\sum_{j\ \text{valid}} \exp(-\ell_j/\tau)}
        \quad (\text{valid } i), \qquad w_i = 0 \ \text{otherwise}

    over the :math:`n` valid tokens of the batch (mean weight 1, so the weighted mean keeps
    CE's scale), detached. A token the model finds hard (low probability, large
    :math:`\ell_i = -\log p`) gets an exponentially smaller weight, which keeps SFT from
    pushing the model far from its general-purpose distribution. :math:`\tau` defaults to the
    median valid token loss of the batch (scale-free: the weights do not change when every
    loss is multiplied by a constant).

    Formula from the abstract and published summaries (a closed-form, exponential
    down-weighting of low-probability tokens with an adaptive temperature); the exact
    normalisation and temperature rule were not verified against the paper's text.

    Args:
        token_losses: per-token losses (any shape, e.g. ``[N, T]`` from
            ``reduction="none"``); read detached.
        valid: optional bool mask of the same shape (e.g. ``labels != -100``).
        temperature: :math:`\tau > 0`; default None: the median valid loss (floored at 1e-6).

    Returns:
        Weights of ``token_losses``'s shape (0 where not valid), no gradient.

    Paper: Lin, Wang, Qian, Wang, Srinivasan, Zeng, Jiao, Zhou, Gesi, Wang, Guo, Zhong, Zhang,
    Sanghavi, Chen, Yun, Li, "SFT Doesn't Always Hurt General Capabilities: Revisiting
    Domain-Specific Fine-Tuning in LLMs", arXiv 2509.20758.
    """
    losses = _losses("token_losses", token_losses)
    mask = _valid_mask(losses, valid)
    n = int(mask.sum())
    if n == 0:
        return torch.zeros_like(losses)
    if temperature is None:
        tau = float(losses[mask].median().clamp(min=1e-6))
    else:
        check_positive("temperature", temperature)
        tau = float(temperature)
    scores = torch.where(mask, -losses / tau, torch.full_like(losses, -torch.inf))
    w = torch.softmax(scores.reshape(-1), 0).reshape(losses.shape) * n
    return torch.where(mask, w, torch.zeros_like(w))


# --------------------------------------------------------------------------------------------
# Loss-based sample reweighting (LinUpper, Quadratic, Extremes)
# --------------------------------------------------------------------------------------------

REWEIGHT_STRATEGIES = ("linupper", "quadratic", "extremes")


def loss_reweighting_weights(
    sample_losses: Tensor,
    *,
    strategy: str = "linupper",
    delta: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    r"""Instance-level, loss-based sample weights (LinUpper / Quadratic / Extremes).

    The batch's losses are mapped affinely onto :math:`[-\delta, \delta]`, shaped by the
    strategy's :math:`f`, and turned into weights by a softmax at temperature :math:`r`
    (the KL-regularisation strength):

    .. math::
        h_i = \delta\,\frac{2\ell_i - (\ell_{\max} + \ell_{\min})}{\ell_{\max} - \ell_{\min}},
        \qquad w_i = N\,\frac{\exp(f(h_i)/r)}{\sum_j \exp(f(h_j)/r)}

    with :math:`f_\text{linupper}(h) = \min(h + \delta, \delta)` (down-weights the low-loss,
    already learned samples; the high-loss half keeps the same maximal weight, which bounds
    the weights), :math:`f_\text{quadratic}(h) = 1 - h^2/\delta^2` (favours medium losses) and
    :math:`f_\text{extremes}(h) = |h|`. Weights have mean 1 and no gradient. When all losses
    are equal the weights are all 1.

    :math:`h` and :math:`f` follow the official code (``h_func``, ``f_func_linupper``,
    ``f_func_mid``, ``f_func_extremes``, ``g_func = exp(f / r)``); taking
    :math:`\ell_{\min}, \ell_{\max}` from the batch and normalising the weights over the batch
    is this function's reading, not verified against the paper's text.

    Args:
        sample_losses: ``[N]`` per-sample (per-sequence) losses; read detached.
        strategy: ``"linupper"`` (default; the paper's best), ``"quadratic"``, ``"extremes"``.
        delta: :math:`\delta > 0` (default 1, as the code).
        temperature: :math:`r > 0` (default 1, the code's ``kl_reg``).

    Returns:
        ``[N]`` weights (feed per-token through :func:`sample_to_token_weight`).

    Paper: Sow, Woisetschläger, Bulusu, Wang, Jacobsen, Liang, "Dynamic Loss-Based Sample
    Reweighting for Improved Large Language Model Pretraining", arXiv 2502.06733 (ICLR 2025).
    """
    check_choice("strategy", strategy, REWEIGHT_STRATEGIES)
    check_positive("delta", delta)
    check_positive("temperature", temperature)
    losses = _losses("sample_losses", sample_losses, ndim=1)
    n = losses.shape[0]
    if n == 0:
        return torch.zeros_like(losses)
    lo, hi = losses.min(), losses.max()
    span = hi - lo
    if float(span) <= 0:
        return torch.ones_like(losses)
    h = delta * (2 * losses - (hi + lo)) / span
    if strategy == "linupper":
        f = torch.minimum(h + delta, torch.full_like(h, delta))
    elif strategy == "quadratic":
        f = 1 - h.square() / delta**2
    else:
        f = h.abs()
    return torch.softmax(f / temperature, 0) * n


def sample_to_token_weight(sample_weight: Tensor, target: Tensor, *,
                           ignore_index: int = -100) -> Tensor:
    """``[N]`` per-sequence weights -> ``[N, T]`` token weights (0 at ``ignore_index``), for
    ``token_weight=``."""
    check_float("sample_weight", sample_weight)
    if sample_weight.ndim != 1 or target.ndim != 2 or target.shape[0] != sample_weight.shape[0]:
        raise ValueError(f"sample_weight [N] and target [N, T] must agree, got "
                         f"{tuple(sample_weight.shape)} and {tuple(target.shape)}")
    w = sample_weight.detach().unsqueeze(1).expand(target.shape)
    return torch.where(target != ignore_index, w, torch.zeros_like(w))


# --------------------------------------------------------------------------------------------
# Order Matters: the loss of the best output ordering
# --------------------------------------------------------------------------------------------


def order_matters_weights(candidate_losses: Tensor, *, temperature: float = 0.0) -> Tensor:
    r"""Weights over candidate output orderings of a set-valued target.

    For a target that is a set, "Order Matters" trains on the ordering the model finds most
    likely: :math:`\theta^* = \arg\max_\theta \sum_X \max_{\pi} \log p(Y_{\pi(X)} | X)`.
    Given the sequence losses :math:`\ell_{n,\pi} = -\log p(Y_\pi | X_n)` of ``P`` candidate
    orderings (e.g. a few sampled permutations), the weights are one-hot at the best one
    (``temperature=0``, the paper's max) or :math:`\operatorname{softmax}_\pi(-\ell/\tau)`
    (a smoothed max, for the paper's early-training exploration), detached. Multiply each
    candidate's token losses by its weight (``token_weight=`` via
    :func:`sample_to_token_weight` on the flattened ``[N * P]`` candidates).

    Args:
        candidate_losses: ``[N, P]`` sequence losses of ``P`` orderings per example.
        temperature: :math:`\tau \ge 0` (default 0: hard max).

    Returns:
        ``[N, P]`` weights summing to 1 per example.

    Paper: Vinyals, Bengio, Kudlur, "Order Matters: Sequence to sequence for sets",
    arXiv 1511.06391 (ICLR 2016).
    """
    losses = _losses("candidate_losses", candidate_losses, ndim=2)
    if losses.shape[1] == 0:
        raise ValueError("candidate_losses needs at least one ordering per example")
    check_positive("temperature", temperature, strict=False)
    if temperature == 0:
        best = losses.argmin(1)
        return torch.nn.functional.one_hot(best, losses.shape[1]).to(losses.dtype)
    return torch.softmax(-losses / temperature, 1)


def set_output_loss(candidate_losses: Tensor, *, temperature: float = 0.0,
                    reduction: Reduction = "mean") -> Tensor:
    r"""The set-output loss of "Order Matters": :math:`\min_\pi \ell_{n,\pi}` per example
    (``temperature=0``) or the :func:`order_matters_weights`-weighted sum, differentiable
    in ``candidate_losses`` (the weights are constants). ``reduction`` over examples
    (``"none"`` -> ``[N]``). Paper: arXiv 1511.06391."""
    check_float("candidate_losses", candidate_losses)
    w = order_matters_weights(candidate_losses, temperature=temperature)
    return reduce((w * candidate_losses).sum(1), reduction)
