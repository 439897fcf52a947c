"""linear_preference_logps and linear_preference_loss: float64 references (materialised logits,
log_softmax, gather, per-sequence sums, then the preference function) for every loss option,
values and gradients (hidden, weight, bias), ignore_index, reduction="none" with per-pair
upstream gradients, a loop oracle for DPO, bf16 with float32 accumulation, and no N x V
tensor saved for backward."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from losslab._core import Reduction
from losslab.kernels.linear_preference import linear_preference_logps, linear_sequence_logps
from losslab.losses.preference import FUSED_PREFERENCE_LOSSES, linear_preference_loss


def batch(b: int = 3, t: int = 5, d: int = 4, v: int = 11, seed: int = 0,
          dtype=torch.float64, ignore: bool = True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    h = r(2 * b, t, d).requires_grad_(True)
    w = r(v, d, scale=0.7).requires_grad_(True)
    bias = r(v, scale=0.3).requires_grad_(True)
    y = torch.randint(0, v, (2 * b, t), generator=g)
    if ignore:  # a prompt of 1-2 positions and some right padding per sequence
        for i in range(2 * b):
            y[i, : 1 + i % 2] = -100
            if i % 3 == 0:
                y[i, -1] = -100
    ref_h = r(2 * b, t, d + 2)
    ref_w = r(v, d + 2)
    return h, w, bias, y, ref_h, ref_w


def materialised_logps(h, w, bias, y, softcap=None):
    """Sequence log-probs the naive way: full [2B, T, V] logits in float64."""
    z = h.double() @ w.double().t() + (bias.double() if bias is not None else 0)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    lp = torch.log_softmax(z, -1)
    valid = y != -100
    tok = lp.gather(-1, torch.where(valid, y, 0).unsqueeze(-1)).squeeze(-1)
    tok = torch.where(valid, tok, 0.0)
    b = h.shape[0] // 2
    s, n = tok.sum(1), valid.sum(1).double()
    return s[:b], s[b:], n[:b], n[b:]


#: (loss, hyperparameters, uses a reference model)
CASES = [
    ("dpo", dict(beta=0.3), True),
    ("dpo", dict(beta=0.1, label_smoothing=0.2), False),
    ("ipo", dict(beta=0.5), True),
    ("kto", dict(beta=0.2, reference_point=0.1, desirable_weight=1.5), True),
    ("simpo", dict(beta=2.0, gamma=0.5), False),
    ("simpo", dict(beta=1.0, gamma=0.0, label_smoothing=0.1), False),
    ("cpo", dict(beta=0.2, nll_weight=0.7), False),
    ("orpo", dict(beta=0.3), False),
    ("normalized_preference", dict(beta=0.4), True),
]


def reference_loss(loss, hp, use_ref, h, w, bias, y, ref_h, ref_w, reduction, softcap=None):
    cw, cl, nw, nl = materialised_logps(h, w, bias, y, softcap)
    kw = dict(hp)
    if use_ref:
        with torch.no_grad():
            rw, rl, _, _ = materialised_logps(ref_h, ref_w, None, y, softcap)
        kw.update(ref_chosen=rw, ref_rejected=rl)
    fn = FUSED_PREFERENCE_LOSSES[loss]
    params = inspect.signature(fn).parameters
    if "chosen_length" in params:
        kw["chosen_length"] = nw
    if "rejected_length" in params:
        kw["rejected_length"] = nl
    return fn(cw, cl, reduction=reduction, **kw)


def _grads(out, upstream, *xs):
    return torch.autograd.grad((out * upstream).sum(), xs)


def test_every_preference_loss_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(FUSED_PREFERENCE_LOSSES)


#: (strategy, group_workspace_bytes, reduction): grad-in-forward with all pairs in one group,
#: with groups of 2 pairs (B = 3: a short last group), with two passes per pair (a workspace
#: below one pair; 4-token chunks across the rows), and recompute with every reduction.
RUNS = [("grad_in_forward", 1 << 28, "mean"), ("grad_in_forward", 1 << 28, "sum"),
        ("grad_in_forward", 2 * 2 * 5 * 11 * 12, "mean"), ("grad_in_forward", 1, "mean"),
        ("recompute", 1 << 28, "mean"), ("recompute", 1 << 28, "sum"),
        ("recompute", 1 << 28, "none")]


@pytest.mark.parametrize("loss,hp,use_ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("strategy,ws,reduction", RUNS,
                         ids=["gif-mean", "gif-sum", "gif-groups", "gif-2pass", "rec-mean",
                              "rec-sum", "rec-none"])
def test_matches_materialised_float64_reference(loss, hp, use_ref, strategy, ws,
                                                reduction) -> None:
    h, w, bias, y, ref_h, ref_w = batch()
    ref_kw = dict(ref_hidden=ref_h, ref_weight=ref_w) if use_ref else {}
    got = linear_preference_loss(h, w, y, loss=loss, bias=bias, chunk_size=4,
                                 reduction=reduction, strategy=strategy,
                                 group_workspace_bytes=ws, **ref_kw, **hp)
    want = reference_loss(loss, hp, use_ref, h, w, bias, y, ref_h, ref_w, reduction)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # per-pair upstream gradients for "none" (each pair's tokens get their own weight)
    up = torch.linspace(0.5, 2.0, want.numel(), dtype=torch.float64).reshape(want.shape)
    for a, b_ in zip(_grads(got, up, h, w, bias), _grads(want, up, h, w, bias), strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-12)


def test_dpo_matches_a_loop_oracle_from_the_paper() -> None:
    """Eq. 7 of arXiv 2305.18290 written out with Python loops over pairs, tokens and the
    vocabulary (float64), against the fused loss."""
    h, w, bias, y, ref_h, ref_w = batch(b=2, t=4, d=3, v=6, seed=3)
    beta = 0.25

    def seq_logp(hh, ww, bb, row):
        total = 0.0
        for j in range(hh.shape[1]):
            tj = int(y[row, j])
            if tj == -100:
                continue
            zs = [float(hh[row, j] @ ww[k]) + (float(bb[k]) if bb is not None else 0.0)
                  for k in range(ww.shape[0])]
            m = max(zs)
            lse = m + math.log(sum(math.exp(z - m) for z in zs))
            total += zs[tj] - lse
        return total

    nb = h.shape[0] // 2
    losses = []
    with torch.no_grad():
        for i in range(nb):
            rw = seq_logp(h, w, bias, i) - seq_logp(ref_h, ref_w, None, i)
            rl = seq_logp(h, w, bias, nb + i) - seq_logp(ref_h, ref_w, None, nb + i)
            u = beta * (rw - rl)
            losses.append(math.log1p(math.exp(-u)))  # -log sigmoid(u)
    got = linear_preference_loss(h, w, y, loss="dpo", bias=bias, ref_hidden=ref_h,
                                 ref_weight=ref_w, beta=beta, chunk_size=3)
    assert float(got.detach()) == pytest.approx(sum(losses) / nb, rel=1e-12)


def test_explicit_reference_logps_equal_reference_head() -> None:
    h, w, bias, y, ref_h, ref_w = batch(seed=1)
    ref = linear_preference_logps(ref_h, ref_w, y)
    a = linear_preference_loss(h, w, y, bias=bias, ref_hidden=ref_h, ref_weight=ref_w)
    b_ = linear_preference_loss(h, w, y, bias=bias, ref_chosen=ref.chosen,
                                ref_rejected=ref.rejected)
    torch.testing.assert_close(a, b_)


def test_reference_head_defaults_to_the_policy_weight_and_gets_no_gradient() -> None:
    h, w, bias, y, _, _ = batch(seed=2)
    ref_h = h.detach().clone() + 0.1
    got = linear_preference_loss(h, w, y, bias=bias, ref_hidden=ref_h, ref_bias=bias)
    rw, rl, _, _ = materialised_logps(ref_h, w.detach(), bias.detach(), y)
    cw, cl, _, _ = materialised_logps(h, w, bias, y)
    want = FUSED_PREFERENCE_LOSSES["dpo"](cw, cl, ref_chosen=rw, ref_rejected=rl)
    torch.testing.assert_close(got, want)
    gw = torch.autograd.grad(got, w)[0]
    torch.testing.assert_close(gw, torch.autograd.grad(want, w)[0])


def test_softcap_and_sequence_logps() -> None:
    h, w, bias, y, _, _ = batch(seed=4)
    s, n = linear_sequence_logps(h, w, y, bias=bias, softcap=1.5, chunk_size=7)
    cw, cl, nw, nl = materialised_logps(h, w, bias, y, softcap=1.5)
    torch.testing.assert_close(s, torch.cat([cw, cl]))
    torch.testing.assert_close(n, torch.cat([nw, nl]))
    got = linear_preference_loss(h, w, y, loss="simpo", bias=bias, softcap=1.5)
    want = FUSED_PREFERENCE_LOSSES["simpo"](cw, cl, chosen_length=nw, rejected_length=nl)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("strategy", ["grad_in_forward", "recompute"])
@pytest.mark.parametrize("loss", ["dpo", "orpo"])
def test_bf16_uses_float32_accumulation(loss: str, strategy: str) -> None:
    """bf16 inputs: the loss and gradients match a float32 computation on the same (bf16)
    values; the logits GEMM runs in bf16 as the naive path's does."""
    h, w, bias, y, _, _ = batch(b=4, t=6, d=16, v=50, seed=5, dtype=torch.bfloat16)
    got = linear_preference_loss(h, w, y, loss=loss, bias=bias, chunk_size=5,
                                 strategy=strategy)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    h32, w32, b32 = (x.detach().float().requires_grad_(True) for x in (h, w, bias))
    cw, cl, nw, nl = materialised_logps(h32, w32, b32, y)
    kw = dict(chosen_length=nw, rejected_length=nl) if loss == "orpo" else {}
    want = FUSED_PREFERENCE_LOSSES[loss](cw, cl, **kw)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=2e-2, abs=2e-2)
    g = torch.autograd.grad(got, (h, w, bias))
    g32 = torch.autograd.grad(want, (h32, w32, b32))
    for a, b_ in zip(g, g32, strict=True):
        assert a.dtype == torch.bfloat16
        err = (a.float() - b_.float()).norm() / b_.float().norm().clamp(min=1e-12)
        assert float(err) < 3e-2


