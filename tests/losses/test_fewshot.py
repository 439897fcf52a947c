"""Few-shot losses against loop oracles written from the formulas and the released algorithm.

The oracles below are deliberately naive: Python loops, distances from explicit sums of
squared differences, sorting with ``sorted``. They follow core-papers-spec.md §1.2-1.5 (the
SuSana Distancia paper and its released code), not losslab's vectorised code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import losslab
from losslab.functional import icnn_loss, proto_triplet_loss, protonet_loss
from losslab.losses.fewshot import Affinity
from losslab.metrics import icnn_score

# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------


def sqdist(a: list[float], b: list[float]) -> float:
    return math.dist(a, b) ** 2


def dist(a: list[float], b: list[float], eps: float = 1e-6) -> float:
    return math.sqrt(sqdist(a, b) + eps)


def prototypes(support: list[list[float]], labels: list[int]) -> dict[int, list[float]]:
    out = {}
    for c in sorted(set(labels)):
        rows = [s for s, y in zip(support, labels) if y == c]
        out[c] = [sum(col) / len(rows) for col in zip(*rows)]
    return out


def oracle_protonet(support, s_lab, query, q_lab, temperature=1.0) -> list[float]:
    protos = prototypes(support, s_lab)
    losses = []
    for q, y in zip(query, q_lab):
        logits = {c: -sqdist(q, p) / temperature for c, p in protos.items()}
        m = max(logits.values())
        lse = m + math.log(sum(math.exp(v - m) for v in logits.values()))
        losses.append(lse - logits[y])
    return losses


def oracle_proto_triplet(support, s_lab, query, q_lab, margin=0.5) -> list[float]:
    protos = prototypes(support, s_lab)
    losses = []
    for q, y in zip(query, q_lab):
        d_pos = dist(q, protos[y])
        negs = [dist(q, p) for c, p in protos.items() if c != y]
        d_neg = min(negs) if negs else math.inf
        losses.append(max(0.0, d_pos - d_neg + margin))
    return losses


def oracle_modified_score(origin, y_o, target=None, y_t=None, k=4, ipc=None) -> float:
    """The released ``modified_score``, step by step from core-papers-spec.md §1.4."""
    if target is None:
        target, y_t = origin, y_o
    m = len(target)
    if k + 2 >= m:  # step 1
        k = m - 2
    if ipc is None:
        ipc = k + 1
    eps = 1e-7
    rows = []
    for x in origin:  # step 2: ipc + 1 nearest, drop rank 1
        ds = sorted((dist(x, t), j) for j, t in enumerate(target))[: ipc + 1][1:]
        rows.append(ds)
    n = len(origin)
    sc_sum, sc_points, dc_sum, dc_points = 0.0, 0, 0.0, 0
    ratios, same_flags, others = [], [], []
    for i in range(n):
        d = [v for v, _ in rows[i]]
        s = [y_t[j] == y_o[i] for _, j in rows[i]]
        other_d = [v for v, same in zip(d, s) if not same]
        delta = min(other_d) if other_d else math.inf  # step 3
        r = [v / (delta + eps) for v in d[:k]]  # step 4
        top = max(1.0, max(r))
        ratios.append([v / top for v in r])
        same_flags.append(s[:k])
        others.append([v if not same else 0.0 for v, same in zip(d[:k], s[:k])])
    for i in range(n):  # step 5
        cnt = sum(same_flags[i])
        sc_sum += sum(r for r, same in zip(ratios[i], same_flags[i]) if same) / (cnt + eps)
        sc_points += cnt > 0
    lam_sc = 1 - sc_sum / (sc_points + eps)
    gmax = max(max(row) for row in others)  # step 6 (global max)
    any_other = False
    for i in range(n):
        cnt = sum(1 for same in same_flags[i] if not same)
        any_other |= cnt > 0
        dc_sum += sum(v / (gmax + eps) for v in others[i]) / (cnt + eps)
        dc_points += cnt > 0
    lam_dc = abs(dc_sum / (dc_points + eps) + (0 if any_other else -1))
    lam = (lam_sc + lam_dc) / 2  # step 7
    if k + 2 < m:  # step 8
        gamma = sum(sum(f) / k for f in same_flags) / n
    else:
        gamma = 1.0
    return (lam + gamma) / 2  # step 9


def oracle_icnn_loss(support, s_lab, query, q_lab, variant, query_targets="support") -> float:
    """The released ``get_icnn_loss`` wiring of the three variants (§1.5)."""
    if variant == "support":
        return -math.log(oracle_modified_score(support, s_lab))
    if variant == "query":
        if query_targets == "prototypes":
            protos = prototypes(support, s_lab)
            classes = sorted(protos)
            return -math.log(
                oracle_modified_score(query, q_lab, [protos[c] for c in classes], classes)
            )
        return -math.log(oracle_modified_score(query, q_lab, support, s_lab))
    points, labels = support + query, s_lab + q_lab
    ipc = max(labels.count(c) for c in set(labels))  # shots + queries per class
    return -math.log(oracle_modified_score(points, labels, ipc=ipc))


def random_episode(seed: int, way: int, shot: int, queries: int, dim: int = 16):
    rng = np.random.default_rng(seed)
    classes = rng.choice(1000, size=way, replace=False) - 500  # arbitrary integer labels
    centers = rng.normal(size=(way, dim)) * rng.uniform(0.2, 2.0)
    s_lab = np.repeat(classes, shot)
    q_lab = np.repeat(classes, queries)
    s = centers.repeat(shot, 0) + rng.normal(size=(way * shot, dim))
    q = centers.repeat(queries, 0) + rng.normal(size=(way * queries, dim))
    return s.tolist(), s_lab.tolist(), q.tolist(), q_lab.tolist()


def as_tensors(s, s_lab, q, q_lab):
    return (torch.tensor(s, dtype=torch.float64), torch.tensor(s_lab),
            torch.tensor(q, dtype=torch.float64), torch.tensor(q_lab))


EPISODES = [
    (seed, way, shot, queries)
    for seed, (way, shot, queries) in enumerate(
        [(3, 1, 1), (3, 5, 15), (5, 1, 15), (5, 5, 15), (5, 2, 3), (7, 1, 4), (10, 3, 2),
         (20, 1, 5), (20, 5, 1), (30, 1, 15), (30, 5, 2), (4, 4, 4), (6, 1, 1), (12, 2, 7)]
    )
]


# ---------------------------------------------------------------------------------------------
# Oracle agreement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,way,shot,queries", EPISODES)
def test_protonet_matches_oracle(seed: int, way: int, shot: int, queries: int) -> None:
    ep = random_episode(seed, way, shot, queries)
    expected = oracle_protonet(*ep, temperature=2.0)
    got = protonet_loss(*as_tensors(*ep), temperature=2.0, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("seed,way,shot,queries", EPISODES)
def test_proto_triplet_matches_oracle(seed: int, way: int, shot: int, queries: int) -> None:
    ep = random_episode(seed, way, shot, queries)
    expected = oracle_proto_triplet(*ep)
    got = proto_triplet_loss(*as_tensors(*ep), reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(
        proto_triplet_loss(*as_tensors(*ep)), torch.tensor(np.mean(expected), dtype=torch.float64)
    )


@pytest.mark.parametrize("variant,targets", [("support", "support"), ("query", "support"),
                                             ("query", "prototypes"), ("full", "support")])
@pytest.mark.parametrize("seed,way,shot,queries", EPISODES)
def test_icnn_variants_match_released_algorithm(
    seed: int, way: int, shot: int, queries: int, variant: str, targets: str
) -> None:
    ep = random_episode(seed, way, shot, queries)
    n_targets = {"support": way * shot, "prototypes": way}[targets]
    if (variant == "support" and way * shot < 3) or (variant == "query" and n_targets < 3):
        with pytest.raises(ValueError, match="at least 3 target points"):
            icnn_loss(*as_tensors(*ep), variant=variant, query_targets=targets)
        return
    expected = oracle_icnn_loss(*ep, variant, targets)
    got = icnn_loss(*as_tensors(*ep), variant=variant, query_targets=targets)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize(
    "n_episodes", [pytest.param(20), pytest.param(200, marks=pytest.mark.slow)]
)
def test_many_seeded_episodes_match_the_released_algorithm(n_episodes: int) -> None:
    """Random episodes, 3-30 ways, 1-5 shots, 1-15 queries (as the research check did)."""
    rng = np.random.default_rng(2305)
    for i in range(n_episodes):
        way, shot, queries = int(rng.integers(3, 31)), int(rng.integers(1, 6)), int(
            rng.integers(1, 16))
        ep = random_episode(10_000 + i, way, shot, queries, dim=8)
        t = as_tensors(*ep)
        torch.testing.assert_close(
            proto_triplet_loss(*t), torch.tensor(np.mean(oracle_proto_triplet(*ep)),
                                                 dtype=torch.float64))
        torch.testing.assert_close(
            icnn_loss(*t, variant="full"),
            torch.tensor(oracle_icnn_loss(*ep, "full"), dtype=torch.float64))
        if way * shot >= 3:
            torch.testing.assert_close(
                icnn_loss(*t, variant="support"),
                torch.tensor(oracle_icnn_loss(*ep, "support"), dtype=torch.float64))
            torch.testing.assert_close(
                icnn_loss(*t, variant="query"),
                torch.tensor(oracle_icnn_loss(*ep, "query"), dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Properties and switches
# ---------------------------------------------------------------------------------------------


def clusters(spread: float, *, way: int = 5, per_class: int = 5, dim: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(way, dim, generator=g, dtype=torch.float64) * 10
    x = centers.repeat_interleave(per_class, 0) + spread * torch.randn(
        way * per_class, dim, generator=g, dtype=torch.float64)
    return x, torch.arange(way).repeat_interleave(per_class)


def test_icnn_score_range_and_sanity_values() -> None:
    x, y = clusters(0.01)
    assert icnn_score(x, y) > 0.99  # tight, separated clusters (research check: ~0.997)
    g = torch.Generator().manual_seed(1)
    scores = [icnn_score(torch.randn(25, 64, generator=g), torch.arange(5).repeat_interleave(5))
              for _ in range(20)]
    assert 0.25 <= min(scores) and max(scores) <= 1.0
    assert 0.2 < float(np.mean(scores)) < 0.4  # random embeddings (research check: ~0.29)


def test_icnn_loss_is_low_for_separated_classes_and_bounded_by_log4() -> None:
    x, y = clusters(0.01, way=5, per_class=6)
    s, q = x[0::2], x[1::2]
    sl, ql = y[0::2], y[1::2]
    assert icnn_loss(s, sl, q, ql) < 0.02
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        r = icnn_loss(torch.randn(15, 8, generator=g), sl, torch.randn(15, 8, generator=g), ql)
        assert 0.0 <= float(r) <= math.log(4) + 1e-9


def test_labels_are_arbitrary_integers_and_order_free() -> None:
    ep = as_tensors(*random_episode(7, 5, 2, 3))
    s, sl, q, ql = ep
    shifted = (s, sl * 3 + 1000, q, ql * 3 + 1000)
    perm_s, perm_q = torch.randperm(len(sl)), torch.randperm(len(ql))
    permuted = (s[perm_s], sl[perm_s], q[perm_q], ql[perm_q])
    for f in (protonet_loss, proto_triplet_loss):
        torch.testing.assert_close(f(*ep), f(*shifted))
        torch.testing.assert_close(f(*ep), f(*permuted))
    torch.testing.assert_close(icnn_loss(*ep), icnn_loss(*shifted))


def test_proto_triplet_is_zero_beyond_the_margin_and_reaches_the_support() -> None:
    x, y = clusters(0.01, way=4, per_class=4)
    s = x[0::2].clone().requires_grad_(True)
    q = x[1::2].clone().requires_grad_(True)
    loss = proto_triplet_loss(s, y[0::2], q, y[1::2])
    assert float(loss.detach()) == 0.0
    s2 = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    q2 = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    proto_triplet_loss(s2, y[0::2], q2, y[1::2], margin=10.0).backward()
    assert s2.grad is not None and s2.grad.abs().sum() > 0


def test_protonet_temperature_scales_logits() -> None:
    ep = as_tensors(*random_episode(3, 5, 1, 2))
    assert protonet_loss(*ep, temperature=1e6) == pytest.approx(math.log(5), rel=1e-4)


def test_icnn_switches_change_the_quirks() -> None:
    ep = as_tensors(*random_episode(11, 5, 5, 4))
    faithful = icnn_loss(*ep, variant="query")
    auto = icnn_loss(*ep, variant="query", drop_first="auto")
    assert not torch.allclose(faithful, auto)  # the nearest support point is no longer dropped
    # "auto" on a set against itself excludes exactly the self-match: same as the released
    # drop of rank 1 when there are no ties.
    torch.testing.assert_close(icnn_loss(*ep, variant="support"),
                               icnn_loss(*ep, variant="support", drop_first="auto"))
    # 5 prototypes as targets: k is reduced to 3 and gamma forced to 1 unless "compute".
    one = icnn_loss(*ep, variant="query", query_targets="prototypes")
    computed = icnn_loss(*ep, variant="query", query_targets="prototypes",
                         degenerate_gamma="compute")
    assert float(computed) >= float(one)  # gamma <= 1 lowers the score


def test_icnn_metric_equals_the_loss_on_the_same_set() -> None:
    x, y = clusters(3.0, way=6, per_class=5, dim=8, seed=4)
    loss = icnn_loss(x, y, x[:3], y[:3], variant="support", drop_first="auto")
    assert icnn_score(x, y) == pytest.approx(math.exp(-float(loss)), rel=1e-12)
    assert icnn_score(x, y, chunk_size=4) == pytest.approx(icnn_score(x, y), rel=1e-12)


def test_one_class_episode_is_a_zero_loss() -> None:
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    sl, ql = torch.zeros(4, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    for name in ("protonet", "proto_triplet", "icnn"):
        out = losslab.create(name)(s, sl, q, ql)
        assert float(out.detach()) == 0.0 and out.requires_grad


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(2, 4),
          torch.tensor([0, 1])), "query must have 3 columns"),
        ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(2, 3),
          torch.tensor([0, 5])), r"class\(es\) \[5\] absent from support_labels"),
        ((torch.ones(4, 3, dtype=torch.long), torch.tensor([0, 0, 1, 1]), torch.randn(2, 3),
          torch.tensor([0, 1])), "support must be a floating-point tensor"),
        ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(0, 3),
          torch.tensor([], dtype=torch.long)), "query must have at least 1 row"),
        ((torch.randn(4, 3), torch.tensor([0, 0, 1]), torch.randn(2, 3),
          torch.tensor([0, 1])), r"support_labels must have shape \[4\]"),
        ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(2, 3).double(),
          torch.tensor([0, 1])), "one dtype"),
    ],
)
def test_bad_episodes_give_clear_errors(args: tuple, match: str) -> None:
    for f in (protonet_loss, proto_triplet_loss, icnn_loss):
        with pytest.raises(ValueError, match=match):
            f(*args)


def test_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="variant"):
        losslab.create("icnn", variant="all")
    with pytest.raises(ValueError, match="temperature"):
        losslab.create("protonet", temperature=0.0)
    with pytest.raises(ValueError, match="drop_first"):
        losslab.create("icnn", drop_first=False)
    with pytest.raises(ValueError, match="k must be"):
        losslab.create("icnn", k=0)


# ---------------------------------------------------------------------------------------------
# Bad input and faults (issue #11)
# ---------------------------------------------------------------------------------------------

FEWSHOT = ("protonet", "proto_triplet", "icnn")


def float_episode(seed: int = 5, way: int = 4, shot: int = 3, queries: int = 2,
                  dtype: torch.dtype = torch.float32):
    s, sl, q, ql = as_tensors(*random_episode(seed, way, shot, queries))
    return s.to(dtype), sl, q.to(dtype), ql


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", FEWSHOT)
def test_half_episodes_are_computed_and_returned_in_float32(name: str, dtype) -> None:
    """Finding 2: half inputs are computed in float32 and the loss is returned in float32 (it
    used to be cast back to the input dtype)."""
    s, sl, q, ql = float_episode(dtype=dtype)
    fn = losslab.spec(name).function
    out = fn(s, sl, q, ql)
    assert out.dtype == torch.float32
    # exactly the float32 computation on the same (rounded) values: no rounding back
    torch.testing.assert_close(out, fn(s.float(), sl, q.float(), ql), rtol=0, atol=0)
    assert losslab.create(name).to(dtype)(s, sl, q, ql).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
def test_labels_of_any_integer_dtype_give_the_int64_result(dtype) -> None:
    """Finding 7: labels of any integer dtype, also support and query labels of different
    dtypes, give the int64 result (int32 support labels with int64 query labels used to crash
    in torch.searchsorted)."""
    s, sl, q, ql = float_episode(dtype=torch.float64)
    sl, ql = sl - sl.min(), ql - sl.min()  # non-negative, for uint8
    sl, ql = sl % 100, ql % 100
    for fn in (protonet_loss, proto_triplet_loss, icnn_loss):
        want = fn(s, sl, q, ql)
        torch.testing.assert_close(fn(s, sl.to(dtype), q, ql.to(dtype)), want)
        torch.testing.assert_close(fn(s, sl.to(dtype), q, ql), want)
        torch.testing.assert_close(fn(s, sl, q, ql.to(dtype)), want)


def test_bool_labels_are_rejected() -> None:
    s, _, q, _ = float_episode(way=2)
    sl = torch.tensor([True, True, True, False, False, False])
    ql = torch.tensor([True, False, True, False])
    for fn in (protonet_loss, proto_triplet_loss, icnn_loss):
        with pytest.raises(ValueError, match=r"support_labels .*bool"):
            fn(s, sl, q, ql.long())
        with pytest.raises(ValueError, match=r"query_labels .*bool"):
            fn(s, sl.long(), q, ql)


@pytest.mark.parametrize(
    "name,hparams",
    [
        ("protonet", {"temperature": math.nan}),
        ("protonet", {"temperature": "1.0"}),
        ("protonet", {"temperature": math.inf}),
        ("proto_triplet", {"margin": math.nan}),
        ("proto_triplet", {"margin": "0.5"}),
        ("proto_triplet", {"margin": -0.1}),
        ("proto_triplet", {"eps": math.nan}),
        ("icnn", {"k": True}),
        ("icnn", {"k": 2.0}),
        ("icnn", {"ipc": True}),
        ("icnn", {"ipc": 0}),
        ("icnn", {"eps": math.inf}),
        ("icnn", {"drop_first": 1}),
        ("icnn", {"degenerate_gamma": None}),
        ("icnn", {"query_targets": "proto"}),
    ],
)
def test_bad_hyperparameters_raise_in_module_and_function(name: str, hparams: dict) -> None:
    """Finding 5: NaN, inf, strings, bools for integers and out-of-range values are a
    ValueError naming the argument, at construction and in the function (NaN margins, string
    margins and k=True used to be accepted)."""
    (key,) = hparams
    with pytest.raises(ValueError, match=key):
        losslab.create(name, **hparams)
    s, sl, q, ql = float_episode()
    with pytest.raises(ValueError, match=key):
        losslab.spec(name).function(s, sl, q, ql, **hparams)


@pytest.mark.parametrize(
    "hparams",
    [{"variant": "query", "drop_first": "auto"}, {"variant": "query"},
     {"variant": "full", "drop_first": "auto"}, {"variant": "query", "k": 1, "ipc": 1}],
)
def test_icnn_nan_target_point_is_not_dropped_silently(hparams: dict) -> None:
    """A NaN support point is never among the nearest neighbours (topk skips NaN), so it used
    to drop out of every window of the query variant and leave a plausible finite loss. NaN in
    must give NaN out, in the value and the gradient."""
    s, sl, q, ql = float_episode(way=5, shot=4, queries=2, dtype=torch.float64)
    s = s.clone()
    s[7, 2] = math.nan
    s.requires_grad_(True)
    out = icnn_loss(s, sl, q, ql, **hparams)
    assert torch.isnan(out)
    (g,) = torch.autograd.grad(out, s)
    assert not torch.isfinite(g).all()
    # finite inputs: the guard changes neither the value nor the gradient
    s2 = s.detach().nan_to_num(0.0).requires_grad_(True)
    out2 = icnn_loss(s2, sl, q, ql, **hparams)
    assert torch.isfinite(out2)
    assert torch.isfinite(torch.autograd.grad(out2, s2)[0]).all()


def test_one_class_episode_is_a_zero_loss_with_zero_gradient_in_every_precision() -> None:
    """Finding 9: all three declare ``one_class``; the zero holds in fp32/bf16/fp16 with an
    exact-zero gradient."""
    for name in FEWSHOT:
        assert losslab.spec(name).degenerate == ("one_class",)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        s = torch.randn(4, 3).to(dtype).requires_grad_(True)
        q = torch.randn(3, 3).to(dtype).requires_grad_(True)
        sl, ql = torch.full((4,), 7, dtype=torch.uint8), torch.full((3,), 7, dtype=torch.int32)
        for name in FEWSHOT:
            out = losslab.create(name)(s, sl, q, ql)
            assert float(out.detach()) == 0.0 and out.dtype == torch.float32
            gs, gq = torch.autograd.grad(out, (s, q), allow_unused=True)
            for g in (gs, gq):
                assert g is None or torch.count_nonzero(g) == 0


# ---------------------------------------------------------------------------------------------
# Transductive clustering (arXiv 2106.09516): prototype K-means + Laplacian + constraints
# ---------------------------------------------------------------------------------------------


def episode(seed: int, way: int, shot: int, queries: int, dim: int = 4):
    """A small random episode as tensors (float64)."""
    return as_tensors(*random_episode(seed, way, shot, queries, dim=dim))


def oracle_affinity(points: list[list[float]], kind: str, knn: int) -> list[list[float]]:
    n = len(points)
    d = [[sqdist(points[p], points[q]) for q in range(n)] for p in range(n)]
    if kind == "gaussian":
        near = []  # squared distances of every point to its knn nearest neighbours
        for p in range(n):
            near += sorted(d[p][q] for q in range(n) if q != p)[:knn]
        s2 = sum(near) / len(near)
        return [[math.exp(-d[p][q] / (2 * s2)) for q in range(n)] for p in range(n)]
    w = [[0.0] * n for _ in range(n)]
    for p in range(n):
        order = sorted((q for q in range(n) if q != p), key=lambda q: (d[p][q], q))
        for q in order[:knn]:
            w[p][q] = w[q][p] = 1.0
    return w


def oracle_energy(points, z, protos, w, lam: float) -> float:
    total = 0.0
    for p, x in enumerate(points):
        for k, m in enumerate(protos):
            total += z[p][k] * sqdist(x, m)
            if z[p][k] > 0:
                total += z[p][k] * math.log(z[p][k])
        for q in range(len(points)):
            total -= 0.5 * lam * w[p][q] * sum(a * b for a, b in zip(z[p], z[q]))
    return total


def oracle_laplacian_kmeans(support, s_lab, query, *, lam, kind, knn, outer, inner):
    """The objective after the block-coordinate bound optimisation, with explicit loops."""
    classes = sorted(set(s_lab))
    points = support + query
    n_s, k = len(support), len(classes)
    protos = [prototypes(support, s_lab)[c] for c in classes]
    w = oracle_affinity(points, kind, knn)

    def softmax(v: list[float]) -> list[float]:
        top = max(v)
        e = [math.exp(t - top) for t in v]
        return [t / sum(e) for t in e]

    z = [[1.0 if classes[j] == y else 0.0 for j in range(k)] for y in s_lab]
    z += [softmax([-sqdist(x, m) for m in protos]) for x in query]
    def means(z):
        return [[sum(z[p][j] * points[p][c] for p in range(len(points)))
                 / sum(z[p][j] for p in range(len(points))) for c in range(len(points[0]))]
                for j in range(k)]

    for _ in range(outer):
        unary = [[sqdist(x, m) for m in protos] for x in points]
        for _ in range(inner):
            new = [row[:] for row in z]
            for p in range(n_s, len(points)):
                new[p] = softmax([-unary[p][j] + lam * sum(w[p][q] * z[q][j]
                                                           for q in range(len(points)))
                                  for j in range(k)])
            z = new
        protos = means(z)
    return oracle_energy(points, z, means(z), w, lam)  # at the prototypes of the final z


@pytest.mark.parametrize("affinity", ["knn", "gaussian"])
@pytest.mark.parametrize("seed", [0, 1])
def test_laplacian_kmeans_matches_the_loop_oracle(affinity: Affinity, seed: int) -> None:
    from losslab.functional import laplacian_kmeans_loss

    s, sl, q, ql = episode(seed, way=3, shot=2, queries=3)
    got = laplacian_kmeans_loss(s, sl, q, ql, lam=0.7, affinity=affinity, knn=3,
                                outer_iters=3, bound_iters=4, reduction="sum")
    want = oracle_laplacian_kmeans(s.tolist(), sl.tolist(), q.tolist(), lam=0.7, kind=affinity,
                                   knn=3, outer=3, inner=4)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-10)


def test_laplacian_kmeans_energy_equals_the_loop_formula() -> None:
    from losslab.losses.fewshot import clustering_affinity, laplacian_kmeans_energy

    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    z = torch.softmax(torch.randn(7, 4, generator=g, dtype=torch.float64), 1)
    z[0] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # a labelled (one-hot) row
    m = torch.randn(4, 3, generator=g, dtype=torch.float64)
    for kind in ("knn", "gaussian"):
        w = clustering_affinity(x, affinity=kind, knn=2)  # type: ignore[arg-type]
        want_w = oracle_affinity(x.tolist(), kind, 2)
        assert w.flatten().tolist() == pytest.approx([v for row in want_w for v in row])
        got = laplacian_kmeans_energy(x, z, m, w, lam=1.3).sum().item()
        want = oracle_energy(x.tolist(), z.tolist(), m.tolist(), w.tolist(), 1.3)
        assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_laplacian_kmeans_bound_optimisation_never_increases_the_objective(seed: int) -> None:
    from losslab.losses.fewshot import laplacian_kmeans

    s, sl, q, _ = episode(seed, way=4, shot=2, queries=5)
    for lam in (0.3, 2.0):  # PSD (Gaussian) affinity: the paper's convergence guarantee
        r = laplacian_kmeans(s, sl, q, lam=lam, affinity="gaussian", outer_iters=8,
                             bound_iters=10, tol=0.0)
        e = torch.tensor(r.energies, dtype=torch.float64)
        assert len(e) == 1 + 8 * 11
        assert bool((e[1:] <= e[:-1] + 1e-9 * e[:-1].abs().clamp_min(1.0)).all())
        assert e[-1] < e[0]


def test_laplacian_kmeans_special_cases_and_constraints() -> None:
    from losslab.functional import laplacian_kmeans_loss
    from losslab.losses.fewshot import laplacian_kmeans

    s, sl, q, ql = episode(5, way=3, shot=2, queries=4)
    # lam = 0, no prototype update: soft nearest-prototype assignments (ProtoNet's softmax)
    r = laplacian_kmeans(s, sl, q, lam=0.0, outer_iters=1, bound_iters=1)
    protos = torch.stack([s[sl == c].mean(0) for c in torch.unique(sl)])
    torch.testing.assert_close(r.assignments, torch.softmax(-torch.cdist(q, protos) ** 2, 1))
    # the query labels are never used (transductive): any valid labels give the same value
    a = laplacian_kmeans_loss(s, sl, q, ql)
    b = laplacian_kmeans_loss(s, sl, q, ql.flip(0))
    torch.testing.assert_close(a, b)
    # well-separated classes: the inference recovers the query labels
    centres = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [9.0, 0, 0, 0, 0], [0, 9.0, 0, 0, 0]],
                           dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    sup = centres[[0, 0, 1, 1, 2, 2]] + 0.3 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    qry = centres[[2, 1, 0, 0, 2]] + 0.3 * torch.randn(5, 5, generator=g, dtype=torch.float64)
    r = laplacian_kmeans(sup, torch.tensor([4, 4, 8, 8, 6, 6]), qry, lam=1.0)
    assert r.predictions.tolist() == [6, 8, 4, 4, 6]


def test_laplacian_kmeans_gradient_reaches_support_and_query() -> None:
    from losslab.functional import laplacian_kmeans_loss

    s, sl, q, ql = episode(2, way=3, shot=2, queries=3)
    s.requires_grad_(True)
    q.requires_grad_(True)
    laplacian_kmeans_loss(s, sl, q, ql).backward()
    assert s.grad is not None and q.grad is not None
    assert bool(s.grad.abs().sum() > 0) and bool(q.grad.abs().sum() > 0)


@pytest.mark.slow
def test_laplacian_kmeans_gradient_is_exact_at_a_converged_fixed_point() -> None:
    """Envelope theorem: at a fixed point of the bound updates and the prototype update (a
    stationary point of the objective in Z and M) with a locally constant kNN graph, the
    gradient that holds Z* constant is the derivative of the optimised objective."""
    from losslab.functional import laplacian_kmeans_loss

    s, sl, q, ql = episode(4, way=2, shot=2, queries=2, dim=3)
    kw = {"lam": 0.2, "knn": 2, "outer_iters": 30, "bound_iters": 20, "reduction": "sum"}
    s.requires_grad_(True)
    laplacian_kmeans_loss(s, sl, q, ql, **kw).backward()  # type: ignore[arg-type]
    assert s.grad is not None
    h = 1e-5
    for i, j in [(0, 0), (1, 2), (2, 1), (3, 0)]:
        e = torch.zeros_like(s)
        e[i, j] = h
        with torch.no_grad():
            up = laplacian_kmeans_loss(s + e, sl, q, ql, **kw)  # type: ignore[arg-type]
            down = laplacian_kmeans_loss(s - e, sl, q, ql, **kw)  # type: ignore[arg-type]
        assert s.grad[i, j].item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-4,
                                                    abs=1e-6)


def _icnn_compiled_equals_eager(hparams: dict, episodes: list[tuple]) -> None:
    """``torch.compile(icnn, fullgraph=True)`` (no graph break) gives the eager value and the
    gradients of support and query (fp64), one compiled module for the episodes (of one
    shape: they reuse its graph)."""
    m = losslab.create("icnn", **hparams)
    torch._dynamo.reset()
    cm = torch.compile(m, fullgraph=True)
    for s, sl, q, ql in episodes:
        got = []
        for f in (m, cm):
            leaves = s.clone().requires_grad_(True), q.clone().requires_grad_(True)
            out = f(leaves[0], sl, leaves[1], ql)
            got.append((out, *torch.autograd.grad(out, leaves)))
        for c, e in zip(got[1], got[0]):
            torch.testing.assert_close(c, e)


@pytest.mark.slow
def test_icnn_compiled_equals_eager() -> None:
    """The compile-only static window of the "full" variant (every other point, sorted; the
    columns past the largest class size masked) gives the eager value and gradient: a window
    of 6 of 15 columns (unsorted, non-contiguous class ids), a window narrower than k (2 < 4),
    a one-class episode (no padding), and the "auto" self-exclusion with a reduced k; the
    other variants (fixed windows) compile too."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(10, 4, generator=g, dtype=torch.float64)
    q = torch.randn(6, 4, generator=g, dtype=torch.float64)
    unbalanced = (torch.tensor([7, 3, 3, 9, 7, 9, 3, 9, 9, 7]), torch.tensor([3, 9, 9, 7, 3, 7]))
    narrow = (torch.arange(10), torch.arange(6))  # class sizes 2 and 1: window 2 < k = 4
    one_class = (torch.zeros(10, dtype=torch.long), torch.zeros(6, dtype=torch.long))
    _icnn_compiled_equals_eager({}, [(s, unbalanced[0], q, unbalanced[1]),
                                     (s, narrow[0], q, narrow[1]),
                                     (s, one_class[0], q, one_class[1])])
    _icnn_compiled_equals_eager({"drop_first": "auto", "degenerate_gamma": "compute"},
                                [(s[:3], unbalanced[0][:3], q[:2], torch.tensor([3, 7]))])
    _icnn_compiled_equals_eager({"variant": "query"}, [(s, unbalanced[0], q, unbalanced[1])])


