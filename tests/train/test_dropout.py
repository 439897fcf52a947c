"""Multi-sample dropout: the averaged loss against a loop over the same masks, eval mode, the
1/K fall of the mask-induced gradient variance (the paper's reason for faster training), and
training on digits through the lab's fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losslab
from losslab.lab.training import Batch, fit
from losslab.train import MultiSampleDropout, MultiSampleLoss, multi_sample_dropout_loss

from .tasks import accuracy, digits, minibatches

f64 = torch.float64


def test_loss_is_the_mean_over_the_same_masks() -> None:
    torch.manual_seed(0)
    head = nn.Linear(6, 3).to(f64)
    x, y = torch.randn(5, 6, dtype=f64), torch.tensor([0, 2, 1, 1, 0])
    torch.manual_seed(11)
    got = MultiSampleLoss(nn.CrossEntropyLoss())(MultiSampleDropout(head, samples=4, p=0.3)(x), y)
    torch.manual_seed(11)
    ref = 0.0
    for _ in range(4):
        # the same draw as F.dropout(x) makes: the mask, already scaled by 1 / (1 - p)
        mask = F.dropout(torch.ones_like(x), 0.3, training=True)
        assert set(mask.unique().tolist()) <= {0.0, 1 / 0.7}
        ref += float(F.cross_entropy(head(x * mask), y).detach()) / 4
    assert float(got.detach()) == pytest.approx(ref, rel=1e-12)
    torch.manual_seed(11)
    fn = multi_sample_dropout_loss(x, head, F.cross_entropy, y, samples=4, p=0.3)
    assert float(fn.detach()) == pytest.approx(ref, rel=1e-12)
    # p = 0: exactly the plain loss
    net = MultiSampleDropout(head, samples=3, p=0.0)
    torch.testing.assert_close(MultiSampleLoss(nn.CrossEntropyLoss())(net(x), y),
                               F.cross_entropy(head(x), y))


def test_eval_mode_is_the_plain_head() -> None:
    head = nn.Linear(4, 2)
    wrapped = MultiSampleDropout(head, samples=8).eval()
    loss = MultiSampleLoss(nn.CrossEntropyLoss()).eval()
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 1])
    torch.testing.assert_close(wrapped(x), head(x))
    torch.testing.assert_close(loss(wrapped(x), y), F.cross_entropy(head(x), y))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="samples"):
        MultiSampleDropout(nn.Linear(2, 2), samples=0)
    with pytest.raises(ValueError, match="p must"):
        MultiSampleDropout(nn.Linear(2, 2), p=1.0)
    with pytest.raises(ValueError, match="output"):
        MultiSampleLoss(nn.MSELoss())(torch.zeros(3), torch.zeros(3))


def test_gradient_variance_over_masks_falls_as_one_over_k() -> None:
    xtr, ytr, _, _ = digits()
    torch.manual_seed(0)
    head = nn.Linear(64, 10)
    x, y = xtr[:128], ytr[:128]

    def grad_var(k: int) -> float:
        grads = []
        for seed in range(40):
            torch.manual_seed(seed)
            head.zero_grad()
            multi_sample_dropout_loss(x, head, F.cross_entropy, y, samples=k, p=0.5).backward()
            grads.append(head.weight.grad.detach().reshape(-1).clone())
        g = torch.stack(grads)
        return float(g.var(0).sum())

    v1, v8 = grad_var(1), grad_var(8)
    assert 0.08 < v8 / v1 < 0.2, (v1, v8)  # 1/8 = 0.125


def test_trains_digits_with_fit() -> None:
    xtr, ytr, xte, yte = digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(),
                          MultiSampleDropout(nn.Linear(64, 10), samples=8, p=0.5))
    loss_fn = MultiSampleLoss(losslab.create("cross_entropy"))

    def batches(epoch):
        for idx in minibatches(xtr.shape[0], 64, epoch):
            yield Batch.supervised(xtr[idx], ytr[idx])

    res = fit(model, loss_fn, batches, optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9), epochs=4, steps_per_epoch=19,
        evaluate=lambda m: accuracy(m, xte, yte))
    assert res.epoch_losses[-1] < 0.5 * res.epoch_losses[0]
    assert res.best_score is not None and res.best_score > 0.9
