"""Pair masks and member indices (losslab._ops.pairs): the three forms of positive/negative
pairs agree with their definitions; miner index tuples are validated and converted."""

from __future__ import annotations

import pytest
import torch

from losslab._ops.pairs import (
    check_miner_indices,
    class_masks,
    label_masks,
    members,
    ms_pair_mining,
    pair_batch,
    pairs_from_indices,
    triplets_from_indices,
    validate_batch,
)


def test_members():
    y = torch.tensor([2, 0, 2, 1, 2])
    m = members(y, y, True)
    assert m.idx.shape == (5, 3)
    assert m.n_pos.tolist() == [2, 0, 2, 0, 2]
    assert m.n_neg.tolist() == [2, 4, 2, 4, 2]
    for i in range(5):
        got = set(m.idx[i][m.pos[i]].tolist())
        assert got == {j for j in range(5) if j != i and y[j] == y[i]}
    mat = torch.zeros(5, 5)
    m.fill_(mat, 1.0)
    torch.testing.assert_close(mat, (y[:, None] == y[None]).float())
    ref = torch.tensor([7, 0, 0])
    m = members(y, ref, False)
    assert m.n_pos.tolist() == [0, 2, 0, 0, 0]
    mat = torch.zeros(5, 3)
    m.fill_(mat, 1.0)
    torch.testing.assert_close(mat, (y[:, None] == ref[None]).float())


def test_members_agree_with_label_masks_and_class_masks():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (12,), generator=g)
    ry = torch.randint(0, 6, (9,), generator=g)
    for ref, self_ref in ((y, True), (ry, False)):
        pos, neg = label_masks(y, ref, self_ref)
        m = members(y, ref, self_ref)
        # the positive slots (padding slots repeat a member with pos=False: add, not overwrite)
        from_members = torch.zeros(pos.shape, dtype=torch.long).scatter_add_(1, m.idx,
                                                                             m.pos.long())
        assert torch.equal(from_members.bool(), pos)
        assert m.n_pos.tolist() == pos.sum(1).tolist()
        assert m.n_neg.tolist() == neg.sum(1).tolist()
        grad = torch.zeros(len(y), len(ref))
        m.add_pos_(grad, torch.ones(m.idx.shape))
        assert torch.equal(grad.bool(), pos)
    pos, neg = class_masks(y, 4)
    m = members(y, 4, False)
    assert torch.equal(pos, label_masks(y, torch.arange(4), False)[0])
    assert torch.equal(neg, ~pos)
    assert m.idx.squeeze(1).tolist() == y.tolist() and m.n_neg.tolist() == [3] * len(y)


def test_ms_pair_mining_definition():
    s = torch.tensor([[1.0, 0.9, 0.2, 0.85], [0.9, 1.0, 0.1, 0.3]])
    pos = torch.tensor([[False, True, False, False], [True, False, False, False]])
    neg = torch.tensor([[False, False, True, True], [False, False, True, True]])
    mp, mn = ms_pair_mining(s, pos, neg, 0.1)
    # row 0: hardest negative 0.85 > 0.9 - 0.1: positive kept; negatives above 0.9 - 0.1 kept
    assert mp.tolist() == [[False, True, False, False], [False, False, False, False]]
    assert mn.tolist() == [[False, False, False, True], [False, False, False, False]]


def test_check_miner_indices():
    a, p, n = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 0])
    assert all(torch.equal(u, v) for u, v in zip(check_miner_indices((a, p, n), 3, 5),
                                                 (a, p, n)))
    with pytest.raises(ValueError, match=r"positives must lie in \[0, 3\)"):
        check_miner_indices((a, p, n), 3, 3)
    with pytest.raises(ValueError, match="anchors1 and positives differ"):
        check_miner_indices((a, p[:1], a, n), 3, 5)
    with pytest.raises(ValueError, match="integer"):
        check_miner_indices((a.float(), p, n), 3, 5)
    with pytest.raises(ValueError, match="indices must be a tuple"):
        check_miner_indices(a, 3, 5)


def test_pairs_and_triplets_from_indices():
    a, p, n = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 0])
    assert [t.tolist() for t in pairs_from_indices((a, p, n))] == [[0, 1], [2, 3], [0, 1],
                                                                   [4, 0]]
    trip = triplets_from_indices((torch.tensor([0, 0]), torch.tensor([1, 2]),
                                  torch.tensor([0, 1]), torch.tensor([5, 6])))
    assert sorted(zip(*(t.tolist() for t in trip))) == [(0, 1, 5), (0, 2, 5)]


# -- issue #11 --------------------------------------------------------------------------------


def test_validate_batch_returns_compute_dtype_and_int64_labels():
    """Findings 2 and 7: every loss built on the batch computes half inputs in float32 and
    indexes with int64 labels (uint8 labels crashed npairs' scatter)."""
    x = torch.randn(4, 3).half().requires_grad_(True)
    y = torch.tensor([0, 1, 0, 1], dtype=torch.uint8)
    b = validate_batch(x, y, None, None)
    assert b.embeddings.dtype == torch.float32 and b.ref is b.embeddings and b.self_ref
    assert b.labels.dtype == torch.int64 and b.ref_labels is b.labels
    assert b.reference == (None, None)
    b.embeddings.sum().backward()
    assert x.grad.dtype == torch.float16
    r = torch.randn(5, 3).half()
    b = validate_batch(x, y, r, torch.arange(5, dtype=torch.int32))
    assert b.ref.dtype == torch.float32 and b.ref_labels.dtype == torch.int64
    assert b.reference[0] is b.ref and not b.self_ref
    x64 = torch.randn(4, 3, dtype=torch.float64)
    assert validate_batch(x64, y, None, None).embeddings is x64
    with pytest.raises(ValueError, match="labels"):
        validate_batch(x64, y.bool(), None, None)
    with pytest.raises(ValueError, match="ref_labels"):
        validate_batch(x64, y, x64, y.bool())


def test_the_batch_zero_is_nan_for_a_non_finite_input():
    x, r = torch.randn(4, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 0, 1])
    assert validate_batch(x, y, r, torch.arange(5)).zero().item() == 0.0
    r[2, 1] = float("nan")
    assert torch.isnan(validate_batch(x, y, r, torch.arange(5)).zero())
    assert torch.isnan(pair_batch(x, y, r, torch.arange(5), metric="cosine").zero())
    x[0, 0] = float("inf")
    assert torch.isnan(validate_batch(x, y, None, None).zero())


def test_pair_batch_computes_half_inputs_in_float32():
    x = (torch.randn(6, 4) * 200).half()
    y = torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.int32)
    b = pair_batch(x, y, metric="euclidean")
    assert b.mat.dtype == torch.float32 and torch.isfinite(b.mat).all()
    assert b.labels.dtype == torch.int64
