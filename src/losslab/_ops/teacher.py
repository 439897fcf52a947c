"""Shared plumbing of the ``teacher`` kind: ``(student[N, C], teacher[N, C])``, row ``i`` of both
the same input (distillation, Margin-MSE), the KL term of two distributions in log space, and
the difference of two logits of which a class may be masked (``-inf``) in both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import check_matrix, check_same_device, compute_dtype

__all__ = ["check_teacher_pair", "kl_terms", "masked_difference"]


def check_teacher_pair(
    student: Tensor,
    teacher: Tensor,
    *,
    names: tuple[str, str] = ("student_logits", "teacher_logits"),
    min_cols: int = 1,
) -> tuple[Tensor, Tensor]:
    """Validate a ``(student[N, C], teacher[N, C])`` pair; return both in the compute dtype
    (float32 for fp16/bf16, which is also the dtype of the losses' results:
    :func:`losslab._core.compute_dtype`).

    Args:
        student, teacher: float matrices of one shape, on one device.
        names: the argument names used in the error messages.
        min_cols: the fewest columns ``C`` the loss accepts.
    """
    s_name, t_name = names
    check_matrix(s_name, student)
    check_matrix(t_name, teacher)
    if teacher.shape != student.shape:
        raise ValueError(
            f"{t_name} must have the shape of {s_name} {tuple(student.shape)} (row i of both is "
            f"the same input), got {tuple(teacher.shape)}"
        )
    if student.shape[1] < min_cols:
        raise ValueError(
            f"{s_name} must have at least {min_cols} columns, got {student.shape[1]}"
        )
    check_same_device(**{s_name: student, t_name: teacher})
    cd = compute_dtype(student.dtype)
    return student.to(cd), teacher.to(cd)


def kl_terms(log_q: Tensor, log_p: Tensor) -> Tensor:
    r"""Elementwise :math:`q\,(\log q - \log p)` from log-probabilities, with
    :math:`0 \log 0 = 0`: an entry where :math:`q = 0` (``log_q = -inf``, e.g. a masked
    vocabulary class of the teacher) contributes exactly 0 with a zero gradient, also when
    ``log_p`` is ``-inf`` there too. Summed over the classes of a distribution this is
    :math:`\mathrm{KL}(q \,\|\, p)`, exactly 0 when ``log_p`` equals ``log_q``.
    """
    q = log_q.exp()
    # where() before the product: the masked entries (-inf - x or -inf + inf) never enter q * .,
    # so neither the value nor the gradient sees 0 * inf.
    diff = torch.where(q > 0, log_q - log_p, torch.zeros_like(q))
    return q * diff


def masked_difference(student: Tensor, teacher: Tensor) -> Tensor:
    r"""``student - teacher`` elementwise, 0 where both hold the same infinite value (a class or
    passage masked on both sides): the limit of :math:`s - t` as :math:`s = t \to \pm\infty`,
    instead of :math:`\infty - \infty = \mathrm{NaN}`. The gradient there is 0 (``where``
    selects a constant), and a NaN or an infinity on one side only propagates.
    """
    same_inf = torch.isinf(teacher) & (student == teacher)
    return torch.where(same_inf, torch.zeros_like(student), student - teacher)
