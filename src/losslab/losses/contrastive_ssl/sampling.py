"""G-SimCLR's pseudo-label-guided batches: no two samples of one pseudo-class in a batch.

G-SimCLR keeps SimCLR's NT-Xent loss (``infonce`` with ``negatives="both"``) and changes the
batches: images are clustered (k-means on the features of a denoising autoencoder, in the
paper) and a batch takes at most one image per cluster, so that the in-batch negatives are
unlikely to be false negatives (same-class images). :class:`PseudoLabelBatchSampler` builds
such batches from any pseudo labels; it is a ``batch_sampler`` for
``torch.utils.data.DataLoader``.

What the paper fixes, from its abstract: pseudo labels from clustering guide the batch so that
no two images of one pseudo class share it. The paper's text was not found in the search
corpus, so how leftover samples are handled is our choice (below), not verified.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["PseudoLabelBatchSampler"]


class PseudoLabelBatchSampler:
    """Batches of ``batch_size`` dataset indices with pairwise distinct pseudo labels.

    Every epoch (each ``iter``) shuffles the samples within each pseudo class and fills
    batches greedily from the ``batch_size`` classes with the most samples left (random ties),
    one sample each, which uses as many samples as possible. When fewer than ``batch_size``
    classes have samples left, the rest are dropped (``drop_last=True``, default) or yielded
    as smaller batches that still have distinct labels.

    Args:
        pseudo_labels: ``[N]`` integer cluster ids (any values).
        batch_size: samples per batch; at most the number of distinct pseudo labels.
        generator: random generator (default: a fresh seed from torch's global one per epoch).
        drop_last: drop the samples that cannot fill a batch of distinct labels.

    Paper: Chakraborty, Gosthipaty, Paul, "G-SimCLR: Self-Supervised Contrastive Learning
    with Guided Projection via Pseudo Labelling", arXiv 2009.12007.
    """

    def __init__(self, pseudo_labels: Tensor, batch_size: int, *,
                 generator: torch.Generator | None = None, drop_last: bool = True) -> None:
        if (not isinstance(pseudo_labels, Tensor) or pseudo_labels.is_floating_point()
                or pseudo_labels.dtype == torch.bool or pseudo_labels.ndim != 1):
            raise ValueError("pseudo_labels must be a 1-d integer tensor of cluster ids")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        labels = pseudo_labels.detach().cpu().long()
        classes, inverse = torch.unique(labels, return_inverse=True)
        if batch_size > classes.numel():
            raise ValueError(f"batch_size must be at most the number of pseudo labels "
                             f"({classes.numel()}): a batch holds one sample per label, got "
                             f"{batch_size}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.generator = generator
        self._members = [torch.nonzero(inverse == c).flatten() for c in range(classes.numel())]

    def _batches(self) -> list[list[int]]:
        g = self.generator
        if g is None:
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        pools = [m[torch.randperm(m.numel(), generator=g)].tolist() for m in self._members]
        batches: list[list[int]] = []
        while True:
            sizes = torch.tensor([len(p) for p in pools], dtype=torch.float64)
            alive = int((sizes > 0).sum())
            if alive == 0 or (alive < self.batch_size and self.drop_last):
                break
            take = min(self.batch_size, alive)
            noise = torch.rand(len(pools), generator=g, dtype=torch.float64)
            order = torch.argsort(sizes + 0.5 * noise, descending=True)[:take].tolist()
            batches.append([pools[c].pop() for c in order])
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in perm]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        sizes = sorted((m.numel() for m in self._members), reverse=True)
        # the greedy fill of the largest classes is optimal: count its batches exactly
        counts = list(sizes)
        n = 0
        while True:
            counts.sort(reverse=True)
            alive = sum(1 for c in counts if c > 0)
            if alive == 0 or (alive < self.batch_size and self.drop_last):
                return n
            for i in range(min(self.batch_size, alive)):
                counts[i] -= 1
            n += 1
