"""Shared plumbing of the ``logits`` kind: input validation, flattening and the reduction.

Every loss of kind ``logits`` is called as ``loss(logits[N, C, d1, ...], target)`` with
``target`` either integer class ids ``[N, d1, ...]`` (``ignore_index`` marks items to skip) or
class probabilities ``[N, C, d1, ...]`` (float, same shape as ``logits``) for the losses that
accept soft targets. :func:`prepare` validates the pair and flattens it to ``M = N·d1·...``
items of ``C`` scores; the loss computes one value per item; :func:`finish` applies the mask of
ignored items, the optional per-item weights and the ``reduction``, and restores the shape.

Precision: fp16/bf16 logits are computed in float32 and the loss is returned in float32
(:func:`losslab._core.compute_dtype`, as autocast does).

Probability targets are validated (:func:`losslab._core.check_probabilities`: finite,
non-negative, summing to 1 over classes within ``PROB_ATOL``). Class ids of any integer dtype
are accepted (converted to int64); bool targets are rejected.

Masked classes: a ``-inf`` logit (the usual vocabulary or class mask) gives that class
probability 0 for its row; :func:`masked_classes` marks them for the losses that form
statistics over classes (normalisers, means), which leave masked classes out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import check_float, check_probabilities, compute_dtype, reduce, require
from losslab._ops.numerics import safe_pow

__all__ = [
    "LogitsBatch",
    "class_vector",
    "comp_sum_items",
    "comp_sum_values",
    "finish",
    "gather_target",
    "log_softmax",
    "masked_classes",
    "one_minus_pt_power",
    "prepare",
    "target_log_prob",
]


@dataclass(frozen=True)
class LogitsBatch:
    """A validated, flattened ``(logits, target)`` pair.

    Attributes:
        logits: ``[M, C]`` scores in the compute dtype (float32 for half inputs).
        index: ``[M]`` target class ids with ignored items replaced by 0 (``None`` for soft
            targets).
        probs: ``[M, C]`` soft targets in the compute dtype (``None`` for class ids).
        valid: ``[M]`` bool, False for items whose target is ``ignore_index``.
        item_shape: ``(N, d1, ...)``, the shape of ``reduction="none"``.
        dtype: dtype of the input logits (the result is in the compute dtype, float32 for
            half inputs).
    """

    logits: Tensor
    index: Tensor | None
    probs: Tensor | None
    valid: Tensor
    item_shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def soft(self) -> bool:
        return self.probs is not None

    @property
    def class_ids(self) -> Tensor:
        """``index``, for the losses that take class ids only (``prepare(soft_ok=False)``)."""
        if self.index is None:
            raise ValueError("this loss needs class-id targets, got soft targets")
        return self.index


def _flatten_classes(x: Tensor) -> Tensor:
    """``[N, C, d1, ...]`` -> ``[N·d1·..., C]``."""
    if x.ndim == 2:
        return x
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def prepare(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    soft_ok: bool = False,
    min_classes: int = 1,
    spatial_ok: bool = True,
    id_range: int | None = None,
    loss: str = "this loss",
) -> LogitsBatch:
    """Validate ``(logits, target)`` and flatten them to ``M`` items of ``C`` scores.

    Raises ``ValueError`` for: non-float logits, logits with fewer than 2 dims or fewer than
    ``min_classes`` classes, a target of the wrong shape or dtype, float targets for a loss that
    does not accept soft targets (``soft_ok=False``), soft targets that are not distributions
    over classes (:func:`~losslab._core.check_probabilities`), bool targets, class ids outside
    ``[0, C)`` other than ``ignore_index`` (``[0, id_range)`` when given, e.g. 2 for
    single-logit binary inputs), and inputs on different devices. Class ids of any integer
    dtype are converted to int64.
    """
    check_float("logits", logits)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape [N, C, ...], got {tuple(logits.shape)}")
    if not spatial_ok and logits.ndim != 2:
        raise ValueError(f"{loss} needs logits of shape [N, C], got {tuple(logits.shape)}")
    c = logits.shape[1]
    if c < min_classes:
        raise ValueError(f"{loss} needs at least {min_classes} classes, got logits with C={c}")
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != logits.device:
        raise ValueError(
            f"logits and target must be on one device, got {logits.device} and {target.device}"
        )
    compute = compute_dtype(logits.dtype)
    flat = _flatten_classes(logits).to(compute)
    item_shape = (logits.shape[0], *logits.shape[2:])
    if target.is_floating_point():
        if not soft_ok:
            raise ValueError(
                f"{loss} needs integer class ids as target (shape {list(item_shape)}); "
                f"soft (float) targets are not supported, got dtype {target.dtype}"
            )
        if target.shape != logits.shape:
            raise ValueError(
                "soft target (class probabilities) must have the shape of logits "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        check_probabilities("target", target, dim=1)
        probs = _flatten_classes(target).to(compute)
        valid = torch.ones(probs.shape[0], dtype=torch.bool, device=logits.device)
        return LogitsBatch(flat, None, probs, valid, item_shape, logits.dtype)
    if target.dtype == torch.bool:
        raise ValueError("target must hold integer class ids, got a bool tensor (a mask?); "
                         "convert with .long() if it holds class ids")
    if target.is_complex():
        raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")
    if tuple(target.shape) != item_shape:
        raise ValueError(
            f"target (class ids) must have shape {list(item_shape)} for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    index = target.reshape(-1).long()
    valid = index != ignore_index
    top = c if id_range is None else id_range
    ok = ~valid | ((index >= 0) & (index < top))
    require(ok, lambda: f"target must hold class ids in [0, {top}) or ignore_index="
            f"{ignore_index}, got {sorted(set(index[~ok].tolist()))[:5]}")
    index = torch.where(valid, index, torch.zeros_like(index))
    return LogitsBatch(flat, index, None, valid, item_shape, logits.dtype)


def gather_target(values: Tensor, batch: LogitsBatch) -> Tensor:
    """``values[m, y_m]`` for class-id targets (``[M, C]`` -> ``[M]``)."""
    if batch.index is None:
        raise ValueError("gather_target needs class-id targets")
    return values.gather(1, batch.index.unsqueeze(1)).squeeze(1)


def target_log_prob(log_probs: Tensor, batch: LogitsBatch) -> Tensor:
    """Negative log-likelihood per item: ``-log p_y`` or ``-Σ_c y_c log p_c`` (soft targets)."""
    if batch.probs is not None:
        return -(batch.probs * log_probs).sum(1)
    return -gather_target(log_probs, batch)


def finish(
    values: Tensor,
    batch: LogitsBatch,
    reduction: str,
    *,
    weights: Tensor | None = None,
    count: Tensor | None = None,
) -> Tensor:
    """Mask ignored items, weight, reduce and restore the shape of per-item losses ``[M]``.

    ``"mean"`` divides by ``count`` (default: the sum of ``weights`` over non-ignored items
    if given, else the number of non-ignored items); ``"none"`` returns ``[N, d1, ...]`` with 0
    at ignored items. All items ignored -> 0 with zero gradient. The result is in the compute
    dtype of ``values`` (float32 for half inputs: it is not rounded back to the input dtype).
    """
    values = torch.where(batch.valid, values, torch.zeros_like(values))
    if weights is not None:
        weights = torch.where(batch.valid, weights, torch.zeros_like(weights))
    if count is None:
        count = weights.sum() if weights is not None else batch.valid.sum().to(values.dtype)
    out = reduce(values, reduction, weights=weights, count=count)
    if reduction == "none":
        out = out.reshape(batch.item_shape)
    return out


def class_vector(
    name: str, value: Sequence[float] | Tensor | None, batch: LogitsBatch
) -> Tensor | None:
    """A per-class hyperparameter (weights, priors, counts) as a ``[C]`` tensor on the logits'
    device and compute dtype, checked against the number of classes. Its values (finite,
    within range) are checked by the loss's declared rule
    (:class:`losslab._hparams.PerClass`)."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=batch.logits.dtype, device=batch.logits.device)
    if t.ndim != 1 or t.shape[0] != batch.num_classes:
        raise ValueError(
            f"{name} must have one value per class ([{batch.num_classes}]), got shape "
            f"{tuple(t.shape)}"
        )
    return t


