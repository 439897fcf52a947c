"""Learning from aggregate labels: bag-level, instance-level and interpolated losses.

Kind ``bags``: ``loss(pred[N, ...], bag_index[N], bag_target[B, ...])``. Instance ``i`` belongs
to bag ``bag_index[i]``; only the bag's aggregate response ``bag_target[b]`` (the mean of its
instances' labels, or the label proportions of the bag) is observed.

Javanmard, Chen, Mirrokni, Badanidiyuru, Fu, "Learning from Aggregate responses: Instance
Level versus Bag Level Loss Functions", ICLR 2024, arXiv 2401.11081:

* bag level:      ``L_bag = sum_a l(ybar_a, mean_{i in a} f(x_i))``
* instance level: ``L_ins = sum_a mean_{i in a} l(ybar_a, f(x_i))``
* for the squared loss, exactly ``L_ins = L_bag + R`` with ``R`` the within-bag variance of the
  predictions, so the instance loss is a regularised bag loss; the interpolating estimator
  minimises ``L_bag + rho * R`` = ``(1 - rho) L_bag + rho L_ins`` (``rho`` in [0, 1]).

Bases: ``"mse"`` (regression; ``pred`` and ``bag_target`` of one trailing shape), ``"bce"``
(binary: ``pred`` are logits, ``bag_target`` the fraction of positives; the bag prediction is
the mean *probability*), ``"ce"`` (multi-class learning from label proportions: ``pred`` are
logits ``[N, C]``, ``bag_target`` proportions ``[B, C]``; the bag prediction is the mean
predicted distribution). Losses are computed per bag; "mean" averages over bags.

Bad input: ``bag_index`` may have any integer dtype (converted to int64; bool is rejected: it is
a mask, not bag ids); ``"bce"`` bag targets must be fractions in ``[0, 1]`` and ``"ce"`` bag
targets label proportions (non-negative rows summing to 1 within ``losslab._core.PROB_ATOL``),
else ``ValueError``. A batch without bags is a ``ValueError`` (every bag needs an instance). No
degenerate batch is declared: one bag of every instance, or one instance per bag (where the bag
and instance losses coincide), are ordinary batches with a positive loss. Half inputs are
computed, and returned, in float32 (:func:`losslab._core.compute_dtype`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_float,
    check_labels,
    check_probabilities,
    check_same_device,
    compute_dtype,
    reduce,
    require,
)
from losslab._hparams import Choice, Int, PerClass, Real, hparams
from losslab.registry import register

__all__ = [
    "BagLevelLoss",
    "EasyLLPLoss",
    "InstanceLevelLoss",
    "InterpolatedAggregateLoss",
    "ProportionLoss",
    "bag_level_loss",
    "bag_means",
    "easyllp_loss",
    "instance_level_loss",
    "interpolated_aggregate_loss",
    "laplace_bag_targets",
    "proportion_loss",
    "random_bags",
]

PAPER = "Learning from Aggregate responses: Instance Level versus Bag Level Loss Functions"
ARXIV = "2401.11081"
Base = Literal["mse", "bce", "ce"]
BASES: tuple[str, ...] = ("mse", "bce", "ce")


def _bag_sizes(bag_index: Tensor, n_bags: int) -> Tensor:
    """``[n_bags]`` int64 instance counts of the bags in ``[0, n_bags)``: ``torch.bincount``
    with a static output size (bincount's size depends on the values, a graph break under
    ``torch.compile``)."""
    ones = torch.ones_like(bag_index)
    return torch.zeros(n_bags, dtype=bag_index.dtype, device=bag_index.device).index_add_(
        0, bag_index, ones)


def bag_means(values: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Mean of ``values[N, ...]`` within each bag: ``[n_bags, ...]`` (O(N), no padding)."""
    sums = torch.zeros((n_bags, *values.shape[1:]), dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, bag_index, values)
    counts = _bag_sizes(bag_index, n_bags).to(values.dtype)
    return sums / counts.reshape(-1, *([1] * (values.ndim - 1)))


