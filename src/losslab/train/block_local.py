r"""Block-local training in the manner of Scalable Forward-Forward: every block learns from its
own loss, with backpropagation inside the block and none across blocks.

Krutsylo, "Scalable Forward-Forward Algorithm", arXiv 2501.03176 (written from the abstract
and the author's summary; not verified against the paper's text): the network is split into
blocks (e.g. ResNet's residual blocks); a small auxiliary convolution on each block's output has
one channel per class and feeds the block's goodness loss
(:func:`losslab.functional.ff_goodness_loss`); the block's output is detached before it enters
the next block, so no gradient crosses a block boundary; at inference the blocks vote with
their goodness vectors (the argmax of their average).

:class:`BlockLocal` holds the blocks and the heads. ``forward(x)`` returns the heads' outputs,
one per block; summing the blocks' losses and calling ``backward`` once trains each block (and
its head) on its own loss only, since the graphs do not connect. ``predict(x)`` is the vote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BlockLocal"]


def _goodness(a: Tensor) -> Tensor:
    return a.pow(2).reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:])).mean(-1)


class BlockLocal(nn.Module):
    """Blocks trained on local losses.

    Args:
        blocks: the network's blocks, applied in order.
        heads: one auxiliary module per block, mapping the block's output to ``[N, C, ...]``
            (one channel per class; the paper's 1x1 convolution).
        normalize: layer-normalise each block's output (over all but the batch dimension, no
            parameters) before it is passed on, as the author's summary describes (default
            True).
    """

    def __init__(self, blocks: Sequence[nn.Module], heads: Sequence[nn.Module], *,
                 normalize: bool = True) -> None:
        super().__init__()
        if len(blocks) == 0 or len(blocks) != len(heads):
            raise ValueError(f"blocks and heads must be non-empty and of one length, got "
                             f"{len(blocks)} and {len(heads)}")
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)
        self.normalize = bool(normalize)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The heads' outputs, one per block (each block sees a detached input)."""
        outs = []
        h = x
        for block, head in zip(self.blocks, self.heads):
            h = block(h.detach())
            if self.normalize:
                h = nn.functional.layer_norm(h, h.shape[1:])
            outs.append(head(h))
        return outs

    @torch.no_grad()
    def predict(self, x: Tensor, *, last_only: bool = False) -> Tensor:
        """Class ids ``[N]``: the argmax of the blocks' average goodness (or of the last
        block's, ``last_only=True``)."""
        outs = self.forward(x)
        if last_only:
            return _goodness(outs[-1]).argmax(1)
        return torch.stack([_goodness(o) for o in outs]).mean(0).argmax(1)