def log_softmax(batch: LogitsBatch) -> Tensor:
    """``log_softmax`` of the flattened logits over classes."""
    return F.log_softmax(batch.logits, dim=1)


def masked_classes(scores: Tensor) -> Tensor:
    """``[M, C]`` bool: the masked classes of each row, those whose logit is ``-inf``.

    A masked class has probability 0; the losses that form a statistic over the classes of a
    row (the normaliser of NCE/NFL, the mean and deviation of Z-loss, the score normalisation
    of LDR-KL) leave it out, as if the row had only its other classes. NaN is not a mask (it
    propagates).
    """
    return torch.isneginf(scores)


# --------------------------------------------------------------------------------------------
# Functions of log p shared by the classification and robust families
# --------------------------------------------------------------------------------------------


def one_minus_pt_power(logp: Tensor, gamma: float) -> Tensor:
    r""":math:`(1 - p)^\gamma` from :math:`\log p`, computed as ``-expm1(log p)``.

    Where :math:`p` rounds to 1 and :math:`0 < \gamma < 1`, the derivative of
    :math:`x^\gamma` at 0 is infinite; there the factor is 0 with a zero gradient
    (:func:`~losslab._ops.numerics.safe_pow`; the loss term it multiplies has a zero derivative
    there too), so gradients stay finite. ``gamma=0`` gives ones.
    """
    return safe_pow(-torch.expm1(logp), gamma)


