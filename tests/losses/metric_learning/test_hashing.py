"""OrthoHash: oracle loops of the margin softmax over cosines to fixed codes, the official
``OrthoHashLoss`` computation, the codebook generators, and the paper's quantisation argument
(maximising the cosine to a code aligns the signs with it)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab.losses.metric_learning.hashing import hashing_codebook, orthohash_loss


def _oracle(v: torch.Tensor, y: torch.Tensor, codes: torch.Tensor, s: float, m: float,
            arc: bool = False) -> float:
    total = 0.0
    for i in range(v.shape[0]):
        logits = []
        for c in range(codes.shape[0]):
            cos = float(v[i] @ codes[c]) / (float(v[i].norm()) * float(codes[c].norm()))
            if c == int(y[i]):
                if arc:
                    cos = math.cos(math.acos(max(-0.99999, min(0.99999, cos))) + m)
                else:
                    cos = cos - m
            elif arc:
                cos = math.cos(math.acos(max(-0.99999, min(0.99999, cos))))
            logits.append(s * cos)
        lse = math.log(sum(math.exp(z) for z in logits))
        total += lse - logits[int(y[i])]
    return total / v.shape[0]


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(7, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=g)
    codes = hashing_codebook(5, 16, seed=seed).double()
    return v, y, codes


@pytest.mark.parametrize("arc", [False, True])
def test_oracle(arc: bool) -> None:
    v, y, codes = _inputs()
    out = orthohash_loss(v, y, codes, scale=8.0, margin=0.2, margin_type="arc" if arc else "cos")
    assert out.item() == pytest.approx(_oracle(v, y, codes, 8.0, 0.2, arc), rel=1e-10)


@pytest.mark.parametrize("qtype", ["cs", "l1", "l2"])
def test_official_computation_with_quantization(qtype: str) -> None:
    """The official OrthoHashLoss.forward, restated: CosSim logits, one-hot margin, CE, and
    quan * mean quantisation against the detached sign."""
    v, y, codes = _inputs(1)
    logits = F.normalize(v, dim=1) @ F.normalize(codes, dim=1).T
    onehot = torch.zeros_like(logits).scatter_(1, y.unsqueeze(1), 0.2)
    ce = F.cross_entropy(8.0 * (logits - onehot), y)
    b = v.detach().sign()
    quan = {"cs": (1.0 - F.cosine_similarity(v, b, dim=1)).mean(),
            "l1": (v - b).abs().mean(), "l2": (v - b).pow(2).mean()}[qtype]
    out = orthohash_loss(v, y, codes, quantization=0.5, quantization_type=qtype)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ce + 0.5 * quan)


def test_codebooks() -> None:
    b = hashing_codebook(10, 64, seed=3)
    assert b.shape == (10, 64) and set(b.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(b, hashing_codebook(10, 64, seed=3))
    sep = hashing_codebook(3, 64, method="separated", seed=3)
    hd = 0.5 * (64 - sep @ sep.T) / 64
    off = hd[~torch.eye(3, dtype=torch.bool)]
    assert off.min() >= 0.61 - 1e-6  # 3 codes of 64 bits fit at the initial bound
    with pytest.raises(ValueError, match="cannot find"):
        hashing_codebook(20, 3, method="separated", max_tries=50)


def test_the_cosine_term_alone_quantises() -> None:
    """The paper's argument: training only the cosine term moves sign(v) towards the class code
    -- bit agreement rises from chance (~1/2) and the Hamming-nearest code of every trained
    sample is its class's (the official script's "cbacc"), with no quantisation term."""
    codes = hashing_codebook(4, 32, seed=5).double()
    y = torch.arange(4).repeat(3)
    v = torch.randn(12, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    agree0 = (v.sign() == codes[y]).double().mean().item()
    v.requires_grad_()
    opt = torch.optim.SGD([v], lr=2.0)
    for _ in range(200):
        opt.zero_grad()
        orthohash_loss(v, y, codes).backward()
        opt.step()
    b = v.detach().sign()
    agree = (b == codes[y]).double().mean().item()
    assert agree0 < 0.6 < 0.75 < agree
    hamming = 0.5 * (32 - b @ codes.T)
    assert torch.equal(hamming.argmin(1), y)


def test_module_keeps_codebook_and_rejects_reference() -> None:
    m = losslab.create("orthohash", num_classes=5, embedding_dim=16, seed=0)
    v, y, codes = _inputs()
    torch.testing.assert_close(m.codebook.double(), codes)
    book = m.codebook
    assert isinstance(book, torch.Tensor)
    torch.testing.assert_close(m(v.float(), y), orthohash_loss(v.float(), y, book))
    with pytest.raises(ValueError, match="not supported"):
        m(v.float(), y, ref_embeddings=v.float(), ref_labels=y)
    with pytest.raises(ValueError, match="labels must lie"):
        orthohash_loss(v, torch.full_like(y, 5), codes)