_check_aggregate = hparams(base=Choice(*BASES))
_check_interpolated = _check_aggregate | hparams(rho=Real(ge=0, le=1))
_check_laplace = hparams(epsilon=Real(gt=0), bound=Real(gt=0))
_check_random_bags = hparams(n=Int(ge=1), bag_size=Int(ge=1))


def _validate(pred: Tensor, bag_index: Tensor, bag_target: Tensor, base: str) -> Tensor:
    """The inputs of the ``bags`` kind (every bag non-empty, shapes consistent with ``base``,
    bag targets in the range of ``base``); returns ``bag_index`` as int64."""
    check_float("pred", pred)
    check_float("bag_target", bag_target)
    if pred.ndim == 0:
        raise ValueError("pred must have one row per instance, shape [N, ...], got a scalar")
    bag_index = check_labels("bag_index", bag_index, pred.shape[0], of="pred")
    check_same_device(pred=pred, bag_index=bag_index, bag_target=bag_target)
    n_bags = bag_target.shape[0] if bag_target.ndim else 0
    if n_bags == 0:
        raise ValueError("bag_target must have at least one bag, shape [B, ...]")
    # data checks through require: async asserts under torch.compile, no graph break
    require((bag_index >= 0) & (bag_index < n_bags), lambda: (
        f"bag_index must be in [0, {n_bags}) (the number of bags in bag_target), got "
        f"values in [{int(bag_index.min())}, {int(bag_index.max())}]"))
    counts = _bag_sizes(bag_index, n_bags)
    require(counts > 0, lambda: (
        "every bag needs at least one instance; bags "
        f"{torch.nonzero(counts == 0).flatten()[:5].tolist()} have none"))
    if base == "ce":
        if pred.ndim != 2 or bag_target.shape != (n_bags, pred.shape[1]):
            raise ValueError(
                f"base='ce' needs pred [N, C] logits and bag_target [B, C] proportions, got "
                f"{tuple(pred.shape)} and {tuple(bag_target.shape)}"
            )
        check_probabilities("bag_target", bag_target, dim=1)
    elif pred.shape[1:] != bag_target.shape[1:]:
        raise ValueError(
            f"pred[N, ...] and bag_target[B, ...] must share trailing dims, got "
            f"{tuple(pred.shape)} and {tuple(bag_target.shape)}"
        )
    elif base == "bce":
        t = bag_target.detach()
        ok = (t >= 0) & (t <= 1)  # NaN fails too
        require(ok, lambda: ("base='bce' needs bag_target fractions of positives in [0, 1], "
                             f"got {t[~ok].flatten()[:5].tolist()}"))
    return bag_index