#: Largest exponent evaluated exactly in the tau < 1 branch of comp-sum; beyond it exp is
#: continued linearly (value and slope continuous), so the loss stays finite with a positive
#: gradient. exp(60) ~ 1.1e26 is far from float32 overflow (3.4e38); for float16 inputs
#: (max 65504) the cap is 5 (slope e^5 ~ 148), so the gradient stays finite in float16.
COMP_SUM_MAX_EXPONENT = 60.0
COMP_SUM_MAX_EXPONENT_FP16 = 5.0


def comp_sum_values(logpt: Tensor, tau: float, *, max_exponent: float = COMP_SUM_MAX_EXPONENT
                    ) -> Tensor:
    r"""The comp-sum loss as a function of :math:`\log p_y`.

    .. math::
        \ell_\tau = \frac{1 - p_y^{\tau - 1}}{\tau - 1}
        = -\frac{\operatorname{expm1}((\tau-1)\log p_y)}{\tau - 1} \quad (\tau \ne 1),
        \qquad \ell_1 = -\log p_y

    For :math:`\tau < 1` the exponent :math:`u = (1-\tau)(-\log p_y)` is positive; above
    ``u = max_exponent`` (60; 5 for float16 inputs) ``exp`` is continued by its tangent, so an
    extremely wrong prediction gives a large finite loss with a finite positive gradient
    instead of ``inf``. ``1 - p_y`` (``tau=2``) is ``-expm1(log p_y)``, accurate for ``p_y``
    near 1.
    """
    if tau == 1.0:
        return -logpt
    if tau > 1.0:
        return -torch.expm1((tau - 1.0) * logpt) / (tau - 1.0)
    u = (1.0 - tau) * (-logpt)
    top = max_exponent
    expm1_u = torch.expm1(u.clamp(max=top)) + math.exp(top) * (u - top).clamp(min=0)
    return expm1_u / (1.0 - tau)


def comp_sum_items(
    logits: Tensor, target: Tensor, *, tau: float, scale: float, ignore_index: int,
    reduction: str, loss: str,
) -> Tensor:
    """``scale`` times the comp-sum loss of every item (class-id targets), reduced: the body of
    ``comp_sum``, ``gce`` (``tau = 1 + q``) and ``mae`` (``tau = 2``, ``scale = 2``). The
    exponent cap is :data:`COMP_SUM_MAX_EXPONENT_FP16` for float16 inputs."""
    batch = prepare(logits, target, ignore_index=ignore_index, loss=loss)
    logpt = gather_target(log_softmax(batch), batch)
    top = COMP_SUM_MAX_EXPONENT_FP16 if batch.dtype == torch.float16 else COMP_SUM_MAX_EXPONENT
    return finish(scale * comp_sum_values(logpt, tau, max_exponent=top), batch, reduction)
