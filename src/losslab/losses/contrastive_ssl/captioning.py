"""CoCa: the contrastive-captioner objective (a CLIP term on the unimodal embeddings plus the
captioning cross-entropy of the multimodal decoder).

Kind ``paired``: ``loss(a[N, D], b[N, D], *, caption_logits=None, caption_target=None)`` with
``a`` the image and ``b`` the text embeddings (row ``i`` of each is pair ``i``), and the
decoder's next-token logits ``[N, T, V]`` and target tokens ``[N, T]`` of the same captions.
fp16/bf16 inputs are computed in float32 and the loss is returned in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, check_float, compute_dtype
from losslab._hparams import Flag, Int, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.losses.contrastive_ssl._common import (
    check_call,
    inverse_temperature,
    two_view_logits,
)
from losslab.registry import register

__all__ = ["CoCaLoss", "coca_loss"]

_check_coca = hparams(temperature=Real(gt=0), contrastive_weight=Real(ge=0),
                      caption_weight=Real(ge=0), pad_id=Int(), normalize=Flag())


def _caption_term(logits: Tensor, target: Tensor, n: int, pad_id: int) -> Tensor:
    check_float("caption_logits", logits)
    if logits.ndim != 3 or logits.shape[0] != n:
        raise ValueError(f"caption_logits must have shape [{n}, T, V] (one caption per pair), "
                         f"got {tuple(logits.shape)}")
    if (not isinstance(target, Tensor) or target.is_floating_point()
            or target.dtype == torch.bool or target.shape != logits.shape[:2]):
        raise ValueError(f"caption_target must be an integer tensor [{n}, {logits.shape[1]}] "
                         f"of token ids, got {getattr(target, 'dtype', type(target).__name__)} "
                         f"{tuple(getattr(target, 'shape', ()))}")
    target = target.long().to(logits.device)
    valid = target != pad_id
    if bool(((target[valid] < 0) | (target[valid] >= logits.shape[2])).any()):
        raise ValueError(f"caption_target must hold token ids in [0, {logits.shape[2]}) or "
                         f"pad_id={pad_id}")
    x = logits.to(compute_dtype(logits.dtype))
    if not bool(valid.any()):
        return x.sum() * 0.0  # every token is padding: zero, zero gradient
    return F.cross_entropy(x.reshape(-1, x.shape[2]), target.reshape(-1), ignore_index=pad_id)


def coca_loss(
    a: Tensor,
    b: Tensor,
    *,
    caption_logits: Tensor | None = None,
    caption_target: Tensor | None = None,
    temperature: float | Tensor = 0.07,
    contrastive_weight: float = 1.0,
    caption_weight: float = 2.0,
    pad_id: int = 0,
    normalize: bool = True,
) -> Tensor:
    r"""CoCa: :math:`\mathcal{L} = \lambda_{con} \mathcal{L}_{con} + \lambda_{cap}
    \mathcal{L}_{cap}`.

    .. math::
        \mathcal{L}_{con} = -\frac{1}{2N} \sum_i \Big(\log \mathrm{softmax}_j(l_{ij})_i +
            \log \mathrm{softmax}_j(l_{ji})_i\Big), \quad l_{ij} = \cos(a_i, b_j)/\tau

    (CLIP's symmetric image-text InfoNCE on the unimodal embeddings) and
    :math:`\mathcal{L}_{cap} = -\frac{1}{|V|} \sum_{(i, t) \in V} \log P(y_{i,t} | y_{i,<t},
    x_i)`, the autoregressive captioning cross-entropy averaged over the non-padding tokens
    ``V`` (``caption_target != pad_id``). Defaults are the paper's weights,
    :math:`\lambda_{cap} = 2`, :math:`\lambda_{con} = 1`, and CLIP's initial temperature.
    Without ``caption_logits`` only the contrastive term is computed.

    A set-level loss (one scalar: the contrastive mean over pairs plus the token mean).

    Args:
        a, b: ``[N, D]`` image and text embeddings (unimodal; the text one is the CLS token).
        caption_logits: ``[N, T, V]`` decoder logits predicting ``caption_target``.
        caption_target: ``[N, T]`` token ids (already shifted: position ``t`` is predicted by
            ``caption_logits[:, t]``); ``pad_id`` tokens are ignored.
        temperature: :math:`\tau` (a 0-d tensor may be passed to learn it).
        contrastive_weight, caption_weight: :math:`\lambda_{con}, \lambda_{cap}` (1, 2).
        pad_id: the padding token id (default 0, open_clip's).
        normalize: L2-normalise the embeddings first (default True).

    Paper: Yu, Wang, Vasudevan, Yeung, Seyedhosseini, Wu, "CoCa: Contrastive Captioners are
    Image-Text Foundation Models", arXiv 2205.01917. Same definition as open_clip's
    ``CoCaLoss`` (restated in the tests; open_clip needs torchvision).
    """
    check_call(_check_coca, temperature=temperature, contrastive_weight=contrastive_weight,
               caption_weight=caption_weight, pad_id=pad_id, normalize=normalize)
    a, b = prepare_paired(a, b, normalize=normalize)
    logits, positive, _ = two_view_logits(a, b, inverse_temperature(temperature, a), "cross",
                                          normalize=False)
    contrastive = (F.cross_entropy(logits, positive) + F.cross_entropy(logits.t(), positive)) / 2
    total = contrastive_weight * contrastive
    if (caption_logits is None) != (caption_target is None):
        raise ValueError("caption_logits and caption_target must be given together")
    if caption_logits is not None and caption_target is not None:
        total = total + caption_weight * _caption_term(caption_logits, caption_target,
                                                       a.shape[0], pad_id)
    return total


@register(
    "coca", family="contrastive-ssl", kind="paired",
    paper="CoCa: Contrastive Captioners are Image-Text Foundation Models", arxiv="2205.01917",
    summary="1 * CLIP(a, b) + 2 * token CE(caption_logits, caption_target), pad ignored",
    peers=("open_clip.CoCaLoss",), reduction=None,
)
class CoCaLoss(LossModule, function=coca_loss, check=_check_coca):
    """Module form of :func:`coca_loss`:
    ``forward(a, b, *, caption_logits=None, caption_target=None)``."""

    function_only = ("caption_logits", "caption_target")

    def forward(self, a: Tensor, b: Tensor, *, caption_logits: Tensor | None = None,
                caption_target: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        if index is not None:
            raise ValueError("coca takes no index= argument")
        return coca_loss(a, b, caption_logits=caption_logits, caption_target=caption_target,
                         **self.call_kwargs())
