"""Cubical persistence, image persistence and the Betti matching of
:mod:`losslab._ops.persistence`: barcodes against gudhi, image barcodes against the rank of
the induced map computed by brute force (connected components for dim 0, cycle and boundary
spaces over GF(2) for dim 1), and matchings known by hand; the loss's terms and their padded
custom operator (``losslab::betti_match_terms``, the ``torch.compile`` path) pass
``torch.library.opcheck``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from losslab._ops.persistence import (
    betti_match,
    betti_match_terms,
    betti_match_terms_op,
    cubical_cells,
    filtration_order,
    image_persistence,
    max_betti_terms,
    persistence,
)


def disk(n: int, center: tuple[int, int], r: float, hole: float | None = None) -> np.ndarray:
    y, x = np.mgrid[:n, :n]
    d = (y - center[0]) ** 2 + (x - center[1]) ** 2
    m = d <= r * r
    if hole is not None:
        m &= d > hole * hole
    return m.astype(np.float64)


def value_bars(img: np.ndarray, construction: str) -> list[tuple[int, float, float]]:
    cells = cubical_cells(*img.shape, construction)  # type: ignore[arg-type]
    vals = filtration_order(img, cells)[0]
    out = []
    for d, bc in enumerate(persistence(img, construction)):  # type: ignore[arg-type]
        for b, t in zip(bc.birth.tolist(), bc.death.tolist(), strict=True):
            vb, vd = float(vals[b]), (float(vals[t]) if t >= 0 else -np.inf)
            if vb > vd:  # sublevel of -img, as gudhi sees it
                out.append((d, round(-vb, 9), round(-vd, 9) if t >= 0 else np.inf))
    return sorted(out)


@pytest.mark.parametrize("construction", ["V", "T"])
def test_barcodes_match_gudhi(construction: str) -> None:
    gudhi = pytest.importorskip("gudhi")
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = (int(v) for v in rng.integers(1, 10, 2))
        img = rng.random((h, w)) if trial % 2 else rng.integers(0, 3, (h, w)).astype(float)
        if construction == "V":
            cc = gudhi.CubicalComplex(vertices=-img)
        else:
            cc = gudhi.CubicalComplex(top_dimensional_cells=-img)
        ref = sorted((d, round(b, 9), round(t, 9) if np.isfinite(t) else np.inf)
                     for d, (b, t) in cc.persistence(homology_coeff_field=2,
                                                     min_persistence=-1) if t > b)
        assert value_bars(img, construction) == ref


# ------------------------------------------------------------------------------------------
# image persistence against the rank of H(P_s) -> H(C_t), s >= t, by brute force
# ------------------------------------------------------------------------------------------


def _gf2_rank(m: np.ndarray) -> int:
    a = (m % 2).astype(np.uint8).copy()
    rank = 0
    rows, cols = a.shape
    for c in range(cols):
        piv = next((r for r in range(rank, rows) if a[r, c]), None)
        if piv is None:
            continue
        a[[rank, piv]] = a[[piv, rank]]
        for r in range(rows):
            if r != rank and a[r, c]:
                a[r] ^= a[rank]
        rank += 1
    return rank


def _gf2_nullspace(m: np.ndarray) -> np.ndarray:
    """A basis (columns) of {x : m x = 0} over GF(2)."""
    a = (m % 2).astype(np.uint8).copy()
    rows, cols = a.shape
    pivots, r = [], 0
    for c in range(cols):
        piv = next((i for i in range(r, rows) if a[i, c]), None)
        if piv is None:
            continue
        a[[r, piv]] = a[[piv, r]]
        for i in range(rows):
            if i != r and a[i, c]:
                a[i] ^= a[r]
        pivots.append(c)
        r += 1
    free = [c for c in range(cols) if c not in pivots]
    basis = np.zeros((cols, len(free)), dtype=np.uint8)
    for k, f in enumerate(free):
        basis[f, k] = 1
        for i, pc in enumerate(pivots):
            basis[pc, k] = a[i, f]
    return basis


def _induced_rank(p: np.ndarray, c: np.ndarray, s: float, t: float, dim: int,
                  construction: str) -> int:
    """rank of H_dim({p >= s}) -> H_dim({c >= t}) from the chain complex, over GF(2)."""
    cells = cubical_cells(*p.shape, construction)  # type: ignore[arg-type]
    vp = filtration_order(p, cells)[0]
    vc = filtration_order(c, cells)[0]
    n = len(cells.dim)
    bd = np.zeros((n, n), dtype=np.uint8)
    for j, faces in enumerate(cells.boundary):
        for f in faces:
            bd[f, j] ^= 1
    in_p, in_c = vp >= s, vc >= t
    if dim == 0:
        cyc = np.eye(n, dtype=np.uint8)[:, (cells.dim == 0) & in_p]
        bnd = bd[:, (cells.dim == 1) & in_c]
    else:
        edges = np.flatnonzero((cells.dim == 1) & in_p)
        null = _gf2_nullspace(bd[:, edges])
        cyc = np.zeros((n, null.shape[1]), dtype=np.uint8)
        cyc[edges] = null
        bnd = bd[:, (cells.dim == 2) & in_c]
    return _gf2_rank(np.concatenate([cyc, bnd], 1)) - _gf2_rank(bnd)


@pytest.mark.parametrize("construction", ["V", "T"])
def test_image_barcode_counts_the_rank_of_the_induced_map(construction: str) -> None:
    rng = np.random.default_rng(1)
    for trial in range(6):
        h, w = 4, 5
        if trial % 2:
            p = rng.random((h, w)).round(1)
            g = rng.random((h, w)).round(1)
        else:  # binary-like, with many ties
            p = rng.integers(0, 2, (h, w)).astype(float)
            g = rng.integers(0, 2, (h, w)).astype(float)
        c = np.maximum(p, g)
        bars = image_persistence(p, c, construction)  # type: ignore[arg-type]
        levels = sorted(set(p.ravel().tolist()) | set(c.ravel().tolist()))
        for s, t in itertools.combinations_with_replacement(levels, 2):
            s, t = max(s, t), min(s, t)  # P_s inside C_t needs s >= t
            for dim in (0, 1):
                b = bars[dim]
                alive = int(((b[:, 0] >= s) & (b[:, 1] < t)).sum())
                assert alive == _induced_rank(p, c, s, t, dim, construction), (trial, s, t, dim)


def test_image_persistence_rejects_a_comparison_below_pred() -> None:
    with pytest.raises(ValueError, match="comparison"):
        image_persistence(np.ones((3, 3)), np.zeros((3, 3)))


# ------------------------------------------------------------------------------------------
# Betti matchings known by hand
# ------------------------------------------------------------------------------------------


def counts(p: np.ndarray, g: np.ndarray, construction: str = "V") -> list[tuple[int, int, int]]:
    """(matched, unmatched in p, unmatched in g) per dimension."""
    ms = betti_match(p, g, construction)[0]  # type: ignore[arg-type]
    return [(len(m.matched_p), len(m.unmatched_p), len(m.unmatched_g)) for m in ms]


def test_one_blob_against_two_blobs() -> None:
    one = disk(16, (5, 5), 3)
    two = one + disk(16, (11, 11), 3)
    assert counts(one, two) == [(1, 0, 1), (0, 0, 0)]
    assert counts(two, one) == [(1, 1, 0), (0, 0, 0)]


def test_disk_against_ring() -> None:
    d, ring = disk(16, (8, 8), 6), disk(16, (8, 8), 6, 3)
    assert counts(d, ring) == [(1, 0, 0), (0, 0, 1)]
    assert counts(ring, ring) == [(1, 0, 0), (1, 0, 0)]


def test_a_hole_in_the_wrong_place_is_not_matched() -> None:
    # same Betti numbers (one component, one hole), disjoint rings: the holes do not match
    a, b = disk(20, (6, 6), 5, 2), disk(20, (13, 13), 5, 2)
    assert counts(a, b) == [(1, 0, 0), (0, 1, 1)]
    # overlapping rings with the holes at one place: matched
    c = disk(20, (6, 6), 5, 1)
    assert counts(a, c) == [(1, 0, 0), (1, 0, 0)]


def test_diagonal_pixels_connect_in_t_not_in_v() -> None:
    p = np.zeros((4, 4))
    p[1, 1] = p[2, 2] = 1.0
    g = np.zeros((4, 4))
    g[1, 1] = g[2, 2] = g[1, 2] = 1.0
    # V: two 4-separated pixels in P, one 4-connected component in G -> one P bar unmatched
    assert counts(p, g, "V") == [(1, 1, 0), (0, 0, 0)]
    # T: the diagonal pair is one 8-connected component, as G is
    assert counts(p, g, "T") == [(1, 0, 0), (0, 0, 0)]


def test_soft_prediction_matches_its_own_threshold() -> None:
    # a soft blob inside the target blob: one matched component, nothing else
    g = disk(12, (6, 6), 4)
    p = 0.9 * disk(12, (6, 6), 3) + 0.05
    assert counts(p, g)[0] == (1, 0, 0)


def test_betti_match_rejects_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        betti_match(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="construction"):
        cubical_cells(3, 3, "X")  # type: ignore[arg-type]


def terms_value(p: np.ndarray, g: np.ndarray, index: np.ndarray, weight: np.ndarray) -> float:
    v = np.concatenate([p.ravel(), g.ravel(), [0.0]])
    return float((weight * (v[index[:, 0]] - v[index[:, 1]]) ** 2).sum())


def loss_by_bars(p: np.ndarray, g: np.ndarray, construction: str) -> float:
    """The loss bar by bar: 2 |q - q'|^2 per matched pair, (b - d)^2 per unmatched bar."""
    matches, vp, _, vg, _ = betti_match(p, g, construction)  # type: ignore[arg-type]

    def bar(vals: np.ndarray, bars, k: int) -> tuple[float, float]:
        d = bars.death[k]
        return float(vals[bars.birth[k]]), float(vals[d]) if d >= 0 else 0.0

    total = 0.0
    for m in matches:
        for a, b in zip(m.matched_p.tolist(), m.matched_g.tolist(), strict=True):
            (b0, d0), (b1, d1) = bar(vp, m.bars_p, a), bar(vg, m.bars_g, b)
            total += 2 * ((b0 - b1) ** 2 + (d0 - d1) ** 2)
        for a in m.unmatched_p.tolist():
            b0, d0 = bar(vp, m.bars_p, a)
            total += (b0 - d0) ** 2
        for b in m.unmatched_g.tolist():
            b1, d1 = bar(vg, m.bars_g, b)
            total += (b1 - d1) ** 2
    return total