@pytest.mark.slow
@pytest.mark.parametrize("hparams", [
    {"drop_first": True, "degenerate_gamma": "one"},
    {"drop_first": True, "degenerate_gamma": "compute"},
    {"drop_first": "auto", "degenerate_gamma": "one"},
    {"drop_first": "auto", "degenerate_gamma": "compute"},
], ids=["drop-one", "drop-compute", "auto-one", "auto-compute"])
def test_icnn_query_prototypes_compiled_equals_eager(hparams: dict) -> None:
    """The "query" variant against the prototypes under compile: the classes padded to 12
    slots (their number C is data-dependent), the padded prototypes out of every window, and
    k_eff, reduced and the window tensors of the number of real classes. Compiled equals
    eager, value and gradients, with unsorted non-contiguous class ids: 3 classes (k = 4
    reduced to 1, gamma forced to 1 with "one"), 6 (k + 2 = C: reduced to 4, the same k) and
    9 (not reduced); one compiled module for the three episodes of one shape."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(12, 4, generator=g, dtype=torch.float64)
    q = torch.randn(6, 4, generator=g, dtype=torch.float64)
    episodes = [
        (torch.tensor([7, 3, 3, 9, 7, 9, 3, 9, 9, 7, 3, 7]), torch.tensor([3, 9, 9, 7, 3, 7])),
        (torch.tensor([7, 3, 12, 9, 7, 5, 3, 12, 9, 5, 0, 0]),
         torch.tensor([3, 9, 0, 7, 12, 5])),
        (torch.tensor([7, 3, 12, 9, 7, 5, 21, 12, 9, 14, 0, 2]),
         torch.tensor([3, 21, 0, 7, 14, 5])),
    ]
    _icnn_compiled_equals_eager({"variant": "query", "query_targets": "prototypes", **hparams},
                                [(s, sl, q, ql) for sl, ql in episodes])


@pytest.mark.slow
def test_icnn_query_prototypes_has_no_graph_break() -> None:
    """``torch._dynamo.explain`` finds no graph break in the "query" variant against the
    prototypes (the data-dependent number of classes is a padded, masked bound)."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(10, 4, generator=g)
    q = torch.randn(6, 4, generator=g)
    sl, ql = torch.tensor([7, 3, 3, 9, 7, 9, 3, 9, 9, 7]), torch.tensor([3, 9, 9, 7, 3, 7])
    m = losslab.create("icnn", variant="query", query_targets="prototypes")
    torch._dynamo.reset()
    ex = torch._dynamo.explain(m)(s, sl, q, ql)
    assert ex.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in ex.break_reasons]
