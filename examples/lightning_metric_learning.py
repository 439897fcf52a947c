"""Metric learning with PyTorch Lightning: any losslab loss of kind ``embeddings`` + a miner.

A small CNN embeds the glyphs shipped with losslab (28 x 28 renders of Unicode characters in
different fonts; a class is a character). Batches hold ``batch_size // m`` classes x ``m``
samples (so every anchor has positives), a miner of :mod:`losslab.miners` picks the pairs or
triplets, and the loss -- one registered name or a weighted combination of several -- is
computed on the mined tuples. Every term of the loss is logged with ``self.log``
(``train/<name>``), with the total (``train/loss``) and the number of mined tuples
(``train/mined``); validation embeds characters of scripts never seen in training and logs
``val/recall_at_1`` and ``val/map_at_r``.

    python examples/lightning_metric_learning.py                          # multi_similarity
    python examples/lightning_metric_learning.py --loss triplet --miner semi_hard
    python examples/lightning_metric_learning.py --loss triplet=1,multi_similarity=0.5

Needs ``lightning`` (``pip install losslab[examples]``); runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

import losslab
from losslab.lab.data.glyphs import load_glyphs
from losslab.lab.samplers import MPerClassSampler
from losslab.metrics import retrieval_metrics

__all__ = [
    "EmbeddingNet",
    "EpochHistory",
    "MetricLearningModule",
    "PKBatchSampler",
    "glyph_data",
    "main",
]

Miner = Callable[..., tuple[Tensor, ...]]


def glyph_data(num_classes: int = 32, *, val_classes: int = 24,
               seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """``(train, val)`` datasets of float images ``[n, 1, 28, 28]`` in [0, 1] and int64 labels:
    ``num_classes`` characters of the training scripts and ``val_classes`` characters of the
    validation scripts (disjoint alphabets), 20 fonts each, drawn with ``seed``."""
    gs = load_glyphs()
    rng = np.random.default_rng(seed)

    def subset(split: str, n: int) -> TensorDataset:
        classes = gs.split_classes(split)
        if not 2 <= n <= classes.size:
            raise ValueError(f"{split} split: need 2 <= classes <= {classes.size}, got {n}")
        keep = np.isin(gs.labels, rng.choice(classes, n, replace=False))
        x = torch.from_numpy(gs.images[keep]).float().div_(255.0).unsqueeze(1)
        return TensorDataset(x, torch.from_numpy(gs.labels[keep]).long())

    return subset("train", num_classes), subset("val", val_classes)


class PKBatchSampler(Sampler[list[int]]):
    """``steps`` batches per epoch of ``batch_size // m`` classes x ``m`` samples (the lab's
    :class:`~losslab.lab.samplers.MPerClassSampler`); a new draw every epoch, seeded."""

    def __init__(self, labels: Tensor, *, m: int, batch_size: int, steps: int,
                 seed: int = 0) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.sampler = MPerClassSampler(labels.numpy(), m=m, batch_size=batch_size,
                                        rng=np.random.default_rng(seed))
        self.steps = steps

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler.batches(self.steps):
            yield batch.tolist()

    def __len__(self) -> int:
        return self.steps


class EmbeddingNet(nn.Module):
    """Two stride-2 convolutions and a linear layer: ``[n, 1, 28, 28] -> [n, dim]``."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 7 * 7, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _miner(name: str | None) -> Miner | None:
    if name is None:
        return None
    if name not in losslab.miners.__all__:
        raise ValueError(f"miner must be one of {sorted(losslab.miners.__all__)} or None, "
                         f"got {name!r}")
    return getattr(losslab.miners, name)


