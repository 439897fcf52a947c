r"""Sequence and language-model losses (family ``sequence-lm``).

* ``linear_cross_entropy``: linear output layer + cross-entropy chunked over tokens, never the
  ``N x V`` logits (the kernel is :mod:`losslab.kernels.linear_ce`).
* ``logz_penalty``: the log-partition penalty (PaLM's "z-loss") on given logits, kind
  ``logits``; the same term is ``logz_penalty=`` of ``linear_cross_entropy``.
* The goldfish loss mask (:func:`goldfish_mask`, :func:`apply_goldfish`), which feeds
  ``token_weight=`` / ``ignore_index`` of the token losses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Flag, Int, Real, hparams
from losslab._ops.logits import finish, prepare
from losslab.kernels.linear_ce import (
    OPTION_RULES,
    Strategy,
    WeightGrad,
    linear_cross_entropy,
)
from losslab.registry import register

__all__ = [
    "LinearCrossEntropyLoss",
    "LogZPenaltyLoss",
    "apply_goldfish",
    "goldfish_mask",
    "linear_cross_entropy_loss",
    "logz_penalty_loss",
]

# --------------------------------------------------------------------------------------------
# Linear + cross-entropy
# --------------------------------------------------------------------------------------------


def linear_cross_entropy_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    class_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    softcap: float | None = None,
    logz_penalty: float = 0.0,
    token_weight: Tensor | None = None,
    return_lse: bool = False,
    return_z_loss: bool = False,
    chunk_size: int | None = None,
    strategy: Strategy = "auto",
    weight_grad: WeightGrad = "auto",
    workspace_bytes: int | None = None,
) -> Tensor | tuple[Tensor, ...]:
    r"""Cross-entropy of a linear output layer, chunked over tokens: no ``N x V`` logits.

    With :math:`z_n = \mathrm{cap}(W h_n + b)` (``cap(x) = c tanh(x / c)`` when ``softcap=c``),
    :math:`\mathrm{lse}_n = \log \sum_k e^{z_{nk}}`, :math:`\log p_{nk} = z_{nk} - \mathrm{lse}_n`,
    class weights :math:`w` (ones by default), token weights :math:`\tau` (ones by default),
    smoothing :math:`\varepsilon`, z-loss coefficient :math:`\lambda` and
    :math:`v_n = [t_n \ne \text{ignore\_index}]`:

    .. math::
        \ell_n = v_n \Big[ -(1-\varepsilon)\, w_{t_n} \log p_{n t_n}
            - \frac{\varepsilon}{V} \sum_k w_k \log p_{nk}
            + \lambda\, \mathrm{lse}_n^2 \Big], \qquad
        \text{loss} = \frac{\sum_n \tau_n \ell_n}{\sum_n v_n\, \tau_n\, w_{t_n}}
        \ \ (\text{"mean"}).

    Without ``token_weight``/``logz_penalty`` this is exactly
    ``F.cross_entropy(hidden @ weight.T + bias, target, weight=class_weight,
    ignore_index=..., label_smoothing=..., reduction=...)`` (including torch's definition of
    weighted label smoothing); ``token_weight`` matches
    ``(F.cross_entropy(..., reduction="none") * token_weight).sum() / denominator``. The z-loss
    term is the PaLM z-loss (coefficient 1e-4 in PaLM). A "mean" over no valid token is 0 with
    zero gradients.

    Args:
        hidden: ``[..., d]`` hidden states (leading dims are flattened to ``N`` tokens).
        weight: ``[V, d]`` output-layer weight (same dtype as ``hidden``).
        target: ``[...]`` integer class ids in ``[0, V)`` or ``ignore_index``.
        bias: optional ``[V]`` output-layer bias.
        ignore_index: target value that contributes neither loss nor gradient (default -100,
            as in torch).
        label_smoothing: :math:`\varepsilon \in [0, 1]` (torch's definition).
        class_weight: optional ``[V]`` per-class weights (torch CE's ``weight``).
        reduction: ``"mean"`` (weighted mean above), ``"sum"`` or ``"none"`` (``[...]``, the
            per-token :math:`\tau_n \ell_n`; its gradients are recomputed in backward, so any
            per-token upstream gradient is exact).
        softcap: logit soft-capping :math:`c` (Gemma 2), applied before the loss; default None.
        logz_penalty: :math:`\lambda`, z-loss coefficient (default 0).
        token_weight: optional ``[...]`` float per-token weights (e.g. a goldfish mask from
            :func:`losslab.losses.sequence.goldfish_mask`, or loss reweighting). Differentiable:
            when it requires grad the recompute strategy is used.
        return_lse: also return the per-token log-sum-exp ``[...]`` (float32 for half inputs;
            differentiable).
        return_z_loss: also return the z-loss term :math:`\lambda\, \mathrm{lse}_n^2` alone,
            over non-ignored tokens, token-weighted and reduced with the loss's own
            denominator, so that the CE part is ``loss - z_loss`` (the term is in the loss
            only when ``logz_penalty > 0``; it is returned, never hidden). Last in the tuple.
        chunk_size: tokens per chunk; default: the largest chunk (at most 1024 tokens) whose
            buffers fit the memory budget ``workspace_bytes``
            (:func:`losslab.kernels.linear_ce.plan_chunks`).
        strategy: ``"auto"``, ``"grad_in_forward"`` (mean/sum only) or ``"recompute"``.
        weight_grad: how ``dweight`` is formed. ``"token_chunks"``: each token chunk's
            contribution is added to one ``V x d`` accumulator (float32 for half inputs;
            3 GEMMs). ``"vocab_blocks"``: a second pass over vocabulary blocks recomputes
            their logits for all tokens and writes ``dweight[block] = G.T @ hidden`` once
            (4 GEMMs, no accumulator; half inputs accumulate over tokens in float32 inside
            the GEMM). ``"vocab_major"``: an LSE pass, then a gradient pass, over vocabulary
            blocks of all tokens (or of token panels of ``chunk_size`` tokens when the
            budget requires; 4 large GEMMs, ``dweight[block]`` written once). ``"auto"``:
            ``"token_chunks"`` while a chunk of at least 256 tokens (and, for half inputs,
            the float32 ``V x d`` accumulator) fits the budget, else ``"vocab_major"``.
        workspace_bytes: the memory budget: bytes the kernel may allocate beyond the
            gradients it returns and its O(N) per-token vectors; default None = 48 MiB
            (:data:`losslab.kernels.linear_ce.WORKSPACE_BYTES`), independent of N and V.
            A larger budget buys larger chunks and, for half inputs, the 3-GEMM path.

    Returns:
        The loss (float32 for half inputs, else the input dtype), then the LSE if
        ``return_lse``, then the z-loss term if ``return_z_loss``.

    Paper: Wijmans, Huval, Hertzberg, Koltun, Krähenbühl, "Cut Your Losses in Large-Vocabulary
    Language Models", arXiv 2411.09009 (the chunked / recompute formulation; CCE tiles the
    vocabulary too and filters small gradients on GPU, which this exact CPU/GPU reference does
    not do).
    """
    _check_return_z_loss(return_z_loss=return_z_loss)
    out = linear_cross_entropy(
        hidden, weight, target, bias=bias, ignore_index=ignore_index,
        label_smoothing=label_smoothing, class_weight=class_weight, reduction=reduction,
        softcap=softcap, logz_penalty=logz_penalty, token_weight=token_weight,
        return_lse=return_lse or return_z_loss, chunk_size=chunk_size, strategy=strategy,
        weight_grad=weight_grad, workspace_bytes=workspace_bytes,
    )
    if not return_z_loss:
        return out
    loss, lse = out  # type: ignore[misc]
    z = _z_loss_term(lse, target, ignore_index, class_weight, token_weight, logz_penalty,
                     reduction)
    return (loss, lse, z) if return_lse else (loss, z)


_check_return_z_loss = hparams(return_z_loss=Flag())


def _z_loss_term(lse: Tensor, target: Tensor, ignore_index: int, class_weight: Tensor | None,
                 token_weight: Tensor | None, logz_penalty: float, reduction: str) -> Tensor:
    """The z-loss part of ``linear_cross_entropy``: ``lambda lse^2`` per valid token, with the
    loss's token weights and ``"mean"`` denominator ``sum_n v_n tau_n w_{t_n}``."""
    valid = target != ignore_index
    acc = lse.dtype
    per = torch.where(valid, logz_penalty * lse.square(), torch.zeros_like(lse))
    den = valid.to(acc)
    if class_weight is not None:
        safe = torch.where(valid, target, torch.zeros_like(target)).long()
        den = den * class_weight.to(acc)[safe]
    if token_weight is not None:
        per = per * token_weight.to(acc)
        den = den * token_weight.to(acc)
    return reduce(per, reduction, count=den.sum())


@register(
    "linear_cross_entropy",
    family="sequence-lm",
    kind="linear",
    paper="Cut Your Losses in Large-Vocabulary Language Models",
    arxiv="2411.09009",
    summary="CE(hidden @ weight.T + bias, target) chunked over tokens with an online "
    "log-sum-exp; optional label smoothing, class/token weights, softcap, z-loss",
    peers=(
        "torch.nn.functional.linear_cross_entropy",
        "liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss",
        "cut_cross_entropy.linear_cross_entropy",
    ),
    reduction="per token",
    degenerate=("all_ignored",),
)
class LinearCrossEntropyLoss(LossModule, function=linear_cross_entropy_loss,
                             check=OPTION_RULES | hparams(return_z_loss=Flag())):
    """Module shell of :func:`linear_cross_entropy_loss` (the output weight is passed in)."""


# --------------------------------------------------------------------------------------------
# Log-partition penalty
# --------------------------------------------------------------------------------------------


_check_logz_penalty = hparams(coefficient=Real(ge=0), ignore_index=Int())


def logz_penalty_loss(
    logits: Tensor,
    target: Tensor,
    *,
    coefficient: float = 1e-4,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Log-partition penalty ("z-loss" of large-LM training): keeps ``log Z`` near 0.

    .. math::
        \ell = c \cdot \Big(\log \sum_k e^{o_k}\Big)^2

    A regulariser added to cross-entropy, not a classification loss on its own; the target is
    used only to skip ``ignore_index`` items (soft targets are accepted, validated as
    distributions over classes, and otherwise ignored). Half inputs return float32.

    Args:
        logits: ``[N, C, d1, ...]`` scores; target: ``[N, d1, ...]`` class ids or
            ``[N, C, d1, ...]`` soft targets (kind ``logits``, as
            :mod:`losslab.losses.classification`).
        coefficient: :math:`c \ge 0` (default 1e-4, as PaLM).
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"``.

    Paper: Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", arXiv 2204.02311
    (also in Mesh-TensorFlow/T5 code). Wortsman et al., "Small-scale proxies for large-scale
    Transformer training instabilities", arXiv 2309.14322, show at small scale that this term
    (with the same 1e-4) prevents the output-logit divergence instability; the same penalty is
    ``logz_penalty=`` of ``cross_entropy`` and ``linear_cross_entropy``. Not the Z-loss of
    de Brébisson & Vincent (:func:`~losslab.losses.classification.z_loss`).
    """
    _check_logz_penalty(coefficient=coefficient, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, soft_ok=True, loss="logz_penalty")
    logz = torch.logsumexp(batch.logits, dim=1)
    return finish(coefficient * logz.pow(2), batch, reduction)


@register(
    "logz_penalty",
    family="sequence-lm",
    kind="logits", degenerate=("all_ignored",),
    paper="PaLM: Scaling Language Modeling with Pathways",
    arxiv="2204.02311",
    summary="coefficient * logsumexp(logits)^2, coefficient=1e-4",
)
class LogZPenaltyLoss(LossModule, function=logz_penalty_loss, check=_check_logz_penalty):
    """Module form of :func:`logz_penalty_loss`."""


# --------------------------------------------------------------------------------------------
# The goldfish mask
# --------------------------------------------------------------------------------------------
# The goldfish loss mask (Hans et al., "Be like a Goldfish, Don't Memorize! Mitigating
# Memorization in Generative LLMs", arXiv 2406.10209).
#
# The goldfish loss drops a pseudo-random subset of about ``1/k`` of the target tokens from the
# next-token loss, so that the model never sees a whole passage supervised and cannot reproduce
# it verbatim. The *hashed* mask makes the drop decision a deterministic function of the ``h``
# tokens that precede the target: a passage that occurs many times (duplicates, repeated
# epochs) is always masked at the same positions.
#
# .. math::
#     G_i = \big[\, f(x_{i-h}, \dots, x_{i-1}) \ge 1/k \,\big]
#     \qquad (\text{keep token } i \text{ iff } G_i = 1)
#
# with :math:`f` a hash of the context into :math:`[0, 1)`. Defaults ``k = 4`` and ``h = 13``
# follow the paper's main experiments. Here :math:`f` is a seeded universal hash computed with
# integer tensor ops (deterministic across runs, devices and batch layouts):
# :math:`H = \sum_{j=1}^{h} (x_{i-j} \bmod P)\, r_j \bmod P` with :math:`P = 2^{31}-1` and
# multipliers :math:`r_j` drawn from ``seed``, followed by a xor-shift/multiply mixing step;
# :math:`f = H' / P`. Positions with fewer than ``h`` preceding tokens are always kept.
#
# Use with :func:`~losslab.kernels.linear_ce.linear_cross_entropy_loss` either as
# ``token_weight=goldfish_mask(labels).float()`` or by ``apply_goldfish(labels)`` (dropped
# labels become ``ignore_index``); both make ``"mean"`` average over the kept tokens, as in the
# paper. Apply it to the *shifted* labels (``labels[..., i]`` = the token predicted at position
# ``i``): the ``h`` labels before position ``i`` are then exactly the ``h`` tokens preceding the
# target (the first ``h`` positions are kept).

_P = 2**31 - 1  # Mersenne prime: products of two residues fit in int64


def _multipliers(h: int, seed: int, device: torch.device) -> tuple[Tensor, int]:
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randint(1, _P, (h + 1,), generator=g, dtype=torch.int64)
    return r[:h].to(device), int(r[h].item()) | 1


def goldfish_mask(tokens: Tensor, *, k: int = 4, h: int = 13, seed: int = 0) -> Tensor:
    """Boolean keep-mask of the hashed goldfish loss, same shape as ``tokens``.

    Args:
        tokens: ``[..., T]`` integer token ids (the label sequence; the last dim is time).
        k: drop frequency: a token is dropped with probability about ``1/k`` (default 4, the
            paper's main setting); ``k = 1`` drops every position that has a full context.
        h: context width: the number of preceding tokens hashed (default 13, as in the paper).
        seed: selects the hash function (fixed default: the same text gets the same mask).

    Returns:
        ``[..., T]`` bool tensor, ``True`` = keep the token in the loss.

    Paper: Hans et al., "Be like a Goldfish, Don't Memorize! Mitigating Memorization in
    Generative LLMs", arXiv 2406.10209.
    """
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError("tokens must be an integer tensor [..., T]")
    if tokens.ndim < 1:
        raise ValueError("tokens must have at least one dimension (time)")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not isinstance(h, int) or h < 1:
        raise ValueError(f"h must be an int >= 1, got {h!r}")
    t = tokens.shape[-1]
    keep = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    if t <= h:
        return keep
    r, mult = _multipliers(h, seed, tokens.device)
    x = tokens.long().remainder(_P)
    # windows[..., i, j] = x[..., i + j]; position p = i + h has context x[p-h : p].
    windows = x.unfold(-1, h, 1)[..., : t - h, :]
    hsh = (windows * r).remainder(_P).sum(-1).remainder(_P)
    hsh = (hsh ^ (hsh >> 15)).mul(mult).remainder(_P)
    hsh = (hsh ^ (hsh >> 13)).mul(mult).remainder(_P)
    # keep iff f = H / P >= 1/k  <=>  H * k >= P
    keep[..., h:] = hsh * k >= _P
    return keep


def apply_goldfish(
    labels: Tensor, *, k: int = 4, h: int = 13, seed: int = 0, ignore_index: int = -100
) -> Tensor:
    """``labels`` with the goldfish-dropped positions set to ``ignore_index`` (a new tensor)."""
    return labels.masked_fill(~goldfish_mask(labels, k=k, h=h, seed=seed), ignore_index)
