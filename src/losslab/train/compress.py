r"""Feature compression against noisy labels: nested dropout / dropout on the features before
the classifier, and Co-teaching's small-loss sample exchange between two networks.

Chen, Shen, Hu, Suykens, "Compressing Features for Learning with Noisy Labels", arXiv
2206.13140 (TNNLS 2022); the definitions below follow the official code
(``yingyichen-cyy/Nested-Co-teaching``):

* **Nested dropout** (after Rippel et al., 2014) on the ``D`` features of the penultimate
  layer: per batch, draw :math:`k \in \{1, \dots, D\}` with probability
  :math:`p_k \propto \exp(-((k - \mu)/\sigma)^2)` (the code's ``GaussianDist``; its defaults
  :math:`\mu = 0` and the std :math:`\sigma`, e.g. 100 for ResNet-18's 512 features) and keep
  only the first :math:`k` features (:func:`nested_dropout`, :class:`NestedDropout`). Feature
  :math:`i` survives with probability :math:`P(k \ge i)`, decreasing in :math:`i`: the
  features are learnt in order of importance, and at test time the classifier reads the first
  :math:`K` of them (the code picks :math:`K` on the validation set). Plain dropout on the
  same features is the paper's other compression (``torch.nn.functional.dropout``).
* **Co-teaching** (Han et al., NeurIPS 2018, arXiv 1804.06872), stage two of the paper: each
  of two networks ranks the batch by its own cross-entropy and keeps the
  :math:`\lfloor (1 - \tau_t) N \rfloor` smallest-loss samples; each network is trained on the
  samples its *peer* kept (:func:`coteaching_select`, :func:`coteaching_loss`). The forget rate
  grows linearly from 0 to :math:`\tau` over the first ``num_gradual`` epochs
  (:func:`coteaching_forget_rate`; the code's ``rateSchedule``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NestedDropout",
    "coteaching_forget_rate",
    "coteaching_loss",
    "coteaching_select",
    "nested_dropout",
    "nested_dropout_probs",
]


def nested_dropout_probs(dim: int, *, std: float, mu: float = 0.0) -> Tensor:
    r"""The distribution of the number of kept features :math:`k = 1..D`,
    :math:`p_k \propto \exp(-((k - \mu)/\sigma)^2)` (``[D]``, float64, sums to 1)."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    if not (isinstance(std, (int, float)) and math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a finite number > 0, got {std!r}")
    if not (isinstance(mu, (int, float)) and math.isfinite(mu)):
        raise ValueError(f"mu must be a finite number, got {mu!r}")
    k = torch.arange(1, dim + 1, dtype=torch.float64)
    logits = -((k - mu) / std) ** 2
    return torch.softmax(logits, 0)


def nested_dropout(features: Tensor, *, std: float, mu: float = 0.0,
                   generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """Keep the first ``k`` features of ``features [N, D]`` (one ``k`` for the batch, drawn
    from :func:`nested_dropout_probs`); returns ``(masked features, k)``. Not rescaled (as
    the official code)."""
    if not isinstance(features, Tensor) or features.ndim != 2 or \
            not features.is_floating_point():
        raise ValueError(f"features must be a float tensor [N, D], got "
                         f"{getattr(features, 'shape', type(features))}")
    d = features.shape[1]
    p = nested_dropout_probs(d, std=std, mu=mu)
    k = int(torch.multinomial(p, 1, generator=generator)) + 1
    mask = (torch.arange(d, device=features.device) < k).to(features.dtype)
    return features * mask, k


class NestedDropout(nn.Module):
    """Nested dropout layer for the features before the classifier: in training mode
    :func:`nested_dropout` (the drawn ``k`` is kept in ``last_k``); in eval mode the first
    ``keep`` features (all when ``keep`` is None), the test-time truncation the paper picks on
    validation data."""

    def __init__(self, *, std: float, mu: float = 0.0, keep: int | None = None) -> None:
        super().__init__()
        nested_dropout_probs(1, std=std, mu=mu)  # validates std and mu
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be None or an int >= 1, got {keep!r}")
        self.std, self.mu, self.keep = float(std), float(mu), keep
        self.last_k: int | None = None

    def forward(self, features: Tensor) -> Tensor:
        if self.training:
            out, self.last_k = nested_dropout(features, std=self.std, mu=self.mu)
            return out
        if self.keep is None:
            return features
        mask = (torch.arange(features.shape[-1], device=features.device) < self.keep)
        return features * mask.to(features.dtype)


def coteaching_forget_rate(epoch: int, *, forget_rate: float, num_gradual: int = 10) -> float:
    r"""Co-teaching's forget rate at ``epoch`` (1-based, as the official loop): the values of
    ``linspace(0, forget_rate, num_gradual)`` over the first ``num_gradual`` epochs, then
    ``forget_rate`` (Han et al.'s :math:`R(T) = 1 - \min(T \tau / T_k, \tau)`, up to the
    linspace's endpoints). ``forget_rate`` is usually the (estimated) noise rate."""
    if not 0.0 <= forget_rate < 1.0:
        raise ValueError(f"forget_rate must be in [0, 1), got {forget_rate}")
    if not isinstance(num_gradual, int) or num_gradual < 1:
        raise ValueError(f"num_gradual must be an int >= 1, got {num_gradual!r}")
    if not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"epoch must be an int >= 1 (1-based), got {epoch!r}")
    if epoch > num_gradual:
        return float(forget_rate)
    if num_gradual == 1:
        return 0.0
    return float(forget_rate) * (epoch - 1) / (num_gradual - 1)


