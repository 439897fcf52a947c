"""The tiny causal LM under DDP (gloo, CPU) with losslab's ``linear_cross_entropy``: every
rank's gradient equals the single-process full-batch gradient.

Each of ``--world`` processes (spawned by this script, ``MASTER_ADDR=127.0.0.1`` and a free
port) holds a shard of the batch with its own number of target tokens. A rank's loss is the
*sum* of its tokens' cross-entropies (``linear_cross_entropy_loss(..., reduction="sum")`` on
the decoder's last hidden state and the LM head's weight) divided by the *global* token count
(an ``all_reduce`` of the shards' counts) and multiplied by the world size, which undoes DDP's
averaging of the gradients: the synchronised gradient is then the gradient of the mean over
every token of the batch. The naive loss (each rank's own mean, averaged by DDP) weighs a token
of a short shard more than one of a long shard; it is computed too, for comparison.

The script runs ``--steps`` SGD steps on every rank, then checks against one process that
trains on the whole batch with the model's own logits and ``F.cross_entropy``: the first
step's gradient must agree to a relative 1e-10 (float64) and the ranks' weights must be the
same. The weights after the steps agree to about 1e-9 only, and are checked to 1e-6: the
Llama's RMSNorm computes in float32 even in a float64 model, so once the weights differ by a
float64 rounding (the two sides add the same gradient in a different order) its float32
roundings can differ.

    python examples/ddp_tiny_lm.py                # 2 processes; exit status 1 if they differ

Needs ``transformers`` (for the model; ``pip install losslab[examples]``); seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.multiprocessing.spawn import start_processes
from torch.nn.parallel import DistributedDataParallel

from losslab.functional import linear_cross_entropy_loss

# the tiny LM and its data, shared with hf_trainer_linear_ce.py (this folder is on sys.path
# when a script of it runs)
from _tiny_lm import (  # isort: skip
    IGNORE,
    collate,
    full_batch_gradients,
    max_relative_difference,
    shifted,
    tiny_llama,
    toy_sequences,
)

__all__ = ["Backbone", "check", "free_port", "main", "shard", "worker"]

#: max relative differences: of the first gradient (float64), of the weights after the steps
#: (float32 RMSNorm inside, see the module docstring), between the ranks' weights
TOLERANCE = {"grad": 1e-10, "weights": 1e-6, "ranks_agree": 1e-12}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backbone(nn.Module):
    """The decoder of a causal LM as the module DDP wraps: ``(input_ids, attention_mask) ->
    last hidden state``. The LM head's weight goes to the loss directly (its gradient is
    synchronised like any other parameter's: DDP hooks every parameter of the wrapped model)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        decoder = self.lm.get_decoder()  # type: ignore[operator]
        return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @property
    def head_weight(self) -> Tensor:
        return self.lm.get_output_embeddings().weight  # type: ignore[operator,union-attr]


def shard(sequences: list[list[int]], world: int) -> list[list[list[int]]]:
    """Contiguous shards of the rows, as even in rows as possible (not in tokens)."""
    n, r = divmod(len(sequences), world)
    bounds = [i * n + min(i, r) for i in range(world + 1)]
    return [sequences[bounds[i]:bounds[i + 1]] for i in range(world)]


def _rank_loss(model: nn.Module, batch: dict[str, Tensor], world: int, *,
               normalize: str) -> Tensor:
    hidden = model(batch["input_ids"], batch["attention_mask"])
    h, t = shifted(hidden, batch["labels"])
    backbone = model.module
    assert isinstance(backbone, Backbone)
    weight = backbone.head_weight
    if normalize == "micro_batch":  # the naive mean of each shard (DDP averages the means)
        return linear_cross_entropy_loss(h, weight, t, ignore_index=IGNORE)  # type: ignore[return-value]
    count = (t != IGNORE).sum().to(h.dtype)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    total = linear_cross_entropy_loss(h, weight, t, ignore_index=IGNORE, reduction="sum")
    assert isinstance(total, Tensor)
    return total * world / count


