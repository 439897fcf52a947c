"""Tests of the LM loss weightings (losslab.losses.token_weights): loop oracles from the
formulas, their properties, and the weights feeding ``token_weight=`` of cross_entropy and
linear_cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch

from losslab import functional as LF
from losslab.losses.token_weights import (
    loss_reweighting_weights,
    order_matters_weights,
    sample_to_token_weight,
    set_output_loss,
    talr_weights,
)

D = torch.float64


def close(a, b, **kw):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), **kw)


def test_talr_oracle_and_properties():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(3, 5, generator=g, dtype=D) * 4
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[0, :2] = False
    vals = sorted(float(v) for v in losses[valid])
    n = len(vals)
    tau = vals[(n - 1) // 2]  # torch.median: the lower median
    z = sum(math.exp(-float(v) / tau) for v in losses[valid])
    ref = torch.zeros(3, 5, dtype=D)
    for i in range(3):
        for j in range(5):
            if valid[i, j]:
                ref[i, j] = n * math.exp(-float(losses[i, j]) / tau) / z
    w = talr_weights(losses, valid=valid)
    close(w, ref)
    close(w[valid].mean(), 1.0)
    # harder tokens get smaller weights; scale-free with the median temperature
    order = losses[valid].argsort()
    assert bool((w[valid][order].diff() <= 0).all())
    close(talr_weights(losses * 7, valid=valid), w)
    close(talr_weights(losses, valid=valid, temperature=1e9), valid.to(D))
    assert not talr_weights(losses.requires_grad_(), valid=valid).requires_grad
    close(talr_weights(losses, valid=torch.zeros_like(valid)), torch.zeros(3, 5, dtype=D))


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes"])
def test_loss_reweighting_oracle(strategy):
    losses = torch.tensor([0.5, 1.0, 2.5, 3.0, 1.7], dtype=D)
    delta, r = 1.5, 0.8
    lo, hi = 0.5, 3.0
    f = []
    for v in losses.tolist():
        h = delta * (2 * v - (hi + lo)) / (hi - lo)
        f.append({"linupper": min(h + delta, delta), "quadratic": 1 - h * h / delta**2,
                  "extremes": abs(h)}[strategy])
    z = sum(math.exp(fi / r) for fi in f)
    ref = [5 * math.exp(fi / r) / z for fi in f]
    close(loss_reweighting_weights(losses, strategy=strategy, delta=delta, temperature=r), ref)


def test_loss_reweighting_properties():
    losses = torch.tensor([0.2, 0.9, 1.4, 2.0, 2.6, 3.3], dtype=D)
    lin = loss_reweighting_weights(losses)
    # LinUpper: weights rise with the loss up to the midpoint, then stay at the bound
    assert bool((lin.diff() >= -1e-12).all())
    close(lin[3:], lin[3].expand(3))
    close(lin.mean(), 1.0)
    quad = loss_reweighting_weights(losses, strategy="quadratic")
    assert float(quad[2]) > float(quad[0]) and float(quad[3]) > float(quad[-1])
    close(loss_reweighting_weights(torch.full((4,), 2.0, dtype=D)), torch.ones(4, dtype=D))
    with pytest.raises(ValueError, match="strategy"):
        loss_reweighting_weights(losses, strategy="mid")
    with pytest.raises(ValueError, match="sample_losses"):
        loss_reweighting_weights(losses.reshape(2, 3))


def test_weights_feed_token_weight_of_both_ce_paths():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 4, 6, generator=g, dtype=D, requires_grad=True)
    wt = torch.randn(9, 6, generator=g, dtype=D)
    y = torch.randint(0, 9, (2, 4), generator=g)
    y[1, 3] = -100
    logits = h @ wt.T  # [N, T, V]
    per_tok = LF.cross_entropy_loss(logits.transpose(1, 2), y, reduction="none")
    w_tok = talr_weights(per_tok, valid=y != -100)
    seq_loss = per_tok.sum(1)
    w_seq = sample_to_token_weight(loss_reweighting_weights(seq_loss), y)
    for w in (w_tok, w_seq):
        a = LF.cross_entropy_loss(logits.transpose(1, 2), y, token_weight=w)
        b = LF.linear_cross_entropy_loss(h, wt, y, token_weight=w)
        assert isinstance(b, torch.Tensor)
        close(a, b)
        close(a, (w * per_tok).sum() / w.sum())
    assert float(w_seq[1, 3]) == 0.0


def test_order_matters_best_ordering():
    cand = torch.tensor([[3.0, 1.0, 2.0], [0.5, 0.7, 0.2]], dtype=D, requires_grad=True)
    w = order_matters_weights(cand)
    close(w, [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = set_output_loss(cand, reduction="none")
    close(out, [1.0, 0.2])
    out.sum().backward()
    assert cand.grad is not None
    close(cand.grad, w)
    soft = order_matters_weights(cand, temperature=0.5)
    ref = torch.softmax(-cand.detach() / 0.5, 1)
    close(soft, ref)
    close(soft.sum(1), torch.ones(2, dtype=D))
    # small temperature -> hard max
    close(order_matters_weights(cand, temperature=1e-4), w, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        order_matters_weights(cand, temperature=-1.0)


def test_lm_losses_doc_example_runs():
    """The example of docs/lm_losses.md runs and its CE part is torch's (weighted) CE."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "lm_losses.md"
    blocks = re.findall(r"```python\n(# docs/lm_losses.md.*?)```", doc.read_text("utf-8"), re.S)
    assert blocks
    ns: dict[str, object] = {}
    exec(compile(blocks[0], str(doc), "exec"), ns)
    logits, labels, w = ns["logits"], ns["labels"], ns["w"]
    assert isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor)
    assert isinstance(w, torch.Tensor)
    per = torch.nn.functional.cross_entropy(logits.detach().transpose(1, 2), labels,
                                            reduction="none")
    ce_only = ns["ce_only"]
    assert isinstance(ce_only, torch.Tensor)
    torch.testing.assert_close(ce_only.detach(), (w * per).sum() / w.sum())
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
