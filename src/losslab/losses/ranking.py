"""Ranking losses distilled from a teacher ranker: Margin-MSE.

Margin-MSE is of kind ``teacher``: ``loss(student_scores[N, 1 + k], teacher_scores[N, 1 + k])``
with, per query ``i``, column 0 the score of the relevant passage and columns ``1..k`` the
scores of ``k`` negatives (``k = 1``: the paper's triples). The teacher scores are normally
precomputed (pass them detached). fp16/bf16 inputs are computed in float32; the result has the
input dtype.
"""

from __future__ import annotations

from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab.losses.distillation import check_teacher_pair
from losslab.registry import register

__all__ = ["MarginMSELoss", "margin_mse_loss"]


def margin_mse_loss(
    student_scores: Tensor,
    teacher_scores: Tensor,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Margin-MSE: match the student's score margins to the teacher's.

    .. math::
        \ell_i = \frac{1}{k} \sum_{j=1}^{k}
        \big((s_{i0} - s_{ij}) - (t_{i0} - t_{ij})\big)^2

    with :math:`s_{i0}` (:math:`t_{i0}`) the student (teacher) score of the positive passage of
    query :math:`i` and :math:`s_{ij}` of its :math:`j`-th negative. For :math:`k = 1` this is
    the paper's :math:`\mathrm{MSE}(M_s(q, p^+) - M_s(q, p^-),\ M_t(q, p^+) - M_t(q, p^-))`.

    Args:
        student_scores: ``[N, 1 + k]`` student scores, positive first (``k >= 1``).
        teacher_scores: ``[N, 1 + k]`` teacher scores in the same layout.
        reduction: ``"mean"`` over queries (= over all ``N·k`` margins, as
            ``torch.nn.MSELoss``), ``"sum"`` (of the per-query means), or ``"none"`` (``[N]``).

    Peer: ``sentence_transformers.losses.MarginMSELoss`` (MSE between the student margins and
    the teacher margins given as labels; for several negatives, one margin per negative).

    Paper: Hofstätter, Althammer, Schröder, Sertkan, Hanbury, "Improving Efficient Neural Ranking
    Models with Cross-Architecture Knowledge Distillation", arXiv 2010.02666.
    """
    s, t, dtype = check_teacher_pair(student_scores, teacher_scores,
                                     names=("student_scores", "teacher_scores"), min_cols=2)
    student_margin = s[:, :1] - s[:, 1:]
    teacher_margin = t[:, :1] - t[:, 1:]
    values = (student_margin - teacher_margin).pow(2).mean(1)
    return reduce(values, reduction).to(dtype)


@register(
    "margin_mse",
    family="ranking-recsys",
    kind="teacher",
    paper="Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge "
    "Distillation",
    arxiv="2010.02666",
    function=margin_mse_loss,
    summary="mean_j ((s_pos - s_neg_j) - (t_pos - t_neg_j))^2",
    peers=("sentence_transformers.losses.MarginMSELoss",),
    reduction="per query",
)
class MarginMSELoss(LossModule):
    """Module form of :func:`margin_mse_loss`."""

    def __init__(self, *, reduction: Reduction = "mean") -> None:
        super().__init__(reduction=reduction)

    def forward(self, student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
        return margin_mse_loss(student_scores, teacher_scores, **self.hparams)
