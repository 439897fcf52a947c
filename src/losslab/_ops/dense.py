"""Shared plumbing of the ``dense`` kind (segmentation): grouped softmax batches, per-class
soft counts, the active classes of a group and the reduction over groups.

A dense loss is called as ``loss(logits[N, C, *spatial], target)`` with ``target`` integer
class ids ``[N, *spatial]`` (``ignore_index`` marks pixels to leave out) or soft labels
``[N, C, *spatial]``. :func:`prepare_dense` validates the pair, applies the softmax and groups
the pixels per image (``per_image=True``) or over the whole batch; :func:`soft_counts` gives the
per-group, per-class counts; the loss forms a per-class value; :func:`reduce_groups` averages it
over the active classes (:func:`active_classes`) of each group and applies the ``reduction``.
See :mod:`losslab.losses.segmentation` for the conventions.

Faults: soft targets must be distributions over the class dim
(:func:`losslab._core.check_probabilities`); a NaN logit at a counted pixel makes its group's
loss NaN (:func:`safe_ratio` treats only a zero denominator as an empty class), while ignored
pixels are left out entirely (their logits are not read, so a NaN there changes nothing and
gets a zero gradient); an empty batch (``N = 0``, or no pixels) gives 0 with zero gradient.
Half inputs are computed, and returned, in float32 (:func:`losslab._core.compute_dtype`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    PROB_ATOL,
    check_float,
    check_probabilities,
    compute_dtype,
    reduce,
    require,
)
from losslab._ops.logits import prepare

__all__ = [
    "CLASS_MODES",
    "Classes",
    "DenseBatch",
    "active_classes",
    "check_unit_interval",
    "foreground",
    "prepare_dense",
    "reduce_groups",
    "safe_ratio",
    "soft_counts",
    "to_spatial",
]

#: Which classes a group's loss averages over: every class, or those with target mass.
Classes = Literal["all", "present"]
CLASS_MODES: tuple[str, ...] = ("all", "present")


@dataclass(frozen=True)
class DenseBatch:
    """Softmax prediction and target of a dense batch, grouped for aggregation.

    Attributes:
        probs: ``[G, C, S]`` softmax probabilities, 0 at ignored pixels (compute dtype).
        target: ``[G, C, S]`` one-hot (hard labels) or soft labels, 0 at ignored pixels.
        valid: ``[G, S]`` bool, False at ignored pixels.
        soft: the target holds soft labels (float input).
        binary: single-logit input (``C = 1``): ``probs`` is ``sigmoid(logits)``.
        scores: ``[G, C, S]`` logits in the compute dtype, 0 at ignored pixels (for the
            cross-entropy terms of compound losses).
        shape: ``(N, *spatial)`` of the input.
    """

    probs: Tensor
    target: Tensor
    valid: Tensor
    soft: bool
    binary: bool = False
    scores: Tensor | None = None
    shape: tuple[int, ...] = ()


def prepare_dense(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int,
    per_image: bool,
    soft_ok: bool = True,
    loss: str,
) -> DenseBatch:
    """Validate ``(logits[N, C, *spatial], target)``, apply softmax and group the pixels.

    Raises ``ValueError`` for logits without a spatial dim, fewer than 2 classes, soft targets
    that are not distributions over dim 1 (:func:`losslab._core.check_probabilities`), and
    every input error of :func:`losslab._ops.logits.prepare`. Logits of ignored pixels are
    replaced by 0 before the softmax (they do not reach the loss, nor its gradient).
    """
    if isinstance(logits, Tensor) and logits.ndim < 3:
        raise ValueError(
            f"{loss} needs logits of shape [N, C, *spatial] (at least one spatial dim), "
            f"got {tuple(logits.shape)}"
        )
    if isinstance(logits, Tensor) and logits.shape[1] == 1:
        return _prepare_binary(logits, target, ignore_index=ignore_index, per_image=per_image,
                               soft_ok=soft_ok, loss=loss)
    b = prepare(logits, target, ignore_index=ignore_index, soft_ok=soft_ok, min_classes=2,
                loss=loss)
    if b.probs is not None:
        check_probabilities("target", target, dim=1)  # in its own dtype (bf16 tolerance)
    c = logits.shape[1]
    valid = b.valid.unsqueeze(1)
    scores = torch.where(valid, b.logits, torch.zeros_like(b.logits))
    probs = F.softmax(scores, dim=1)  # [M, C], M = N·S in (image, pixel) order
    if b.probs is not None:
        tgt = b.probs
    else:
        tgt = F.one_hot(b.class_ids, c).to(probs.dtype)
    probs = torch.where(valid, probs, torch.zeros_like(probs))
    tgt = torch.where(valid, tgt, torch.zeros_like(tgt))
    return _grouped(logits, scores, probs, tgt, b.valid, soft=b.probs is not None,
                    binary=False, per_image=per_image)


def _grouped(logits: Tensor, scores: Tensor, probs: Tensor, tgt: Tensor, valid: Tensor, *,
             soft: bool, binary: bool, per_image: bool) -> DenseBatch:
    """``[M, C]`` rows in (image, pixel) order -> ``[G, C, S]`` groups."""
    n, c = logits.shape[0], logits.shape[1]
    groups = n if per_image else 1
    size = math.prod(logits.shape[2:]) * (1 if per_image else n)  # pixels per group (N = 0)

    def group(x: Tensor) -> Tensor:
        return x.reshape(groups, size, c).transpose(1, 2)

    shape = (n, *logits.shape[2:])
    return DenseBatch(group(probs), group(tgt), valid.reshape(groups, size), soft, binary,
                      group(scores), shape)


def _prepare_binary(logits: Tensor, target: Tensor, *, ignore_index: int, per_image: bool,
                    soft_ok: bool, loss: str) -> DenseBatch:
    """Single-logit input: ``p = sigmoid(logits)``; class ids 0/1 or probabilities in [0, 1]
    of shape ``[N, 1, *spatial]``."""
    if isinstance(target, Tensor) and target.is_floating_point():
        if not soft_ok:
            raise ValueError(
                f"{loss} needs integer class ids (0/1) as target; soft (float) targets are "
                f"not supported, got dtype {target.dtype}")
        if target.shape != logits.shape:
            raise ValueError(
                "soft binary target (foreground probabilities) must have the shape of logits "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}")
        check_float("logits", logits)
        check_unit_interval("target", target)
        if target.device != logits.device:
            raise ValueError(
                f"logits and target must be on one device, got {logits.device} and "
                f"{target.device}")
        compute = compute_dtype(logits.dtype)
        scores = logits.to(compute).movedim(1, -1).reshape(-1, 1)
        tgt = target.to(compute).movedim(1, -1).reshape(-1, 1)
        valid = torch.ones(scores.shape[0], dtype=torch.bool, device=logits.device)
        probs = torch.sigmoid(scores)
        return _grouped(logits, scores, probs, tgt, valid, soft=True, binary=True,
                        per_image=per_image)
    b = prepare(logits, target, ignore_index=ignore_index, id_range=2, loss=loss)
    valid = b.valid.unsqueeze(1)
    scores = torch.where(valid, b.logits, torch.zeros_like(b.logits))
    probs = torch.where(valid, torch.sigmoid(scores), torch.zeros_like(scores))
    tgt = torch.where(valid, (b.class_ids == 1).unsqueeze(1).to(probs.dtype),
                      torch.zeros_like(probs))
    return _grouped(logits, scores, probs, tgt, b.valid, soft=False, binary=True,
                    per_image=per_image)


def check_unit_interval(name: str, x: Tensor) -> None:
    """Raise a ``ValueError`` unless ``x`` is finite and within ``[0, 1]`` (up to
    :data:`losslab._core.PROB_ATOL`); through :func:`losslab._require.require`, so the check
    is an asynchronous assert under ``torch.compile`` (no graph break)."""
    if x.numel() == 0:
        return
    d = x.detach()
    require(torch.isfinite(d),
            f"{name} (probabilities) must be finite, got NaN or inf entries")
    require((d >= -PROB_ATOL) & (d <= 1 + PROB_ATOL),
            lambda: f"{name} (foreground probabilities) must lie in [0, 1], got values "
                    f"in [{float(d.min()):.4g}, {float(d.max()):.4g}]")


def soft_counts(
    batch: DenseBatch, *, metric: bool, squared: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group, per-class ``(TP, P, Y)``, each ``[G, C]``.

    ``metric=False``: :math:`TP = \\sum p y`; ``metric=True``: the L1 decomposition
    :math:`TP = (\\|p\\|_1 + \\|y\\|_1 - \\|p - y\\|_1)/2` of arXiv 2302.05666. ``squared``:
    cardinalities :math:`\\sum p^2`, :math:`\\sum y^2` (V-Net), with :math:`TP = \\sum p y`.
    """
    p, y = batch.probs, batch.target
    if squared:
        return (p * y).sum(2), (p * p).sum(2), (y * y).sum(2)
    pc, yc = p.sum(2), y.sum(2)
    if metric:
        tp = (pc + yc - (p - y).abs().sum(2)) / 2
    else:
        tp = (p * y).sum(2)
    return tp, pc, yc


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, and 1 where ``den == 0`` (an empty class: nothing to get wrong), with
    finite gradients everywhere. A NaN denominator is not an empty class: the ratio is NaN."""
    empty = den == 0
    return torch.where(empty, torch.ones_like(num),
                       num / torch.where(empty, torch.ones_like(den), den))


def active_classes(batch: DenseBatch, y_mass: Tensor, classes: str) -> Tensor:
    """``[G, C]`` bool: the classes that count in each group: every class of a group with a
    non-ignored pixel (``classes="all"``), or those with target mass ``y_mass > 0``
    (``"present"``)."""
    has_pixels = batch.valid.any(1, keepdim=True)
    if classes == "all":
        return has_pixels.expand_as(y_mass)
    return (y_mass > 0) & has_pixels


def reduce_groups(per_class: Tensor, active: Tensor, reduction: str, per_image: bool) -> Tensor:
    """Mean over active classes per group, then the ``reduction`` over groups (``per_image``:
    ``"none"`` gives ``[N]``) or over classes (batch aggregation: ``"none"`` gives ``[C]``, 0
    for inactive classes). Groups or classes that do not count are left out of ``"mean"``; none
    at all gives 0 with zero gradient. The result has the compute dtype (float32 for half
    inputs)."""
    per_class = torch.where(active, per_class, torch.zeros_like(per_class))
    act = active.to(per_class.dtype)
    if per_image:
        n_act = act.sum(1)
        values = per_class.sum(1) / n_act.clamp_min(1)
        out = reduce(values, reduction, count=(n_act > 0).to(values.dtype).sum())
    else:
        out = reduce(per_class[0], reduction, count=act.sum())
    return out


def to_spatial(batch: DenseBatch, x: Tensor) -> Tensor:
    """A grouped ``[G, K, S]`` tensor of ``batch`` back in the input layout
    ``[N, K, *spatial]`` (``K`` may differ from ``C``); ``[G, S]`` gives ``[N, *spatial]``."""
    n, spatial = batch.shape[0], batch.shape[1:]
    if x.ndim == 2:
        return x.reshape(n, *spatial)
    k = x.shape[1]
    return x.transpose(1, 2).reshape(n, *spatial, k).movedim(-1, 1)


def foreground(batch: DenseBatch, x: Tensor, include_background: bool) -> Tensor:
    """The foreground channels of ``x[:, C, ...]``: the single channel of a binary input,
    channels ``1..C-1`` of a softmax input unless ``include_background``."""
    if batch.binary or include_background:
        return x
    return x[:, 1:]
