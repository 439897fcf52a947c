"""Buffer sizing and the reused buffers of the chunked passes.

Every size the kernel chooses is here, derived from one **memory budget**: the bytes the
kernel may allocate beyond the gradients it returns (``dh``, ``dW``, ``db`` in the inputs'
dtypes) and its ``O(N)`` per-token vectors. The budget is :data:`WORKSPACE_BYTES` (48 MiB)
unless a call passes ``workspace_bytes=``; it does not grow with the vocabulary or the number
of tokens. :func:`plan_chunks` turns it into the ``dweight`` method and the tokens per chunk;
:class:`ChunkWorkspace` and :class:`VocabBlockWorkspace` allocate a pass's buffers once
(every chunk or block works in views of them) and :func:`chunk_workspace_bytes` /
:func:`vocab_workspace_bytes` state what they take, so that the plan and the allocation
cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losslab._core import HALF_DTYPES, compute_dtype

__all__ = [
    "WORKSPACE_BYTES",
    "ChunkWorkspace",
    "LceOptions",
    "VocabBlockWorkspace",
    "VocabMajorWorkspace",
    "chunk_workspace_bytes",
    "major_block",
    "major_panel",
    "plan_chunks",
    "tokens_within",
    "vocab_major_bytes",
    "vocab_workspace_bytes",
]

#: Default workspace budget of one call (bytes beyond the returned gradients and the O(N)
#: per-token vectors): 48 MiB whatever N and V, so that the whole extra peak of a first
#: forward + backward, the runtime's own first-call allocations included (thread pools, GEMM
#: packing buffers: about 17 MiB on the CPU of ``benchmarks/README.md``), stays under 64 MiB.
#: ``workspace_bytes=`` overrides it per call; a larger budget buys larger chunks (fewer
#: passes over the ``V x d`` accumulator) and, for half inputs, the 3-GEMM
#: ``"token_chunks"`` path.
WORKSPACE_BYTES = 48 * 1024 * 1024
#: Share of the budget the planned buffers may fill; the rest is left to the allocator's
#: rounding and the small temporaries of the loop (index vectors, views, scalars).
PLAN_FRACTION = 0.875
#: Fewest tokens per chunk for which ``weight_grad="auto"`` keeps ``"token_chunks"``: every
#: chunk re-reads and re-writes the ``V x d`` weight-gradient accumulator and runs GEMMs of
#: only ``chunk`` rows, so small chunks cost more than the 4th GEMM of ``"vocab_blocks"``
#: (4/3 of the FLOPs). Measured (``benchmarks/README.md``, fp32, N = 2048, d = 1024): CPU time
#: 1.5x that of 1024-token chunks at 80 tokens (V = 128256) and 2.1x at 32 (V = 262144).
MIN_TOKEN_CHUNK = 256
#: Automatic chunks are multiples of this (when at least this large) and at most
#: :data:`MAX_CHUNK` tokens (larger chunks gain nothing on CPU GEMMs).
CHUNK_ALIGN, MAX_CHUNK = 16, 1024
#: Bytes per entry of a half-precision GEMM operand that the CPU matmul converts to float32
#: behind our back (oneDNN without native bf16/fp16 kernels): the ``[chunk, V]`` logits and the
#: ``tokens x block`` gradient block. Not ours to allocate, but it is extra memory: measured on
#: the CPU of ``benchmarks/README.md`` the half passes took 1.5x the bytes planned without it.
HALF_GEMM_COPY = 4
#: Bytes of the float32 row-block scratch used with half-precision inputs.
HALF_SCRATCH_BYTES = 2 * 1024 * 1024
#: Vocabulary rows per block of the half-precision ``dweight`` matmul (bounds its scratch).
HALF_VOCAB_BLOCK = 1024
#: Most / fewest vocabulary rows per block of the ``weight_grad="vocab_blocks"`` pass.
VOCAB_BLOCK, MIN_VOCAB_BLOCK = 8192, 256
#: Cap on that pass's ``tokens x block`` buffers (within the budget; tokens are grouped
#: beyond it).
VOCAB_PASS_BYTES = 64 * 1024 * 1024
#: Most / fewest vocabulary rows per block of the ``weight_grad="vocab_major"`` passes (the
#: fewest is kept even when the budget is smaller: a block of fewer rows makes every GEMM
#: small; the panel of tokens shrinks instead).
MAJOR_BLOCK, MIN_MAJOR_BLOCK = 8192, 512
#: Vocabulary blocks of the ``"vocab_major"`` passes are multiples of this (when larger).
MAJOR_ALIGN = 64


def _usable(budget: int) -> int:
    return int(budget * PLAN_FRACTION)


def half_rows(v: int, chunk: int) -> int:
    """Rows of the float32 softmax scratch of half inputs (:data:`HALF_SCRATCH_BYTES`)."""
    return max(1, min(chunk, HALF_SCRATCH_BYTES // (4 * max(v, 1))))


def _half_weight_block(v: int, d: int, rows: int) -> tuple[int, bool]:
    """``(vb, shared)``: vocabulary rows of the half ``dweight`` block and whether its float32
    widening fits in (is a view of) the idle softmax scratch of ``rows`` rows."""
    vb = min(HALF_VOCAB_BLOCK, v)
    fit = rows * v // max(d, 1)
    if fit >= min(vb, 64):
        return min(vb, fit), True
    return vb, False


def chunk_workspace_bytes(
    chunk: int, v: int, d: int, dtype: torch.dtype, *, softcap: bool, smooth_sum: bool = True,
    weight_grad: bool = True, folded: bool = True, accumulator: bool = False,
    runtime: bool = True,
) -> int:
    """Bytes of the buffers of one chunk pass (:meth:`ChunkWorkspace.allocate` with the same
    flags), plus, with ``accumulator``, the float32 ``V x d`` ``dweight`` accumulator of half
    inputs beyond the half gradient it is rounded into (``"token_chunks"`` only), and, with
    ``runtime``, the matmul's float32 copy of the half logits (:data:`HALF_GEMM_COPY`)."""
    it, acc = dtype.itemsize, compute_dtype(dtype).itemsize
    half = dtype in HALF_DTYPES
    rows = half_rows(v, chunk) if half else chunk
    total = chunk * v * it + chunk * acc * (2 if smooth_sum else 1)
    if half and runtime:
        total += chunk * v * HALF_GEMM_COPY
    if softcap:
        total += rows * v * acc
    if half:
        total += rows * v * 4
        if weight_grad:
            vb, shared = _half_weight_block(v, d, rows)
            total += vb * d * it + (0 if shared else vb * d * 4)
    if folded:
        total += 2 * chunk * d * acc + (chunk * d * it if half else 0)
    if accumulator and half:
        total += v * d * (4 - it)
    return total


