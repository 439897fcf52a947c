r"""The kernel as ``torch.library`` custom ops: the path ``torch.compile`` traces.

The chunked passes are hand-scheduled eager code (buffers reused through ``out=``,
data-dependent fast paths such as the sparse one-hot term and the folded ``A exp(z - lse)``,
``nonzero`` on the targets of a vocabulary block): tracing them would graph-break, and a
compiler could not schedule them better than they are. Under ``torch.compile`` they run as
three opaque operators instead, each with a shape-only fake implementation, so a compiled
model around the loss is one graph and the kernel inside it is exactly the eager kernel
(same chunks, same workspace, same numbers):

* ``losslab::linear_ce_grad_in_forward``: the scalar loss, the per-token LSE and the
  gradients ``dh, dw, db`` of :class:`~.autograd.GradInForward`; its backward scales them by
  the upstream scalar (out of place: under compile the gradients are graph values, so one
  gradient-sized product is allocated where the eager Function scales in place) and, when
  the caller uses the LSE (``lse_used``), adds the LSE term by ``linear_ce_backward``;
* ``losslab::linear_ce_recompute``: the per-token loss and LSE of
  :class:`~.autograd.Recompute` (nothing kept but the inputs and the LSE);
* ``losslab::linear_ce_backward``: the gradients of ``sum_n g_loss[n] l_n + g_lse[n]
  lse_n`` by one recomputing pass (either upstream may be absent).

Gradients that are not needed are returned as empty tensors (an operator output cannot be
None). float16 inputs whose logits may overflow float16 are computed in float32 inside the
operators, as the eager path does with differentiable casts (:func:`float32_if_fp16_overflows`).
The eager path (:mod:`.autograd`) is unchanged; ``tests/kernels/test_linear_ce_compiled.py``
checks the two against each other (values and gradients) and runs ``torch.library.opcheck``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from losslab._core import compute_dtype
from losslab.kernels.linear_ce.loop import chunk_loop, grad_pass
from losslab.kernels.linear_ce.rows import per_token_loss
from losslab.kernels.linear_ce.workspace import LceOptions

__all__ = ["FP16_LOGIT_BOUND", "float32_if_fp16_overflows", "fp16_logits_may_overflow",
           "grad_in_forward", "recompute"]

#: Largest logit bound for which float16 chunks are used (half of float16's maximum, 65504,
#: leaves room for the rounding of the GEMM's output).
FP16_LOGIT_BOUND = 32768.0


def fp16_logits_may_overflow(h: Tensor, w: Tensor, bias: Tensor | None) -> bool:
    """Whether some logit ``h_n . w_v + b_v`` may leave float16's range: Cauchy-Schwarz,
    ``|z| <= max_n |h_n| max_v |w_v| + max |b|`` (one pass over the inputs, no GEMM)."""
    hn = torch.linalg.vector_norm(h, dim=1, dtype=torch.float32).max()
    wn = torch.linalg.vector_norm(w, dim=1, dtype=torch.float32).max()
    bound = hn * wn
    if bias is not None:
        bound = bound + bias.detach().abs().max().float()
    return bool(bound > FP16_LOGIT_BOUND)


def float32_if_fp16_overflows(
    h: Tensor, w: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(h, w, b)``, in float32 when they are float16 and a logit may overflow float16
    (bfloat16 has float32's range and is kept)."""
    if h.dtype == torch.float16 and fp16_logits_may_overflow(h, w, b):
        return h.float(), w.float(), b.float() if b is not None else None
    return h, w, b


def _opts(label_smoothing: float, softcap: float | None, logz_penalty: float, chunk_size: int,
          weight_grad: str, workspace_bytes: int, strategy: str) -> LceOptions:
    return LceOptions(label_smoothing=label_smoothing, softcap=softcap,
                      logz_penalty=logz_penalty, chunk_size=chunk_size,
                      weight_grad=weight_grad, strategy=strategy,
                      workspace_bytes=workspace_bytes)


def _opt_args(opts: LceOptions) -> tuple[Any, ...]:
    return (opts.label_smoothing, opts.softcap, opts.logz_penalty, opts.chunk_size,
            opts.weight_grad, opts.workspace_bytes)


