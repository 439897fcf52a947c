"""PamC and StructComp: loop oracles from the formulas (fp64), the official computations
restated, and the papers' properties (meta-nodes are exact when every cluster is one node;
StructComp's loss on compressed nodes is GRACE's)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import infonce_loss, pamc_loss, structcomp_loss
from losslab.losses.contrastive_ssl.graph import compress_nodes
from tests.losses.contrastive_ssl.common import pairs


def cos(u: list[float], v: list[float]) -> float:
    nu = math.sqrt(sum(t * t for t in u))
    nv = math.sqrt(sum(t * t for t in v))
    return sum(p * q for p, q in zip(u, v)) / (nu * nv)


def graph(n: int = 8, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 1, 2, 0, 1])[:n]
    und = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (0, 6), (2, 5)]
    src = [i for i, j in und] + [j for i, j in und] + list(range(n))
    dst = [j for i, j in und] + [i for i, j in und] + list(range(n))
    edges = torch.tensor([src, dst])
    weight = torch.rand(edges.shape[1], generator=g, dtype=torch.float64) + 0.1
    return z, labels, edges, weight


def pamc_oracle(z: torch.Tensor, labels: torch.Tensor, edges, weight, tau: float) -> float:
    v = z.detach().tolist()
    n = len(v)
    adj = [[0.0] * n for _ in range(n)]
    for e in range(edges.shape[1]):
        adj[int(edges[0, e])][int(edges[1, e])] += float(weight[e])

    def c(u, w, same):
        return 0.0 if same else cos(u, w)

    node = [math.log(sum(adj[i][j] * math.exp(tau * c(v[i], v[j], i == j))
                         for j in range(n))) for i in range(n) if any(adj[i])]
    clusters = sorted(set(labels.tolist()))
    meta = [[sum(v[i][k] for i in range(n) if int(labels[i]) == cl) for k in range(len(v[0]))]
            for cl in clusters]
    c_terms = [math.log(sum(math.exp(tau * c(meta[p], meta[q], p == q))
                            for q in range(len(meta)))) for p in range(len(meta))]
    return -sum(node) / len(node) + sum(c_terms) / len(c_terms)


def test_pamc_matches_loop_oracle() -> None:
    z, labels, edges, weight = graph()
    for tau, w in ((1.0, None), (2.5, weight)):
        got = pamc_loss(z, labels, edges=edges, edge_weight=w, tau=tau)
        want = pamc_oracle(z, labels, edges, torch.ones(edges.shape[1]) if w is None else w, tau)
        assert float(got.detach()) == pytest.approx(want, rel=1e-12)


def test_pamc_matches_official_dense_computation() -> None:
    """The official ``NcontrastCC`` on the dense adjacency with the meta-node sum ``cc`` of
    the hard assignments (``gayanku/PAMC``, ``train.py``), restated."""
    z, labels, edges, weight = graph(seed=3)
    n = z.shape[0]
    adj = torch.zeros(n, n, dtype=torch.float64).index_put((edges[0], edges[1]), weight,
                                                           accumulate=True)

    def feature_dis(x):
        d = x @ x.t()
        norm = x.norm(dim=1, keepdim=True)
        return (1 - torch.eye(len(x), dtype=x.dtype)) * d / (norm @ norm.t())

    tau = 1.0
    x_pos = (torch.exp(tau * feature_dis(z)) * adj).sum(1)
    cc = (z.unsqueeze(1) * torch.nn.functional.one_hot(labels).unsqueeze(2)).sum(0)
    x_neg = torch.exp(tau * feature_dis(cc)).sum(1)
    want = -torch.log(x_pos + 1e-10).mean() + torch.log(x_neg + 1e-10).mean()
    got = pamc_loss(z, labels, edges=edges, edge_weight=weight)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, z)[0], torch.autograd.grad(want, z)[0])


def test_pamc_meta_nodes_are_exact_with_singleton_clusters() -> None:
    """With one node per cluster the meta-node negatives are the node-pair negatives: the
    second term is mean_i log sum_j exp(tau c(z_i, z_j)) over all node pairs."""
    z, _, edges, _ = graph()
    n = z.shape[0]
    zn = torch.nn.functional.normalize(z, dim=1)
    s = (zn @ zn.t()).masked_fill(torch.eye(n, dtype=torch.bool), 0.0)
    negatives = torch.logsumexp(2.0 * s, 1).mean()
    got = pamc_loss(z, torch.arange(n), tau=2.0)  # no edges: the node term is 0
    torch.testing.assert_close(got, negatives)
    assert float(pamc_loss(z, torch.arange(n), edges=edges, tau=2.0).detach()) != float(
        got.detach())


def test_pamc_degenerate_and_module() -> None:
    z, labels, edges, weight = graph()
    zero = pamc_loss(z, torch.zeros(8, dtype=torch.long))  # one cluster, no edges
    assert float(zero.detach()) == 0.0
    (grad,) = torch.autograd.grad(zero, z)
    assert torch.equal(grad, torch.zeros_like(z))
    m = losslab.create("pamc", tau=1.5).double()
    torch.testing.assert_close(m(z, labels, edges=edges, edge_weight=weight),
                               pamc_loss(z, labels, edges=edges, edge_weight=weight, tau=1.5))
    # an edgeless node is left out of the node mean
    few = edges[:, edges[0] != 7]
    assert torch.isfinite(pamc_loss(z, labels, edges=few))
    assert torch.autograd.gradcheck(
        lambda x: pamc_loss(x, labels, edges=edges, edge_weight=weight), (z,))


def test_pamc_bad_inputs() -> None:
    z, labels, edges, weight = graph()
    with pytest.raises(ValueError, match="edges must be an integer tensor of shape"):
        pamc_loss(z, labels, edges=edges.t())
    with pytest.raises(ValueError, match="edges must index"):
        pamc_loss(z, labels, edges=edges + 100)
    with pytest.raises(ValueError, match="edge_weight must have shape"):
        pamc_loss(z, labels, edges=edges, edge_weight=weight[:-1])
    with pytest.raises(ValueError, match="edge_weight needs edges"):
        pamc_loss(z, labels, edge_weight=weight)
    with pytest.raises(ValueError, match="non-negative"):
        pamc_loss(z, labels, edges=edges, edge_weight=-weight)
    with pytest.raises(ValueError, match="takes no ref_embeddings"):
        losslab.create("pamc")(z, labels, ref_embeddings=z, ref_labels=labels)


@pytest.mark.slow
def test_pamc_compiled_equals_eager() -> None:
    """Under ``torch.compile`` (no graph break) the clusters take ``N`` static slots, the
    empty ones masked out: the eager value and gradient for unsorted, negative and sparse
    cluster ids (3 clusters in 8 slots), one cluster and singleton clusters, with and without
    edges; a bad edge index raises (an async assert) instead of a wrong loss."""
    z, labels0, edges, weight = graph()
    m = losslab.create("pamc", tau=1.5).double()
    compiled = torch.compile(m, fullgraph=True)
    torch._dynamo.reset()
    ex = torch._dynamo.explain(m)(z, labels0, edges=edges, edge_weight=weight)
    assert ex.graph_break_count == 0
    cases = [torch.tensor([7, -3, 7, 100, -3, 100, 7, -3]), torch.zeros(8, dtype=torch.long),
             torch.arange(8).flip(0)]
    for labels in cases:
        for kw in ({"edges": edges, "edge_weight": weight}, {}):
            eager = m(z, labels, **kw)
            (g_eager,) = torch.autograd.grad(eager, z)
            got = compiled(z, labels, **kw)
            (g_got,) = torch.autograd.grad(got, z)
            torch.testing.assert_close(got, eager)
            torch.testing.assert_close(g_got, g_eager)
    with pytest.raises(RuntimeError, match=r"edges must index|invalid input"):
        compiled(z, cases[0], edges=edges + 100, edge_weight=weight)


# ---------------------------------------------------------------------------------------------
# StructComp
# ---------------------------------------------------------------------------------------------


def grace_oracle(a: torch.Tensor, b: torch.Tensor, tau: float) -> list[float]:
    va, vb = a.detach().tolist(), b.detach().tolist()
    k = len(va)

    def semi(u, v, i):
        num = math.exp(cos(u[i], v[i]) / tau)
        den = sum(math.exp(cos(u[i], v[j]) / tau) for j in range(k))
        den += sum(math.exp(cos(u[i], u[j]) / tau) for j in range(k) if j != i)
        return -math.log(num / den)

    return [(semi(va, vb, i) + semi(vb, va, i)) / 2 for i in range(k)]


def test_structcomp_matches_loop_oracle_and_nt_xent() -> None:
    a, b = pairs(n=6, d=4)
    got = structcomp_loss(a, b, temperature=0.5, reduction="none")
    torch.testing.assert_close(got, torch.tensor(grace_oracle(a, b, 0.5), dtype=torch.float64))
    mean = structcomp_loss(a, b)
    torch.testing.assert_close(mean, infonce_loss(a, b, temperature=0.5, negatives="both"))
    m = losslab.create("structcomp", temperature=0.3).double()
    torch.testing.assert_close(m(a, b), structcomp_loss(a, b, temperature=0.3))
    with pytest.raises(ValueError, match="at least 2 compressed nodes"):
        structcomp_loss(a[:1], b[:1])


def test_compress_nodes_is_part_mean() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64)
    part = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 2])
    got = compress_nodes(x, part)
    for k in range(3):
        rows = [x[i].tolist() for i in range(9) if int(part[i]) == k]
        want = [sum(r[c] for r in rows) / len(rows) for c in range(3)]
        torch.testing.assert_close(got[k], torch.tensor(want, dtype=torch.float64))
    # P^T X with the column-normalised assignment matrix P
    p = torch.nn.functional.one_hot(part).double()
    torch.testing.assert_close(got, (p / p.sum(0)).t() @ x)


def test_compress_nodes_drop_member() -> None:
    part = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 2, 0, 0])
    eye = torch.eye(11, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    views = [compress_nodes(eye, part, keep=0.5, generator=g) for _ in range(6)]
    counts = torch.bincount(part)
    for v in views:
        for k in range(3):
            kept = torch.nonzero(v[k]).flatten()
            assert len(kept) == max(1, int(counts[k]) // 2)  # the official m // 2
            assert bool((part[kept] == k).all())
            torch.testing.assert_close(v[k, kept], torch.full((len(kept),), 1.0 / len(kept),
                                                              dtype=torch.float64))
    assert any(not torch.equal(views[0], v) for v in views[1:])  # random subsets
    with pytest.raises(ValueError, match="every part"):
        compress_nodes(eye, torch.tensor([0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2]))
    with pytest.raises(ValueError, match="keep must be in"):
        compress_nodes(eye, part, keep=0.0)
