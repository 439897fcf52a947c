r"""Long-tailed classification from Bayesian decision theory: the integrated-risk objective
with a decision utility (family ``classification``, kind ``logits``).

The objective of RF-DLC / the Bayesian-decision-theory view of long-tailed classification, as
its official code trains it (one ensemble member's logits per call): a label-distribution-aware
margin, class re-weighting by the inverse class frequency, and a utility term that turns a
task's decision costs (e.g. "predicting a head class for a tail sample is worse than the
reverse") into a term of the training loss. The ensemble's diversity term (a log-determinant
of the members' weight spread) acts on model parameters: it is :func:`particle_diversity`, to
add to the mean of this loss over the members' logits.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction
from losslab._hparams import Flag, Int, PerClass, Real, Rule, hparams
from losslab._ops.logits import LogitsBatch, class_vector, finish, gather_target, prepare
from losslab.registry import register

__all__ = [
    "IntegratedRiskLoss",
    "integrated_risk_loss",
    "particle_diversity",
    "tail_sensitive_utility",
]

UtilitySpec = str | Sequence[Sequence[float]] | Tensor


@dataclass(frozen=True)
class _Utility(Rule):
    """``"tail_sensitive"``, ``"none"`` or a square ``[C, C]`` matrix of finite numbers."""

    def expected(self) -> str:
        return "'tail_sensitive', 'none' or a [C, C] matrix of finite numbers"

    def check(self, name: str, value: Any) -> None:
        if self._none_ok(name, value):
            return
        if isinstance(value, str):
            if value not in ("tail_sensitive", "none"):
                raise ValueError(f"{name} must be {self.expected()}, got {value!r}")
            return
        if isinstance(value, (bytes, bool, numbers.Number)):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}")
        try:
            t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}") from e
        if t.dtype == torch.bool or t.is_complex() or t.ndim != 2 or t.shape[0] != t.shape[1] \
                or t.numel() == 0:
            raise ValueError(f"{name} must be {self.expected()}, got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t.to(torch.float64)).all()):
            raise ValueError(f"{name} must be {self.expected()}, got non-finite entries")

    def rejects(self) -> Iterator[Any]:
        yield None
        yield "0.5"
        yield [1.0, 2.0]
        yield [[float("nan"), 0.0], [0.0, 0.0]]
        yield [[0.0, 0.0, 0.0]]
        yield 1.0


_check_integrated_risk = hparams(
    class_counts=PerClass(gt=0), utility=_Utility(), u_value=Real(), alpha=Real(gt=0),
    max_margin=Real(ge=0), margin_scale=Real(ge=0), reweight=Flag(), ignore_index=Int())


def tail_sensitive_utility(class_counts: Sequence[float] | Tensor, *, u_value: float = -1.0
                           ) -> Tensor:
    r"""The official code's tail-sensitive utility matrix :math:`U[y, c]`: ``u_value`` where
    class :math:`c` ranks before the true class :math:`y` (more training samples; ties broken
    by the lower class index), 0 elsewhere. With classes sorted from head to tail this is
    "``u_value`` for :math:`c < y`" (the code's ``relative_class_idx < 0``): with the default
    ``u_value=-1`` predicting a more frequent class for a sample is a loss of utility.

    Returns ``[C, C]`` float64.
    """
    _check_integrated_risk(class_counts=class_counts, u_value=u_value)
    return _tail_matrix(torch.as_tensor(class_counts, dtype=torch.float64), u_value)


def _tail_matrix(n: Tensor, u_value: float) -> Tensor:
    """``U[y, c] = u_value`` where class ``c`` ranks before ``y`` by count (ties: index)."""
    idx = torch.arange(n.shape[0], device=n.device)
    more = n[None, :] > n[:, None]
    tie = (n[None, :] == n[:, None]) & (idx[None, :] < idx[:, None])
    return torch.where(more | tie, torch.full_like(more, u_value, dtype=n.dtype),
                       torch.zeros_like(more, dtype=n.dtype))


def _utility_matrix(utility: UtilitySpec, counts: Tensor, u_value: float,
                    batch: LogitsBatch) -> Tensor | None:
    if isinstance(utility, str):
        if utility == "none":
            return None
        return _tail_matrix(counts, u_value)
    u = torch.as_tensor(utility, dtype=batch.logits.dtype, device=batch.logits.device)
    if u.shape != (batch.num_classes, batch.num_classes):
        raise ValueError(f"utility must be a [{batch.num_classes}, {batch.num_classes}] matrix "
                         f"(one row per true class), got shape {tuple(u.shape)}")
    return u


def integrated_risk_loss(
    logits: Tensor,
    target: Tensor,
    *,
    class_counts: Sequence[float] | Tensor,
    utility: UtilitySpec = "tail_sensitive",
    u_value: float = -1.0,
    alpha: float = 0.002,
    max_margin: float = 0.5,
    margin_scale: float = 30.0,
    reweight: bool = True,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Integrated-risk objective with a decision utility for long-tailed classification.

    With :math:`n_c` the training counts, margins :math:`m_c \propto n_c^{-1/4}` scaled to
    :math:`\max_c m_c = ` ``max_margin``, logits :math:`\tilde z = z - s\, m_y e_y`
    (:math:`s` = ``margin_scale``), :math:`\log p = \operatorname{log\_softmax}(\tilde z)`,
    class weights :math:`w_c = 1/n_c` and a utility matrix :math:`U` (:math:`U[y, c]`: the
    gain of deciding :math:`c` when the truth is :math:`y`):

    .. math::
        \mathcal{L} = \frac{\sum_n w_{y_n}\,(-\log p_{n, y_n})}{\sum_n w_{y_n}}
        \;-\; \frac{1}{\alpha N} \sum_n \sum_c w_c\, U[y_n, c]\, \log p_{n, c}

    — the class-weighted cross-entropy (the data term of the integrated risk, under the
    re-balanced posterior) plus the utility term of the decision loss, weighted by
    :math:`1/\alpha`. The per-item values (``reduction="none"``) are
    :math:`w_{y_n}(-\log p_{n,y_n})/\bar w - \frac1\alpha \sum_c w_c U[y_n,c] \log p_{n,c}`
    with :math:`\bar w` the batch mean of :math:`w_{y_n}`, so that their mean is
    :math:`\mathcal{L}`. ``reweight=False`` is the first training stage of the official
    schedule (deferred re-weighting): :math:`w \equiv 1` and no utility term, i.e. the margin
    cross-entropy alone. A class masked with a ``-inf`` logit contributes no utility term.

    With ``utility="none"``, :math:`U = 0`; with ``margin_scale=0`` no margin; with both and
    ``reweight=False``, plain cross-entropy (tested). ``reweight=False`` equals
    :func:`~losslab.losses.classification.ldam_loss` on ``logits / margin_scale`` with
    ``scale=margin_scale`` (tested).

    Args:
        logits, target: ``[N, C, ...]`` scores of one ensemble member and ``[N, ...]`` class
            ids (no soft targets).
        class_counts: ``[C]`` positive training counts :math:`n_c`.
        utility: ``"tail_sensitive"`` (default: :func:`tail_sensitive_utility`, the official
            code's ``tail_sensitive`` option), ``"none"``, or a ``[C, C]`` matrix :math:`U`
            (a task's own decision gains, e.g. the official ``bird2plane`` / ``car2animal``
            examples: -1 on the entries of the confusions to avoid).
        u_value: the entry of the tail-sensitive matrix (default -1, the official default).
        alpha: :math:`\alpha > 0` (default 0.002, the official CIFAR configs).
        max_margin: largest margin (default 0.5, official). margin_scale: :math:`s`
            (default 30: the official ``x - 30 m``).
        reweight: the second (re-weighted) stage (default True), see above.
        ignore_index: class id of items to skip.
        reduction: ``"mean"`` (:math:`\mathcal{L}` over non-ignored items), ``"sum"``,
            ``"none"`` (``[N, ...]``).

    Formula from the official code (github.com/lblaoke/RF-DLC, ``model/loss.py``,
    ``VariationalE``; defaults from ``main.py`` and ``configs/``); the paper's derivation of the
    objective from the integrated risk was not read here (only the abstracts).

    Papers: Li, Zhang, "Long-tailed Classification from a Bayesian-decision-theory
    Perspective", arXiv 2303.06075; revised as "Making Reliable and Flexible Decisions in
    Long-tailed Classification" (RF-DLC), arXiv 2501.14090.
    """
    _check_integrated_risk(class_counts=class_counts, utility=utility, u_value=u_value,
                           alpha=alpha, max_margin=max_margin, margin_scale=margin_scale,
                           reweight=reweight, ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="integrated_risk")
    counts = class_vector("class_counts", class_counts, batch)
    assert counts is not None
    margins = counts.pow(-0.25)
    margins = margins * (max_margin / margins.max())
    own = F.one_hot(batch.class_ids, batch.num_classes).to(batch.logits.dtype)
    logp = F.log_softmax(batch.logits - margin_scale * own * margins, dim=1)
    nll = -gather_target(logp, batch)
    if not reweight:
        return finish(nll, batch, reduction)
    w = 1.0 / counts
    w_y = w[batch.class_ids]
    valid = batch.valid.to(w_y.dtype)
    n_valid = valid.sum()
    mean_w = (w_y * valid).sum() / torch.where(n_valid > 0, n_valid, torch.ones_like(n_valid))
    mean_w = torch.where(mean_w > 0, mean_w, torch.ones_like(mean_w))
    values = w_y * nll / mean_w
    u = _utility_matrix(utility, counts, u_value, batch)
    if u is not None:
        gain = w * u[batch.class_ids]  # [M, C]: w_c U[y, c]
        masked = torch.isneginf(batch.logits)
        safe_logp = torch.where(masked, torch.zeros_like(logp), logp)
        values = values - (gain * safe_logp).sum(1) / alpha
    return finish(values, batch, reduction)


def particle_diversity(weights: Sequence[Tensor], *, eps: float = 0.0) -> Tensor:
    r"""The ensemble term of the objective: minus half the mean log-variance of the ensemble
    members' weights, entry by entry.

    .. math::
        \mathcal{R} = -\frac12 \cdot \frac1P \sum_{j=1}^{P}
        \log\Big(\frac1M \sum_{i=1}^{M} (\theta_{i,j} - \bar\theta_j)^2 + \epsilon\Big)

    over the :math:`M` members' copies :math:`\theta_i` of one weight tensor (the official code
    passes each member's classifier weight) with :math:`P` entries. Adding it rewards spread
    between the members (the log-determinant of a diagonal covariance: the entropy term of the
    variational posterior). The official training adds
    :math:`e^{-\text{epoch}/\tau}\,\mathcal{R}` (:math:`\tau = 40`) to the members' mean loss,
    and only with more than one member.

    Args:
        weights: ``M >= 2`` tensors of one shape, one per ensemble member.
        eps: added to the variance (default 0, as the official code: identical members give
            ``+inf``).

    Returns a scalar. Paper: arXiv 2303.06075 / 2501.14090 (see :func:`integrated_risk_loss`);
    from the official ``VariationalE`` (covariance term).
    """
    ws = list(weights)
    if len(ws) < 2:
        raise ValueError(f"weights must hold at least 2 tensors (one per ensemble member), got "
                         f"{len(ws)}")
    for i, w in enumerate(ws):
        if not isinstance(w, Tensor) or not w.is_floating_point():
            raise ValueError(f"weights[{i}] must be a floating-point tensor, got "
                             f"{type(w).__name__ if not isinstance(w, Tensor) else w.dtype}")
        if w.shape != ws[0].shape:
            raise ValueError(f"weights must share one shape, got {tuple(ws[0].shape)} and "
                             f"{tuple(w.shape)} (weights[{i}])")
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    stack = torch.stack(ws)
    var = (stack - stack.mean(0)).square().mean(0)
    return -0.5 * torch.log(var + eps).mean()


@register(
    "integrated_risk",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="Long-tailed Classification from a Bayesian-decision-theory Perspective",
    arxiv="2303.06075",
    summary="sum w_y CE(z - s m_y e_y) / sum w_y - (1/(alpha N)) sum_n sum_c w_c U[y_n, c] "
    "log p_nc, w = 1/n, m ~ n^(-1/4), U tail-sensitive",
    example_hparams={"class_counts": (500, 100, 50, 10)},
)
class IntegratedRiskLoss(LossModule, function=integrated_risk_loss,
                         check=_check_integrated_risk):
    """Module form of :func:`integrated_risk_loss` (``class_counts`` kept as a buffer)."""

    tensor_hparams = ("class_counts",)