class MetricLearningModule(L.LightningModule):
    """An :class:`EmbeddingNet` trained with ``losslab.combine(loss)`` on mined tuples.

    Args:
        loss: a registered loss of kind ``embeddings`` (``"multi_similarity"``) or a mapping
            ``{name: weight}`` of several (their weighted sum; each term is logged).
        miner: a function name of :mod:`losslab.miners` (``"multi_similarity"``,
            ``"batch_hard"``, ``"semi_hard"``, ``"distance_weighted"``) or None (all pairs /
            triplets; also what the proxy losses, which take no ``indices=``, need).
        loss_hparams: hyperparameters per loss name, e.g. ``{"triplet": {"margin": 0.1}}``.
        miner_hparams: keyword arguments of the miner, e.g. ``{"margin": 0.1}``.
        embedding_dim: output size of the net.
        lr: Adam learning rate (of the net and of any learnable loss parameters, e.g. proxies).
    """

    def __init__(
        self,
        loss: str | Mapping[str, float] = "multi_similarity",
        *,
        miner: str | None = "multi_similarity",
        loss_hparams: Mapping[str, Mapping[str, Any]] | None = None,
        miner_hparams: Mapping[str, Any] | None = None,
        embedding_dim: int = 64,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        terms = {loss: 1.0} if isinstance(loss, str) else dict(loss)
        for name in terms:
            if losslab.spec(name).kind != "embeddings":
                raise ValueError(f"loss {name!r} is of kind {losslab.spec(name).kind!r}; this "
                                 "example trains losses of kind 'embeddings'")
        self.net = EmbeddingNet(embedding_dim)
        hp = dict(loss_hparams or {})
        if not hp.keys() <= terms.keys():
            raise ValueError(f"loss_hparams names losses not in loss: {set(hp) - set(terms)}")
        self.loss = losslab.combine([losslab.create(n, **hp.get(n, {})) for n in terms],
                                    weights=list(terms.values()))
        self.miner = _miner(miner)
        self.miner_hparams = dict(miner_hparams or {})
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        emb = self(x)
        indices = None if self.miner is None else self.miner(emb, y, **self.miner_hparams)
        loss = self.loss(emb, y, indices=indices)
        n = y.shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        for key, value in self.loss.last_terms.items():
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, batch_size=n)
        if indices is not None:
            # triplets (a, p, n): one tuple per anchor row; pairs (a1, p, a2, n): both lists
            mined = indices[0].numel() + (indices[2].numel() if len(indices) == 4 else 0)
            self.log("train/mined", float(mined), on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        m = retrieval_metrics(self(x), y, metrics=("recall_at_k", "map_at_r"), k=(1,))
        self.log("val/recall_at_1", m["recall_at_1"], batch_size=y.shape[0])
        self.log("val/map_at_r", m["map_at_r"], batch_size=y.shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class EpochHistory(L.Callback):
    """Keeps ``trainer.callback_metrics`` (as floats) after every training epoch, so that a
    script or a test can read the curve without a logger."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def loaders(train: TensorDataset, val: TensorDataset, *, m: int = 4, batch_size: int = 64,
            steps: int = 10, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Class-balanced training batches and one validation batch of the whole ``val`` set."""
    sampler = PKBatchSampler(train.tensors[1], m=m, batch_size=batch_size, steps=steps,
                             seed=seed)
    return (DataLoader(train, batch_sampler=sampler),
            DataLoader(val, batch_size=len(val)))


def _parse_loss(text: str) -> str | dict[str, float]:
    """``"triplet"`` or ``"triplet=1,multi_similarity=0.5"``."""
    if "=" not in text:
        return text
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        out[name.strip()] = float(weight)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description="Metric learning with Lightning and losslab.")
    p.add_argument("--loss", default="multi_similarity",
                   help="a loss of kind embeddings, or name=weight,name=weight")
    p.add_argument("--miner", default="multi_similarity", help="a losslab.miners name or none")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="batches per epoch")
    p.add_argument("--classes", type=int, default=200, help="training classes (of 626)")
    p.add_argument("--val-classes", type=int, default=171,
                   help="validation classes (of 171, other scripts)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--m", type=int, default=4, help="samples per class in a batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (tiny models run fastest on one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    L.seed_everything(args.seed, verbose=False)
    train, val = glyph_data(args.classes, val_classes=args.val_classes, seed=args.seed)
    train_dl, val_dl = loaders(train, val, m=args.m, batch_size=args.batch_size,
                               steps=args.steps, seed=args.seed)
    model = MetricLearningModule(_parse_loss(args.loss),
                                 miner=None if args.miner == "none" else args.miner)
    history = EpochHistory()
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[history])
    (before,) = trainer.validate(model, val_dl, verbose=False)
    print("before training: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(before.items())))
    trainer.fit(model, train_dl, val_dl)
    for i, row in enumerate(history.epochs):
        print(f"epoch {i}: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(row.items())))
    return history.epochs


if __name__ == "__main__":
    main()
