"""``examples/hf_trainer_linear_ce.py``: the Trainer's accumulated gradient over micro-batches
of unequal token counts equals the full batch's (float64), the naive per-micro-batch mean does
not, ``num_items_in_batch`` is the true token count, and the loss is the model's own."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch

from tests.examples import load_example

ex = load_example("hf_trainer_linear_ce")
f64 = torch.float64

# 8 rows of 3..40 tokens: micro-batches of 2 hold between 4 and 78 target tokens
SEQS = ex.toy_sequences(8, lengths=(3, 5, 24, 40), seed=1)


def targets(seqs) -> int:
    return sum(len(s) - 1 for s in seqs)


@pytest.fixture(scope="module")
def full() -> dict[str, torch.Tensor]:
    return ex.full_batch_gradients(ex.tiny_llama(seed=3, dtype=f64), SEQS)


@pytest.mark.parametrize("micro_batch", [1, 2, 4])
def test_global_token_normalisation_gives_the_full_batch_gradient(full, micro_batch) -> None:
    acc = ex.accumulated_gradients(ex.tiny_llama(seed=3, dtype=f64), SEQS,
                                   micro_batch=micro_batch)
    assert acc.keys() == full.keys() and len(acc) > 10
    assert ex.max_relative_difference(acc, full) < 1e-10
    for k in full:
        torch.testing.assert_close(acc[k], full[k], rtol=1e-10, atol=1e-13)


def test_the_naive_micro_batch_mean_is_not_the_full_batch_gradient(full) -> None:
    lengths = [len(s) for s in SEQS]
    assert min(lengths) <= 5 and max(lengths) >= 24, lengths  # unequal micro-batches
    naive = ex.accumulated_gradients(ex.tiny_llama(seed=3, dtype=f64), SEQS, micro_batch=2,
                                     normalize="micro_batch")
    assert ex.max_relative_difference(naive, full) > 0.05


def test_num_items_in_batch_is_the_number_of_target_tokens(monkeypatch) -> None:
    seen: list[int] = []
    original = ex.LinearCETrainer.compute_loss

    def spy(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        assert num_items_in_batch is not None
        seen.append(int(num_items_in_batch))
        return original(self, model, inputs, return_outputs, num_items_in_batch)

    monkeypatch.setattr(ex.LinearCETrainer, "compute_loss", spy)
    ex.accumulated_gradients(ex.tiny_llama(seed=0, dtype=f64), SEQS, micro_batch=2)
    assert seen == [targets(SEQS)] * 4


def test_micro_batch_loss_is_the_models_own_cross_entropy(tmp_path) -> None:
    model = ex.tiny_llama(seed=2, dtype=f64)
    batch = ex.collate([{"input_ids": s} for s in SEQS[:3]])
    # transformers' shifted causal-LM cross-entropy (computed in float32 by transformers)
    own = model(**batch).loss.to(f64)
    trainer = ex.LinearCETrainer(model=model, args=ex._args(str(tmp_path), micro_batch=3,
                                                          accumulation=1, steps=1, lr=0.0))
    mean = trainer.compute_loss(model, batch)
    torch.testing.assert_close(mean, own, rtol=1e-6, atol=0)
    total = trainer.compute_loss(model, batch, num_items_in_batch=targets(SEQS[:3]))
    torch.testing.assert_close(total, mean, rtol=1e-12, atol=0)
    assert trainer.loss_is_scaled_for_ga


def test_collate_marks_padding_and_position_zero() -> None:
    b = ex.collate([{"input_ids": [5, 6, 7]}, {"input_ids": [9]}])
    assert b["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]


def test_training_lowers_the_loss() -> None:
    losses = ex.train(10, micro_batch=4, accumulation=2, lr=1e-2)
    assert len(losses) == 2 and losses[-1] < losses[0] - 0.2, losses


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="normalize must be"):
        ex.LinearCETrainer(model=ex.tiny_llama(), normalize="tokens")
    with pytest.raises(ValueError, match="multiple of"):
        ex.accumulated_gradients(ex.tiny_llama(), SEQS[:3], micro_batch=2)
