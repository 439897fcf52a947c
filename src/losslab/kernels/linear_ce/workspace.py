"""Buffer sizing and the reused buffers of the chunked passes.

Every size the kernel chooses is here: the tokens per chunk (:func:`auto_chunk_size`), the
rows of the float32 softmax scratch of half inputs, the vocabulary blocks of the half
``dweight`` accumulation, and the blocks of the ``weight_grad="vocab_blocks"`` pass. A pass
allocates its buffers once (:meth:`ChunkWorkspace.allocate`,
:meth:`VocabBlockWorkspace.allocate`) and every chunk or block works in views of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losslab._core import HALF_DTYPES, compute_dtype

__all__ = [
    "ChunkWorkspace",
    "LceOptions",
    "VocabBlockWorkspace",
    "auto_chunk_size",
]

#: Largest per-chunk logits buffer of :func:`auto_chunk_size` with ``weight_grad=
#: "token_chunks"`` (every chunk re-reads and re-writes the ``V x d`` weight-gradient
#: accumulator, so chunks are made as large as this allows, up to :data:`MAX_CHUNK`).
CHUNK_BYTES = 512 * 1024 * 1024
#: The same with ``weight_grad="vocab_blocks"`` (no accumulator: small chunks cost little).
VOCAB_BLOCKS_CHUNK_BYTES = 32 * 1024 * 1024
#: The same for half-precision inputs with ``weight_grad="token_chunks"``: their float32
#: ``V x d`` accumulator already costs ``V d`` bytes more than the half gradient, so the chunk
#: is kept small (256 tokens at V = 32000) to stay within 0.15x of the naive path's memory.
HALF_CHUNK_BYTES = 16 * 1024 * 1024
#: Fewest / most tokens per automatic chunk (smaller GEMMs lose efficiency on CPU).
MIN_CHUNK, MAX_CHUNK = 256, 1024
#: Bytes of the float32 row-block scratch used with half-precision inputs.
HALF_SCRATCH_BYTES = 2 * 1024 * 1024
#: Vocabulary rows per block of the half-precision ``dweight`` matmul (bounds its scratch).
HALF_VOCAB_BLOCK = 1024
#: Most / fewest vocabulary rows per block of the ``weight_grad="vocab_blocks"`` pass.
VOCAB_BLOCK, MIN_VOCAB_BLOCK = 8192, 256
#: Bytes of that pass's ``tokens x block`` buffers (tokens are grouped beyond it).
VOCAB_PASS_BYTES = 64 * 1024 * 1024


def auto_chunk_size(
    n_tokens: int, vocab_size: int, dtype: torch.dtype = torch.float32, *, softcap: bool = False,
    weight_grad: str = "token_chunks",
) -> int:
    """Tokens per chunk: as many as fit a logits buffer of :data:`CHUNK_BYTES` (512 MiB) with
    ``weight_grad="token_chunks"`` (:data:`HALF_CHUNK_BYTES`, 16 MiB, for float16/bfloat16)
    or :data:`VOCAB_BLOCKS_CHUNK_BYTES` (32 MiB) with ``"vocab_blocks"``, as a multiple of 64
    clamped to ``[MIN_CHUNK, MAX_CHUNK]`` = [256, 1024] and to ``n_tokens``.

    Per token and vocabulary entry the buffer holds the logits in the input dtype (plus a tanh
    buffer with ``softcap``; half inputs use a separate float32 row-block scratch). 1024 tokens
    keep the chunk GEMMs efficient on CPU and, with ``token_chunks``, the ``V x d``
    accumulator traffic low (it is read and written once per chunk).
    """
    softcap_scratch = softcap and dtype not in HALF_DTYPES
    per = dtype.itemsize + (compute_dtype(dtype).itemsize if softcap_scratch else 0)
    if weight_grad != "token_chunks":
        budget = VOCAB_BLOCKS_CHUNK_BYTES
    else:
        budget = HALF_CHUNK_BYTES if dtype in HALF_DTYPES else CHUNK_BYTES
    c = (budget // (per * max(vocab_size, 1))) // 64 * 64
    return max(1, min(max(MIN_CHUNK, min(MAX_CHUNK, c)), n_tokens))


@dataclass(frozen=True)
class LceOptions:
    """The resolved options of one call (no ``"auto"`` left): smoothing ``eps``, ``softcap``
    ``c`` (None: off), z-loss coefficient ``lam``, tokens per chunk, how ``dweight`` is formed
    and which autograd Function runs."""

    label_smoothing: float
    softcap: float | None
    logz_penalty: float
    chunk_size: int
    weight_grad: str = "token_chunks"
    strategy: str = "grad_in_forward"


@dataclass
class ChunkWorkspace:
    """The buffers one pass over token chunks reuses for every chunk (allocated once).

    * ``logits`` ``[chunk, V]`` (input dtype): a chunk's logits, then ``p`` (in place), then,
      with softcap, the logit gradient;
    * ``scratch`` ``[rows, V]`` float32, half inputs only: the row block the softmax runs on
      (``rows`` rows; for other dtypes a row block is the whole chunk, in ``logits``);
    * ``tanh`` ``[rows, V]`` (compute dtype), softcap only: ``tanh(z / c)``, then ``1 - tanh^2``;
    * ``z_target``, ``z_sum`` ``[chunk]``: the (capped) logit of the target and, with label
      smoothing, the class-weighted sum of the logits, gathered before the softmax;
    * ``wblk`` / ``wblk32`` ``[vb, d]``, half ``dweight`` only: one vocabulary block of the
      half GEMM and its float32 widening (a view of the idle ``scratch`` when it fits);
    * ``fold_a``, ``fold_b`` ``[chunk, d]`` (compute dtype) and ``fold_half`` (input dtype,
      half only): the small operands into which the gradient coefficients are folded.
    """

    chunk: int
    rows: int
    logits: Tensor
    z_target: Tensor
    z_sum: Tensor | None = None
    scratch: Tensor | None = None
    tanh: Tensor | None = None
    wblk: Tensor | None = None
    wblk32: Tensor | None = None
    fold_a: Tensor | None = None
    fold_b: Tensor | None = None
    fold_half: Tensor | None = None

    @classmethod
    def allocate(
        cls, n: int, v: int, d: int, dtype: torch.dtype, device: torch.device,
        opts: LceOptions, *, smooth_sum: bool, weight_grad: bool, folded: bool,
    ) -> ChunkWorkspace:
        """Buffers for ``n`` tokens, ``V = v`` classes, ``d`` features: ``smooth_sum`` (the
        label-smoothing statistic is needed), ``weight_grad`` (``dweight`` is accumulated over
        the chunks) and ``folded`` (the gradients are folded, not materialised)."""
        acc = compute_dtype(dtype)
        half = dtype in HALF_DTYPES
        chunk = max(1, min(opts.chunk_size, n))

        def new(*shape: int, dt: torch.dtype = acc) -> Tensor:
            return torch.empty(*shape, dtype=dt, device=device)

        # Half inputs: the logits come out of a half matmul; the softmax runs on float32
        # copies of row blocks of ``half_rows`` rows (a small scratch: the chunk stays large).
        half_rows = max(16, min(chunk, HALF_SCRATCH_BYTES // (4 * v)))
        rows = half_rows if half else chunk
        ws = cls(chunk=chunk, rows=rows, logits=new(chunk, v, dt=dtype), z_target=new(chunk),
                 z_sum=new(chunk) if smooth_sum else None)
        ws.tanh = new(rows, v) if opts.softcap is not None else None
        ws.scratch = new(half_rows, v) if half else None
        if half and weight_grad:
            assert ws.scratch is not None
            # The float32 side of the dW accumulation reuses the softmax scratch (idle then).
            vb = min(HALF_VOCAB_BLOCK, v)
            fit = ws.scratch.numel() // d
            if fit >= min(vb, 64):
                vb = min(vb, fit)
                ws.wblk32 = ws.scratch.view(-1)[: vb * d].view(vb, d)
            else:
                ws.wblk32 = new(vb, d)
            ws.wblk = new(vb, d, dt=dtype)
        if folded:
            ws.fold_a, ws.fold_b = new(chunk, d), new(chunk, d)
            ws.fold_half = new(chunk, d, dt=dtype) if half else None
        return ws


@dataclass
class VocabBlockWorkspace:
    """The buffers of the ``weight_grad="vocab_blocks"`` pass (allocated once).

    ``block`` vocabulary rows per block, chosen so that the ``tokens x block`` buffers take
    about :data:`VOCAB_PASS_BYTES` (between :data:`MIN_VOCAB_BLOCK` and :data:`VOCAB_BLOCK`);
    ``group`` tokens per GEMM (all ``n`` unless the budget is exceeded). ``z`` holds a block's
    logits (input dtype), ``x`` their float32 copy (half only), ``tanh`` the softcap's
    ``tanh`` and ``block_acc`` the float32 ``[block, d]`` sum of the groups' partial GEMMs
    (half inputs with more than one group).
    """

    block: int
    group: int
    z: Tensor
    x: Tensor | None
    tanh: Tensor | None
    block_acc: Tensor | None

    @classmethod
    def allocate(
        cls, n: int, v: int, d: int, dtype: torch.dtype, device: torch.device,
        softcap: float | None,
    ) -> VocabBlockWorkspace:
        acc = compute_dtype(dtype)
        half = dtype in HALF_DTYPES
        per = dtype.itemsize + (4 if half else 0) + (4 if softcap is not None else 0)
        vb = max(MIN_VOCAB_BLOCK, min(VOCAB_BLOCK, VOCAB_PASS_BYTES // max(1, n * per)))
        vb = min(vb, v)
        grp = max(1, min(n, VOCAB_PASS_BYTES // (vb * per)))

        def new(*shape: int, dt: torch.dtype = acc) -> Tensor:
            return torch.empty(*shape, dtype=dt, device=device)

        return cls(
            block=vb, group=grp, z=new(grp * vb, dt=dtype),
            x=new(grp * vb) if half else None,
            tanh=new(grp * vb) if softcap is not None else None,
            block_acc=new(vb, d) if half and grp < n else None,
        )
