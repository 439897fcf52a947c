r"""The goldfish loss mask (Hans et al., "Be like a Goldfish, Don't Memorize! Mitigating
Memorization in Generative LLMs", arXiv 2406.10209).

The goldfish loss drops a pseudo-random subset of about ``1/k`` of the target tokens from the
next-token loss, so that the model never sees a whole passage supervised and cannot reproduce
it verbatim. The *hashed* mask makes the drop decision a deterministic function of the ``h``
tokens that precede the target: a passage that occurs many times (duplicates, repeated
epochs) is always masked at the same positions.

.. math::
    G_i = \big[\, f(x_{i-h}, \dots, x_{i-1}) \ge 1/k \,\big]
    \qquad (\text{keep token } i \text{ iff } G_i = 1)

with :math:`f` a hash of the context into :math:`[0, 1)`. Defaults ``k = 4`` and ``h = 13``
follow the paper's main experiments. Here :math:`f` is a seeded universal hash computed with
integer tensor ops (deterministic across runs, devices and batch layouts):
:math:`H = \sum_{j=1}^{h} (x_{i-j} \bmod P)\, r_j \bmod P` with :math:`P = 2^{31}-1` and
multipliers :math:`r_j` drawn from ``seed``, followed by a xor-shift/multiply mixing step;
:math:`f = H' / P`. Positions with fewer than ``h`` preceding tokens are always kept.

Use with :func:`~losslab.fused.linear_cross_entropy.linear_cross_entropy_loss` either as
``token_weight=goldfish_mask(labels).float()`` or by ``apply_goldfish(labels)`` (dropped
labels become ``ignore_index``); both make ``"mean"`` average over the kept tokens, as in the
paper. Apply it to the *shifted* labels (``labels[..., i]`` = the token predicted at position
``i``): the ``h`` labels before position ``i`` are then exactly the ``h`` tokens preceding the
target (the first ``h`` positions are kept).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_goldfish", "goldfish_mask"]

_P = 2**31 - 1  # Mersenne prime: products of two residues fit in int64


def _multipliers(h: int, seed: int, device: torch.device) -> tuple[Tensor, int]:
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randint(1, _P, (h + 1,), generator=g, dtype=torch.int64)
    return r[:h].to(device), int(r[h].item()) | 1


def goldfish_mask(tokens: Tensor, *, k: int = 4, h: int = 13, seed: int = 0) -> Tensor:
    """Boolean keep-mask of the hashed goldfish loss, same shape as ``tokens``.

    Args:
        tokens: ``[..., T]`` integer token ids (the label sequence; the last dim is time).
        k: drop frequency: a token is dropped with probability about ``1/k`` (default 4, the
            paper's main setting); ``k = 1`` drops every position that has a full context.
        h: context width: the number of preceding tokens hashed (default 13, as in the paper).
        seed: selects the hash function (fixed default: the same text gets the same mask).

    Returns:
        ``[..., T]`` bool tensor, ``True`` = keep the token in the loss.

    Paper: Hans et al., "Be like a Goldfish, Don't Memorize! Mitigating Memorization in
    Generative LLMs", arXiv 2406.10209.
    """
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError("tokens must be an integer tensor [..., T]")
    if tokens.ndim < 1:
        raise ValueError("tokens must have at least one dimension (time)")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not isinstance(h, int) or h < 1:
        raise ValueError(f"h must be an int >= 1, got {h!r}")
    t = tokens.shape[-1]
    keep = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    if t <= h:
        return keep
    r, mult = _multipliers(h, seed, tokens.device)
    x = tokens.long().remainder(_P)
    # windows[..., i, j] = x[..., i + j]; position p = i + h has context x[p-h : p].
    windows = x.unfold(-1, h, 1)[..., : t - h, :]
    hsh = (windows * r).remainder(_P).sum(-1).remainder(_P)
    hsh = (hsh ^ (hsh >> 15)).mul(mult).remainder(_P)
    hsh = (hsh ^ (hsh >> 13)).mul(mult).remainder(_P)
    # keep iff f = H / P >= 1/k  <=>  H * k >= P
    keep[..., h:] = hsh * k >= _P
    return keep


def apply_goldfish(
    labels: Tensor, *, k: int = 4, h: int = 13, seed: int = 0, ignore_index: int = -100
) -> Tensor:
    """``labels`` with the goldfish-dropped positions set to ``ignore_index`` (a new tensor)."""
    return labels.masked_fill(~goldfish_mask(labels, k=k, h=h, seed=seed), ignore_index)
