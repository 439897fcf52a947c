"""A Hugging Face ``Trainer`` whose loss is losslab's ``linear_cross_entropy``, with gradient
accumulation normalised by the global number of target tokens.

:class:`LinearCETrainer` computes the causal-LM loss from the decoder's last hidden state and
the LM head's weight, chunked over tokens (the ``N x V`` logits are never formed; the model is
asked for the logits of one position per row only, as in generation). The loss of a
micro-batch is its *sum* over target tokens divided by ``num_items_in_batch`` -- the number of
target tokens of all the micro-batches of one optimizer step, which the Trainer counts before
the step -- so the accumulated gradient is the gradient of the mean over every token of the
step, whatever the micro-batches' token counts. The naive alternative (``normalize=
"micro_batch"``: the mean of each micro-batch, the means averaged over the accumulation steps)
weighs a token of a short micro-batch more than a token of a long one, and its gradient is not
the full batch's: the gradient-accumulation bug transformers users hit.

The model is a tiny Llama built from a config (no download); the data are integer sequences of
very unequal lengths (arithmetic progressions modulo the vocabulary), padded per micro-batch.

    python examples/hf_trainer_linear_ce.py           # trains 40 steps, then compares gradients

Needs ``transformers`` and ``accelerate`` (``pip install losslab[examples]``); seconds on a CPU.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from losslab.functional import linear_cross_entropy_loss

# the tiny LM and its data, shared with ddp_tiny_lm.py (this folder is on sys.path when a
# script of it runs)
from _tiny_lm import (  # isort: skip
    IGNORE,
    collate,
    full_batch_gradients,
    max_relative_difference,
    shifted,
    tiny_llama,
    toy_sequences,
)

__all__ = [
    "GradientCapture",
    "LinearCETrainer",
    "SequenceDataset",
    "accumulated_gradients",
    "collate",
    "full_batch_gradients",
    "main",
    "max_relative_difference",
    "tiny_llama",
    "toy_sequences",
]

class SequenceDataset(Dataset):
    """The sequences as ``{"input_ids": [...]}`` items."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.sequences = [list(s) for s in sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.sequences[i]}


class LinearCETrainer(Trainer):
    """A ``Trainer`` whose ``compute_loss`` is losslab's ``linear_cross_entropy_loss`` on the
    decoder's last hidden state and the output embedding's weight.

    Args:
        normalize: ``"global"`` (default): each micro-batch's summed loss is divided by
            ``num_items_in_batch``, the target tokens of the whole accumulated step (of every
            process, with ``average_tokens_across_devices``); the Trainer is told the loss is
            already scaled for gradient accumulation. ``"micro_batch"``: the mean of each
            micro-batch, which the Trainer divides by the accumulation steps (the naive
            average of means, shown for comparison). Without ``num_items_in_batch`` (e.g. in
            evaluation) the loss is the micro-batch mean.
        *args, **kwargs: those of ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, normalize: str = "global", **kwargs: Any) -> None:
        if normalize not in ("global", "micro_batch"):
            raise ValueError(f"normalize must be 'global' or 'micro_batch', got {normalize!r}")
        super().__init__(*args, **kwargs)
        self.normalize = normalize
        inner = self.accelerator.unwrap_model(self.model)
        if not isinstance(inner, PreTrainedModel):
            raise ValueError("LinearCETrainer needs a transformers PreTrainedModel with an "
                             f"output embedding, got {type(inner).__name__}")
        self._hidden: list[Tensor] = []
        # The decoder's output is captured by a hook, so that the wrapped model (DDP, ...) is
        # still the one called.
        inner.base_model.register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module: nn.Module, args: Any, output: Any) -> None:
        self._hidden.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Any:
        labels = inputs["labels"]
        self._hidden.clear()
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        logits_to_keep=1)
        (hidden,) = self._hidden
        self._hidden.clear()
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        h, t = shifted(hidden, labels)
        if self.normalize == "global" and num_items_in_batch is not None:
            total = linear_cross_entropy_loss(h, head.weight, t, ignore_index=IGNORE,
                                              reduction="sum")
            assert isinstance(total, Tensor)
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # num_items_in_batch counts every process's tokens; DDP averages the gradients
                loss = loss * self.accelerator.num_processes
        else:
            loss = linear_cross_entropy_loss(h, head.weight, t, ignore_index=IGNORE)
        self.loss_is_scaled_for_ga = self.normalize == "global" and num_items_in_batch is not None
        return (loss, outputs) if return_outputs else loss


class GradientCapture(TrainerCallback):
    """Copies every parameter's gradient just before the first optimizer step."""

    def __init__(self) -> None:
        self.grads: dict[str, Tensor] | None = None

    def on_pre_optimizer_step(self, args: TrainingArguments, state: Any, control: Any,
                              **kwargs: Any) -> None:
        if self.grads is None:
            model = kwargs["model"]
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                          if p.grad is not None}


