r"""Memory-efficient fused linear + cross-entropy for large vocabularies.

``loss = cross_entropy(hidden @ weight.T + bias, target)`` without ever building the ``N x V``
logits: the tokens are processed in chunks of ``chunk_size`` rows; each chunk's logits live in
one reused buffer of ``chunk_size x V`` elements, are turned into probabilities in place by
one fused softmax per row block (the row's log-sum-exp is ``z_max - log p_max``: the
probability of the row maximum is at least ``1/V`` and never underflows), and from there into
the per-token loss, the per-token log-sum-exp and, when gradients are needed, the gradient
contributions ``dhidden``, ``dweight`` and ``dbias``.

Two strategies (``strategy=``, :mod:`.autograd`):

* ``"grad_in_forward"`` (Liger-style): the gradients are computed during the forward pass
  (three matmuls per chunk, no recomputation); backward only scales them by the scalar
  upstream gradient. Valid for ``reduction="mean"``/``"sum"`` with a non-differentiable
  ``token_weight``. If the returned LSE is used in the graph, backward adds its term with one
  recomputation pass.
* ``"recompute"`` (CCE-style): forward keeps only the per-token LSE; backward recomputes each
  chunk's logits (four matmuls). Needed for ``reduction="none"`` (each token has its own
  upstream gradient — the bug several peers shipped was to apply it as a scalar) and for a
  ``token_weight`` that requires grad.

``"auto"`` picks grad-in-forward when it is valid, else recompute.

``weight_grad`` selects how ``dweight`` is formed: ``"token_chunks"`` adds each chunk's
``G_c.T @ h_c`` to one ``V x d`` accumulator (3 GEMMs, the default), and ``"vocab_blocks"``
runs a second pass over vocabulary blocks that recomputes their logits for all tokens and
writes ``dweight[block] = G.T @ h`` once (4 GEMMs, no accumulator: for half inputs the GEMM's
internal float32 accumulation over all tokens replaces a float32 ``V x d`` buffer, so it uses
less memory and more time), and ``"vocab_major"`` (:mod:`.vocab_major`) is a whole method:
an LSE pass over vocabulary blocks of all tokens (online log-sum-exp, ``O(N)`` statistics),
then a gradient pass that recomputes each block's logits and writes ``dweight[block]`` once,
adds the block's ``dhidden`` term and its ``dbias`` (4 GEMMs, every one of them
``tokens x block x d`` with all tokens in one panel unless the budget forbids; ``chunk_size``
is then the token panel). ``"auto"`` and the chunk size are resolved in :func:`_validate`
from the call's memory budget, ``workspace_bytes`` (default 48 MiB, whatever N and V:
:func:`~.workspace.plan_chunks`: ``"token_chunks"`` while chunks of at least 256 tokens fit,
else ``"vocab_major"``).

Numerics: the loss, the LSE and ``dbias`` are accumulated in float32 (float64 for float64
inputs). For bfloat16/float16 inputs the matmuls run in the input dtype (as the naive
``hidden @ weight.T`` does) and the softmax is computed in float32 from the half logits;
``dweight`` is accumulated over tokens in float32 (inside one GEMM with ``"vocab_blocks"``; in
a float32 accumulator rounded once at the end with ``"token_chunks"``). The loss and LSE of
half inputs are returned in float32.

Layout (one pure-PyTorch implementation, CPU and GPU; a Triton kernel for CUDA would be added
as a second implementation behind an ``impl=`` argument when it exists):

* this module: :func:`linear_cross_entropy` (validation, flattening, strategy, reduction);
* :mod:`.workspace`: every buffer size (the budget, :func:`~.workspace.plan_chunks` and the
  block constants),
  :class:`~.workspace.LceOptions` and the buffers a pass allocates once;
* :mod:`.loop`: the pass over token chunks and row blocks, shared by forward and backward;
* :mod:`.rows`: per-row-block math (softcap, softmax -> LSE, per-token statistics, the
  coefficients ``A, B, C`` of the logit gradient ``A p - B e_t - C w``);
* :mod:`.grads`: gradient assembly (coefficient folding into ``dh``/``dW``/``db``, the
  ``dW`` accumulation, the ``vocab_blocks`` pass, rounding the accumulator);
* :mod:`.autograd`: the two autograd Functions (the eager path);
* :mod:`.compiled`: the same passes as ``torch.library`` custom operators, the path
  ``torch.compile`` traces (one opaque operator per pass: no graph break).

Glossary of the local names: ``h, w, b`` hidden ``[N, d]``, weight ``[V, d]``, bias ``[V]``;
``target`` class ids with ignored tokens mapped to 0 and ``valid`` the mask of the others;
``cw`` class weights in the compute dtype (``w_t`` = the target's, ``w_sum`` = their sum);
``z`` logits, ``p`` probabilities, ``lse`` log-sum-exp, ``cap`` the softcap ``c``; ``eps``
label smoothing, ``lam`` z-loss coefficient; ``s, e`` a chunk's token range (``hc``, ``tc``,
``vr`` its hidden rows, targets, valid mask), ``r0, r1`` a row block within it; ``A, B, C``
the per-token coefficients (:mod:`.rows`); ``acc`` the compute dtype (float32 for half).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from losslab._core import check_choice, check_reduction, compute_dtype
from losslab._hparams import Choice, Flag, Int, Real, hparams
from losslab._require import require
from losslab.kernels.linear_ce import compiled
from losslab.kernels.linear_ce.autograd import GradInForward, Recompute
from losslab.kernels.linear_ce.compiled import float32_if_fp16_overflows
from losslab.kernels.linear_ce.workspace import WORKSPACE_BYTES, LceOptions, plan_chunks

__all__ = [
    "OPTION_RULES",
    "STRATEGIES",
    "WEIGHT_GRADS",
    "WORKSPACE_BYTES",
    "Strategy",
    "WeightGrad",
    "linear_cross_entropy",
    "plan_chunks",
]

Strategy = Literal["auto", "grad_in_forward", "recompute"]
STRATEGIES: tuple[str, ...] = ("auto", "grad_in_forward", "recompute")
WeightGrad = Literal["auto", "token_chunks", "vocab_blocks", "vocab_major"]
WEIGHT_GRADS: tuple[str, ...] = ("auto", "token_chunks", "vocab_blocks", "vocab_major")

#: The declared rules of the options; ``losses.sequence`` passes them as the shell's ``check``.
OPTION_RULES = hparams(
    ignore_index=Int(), label_smoothing=Real(ge=0, le=1), softcap=Real(gt=0, optional=True),
    logz_penalty=Real(ge=0), chunk_size=Int(ge=1, optional=True),
    workspace_bytes=Int(ge=1, optional=True),
    strategy=Choice(*STRATEGIES), weight_grad=Choice(*WEIGHT_GRADS), return_lse=Flag(),
)


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None, ignore_index: int,
    label_smoothing: float, class_weight: Tensor | None, reduction: str, softcap: float | None,
    logz_penalty: float, token_weight: Tensor | None, return_lse: bool,
    chunk_size: int | None, strategy: str, weight_grad: str, workspace_bytes: int | None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The kernel behind :func:`losslab.functional.linear_cross_entropy_loss`, which documents
    the arguments (and holds their defaults: every keyword is required here)."""
    opts = _validate(hidden, weight, target, bias=bias, class_weight=class_weight,
                     token_weight=token_weight, ignore_index=ignore_index,
                     label_smoothing=label_smoothing, softcap=softcap,
                     logz_penalty=logz_penalty, chunk_size=chunk_size, reduction=reduction,
                     strategy=strategy, weight_grad=weight_grad,
                     workspace_bytes=workspace_bytes)
    lead = tuple(target.shape)
    h, w, t, valid = _flatten(hidden, weight, target, ignore_index)
    tw = token_weight.reshape(-1) if token_weight is not None else None
    if h.shape[0] == 0:
        acc = compute_dtype(h.dtype)
        zero = (h.sum() * 0 + w.sum() * 0).to(acc)
        loss = zero.expand(lead) if reduction == "none" else zero
        lse = torch.zeros(lead, dtype=acc, device=h.device)
        return (loss, lse) if return_lse else loss
    if not torch.compiler.is_compiling():
        # float16 logits would overflow (|z| can exceed 65504): compute this call in float32
        # (differentiable casts, so the gradients reach the float16 inputs; under compile
        # the operators of .compiled decide this inside). bfloat16 has float32's range.
        h, w, bias = float32_if_fp16_overflows(h, w, bias)
    loss, lse = _apply(h, w, bias, t, valid, class_weight, tw, opts, reduction, return_lse)
    if reduction == "none":
        loss = loss.reshape(lead)
    if return_lse:
        return loss, lse.reshape(lead)
    return loss