def _fit_chunk(
    n: int, v: int, d: int, dtype: torch.dtype, softcap: bool, usable: int, accumulator: bool,
    weight_grad: bool,
) -> int:
    """Most tokens per chunk (aligned, at most :data:`MAX_CHUNK` and ``n``) whose buffers fit
    in ``usable`` bytes; 0 when not even one token fits."""
    def fits(c: int) -> bool:
        return chunk_workspace_bytes(c, v, d, dtype, softcap=softcap, weight_grad=weight_grad,
                                     accumulator=accumulator) <= usable

    lo, hi = 0, max(1, min(MAX_CHUNK, n))
    while lo < hi:  # the bytes grow with the chunk: bisect for the largest that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    if lo >= CHUNK_ALIGN and lo < n:
        lo = lo // CHUNK_ALIGN * CHUNK_ALIGN
    return lo


def plan_chunks(
    n_tokens: int, vocab_size: int, d: int, dtype: torch.dtype = torch.float32, *,
    softcap: bool = False, weight_grad: str = "auto", workspace_bytes: int = WORKSPACE_BYTES,
) -> tuple[str, int]:
    """``(weight_grad, tokens per chunk)`` for a call of ``n_tokens`` tokens, ``V`` classes and
    ``d`` features within the budget ``workspace_bytes`` (default :data:`WORKSPACE_BYTES`).

    ``weight_grad="auto"`` keeps ``"token_chunks"`` (3 GEMMs) when a chunk of at least
    :data:`MIN_TOKEN_CHUNK` tokens fits the budget together with, for half inputs, the float32
    ``V x d`` accumulator; otherwise ``"vocab_major"`` (two passes over vocabulary blocks of
    whole token panels, 4 large GEMMs, no ``V x d`` accumulator: :mod:`.vocab_major`), whose
    "chunk" is the token panel of :func:`major_panel` (all tokens unless a panel of
    :data:`MIN_MAJOR_BLOCK`-row blocks would exceed the budget). ``"vocab_blocks"`` is never
    chosen automatically any more (it does the same 4 GEMMs, two of them on small token
    chunks). For the token passes the chunk is the largest that fits
    (:func:`chunk_workspace_bytes`), aligned to :data:`CHUNK_ALIGN` and at most
    :data:`MAX_CHUNK` tokens; if not even one token fits (a budget below one row of logits)
    the chunk is one token.
    """
    n = max(n_tokens, 1)
    usable = _usable(workspace_bytes)
    if weight_grad == "auto":
        c = _fit_chunk(n, vocab_size, d, dtype, softcap, usable, True, True)
        weight_grad = "token_chunks" if c >= min(MIN_TOKEN_CHUNK, n) else "vocab_major"
    if weight_grad == "vocab_major":
        return weight_grad, major_panel(n, vocab_size, d, dtype, softcap=softcap,
                                        workspace_bytes=workspace_bytes)
    tc = weight_grad == "token_chunks"
    return weight_grad, max(1, _fit_chunk(n, vocab_size, d, dtype, softcap, usable, tc, tc))