def _args(out_dir: str, *, micro_batch: int, accumulation: int, steps: int,
          lr: float) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation, max_steps=steps, learning_rate=lr,
        max_grad_norm=0.0, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0, seed=0,
    )


def accumulated_gradients(model: PreTrainedModel, sequences: Sequence[Sequence[int]], *,
                          micro_batch: int, normalize: str = "global") -> dict[str, Tensor]:
    """The gradients a ``LinearCETrainer`` has accumulated over all of ``sequences`` (one
    optimizer step of ``len(sequences) / micro_batch`` micro-batches), before it steps."""
    if len(sequences) % micro_batch:
        raise ValueError(f"len(sequences)={len(sequences)} must be a multiple of "
                         f"micro_batch={micro_batch}")
    capture = GradientCapture()
    with tempfile.TemporaryDirectory() as out:
        trainer = LinearCETrainer(
            model=model, normalize=normalize, data_collator=collate,
            train_dataset=SequenceDataset(sequences), callbacks=[capture],
            args=_args(out, micro_batch=micro_batch,
                       accumulation=len(sequences) // micro_batch, steps=1, lr=0.0),
        )
        trainer.train()
    assert capture.grads is not None, "the Trainer never reached an optimizer step"
    return capture.grads


def train(steps: int = 40, *, micro_batch: int = 4, accumulation: int = 4,
          lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Trains a tiny Llama for ``steps`` optimizer steps; returns the logged losses."""
    model = tiny_llama(seed=seed)
    data = SequenceDataset(toy_sequences(steps * micro_batch * accumulation, seed=seed))
    with tempfile.TemporaryDirectory() as out:
        args = _args(out, micro_batch=micro_batch, accumulation=accumulation, steps=steps,
                     lr=lr)
        args.logging_strategy = "steps"  # type: ignore[assignment]
        args.logging_steps = 5
        trainer = LinearCETrainer(model=model, args=args, data_collator=collate,
                                  train_dataset=data)
        trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description="HF Trainer + losslab linear_cross_entropy.")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (tiny models run fastest on one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    losses = train(args.steps, seed=args.seed)
    print("training loss every 5 steps: " + " ".join(f"{v:.3f}" for v in losses))

    seqs = toy_sequences(8, seed=args.seed + 1)
    full = full_batch_gradients(tiny_llama(seed=1, dtype=torch.float64), seqs)
    diffs = {}
    for mode in ("global", "micro_batch"):
        acc = accumulated_gradients(tiny_llama(seed=1, dtype=torch.float64), seqs,
                                    micro_batch=2, normalize=mode)
        diffs[mode] = max_relative_difference(acc, full)
    print(f"8 sequences of lengths {[len(s) for s in seqs]}, 4 micro-batches of 2:")
    print(f"  sum / num_items_in_batch: gradient = full batch's to {diffs['global']:.1e} "
          "(max relative difference)")
    print(f"  mean per micro-batch:     gradient off by {diffs['micro_batch']:.1%}")
    return {"first_loss": losses[0], "last_loss": losses[-1], **diffs}


if __name__ == "__main__":
    main()
