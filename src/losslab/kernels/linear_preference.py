r"""Fused linear preference inputs: the per-sequence log-probabilities of chosen and rejected
completions straight from an LM head, chunked, without the ``N x V`` logits.

Preference losses (DPO, IPO, KTO, SimPO, CPO, ORPO, ...) need, per completion :math:`y` of
:math:`T` positions with targets :math:`t_1..t_T` (``ignore_index`` at prompt and padding
positions),

.. math::
    \log\pi_\theta(y\mid x) = \sum_{j:\,t_j \ne \text{ignore}} \log\operatorname{softmax}
        (h_j W^\top + b)_{t_j}, \qquad L(y) = \#\{j : t_j \ne \text{ignore}\}.

The token log-probabilities come from :func:`losslab.kernels.linear_stats.linear_token_stats`
(chunks of tokens, ``O(N)`` statistics kept, each chunk's logits recomputed in backward), so
neither the forward nor the backward pass holds ``N x V`` values, and each sequence's upstream
gradient (one per completion: the preference loss's :math:`\partial\ell/\partial\log\pi`) is
applied per token exactly. The per-sequence sums are formed here; the losses themselves live
in :mod:`losslab.losses.preference` (:func:`losslab.losses.preference.linear_preference_loss`
combines the two), since kernels import no loss family.

Layout (Liger's ``LigerFusedLinearPreferenceBase``, TRL's concatenated forward): ``hidden``
``[2B, T, d]`` and ``target`` ``[2B, T]`` stack the ``B`` chosen completions first and the
``B`` rejected ones second; row ``i`` of each half belongs to pair ``i``. Targets are aligned
with the hidden states (position ``j``'s hidden state predicts ``target[:, j]``: shift before
calling, as for :func:`~losslab.kernels.linear_ce.linear_cross_entropy`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from losslab._core import compute_dtype
from losslab.kernels.linear_stats import check_head, linear_token_stats

__all__ = ["PairLogps", "linear_preference_logps", "linear_sequence_logps"]


@dataclass(frozen=True)
class PairLogps:
    """Per-pair outputs of :func:`linear_preference_logps`, each ``[B]``: summed log-probs of
    the chosen and rejected completions (differentiable) and their numbers of scored tokens
    (float, no gradient)."""

    chosen: Tensor
    rejected: Tensor
    chosen_length: Tensor
    rejected_length: Tensor


def linear_sequence_logps(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Summed target log-probabilities per sequence of a linear head, chunked.

    Args:
        hidden: ``[S, T, d]`` hidden states of ``S`` sequences of ``T`` positions.
        weight: ``[V, d]`` LM head.
        target: ``[S, T]`` token ids in ``[0, V)`` or ``ignore_index`` (not scored).
        bias: optional ``[V]`` bias.
        ignore_index: target value of unscored positions (default -100).
        softcap: ``c`` of ``c * tanh(x / c)`` on the logits (Gemma-2), or None.
        chunk_size: tokens per chunk; None takes the fused cross-entropy's 48 MiB budget.

    Returns:
        ``(logps [S], lengths [S])``: :math:`\sum_j \log p(t_j)` over the scored positions
        (float32 for half inputs, differentiable with respect to ``hidden``, ``weight`` and
        ``bias``) and the number of scored positions (same dtype, no gradient).
    """
    check_head("", hidden, weight, bias)
    if hidden.ndim != 3:
        raise ValueError(f"hidden must have shape [S, T, d] (sequences, positions, width), "
                         f"got {tuple(hidden.shape)}")
    stats = linear_token_stats(hidden, weight, target, bias=bias, ignore_index=ignore_index,
                               softcap=softcap, chunk_size=chunk_size)
    acc = compute_dtype(hidden.dtype)
    lengths = (target != ignore_index).sum(1).to(acc)
    # linear_token_stats reports 0 (no gradient) at ignored positions
    return stats.logprob.sum(1), lengths


def linear_preference_logps(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> PairLogps:
    r"""Chosen and rejected sequence log-probs of a stacked preference batch, chunked.

    Args:
        hidden: ``[2B, T, d]``: the ``B`` chosen completions' hidden states, then the ``B``
            rejected ones (pair ``i`` is rows ``i`` and ``B + i``).
        weight, target, bias, ignore_index, softcap, chunk_size: as
            :func:`linear_sequence_logps` (``target`` is ``[2B, T]``).

    Returns:
        :class:`PairLogps` with ``[B]`` tensors.
    """
    check_head("", hidden, weight, bias)
    if hidden.ndim != 3 or hidden.shape[0] % 2:
        raise ValueError(f"hidden must have shape [2B, T, d] (B chosen rows, then B rejected "
                         f"rows), got {tuple(hidden.shape)}")
    logps, lengths = linear_sequence_logps(hidden, weight, target, bias=bias,
                                           ignore_index=ignore_index, softcap=softcap,
                                           chunk_size=chunk_size)
    b = hidden.shape[0] // 2
    return PairLogps(logps[:b], logps[b:], lengths[:b], lengths[b:])