def _per_bag(pred: Tensor, bag_index: Tensor, bag_target: Tensor, base: str, level: str
             ) -> Tensor:
    """Per-bag loss values ``[B]`` at ``level`` ("bag" or "instance"), in the compute dtype."""
    dtype = compute_dtype(pred.dtype)
    pred, bag_target = pred.to(dtype), bag_target.to(dtype)
    n_bags = bag_target.shape[0]
    if base == "mse":
        if level == "bag":
            diff = bag_target - bag_means(pred, bag_index, n_bags)
            return diff.pow(2).reshape(n_bags, -1).sum(1)
        per = (bag_target[bag_index] - pred).pow(2).reshape(pred.shape[0], -1).sum(1)
        return bag_means(per, bag_index, n_bags)
    if base == "bce":
        if level == "bag":
            p = bag_means(torch.sigmoid(pred), bag_index, n_bags)
            # log-space where it matters: log p from logsigmoid is not available for a mean of
            # probabilities, so clamp p away from {0, 1} at the dtype's resolution.
            tiny = torch.finfo(dtype).eps
            p = p.clamp(tiny, 1 - tiny)
            per_bag = -(bag_target * p.log() + (1 - bag_target) * (-p).log1p())
            return per_bag.reshape(n_bags, -1).sum(1)
        t = bag_target[bag_index]
        per = F.binary_cross_entropy_with_logits(pred, t, reduction="none")
        return bag_means(per.reshape(pred.shape[0], -1).sum(1), bag_index, n_bags)
    # "ce": learning from label proportions. A class of proportion 0 contributes 0 (0 log 0 =
    # 0), also where it is masked (a -inf logit): finite value and gradient.
    log_p = F.log_softmax(pred, dim=1)
    if level == "bag":
        # log of the bag's mean distribution, stably: a per-bag, per-class max shift (0 for a
        # class masked in every instance of the bag, where the max is -inf).
        index = bag_index.unsqueeze(1).expand_as(log_p)
        shift = torch.full((n_bags, log_p.shape[1]), float("-inf"), dtype=dtype,
                           device=pred.device)
        shift = shift.scatter_reduce(0, index, log_p.detach(), reduce="amax").detach()
        shift = torch.where(shift == float("-inf"), torch.zeros_like(shift), shift)
        mean_p = bag_means((log_p - shift[bag_index]).exp(), bag_index, n_bags)
        used = bag_target > 0
        log_mean = torch.where(used, mean_p, torch.ones_like(mean_p)).log() + shift
        return -(bag_target * torch.where(used, log_mean, torch.zeros_like(log_mean))).sum(1)
    t = bag_target[bag_index]
    per = -(t * torch.where(t > 0, log_p, torch.zeros_like(log_p))).sum(1)
    return bag_means(per, bag_index, n_bags)


