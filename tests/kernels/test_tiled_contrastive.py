"""Tiled contrastive kernels (:mod:`losslab.kernels.tiled_contrastive`): the kernels against
dense formulas written out, and the tiled path of InfoNCE/CLIP/SigLIP against their dense path
(values and gradients, every reduction, gradcheck)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losslab.functional import clip_loss, infonce_loss, siglip_loss
from losslab.kernels.tiled_contrastive import (
    rows_for_budget,
    tiled_infonce_terms,
    tiled_row_terms,
    tiled_sigmoid_terms,
)


def pairs(n: int = 7, d: int = 5, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    b = a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.requires_grad_(True), b.requires_grad_(True)


@pytest.mark.parametrize("tile", [1, 4, 9, 50])
def test_kernels_match_dense_formulas_on_raw_embeddings(tile: int) -> None:
    """The kernels take any (not normalised) rows: logits = scale * a @ b.T."""
    a, b = pairs(n=9, d=4, scale=2.0)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    w_row, w_col, w_sig = (torch.randn(9, dtype=torch.float64) for _ in range(3))

    logits = scale * a @ b.t()
    dense_row = torch.logsumexp(logits, 1) - logits.diagonal()
    dense_col = torch.logsumexp(logits, 0) - logits.diagonal()
    z = 2 * torch.eye(9, dtype=torch.float64) - 1  # +1 on the diagonal, -1 elsewhere
    dense_sig = F.softplus(-z * (logits + bias)).sum(1)

    row, col = tiled_infonce_terms(a, b, scale, tile=tile)
    sig = tiled_sigmoid_terms(a, b, scale, bias, tile=tile)
    torch.testing.assert_close(row, dense_row)
    torch.testing.assert_close(col, dense_col)
    torch.testing.assert_close(sig, dense_sig)

    inputs = (a, b, scale, bias)
    dense = (dense_row * w_row + dense_col * w_col + dense_sig * w_sig).sum()
    tiled = (row * w_row + col * w_col + sig * w_sig).sum()
    g_dense = torch.autograd.grad(dense, inputs)
    g_tiled = torch.autograd.grad(tiled, inputs)
    for gd, gt in zip(g_dense, g_tiled):
        torch.testing.assert_close(gt, gd)


def test_kernels_pass_gradcheck() -> None:
    a, b = pairs(n=5, d=3, scale=1.5)
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y, s: tiled_infonce_terms(x, y, s, tile=2), (a, b, scale))
    assert torch.autograd.gradcheck(
        lambda x, y, s, c: tiled_sigmoid_terms(x, y, s, c, tile=3), (a, b, scale, bias),
        nondet_tol=REENTRANT_TOL)
    assert torch.autograd.gradcheck(
        lambda x, y, s: tiled_row_terms(x, y, s, tile=3), (a, b, scale),
        nondet_tol=REENTRANT_TOL)


@pytest.mark.parametrize("tile", [1, 3, 7, 100])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_tiled_path_equals_dense_path_values_and_gradients(tile: int, reduction: str) -> None:
    a, b = pairs(n=11, scale=3.0)
    w = torch.randn(11, dtype=torch.float64)
    for f, kw in ((infonce_loss, {}), (clip_loss, {}), (infonce_loss, {"symmetric": True}),
                  (siglip_loss, {})):
        temp = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        outs = []
        for chunk in (None, tile):
            out = f(a, b, temperature=temp, chunk_size=chunk, reduction=reduction, **kw)
            loss = (out * w).sum() if reduction == "none" else out
            grads = torch.autograd.grad(loss, (a, b, temp))
            outs.append((out, grads))
        torch.testing.assert_close(outs[0][0], outs[1][0])
        for g_dense, g_tiled in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(g_dense, g_tiled)


# The one-pass kernels turn the forward's buffers into the gradients on the first backward; a
# repeated backward (gradcheck's reentrancy check) recomputes them: equal up to rounding.
REENTRANT_TOL = 1e-12


def test_tiled_paths_pass_gradcheck() -> None:
    a, b = pairs(n=5, d=3)
    temp = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y, t: clip_loss(x, y, temperature=t, chunk_size=2), (a, b, temp))
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda x, y, t, r=reduction: infonce_loss(x, y, temperature=t, chunk_size=2,
                                                      reduction=r),
            (a, b, temp), nondet_tol=REENTRANT_TOL)
        assert torch.autograd.gradcheck(
            lambda x, y, t, c, r=reduction: siglip_loss(x, y, temperature=t, bias=c,
                                                        chunk_size=2, reduction=r),
            (a, b, temp, bias), nondet_tol=REENTRANT_TOL)


def _dense_terms(a, b, scale, bias=None, *, normalize=False):
    """Dense reference: ``l = scale * a @ b.T`` (rows normalised first), written out."""
    if normalize:
        a = a / torch.linalg.vector_norm(a, dim=1, keepdim=True).clamp_min(1e-12)
        b = b / torch.linalg.vector_norm(b, dim=1, keepdim=True).clamp_min(1e-12)
    logits = scale * a @ b.t()
    diag = logits.diagonal()
    if bias is None:
        return torch.logsumexp(logits, 1) - diag, torch.logsumexp(logits, 0) - diag
    z = 2 * torch.eye(a.shape[0], dtype=a.dtype) - 1
    return F.softplus(-z * (logits + bias)).sum(1)


@pytest.mark.parametrize("weights", ["uniform", "random"])
def test_normalisation_inside_the_kernels(weights: str) -> None:
    """``normalize=True`` equals normalising first, values and gradients w.r.t. the raw rows
    (a zero row included: its norm is clamped at eps), for uniform row weights (the forward's
    buffers become the gradients) and any others (recomputed); a second backward agrees."""
    a, b = pairs(n=9, d=4, scale=2.0)
    with torch.no_grad():
        a[4] = 0.0
    g = torch.Generator().manual_seed(3)
    scale = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    w = (torch.full((9,), 0.3, dtype=torch.float64) if weights == "uniform"
         else torch.randn(9, generator=g, dtype=torch.float64))
    d_row, d_col = _dense_terms(a, b, scale, normalize=True)
    d_sig = _dense_terms(a, b, scale, bias, normalize=True)
    kw = {"tile": 4, "normalize": True}
    cases = [
        (tiled_infonce_terms(a, b, scale, **kw)[0], d_row, (a, b, scale)),
        (tiled_infonce_terms(a, b, scale, **kw)[1], d_col, (a, b, scale)),
        (tiled_row_terms(a, b, scale, **kw), d_row, (a, b, scale)),
        (tiled_sigmoid_terms(a, b, scale, bias, **kw), d_sig, (a, b, scale, bias)),
    ]
    for tiled, dense, inputs in cases:
        torch.testing.assert_close(tiled, dense)
        g_t = torch.autograd.grad((tiled * w).sum(), inputs, retain_graph=True)
        g_d = torch.autograd.grad((dense * w).sum(), inputs, retain_graph=True)
        for gt, gd in zip(g_t, g_d):
            torch.testing.assert_close(gt, gd)
        g_again = torch.autograd.grad((tiled * w).sum(), inputs)
        for g1, g2 in zip(g_t, g_again):
            torch.testing.assert_close(g1, g2)


def test_column_sums_that_would_underflow_are_recomputed() -> None:
    """At an extreme scale, a column's entries in one tile can all sit > 87 below the tile's
    largest logit: its float32 partial sum underflows to 0 and is redone exactly."""
    e = torch.eye(3)
    a = torch.stack([e[0], e[1]])  # one tile of two rows
    b = torch.stack([e[0], -e[0]])  # column 1: logits -150 (row 0) and 0 (row 1)
    scale = torch.tensor(150.0)
    row, col = tiled_infonce_terms(a, b, scale, tile=2)
    ref_row, ref_col = _dense_terms(a.double(), b.double(), scale.double())
    assert torch.isfinite(col).all()
    torch.testing.assert_close(row.double(), ref_row)
    torch.testing.assert_close(col.double(), ref_col)


def test_tile_rows_come_from_a_memory_budget() -> None:
    """The automatic tile keeps two ``rows x N`` buffers within the workspace budget."""
    from losslab.kernels.tiled_contrastive import MIN_TILE, WORKSPACE_BYTES

    for n in (8192, 16384, 65536, 262144):
        rows = rows_for_budget(n, 4)
        assert rows >= MIN_TILE
        assert rows == MIN_TILE or 2 * rows * n * 4 <= WORKSPACE_BYTES
    assert rows_for_budget(5, 8) == 5  # never more rows than there are
    assert rows_for_budget(16384, 4, budget=2**31) == 16384