@pytest.mark.parametrize("construction", ["V", "T"])
def test_betti_match_terms_are_the_loss_and_within_the_bound(construction: str) -> None:
    rng = np.random.default_rng(7)
    ii, jj = np.indices((6, 7))
    checker = ((ii + jj) % 2).astype(np.float64)
    for shape in [(1, 1), (1, 6), (5, 1), (6, 7), (9, 8)]:
        for p, g in [(rng.random(shape), (rng.random(shape) > 0.5).astype(np.float64)),
                     (rng.random(shape), rng.random(shape))]:
            index, weight = betti_match_terms(p, g, construction)  # type: ignore[arg-type]
            assert index.shape == (len(weight), 2) and set(weight.tolist()) <= {1.0, 2.0}
            assert len(weight) <= max_betti_terms(*shape, construction)
            assert terms_value(p, g, index, weight) == pytest.approx(
                loss_by_bars(p, g, construction), rel=1e-12, abs=1e-15)
    c = checker + rng.random(checker.shape) * 1e-3  # many bars
    index, weight = betti_match_terms(c, 1 - checker, construction)  # type: ignore[arg-type]
    assert len(weight) <= max_betti_terms(6, 7, construction)


@pytest.mark.parametrize("construction", ["V", "T"])
def test_betti_match_terms_operator_passes_opcheck_and_pads(construction: str) -> None:
    rng = np.random.default_rng(8)
    p = torch.tensor(rng.random((3, 5, 6)))
    g = torch.tensor((rng.random((3, 5, 6)) > 0.5).astype(np.float64))
    g[2] = p[2]  # identical maps: every bar matched to itself, loss 0
    for args in [(p, g), (p.float(), g.float()), (p[:, :1], g[:, :1]), (p[:0], g[:0])]:
        torch.library.opcheck(betti_match_terms_op, (*args, construction))
    index, weight = betti_match_terms_op(p, g, construction)
    t = max_betti_terms(5, 6, construction)
    assert index.shape == (3, t, 2) and index.dtype == torch.int64
    assert weight.shape == (3, t) and weight.dtype == torch.float64
    for k in range(3):
        i, w = betti_match_terms(p[k].numpy(), g[k].numpy(), construction)  # type: ignore
        assert torch.equal(index[k, : len(w)], torch.from_numpy(i))
        assert torch.equal(weight[k, : len(w)], torch.from_numpy(w))
        assert bool((weight[k, len(w):] == 0).all()) and bool((index[k, len(w):] == 60).all())
        assert terms_value(p[k].numpy(), g[k].numpy(), index[k].numpy(), weight[k].numpy()) \
            == pytest.approx(loss_by_bars(p[k].numpy(), g[k].numpy(), construction),
                             rel=1e-12, abs=1e-15)