def bag_level_loss(
    pred: Tensor,
    bag_index: Tensor,
    bag_target: Tensor,
    *,
    base: Base = "mse",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Bag-level loss: the base loss between each bag's response and its mean prediction.

    .. math::
        L_{bag} = \sum_a \ell\Big(\bar y_a,\; \frac{1}{|a|}\sum_{i \in a} f(x_i)\Big)

    Unbiased for the squared loss, but with higher variance than the instance-level loss.

    Args:
        pred: ``[N, ...]`` predictions (``"mse"``), logits (``"bce"``) or ``[N, C]`` logits
            (``"ce"``).
        bag_index: ``[N]`` bag of each instance, in ``[0, B)``; every bag non-empty.
        bag_target: ``[B, ...]`` aggregate responses (bag means / proportions).
        base: ``"mse"`` (default), ``"bce"`` or ``"ce"`` (see the module docstring).
        reduction: ``"mean"`` over bags, ``"sum"``, or ``"none"`` (``[B]``).

    Paper: Javanmard et al., "Learning from Aggregate responses: Instance Level versus Bag
    Level Loss Functions", arXiv 2401.11081.
    """
    _check_aggregate(base=base)
    bag_index = _validate(pred, bag_index, bag_target, base)
    return reduce(_per_bag(pred, bag_index, bag_target, base, "bag"), reduction)


@register(
    "bag_level", family="aggregate-labels", kind="bags", paper=PAPER, arxiv=ARXIV,
    summary="sum_a l(ybar_a, mean_{i in a} f(x_i))",
    reduction="per bag",
)
class BagLevelLoss(LossModule, function=bag_level_loss, check=_check_aggregate):
    """Module form of :func:`bag_level_loss`."""


def instance_level_loss(
    pred: Tensor,
    bag_index: Tensor,
    bag_target: Tensor,
    *,
    base: Base = "mse",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Instance-level loss: every instance is fitted to its bag's response.

    .. math::
        L_{ins} = \sum_a \frac{1}{|a|} \sum_{i \in a} \ell(\bar y_a, f(x_i))

    For the squared loss, ``L_ins = L_bag + sum_a Var_{i in a} f(x_i)``: a bag loss plus a
    within-bag variance regulariser (biased, lower variance).

    Args:
        pred, bag_index, bag_target, base: as :func:`bag_level_loss`.
        reduction: ``"mean"`` over bags, ``"sum"``, or ``"none"`` (``[B]``, per bag).

    Paper: Javanmard et al., arXiv 2401.11081.
    """
    _check_aggregate(base=base)
    bag_index = _validate(pred, bag_index, bag_target, base)
    per = _per_bag(pred, bag_index, bag_target, base, "instance")
    return reduce(per, reduction)


@register(
    "instance_level", family="aggregate-labels", kind="bags", paper=PAPER, arxiv=ARXIV,
    summary="sum_a mean_{i in a} l(ybar_a, f(x_i))",
    reduction="per bag",
)
class InstanceLevelLoss(LossModule, function=instance_level_loss, check=_check_aggregate):
    """Module form of :func:`instance_level_loss`."""


def interpolated_aggregate_loss(
    pred: Tensor,
    bag_index: Tensor,
    bag_target: Tensor,
    *,
    rho: float = 0.5,
    base: Base = "mse",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""The interpolating estimator between bag- and instance-level losses.

    .. math::
        L_\rho = (1 - \rho)\, L_{bag} + \rho\, L_{ins}

    For the squared loss this is exactly ``L_bag + rho * R`` with ``R`` the within-bag variance
    of the predictions (the paper's regularised form); for ``"bce"``/``"ce"`` the convex
    combination is the natural generalisation. ``rho = 0`` is the bag-level and ``rho = 1`` the
    instance-level loss; the paper shows the best ``rho`` depends on bag size, signal-to-noise
    ratio and overparametrisation (default 0.5, an uninformed middle).

    Args:
        pred, bag_index, bag_target, base: as :func:`bag_level_loss`.
        rho: interpolation weight in ``[0, 1]``.
        reduction: ``"mean"`` over bags, ``"sum"``, or ``"none"`` (``[B]``).

    Paper: Javanmard et al., arXiv 2401.11081.
    """
    _check_interpolated(rho=rho, base=base)
    bag_index = _validate(pred, bag_index, bag_target, base)
    per = (1 - rho) * _per_bag(pred, bag_index, bag_target, base, "bag") + rho * _per_bag(
        pred, bag_index, bag_target, base, "instance"
    )
    return reduce(per, reduction)


@register(
    "interpolated_aggregate", family="aggregate-labels", kind="bags", paper=PAPER, arxiv=ARXIV,
    summary="(1 - rho) L_bag + rho L_ins (= L_bag + rho * within-bag variance for mse)",
    reduction="per bag",
)
class InterpolatedAggregateLoss(LossModule, function=interpolated_aggregate_loss,
                                check=_check_interpolated):
    """Module form of :func:`interpolated_aggregate_loss`."""


# --------------------------------------------------------------------------------------------
# Learning from label proportions: EasyLLP and the proportion (KL) loss
# --------------------------------------------------------------------------------------------

LLPBase = Literal["bce", "ce"]
_check_easyllp = hparams(base=Choice("bce", "ce"),
                         prior=PerClass(ge=0, scalar=Real(ge=0, le=1), optional=True))
_check_proportion = hparams(base=Choice("bce", "ce"))


def _prior(bag_target: Tensor, bag_index: Tensor, prior: Any, base: str) -> Tensor:
    """The class prior ``p``: given, or the batch's label proportion (bag targets weighted by
    bag size); ``[]`` for ``"bce"`` targets ``[B, ...]``, ``[C]`` for ``"ce"``."""
    t = bag_target.detach()
    if prior is None:
        counts = _bag_sizes(bag_index, t.shape[0]).to(t.dtype)
        w = counts.reshape(-1, *([1] * (t.ndim - 1)))
        return (t * w).sum(0) / counts.sum()
    p = torch.as_tensor(prior, dtype=t.dtype, device=t.device)
    if base == "ce":
        if p.ndim != 1 or p.shape[0] != t.shape[1]:
            raise ValueError(f"prior must have one entry per class ({t.shape[1]}) for "
                             f"base='ce', got shape {tuple(p.shape)}")
        return p
    if p.ndim != 0:
        raise ValueError(f"prior must be a number for base={base!r}, got shape {tuple(p.shape)}")
    return p


def easyllp_loss(
    pred: Tensor,
    bag_index: Tensor,
    bag_target: Tensor,
    *,
    base: LLPBase = "ce",
    prior: float | Sequence[float] | Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""EasyLLP: the instance loss on debiased soft labels built from the bag proportions.

    An instance of a bag of size :math:`k` with label proportion :math:`\alpha` gets the soft
    label :math:`\tilde y = k(\alpha - p) + p` (:math:`p` the class prior), and the loss

    .. math::
        \tilde\ell(h(x)) = \tilde y\, \ell(h(x), 1) + (1 - \tilde y)\, \ell(h(x), 0)
        \quad\text{(binary; multi-class: } -\textstyle\sum_c \tilde y_c \log h_c(x))

    For bags drawn i.i.d. from the data distribution, :math:`E[\tilde y \mid x, y] = y`, so the
    loss is an unbiased estimate of the instance-level loss with the true labels (the paper's
    debiasing; the soft labels may leave ``[0, 1]``). Per bag, the instances' losses are
    averaged.

    Args:
        pred: ``[N, ...]`` logits (``"bce"``) or ``[N, C]`` logits (``"ce"``).
        bag_index: ``[N]`` bag of each instance, in ``[0, B)``; every bag non-empty.
        bag_target: ``[B, ...]`` fractions of positives (``"bce"``) or ``[B, C]`` label
            proportions (``"ce"``).
        base: ``"ce"`` (default, multi-class) or ``"bce"``.
        prior: the class prior :math:`p` (a number for ``"bce"``, one per class for ``"ce"``);
            default None: the batch's label proportion (bag targets weighted by bag size).
        reduction: ``"mean"`` over bags, ``"sum"``, or ``"none"`` (``[B]``).

    Returns:
        The loss, float32 for half inputs.

    Formula as recalled from the paper (the soft label ``k(alpha - p) + p``), checked by its
    stated property (unbiasedness over i.i.d. bags, tested exactly); not verified line by line
    against the paper text.

    Paper: Busa-Fekete, Choi, Dick, Gentile, Munoz Medina, "Easy Learning from Label
    Proportions", arXiv 2302.03115.
    """
    _check_easyllp(base=base, prior=prior)
    bag_index = _validate(pred, bag_index, bag_target, base)
    dtype = compute_dtype(pred.dtype)
    x, t = pred.to(dtype), bag_target.to(dtype)
    n_bags = t.shape[0]
    k = _bag_sizes(bag_index, n_bags).to(dtype)[bag_index]
    p = _prior(t, bag_index, prior, base).to(dtype)
    k = k.reshape(-1, *([1] * (x.ndim - 1)))
    soft = k * (t[bag_index] - p) + p
    if base == "bce":
        # soft * softplus(-x) + (1 - soft) * softplus(x): l(h, 1) and l(h, 0) of the logistic
        per = soft * F.softplus(-x) + (1 - soft) * F.softplus(x)
        per = per.reshape(x.shape[0], -1).sum(1)
    else:
        log_p = F.log_softmax(x, dim=1)
        # a masked class (-inf logit) contributes 0 where its soft label is 0
        per = -torch.where(soft != 0, soft * log_p, torch.zeros_like(log_p)).sum(1)
    return reduce(bag_means(per, bag_index, n_bags), reduction)


@register(
    "easyllp", family="aggregate-labels", kind="bags", paper="Easy Learning from Label "
    "Proportions", arxiv="2302.03115",
    summary="instance loss on soft labels k (alpha_bag - p) + p (unbiased over i.i.d. bags)",
    reduction="per bag",
)
class EasyLLPLoss(LossModule, function=easyllp_loss, check=_check_easyllp):
    """Module form of :func:`easyllp_loss`."""


def proportion_loss(
    pred: Tensor,
    bag_index: Tensor,
    bag_target: Tensor,
    *,
    base: LLPBase = "ce",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Proportion loss of learning from label proportions: the KL divergence from each bag's
    label proportion to its mean predicted distribution.

    .. math::
        L = \sum_a \mathrm{KL}\big(\alpha_a \,\Vert\, \bar h_a\big)
          = \sum_a \sum_c \alpha_{a,c} \log\frac{\alpha_{a,c}}{\bar h_{a,c}},\qquad
        \bar h_a = \frac{1}{|a|}\sum_{i \in a} \mathrm{softmax}(f(x_i))

    (binary ``"bce"``: the two-class KL of the fraction of positives against the mean
    sigmoid). It is the bag-level cross-entropy (:func:`bag_level_loss`) minus the entropy of
    the proportions, so it is 0 exactly when the bag's mean prediction matches the proportion.

    Args:
        pred, bag_index, bag_target: as :func:`easyllp_loss`.
        base: ``"ce"`` (default) or ``"bce"``.
        reduction: ``"mean"`` over bags, ``"sum"``, or ``"none"`` (``[B]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Ardehaly, Culotta, "Co-training for Demographic Classification Using Deep Learning
    from Label Proportions" (DLLP), arXiv 1709.04108.
    """
    _check_proportion(base=base)
    bag_index = _validate(pred, bag_index, bag_target, base)
    per = _per_bag(pred, bag_index, bag_target, base, "bag")
    t = bag_target.to(compute_dtype(pred.dtype))

    def neg_entropy(q: Tensor) -> Tensor:
        return torch.where(q > 0, q * torch.where(q > 0, q, torch.ones_like(q)).log(),
                           torch.zeros_like(q))

    if base == "bce":
        h = (neg_entropy(t) + neg_entropy(1 - t)).reshape(t.shape[0], -1).sum(1)
    else:
        h = neg_entropy(t).sum(1)
    return reduce(per + h, reduction)


@register(
    "proportion", family="aggregate-labels", kind="bags", paper="Co-training for Demographic "
    "Classification Using Deep Learning from Label Proportions", arxiv="1709.04108",
    summary="sum_a KL(alpha_a || mean_{i in a} softmax(f(x_i)))",
    reduction="per bag",
)
class ProportionLoss(LossModule, function=proportion_loss, check=_check_proportion):
    """Module form of :func:`proportion_loss`."""


def random_bags(n: int, bag_size: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Random disjoint bags of equal size, as in the paper: ``bag_index[n]`` (the last bag
    holds the remainder when ``bag_size`` does not divide ``n``)."""
    _check_random_bags(n=n, bag_size=bag_size)
    perm = torch.randperm(n, generator=generator)
    index = torch.empty(n, dtype=torch.long)
    index[perm] = torch.arange(n) // bag_size
    return index


def laplace_bag_targets(
    labels: Tensor,
    bag_index: Tensor,
    *,
    epsilon: float,
    bound: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Label-differentially-private bag responses (the paper's mechanism).

    Responses are truncated to ``[-bound, bound]``, averaged per bag, and each bag mean gets
    Laplace noise of scale ``sensitivity / epsilon`` with ``sensitivity = 2 * bound / k`` for a
    bag of ``k`` instances, which gives ``epsilon``-label-DP.
    """
    _check_laplace(epsilon=epsilon, bound=bound)
    check_float("labels", labels)
    if labels.ndim == 0:
        raise ValueError("labels must have one row per instance, shape [N, ...], got a scalar")
    bag_index = check_labels("bag_index", bag_index, labels.shape[0], of="labels")
    n_bags = int(bag_index.max()) + 1
    means = bag_means(labels.clamp(-bound, bound), bag_index, n_bags)
    k = torch.bincount(bag_index, minlength=n_bags).to(means.dtype)
    scale = (2 * bound / k / epsilon).reshape(-1, *([1] * (means.ndim - 1)))
    u = torch.rand(means.shape, generator=generator, dtype=means.dtype) - 0.5
    noise = -scale * u.sign() * torch.log1p(-2 * u.abs())
    return means + noise