def tokens_within(n_tokens: int, bytes_per_token: int, *,
                  workspace_bytes: int = WORKSPACE_BYTES) -> int:
    """Tokens per chunk of a pass whose buffers take ``bytes_per_token`` per token (e.g.
    ``k`` float32 ``[chunk, V]`` buffers: ``4 k V``) within the budget: aligned to
    :data:`CHUNK_ALIGN`, at most :data:`MAX_CHUNK` and ``n_tokens``, at least 1. The policy
    of the other fused heads (:mod:`losslab.kernels.linear_stats`,
    :mod:`losslab.kernels.linear_kd`)."""
    c = _usable(workspace_bytes) // max(1, bytes_per_token)
    if c >= CHUNK_ALIGN:
        c = c // CHUNK_ALIGN * CHUNK_ALIGN
    return max(1, min(c, MAX_CHUNK, max(n_tokens, 1)))


def vocab_workspace_bytes(
    n: int, v: int, d: int, dtype: torch.dtype, *, softcap: bool,
    workspace_bytes: int = WORKSPACE_BYTES, runtime: bool = True,
) -> tuple[int, int, int]:
    """``(block, group, bytes)`` of the ``"vocab_blocks"`` pass: vocabulary rows per block
    (between :data:`MIN_VOCAB_BLOCK` and :data:`VOCAB_BLOCK`), tokens per GEMM and the bytes
    of its buffers (:meth:`VocabBlockWorkspace.allocate`), with ``runtime`` the matmul's
    float32 copy of the half gradient block too (the sizes always reserve it)."""
    it = dtype.itemsize
    half = dtype in HALF_DTYPES
    copy = HALF_GEMM_COPY if half else 0
    per = it + (4 if half else 0) + (compute_dtype(dtype).itemsize if softcap else 0) + copy
    usable = min(VOCAB_PASS_BYTES, _usable(workspace_bytes))
    vb = min(v, max(MIN_VOCAB_BLOCK, min(VOCAB_BLOCK, usable // max(1, n * per))))
    grp = max(1, min(n, usable // (vb * per)))
    if half and grp < n:  # the float32 block accumulator and one half partial product
        grp = max(1, min(n, (usable - vb * d * (4 + it)) // (vb * per)))
    acc_bytes = vb * d * (4 + it) if half and grp < n else 0
    return vb, grp, grp * vb * (per if runtime else per - copy) + acc_bytes


def _major_entry_bytes(dtype: torch.dtype, softcap: bool, runtime: bool = True) -> int:
    """Bytes per logit of a ``"vocab_major"`` block: the logits (input dtype), for half inputs
    their float32 copy and (``runtime``) the matmul's float32 copy of the half operand, with
    softcap the ``tanh`` of the gradient pass (compute dtype)."""
    half = dtype in HALF_DTYPES
    return (dtype.itemsize + (4 + (HALF_GEMM_COPY if runtime else 0) if half else 0)
            + (compute_dtype(dtype).itemsize if softcap else 0))


def _major_token_bytes(d: int, dtype: torch.dtype) -> int:
    """Bytes per panel token of a ``"vocab_major"`` gradient pass: for half inputs the float32
    ``dhidden`` accumulator of the panel and one half partial product (none for fp32/fp64:
    ``dhidden`` accumulates in the returned gradient)."""
    return d * (4 + dtype.itemsize) if dtype in HALF_DTYPES else 0


def major_panel(n: int, v: int, d: int, dtype: torch.dtype, *, softcap: bool,
                workspace_bytes: int = WORKSPACE_BYTES) -> int:
    """Tokens per panel of ``"vocab_major"``: all ``n`` when blocks of
    :data:`MIN_MAJOR_BLOCK` vocabulary rows of all tokens fit the budget, else the fewest
    equal panels that fit (at least one token)."""
    n = max(n, 1)
    per_tok = min(v, MIN_MAJOR_BLOCK) * _major_entry_bytes(dtype, softcap) \
        + _major_token_bytes(d, dtype)
    cap = max(1, _usable(workspace_bytes) // per_tok)
    if cap >= n:
        return n
    k = -(-n // cap)
    return -(-n // k)


def major_block(panel: int, v: int, d: int, dtype: torch.dtype, *, softcap: bool,
                workspace_bytes: int = WORKSPACE_BYTES) -> int:
    """Vocabulary rows per ``"vocab_major"`` block for panels of ``panel`` tokens: the most
    that fit the budget next to the panel's ``dhidden`` buffers, between
    :data:`MIN_MAJOR_BLOCK` and :data:`MAJOR_BLOCK` (and ``V``), aligned to
    :data:`MAJOR_ALIGN`."""
    panel = max(panel, 1)
    room = _usable(workspace_bytes) - panel * _major_token_bytes(d, dtype)
    fit = max(0, room) // (panel * _major_entry_bytes(dtype, softcap))
    vb = min(v, MAJOR_BLOCK, max(MIN_MAJOR_BLOCK, fit))
    if MAJOR_ALIGN <= vb < v:
        vb = vb // MAJOR_ALIGN * MAJOR_ALIGN
    return max(1, vb)


def vocab_major_bytes(
    panel: int, v: int, d: int, dtype: torch.dtype, *, softcap: bool,
    workspace_bytes: int = WORKSPACE_BYTES, runtime: bool = True,
) -> tuple[int, int]:
    """``(block, bytes)`` of the ``"vocab_major"`` passes with panels of ``panel`` tokens:
    the buffers of :meth:`VocabMajorWorkspace.allocate` (gradients wanted, the largest case),
    with ``runtime`` the matmul's float32 copy of the half logits block too."""
    vb = major_block(panel, v, d, dtype, softcap=softcap, workspace_bytes=workspace_bytes)
    return vb, (panel * vb * _major_entry_bytes(dtype, softcap, runtime)
                + panel * _major_token_bytes(d, dtype))


@dataclass
class VocabMajorWorkspace:
    """The buffers of the ``weight_grad="vocab_major"`` passes (allocated once per call).

    ``panel`` tokens per panel and ``block`` vocabulary rows per block
    (:func:`major_panel`, :func:`major_block`); flat buffers of ``panel x block`` entries:
    ``z`` the block's logits (input dtype), ``x`` their float32 copy (half only), ``tanh``
    the softcap's ``tanh`` (gradient pass with softcap only); ``dh_acc`` / ``dh_part``
    ``[panel, d]``: the float32 ``dhidden`` accumulator of a panel and one half partial
    product (half inputs with ``dhidden`` wanted).
    """

    panel: int
    block: int
    z: Tensor
    x: Tensor | None
    tanh: Tensor | None
    dh_acc: Tensor | None
    dh_part: Tensor | None

    @classmethod
    def allocate(
        cls, n: int, v: int, d: int, dtype: torch.dtype, device: torch.device,
        opts: LceOptions, *, grads: bool, dh: bool,
    ) -> VocabMajorWorkspace:
        acc = compute_dtype(dtype)
        half = dtype in HALF_DTYPES
        panel = max(1, min(opts.chunk_size, n))
        vb = major_block(panel, v, d, dtype, softcap=opts.softcap is not None,
                         workspace_bytes=opts.workspace_bytes)

        def new(*shape: int, dt: torch.dtype = acc) -> Tensor:
            return torch.empty(*shape, dtype=dt, device=device)

        return cls(
            panel=panel, block=vb, z=new(panel * vb, dt=dtype),
            x=new(panel * vb) if half else None,
            tanh=new(panel * vb) if grads and opts.softcap is not None else None,
            dh_acc=new(panel, d) if half and dh else None,
            dh_part=new(panel, d, dt=dtype) if half and dh else None,
        )


@dataclass(frozen=True)
class LceOptions:
    """The resolved options of one call (no ``"auto"`` left): smoothing ``eps``, ``softcap``
    ``c`` (None: off), z-loss coefficient ``lam``, tokens per chunk (per panel for
    ``weight_grad="vocab_major"``), how ``dweight`` is formed and which autograd Function
    runs."""

    label_smoothing: float
    softcap: float | None
    logz_penalty: float
    chunk_size: int
    weight_grad: str = "token_chunks"
    strategy: str = "grad_in_forward"
    workspace_bytes: int = WORKSPACE_BYTES


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
        rows = half_rows(v, chunk) if half else chunk
        ws = cls(chunk=chunk, rows=rows, logits=new(chunk, v, dt=dtype), z_target=new(chunk),
                 z_sum=new(chunk) if smooth_sum else None)
        ws.tanh = new(rows, v) if opts.softcap is not None else None
        ws.scratch = new(rows, v) if half else None
        if half and weight_grad:
            assert ws.scratch is not None
            # The float32 side of the dW accumulation reuses the softmax scratch (idle then).
            vb, shared = _half_weight_block(v, d, rows)
            if shared:
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

    ``block`` vocabulary rows per block, chosen so that the ``tokens x block`` buffers fit the
    call's budget (and at most :data:`VOCAB_PASS_BYTES`), between :data:`MIN_VOCAB_BLOCK` and
    :data:`VOCAB_BLOCK` (:func:`vocab_workspace_bytes`);
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
        softcap: float | None, workspace_bytes: int = WORKSPACE_BYTES,
    ) -> VocabBlockWorkspace:
        acc = compute_dtype(dtype)
        half = dtype in HALF_DTYPES
        vb, grp, _ = vocab_workspace_bytes(n, v, d, dtype, softcap=softcap is not None,
                                           workspace_bytes=workspace_bytes)

        def new(*shape: int, dt: torch.dtype = acc) -> Tensor:
            return torch.empty(*shape, dtype=dt, device=device)

        return cls(
            block=vb, group=grp, z=new(grp * vb, dt=dtype),
            x=new(grp * vb) if half else None,
            tanh=new(grp * vb) if softcap is not None else None,
            block_acc=new(vb, d) if half and grp < n else None,
        )
