"""G-SimCLR's pseudo-label batch sampler: distinct labels per batch, every sample at most once,
as many full batches as possible, reproducible, and usable as a DataLoader batch_sampler."""

from __future__ import annotations

import pytest
import torch

from losslab.losses.contrastive_ssl.sampling import PseudoLabelBatchSampler


def test_batches_have_distinct_pseudo_labels_and_no_repeats() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 12, (200,), generator=g)
    sampler = PseudoLabelBatchSampler(labels, 8, generator=torch.Generator().manual_seed(1))
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    seen: list[int] = []
    for batch in batches:
        assert len(batch) == 8
        assert len({int(labels[i]) for i in batch}) == 8  # one sample per pseudo class
        seen += batch
    assert len(seen) == len(set(seen))  # each sample at most once per epoch
    # the greedy fill leaves fewer than batch_size classes with samples: no batch was possible
    left = torch.ones(200, dtype=torch.bool)
    left[seen] = False
    assert len(set(labels[left].tolist())) < 8


def test_balanced_clusters_use_every_sample_and_epochs_differ() -> None:
    labels = torch.arange(60) % 6  # 6 clusters of 10
    sampler = PseudoLabelBatchSampler(labels, 6, generator=torch.Generator().manual_seed(2))
    e1, e2 = list(sampler), list(sampler)
    assert len(e1) == 10 and sorted(i for b in e1 for i in b) == list(range(60))
    assert e1 != e2
    same = list(PseudoLabelBatchSampler(labels, 6, generator=torch.Generator().manual_seed(2)))
    assert same == e1  # reproducible from the generator


def test_drop_last_false_keeps_distinct_smaller_batches() -> None:
    labels = torch.tensor([0] * 5 + [1] * 2 + [2])
    batches = list(PseudoLabelBatchSampler(labels, 2, drop_last=False,
                                           generator=torch.Generator().manual_seed(0)))
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:
        assert len({int(labels[i]) for i in b}) == len(b)
    assert len(PseudoLabelBatchSampler(labels, 2, drop_last=False)) == len(batches)


def test_works_as_a_dataloader_batch_sampler_and_rejects_bad_input() -> None:
    x = torch.arange(40).float()
    labels = torch.arange(40) % 5
    ds = torch.utils.data.TensorDataset(x, labels)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=PseudoLabelBatchSampler(labels, 5))
    for _, lab in loader:
        assert sorted(lab.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="at most the number of pseudo labels"):
        PseudoLabelBatchSampler(labels, 6)
    with pytest.raises(ValueError, match="pseudo_labels must be"):
        PseudoLabelBatchSampler(labels.float(), 2)
    with pytest.raises(ValueError, match="batch_size"):
        PseudoLabelBatchSampler(labels, 0)
