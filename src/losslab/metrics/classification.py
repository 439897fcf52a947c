"""Classification metrics: accuracy, top-k accuracy, calibration error, reliability diagrams,
the False Head Rate of long-tailed classification.

Inputs: ``scores[N, C]`` (logits or probabilities: accuracy only needs the ranking) or
``probs[N, C]`` (probabilities, for calibration), and ``target[N]`` integer class ids; items
whose target is ``ignore_index`` (default -100) are left out. Results are Python floats
(no gradient). Plotting a reliability diagram is the lab's
(:func:`losslab.lab.plots.plot_reliability_diagram`): the core metrics never import matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "adaptive_calibration_error",
    "expected_calibration_error",
    "false_head_rate",
    "reliability_diagram",
    "top_k_accuracy",
]


def _validate(
    scores: Tensor, target: Tensor, ignore_index: int, name: str
) -> tuple[Tensor, Tensor]:
    """Check ``scores[N, C]``/``target[N]`` and drop ignored items."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point() or scores.ndim != 2:
        raise ValueError(f"{name} must be a float tensor of shape [N, C], got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    if (not isinstance(target, Tensor) or target.is_floating_point() or target.dtype == torch.bool
            or target.shape != scores.shape[:1]):
        raise ValueError(f"target must be an integer tensor of shape [{scores.shape[0]}], got "
                         f"{getattr(target, 'shape', type(target).__name__)}")
    keep = target != ignore_index
    scores, target = scores[keep].detach(), target[keep].long()
    c = scores.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
        raise ValueError(f"target must hold class ids in [0, {c}) or ignore_index={ignore_index}")
    return scores, target


def accuracy(scores: Tensor, target: Tensor, *, ignore_index: int = -100) -> float:
    """Fraction of items whose top-scoring class is the target (0.0 for no item)."""
    return top_k_accuracy(scores, target, k=1, ignore_index=ignore_index)


def top_k_accuracy(
    scores: Tensor, target: Tensor, *, k: int = 5, ignore_index: int = -100
) -> float:
    """Fraction of items whose target is among the ``k`` highest scores (0.0 for no item).

    Ties are broken by ``torch.topk``. ``k`` larger than ``C`` counts every item as correct.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    scores, target = _validate(scores, target, ignore_index, "scores")
    if target.numel() == 0:
        return 0.0
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return float((top == target.unsqueeze(1)).any(1).double().mean())


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (numpy arrays of length ``n_bins``).

    Attributes:
        lower, upper: bin edges of the confidence (equal-mass bins: min/max confidence in it).
        confidence: mean confidence of the items in each bin (NaN for an empty bin).
        accuracy: fraction of correct top-1 predictions in each bin (NaN for an empty bin).
        count: number of items in each bin.
    """

    lower: np.ndarray
    upper: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def calibration_error(self) -> float:
        r""":math:`\sum_b \frac{|B_b|}{N} |\mathrm{acc}_b - \mathrm{conf}_b|` (non-empty bins)."""
        n = self.count.sum()
        if n == 0:
            return 0.0
        full = self.count > 0
        gap = np.abs(self.accuracy[full] - self.confidence[full])
        return float((self.count[full] / n * gap).sum())


def _check_probs(probs: Tensor) -> None:
    if bool(((probs < 0) | (probs > 1)).any()):
        raise ValueError("probs must be probabilities in [0, 1] (apply softmax to logits first)")


