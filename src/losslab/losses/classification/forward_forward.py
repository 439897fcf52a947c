r"""Scalable Forward-Forward's block-local goodness loss (family ``classification``, kind
``logits``).

Krutsylo, "Scalable Forward-Forward Algorithm", arXiv 2501.03176. The paper's text was not
found; what follows is written from its abstract and the author's summary of the method, and
is **not verified against the paper**. Fixed there: each block of a convolutional network is
trained on its own loss (backpropagation inside the block, none across blocks); a small
auxiliary convolution on the block's output has one output channel per class, and the
*goodness* of class :math:`c` is the mean of the squared activations of channel :math:`c`; the
true class is the positive signal and the other classes the negatives (one forward pass, no
label pixels); at inference the blocks' goodness vectors vote (argmax of their average).

Not fixed there, hence a choice (``objective``): how goodness becomes a loss.
``"softmax"`` (default) is cross-entropy over the goodness vector, whose argmax is the
inference rule; ``"logistic"`` is Hinton's Forward-Forward objective per class, "goodness
above a threshold for positive data, below it for negative data" (Hinton, "The Forward-Forward
Algorithm: Some Preliminary Investigations", arXiv 2212.13345: :math:`p(\text{positive}) =
\sigma(G - \theta)`), with the :math:`C - 1` negatives averaged so that they weigh as much as
the positive.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import LossModule, Reduction, check_float, compute_dtype, reduce, require
from losslab._hparams import Choice, Int, Real, hparams
from losslab.registry import register

__all__ = ["FFGoodnessLoss", "ff_goodness", "ff_goodness_loss"]

PAPER = "Scalable Forward-Forward Algorithm"

_check_ff = hparams(objective=Choice("softmax", "logistic"), threshold=Real(),
                    ignore_index=Int())


def ff_goodness(activations: Tensor) -> Tensor:
    r"""Per-class goodness :math:`G_{n,c} = \operatorname{mean}_{h,w} a_{n,c,h,w}^2` of the
    auxiliary convolution's output ``[N, C, *spatial]`` (``[N, C]`` for no spatial dims);
    the inference rule of a block is ``ff_goodness(a).argmax(1)``."""
    check_float("activations", activations)
    if activations.ndim < 2:
        raise ValueError(f"activations must have shape [N, C, *spatial] (one channel per "
                         f"class), got {tuple(activations.shape)}")
    a = activations.to(compute_dtype(activations.dtype))
    return a.pow(2).reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:])).mean(-1)


def ff_goodness_loss(logits: Tensor, target: Tensor, *,
                     objective: Literal["softmax", "logistic"] = "softmax",
                     threshold: float = 1.0, ignore_index: int = -100,
                     reduction: Reduction = "mean") -> Tensor:
    r"""Block-local goodness loss of Scalable Forward-Forward, per sample.

    With :math:`G_{n,c} = \operatorname{mean}_{h,w} a_{n,c,h,w}^2` (:func:`ff_goodness`) and
    :math:`y_n` the true class:

    .. math::
        \ell_n^{\text{softmax}} = -\log \frac{e^{G_{n,y_n}}}{\sum_c e^{G_{n,c}}}, \qquad
        \ell_n^{\text{logistic}} = \operatorname{softplus}(\theta - G_{n,y_n})
            + \frac{1}{C-1} \sum_{c \ne y_n} \operatorname{softplus}(G_{n,c} - \theta).

    Formula from the abstract (and the author's summary), not verified against the paper; the
    module docstring says which parts are the paper's and which are a choice.

    Args:
        logits: ``[N, C, *spatial]`` float, the output of the block's auxiliary convolution
            (one channel per class; ``[N, C]`` without spatial dims).
        target: ``[N]`` integer class ids in ``[0, C)`` or ``ignore_index``.
        objective: ``"softmax"`` (default) or ``"logistic"`` (Hinton's FF objective per
            class).
        threshold: :math:`\theta` of ``"logistic"`` (default 1: the mean square of a unit-RMS
            channel; Hinton's sum-of-squares goodness uses the number of units).
        ignore_index: class id of samples to skip (default -100).

    A channel holding a ``-inf`` activation masks its class for that sample (the package's
    convention for a ``-inf`` logit): its goodness counts as :math:`-\infty`, out of the
    softmax and out of the logistic negatives (still averaged over :math:`C - 1`).
        reduction: ``"mean"`` over non-ignored samples, ``"sum"``, ``"none"`` (``[N]``, 0 at
            ignored samples).

    Paper: Krutsylo, "Scalable Forward-Forward Algorithm", arXiv 2501.03176.
    """
    _check_ff(objective=objective, threshold=threshold, ignore_index=ignore_index)
    check_float("logits", logits)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape [N, C, *spatial] (one channel per class), "
                         f"got {tuple(logits.shape)}")
    neginf = torch.isneginf(logits)
    g = ff_goodness(torch.where(neginf, torch.zeros_like(logits), logits))
    n, c = g.shape
    masked = neginf.reshape(n, c, math.prod(logits.shape[2:])).any(-1)
    g = torch.where(masked, torch.full_like(g, -torch.inf), g)
    if c < 2:
        raise ValueError(f"logits must have at least 2 channels (classes), got {c}")
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise ValueError("target must be an integer tensor of class ids [N]")
    if tuple(target.shape) != (n,):
        raise ValueError(f"target must have shape [{n}] (one class per sample), got "
                         f"{tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError("logits and target must be on one device")
    ids = target.long()
    valid = ids != ignore_index
    require(~valid | ((ids >= 0) & (ids < c)),
            f"target must hold class ids in [0, {c}) or ignore_index={ignore_index}")
    safe = torch.where(valid, ids, 0)
    positive = g.gather(1, safe[:, None])[:, 0]
    if objective == "softmax":
        values = torch.logsumexp(g, 1) - positive
    else:
        is_pos = F.one_hot(safe, c).to(torch.bool)
        neg = torch.where(is_pos, torch.zeros_like(g), F.softplus(g - threshold))
        values = F.softplus(threshold - positive) + neg.sum(1) / (c - 1)
    values = torch.where(valid, values, torch.zeros_like(values))
    return reduce(values, reduction, count=valid.sum().to(values.dtype))


@register(
    "ff_goodness",
    family="classification",
    kind="logits",
    paper=PAPER,
    arxiv="2501.03176",
    summary="G_c = mean_hw a_c^2 of a per-class auxiliary conv; CE over G (or Hinton's "
            "logistic FF objective); formula from the abstract",
    degenerate=("all_ignored",),
)
class FFGoodnessLoss(LossModule, function=ff_goodness_loss, check=_check_ff):
    """Module form of :func:`ff_goodness_loss`."""