def _flatten(
    hidden: Tensor, weight: Tensor, target: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(h [N, d], w [V, d], target [N], valid [N])``: contiguous operands, the class ids
    with ignored tokens mapped to 0, and the mask of the tokens that count. Raises a
    ``ValueError`` naming the out-of-range target values."""
    v, d = weight.shape
    h = hidden.reshape(-1, d)
    if not h.is_contiguous():
        h = h.contiguous()
    t = target.reshape(-1).long()
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= v))
    require(~bad, lambda: (
        f"target has value(s) {sorted(set(t[bad].tolist()))[:5]} outside [0, {v}) that are "
        f"not ignore_index={ignore_index}"))
    w = weight if weight.is_contiguous() else weight.contiguous()
    return h, w, torch.where(valid, t, 0), valid


def _apply(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, token_weight: Tensor | None, opts: LceOptions, reduction: str,
    lse_used: bool,
) -> tuple[Tensor, Tensor]:
    """``(loss, lse)`` of the flattened problem by the strategy of ``opts`` and the
    ``reduction`` ("mean" divides by ``sum_n valid_n token_weight_n class_weight[t_n]``, a
    mean over no valid token is 0). Under ``torch.compile`` the autograd Functions are
    replaced by the custom operators of :mod:`.compiled` (the same passes, no graph break)."""
    acc = compute_dtype(h.dtype)
    tw = token_weight.to(acc) if token_weight is not None else None
    if reduction == "mean":
        denom_terms = valid.to(acc)
        if class_weight is not None:
            denom_terms = denom_terms * class_weight.to(acc)[target]
        if tw is not None:
            denom_terms = denom_terms * tw
        denom = denom_terms.sum()
        scale = torch.where(denom != 0, 1.0 / torch.where(denom != 0, denom, 1.0), 0.0)
    else:
        scale = torch.ones((), dtype=acc, device=h.device)
    compiling = torch.compiler.is_compiling()
    if opts.strategy == "grad_in_forward":
        tw_fixed = tw.detach() if tw is not None else None
        if compiling:
            return compiled.grad_in_forward(h, w, b, target, valid, class_weight, tw_fixed,
                                            scale, opts, lse_used)
        return GradInForward.apply(  # type: ignore[no-any-return]
            h, w, b, target, valid, class_weight, tw_fixed, scale, opts,
        )
    if compiling:
        per_token, lse = compiled.recompute(h, w, b, target, valid, class_weight, opts)
    else:
        per_token, lse = Recompute.apply(h, w, b, target, valid, class_weight, opts)
    if tw is not None:
        per_token = per_token * tw
    if reduction == "none":
        return per_token, lse
    total = per_token.sum()
    return (total * scale if reduction == "mean" else total), lse


def _resolve_strategy(strategy: str, reduction: str, token_weight: Tensor | None) -> str:
    """``"auto"``: grad-in-forward when it is valid (a "mean"/"sum" reduction and a
    ``token_weight`` that needs no gradient), else recompute. Raises for an explicit
    ``"grad_in_forward"`` where it is not valid."""
    tw_grad = (token_weight is not None and token_weight.requires_grad
               and torch.is_grad_enabled())
    if strategy == "auto":
        return "recompute" if reduction == "none" or tw_grad else "grad_in_forward"
    if strategy == "grad_in_forward" and (reduction == "none" or tw_grad):
        raise ValueError(
            "strategy='grad_in_forward' needs reduction 'mean' or 'sum' and a token_weight "
            "without grad; use strategy='recompute' (or 'auto')"
        )
    return strategy


def _validate(
    hidden: Any, weight: Any, target: Any, *, bias: Any, class_weight: Any, token_weight: Any,
    ignore_index: int, label_smoothing: float, softcap: float | None, logz_penalty: float,
    chunk_size: int | None, reduction: str, strategy: str, weight_grad: str,
    workspace_bytes: int | None,
) -> LceOptions:
    """Raise a ``ValueError`` naming the first bad argument; return the resolved options
    (``weight_grad`` and ``strategy`` without ``"auto"``, the chunk size).

    ``weight_grad="auto"`` and the chunk size come from the memory budget
    (:func:`~.workspace.plan_chunks`: ``"token_chunks"`` while a chunk of at least
    ``MIN_TOKEN_CHUNK`` tokens and, for half inputs, the float32 ``V x d`` accumulator fit
    it, else ``"vocab_blocks"``); an explicit ``weight_grad`` or ``chunk_size`` is kept."""
    _validate_tensors(hidden, weight, target, bias, class_weight, token_weight)
    _validate_options(ignore_index, label_smoothing, softcap, logz_penalty, chunk_size,
                      workspace_bytes)
    check_reduction(reduction)
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("weight_grad", weight_grad, WEIGHT_GRADS)
    budget = WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes
    wg, planned = plan_chunks(max(target.numel(), 1), weight.shape[0], weight.shape[-1],
                              hidden.dtype, softcap=softcap is not None,
                              weight_grad=weight_grad, workspace_bytes=budget)
    return LceOptions(
        label_smoothing=float(label_smoothing),
        softcap=float(softcap) if softcap is not None else None,
        logz_penalty=float(logz_penalty),
        chunk_size=planned if chunk_size is None else chunk_size,
        weight_grad=wg,
        strategy=_resolve_strategy(strategy, reduction, token_weight),
        workspace_bytes=budget,
    )


def _validate_tensors(
    hidden: Any, weight: Any, target: Any, bias: Any, class_weight: Any, token_weight: Any
) -> None:
    for name, x in (("hidden", hidden), ("weight", weight), ("target", target)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got dtype {hidden.dtype}")
    if not weight.is_floating_point() or weight.ndim != 2:
        raise ValueError(
            f"weight must be a floating-point matrix [V, d], got dtype {weight.dtype} and "
            f"shape {tuple(weight.shape)}"
        )
    if hidden.ndim < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden must have shape [..., d] with d = weight.shape[1] = {weight.shape[1]}, "
            f"got {tuple(hidden.shape)}"
        )
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one row (vocabulary size V >= 1)")
    if hidden.dtype != weight.dtype:
        raise ValueError(
            f"hidden and weight must have one dtype, got {hidden.dtype} and {weight.dtype}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"target must have shape {tuple(hidden.shape[:-1])} (hidden's leading dims), got "
            f"{tuple(target.shape)}"
        )
    _validate_weights(weight, target, bias, class_weight, token_weight)
    devices = {x.device for x in (hidden, weight, target, bias, class_weight, token_weight)
               if isinstance(x, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"inputs must be on one device, got {sorted(map(str, devices))}")


def _validate_weights(
    weight: Tensor, target: Tensor, bias: Any, class_weight: Any, token_weight: Any
) -> None:
    v = weight.shape[0]
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.shape != (v,) or bias.dtype != weight.dtype:
            raise ValueError(
                f"bias must be a [{v}] tensor of dtype {weight.dtype}, got "
                f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}"
            )
    if class_weight is not None and (
        not isinstance(class_weight, Tensor) or not class_weight.is_floating_point()
        or class_weight.shape != (v,)
    ):
        raise ValueError(f"class_weight must be a float tensor of shape [{v}]")
    if token_weight is not None and (
        not isinstance(token_weight, Tensor) or not token_weight.is_floating_point()
        or tuple(token_weight.shape) != tuple(target.shape)
    ):
        raise ValueError(
            f"token_weight must be a float tensor of target's shape {tuple(target.shape)}"
        )


def _validate_options(
    ignore_index: int, label_smoothing: float, softcap: float | None, logz_penalty: float,
    chunk_size: int | None, workspace_bytes: int | None,
) -> None:
    OPTION_RULES(ignore_index=ignore_index, label_smoothing=label_smoothing, softcap=softcap,
                 logz_penalty=logz_penalty, chunk_size=chunk_size,
                 workspace_bytes=workspace_bytes)
