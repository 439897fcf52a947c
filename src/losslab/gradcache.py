"""Gradient caching (GradCache): a batch-level loss over a batch whose encoder activations do
not fit in memory, with exactly the full-batch parameter gradients.

Gao, Zhang, Han, Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", arXiv 2101.06983. A contrastive loss couples every row of the batch, so it cannot be
accumulated over micro-batches; but its gradient factors through the embeddings:
``dL/dtheta = sum_i (dL/dz_i) dz_i/dtheta``. The step therefore

1. encodes the batch in chunks *without* a graph (only the ``[N, D]`` embeddings are kept),
2. computes the loss on the whole batch of (detached, leaf) embeddings and backpropagates it
   to them: the cached gradients ``dL/dz`` (and the gradients of the loss's own parameters,
   a learned temperature),
3. re-encodes each chunk *with* a graph and backpropagates its slice of the cached gradients
   (``torch.autograd.backward(z_chunk, dL/dz_chunk)``), one chunk's graph at a time.

Peak memory is one chunk's activations plus the loss's own memory (``O(N D)`` for the tiled
contrastive losses); the price is a second forward pass. Random layers (dropout) see the same
random numbers in both passes: the RNG state before each input's first chunk is recorded
and replayed for its chunks in the same order (``replay_rng=True``), as
``torch.utils.checkpoint`` does for one segment.

Composes with

- any ``paired`` / ``embeddings`` loss (and with their tiled forms: ``chunk_size=`` of the
  loss is independent of the encoder chunks here);
- :class:`losslab.distributed.DistributedLoss`: step 2 runs the gathers and their backward
  (every rank calls :func:`cached_backward` in the same step);
- DDP: an encoder wrapped in ``DistributedDataParallel`` re-encodes every chunk but its
  last under ``no_sync()``, so its gradients are averaged once, after all its chunks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GradCache", "cached_backward"]

Batch = Tensor | Mapping[str, Tensor]


def _rows(x: Batch) -> int:
    if isinstance(x, Tensor):
        return x.shape[0]
    sizes = {v.shape[0] for v in x.values()}
    if len(sizes) != 1:
        raise ValueError(f"the tensors of a mapping input must have one number of rows, got "
                         f"{sorted(sizes)}")
    return sizes.pop()


def _chunks(x: Batch, size: int) -> list[Batch]:
    if isinstance(x, Tensor):
        return list(x.split(size))
    n = _rows(x)
    return [{k: v[r0 : r0 + size] for k, v in x.items()} for r0 in range(0, n, size)]


def _devices(x: Batch) -> list[torch.device]:
    tensors = [x] if isinstance(x, Tensor) else list(x.values())
    return sorted({t.device for t in tensors if t.device.type == "cuda"}, key=str)


@dataclass
class _RngState:
    """The CPU RNG state and the CUDA RNG states of the input's devices."""

    cpu: Tensor
    cuda: list[tuple[int, Tensor]]

    @classmethod
    def capture(cls, devices: list[torch.device]) -> _RngState:
        return cls(torch.get_rng_state(),
                   [(d.index or 0, torch.cuda.get_rng_state(d)) for d in devices])

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the RNG state after the block is left unchanged."""
        with torch.random.fork_rng(devices=[i for i, _ in self.cuda]):
            torch.set_rng_state(self.cpu)
            for i, state in self.cuda:
                torch.cuda.set_rng_state(state, i)
            yield


def _encode(encoder: Callable[..., Tensor], x: Batch) -> Tensor:
    out = encoder(**x) if isinstance(x, Mapping) else encoder(x)
    if not isinstance(out, Tensor):
        raise ValueError(f"an encoder must return a Tensor of embeddings, got "
                         f"{type(out).__name__}")
    return out


def _no_sync(encoder: Any, sync: bool) -> contextlib.AbstractContextManager[Any]:
    if not sync and hasattr(encoder, "no_sync"):
        return encoder.no_sync()
    return contextlib.nullcontext()


def cached_backward(
    loss: Callable[..., Tensor],
    encoders: Sequence[Callable[..., Tensor]],
    inputs: Sequence[Batch],
    *,
    chunk_size: int,
    extra: Sequence[Any] = (),
    loss_kwargs: Mapping[str, Any] | None = None,
    replay_rng: bool = True,
) -> Tensor:
    """One GradCache step: accumulate into ``.grad`` the parameter gradients of
    ``loss(encoders[0](inputs[0]), ..., *extra, **loss_kwargs)``, encoding ``chunk_size`` rows
    at a time; return the loss value (detached).

    Args:
        loss: the batch-level loss (a ``losslab.create`` module, a
            :class:`~losslab.distributed.DistributedLoss`, or any callable of the embeddings).
        encoders: one encoder per embedding input: ``(image_encoder, text_encoder)`` for a
            ``paired`` loss (the same module twice for two views), ``(encoder,)`` for an
            ``embeddings`` loss.
        inputs: the encoders' inputs, ``[N, ...]`` tensors or mappings of them (keyword
            inputs, e.g. token ids and attention masks).
        chunk_size: rows per encoder pass (the memory knob).
        extra: further positional inputs of the loss after the embeddings (``labels``).
        loss_kwargs: keyword inputs of the loss.
        replay_rng: replay the RNG state in the second pass (dropout masks equal): default True.

    Raises:
        ValueError: ``chunk_size < 1``, ``encoders`` and ``inputs`` of different lengths, or
            inputs of different numbers of rows.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if len(encoders) != len(inputs) or not encoders:
        raise ValueError(f"encoders and inputs must be non-empty and of one length, got "
                         f"{len(encoders)} and {len(inputs)}")
    rows = {_rows(x) for x in inputs}
    if len(rows) != 1:
        raise ValueError(f"inputs must have one number of rows, got {sorted(rows)}")
    # 1. encode without a graph, recording each chunk's RNG state
    # (one state per input: its chunks run in the same order in both passes and draw the same
    # random numbers; one small tensor per chunk would also fragment the heap between chunks)
    plan: list[tuple[int, list[Batch], _RngState | None]] = []
    cached: list[Tensor] = []
    n = rows.pop()
    for t, (encoder, x) in enumerate(zip(encoders, inputs)):
        parts = _chunks(x, chunk_size)
        state = _RngState.capture(_devices(x)) if replay_rng else None
        out: Tensor | None = None
        with torch.no_grad():
            for c, part in enumerate(parts):
                z = _encode(encoder, part)
                if out is None:  # written in place: no list of chunks and no concatenated copy
                    out = z.new_empty((n, *z.shape[1:]))
                out[c * chunk_size : c * chunk_size + z.shape[0]] = z
                del z
        assert out is not None
        plan.append((t, parts, state))
        cached.append(out.requires_grad_(True))
    # 2. the loss on the full batch of embeddings, and its gradients
    value = loss(*cached, *extra, **dict(loss_kwargs or {}))
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError("the loss must return a scalar tensor (reduction 'mean' or 'sum')")
    value.backward()
    grads = [z.grad if z.grad is not None else torch.zeros_like(z) for z in cached]
    del cached  # only the cached gradients are needed from here on
    # 3. re-encode with a graph and backpropagate the cached gradients, chunk by chunk; an
    # encoder used by several inputs (two views) syncs (DDP) after its very last chunk only
    last_use = {id(e): t for t, e in enumerate(encoders)}
    for t, parts, state in plan:
        encoder = encoders[t]
        with state.replay() if state is not None else contextlib.nullcontext():
            for c, (part, g) in enumerate(zip(parts, grads[t].split(chunk_size))):
                sync = last_use[id(encoder)] == t and c == len(parts) - 1
                with _no_sync(encoder, sync):
                    z = _encode(encoder, part)
                    torch.autograd.backward(z, g)
    return value.detach()


class GradCache(nn.Module):
    """A loss with its encoders, stepped with :func:`cached_backward`.

    >>> step = GradCache(losslab.create("clip"), (image_encoder, text_encoder), chunk_size=512)
    >>> value = step(images, texts)   # gradients accumulated, as after value.backward()
    >>> optimizer.step()

    ``step(*inputs, extra=(labels,))`` for an ``embeddings`` loss. The loss and the encoders are
    submodules (their parameters are this module's).
    """

    def __init__(self, loss: nn.Module, encoders: Sequence[nn.Module], *, chunk_size: int,
                 replay_rng: bool = True) -> None:
        super().__init__()
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.loss = loss
        self.encoders = nn.ModuleList(encoders)
        self.chunk_size = chunk_size
        self.replay_rng = replay_rng

    def forward(self, *inputs: Batch, extra: Sequence[Any] = (),
                loss_kwargs: Mapping[str, Any] | None = None) -> Tensor:
        return cached_backward(self.loss, list(self.encoders), inputs,
                               chunk_size=self.chunk_size, extra=extra,
                               loss_kwargs=loss_kwargs, replay_rng=self.replay_rng)
