"""linear_token_stats: float64 references for every option, per-token gradients, bf16."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losslab.kernels.linear_stats import linear_token_stats


def inputs(n: int = 13, d: int = 5, v: int = 11, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    w = (torch.randn(v, d, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    b = (torch.randn(v, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(True)
    t = torch.randint(0, v, (n,), generator=g)
    return h, w, b, t


def reference(h, w, b, t, *, softcap=None, temperature=1.0, ignore_index=-100):
    x = h @ w.t()
    if b is not None:
        x = x + b
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    z = x / temperature
    logp = F.log_softmax(z, -1)
    valid = t != ignore_index
    lp = torch.where(valid, logp.gather(-1, torch.where(valid, t, 0).unsqueeze(-1)).squeeze(-1),
                     0.0)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent, torch.logsumexp(z, -1)


def loop_entropy(z_row: list[float]) -> float:
    m = max(z_row)
    e = [math.exp(v - m) for v in z_row]
    s = sum(e)
    return -sum((x / s) * math.log(x / s) for x in e)


OPTIONS = [
    dict(),
    dict(softcap=3.0),
    dict(temperature=0.7),
    dict(softcap=2.0, temperature=1.5),
    dict(ignore_index=-100, with_ignored=True),
    dict(no_bias=True),
]


@pytest.mark.parametrize("opt", OPTIONS, ids=[",".join(o) or "plain" for o in OPTIONS])
@pytest.mark.parametrize("chunk_size", [4, 64])
def test_values_and_per_token_gradients_match_float64_reference(opt: dict, chunk_size: int
                                                                 ) -> None:
    opt = dict(opt)
    h, w, b, t = inputs()
    if opt.pop("with_ignored", False):
        t = t.clone()
        t[[1, 5, 6]] = -100
    if opt.pop("no_bias", False):
        b = None
    got = linear_token_stats(h, w, t, bias=b, chunk_size=chunk_size, **opt)
    want = reference(h, w, b, t, **opt)
    for a, e in zip((got.logprob, got.entropy, got.lse), want):
        torch.testing.assert_close(a, e)
    # per-token upstream gradients on all three outputs at once (reduction="none")
    g = torch.Generator().manual_seed(3)
    up = [torch.randn(t.shape, generator=g, dtype=torch.float64) for _ in range(3)]
    params = [x for x in (h, w, b) if x is not None]
    ours_total = (got.logprob * up[0]).sum() + (got.entropy * up[1]).sum() + (
        got.lse * up[2]).sum()
    ref_total = (want[0] * up[0]).sum() + (want[1] * up[1]).sum() + (want[2] * up[2]).sum()
    ours = torch.autograd.grad(ours_total, params)
    refs = torch.autograd.grad(ref_total, params)
    for a, e in zip(ours, refs):
        torch.testing.assert_close(a, e)


def test_entropy_matches_a_loop_oracle_and_gradcheck() -> None:
    h, w, b, t = inputs(n=4, d=3, v=5, seed=1)
    got = linear_token_stats(h, w, t, bias=b, chunk_size=3)
    z = (h @ w.t() + b).tolist()
    want = [loop_entropy(r) for r in z]
    torch.testing.assert_close(got.entropy, torch.tensor(want, dtype=torch.float64))
    for pick in range(3):
        def f(h, w, b, pick=pick):
            out = linear_token_stats(h, w, t, bias=b, chunk_size=3, softcap=2.5,
                                     temperature=0.8)
            return (out.logprob, out.entropy, out.lse)[pick]

        assert torch.autograd.gradcheck(f, (h, w, b))


def test_single_output_used_and_leading_dims() -> None:
    h, w, b, t = inputs(n=12)
    h3 = h.detach().reshape(3, 4, -1).requires_grad_(True)
    got = linear_token_stats(h3, w, t.reshape(3, 4), bias=b, chunk_size=5)
    assert got.logprob.shape == (3, 4)
    (gh,) = torch.autograd.grad(got.entropy.sum(), h3)  # only the entropy has a gradient
    ent = reference(h3, w, b, t.reshape(3, 4))[1]
    (rh,) = torch.autograd.grad(ent.sum(), h3)
    torch.testing.assert_close(gh, rh)


def test_masked_vocabulary_by_minus_inf_bias_is_finite() -> None:
    h, w, b, t = inputs(seed=2)
    b = b.detach().clone()
    b[[0, 3]] = -math.inf
    t = torch.where((t == 0) | (t == 3), 1, t)
    got = linear_token_stats(h, w, t, bias=b, chunk_size=4)
    keep = [i for i in range(11) if i not in (0, 3)]
    remap = torch.tensor([keep.index(int(x)) for x in t])
    want = reference(h, w[keep], b[keep], remap)
    for a, e in zip((got.logprob, got.entropy, got.lse), want):
        torch.testing.assert_close(a, e)
    (gh,) = torch.autograd.grad(got.entropy.sum() + got.logprob.sum(), h)
    assert torch.isfinite(gh).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype: torch.dtype) -> None:
    h, w, b, t = inputs(n=64, d=16, v=50, seed=4, dtype=dtype)
    got = linear_token_stats(h, w, t, bias=b, chunk_size=16)
    assert got.logprob.dtype == torch.float32
    # reference: the same half logits, everything after in float64
    x = (h @ w.t() + b).double()
    logp = F.log_softmax(x, -1)
    torch.testing.assert_close(got.logprob, logp.gather(1, t.unsqueeze(1)).squeeze(1).float(),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.entropy, (-(logp.exp() * logp).sum(1)).float(),
                               rtol=1e-5, atol=1e-5)
    (gw,) = torch.autograd.grad(got.logprob.sum(), w)
    assert gw.dtype == dtype
    h64, w64, b64 = (x.detach().double().requires_grad_(True) for x in (h, w, b))
    ref = reference(h64, w64, b64, t)[0]
    (rw,) = torch.autograd.grad(ref.sum(), w64)
    # no worse than the naive half computation (autograd through half logits)
    (nw,) = torch.autograd.grad(reference(h, w, b, t)[0].float().sum(), w)
    ours_err = float((gw.double() - rw).abs().max())
    naive_err = float((nw.double() - rw).abs().max())
    assert ours_err <= 1.5 * naive_err + 1e-3, (ours_err, naive_err)


def test_empty_and_bad_inputs() -> None:
    h, w, b, t = inputs()
    e = linear_token_stats(h[:0], w, t[:0])
    assert e.logprob.shape == (0,)
    with pytest.raises(ValueError, match="target"):
        linear_token_stats(h, w, torch.full_like(t, 11))
    with pytest.raises(ValueError, match="target"):
        linear_token_stats(h, w, t.double())
    with pytest.raises(ValueError, match="target"):
        linear_token_stats(h, w, t[:-1])
    with pytest.raises(ValueError, match="hidden"):
        linear_token_stats(h[:, :-1], w, t)
    with pytest.raises(ValueError, match="bias"):
        linear_token_stats(h, w, t, bias=b[:-1])
    with pytest.raises(ValueError, match="temperature"):
        linear_token_stats(h, w, t, temperature=0.0)
    with pytest.raises(ValueError, match="softcap"):
        linear_token_stats(h, w, t, softcap=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_token_stats(h, w, t, chunk_size=0)
