"""``examples/lightning_metric_learning.py``: a Lightning module trains on glyphs with losslab
embedding losses and miners; the loss falls, every term is logged, bad names are refused."""

from __future__ import annotations

import pytest

pytest.importorskip("lightning")

import lightning as L
import torch

from tests.examples import load_example

ex = load_example("lightning_metric_learning")


def fit(loss, miner, *, epochs: int = 3, **kw) -> list[dict[str, float]]:
    L.seed_everything(0, verbose=False)
    train, val = ex.glyph_data(16, val_classes=8, seed=0)
    train_dl, val_dl = ex.loaders(train, val, m=4, batch_size=32, steps=6, seed=0)
    model = ex.MetricLearningModule(loss, miner=miner, embedding_dim=32, lr=3e-3, **kw)
    history = ex.EpochHistory()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[history])
    trainer.fit(model, train_dl, val_dl)
    assert trainer.current_epoch == epochs
    return history.epochs


@pytest.mark.parametrize(("loss", "miner"), [("multi_similarity", "multi_similarity"),
                                             ("triplet", "batch_hard")])
def test_training_lowers_the_loss_and_logs_its_terms(loss: str, miner: str) -> None:
    epochs = fit(loss, miner)
    assert len(epochs) == 3
    for row in epochs:
        assert {"train/loss", f"train/{loss}", "train/mined", "val/recall_at_1",
                "val/map_at_r"} <= row.keys(), row.keys()
        assert row["train/loss"] == pytest.approx(row[f"train/{loss}"])
        assert row["train/mined"] > 0
        assert 0.0 <= row["val/recall_at_1"] <= 1.0
    assert epochs[-1]["train/loss"] < 0.9 * epochs[0]["train/loss"], epochs


def test_a_weighted_combination_logs_each_term_and_their_weighted_sum() -> None:
    epochs = fit({"contrastive": 1.0, "multi_similarity": 0.5}, "multi_similarity", epochs=2)
    for row in epochs:
        total = row["train/contrastive"] + 0.5 * row["train/multi_similarity"]
        assert row["train/loss"] == pytest.approx(total, rel=1e-5)
    assert epochs[-1]["train/loss"] < epochs[0]["train/loss"]


def test_a_proxy_loss_trains_without_miner_and_its_proxies_learn() -> None:
    model = ex.MetricLearningModule("proxy_anchor", miner=None, embedding_dim=32,
                                    loss_hparams={"proxy_anchor": {"num_classes": 1054,
                                                                   "embedding_dim": 32}})
    before = [p.detach().clone() for p in model.loss.parameters()]
    assert before, "proxy_anchor should hold learnable proxies"
    train, val = ex.glyph_data(8, val_classes=4, seed=1)
    train_dl, val_dl = ex.loaders(train, val, m=4, batch_size=16, steps=2, seed=1)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(model, train_dl, val_dl)
    after = list(model.loss.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_sampler_batches_hold_m_samples_of_each_class() -> None:
    labels = torch.arange(10).repeat_interleave(5)
    s = ex.PKBatchSampler(labels, m=4, batch_size=12, steps=3, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 3
    for b in batches:
        counts = torch.bincount(labels[b], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [4, 4, 4]
    assert batches != list(s)  # a new draw every epoch


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="miner must be one of"):
        ex.MetricLearningModule("triplet", miner="hardest")
    with pytest.raises(ValueError, match="kind 'embeddings'"):
        ex.MetricLearningModule("protonet", miner=None)
    with pytest.raises(ValueError, match="classes"):
        ex.glyph_data(1)
    with pytest.raises(ValueError, match="loss_hparams"):
        ex.MetricLearningModule("triplet", loss_hparams={"circle": {"m": 0.1}})
