"""The validated inputs of the ``tokens`` kind (``logits[N, T, V]``, ``target[N, T]``), shared by
the token losses of :mod:`losslab.losses.tokens` and the path losses of other families (the
Levin Tree Search loss reads a policy's log-probabilities along solution paths the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import check_float, compute_dtype, require

__all__ = ["TokenBatch", "prepare_tokens"]


@dataclass(frozen=True)
class TokenBatch:
    """Validated ``(logits, target)`` of the ``tokens`` kind.

    Attributes:
        logits: ``[N, T, V]`` in the compute dtype (float32 for half inputs).
        target: ``[N, T]`` int64 ids with ignored positions replaced by 0.
        valid: ``[N, T]`` bool, False at ``ignore_index``.
        token_weight: ``[N, T]`` weights in the compute dtype, or None.
    """

    logits: Tensor
    target: Tensor
    valid: Tensor
    token_weight: Tensor | None

    def log_probs(self) -> Tensor:
        return F.log_softmax(self.logits, dim=-1)

    def target_log_prob(self, logp: Tensor) -> Tensor:
        """``[N, T]`` log-prob of the target token (0 at ignored positions)."""
        lp = logp.gather(-1, self.target.unsqueeze(-1)).squeeze(-1)
        return torch.where(self.valid, lp, torch.zeros_like(lp))


def prepare_tokens(logits: Tensor, target: Tensor, *, ignore_index: int = -100,
                   token_weight: Tensor | None = None, loss: str = "this loss",
                   reject_nan: bool = False, ids: str = "token ids") -> TokenBatch:
    """Validate the inputs of the ``tokens`` kind (see :mod:`losslab.losses.tokens`).
    ``reject_nan``: raise for NaN logits (for losses that read only some of the vocabulary,
    where a NaN elsewhere would not reach the value). ``ids``: what the target holds, for the
    messages ("token ids"; "actions" for a search policy's paths)."""
    check_float("logits", logits)
    if reject_nan:  # data checks through require: async asserts under torch.compile
        require(~torch.isnan(logits), f"logits of {loss} contain NaN")
    if logits.ndim != 3:
        raise ValueError(f"{loss} needs logits of shape [N, T, V], got {tuple(logits.shape)}")
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer {ids} [N, T], got dtype {target.dtype}")
    n, t, v = logits.shape
    if tuple(target.shape) != (n, t):
        raise ValueError(f"target must have shape [{n}, {t}] for logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"logits and target must be on one device, got {logits.device} and "
                         f"{target.device}")
    tid = target.long()
    valid = tid != ignore_index
    bad = valid & ((tid < 0) | (tid >= v))
    require(~bad, lambda: (f"target must hold {ids} in [0, {v}) or ignore_index="
                           f"{ignore_index}, got {sorted(set(tid[bad].tolist()))[:5]}"))
    dtype = compute_dtype(logits.dtype)
    tw = None
    if token_weight is not None:
        if (not isinstance(token_weight, Tensor) or not token_weight.is_floating_point()
                or tuple(token_weight.shape) != (n, t)):
            raise ValueError(f"token_weight must be a float tensor of shape [{n}, {t}]")
        if token_weight.device != logits.device:
            raise ValueError("token_weight must be on the logits' device")
        tw = token_weight.to(dtype)
    return TokenBatch(logits.to(dtype), torch.where(valid, tid, torch.zeros_like(tid)), valid,
                      tw)
