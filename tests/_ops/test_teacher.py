"""losslab._ops.teacher: the teacher-kind pair check, the KL terms and the masked difference."""

from __future__ import annotations

import math

import pytest
import torch

from losslab._ops.teacher import check_teacher_pair, kl_terms, masked_difference

INF = math.inf


@pytest.mark.parametrize("dtype,want", [(torch.float16, torch.float32),
                                        (torch.bfloat16, torch.float32),
                                        (torch.float32, torch.float32),
                                        (torch.float64, torch.float64)])
def test_pair_is_returned_in_the_compute_dtype(dtype, want) -> None:
    s, t = torch.randn(3, 4).to(dtype), torch.randn(3, 4).to(dtype)
    s2, t2 = check_teacher_pair(s, t)
    assert s2.dtype == t2.dtype == want
    torch.testing.assert_close(s2, s.to(want), rtol=0, atol=0)


def test_pair_errors_name_the_arguments() -> None:
    s = torch.randn(3, 4)
    with pytest.raises(ValueError, match="teacher_scores must have the shape of student_scores"):
        check_teacher_pair(s, s[:, :2], names=("student_scores", "teacher_scores"))
    with pytest.raises(ValueError, match="student_logits must have at least 2 columns"):
        check_teacher_pair(s[:, :1], s[:, :1], min_cols=2)
    with pytest.raises(ValueError, match="teacher_logits must be a floating-point"):
        check_teacher_pair(s, torch.ones(3, 4, dtype=torch.long))


def test_kl_terms_with_zero_probabilities() -> None:
    log_q = torch.log_softmax(torch.tensor([[0.0, -INF, 1.0]], dtype=torch.float64), 1)
    log_p = torch.log_softmax(torch.tensor([[0.5, -INF, 0.0]], dtype=torch.float64,
                                           requires_grad=True), 1)
    terms = kl_terms(log_q, log_p)
    assert float(terms[0, 1]) == 0.0
    want = sum(math.exp(a) * (a - b) for a, b in zip(log_q[0].tolist(), log_p[0].tolist())
               if a > -INF)
    assert float(terms.sum()) == pytest.approx(want, rel=1e-12)
    assert float(kl_terms(log_q, log_q).sum()) == 0.0


def test_masked_difference_is_zero_only_where_both_are_the_same_infinity() -> None:
    s = torch.tensor([1.0, -INF, INF, -INF, INF, math.nan, 2.0], requires_grad=True)
    t = torch.tensor([0.5, -INF, INF, 3.0, -INF, 1.0, math.nan])
    d = masked_difference(s, t)
    assert d[:2].tolist() == [0.5, 0.0] and float(d[2]) == 0.0
    assert d[3] == -INF and d[4] == INF
    assert torch.isnan(d[5:]).all()
    (g,) = torch.autograd.grad(d[:3].sum(), s)
    assert g.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