def worker(rank: int, world: int, port: int, out: str, config: dict[str, Any]) -> None:
    """One rank: its shard, one naive and ``steps`` global-normalised SGD steps; writes the
    first gradients (both normalisations) and the final weights to ``out/rank{rank}.pt``."""
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        seqs = toy_sequences(config["rows"], lengths=config["lengths"], seed=config["seed"])
        batch = collate([{"input_ids": s} for s in shard(seqs, world)[rank]])
        lm = tiny_llama(seed=config["seed"], dtype=torch.float64)
        model = DistributedDataParallel(Backbone(lm))
        names = [n for n, _ in lm.named_parameters()]

        def grads() -> dict[str, Tensor]:
            return {n: p.grad.detach().clone() for n, p in zip(names, lm.parameters())
                    if p.grad is not None}

        _rank_loss(model, batch, world, normalize="micro_batch").backward()
        naive = grads()
        model.zero_grad(set_to_none=True)
        opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
        first: dict[str, Tensor] = {}
        for step in range(config["steps"]):
            opt.zero_grad(set_to_none=True)
            _rank_loss(model, batch, world, normalize="global").backward()
            if step == 0:
                first = grads()
            opt.step()
        tokens = int((batch["labels"] != IGNORE).sum())
        torch.save({"grad": first, "naive_grad": naive, "tokens": tokens,
                    "weights": {n: p.detach().clone() for n, p in lm.named_parameters()}},
                   Path(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _single_process(config: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """First gradient and final weights of ``steps`` SGD steps on the whole batch, one process,
    the model's own logits and ``F.cross_entropy``."""
    seqs = toy_sequences(config["rows"], lengths=config["lengths"], seed=config["seed"])
    lm = tiny_llama(seed=config["seed"], dtype=torch.float64)
    first: dict[str, Tensor] = {}
    with torch.no_grad():
        for step in range(config["steps"]):
            with torch.enable_grad():
                g = full_batch_gradients(lm, seqs)
            if step == 0:
                first = g
            for n, p in lm.named_parameters():
                p -= config["lr"] * g[n]
    return first, {n: p.detach().clone() for n, p in lm.named_parameters()}


def check(world: int = 2, *, rows: int = 8, lengths: tuple[int, ...] = (3, 5, 24, 40),
          steps: int = 3, lr: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Spawns ``world`` gloo processes and compares them with one process; returns the
    numbers (max relative differences over parameters, each rank's tokens)."""
    if rows < world:
        raise ValueError(f"rows={rows} must be at least world={world}")
    config = {"rows": rows, "lengths": list(lengths), "steps": steps, "lr": lr, "seed": seed}
    with tempfile.TemporaryDirectory() as out:
        start_processes(worker, args=(world, free_port(), out, config), nprocs=world,
                        join=True, start_method="spawn")
        ranks = [torch.load(Path(out, f"rank{r}.pt")) for r in range(world)]
    full_grad, full_weights = _single_process(config)
    return {
        "world": world,
        "tokens_per_rank": [r["tokens"] for r in ranks],
        "grad": max(max_relative_difference(r["grad"], full_grad) for r in ranks),
        "weights": max(max_relative_difference(r["weights"], full_weights) for r in ranks),
        "naive_grad": min(max_relative_difference(r["naive_grad"], full_grad) for r in ranks),
        "ranks_agree": max(max_relative_difference(r["weights"], ranks[0]["weights"])
                           for r in ranks),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="DDP (gloo) + losslab linear_cross_entropy.")
    p.add_argument("--world", type=int, default=2, help="processes")
    p.add_argument("--rows", type=int, default=8, help="sequences in the batch")
    p.add_argument("--steps", type=int, default=3, help="SGD steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    r = check(args.world, rows=args.rows, steps=args.steps, seed=args.seed)
    ok = all(r[k] < tol for k, tol in TOLERANCE.items())
    print(f"{r['world']} gloo processes, target tokens per rank {r['tokens_per_rank']}")
    print(f"  sum / global tokens: first gradient = single process's to {r['grad']:.1e},\n    "
          f"weights after {args.steps} SGD steps to {r['weights']:.1e} (max relative "
          f"difference), ranks' weights to {r['ranks_agree']:.1e}")
    print(f"  naive mean per rank: gradient off by {r['naive_grad']:.1%}")
    print("OK: DDP = single process" if ok else "FAIL: DDP differs from the single process")
    if args.json is not None:
        args.json.write_text(json.dumps({**r, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
