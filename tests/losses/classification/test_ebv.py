"""Tests of Equiangular Basis Vectors (losslab.losses.classification.ebv).

Oracle: softmax cross-entropy over cos(f, w_k) / tau written with Python loops in float64.
Properties: the generated vectors are unit vectors whose pairwise |cos| meets the threshold
(also with more classes than dimensions, above the Welch bound), generation is deterministic,
the loss is invariant to the scale of the embeddings and of the class vectors.
"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab import functional as LF
from losslab.losses.classification.ebv import EBVLoss, equiangular_basis_vectors

D = torch.float64


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def max_abs_cos(w):
    c = (w @ w.T).abs()
    c.fill_diagonal_(0)
    return float(c.max())


def oracle(emb, labels, basis, tau):
    out = []
    for i in range(emb.shape[0]):
        f = emb[i].tolist()
        nf = math.sqrt(sum(v * v for v in f))
        cos = []
        for k in range(basis.shape[0]):
            w = basis[k].tolist()
            nw = math.sqrt(sum(v * v for v in w))
            cos.append(sum(p * q for p, q in zip(f, w)) / (nf * nw) / tau)
        m = max(cos)
        lse = m + math.log(sum(math.exp(s - m) for s in cos))
        out.append(lse - cos[int(labels[i])])
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_oracle(tau):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(7, 5, generator=g, dtype=D) * 3
    basis = torch.randn(4, 5, generator=g, dtype=D)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    close(LF.ebv_loss(emb, y, basis, temperature=tau, reduction="none"), oracle(emb, y, basis, tau))
    close(LF.ebv_loss(emb, y, basis, temperature=tau), oracle(emb, y, basis, tau).mean())


def test_scale_invariance():
    g = torch.Generator().manual_seed(1)
    emb, basis = torch.randn(6, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ref = LF.ebv_loss(emb, y, basis, reduction="none")
    close(LF.ebv_loss(emb * 17.0, y, basis * 0.2, reduction="none"), ref)


@pytest.mark.parametrize(("c", "d", "alpha"), [(4, 5, 0.002), (12, 6, 0.45)])
def test_generated_vectors_are_unit_and_nearly_orthogonal(c, d, alpha):
    w = equiangular_basis_vectors(c, d, threshold=alpha, seed=3)
    assert w.shape == (c, d)
    close(w.norm(dim=1), torch.ones(c), rtol=1e-6, atol=1e-6)
    assert max_abs_cos(w) <= alpha + 1e-4 + 1e-6
    if c > d:  # Welch bound: no set of c unit vectors in R^d does better
        assert max_abs_cos(w) >= math.sqrt((c - d) / (d * (c - 1))) - 1e-6
    torch.testing.assert_close(w, equiangular_basis_vectors(c, d, threshold=alpha, seed=3))


def test_unreachable_threshold_stops_after_max_steps():
    w = equiangular_basis_vectors(8, 2, threshold=0.0, max_steps=5, seed=0)
    assert w.shape == (8, 2) and max_abs_cos(w) > 0.5  # 8 directions in the plane


def test_module_buffer_gradients_and_state_dict():
    mod = losslab.create("ebv", num_classes=4, embedding_dim=5, threshold=0.01, seed=2)
    assert isinstance(mod, EBVLoss)
    assert mod.basis.shape == (4, 5) and max_abs_cos(mod.basis) <= 0.0111
    assert list(mod.state_dict()) == ["basis"] and not list(mod.parameters())
    g = torch.Generator().manual_seed(4)
    e = torch.randn(6, 5, generator=g, dtype=D).requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    mod = mod.double()
    close(mod(e, y), LF.ebv_loss(e, y, mod.basis))
    assert torch.autograd.gradcheck(lambda z: mod(z, y), (e,), eps=1e-6, atol=1e-6)
    other = losslab.create("ebv", num_classes=4, embedding_dim=5, seed=9).double()
    other.load_state_dict(mod.state_dict())
    close(other(e, y), mod(e, y))


def test_bad_inputs():
    e, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="labels"):
        LF.ebv_loss(e, torch.tensor([0, 1, 4]), torch.randn(4, 5))
    with pytest.raises(ValueError, match="basis"):
        LF.ebv_loss(e, y, torch.randn(4, 6))
    with pytest.raises(ValueError, match="temperature"):
        LF.ebv_loss(e, y, torch.randn(4, 5), temperature=0.0)
    with pytest.raises(ValueError, match="threshold"):
        equiangular_basis_vectors(3, 3, threshold=1.5)
    s = losslab.spec("ebv")
    assert s.arxiv == "2303.11637" and s.kind == "embeddings"
