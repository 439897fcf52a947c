"""The tiny causal LM and the data shared by ``hf_trainer_linear_ce.py`` and ``ddp_tiny_lm.py``.

A 2-layer Llama built from a config (random weights, no download), integer sequences of very
unequal lengths, their right-padded batches, and the reference: the gradient of the mean
cross-entropy over every target token of one batch, from the model's own logits and
``F.cross_entropy`` (no losslab).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "IGNORE",
    "PAD",
    "collate",
    "full_batch_gradients",
    "max_relative_difference",
    "shifted",
    "tiny_llama",
    "toy_sequences",
]

PAD = 0
IGNORE = -100


def tiny_llama(vocab_size: int = 64, *, hidden_size: int = 32, layers: int = 2, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama (untied LM head), the same for the same ``seed``."""
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, pad_token_id=PAD, bos_token_id=None,
                         eos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    nn.Module.to(model, dtype)  # (transformers' own ``to`` is typed for its own arguments)
    return model


def toy_sequences(n: int, *, vocab_size: int = 64, lengths: Sequence[int] = (3, 5, 24, 40),
                  seed: int = 0) -> list[list[int]]:
    """``n`` sequences ``(a + d t) mod (V - 1) + 1`` (token 0 is the padding), of lengths drawn
    from ``lengths``: a next-token rule a small LM learns, in rows of very unequal length."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = lengths[int(torch.randint(len(lengths), (1,), generator=g))]
        a = int(torch.randint(vocab_size - 1, (1,), generator=g))
        d = int(torch.randint(1, 4, (1,), generator=g))
        out.append([(a + d * t) % (vocab_size - 1) + 1 for t in range(length)])
    return out


def collate(features: Sequence[dict[str, Sequence[int]]]) -> dict[str, Tensor]:
    """Right-pads a micro-batch to its own longest row: ``input_ids``, ``attention_mask`` and
    ``labels`` (the input ids; -100 on padding and on position 0).

    Position 0 of a row is never a target of a causal LM (no prefix predicts it); marking it
    -100 makes ``labels.ne(-100).sum()`` the number of predicted tokens whether the Trainer
    counts over ``labels`` or over ``labels[..., 1:]`` (older releases counted the former).
    """
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, : len(f["input_ids"])] = torch.tensor(list(f["input_ids"]))
        mask[i, : len(f["input_ids"])] = 1
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[:, 0] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def shifted(hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Position ``t`` predicts label ``t + 1``: ``(hidden[:, :-1], labels[:, 1:])``."""
    return hidden[:, :-1], labels[:, 1:]


def full_batch_gradients(model: nn.Module,
                         sequences: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """The gradients of the mean cross-entropy over every target token of one batch of all
    ``sequences``, from the model's own logits and ``F.cross_entropy`` (no losslab)."""
    batch = collate([{"input_ids": s} for s in sequences])
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    z, t = shifted(logits, batch["labels"])
    F.cross_entropy(z.reshape(-1, z.shape[-1]), t.reshape(-1), ignore_index=IGNORE).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def max_relative_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """``max over parameters of |a - b| / max(|b|)`` (parameters with a zero gradient in ``b``
    compared absolutely)."""
    if a.keys() != b.keys():
        raise ValueError(f"different parameters: {sorted(a.keys() ^ b.keys())}")
    out = 0.0
    for k in a:
        scale = float(b[k].detach().abs().max()) or 1.0
        out = max(out, float((a[k] - b[k]).detach().abs().max()) / scale)
    return out