def _or_empty(x: Tensor | None, like: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` cast to ``dtype``, or an empty tensor (a gradient that is not needed)."""
    return x.to(dtype) if x is not None else like.new_empty((0,), dtype=dtype)


def _grads_out(dh: Tensor | None, dw: Tensor | None, db: Tensor | None, h: Tensor, w: Tensor,
               b: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients in the dtypes of the original ``h, w, b`` (empty where not needed)."""
    return (_or_empty(dh, h, h.dtype), _or_empty(dw, w, w.dtype),
            _or_empty(db, w, b.dtype if b is not None else w.dtype))


def _grads_fake(h: Tensor, w: Tensor, b: Tensor | None,
                need: tuple[bool, bool, bool]) -> tuple[Tensor, Tensor, Tensor]:
    need_h, need_w, need_b = need
    return (h.new_empty(h.shape if need_h else (0,)),
            w.new_empty(w.shape if need_w else (0,)),
            w.new_empty((w.shape[0],) if need_b and b is not None else (0,),
                        dtype=b.dtype if b is not None else w.dtype))


# ---------------------------------------------------------------- grad in forward


@torch.library.custom_op("losslab::linear_ce_grad_in_forward", mutates_args=())
def _grad_in_forward(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, token_weight: Tensor | None, scale: Tensor,
    label_smoothing: float, softcap: float | None, logz_penalty: float, chunk_size: int,
    weight_grad: str, workspace_bytes: int, need_h: bool, need_w: bool, need_b: bool,
    lse_used: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    opts = _opts(label_smoothing, softcap, logz_penalty, chunk_size, weight_grad,
                 workspace_bytes, "grad_in_forward")
    h0, w0, b0 = h, w, b
    h, w, b = float32_if_fp16_overflows(h, w, b)
    g = scale.expand(h.shape[0]) if token_weight is None else token_weight * scale
    ce, smooth, lse, gr = grad_pass(h, w, b, target, valid, class_weight, opts, stats=True,
                                    g_loss=g, g_lse=None, need=(need_h, need_w, need_b))
    assert ce is not None
    per_token = per_token_loss(ce, smooth, lse, valid, label_smoothing, logz_penalty,
                               w.shape[0])
    if token_weight is not None:
        per_token = per_token * token_weight
    loss = per_token.sum() * scale
    return (loss, lse, *_grads_out(*gr.in_param_dtypes(w, b), h0, w0, b0))


@_grad_in_forward.register_fake
def _(h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
      class_weight: Tensor | None, token_weight: Tensor | None, scale: Tensor,
      label_smoothing: float, softcap: float | None, logz_penalty: float, chunk_size: int,
      weight_grad: str, workspace_bytes: int, need_h: bool, need_w: bool, need_b: bool,
      lse_used: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = compute_dtype(h.dtype)
    return (h.new_empty((), dtype=acc), h.new_empty((h.shape[0],), dtype=acc),
            *_grads_fake(h, w, b, (need_h, need_w, need_b)))


def _grad_in_forward_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    h, w, b, target, valid, class_weight, _tw, _scale, *opt_args = inputs
    *opt_args, need_h, need_w, need_b, lse_used = opt_args
    _loss, _lse, dh, dw, db = output
    ctx.save_for_backward(h, w, b, target, valid, class_weight, dh, dw, db)
    ctx.opt_args = tuple(opt_args)
    ctx.need = (need_h, need_w, need_b and b is not None)
    ctx.lse_used = lse_used


def _grad_in_forward_backward(ctx: Any, g_loss: Tensor, g_lse: Tensor | None,
                              *_grads_of_grads: Any) -> tuple[Any, ...]:
    h, w, b, target, valid, class_weight, dh, dw, db = ctx.saved_tensors
    need = ctx.need
    out = [dh * g_loss.to(dh.dtype) if need[0] else None,
           dw * g_loss.to(dw.dtype) if need[1] else None,
           db * g_loss.to(db.dtype) if need[2] else None]
    if g_lse is not None and ctx.lse_used:
        # The LSE is an output of this operator whatever the caller does with it (autograd
        # hands its backward a zero tensor then): its term is only added when the caller
        # returns it (``lse_used``; the eager Function tests the values instead).
        acc = compute_dtype(h.dtype)
        lse_terms = _backward(h, w, b, target, valid, class_weight, None, g_lse.to(acc),
                              None, *ctx.opt_args, *need)
        out = [o + t if o is not None else None for o, t in zip(out, lse_terms, strict=True)]
    return (*out, *(None,) * 15)


torch.library.register_autograd("losslab::linear_ce_grad_in_forward",
                                _grad_in_forward_backward, setup_context=_grad_in_forward_setup)


# ---------------------------------------------------------------- recompute


@torch.library.custom_op("losslab::linear_ce_recompute", mutates_args=())
def _recompute(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, label_smoothing: float, softcap: float | None,
    logz_penalty: float, chunk_size: int, weight_grad: str, workspace_bytes: int,
) -> tuple[Tensor, Tensor]:
    opts = _opts(label_smoothing, softcap, logz_penalty, chunk_size, weight_grad,
                 workspace_bytes, "recompute")
    h, w, b = float32_if_fp16_overflows(h, w, b)
    ce, smooth, lse, _ = chunk_loop(h, w, b, target, valid, class_weight, opts, stats=True,
                                    g_loss=None, g_lse=None, need=(False, False, False))
    assert ce is not None
    return per_token_loss(ce, smooth, lse, valid, label_smoothing, logz_penalty,
                          w.shape[0]), lse


@_recompute.register_fake
def _(h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
      class_weight: Tensor | None, label_smoothing: float, softcap: float | None,
      logz_penalty: float, chunk_size: int, weight_grad: str, workspace_bytes: int,
      ) -> tuple[Tensor, Tensor]:
    acc = compute_dtype(h.dtype)
    return h.new_empty((h.shape[0],), dtype=acc), h.new_empty((h.shape[0],), dtype=acc)


def _recompute_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    h, w, b, target, valid, class_weight, *opt_args = inputs
    _per_token, lse = output
    ctx.save_for_backward(h, w, b, target, valid, class_weight, lse)
    ctx.opt_args = tuple(opt_args)


def _recompute_backward(ctx: Any, g_loss: Tensor | None,
                        g_lse: Tensor | None) -> tuple[Any, ...]:
    h, w, b, target, valid, class_weight, lse = ctx.saved_tensors
    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
            b is not None and ctx.needs_input_grad[2])
    acc = compute_dtype(h.dtype)
    # vocab_major reuses the forward's LSE instead of repeating its LSE pass
    keep_lse = lse if ctx.opt_args[4] == "vocab_major" else None
    grads = _backward(h, w, b, target, valid, class_weight,
                      g_loss.to(acc) if g_loss is not None else None,
                      g_lse.to(acc) if g_lse is not None else None, keep_lse,
                      *ctx.opt_args, *need)
    return (*(g if n else None for g, n in zip(grads, need, strict=True)), *(None,) * 9)


torch.library.register_autograd("losslab::linear_ce_recompute", _recompute_backward,
                                setup_context=_recompute_setup)


# ---------------------------------------------------------------- backward pass


@torch.library.custom_op("losslab::linear_ce_backward", mutates_args=())
def _backward(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, g_loss: Tensor | None, g_lse: Tensor | None,
    lse: Tensor | None, label_smoothing: float, softcap: float | None, logz_penalty: float,
    chunk_size: int, weight_grad: str, workspace_bytes: int, need_h: bool, need_w: bool,
    need_b: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    opts = _opts(label_smoothing, softcap, logz_penalty, chunk_size, weight_grad,
                 workspace_bytes, "recompute")
    h0, w0, b0 = h, w, b
    h, w, b = float32_if_fp16_overflows(h, w, b)
    need = (need_h, need_w, need_b)
    if g_loss is None and g_lse is None:
        return _grads_out(torch.zeros_like(h0) if need_h else None,
                          torch.zeros_like(w0) if need_w else None,
                          torch.zeros_like(b0) if need_b and b0 is not None else None,
                          h0, w0, b0)
    *_, gr = grad_pass(h, w, b, target, valid, class_weight, opts, stats=False,
                       g_loss=g_loss, g_lse=g_lse, need=need, lse=lse)
    return _grads_out(*gr.in_param_dtypes(w, b), h0, w0, b0)


@_backward.register_fake
def _(h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
      class_weight: Tensor | None, g_loss: Tensor | None, g_lse: Tensor | None,
      lse: Tensor | None, label_smoothing: float, softcap: float | None, logz_penalty: float,
      chunk_size: int, weight_grad: str, workspace_bytes: int, need_h: bool, need_w: bool,
      need_b: bool,
      ) -> tuple[Tensor, Tensor, Tensor]:
    return _grads_fake(h, w, b, (need_h, need_w, need_b))


# ---------------------------------------------------------------- entry point


def grad_in_forward(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, token_weight: Tensor | None, scale: Tensor,
    opts: LceOptions, lse_used: bool,
) -> tuple[Tensor, Tensor]:
    """``(loss, lse)`` of :class:`~.autograd.GradInForward` (same arguments; ``token_weight``
    without grad) by its operator; ``lse_used``: the caller returns the LSE, so its gradient
    may be nonzero."""
    grad = torch.is_grad_enabled()
    need = (grad and h.requires_grad, grad and w.requires_grad,
            grad and b is not None and b.requires_grad)
    loss, lse, *_ = _grad_in_forward(h, w, b, target, valid, class_weight, token_weight, scale,
                                     *_opt_args(opts), *need, lse_used)
    return loss, lse


def recompute(
    h: Tensor, w: Tensor, b: Tensor | None, target: Tensor, valid: Tensor,
    class_weight: Tensor | None, opts: LceOptions,
) -> tuple[Tensor, Tensor]:
    """``(per_token, lse)`` of :class:`~.autograd.Recompute` by its operator."""
    return _recompute(h, w, b, target, valid, class_weight, *_opt_args(opts))