def _check_losses(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 1 or not x.is_floating_point():
        raise ValueError(f"{name} must be a 1-d float tensor of per-sample losses, got "
                         f"{getattr(x, 'shape', type(x))}")


def coteaching_select(loss_a: Tensor, loss_b: Tensor, *, forget_rate: float
                      ) -> tuple[Tensor, Tensor]:
    """The small-loss samples of each network: ``(keep_a, keep_b)``, the indices of the
    ``floor((1 - forget_rate) N)`` smallest of ``loss_a`` and of ``loss_b`` (``[N]`` each; ties:
    lower index first). Network A is trained on ``keep_b``, network B on ``keep_a``."""
    _check_losses("loss_a", loss_a)
    _check_losses("loss_b", loss_b)
    if loss_a.shape != loss_b.shape:
        raise ValueError(f"loss_a and loss_b must have one shape, got {tuple(loss_a.shape)} and "
                         f"{tuple(loss_b.shape)}")
    if not 0.0 <= forget_rate < 1.0:
        raise ValueError(f"forget_rate must be in [0, 1), got {forget_rate}")
    keep = int((1.0 - forget_rate) * loss_a.shape[0])
    a = torch.argsort(loss_a.detach(), stable=True)[:keep]
    b = torch.argsort(loss_b.detach(), stable=True)[:keep]
    return a, b


def coteaching_loss(logits_a: Tensor, logits_b: Tensor, target: Tensor, *,
                    forget_rate: float) -> tuple[Tensor, Tensor]:
    """Co-teaching's pair of losses on one batch: ``(loss_a, loss_b)``, the mean cross-entropy
    of network A on the samples network B selected and of B on those A selected
    (:func:`coteaching_select`; the selection carries no gradient). ``logits_*`` are
    ``[N, C]``, ``target`` class ids ``[N]``. A batch that keeps no sample gives zeros that
    stay connected to the graph."""
    if logits_a.shape != logits_b.shape or logits_a.ndim != 2:
        raise ValueError(f"logits_a and logits_b must be [N, C] of one shape, got "
                         f"{tuple(logits_a.shape)} and {tuple(logits_b.shape)}")
    if target.shape != (logits_a.shape[0],) or target.is_floating_point():
        raise ValueError(f"target must be integer class ids of shape ({logits_a.shape[0]},)")
    ce_a = F.cross_entropy(logits_a, target, reduction="none")
    ce_b = F.cross_entropy(logits_b, target, reduction="none")
    keep_a, keep_b = coteaching_select(ce_a, ce_b, forget_rate=forget_rate)
    if keep_a.numel() == 0:
        return (logits_a * 0).sum(), (logits_b * 0).sum()
    return ce_a[keep_b].mean(), ce_b[keep_a].mean()
