"""Collaborative Inner Product loss: loop oracle (fp64), its minimisers (classes on rays,
mutually orthogonal), homogeneity and rotation invariance, reference sets, indices, faults."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
import losslab.functional as LF
from tests.losses.metric_learning.common import (
    ORACLE_TOL,
    batch,
    check_bad_hyperparameters,
    check_bad_reference_and_indices_raise,
    check_degenerate_declarations,
    check_half_inputs_return_float32,
    check_indices_equal_explicit_pairs,
    check_integer_labels,
    check_miners_feed,
    check_nan_propagates,
    check_single_sample_is_zero,
    pairs,
)


def _dot(a, b):
    return sum(float(u) * float(v) for u, v in zip(a, b))


def oracle(x, y, rx=None, ry=None, lam=1.0):
    ref, rl = (x, None) if rx is None else (rx, ry)
    pos, neg = pairs(y, rl)
    intra = [math.sqrt(_dot(x[i], x[i])) * math.sqrt(_dot(ref[j], ref[j])) - _dot(x[i], ref[j])
             for i, j in pos]
    inter = [max(_dot(x[i], ref[j]), 0.0) for i, j in neg]
    return ((sum(intra) / len(intra) if intra else 0.0)
            + lam * (sum(inter) / len(inter) if inter else 0.0))


def test_oracle_module_and_reference_set():
    x, y = batch(seed=1)
    for lam in (1.0, 0.25):
        torch.testing.assert_close(LF.cip_loss(x, y, lam=lam).item(), oracle(x, y, lam=lam),
                                   **ORACLE_TOL)
        torch.testing.assert_close(losslab.create("cip", lam=lam)(x, y),
                                   LF.cip_loss(x, y, lam=lam))
    r, ry = batch(seed=2, n_classes=5)
    torch.testing.assert_close(LF.cip_loss(x, y, ref_embeddings=r, ref_labels=ry).item(),
                               oracle(x, y, r, ry), **ORACLE_TOL)


def test_rays_of_orthogonal_classes_are_a_zero_loss_minimum():
    """The abstract's ideal embedding (Fig. 1): every class on one ray, the rays at least
    orthogonal, any norms -- the loss is 0, its minimum (both terms are >= 0)."""
    g = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=g)).Q[:, :4].T
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    norms = torch.rand(len(y), 1, dtype=torch.float64, generator=g) * 3 + 0.1
    x = (basis[y] * norms).requires_grad_(True)
    out = LF.cip_loss(x, y)
    torch.testing.assert_close(out, torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)
    # obtuse classes are still at least orthogonal: zero
    x2 = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.1], [-3.0, 0.3]], dtype=torch.float64)
    assert LF.cip_loss(x2, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.0, abs=1e-12)
    # and any departure costs: a class off its ray, or two classes at an acute angle
    assert LF.cip_loss(x.detach() + 0.1, y).item() > 0
    assert LF.cip_loss(torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64),
                       torch.tensor([0, 1])).item() > 0


def test_homogeneous_of_degree_two_and_rotation_invariant():
    x, y = batch(seed=4)
    base = LF.cip_loss(x, y)
    torch.testing.assert_close(LF.cip_loss(3.0 * x, y), 9.0 * base, **ORACLE_TOL)
    q = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(5))).Q
    torch.testing.assert_close(LF.cip_loss(x @ q, y), base, **ORACLE_TOL)


def test_zero_feature_has_a_finite_gradient():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.5, -1.0]], dtype=torch.float64,
                     requires_grad=True)
    out = LF.cip_loss(x, torch.tensor([0, 0, 1]))
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_inputs_and_faults():
    check_indices_equal_explicit_pairs("cip")
    check_bad_reference_and_indices_raise("cip")
    check_miners_feed("cip")
    check_integer_labels("cip")
    check_nan_propagates("cip")
    check_single_sample_is_zero("cip")
    check_degenerate_declarations("cip", ())
    for form in ("labels", "ref", "indices"):
        check_half_inputs_return_float32("cip", ref=form == "ref", indices=form == "indices")
    x, y = batch()
    check_bad_hyperparameters("cip", {"lam": [-1.0, math.nan, "1"]},
                              call=lambda fn, **kw: fn(x, y, **kw))
