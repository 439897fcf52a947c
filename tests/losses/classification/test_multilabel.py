"""Tests of the multi-label cluster-discrimination loss (losslab.losses.classification.multilabel).

Oracle: the two log-sum-exp terms over positive and negative classes written with Python loops
in float64. Properties: the loss bounds cross-entropy (one positive) and the pairwise ranking
loss (any label set) from above; class-id labels equal their one-hot matrix; invariance to
the scale of embeddings and centres.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import losslab
from losslab import functional as LF
from losslab.losses.classification.multilabel import MLCDLoss

D = torch.float64


def close(a, b, **kw):
    kw.setdefault("rtol", 1e-10)
    kw.setdefault("atol", 1e-12)
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), **kw)


def scores(emb, centers, scale):
    out = []
    for i in range(emb.shape[0]):
        f = emb[i].tolist()
        nf = math.sqrt(sum(v * v for v in f))
        row = []
        for k in range(centers.shape[0]):
            w = centers[k].tolist()
            nw = math.sqrt(sum(v * v for v in w))
            row.append(scale * sum(p * q for p, q in zip(f, w)) / (nf * nw))
        out.append(row)
    return out


def oracle(emb, multi_hot, centers, scale):
    out = []
    for i, row in enumerate(scores(emb, centers, scale)):
        pos = [s for s, y in zip(row, multi_hot[i].tolist()) if y]
        neg = [s for s, y in zip(row, multi_hot[i].tolist()) if not y]
        out.append(math.log(1 + sum(math.exp(s) for s in neg))
                   + math.log(1 + sum(math.exp(-s) for s in pos)))
    return torch.tensor(out, dtype=D)


def case(seed=0, n=6, c=5, d=4):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=D)
    centers = torch.randn(c, d, generator=g, dtype=D)
    multi = torch.rand(n, c, generator=g) < 0.4
    multi[0] = False  # a sample without positives
    multi[1] = True  # a sample without negatives
    return emb, centers, multi


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_oracle_multi_hot(scale):
    emb, centers, multi = case()
    close(LF.mlcd_loss(emb, multi, centers, scale=scale, reduction="none"),
          oracle(emb, multi, centers, scale))
    close(LF.mlcd_loss(emb, multi.long(), centers, scale=scale),
          oracle(emb, multi, centers, scale).mean())


def test_class_ids_equal_one_hot_and_bound_cross_entropy():
    emb, centers, _ = case(1)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    got = LF.mlcd_loss(emb, y, centers, scale=4.0, reduction="none")
    close(got, LF.mlcd_loss(emb, F.one_hot(y, 5).bool(), centers, scale=4.0, reduction="none"))
    s = torch.tensor(scores(emb, centers, 4.0), dtype=D)
    ce = F.cross_entropy(s, y, reduction="none")
    assert bool((got >= ce - 1e-12).all())


def test_bounds_the_pairwise_ranking_loss():
    emb, centers, multi = case(2)
    got = LF.mlcd_loss(emb, multi, centers, scale=3.0, reduction="none")
    for i, row in enumerate(scores(emb, centers, 3.0)):
        pairs = [math.exp(row[j] - row[p]) for p in range(5) for j in range(5)
                 if multi[i, p] and not multi[i, j]]
        assert float(got[i]) >= math.log(1 + sum(pairs)) - 1e-12


def test_scale_invariance_and_module():
    emb, centers, multi = case(3)
    close(LF.mlcd_loss(emb * 9, multi, centers * 0.1), LF.mlcd_loss(emb, multi, centers))
    torch.manual_seed(0)
    mod = losslab.create("mlcd", num_classes=5, embedding_dim=4, scale=2.0).double()
    assert isinstance(mod, MLCDLoss) and list(mod.state_dict()) == ["centers"]
    e = emb.clone().requires_grad_()
    close(mod(e, multi), LF.mlcd_loss(e, multi, mod.centers, scale=2.0))
    assert torch.autograd.gradcheck(lambda z: mod(z, multi), (e,), eps=1e-6, atol=1e-6)
    mod(e, multi).backward()
    assert mod.centers.grad is not None
    s = losslab.spec("mlcd")
    assert s.arxiv == "2407.17331" and s.kind == "embeddings"


def test_extreme_scores_finite():
    emb, centers, multi = case(4)
    loss = LF.mlcd_loss(emb.float().requires_grad_(), multi, centers.float(), scale=1e4)
    assert torch.isfinite(loss)


def test_bad_labels():
    emb, centers, _ = case()
    with pytest.raises(ValueError, match="labels"):
        LF.mlcd_loss(emb, torch.tensor([0, 1, 2, 3, 4, 5]), centers)
    with pytest.raises(ValueError, match="labels"):
        LF.mlcd_loss(emb, torch.ones(6, 4, dtype=torch.long), centers)
    with pytest.raises(ValueError, match="0 or 1"):
        LF.mlcd_loss(emb, torch.full((6, 5), 2), centers)
    with pytest.raises(ValueError, match="labels"):
        LF.mlcd_loss(emb, torch.zeros(6, 5), centers)


# --------------------------------------------------------------------------------------------
# ldam_multilabel (TransICD)
# --------------------------------------------------------------------------------------------


def softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def ldam_ml_oracle(logits, multi, counts, c_margin):
    out = []
    for i in range(logits.shape[0]):
        total = 0.0
        for j in range(logits.shape[1]):
            z, y = float(logits[i, j]), float(multi[i, j])
            delta = c_margin / (counts[j] ** 0.25 if counts[j] > 0 else 1.0)
            total += y * softplus(-(z - delta)) + (1 - y) * softplus(z)
        out.append(total / logits.shape[1])
    return torch.tensor(out, dtype=D)


COUNTS = [50.0, 10.0, 2.0, 1.0, 0.0]


def test_ldam_multilabel_oracle_and_bce_at_zero_margin():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 5, generator=g, dtype=D) * 2
    multi = (torch.rand(6, 5, generator=g) < 0.4).to(D)
    close(LF.ldam_multilabel_loss(z, multi, label_counts=COUNTS, margin=3.0, reduction="none"),
          ldam_ml_oracle(z, multi, COUNTS, 3.0))
    close(LF.ldam_multilabel_loss(z, multi, label_counts=COUNTS),
          ldam_ml_oracle(z, multi, COUNTS, 3.0).mean())
    close(LF.ldam_multilabel_loss(z, multi, label_counts=COUNTS, margin=0.0),
          F.binary_cross_entropy_with_logits(z, multi))
    close(LF.ldam_multilabel_loss(z, multi.bool(), label_counts=COUNTS),
          LF.ldam_multilabel_loss(z, multi.long(), label_counts=COUNTS))


def test_ldam_multilabel_margins_follow_the_quarter_power_rule():
    # One positive label per row at a zero logit: the loss of that entry is softplus(Delta_j),
    # Delta_j = C n_j^(-1/4); rarer labels pay more, negatives are unchanged.
    z = torch.zeros(5, 5, dtype=D)
    y = torch.arange(5)
    got = LF.ldam_multilabel_loss(z, y, label_counts=COUNTS, margin=2.0, reduction="none")
    want = [(softplus(2.0 / (n ** 0.25 if n > 0 else 1.0)) + 4 * math.log(2)) / 5 for n in COUNTS]
    close(got, want)
    assert bool((got[1:-1] > got[:-2]).all())
    close(LF.ldam_multilabel_loss(z, y, label_counts=COUNTS, reduction="none"),
          LF.ldam_multilabel_loss(z, F.one_hot(y, 5).to(D), label_counts=COUNTS,
                                  reduction="none"))


def test_ldam_multilabel_module_gradcheck_and_errors():
    mod = losslab.create("ldam_multilabel", label_counts=COUNTS, margin=1.5)
    g = torch.Generator().manual_seed(6)
    z = torch.randn(4, 5, generator=g, dtype=D).requires_grad_()
    multi = (torch.rand(4, 5, generator=g) < 0.5).to(D)
    close(mod(z, multi), LF.ldam_multilabel_loss(z, multi, label_counts=COUNTS, margin=1.5),
          rtol=1e-6)
    assert torch.autograd.gradcheck(
        lambda x: LF.ldam_multilabel_loss(x, multi, label_counts=COUNTS), (z,), eps=1e-6,
        atol=1e-6)
    with pytest.raises(ValueError, match="0 or 1"):
        LF.ldam_multilabel_loss(z, torch.softmax(z.detach(), 1), label_counts=COUNTS)
    with pytest.raises(ValueError, match="label_counts"):
        LF.ldam_multilabel_loss(z, multi, label_counts=COUNTS[:3])
    with pytest.raises(ValueError, match="label_counts"):
        LF.ldam_multilabel_loss(z, multi, label_counts=[-1.0] * 5)
    with pytest.raises(ValueError, match="class ids"):
        LF.ldam_multilabel_loss(z, torch.tensor([0, 1, 5, 2]), label_counts=COUNTS)
    s = losslab.spec("ldam_multilabel")
    assert s.arxiv == "2104.10652" and s.kind == "logits"
