"""Shared plumbing of the ``teacher`` kind: ``(student[N, C], teacher[N, C])``, row ``i`` of both
the same input (distillation, Margin-MSE).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import check_matrix, check_same_device, compute_dtype

__all__ = ["check_teacher_pair"]


def check_teacher_pair(
    student: Tensor,
    teacher: Tensor,
    *,
    names: tuple[str, str] = ("student_logits", "teacher_logits"),
    min_cols: int = 1,
) -> tuple[Tensor, Tensor, torch.dtype]:
    """Validate a ``(student[N, C], teacher[N, C])`` pair; return both in the compute dtype
    (float32 for fp16/bf16) and the input dtype (the dtype of the result).

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
    dtype = student.dtype
    cd = compute_dtype(dtype)
    return student.to(cd), teacher.to(cd), dtype
