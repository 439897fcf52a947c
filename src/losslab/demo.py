"""``make demo``: train a small embedding with the few-shot losses and compare them.

A scripted example on generated data (until the lab's real-data comparison is in place):
classes are random non-linear manifolds; an MLP is trained episodically with each loss on the
training classes and evaluated on unseen classes, 5-way 1-shot, with a 95% CI over episodes.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

import losslab
from losslab.metrics import icnn_score, mean_confidence_interval


def make_classes(n_classes: int, per_class: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, 1, dim, generator=g) * 1.5
    latent = torch.randn(n_classes, per_class, 4, generator=g)
    mixing = torch.randn(4, dim, generator=g)
    return torch.tanh(centers + latent @ mixing)  # [classes, per_class, dim]


def episode(data: torch.Tensor, way: int, shot: int, queries: int, rng: np.random.Generator):
    classes = rng.choice(data.shape[0], size=way, replace=False)
    idx = np.stack([rng.choice(data.shape[1], size=shot + queries, replace=False)
                    for _ in classes])
    x = data[torch.as_tensor(classes)[:, None], torch.as_tensor(idx)]
    labels = torch.arange(way)[:, None].expand(way, shot + queries)
    return (x[:, :shot].reshape(-1, data.shape[2]), labels[:, :shot].reshape(-1),
            x[:, shot:].reshape(-1, data.shape[2]), labels[:, shot:].reshape(-1))


def train_and_test(loss_spec: str, train: torch.Tensor, test: torch.Tensor, seed: int,
                   episodes: int = 200, test_episodes: int = 300) -> dict[str, float]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = nn.Sequential(nn.Linear(train.shape[2], 128), nn.ReLU(), nn.Linear(128, 32))
    terms = loss_spec.split("+")
    loss_fn = losslab.combine(terms) if len(terms) > 1 else losslab.create(terms[0])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(episodes):
        s, sl, q, ql = episode(train, 20, 1, 5, rng)
        loss = loss_fn(net(s), sl, net(q), ql)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accs = []
    with torch.no_grad():
        for _ in range(test_episodes):
            s, sl, q, ql = episode(test, 5, 1, 15, rng)
            protos = net(s)
            pred = losslab.distances.squared_euclidean(net(q), protos).argmin(1)
            accs.append(float((sl[pred] == ql).float().mean()))
        emb = net(test[:20, :10].reshape(-1, test.shape[2]))
        icnn = icnn_score(emb, torch.arange(20).repeat_interleave(10))
    mean, ci = mean_confidence_interval(accs)
    return {"acc": mean, "ci": ci, "icnn": icnn}


def main() -> None:
    torch.set_num_threads(2)
    data = make_classes(120, 30, 32, seed=0)
    train, test = data[:80], data[80:]
    losses = ["protonet", "proto_triplet", "protonet+proto_triplet", "protonet+icnn",
              "protonet+proto_triplet+icnn"]
    print("losslab demo: 5-way 1-shot on generated data (train 80 classes, test 40 unseen)")
    print(f"{'loss':32s} {'accuracy (95% CI)':>20s} {'ICNN score':>11s} {'time':>6s}")
    for name in losses:
        t0 = time.perf_counter()
        r = train_and_test(name, train, test, seed=0)
        print(f"{name:32s} {100 * r['acc']:12.2f} ± {100 * r['ci']:4.2f} "
              f"{r['icnn']:11.3f} {time.perf_counter() - t0:5.1f}s")


if __name__ == "__main__":
    main()
