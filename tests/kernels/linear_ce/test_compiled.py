"""The compile path of the fused linear cross-entropy (``kernels/linear_ce/compiled.py``):
the custom operators pass ``torch.library.opcheck`` (schema, fake tensors, autograd
registration, AOT dispatch), and ``torch.compile(fullgraph=True)`` of the loss gives the eager
value and gradients for every strategy, ``weight_grad`` and option, with no graph break."""

from __future__ import annotations

import pytest
import torch

from losslab.functional import linear_cross_entropy_loss as lce
from losslab.kernels.linear_ce import compiled
from losslab.kernels.linear_ce.workspace import LceOptions

N, D, V = 19, 6, 13


def make(dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, D, generator=g, dtype=torch.float64) * scale).to(dtype)
    w = (torch.randn(V, D, generator=g, dtype=torch.float64) * scale).to(dtype)
    b = (torch.randn(V, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    t[::5] = -100
    cw = torch.rand(V, generator=g, dtype=torch.float64) + 0.5
    tw = torch.rand(N, generator=g, dtype=torch.float64) * 2
    return h, w, b, t, cw, tw


def _run(fn, kw, dtype=torch.float64, scale=1.0, lse_weight=0.3):
    h, w, b, t, cw, tw = make(dtype, scale=scale)
    leaves = [h.requires_grad_(), w.requires_grad_()]
    args = dict(kw)
    if args.pop("bias", False):
        args["bias"] = b.requires_grad_()
        leaves.append(b)
    if args.pop("class_weight", False):
        args["class_weight"] = cw
    tw_grad = args.pop("token_weight_grad", False)
    if args.pop("token_weight", False) or tw_grad:
        args["token_weight"] = tw.requires_grad_(tw_grad)
        if tw_grad:
            leaves.append(tw)
    out = fn(h, w, t, **args)
    if isinstance(out, tuple):  # return_lse: the LSE enters the graph
        loss, lse = out
        total = loss.sum() + lse_weight * lse.sum()
    else:
        total = out.sum() if out.ndim == 0 else (out * torch.linspace(0.5, 1.5, N)).sum()
    return total.detach(), torch.autograd.grad(total, leaves)


CASES = {
    "default": {},
    "bias-sum": {"bias": True, "reduction": "sum"},
    "none-recompute": {"reduction": "none"},
    "lse-used": {"return_lse": True, "bias": True},
    "lse-used-recompute": {"return_lse": True, "strategy": "recompute"},
    "smoothing-softcap-zloss": {"label_smoothing": 0.1, "softcap": 3.0, "logz_penalty": 1e-3},
    "class-and-token-weight": {"class_weight": True, "token_weight": True},
    "token-weight-with-grad": {"token_weight_grad": True},
    "vocab-major": {"weight_grad": "vocab_major", "chunk_size": 7, "bias": True},
    "vocab-major-recompute": {"weight_grad": "vocab_major", "chunk_size": 7,
                              "reduction": "none", "label_smoothing": 0.2},
    "vocab-blocks": {"weight_grad": "vocab_blocks", "chunk_size": 5, "bias": True,
                     "softcap": 2.0},
    "token-chunks-small": {"weight_grad": "token_chunks", "chunk_size": 4,
                           "class_weight": True},
}
FAST = ("default", "lse-used-recompute")


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in FAST else pytest.mark.slow)
                                  for c in CASES])
def test_compiled_equals_eager(case):
    kw = CASES[case]
    eager_total, eager_grads = _run(lce, kw)
    torch._dynamo.reset()
    comp_total, comp_grads = _run(torch.compile(lce, fullgraph=True), kw)
    torch.testing.assert_close(comp_total, eager_total)
    for g_c, g_e in zip(comp_grads, eager_grads, strict=True):
        torch.testing.assert_close(g_c, g_e)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_half_equals_eager(dtype):
    """Half inputs (float32 softmax, the float32 ``dW`` accumulator), and float16 inputs large
    enough for float16 logits to overflow (computed in float32 inside the operator, as the
    eager path does by casting)."""
    for scale in (1.0, 200.0) if dtype == torch.float16 else (1.0,):
        eager_total, eager_grads = _run(lce, {"bias": True}, dtype=dtype, scale=scale)
        torch._dynamo.reset()
        comp_total, comp_grads = _run(torch.compile(lce, fullgraph=True), {"bias": True},
                                      dtype=dtype, scale=scale)
        assert torch.isfinite(comp_total)
        torch.testing.assert_close(comp_total, eager_total)
        for g_c, g_e in zip(comp_grads, eager_grads, strict=True):
            assert g_c.dtype == dtype
            torch.testing.assert_close(g_c, g_e)