@pytest.mark.parametrize("strategy", ["grad_in_forward", "recompute"])
def test_no_vocabulary_sized_tensor_is_saved_for_backward(strategy: str) -> None:
    b, t, v = 2, 8, 400
    h, w, bias, y, _, _ = batch(b=b, t=t, d=6, v=v, seed=6)
    sizes: list[int] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = linear_preference_loss(h, w, y, loss="simpo", bias=bias, chunk_size=4,
                                     strategy=strategy)
    out.backward()
    assert max(sizes) < 2 * b * t * v / 4  # no [N, V] logits, probs or log-probs kept
    assert max(sizes) <= max(h.numel(), w.numel())


def test_empty_batch_is_a_finite_zero_with_zero_gradient() -> None:
    h = torch.zeros(0, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(0, 5, dtype=torch.long)
    for loss, strategy in (("dpo", "grad_in_forward"), ("simpo", "recompute"),
                           ("orpo", "auto")):
        out = linear_preference_loss(h, w, y, loss=loss, strategy=strategy)
        assert float(out.detach()) == 0.0
        gh, gw = torch.autograd.grad(out, (h, w))
        assert torch.all(gw == 0) and gh.shape == h.shape


@pytest.mark.parametrize("strategy,reduction", [("grad_in_forward", "sum"),
                                                 ("recompute", "none")])
def test_gradcheck(strategy: str, reduction: Reduction) -> None:
    h, w, bias, y, _, _ = batch(b=1, t=4, d=2, v=4, seed=7)

    def f(hh, ww, bb):
        return linear_preference_loss(hh, ww, y, loss="orpo", bias=bb, chunk_size=2,
                                      strategy=strategy, reduction=reduction)

    assert torch.autograd.gradcheck(f, (h, w, bias))


def test_sft_special_case_dpo_gradient_direction() -> None:
    """With the reference equal to the policy (first DPO step) the DPO gradient is
    -beta/2 (grad log pi_w - grad log pi_l) per pair (sigma(0) = 1/2)."""
    h, w, bias, y, _, _ = batch(b=1, t=4, d=3, v=6, seed=8, ignore=False)
    beta = 0.5
    out = linear_preference_loss(h, w, y, bias=bias, ref_hidden=h.detach(),
                                 ref_weight=w.detach(), ref_bias=bias.detach(), beta=beta)
    assert float(out.detach()) == pytest.approx(math.log(2.0), rel=1e-12)
    gw = torch.autograd.grad(out, w)[0]
    cw, cl, _, _ = materialised_logps(h, w, bias, y)
    want = torch.autograd.grad(-beta / 2 * (cw - cl).sum(), w)[0]
    torch.testing.assert_close(gw, want)


def test_bad_input_raises_value_error() -> None:
    h, w, _, y, ref_h, ref_w = batch()
    with pytest.raises(ValueError, match="strategy='grad_in_forward' needs reduction"):
        linear_preference_loss(h, w, y, strategy="grad_in_forward", reduction="none")
    with pytest.raises(ValueError, match="strategy must be one of"):
        linear_preference_loss(h, w, y, strategy="fast")
    with pytest.raises(ValueError, match=r"ref_chosen and ref_rejected must have shape \[3\]"):
        linear_preference_loss(h, w, y, ref_chosen=torch.zeros(4, dtype=torch.float64),
                               ref_rejected=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="loss must be one of"):
        linear_preference_loss(h, w, y, loss="rlhf")
    with pytest.raises(ValueError, match=r"hidden must have shape \[2B, T, d\]"):
        linear_preference_loss(h[:5], w, y[:5])
    with pytest.raises(ValueError, match="reference-free"):
        linear_preference_loss(h, w, y, loss="simpo", ref_hidden=ref_h, ref_weight=ref_w)
    with pytest.raises(ValueError, match="no hyperparameter"):
        linear_preference_loss(h, w, y, loss="dpo", gamma=1.0)
    with pytest.raises(ValueError, match="ref_weight and ref_bias need ref_hidden"):
        linear_preference_loss(h, w, y, ref_weight=ref_w)
    with pytest.raises(ValueError, match="together"):
        linear_preference_loss(h, w, y, ref_chosen=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="ref_hidden must have shape"):
        linear_preference_loss(h, w, y, ref_hidden=ref_h[:, :2], ref_weight=ref_w)
    y2 = y.clone()
    y2[1] = -100
    with pytest.raises(ValueError, match="at least one scored token"):
        linear_preference_loss(h, w, y2, loss="simpo")
    linear_preference_loss(h, w, y2, loss="dpo")  # sums need no tokens
    with pytest.raises(ValueError, match="target"):
        linear_preference_loss(h, w, y.float())
    with pytest.raises(ValueError, match="beta"):
        linear_preference_loss(h, w, y, beta=-1.0)
    with pytest.raises(ValueError, match="weight"):
        linear_preference_loss(h, w[:, :2], y)