def reliability_diagram(
    probs: Tensor,
    target: Tensor,
    *,
    n_bins: int = 15,
    adaptive: bool = False,
    ignore_index: int = -100,
) -> ReliabilityBins:
    """Bin the top-1 confidence and compare it with the top-1 accuracy per bin.

    Equal-width bins ``((b-1)/B, b/B]`` (Guo et al. 2017), or with ``adaptive=True``
    equal-mass bins: items sorted by confidence and split into ``n_bins`` groups whose sizes
    differ by at most one (Nixon et al. 2019, "Measuring Calibration in Deep Learning").
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    probs, target = _validate(probs, target, ignore_index, "probs")
    _check_probs(probs)
    conf_t, pred = probs.max(1)
    conf = conf_t.double().cpu().numpy()
    correct = (pred == target).double().cpu().numpy()
    lower = np.zeros(n_bins)
    upper = np.zeros(n_bins)
    mean_conf = np.full(n_bins, np.nan)
    mean_acc = np.full(n_bins, np.nan)
    count = np.zeros(n_bins, dtype=np.int64)
    if adaptive:
        order = np.argsort(conf, kind="stable")
        groups = np.array_split(order, n_bins)
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        lower, upper = edges[:-1].copy(), edges[1:].copy()
        which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
        groups = [np.flatnonzero(which == b) for b in range(n_bins)]
    for b, g in enumerate(groups):
        count[b] = g.size
        if g.size:
            mean_conf[b] = conf[g].mean()
            mean_acc[b] = correct[g].mean()
            if adaptive:
                lower[b], upper[b] = conf[g].min(), conf[g].max()
    return ReliabilityBins(lower, upper, mean_conf, mean_acc, count)


def expected_calibration_error(
    probs: Tensor,
    target: Tensor,
    *,
    n_bins: int = 15,
    adaptive: bool = False,
    ignore_index: int = -100,
) -> float:
    r"""Expected calibration error of the top-1 prediction.

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{B} \frac{|B_b|}{N}\, \big|\mathrm{acc}(B_b) -
        \mathrm{conf}(B_b)\big|

    with ``n_bins`` equal-width bins (default 15, Guo et al., "On Calibration of Modern Neural
    Networks", arXiv 1706.04599) or, with ``adaptive=True``, equal-mass bins (adaptive ECE).
    Peer: ``torchmetrics.classification.MulticlassCalibrationError(norm="l1")`` (its bins are
    ``[lo, hi)`` where ours are ``(lo, hi]``; only confidences exactly on an edge differ).
    """
    bins = reliability_diagram(probs, target, n_bins=n_bins, adaptive=adaptive,
                               ignore_index=ignore_index)
    return bins.calibration_error


def adaptive_calibration_error(
    probs: Tensor, target: Tensor, *, n_bins: int = 15, ignore_index: int = -100
) -> float:
    """Adaptive (equal-mass) ECE: :func:`expected_calibration_error` with ``adaptive=True``."""
    return expected_calibration_error(probs, target, n_bins=n_bins, adaptive=True,
                                      ignore_index=ignore_index)


def false_head_rate(
    scores: Tensor,
    target: Tensor,
    *,
    head_fraction: float | Sequence[float] = (0.25, 0.5, 0.75),
    class_counts: Sequence[float] | Tensor | None = None,
    ignore_index: int = -100,
) -> float:
    r"""False Head Rate (FHR): the fraction of tail-class samples predicted as a head class.

    Classes are ordered from head to tail: by index (class 0 the most frequent, as the
    long-tailed benchmarks and the official code number them) or, with ``class_counts``, by
    decreasing training count (ties by index). For a head fraction :math:`h` the first
    :math:`b = \lfloor C h + 1/2 \rfloor` classes of that order are the head and the others
    the tail:

    .. math::
        \mathrm{FHR}_h = \frac{|\{i : \mathrm{rank}(y_i) \ge b,\
        \mathrm{rank}(\hat y_i) < b\}|}{|\{i : \mathrm{rank}(y_i) \ge b\}|},
        \qquad \hat y_i = \arg\max_c s_{ic}.

    Returns the mean of :math:`\mathrm{FHR}_h` over ``head_fraction`` (default
    ``(0.25, 0.5, 0.75)``: the official code's three splits, whose average the paper reports);
    a single number gives that one rate. A split with no tail sample counts as 0.

    Args:
        scores: ``[N, C]`` logits or probabilities; target: ``[N]`` class ids
            (``ignore_index`` items left out).
        head_fraction: :math:`h \in (0, 1)`, or a non-empty sequence of them.
        class_counts: optional ``[C]`` training counts that define the head-to-tail order.

    Paper: Li, Zhang, "Long-tailed Classification from a Bayesian-decision-theory
    Perspective", arXiv 2303.06075 (RF-DLC, arXiv 2501.14090); definition from the official
    code (github.com/lblaoke/RF-DLC, ``model/metric.py``, ``FHR``).
    """
    fractions = [float(head_fraction)] if isinstance(head_fraction, (int, float)) else [
        float(t) for t in head_fraction]
    if not fractions or any(not 0 < t < 1 for t in fractions):
        raise ValueError(f"head_fraction must be a number in (0, 1) or a non-empty sequence of "
                         f"them, got {head_fraction!r}")
    scores, target = _validate(scores, target, ignore_index, "scores")
    c = scores.shape[1]
    if class_counts is None:
        rank = torch.arange(c)
    else:
        n = torch.as_tensor(class_counts, dtype=torch.float64).detach().cpu()
        if n.ndim != 1 or n.shape[0] != c or not bool(torch.isfinite(n).all()):
            raise ValueError(f"class_counts must hold {c} finite counts (one per class), got "
                             f"shape {tuple(n.shape)}")
        order = sorted(range(c), key=lambda k: (-float(n[k]), k))
        rank = torch.empty(c, dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(c)
    rank = rank.to(scores.device)
    true_rank = rank[target]
    pred_rank = rank[scores.argmax(1)]
    rates = []
    for h in fractions:
        border = int(c * h + 0.5)
        tail = true_rank >= border
        n_tail = int(tail.sum())
        rates.append(float((tail & (pred_rank < border)).sum()) / n_tail if n_tail else 0.0)
    return sum(rates) / len(rates)
