"""Small real tasks for the training-procedure tests: scikit-learn's digits (1797 8x8 scans of
handwritten digits, bundled with scikit-learn, no download) and a small MLP."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn


def digits(seed: int = 0, n_train: int = 1200) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: features scaled to [0, 1], a seeded split."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def mlp(seed: int = 0, hidden: int = 64, out: int = 10, d_in: int = 64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, out))


def minibatches(n: int, size: int, seed: int) -> list[Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(perm.split(size))


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


def full_loss(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
              y: Tensor) -> float:
    with torch.no_grad():
        return float(loss_fn(model(x), y))


def sharpness(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
              y: Tensor, *, radius: float, directions: int = 20, seed: int = 123) -> float:
    """Mean increase of the loss when every parameter moves by a random Gaussian direction of
    total L2 norm ``radius`` (the same directions for every model of the same shapes)."""
    params = [p for p in model.parameters()]
    base = full_loss(model, loss_fn, x, y)
    g = torch.Generator().manual_seed(seed)
    rises = []
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for _ in range(directions):
            d = [torch.randn(p.shape, generator=g) for p in params]
            norm = torch.sqrt(sum((t * t).sum() for t in d))
            for p, s, t in zip(params, saved, d):
                p.copy_(s + radius * t / norm)
            rises.append(full_loss(model, loss_fn, x, y) - base)
        for p, s in zip(params, saved):
            p.copy_(s)
    return sum(rises) / len(rises)
