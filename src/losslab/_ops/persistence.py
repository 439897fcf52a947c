r"""Cubical persistence of 2-D images, image persistence of the union inclusion, and the Betti
matching of two images (Stucki, Paetzold, Shit, Menze, Bauer, "Topologically faithful image
segmentation via induced matching of persistence barcodes", arXiv 2211.15272).

Everything here works on one ``[H, W]`` float64 numpy image at a time, on the CPU, with no
gradient: it returns *which cells* (and so which pixels) are the birth and death of each bar;
:func:`losslab.losses.segmentation.betti.betti_matching_loss` gathers the values at those
pixels from the prediction so that the gradient flows through them.

**Filtration.** The superlevel filtration :math:`X_t = \{p \ge t\}` of a cubical complex:

* ``construction="V"`` (the paper's default): pixels are the vertices of a
  :math:`(2H-1)\times(2W-1)` cell grid; an edge joins 4-neighbours, a square four pixels of a
  :math:`2\times 2` block; a cell's value is the *minimum* of its pixels (it enters when all of
  them have). A superlevel set's components are 4-connected.
* ``construction="T"``: pixels are the squares of a :math:`(2H+1)\times(2W+1)` grid; a lower
  cell's value is the *maximum* of the pixels around it. Components are 8-connected (the
  convention of :func:`losslab.metrics.segmentation.betti_numbers`).

Cells are totally ordered by (value decreasing, dimension, grid position): faces precede their
cofaces, so every prefix is a subcomplex. A bar is a pair (birth cell, death cell) of this
order; its *value* interval is (value at birth, value at death), birth >= death. The global
component never dies: it is the essential bar (first vertex, ``-1``), whose death value is
taken as 0 (the official code's convention for :math:`-\infty`). The whole grid is contractible,
so no other bar is essential.

**Persistence** is computed by the standard column reduction over :math:`\mathbb{Z}/2`
(dimension 0 with its union-find form: the younger of two merging components dies), columns in
the filtration order, the pivot of a column its latest row.

**Image persistence** of the inclusion :math:`P_t \subseteq C_t` (the comparison image
:math:`C = \max(P, G)`, the *union*, contains both superlevel filtrations): the boundary matrix
of the complex is reduced with its columns in :math:`C`'s order and its rows in :math:`P`'s
order (Cohen-Steiner, Edelsbrunner, Harer, Morozov, "Persistent homology for kernels, images,
and cokernels", 2009; Bauer & Schmahl, "Efficient computation of image persistence", 2022):
a pivot ``(row sigma, column tau)`` is an image bar born at :math:`P`'s cell ``sigma`` and dying
at :math:`C`'s cell ``tau``. As in the official code, every image pair is kept (no filter on its
length).

**Induced matching** (Bauer & Lesnick): with totally ordered cells every endpoint is a distinct
cell, so the matching of the surjection :math:`H(P) \to \mathrm{im}` pairs the bars with the same
birth cell and the matching of the injection :math:`\mathrm{im} \to H(C)` the bars with the same
death cell. A bar of :math:`P` born at ``sigma`` is matched to the bar of :math:`C` that dies at
``tau`` when ``(sigma, tau)`` is an image bar. **Betti matching**: a bar of :math:`P` and a bar
of :math:`G` are matched when they are matched to the same bar of :math:`C`. Bars of :math:`P`,
:math:`G` and :math:`C` of zero value-length are dropped first (the official ``valid="positive"``;
the essential bar is always kept).

**The loss's terms** (:func:`betti_match_terms`): every term of the Betti matching loss is
a weighted squared difference of two values, each the value of a pixel of ``P``, of ``G``, or
0 (the essential bar's death): a matched pair gives two terms of weight 2 (births, deaths),
an unmatched bar one of weight 1 (birth, death). Their number is the number of bars of ``P``
and ``G`` together, at most :func:`max_betti_terms` (the vertices plus the squares of both
complexes: a dimension-0 bar is born at a distinct vertex, a dimension-1 bar dies at a
distinct square), a bound that depends only on the image shape. The operator
``losslab::betti_match_terms`` returns them padded to that bound for a batch of maps: the
static-shape form that ``torch.compile`` traces.

Cost: the squares' reduction is pure Python (sets of row ids); a 32 x 32 image takes a few
hundredths of a second, 128 x 128 about a second. 2-D only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Barcode",
    "BettiMatch",
    "Construction",
    "betti_match",
    "betti_match_terms",
    "betti_match_terms_op",
    "cubical_cells",
    "filtration_order",
    "image_persistence",
    "max_betti_terms",
    "persistence",
]

Construction = Literal["V", "T"]


@dataclass(frozen=True)
class _Cells:
    """The cell grid of an ``[H, W]`` image: ``dim[c]``, ``pixels[c, 4]`` (the pixels whose
    min (V) or max (T) is the cell's value, repeated to 4), ``boundary[c]`` (cell ids)."""

    shape: tuple[int, int]
    construction: str
    dim: np.ndarray
    pixels: np.ndarray
    boundary: tuple[tuple[int, ...], ...]


@lru_cache(maxsize=32)
def cubical_cells(h: int, w: int, construction: Construction = "V") -> _Cells:
    """The cubical complex of an ``h x w`` image (see the module docstring)."""
    if construction not in ("V", "T"):
        raise ValueError(f"construction must be 'V' or 'T', got {construction!r}")
    if h < 1 or w < 1:
        raise ValueError(f"image must be at least 1 x 1, got {h} x {w}")
    gm, gn = (2 * h - 1, 2 * w - 1) if construction == "V" else (2 * h + 1, 2 * w + 1)
    ii, jj = np.meshgrid(np.arange(gm), np.arange(gn), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    dim = (ii % 2) + (jj % 2)
    if construction == "V":
        rows = np.stack([ii // 2, (ii + 1) // 2], 1)
        cols = np.stack([jj // 2, (jj + 1) // 2], 1)
    else:  # pixel (r, c) is the square (2r + 1, 2c + 1); neighbours clipped into the image
        rows = np.stack([(ii - 1) // 2, ii // 2], 1)
        cols = np.stack([(jj - 1) // 2, jj // 2], 1)
        rows = np.where((rows >= 0) & (rows < h), rows, rows[:, ::-1])
        cols = np.where((cols >= 0) & (cols < w), cols, cols[:, ::-1])
        rows, cols = rows.clip(0, h - 1), cols.clip(0, w - 1)
    pixels = (rows[:, [0, 0, 1, 1]] * w + cols[:, [0, 1, 0, 1]]).astype(np.int64)
    bd: list[tuple[int, ...]] = []
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        faces: list[int] = []
        if i % 2:
            faces += [(i - 1) * gn + j, (i + 1) * gn + j]
        if j % 2:
            faces += [i * gn + j - 1, i * gn + j + 1]
        bd.append(tuple(faces))
    return _Cells((h, w), construction, dim, pixels, tuple(bd))


def filtration_order(image: np.ndarray, cells: _Cells) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """``(values[c], critical[c], order)`` of the superlevel filtration of ``image``: each
    cell's value, the pixel that gives it, and the cells sorted (value decreasing, dim, id)."""
    flat = np.asarray(image, dtype=np.float64).ravel()
    vals = flat[cells.pixels]
    pick = vals.argmin(1) if cells.construction == "V" else vals.argmax(1)
    critical = cells.pixels[np.arange(len(pick)), pick]
    values = flat[critical]
    order = np.lexsort((np.arange(len(values)), cells.dim, -values))
    return values, critical, order


@dataclass(frozen=True)
class Barcode:
    """Bars of one dimension: ``birth[k]``, ``death[k]`` cell ids (``death = -1``: essential)."""

    birth: np.ndarray
    death: np.ndarray


def _pairs(cells: _Cells, col_order: np.ndarray, row_rank: np.ndarray
           ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """Reduce the boundary matrix, columns in ``col_order``, rows ranked by ``row_rank``.

    Returns the dim-0 pairs (vertex, edge), dim-1 pairs (edge, square) and the essential vertex
    (the row-oldest vertex)."""
    dim = cells.dim
    bd = cells.boundary
    parent: dict[int, int] = {}
    oldest: dict[int, int] = {}  # root -> its row-oldest vertex

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    verts = np.flatnonzero(dim == 0)
    for v in verts.tolist():
        parent[v] = v
        oldest[v] = v
    pairs0: list[tuple[int, int]] = []
    pairs1: list[tuple[int, int]] = []
    pivots: dict[int, tuple[int, set[int]]] = {}  # row rank -> (column, reduced column)
    edges = col_order[dim[col_order] == 1]
    squares = col_order[dim[col_order] == 2]
    for e in edges.tolist():
        a, b = find(bd[e][0]), find(bd[e][1])
        if a == b:
            continue
        oa, ob = oldest[a], oldest[b]
        young, old = (oa, ob) if row_rank[oa] > row_rank[ob] else (ob, oa)
        pairs0.append((young, e))
        parent[a] = b
        oldest[b] = old
    for s in squares.tolist():
        col = {int(row_rank[f]) for f in bd[s]}
        while col:
            piv = max(col)
            hit = pivots.get(piv)
            if hit is None:
                break
            col ^= hit[1]
        if col:
            pivots[max(col)] = (s, col)
    rank_to_cell = np.empty(len(row_rank), dtype=np.int64)
    rank_to_cell[row_rank] = np.arange(len(row_rank))
    for piv, (s, _) in pivots.items():
        pairs1.append((int(rank_to_cell[piv]), s))
    essential = int(verts[np.argmin(row_rank[verts])])
    return pairs0, pairs1, essential


def persistence(image: np.ndarray, construction: Construction = "V") -> list[Barcode]:
    """Barcodes (dims 0 and 1, zero-length bars included) of the superlevel filtration."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D [H, W], got shape {img.shape}")
    cells = cubical_cells(*img.shape, construction)
    _, _, order = filtration_order(img, cells)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    p0, p1, ess = _pairs(cells, order, rank)
    return [_barcode([*p0, (ess, -1)]), _barcode(p1)]


def image_persistence(pred: np.ndarray, comparison: np.ndarray,
                      construction: Construction = "V") -> list[np.ndarray]:
    """Image barcode of :math:`H(P_t) \\to H(C_t)` for ``comparison >= pred`` pointwise, as
    value pairs ``[K, 2]`` (birth in ``pred``, death in ``comparison``; ``-inf`` for the
    essential bar) per dimension 0, 1. Every pair of the reduction is returned, zero- or
    negative-length ones included (they are alive at no level)."""
    p = np.asarray(pred, dtype=np.float64)
    c = np.asarray(comparison, dtype=np.float64)
    if p.ndim != 2 or p.shape != c.shape:
        raise ValueError(f"pred and comparison must be 2-D of one shape, got {p.shape} and "
                         f"{c.shape}")
    if (c < p).any():
        raise ValueError("comparison must be >= pred everywhere (it contains its superlevel "
                         "sets)")
    cells = cubical_cells(*p.shape, construction)
    vp, _, op = filtration_order(p, cells)
    vc, _, oc = filtration_order(c, cells)
    rp = np.empty_like(op)
    rp[op] = np.arange(len(op))
    p0, p1, ess = _pairs(cells, oc, rp)
    out = []
    for pairs in ([*p0, (ess, -1)], p1):
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        death = np.where(arr[:, 1] >= 0, vc[np.maximum(arr[:, 1], 0)], -np.inf)
        out.append(np.stack([vp[arr[:, 0]], death], 1))
    return out


def _barcode(pairs: list[tuple[int, int]]) -> Barcode:
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return Barcode(arr[:, 0].copy(), arr[:, 1].copy())


@dataclass(frozen=True)
class BettiMatch:
    """The Betti matching of a prediction ``P`` and a target ``G`` in one dimension.

    ``matched_p[k]``, ``matched_g[k]``: indices into ``bars_p`` / ``bars_g`` of the k-th
    matched pair; ``unmatched_p`` / ``unmatched_g``: the other bars. Bars are cell ids
    ``(birth, death)`` (``death = -1`` essential); :func:`betti_match` also returns, per
    image, the pixel whose value each cell takes.
    """

    bars_p: Barcode
    bars_g: Barcode
    matched_p: np.ndarray
    matched_g: np.ndarray
    unmatched_p: np.ndarray
    unmatched_g: np.ndarray


def _positive(bars: Barcode, values: np.ndarray) -> Barcode:
    """Drop bars of zero value-length (the essential bar stays)."""
    keep = (bars.death < 0) | (values[bars.birth] > values[np.maximum(bars.death, 0)])
    return Barcode(bars.birth[keep], bars.death[keep])


_Pairs = tuple[list[tuple[int, int]], list[tuple[int, int]], int]


def _to_c(bars: Barcode, image: _Pairs, d: int, c_by_death: dict[int, int]) -> dict[int, int]:
    """Bar index of X -> bar index of C through the image bars of X -> C: the X bar born at
    ``sigma`` goes to the C bar that dies at ``tau`` when ``(sigma, tau)`` is an image bar (each
    row is the pivot of at most one column, so ``sigma`` starts at most one image bar)."""
    pairs = [*image[0], (image[2], -1)] if d == 0 else image[1]
    death_of = dict(pairs)
    res: dict[int, int] = {}
    for k, s in enumerate(bars.birth.tolist()):
        t = death_of.get(s)
        if t is not None and t in c_by_death:
            res[k] = c_by_death[t]
    return res


def betti_match(pred: np.ndarray, target: np.ndarray, construction: Construction = "V"
                ) -> tuple[list[BettiMatch], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Betti matching of two ``[H, W]`` images through their union ``max(pred, target)``.

    Returns ``(matches, values_p, critical_p, values_g, critical_g)``: one
    :class:`BettiMatch` per dimension (0, 1) and, per image, each cell's value and the pixel
    that gives it."""
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(target, dtype=np.float64)
    if p.ndim != 2 or p.shape != g.shape:
        raise ValueError(f"pred and target must be 2-D images of one shape, got {p.shape} and "
                         f"{g.shape}")
    cells = cubical_cells(*p.shape, construction)
    c = np.maximum(p, g)
    vp, crit_p, op = filtration_order(p, cells)
    vg, crit_g, og = filtration_order(g, cells)
    vc, _, oc = filtration_order(c, cells)
    ranks = []
    for o in (op, og, oc):
        r = np.empty_like(o)
        r[o] = np.arange(len(o))
        ranks.append(r)
    rp, rg, rc = ranks
    own = [_pairs(cells, o, r) for o, r in ((op, rp), (og, rg), (oc, rc))]
    img_p = _pairs(cells, oc, rp)  # image of H(P) -> H(C): columns in C's order, rows in P's
    img_g = _pairs(cells, oc, rg)
    out: list[BettiMatch] = []
    for d in (0, 1):
        bars = []
        for (p0, p1, ess), vals in zip(own, (vp, vg, vc), strict=True):
            raw = _barcode([*p0, (ess, -1)]) if d == 0 else _barcode(p1)
            bars.append(_positive(raw, vals))
        bp, bg, bc = bars
        c_by_death = {int(t): k for k, t in enumerate(bc.death.tolist())}
        mp, mg = _to_c(bp, img_p, d, c_by_death), _to_c(bg, img_g, d, c_by_death)
        g_of_c = {cb: k for k, cb in mg.items()}
        pairs_pg = [(k, g_of_c[cb]) for k, cb in mp.items() if cb in g_of_c]
        arr = np.asarray(pairs_pg, dtype=np.int64).reshape(-1, 2)
        unmatched_p = np.setdiff1d(np.arange(len(bp.birth)), arr[:, 0])
        unmatched_g = np.setdiff1d(np.arange(len(bg.birth)), arr[:, 1])
        out.append(BettiMatch(bp, bg, arr[:, 0].copy(), arr[:, 1].copy(), unmatched_p,
                              unmatched_g))
    return out, vp, crit_p, vg, crit_g


def max_betti_terms(h: int, w: int, construction: str = "V") -> int:
    """Upper bound on the number of terms of :func:`betti_match_terms` for ``h x w`` images:
    twice the vertices plus squares of the complex (``construction="V"``: ``h w`` and
    ``(h - 1)(w - 1)``; ``"T"``: ``(h + 1)(w + 1)`` and ``h w``). Works on symbolic sizes."""
    if construction == "V":
        return 2 * (h * w + (h - 1) * (w - 1))
    return 2 * ((h + 1) * (w + 1) + h * w)


def betti_match_terms(pred: np.ndarray, target: np.ndarray, construction: Construction = "V"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The Betti matching loss of ``pred`` against ``target`` (``[H, W]``) as
    ``sum_t weight[t] (v[index[t, 0]] - v[index[t, 1]])^2`` with ``v`` the concatenation of
    ``pred.ravel()``, ``target.ravel()`` and a 0 (index ``2 H W``; the death value of the
    essential bar). Returns ``(index[T, 2]`` int64, ``weight[T]`` float64): 2 for the birth and
    the death terms of each matched pair, 1 for each unmatched bar (birth against death)."""
    matches, _, crit_p, _, crit_g = betti_match(pred, target, construction)
    hw = int(np.asarray(pred).size)
    zero = 2 * hw
    idx: list[np.ndarray] = []
    wts: list[np.ndarray] = []

    def ends(crit: np.ndarray, bars: Barcode, offset: int) -> tuple[np.ndarray, np.ndarray]:
        birth = crit[bars.birth] + offset
        death = np.where(bars.death >= 0, crit[np.maximum(bars.death, 0)] + offset, zero)
        return birth, death

    for m in matches:
        bp, dp = ends(crit_p, m.bars_p, 0)
        bg, dg = ends(crit_g, m.bars_g, hw)
        ip, ig, up, ug = m.matched_p, m.matched_g, m.unmatched_p, m.unmatched_g
        idx += [np.stack([bp[ip], bg[ig]], 1), np.stack([dp[ip], dg[ig]], 1),
                np.stack([bp[up], dp[up]], 1), np.stack([bg[ug], dg[ug]], 1)]
        wts += [np.full(2 * len(ip), 2.0), np.ones(len(up) + len(ug))]
    return (np.concatenate(idx).astype(np.int64).reshape(-1, 2),
            np.concatenate(wts).astype(np.float64))


@torch.library.custom_op("losslab::betti_match_terms", mutates_args=())
def betti_match_terms_op(pred: Tensor, target: Tensor, construction: str) -> tuple[Tensor,
                                                                                   Tensor]:
    """:func:`betti_match_terms` of each pair of maps ``pred[m], target[m]`` (``[M, H, W]``,
    float; no gradient), padded to :func:`max_betti_terms`: ``index[M, T, 2]`` (int64; the
    padding points both ends at the 0 entry ``2 H W``) and ``weight[M, T]`` (float64; 0 on the
    padding). On the device of ``pred``; the persistence runs on the CPU in float64."""
    m_, h, w = pred.shape
    t = max_betti_terms(h, w, construction)
    index = np.full((m_, t, 2), 2 * h * w, dtype=np.int64)
    weight = np.zeros((m_, t), dtype=np.float64)
    pn = pred.detach().to("cpu", torch.float64).numpy()
    gn = target.detach().to("cpu", torch.float64).numpy()
    for k in range(m_):
        i, wk = betti_match_terms(pn[k], gn[k], construction)  # type: ignore[arg-type]
        index[k, : len(wk)] = i
        weight[k, : len(wk)] = wk
    return (torch.from_numpy(index).to(pred.device),
            torch.from_numpy(weight).to(pred.device))


@betti_match_terms_op.register_fake
def _(pred: Tensor, target: Tensor, construction: str) -> tuple[Tensor, Tensor]:
    m_, h, w = pred.shape
    t = max_betti_terms(h, w, construction)
    return (pred.new_empty((m_, t, 2), dtype=torch.int64),
            pred.new_empty((m_, t), dtype=torch.float64))
