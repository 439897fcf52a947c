"""losslab._ops.logits: the functions of log p shared by the classification and robust
families (``one_minus_pt_power``, ``comp_sum_values``), and the batch plumbing (``prepare``,
``finish``, ``masked_classes``, ``class_vector``) under bad input; the plumbing is also
exercised by every logits loss in tests/losses."""

from __future__ import annotations

import math

import pytest
import torch

from losslab._ops.logits import (
    class_vector,
    comp_sum_values,
    finish,
    gather_target,
    log_softmax,
    masked_classes,
    one_minus_pt_power,
    prepare,
)

D = torch.float64


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_one_minus_pt_power_formula(gamma: float) -> None:
    p = torch.tensor([1e-6, 0.1, 0.5, 0.9, 1.0 - 1e-9], dtype=D)
    want = torch.tensor([(1 - v) ** gamma for v in p.tolist()], dtype=D)
    torch.testing.assert_close(one_minus_pt_power(p.log(), gamma), want, rtol=1e-6, atol=0)


def test_one_minus_pt_power_finite_gradient_at_p_one() -> None:
    logp = torch.tensor([0.0, -1e-30, -0.5], dtype=D, requires_grad=True)  # p = 1, ~1, < 1
    out = one_minus_pt_power(logp, 0.5)
    (g,) = torch.autograd.grad(out.sum(), logp)
    assert torch.isfinite(g).all()
    assert g[0] == 0 and g[2] != 0


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.5, 2.0])
def test_comp_sum_values_formula(tau: float) -> None:
    p = torch.tensor([0.01, 0.3, 0.99], dtype=D)
    if tau == 1.0:
        want = [-math.log(v) for v in p.tolist()]
    else:
        want = [(1 - v ** (tau - 1)) / (tau - 1) for v in p.tolist()]
    torch.testing.assert_close(comp_sum_values(p.log(), tau), torch.tensor(want, dtype=D))


def test_comp_sum_values_linear_beyond_the_exponent_cap() -> None:
    logpt = torch.tensor([-200.0, -300.0], dtype=D, requires_grad=True)
    out = comp_sum_values(logpt, 0.0, max_exponent=60.0)
    assert torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.sum(), logpt)
    # tau = 0: u = -log p, exp continued by its tangent at 60: slope e^60 in u
    torch.testing.assert_close(g, torch.full((2,), -math.exp(60.0), dtype=D))


# --------------------------------------------------------------------------------------------
# The batch plumbing under bad input (issue #11; the number after "#11." is the finding)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_finish_returns_the_compute_dtype(dtype: torch.dtype) -> None:  # 11.2
    x = torch.randn(5, 3).to(dtype)
    batch = prepare(x, torch.tensor([0, 1, 2, 1, 0]))
    assert batch.logits.dtype == torch.float32 and batch.dtype == dtype
    values = -gather_target(log_softmax(batch), batch)
    for reduction in ("mean", "sum", "none"):
        assert finish(values, batch, reduction).dtype == torch.float32


def test_prepare_validates_soft_targets() -> None:  # 11.6
    x = torch.randn(3, 4, 2)
    q = torch.softmax(torch.randn(3, 4, 2), dim=1)
    assert prepare(x, q, soft_ok=True).probs is not None
    with pytest.raises(ValueError, match=r"target .probabilities. must sum to 1 over dim 1"):
        prepare(x, q * 1.01, soft_ok=True)
    bad = q.clone()
    bad[0, 0, 0], bad[0, 1, 0] = -0.05, bad[0, 1, 0] + bad[0, 0, 0] + 0.05
    with pytest.raises(ValueError, match=r"target .probabilities. must be >= 0"):
        prepare(x, bad, soft_ok=True)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_prepare_converts_integer_targets(dtype: torch.dtype) -> None:  # 11.7
    x = torch.randn(4, 3)
    t = torch.tensor([0, 2, 1, 2])
    batch = prepare(x, t.to(dtype), ignore_index=2 if dtype == torch.uint8 else -100)
    assert batch.index.dtype == torch.int64
    if dtype == torch.uint8:
        assert batch.valid.tolist() == [True, False, True, False]
    else:
        assert torch.equal(batch.index, t)
    with pytest.raises(ValueError, match="bool"):
        prepare(x, t > 0)


def test_masked_classes_marks_minus_inf_only() -> None:  # 11.8
    x = torch.tensor([[0.0, -math.inf, math.inf, math.nan, -1e30]])
    assert masked_classes(x).tolist() == [[False, True, False, False, False]]


def test_class_vector_checks_the_number_of_classes() -> None:
    batch = prepare(torch.randn(2, 3), torch.tensor([0, 1]))
    assert class_vector("weight", None, batch) is None
    assert class_vector("weight", [1, 2, 3], batch).dtype == batch.logits.dtype
    with pytest.raises(ValueError, match=r"weight must have one value per class \(\[3\]\)"):
        class_vector("weight", [1.0, 2.0], batch)
