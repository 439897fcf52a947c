"""Tiled contrastive kernels (:mod:`losslab.kernels.tiled_contrastive`): the kernels against
dense formulas written out, and the tiled path of InfoNCE/CLIP/SigLIP against their dense path
(values and gradients, every reduction, gradcheck)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losslab.functional import clip_loss, infonce_loss, siglip_loss
from losslab.kernels.tiled_contrastive import tiled_infonce_terms, tiled_sigmoid_terms


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
        lambda x, y, s, c: tiled_sigmoid_terms(x, y, s, c, tile=3), (a, b, scale, bias))


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


def test_tiled_paths_pass_gradcheck() -> None:
    a, b = pairs(n=5, d=3)
    temp = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y, t: clip_loss(x, y, temperature=t, chunk_size=2), (a, b, temp))
    assert torch.autograd.gradcheck(
        lambda x, y, t, c: siglip_loss(x, y, temperature=t, bias=c, chunk_size=2),
        (a, b, temp, bias))
