"""linear_kd: float64 references (the unfused losses on the full logits) for every option,
per-token gradients with reduction="none", gradcheck, bf16 accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from losslab.functional import jsd_loss, kd_loss
from losslab.kernels.linear_kd import linear_kd


def heads(n: int = 14, ds: int = 4, dt: int = 6, v: int = 9, seed: int = 0,
          dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    hs, ws, bs = r(n, ds).requires_grad_(True), r(v, ds).requires_grad_(True), \
        r(v).requires_grad_(True)
    ht, wt, bt = r(n, dt, scale=1.5), r(v, dt), r(v)
    y = torch.randint(0, v, (n,), generator=g)
    return hs, ws, bs, ht, wt, bt, y


def logits(h, w, b, softcap=None):
    x = h @ w.t() + (b if b is not None else 0)
    return softcap * torch.tanh(x / softcap) if softcap is not None else x


def reference(hs, ws, bs, ht, wt, bt, *, divergence, beta, temperature, softcap, valid):
    s, t = logits(hs, ws, bs, softcap), logits(ht, wt, bt, softcap)
    if divergence == "kl":
        per = kd_loss(s, t, alpha=1.0, temperature=temperature, reduction="none")
    else:
        per = jsd_loss(s, t, beta=beta, temperature=temperature, reduction="none")
    return torch.where(valid, per, 0.0)


CASES = [
    dict(divergence="kl", beta=0.5, temperature=1.0, softcap=None),
    dict(divergence="kl", beta=0.5, temperature=2.0, softcap=3.0),
    dict(divergence="jsd", beta=0.5, temperature=1.0, softcap=None),
    dict(divergence="jsd", beta=0.2, temperature=1.7, softcap=None),
    dict(divergence="jsd", beta=0.0, temperature=1.0, softcap=2.0),
    dict(divergence="jsd", beta=1.0, temperature=0.8, softcap=None),
]


def _id(c: dict) -> str:
    return f"{c['divergence']}-b{c['beta']}-T{c['temperature']}-cap{c['softcap']}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_unfused_float64_reference(case: dict, reduction: str, masked: bool) -> None:
    hs, ws, bs, ht, wt, bt, y = heads()
    target = None
    valid = torch.ones(14, dtype=torch.bool)
    if masked:
        target = y.clone()
        target[[0, 3, 4, 9]] = -100
        valid = target != -100
    got = linear_kd(hs, ws, ht, wt, bias=bs, teacher_bias=bt, target=target,
                    reduction=reduction, chunk_size=4, **case)
    per = reference(hs, ws, bs, ht, wt, bt, valid=valid, **case)
    want = {"none": per, "sum": per.sum(), "mean": per.sum() / valid.sum()}[reduction]
    torch.testing.assert_close(got, want)
    g = torch.Generator().manual_seed(1)
    up = torch.randn(got.shape, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((got * up).sum(), (hs, ws, bs))
    refs = torch.autograd.grad((want * up).sum(), (hs, ws, bs))
    for a, e in zip(ours, refs):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(reduction: str) -> None:
    hs, ws, bs, ht, wt, bt, _ = heads(n=5, ds=3, dt=2, v=4, seed=2)

    def f(hs, ws, bs):
        out = linear_kd(hs, ws, ht, wt, bias=bs, teacher_bias=bt, divergence="jsd", beta=0.3,
                        temperature=1.3, softcap=2.0, reduction=reduction, chunk_size=2)
        return out

    assert torch.autograd.gradcheck(f, (hs, ws, bs))


def test_teacher_gets_no_gradient_and_leading_dims() -> None:
    hs, ws, _, ht, wt, _, y = heads(n=12)
    wt = wt.clone().requires_grad_(True)
    out = linear_kd(hs.reshape(3, 4, -1), ws, ht.reshape(3, 4, -1), wt,
                    target=y.reshape(3, 4), reduction="none", chunk_size=5)
    assert out.shape == (3, 4)
    out.sum().backward()
    assert wt.grad is None and hs.grad is not None


def test_masked_vocabulary_shared_by_both_heads() -> None:
    hs, ws, bs, ht, wt, bt, _ = heads(seed=3)
    bs2, bt2 = bs.detach().clone(), bt.clone()
    bs2[[2, 5]] = bt2[[2, 5]] = -math.inf
    bs2.requires_grad_(True)
    keep = [i for i in range(9) if i not in (2, 5)]
    for divergence, beta in (("kl", 0.5), ("jsd", 0.5), ("jsd", 1.0)):
        got = linear_kd(hs, ws, ht, wt, bias=bs2, teacher_bias=bt2, divergence=divergence,
                        beta=beta, chunk_size=4)
        want = linear_kd(hs, ws[keep], ht, wt[keep], bias=bs2[keep], teacher_bias=bt2[keep],
                         divergence=divergence, beta=beta, chunk_size=4)
        torch.testing.assert_close(got, want)
        (g,) = torch.autograd.grad(got, hs)
        assert torch.isfinite(g).all()


def test_bf16_accumulates_in_float32_and_is_no_worse_than_naive() -> None:
    hs, ws, _, ht, wt, _, _ = heads(n=96, ds=16, dt=16, v=64, seed=4, dtype=torch.bfloat16)
    got = linear_kd(hs, ws, ht, wt, divergence="jsd", chunk_size=32)
    assert got.dtype == torch.float32
    (gw,) = torch.autograd.grad(got, ws)
    assert gw.dtype == torch.bfloat16
    f64 = [x.detach().double().requires_grad_(x.requires_grad) for x in (hs, ws, ht, wt)]
    ref = jsd_loss(f64[0] @ f64[1].t(), f64[2] @ f64[3].t())
    (rw,) = torch.autograd.grad(ref, f64[1])
    naive = jsd_loss(hs @ ws.t(), ht @ wt.t())
    (nw,) = torch.autograd.grad(naive, ws)
    torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=1e-3)
    ours_err = float((gw.double() - rw).abs().max())
    naive_err = float((nw.double() - rw).abs().max())
    assert ours_err <= 1.5 * naive_err + 1e-4, (ours_err, naive_err)


def test_bad_inputs_and_empty() -> None:
    hs, ws, _, ht, wt, _, y = heads()
    assert float(linear_kd(hs[:0], ws, ht[:0], wt).detach()) == 0.0
    with pytest.raises(ValueError, match="teacher_weight"):
        linear_kd(hs, ws, ht, wt[:-1])
    with pytest.raises(ValueError, match="teacher_hidden"):
        linear_kd(hs, ws, ht[:-1], wt)
    with pytest.raises(ValueError, match="teacher_hidden"):
        linear_kd(hs, ws, ht[:, :-1], wt)
    with pytest.raises(ValueError, match="divergence"):
        linear_kd(hs, ws, ht, wt, divergence="tvd")
    with pytest.raises(ValueError, match="beta"):
        linear_kd(hs, ws, ht, wt, divergence="jsd", beta=2.0)
    with pytest.raises(ValueError, match="reduction"):
        linear_kd(hs, ws, ht, wt, reduction="avg")
    with pytest.raises(ValueError, match="target"):
        linear_kd(hs, ws, ht, wt, target=y[:-1])
    # every token ignored: a zero mean with zero gradient
    out = linear_kd(hs, ws, ht, wt, target=torch.full_like(y, -100))
    (g,) = torch.autograd.grad(out, hs)
    assert float(out.detach()) == 0.0 and bool((g == 0).all())
