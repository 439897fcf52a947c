"""Listwise losses against the peers' own code: Rax (``softmax_loss`` with softmax labels,
``listmle_loss``, ``poly1_softmax_loss``, ``approx_t12n(ndcg_metric)``) and allRank
(``listNet``, ``listMLE``, ``approxNDCGLoss``, ``neuralNDCG``), values and gradients in float64,
list by list (the peers reduce over whole batches differently; per list the definitions
agree). The loop oracles are in ``test_pairwise.py`` and ``tests/losses/test_ranking.py``."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch

from losslab.functional import (
    approx_ndcg_loss,
    listmle_loss,
    listnet_loss,
    neural_ndcg_loss,
    poly1_listwise_loss,
)
from tests.losses.ranking.peers import allrank_losses, rax


def _lists(seed: int = 0, Q: int = 3, L: int = 7, distinct: bool = False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(Q, L, generator=g, dtype=torch.float64)
    if distinct:  # no tied grades: ListMLE's ideal order is unique (the peers shuffle ties)
        r = torch.stack([torch.randperm(L, generator=g) for _ in range(Q)]).to(torch.float64)
        r = r / 2
    else:
        r = torch.randint(0, 4, (Q, L), generator=g).to(torch.float64)
        r[:, 0] = 3.0  # every list has a relevant item
    return s, r


def _grad(fn: Any, s: torch.Tensor) -> torch.Tensor:
    x = s.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x), x)
    return g


def _rax_per_list(loss: Any, s: torch.Tensor, r: torch.Tensor, **kw: Any):
    """Values and gradients of a Rax loss, one list at a time (vmapped over the lists)."""
    import jax

    per_list = jax.jit(jax.vmap(jax.value_and_grad(lambda x, y: loss(x, y, **kw))))
    v, g = per_list(jax.numpy.asarray(s.numpy()), jax.numpy.asarray(r.numpy()))
    return torch.from_numpy(np.asarray(v)), torch.from_numpy(np.asarray(g))


def _allrank_per_list(loss: Any, s: torch.Tensor, r: torch.Tensor, **kw: Any):
    values, grads = [], []
    for q in range(s.shape[0]):
        x = s[q:q + 1].clone().requires_grad_(True)
        v = loss(x, r[q:q + 1].clone(), **kw)
        (g,) = torch.autograd.grad(v, x)
        values.append(v.reshape(()))
        grads.append(g[0])
    return torch.stack(values).detach(), torch.stack(grads)


def _ours_per_list(fn: Any, s: torch.Tensor, r: torch.Tensor, **kw: Any):
    values = fn(s, r, reduction="none", **kw)
    return values, _grad(lambda x: fn(x, r, reduction="sum", **kw), s)


def _close(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor],
           tol: float = 1e-9) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    torch.testing.assert_close(a[1], b[1], rtol=tol, atol=tol)


def test_listnet_matches_rax_softmax_loss_with_softmax_labels() -> None:
    R = rax()
    import jax

    s, r = _lists(0)
    theirs = _rax_per_list(R.softmax_loss, s, r,
                           label_fn=lambda a, where: jax.nn.softmax(a, where=where))
    _close(_ours_per_list(listnet_loss, s, r), theirs)


def test_listnet_and_listmle_match_allrank() -> None:
    A = allrank_losses()
    s, r = _lists(1)
    _close(_ours_per_list(listnet_loss, s, r), _allrank_per_list(A.listNet, s, r, eps=0.0))
    s, r = _lists(2, distinct=True)
    _close(_ours_per_list(listmle_loss, s, r), _allrank_per_list(A.listMLE, s, r, eps=0.0))


def test_listmle_matches_rax() -> None:
    R = rax()
    s, r = _lists(3, distinct=True)
    _close(_ours_per_list(listmle_loss, s, r), _rax_per_list(R.listmle_loss, s, r))


@pytest.mark.parametrize("epsilon", [0.0, 1.0, -0.5])
@pytest.mark.parametrize("graded", [False, True])
def test_poly1_listwise_matches_rax_poly1_softmax_loss(epsilon: float, graded: bool) -> None:
    R = rax()
    s, r = _lists(4)
    if not graded:  # RankT5's setting: one relevant document per list
        r = torch.nn.functional.one_hot(r.argmax(1), r.shape[1]).to(torch.float64)
    theirs = _rax_per_list(R.poly1_softmax_loss, s, r, epsilon=epsilon)
    _close(_ours_per_list(poly1_listwise_loss, s, r, epsilon=epsilon), theirs)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_approx_ndcg_matches_rax_and_allrank(temperature: float) -> None:
    R = rax()
    A = allrank_losses()
    s, r = _lists(5)
    import jax

    ours = _ours_per_list(approx_ndcg_loss, s, r, temperature=temperature)
    # rax.approx_t12n(rax.ndcg_metric) spelled out (rax 0.4's wrapper needs an older jax)
    ranks = functools.partial(R.utils.approx_ranks,
                              step_fn=lambda x: jax.nn.sigmoid(x / temperature))
    _close(ours, _rax_per_list(lambda x, y: -R.ndcg_metric(x, y, rank_fn=ranks), s, r))
    # allRank computes its discounts in float32 (``pos_idxs.float()``)
    _close(ours, _allrank_per_list(A.approxNDCGLoss, s, r, eps=0.0, alpha=1 / temperature),
           tol=1e-6)


@pytest.mark.parametrize("k", [None, 3])
def test_neural_ndcg_matches_allrank(k: int | None) -> None:
    A = allrank_losses()
    s, r = _lists(6)
    ours = _ours_per_list(neural_ndcg_loss, s, r, k=k, sinkhorn_iters=50)
    # allRank's NeuralSort is float32 throughout (hard-coded dtypes), and it stops Sinkhorn at
    # tolerance 1e-6 (ours runs the 50 rounds): agreement to float32 precision
    theirs = _allrank_per_list(A.neuralNDCG, s.float(), r.float(), k=k, temperature=1.0)
    _close(ours, (theirs[0].double(), theirs[1].double()), tol=2e-5)