def test_no_graph_break():
    h, w, _, t, _, _ = make(torch.float32)
    torch._dynamo.reset()
    ex = torch._dynamo.explain(lce)(h.requires_grad_(), w.requires_grad_(), t, return_lse=True)
    assert ex.graph_break_count == 0, [str(r.reason)[:80] for r in ex.break_reasons]
    assert ex.graph_count == 1


@pytest.mark.slow
def test_compiled_bad_target_raises():
    """The target check is an asynchronous assert under compile (no graph break)."""
    h, w, _, t, _, _ = make(torch.float32)
    fn = torch.compile(lce, fullgraph=True)
    fn(h, w, t)
    with pytest.raises(RuntimeError, match="invalid input"):
        fn(h, w, t.clone().fill_(V))


def _op_args(name, dtype=torch.float64, **opt):
    h, w, b, t, cw, tw = make(dtype)
    valid = t != -100
    target = torch.where(valid, t, 0)
    o = LceOptions(label_smoothing=opt.get("eps", 0.0), softcap=opt.get("cap"),
                   logz_penalty=opt.get("lam", 0.0), chunk_size=opt.get("chunk", 6),
                   weight_grad=opt.get("wg", "token_chunks"))
    opts = (o.label_smoothing, o.softcap, o.logz_penalty, o.chunk_size, o.weight_grad,
            o.workspace_bytes)
    h, w, b = h.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    if name == "linear_ce_grad_in_forward":
        scale = torch.tensor(1.0 / float(valid.sum()), dtype=torch.float64)
        return (h, w, b, target, valid, cw, tw, scale, *opts, True, True, True,
                opt.get("lse_used", False))
    if name == "linear_ce_recompute":
        return (h, w, b, target, valid, cw, *opts)
    g = torch.rand(N, dtype=torch.float64)
    return (h.detach(), w.detach(), b.detach(), target, valid, cw, g, g.flip(0), None, *opts,
            True, True, True)


OPCHECK = [
    ("linear_ce_grad_in_forward", {}),
    ("linear_ce_grad_in_forward", {"eps": 0.1, "cap": 2.0, "lse_used": True}),
    ("linear_ce_grad_in_forward", {"wg": "vocab_major", "chunk": 8}),
    ("linear_ce_recompute", {"lam": 1e-2}),
    ("linear_ce_recompute", {"wg": "vocab_major", "chunk": 8, "eps": 0.2}),
    ("linear_ce_backward", {}),
    ("linear_ce_backward", {"wg": "vocab_blocks", "cap": 2.0}),
]


@pytest.mark.parametrize(("name", "opt"), OPCHECK, ids=[f"{n}-{i}" for i, (n, _) in
                                                        enumerate(OPCHECK)])
def test_opcheck(name, opt):
    op = getattr(torch.ops.losslab, name).default
    torch.library.opcheck(op, _op_args(name, **opt))


def test_operators_equal_the_eager_functions():
    """Each operator returns what the eager autograd Function computes from the same
    arguments (the per-token loss/LSE of Recompute, GradInForward's loss and gradients)."""
    from losslab.kernels.linear_ce.autograd import GradInForward, Recompute

    args = _op_args("linear_ce_grad_in_forward", eps=0.1)
    loss, lse, dh, dw, db = torch.ops.losslab.linear_ce_grad_in_forward(*args)
    h, w, b, target, valid, cw, tw, scale = args[:8]
    opts = LceOptions(label_smoothing=0.1, softcap=None, logz_penalty=0.0, chunk_size=6)
    ref_loss, ref_lse = GradInForward.apply(h, w, b, target, valid, cw, tw, scale, opts)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(lse, ref_lse)
    for got, ref in zip((dh, dw, db), torch.autograd.grad(ref_loss, (h, w, b)), strict=True):
        torch.testing.assert_close(got, ref)
    per, lse2 = torch.ops.losslab.linear_ce_recompute(h, w, b, target, valid, cw, *args[8:14])
    ref_per, ref_lse2 = Recompute.apply(h, w, b, target, valid, cw, opts)
    torch.testing.assert_close(per, ref_per)
    torch.testing.assert_close(lse2, ref_lse2)


def test_unneeded_gradients_are_empty():
    args = list(_op_args("linear_ce_grad_in_forward"))
    args[14:17] = [True, False, False]
    _, _, dh, dw, db = torch.ops.losslab.linear_ce_grad_in_forward(*args)
    assert dh.shape == (N, D) and dw.numel() == 0 and db.numel() == 0
    assert compiled.fp16_logits_may_overflow(torch.full((2, 2), 300.0), torch.full((3, 2), 300.0),
                                             None)
