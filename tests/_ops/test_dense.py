"""losslab._ops.dense: grouping, soft counts, active classes and the reduction over groups,
checked on a hand-sized batch (the segmentation losses' oracles are in
tests/losses/test_segmentation.py)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab._ops.dense import (
    active_classes,
    prepare_dense,
    reduce_groups,
    safe_ratio,
    soft_counts,
)

D = torch.float64


def small_batch():
    logits = torch.randn(2, 3, 2, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[[0, 0], [1, -100]], [[-100, -100], [-100, -100]]])
    return logits, target


def test_grouping_and_counts() -> None:
    logits, target = small_batch()
    b = prepare_dense(logits, target, ignore_index=-100, per_image=True, loss="t")
    assert b.probs.shape == (2, 3, 4) and b.valid.shape == (2, 4) and not b.soft
    p = torch.softmax(logits, 1).reshape(2, 3, 4)
    tp, pc, yc = soft_counts(b, metric=False)
    torch.testing.assert_close(pc[0], p[0, :, :3].sum(1))  # the ignored pixel is left out
    torch.testing.assert_close(yc[0], torch.tensor([2.0, 1.0, 0.0], dtype=D))
    torch.testing.assert_close(tp[0], torch.stack([p[0, 0, :2].sum(), p[0, 1, 2],
                                                   torch.zeros((), dtype=D)]))
    assert torch.equal(pc[1], torch.zeros(3, dtype=D))  # image without valid pixel
    whole = prepare_dense(logits, target, ignore_index=-100, per_image=False, loss="t")
    assert whole.probs.shape == (1, 3, 8)
    # hard labels: the metric (L1) counts equal the classic ones
    for metric in (False, True):
        torch.testing.assert_close(soft_counts(b, metric=metric)[0], tp)


def test_active_classes_and_reduction() -> None:
    logits, target = small_batch()
    b = prepare_dense(logits, target, ignore_index=-100, per_image=True, loss="t")
    _, _, yc = soft_counts(b, metric=False)
    everything = active_classes(b, yc, "all")
    present = active_classes(b, yc, "present")
    assert everything.tolist() == [[True, True, True], [False, False, False]]
    assert present.tolist() == [[True, True, False], [False, False, False]]
    per_class = torch.tensor([[0.2, 0.4, 0.9], [0.5, 0.5, 0.5]], dtype=D, requires_grad=True)
    none = reduce_groups(per_class, present, "none", per_image=True)
    torch.testing.assert_close(none, torch.tensor([0.3, 0.0], dtype=D))
    mean = reduce_groups(per_class, present, "mean", per_image=True)
    torch.testing.assert_close(mean, torch.tensor(0.3, dtype=D))  # the empty image is left out
    nothing = reduce_groups(per_class, torch.zeros_like(present), "mean", per_image=True)
    (g,) = torch.autograd.grad(nothing, per_class)
    assert nothing.item() == 0.0 and torch.equal(g, torch.zeros_like(g))


def test_safe_ratio_is_one_on_an_empty_denominator_with_finite_gradients() -> None:
    num = torch.tensor([1.0, 0.0, 2.0], dtype=D, requires_grad=True)
    den = torch.tensor([2.0, 0.0, 4.0], dtype=D, requires_grad=True)
    out = safe_ratio(num, den)
    torch.testing.assert_close(out, torch.tensor([0.5, 1.0, 0.5], dtype=D))
    out.sum().backward()
    assert torch.isfinite(num.grad).all() and torch.isfinite(den.grad).all()
    assert num.grad[1] == 0 and den.grad[1] == 0


def test_safe_ratio_propagates_nan() -> None:
    """Finding 1: a NaN denominator is not an empty class."""
    num = torch.tensor([1.0, math.nan, 0.0], dtype=D)
    den = torch.tensor([math.nan, 2.0, 0.0], dtype=D)
    out = safe_ratio(num, den)
    assert torch.isnan(out[:2]).all() and out[2] == 1.0


def test_grouping_of_an_empty_batch() -> None:
    """Finding 3: N = 0 (or no pixels) groups to [G, C, 0] without a reshape error."""
    for shape, per_image, grouped in (((0, 3, 2, 2), True, (0, 3, 4)),
                                      ((0, 3, 2, 2), False, (1, 3, 0)),
                                      ((2, 3, 0, 2), True, (2, 3, 0))):
        logits = torch.randn(shape, dtype=D)
        target = torch.zeros((shape[0], *shape[2:]), dtype=torch.long)
        b = prepare_dense(logits, target, ignore_index=-100, per_image=per_image, loss="t")
        assert b.probs.shape == grouped and b.target.shape == grouped
        assert b.valid.shape == (grouped[0], grouped[2])


def test_soft_targets_are_checked() -> None:
    """Finding 6: prepare_dense rejects soft targets that are not distributions over C."""
    logits = torch.randn(2, 3, 2, 2, dtype=D)
    soft = torch.softmax(torch.randn(2, 3, 2, 2, dtype=D), 1)
    prepare_dense(logits, soft, ignore_index=-100, per_image=True, loss="t")
    with pytest.raises(ValueError, match="target"):
        prepare_dense(logits, soft * 1.5, ignore_index=-100, per_image=True, loss="t")


def test_unit_interval_check_messages() -> None:
    """Eagerly, the soft-target check raises the ValueError naming the argument and what was
    wrong (non-finite entries first, then the range with the offending extremes)."""
    from losslab._ops.dense import check_unit_interval

    check_unit_interval("target", torch.tensor([0.0, 0.5, 1.0]))
    check_unit_interval("target", torch.empty(0))
    with pytest.raises(ValueError, match=r"target \(probabilities\) must be finite"):
        check_unit_interval("target", torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[-0.5, 2\]"):
        check_unit_interval("target", torch.tensor([-0.5, 0.2, 2.0]))


@pytest.mark.parametrize("name", ["dice", pytest.param("tversky", marks=pytest.mark.slow)])
def test_soft_targets_trace_without_graph_breaks(name: str) -> None:
    """Soft (probability) targets of a one-channel sigmoid loss: the [0, 1] check is an
    async assert under compile, no graph break; a target out of range still raises there."""
    m = losslab.create(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    t = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64)
    torch._dynamo.reset()
    ex = torch._dynamo.explain(m)(x, t)
    assert ex.graph_break_count == 0, [str(b.reason)[:80] for b in ex.break_reasons]
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x, t), m(x, t))
    with pytest.raises(RuntimeError):
        torch.compile(m, fullgraph=True)(x, t * 3.0)
