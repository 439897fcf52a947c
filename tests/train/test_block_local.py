"""Tests of losslab.train.block_local (Scalable Forward-Forward's block-local training).

Properties: no gradient crosses a block boundary (a later block's loss leaves the earlier
blocks' gradients at zero), so one backward of the summed losses gives every block exactly the
gradient of its own loss; the vote is the argmax of the blocks' average goodness; a short
training run on separable data lowers every block's loss.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from losslab.functional import ff_goodness_loss
from losslab.train import BlockLocal


def net(seed: int = 0, c: int = 3) -> BlockLocal:
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())]
    heads = [nn.Conv2d(4, c, 1), nn.Conv2d(4, c, 1)]
    return BlockLocal(blocks, heads)


def data(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 2, 5, 5, generator=g) * 0.3
    x[:, 0] += y[:, None, None].float()  # class-dependent intensity
    return x, y


def test_no_gradient_crosses_a_block() -> None:
    m = net()
    x, y = data()
    outs = m(x)
    ff_goodness_loss(outs[1], y).backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in m.blocks[0].parameters())
    assert all(p.grad is None or torch.all(p.grad == 0) for p in m.heads[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.blocks[1].parameters())


def test_summed_losses_give_each_block_its_own_gradient() -> None:
    x, y = data()
    m = net()
    torch.stack([ff_goodness_loss(o, y) for o in m(x)]).sum().backward()
    together = [p.grad.clone() for p in m.blocks[0].parameters() if p.grad is not None]
    m2 = net()
    ff_goodness_loss(m2(x)[0], y).backward()
    alone = [p.grad.clone() for p in m2.blocks[0].parameters() if p.grad is not None]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b)


def test_vote_and_training_lowers_each_block_loss() -> None:
    m = net(2)
    x, y = data()
    with torch.no_grad():
        outs = m(x)
        mean_g = torch.stack([o.pow(2).flatten(2).mean(-1) for o in outs]).mean(0)
    assert torch.equal(m.predict(x), mean_g.argmax(1))
    assert torch.equal(m.predict(x, last_only=True), outs[-1].pow(2).flatten(2).mean(-1)
                       .argmax(1))
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    before = [float(ff_goodness_loss(o, y).detach()) for o in m(x)]
    for _ in range(60):
        opt.zero_grad()
        torch.stack([ff_goodness_loss(o, y) for o in m(x)]).sum().backward()
        opt.step()
    after = [float(ff_goodness_loss(o, y).detach()) for o in m(x)]
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="one length"):
        BlockLocal([nn.Identity()], [])
