"""The Betti matching loss: persistence bars of the prediction matched to those of the target
through the induced matchings of their union (arXiv 2211.15272).

Kind ``dense``, 2-D only (``[N, 1, H, W]`` sigmoid or ``[N, C, H, W]`` softmax; the official
code and this module work on one image and one foreground class at a time). The persistence,
image persistence and matching are :mod:`losslab._ops.persistence` (CPU, no gradient); the loss
gathers the probabilities at the birth and death pixels of the matched bars, so the gradient
reaches exactly those pixels.

``reduction="none"`` returns one value per image (the mean over its foreground classes);
``"mean"`` averages over the images and ``"sum"`` adds them. Ignored pixels are set to 0 (the
background) in both maps before the persistence and get no gradient; a batch with no pixel,
or all of them ignored, gives 0 with zero gradient.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Choice, Flag, Int, hparams
from losslab._ops.dense import foreground, prepare_dense, to_spatial
from losslab._ops.persistence import betti_match, betti_match_terms_op
from losslab.registry import register

__all__ = ["BettiMatchingLoss", "betti_matching_loss"]

_FILTRATIONS = ("superlevel", "sublevel", "both")
_check_betti_matching = hparams(filtration=Choice(*_FILTRATIONS),
                                construction=Choice("V", "T"), include_background=Flag(),
                                ignore_index=Int())


def _one_map(p: Tensor, g: Tensor, construction: str) -> Tensor:
    """The superlevel Betti matching loss of one ``[H, W]`` map ``p`` against ``g``."""
    pn = p.detach().double().cpu().numpy()
    gn = g.detach().double().cpu().numpy()
    matches, _, crit_p, _, crit_g = betti_match(pn, gn, construction)  # type: ignore[arg-type]
    fp, fg = p.reshape(-1), g.reshape(-1)

    def ends(flat: Tensor, crit: np.ndarray, birth: np.ndarray, death: np.ndarray
             ) -> tuple[Tensor, Tensor]:
        dev = flat.device
        b = flat[torch.as_tensor(crit[birth], device=dev)]
        alive = torch.as_tensor(death >= 0, device=dev)
        d = flat[torch.as_tensor(crit[np.maximum(death, 0)], device=dev)]
        return b, torch.where(alive, d, torch.zeros_like(d))  # essential: death value 0

    total = p.sum() * 0.0
    for m in matches:
        bp, dp = ends(fp, crit_p, m.bars_p.birth, m.bars_p.death)
        bg, dg = ends(fg, crit_g, m.bars_g.birth, m.bars_g.death)
        ip = torch.as_tensor(m.matched_p, device=p.device)
        ig = torch.as_tensor(m.matched_g, device=p.device)
        up = torch.as_tensor(m.unmatched_p, device=p.device)
        ug = torch.as_tensor(m.unmatched_g, device=p.device)
        total = total + 2 * ((bp[ip] - bg[ig]) ** 2 + (dp[ip] - dg[ig]) ** 2).sum()
        total = total + ((bp[up] - dp[up]) ** 2).sum() + ((bg[ug] - dg[ug]) ** 2).sum()
    return total


def _stacked_maps(probs: Tensor, tgt: Tensor, levels: tuple[bool, ...], construction: str
                  ) -> Tensor:
    """The compile path: the per-image loss ``[N]`` of every map at once through the
    operator ``losslab::betti_match_terms`` (static shapes: the terms padded to a bound of the
    image size, weight 0), the values gathered from the maps in torch (differentiable)."""
    n, k, h, w = probs.shape
    dtype = torch.promote_types(probs.dtype, tgt.dtype)
    ps = [1 - probs if flip else probs for flip in levels]
    gs = [1 - tgt if flip else tgt for flip in levels]
    pm = torch.stack(ps, 2).reshape(-1, h, w).to(dtype)  # [N K L, H, W]
    gm = torch.stack(gs, 2).reshape(-1, h, w).to(dtype)
    index, weight = betti_match_terms_op(pm.detach(), gm.detach(), construction)
    flat = torch.cat([pm.flatten(1), gm.flatten(1), pm.new_zeros(pm.shape[0], 1)], 1)
    a, b = flat.gather(1, index[..., 0]), flat.gather(1, index[..., 1])
    per_map = (weight.to(dtype) * (a - b) ** 2).sum(1)
    return per_map.reshape(n, k, len(levels)).sum((1, 2)) / k


def betti_matching_loss(
    logits: Tensor,
    target: Tensor,
    *,
    filtration: str = "superlevel",
    construction: str = "V",
    include_background: bool = False,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Betti matching loss: squared distances of matched persistence bars, plus the
    persistence of the unmatched ones.

    For a prediction :math:`P` (probabilities of one class) and a target :math:`G` of one
    image, the barcodes :math:`B(P), B(G)` of their superlevel filtrations (dims 0 and 1) are
    matched through the comparison image :math:`C = \max(P, G)` (the union): a bar of :math:`P`
    and a bar of :math:`G` are matched, :math:`(q, q') \in M`, when the induced matchings of the
    inclusions :math:`P \subseteq C` and :math:`G \subseteq C` send them to the same bar of
    :math:`C` (see :mod:`losslab._ops.persistence` for the algorithm). With a bar
    :math:`q = (b, d)` (birth and death values, :math:`b \ge d`; the never-dying component has
    :math:`d = 0`):

    .. math::
        \mathcal{L}(P, G) = \sum_{(q, q') \in M} 2\,\lVert q - q' \rVert_2^2
            + \sum_{q \in B(P) \cup B(G)\ \text{unmatched}} (b_q - d_q)^2

    (the official ``BettiMatching.loss``: an unmatched bar costs twice its squared distance to
    the diagonal, :math:`2\lVert q - \bar q\rVert^2 = (b - d)^2`). Bars of zero length are
    dropped first. The gradient reaches the prediction through the pixels at which its matched
    and unmatched bars are born and die; the target's unmatched bars are constants.

    Args:
        logits: ``[N, 1, H, W]`` (sigmoid: the foreground probability) or ``[N, C, H, W]``
            (softmax: each foreground class one-vs-rest, the mean over classes per image).
        target: class ids ``[N, H, W]``, or soft labels (then :math:`G` is the soft map).
        filtration: ``"superlevel"`` (default, the paper's), ``"sublevel"`` (the loss of
            :math:`1 - P` against :math:`1 - G`, the official ``sublevel`` with its
            :math:`+\infty \to 1`), or ``"both"`` (their sum, the official ``bothlevel``).
        construction: ``"V"`` (default, the paper's: pixels are vertices, 4-connected
            foreground) or ``"T"`` (pixels are squares, 8-connected foreground).
        include_background: also match class 0 of a softmax input (default ``False``).
        ignore_index: pixels set to background (probability 0) in both maps (no gradient).
        reduction: see the module docstring.

    The paper trains :math:`\mathrm{Dice} + \alpha\,\mathcal{L}` (its ``DiceBettiMatchingLoss``,
    :math:`\alpha = 0.5` by default); combine with :func:`losslab.combine`. The official code
    averages the per-image losses over the batch, as ``reduction="mean"`` does. Pure-Python
    persistence: about 0.25 s per 32 x 32 map (5 reductions), growing roughly with the number
    of pixels times the length of the cycles. Under ``torch.compile`` the persistence and the
    matching of all the maps run in the custom operator ``losslab::betti_match_terms`` (the
    terms padded to a static bound, about four per pixel, weight 0), and the loss gathers the
    values at their pixels in the graph: no graph break, the eager value and gradient.

    Paper: Stucki, Paetzold, Shit, Menze, Bauer, "Topologically faithful image segmentation via
    induced matching of persistence barcodes", arXiv 2211.15272 (ICML 2023).
    """
    _check_betti_matching(filtration=filtration, construction=construction,
                          include_background=include_background, ignore_index=ignore_index)
    batch = prepare_dense(logits, target, ignore_index=ignore_index, per_image=True,
                          loss="betti_matching")
    if len(batch.shape) != 3:
        raise ValueError(f"betti_matching needs 2-D inputs [N, C, H, W], got logits "
                         f"{tuple(logits.shape)}")
    probs = foreground(batch, to_spatial(batch, batch.probs), include_background)
    tgt = foreground(batch, to_spatial(batch, batch.target), include_background)
    valid = to_spatial(batch, batch.valid).unsqueeze(1)
    probs = torch.where(valid, probs, torch.zeros_like(probs))
    n, k = probs.shape[0], probs.shape[1]
    if probs.numel() == 0:
        return reduce(probs.sum((1, 2, 3)) * 0.0, reduction, count=0.0)
    levels = {"superlevel": (False,), "sublevel": (True,), "both": (False, True)}[filtration]
    if torch.compiler.is_compiling():
        values = _stacked_maps(probs, tgt, levels, construction)
        has = batch.valid.any(1)
        values = torch.where(has, values, torch.zeros_like(values))
        return reduce(values, reduction, count=float(n))
    per_image = []
    for i in range(n):
        total = probs[i].sum() * 0.0
        for c in range(k):
            for flip in levels:
                p, g = probs[i, c], tgt[i, c]
                if flip:  # sublevel of P = superlevel of 1 - P (ignored pixels: 0 -> 1)
                    p, g = 1 - p, 1 - g
                total = total + _one_map(p, g, construction)
        per_image.append(total / k)
    values = torch.stack(per_image)
    has = batch.valid.any(1)
    values = torch.where(has, values, torch.zeros_like(values))
    return reduce(values, reduction, count=float(n))


@register(
    "betti_matching",
    family="segmentation",
    kind="dense",
    paper="Topologically faithful image segmentation via induced matching of persistence "
    "barcodes",
    arxiv="2211.15272",
    summary="squared distances of persistence bars matched through the union's induced "
    "matchings + persistence of the unmatched (2-D, CPU persistence)",
    reduction="per image (mean over its foreground classes)",
    degenerate=("all_ignored",),
)
class BettiMatchingLoss(LossModule, function=betti_matching_loss, check=_check_betti_matching):
    """Module form of :func:`betti_matching_loss`."""
