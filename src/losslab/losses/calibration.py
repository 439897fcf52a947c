"""Calibration: the correctness-aware (CA) loss for post-hoc calibrators, and temperature
scaling fitted by NLL (or by the CA loss).

The calibrators are accuracy preserving (they rescale the logits, so the predicted class does
not change); they are evaluated with :func:`losslab.metrics.expected_calibration_error` and
:func:`losslab.metrics.adaptive_calibration_error`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import LossModule, Reduction
from losslab._hparams import Choice, Int, hparams
from losslab._ops.logits import finish, prepare
from losslab.registry import register

__all__ = ["CALoss", "TemperatureScaling", "ca_loss", "fit_temperature"]

CA_PAPER = "Optimizing Calibration by Gaining Aware of Prediction Correctness"


def ca_loss(logits: Tensor, target: Tensor, *, ignore_index: int = -100,
            reduction: Reduction = "mean") -> Tensor:
    r"""Correctness-aware (CA) loss: raise the confidence of correct predictions and lower the
    confidence of wrong ones.

    With the confidence :math:`c = \max_k \mathrm{softmax}(z)_k` and the correctness
    :math:`a = [\arg\max_k z_k = y]` (a constant: an accuracy-preserving calibrator does not
    change it),

    .. math::
        \ell = -a \log c - (1 - a) \log(1 - c)

    the binary cross-entropy between the confidence and the correctness, i.e. the calibration
    aim (confidence equal to the probability of being right). Unlike the cross-entropy, a
    narrowly wrong sample (true class at 0.4) pushes its confidence *down*. ``log(1 - c)`` is
    computed as the log-sum-exp of the other classes: finite for any finite logits. In the
    paper the calibrator that produces ``z`` sees transformed versions of each input; that is
    the calibrator's business, not the loss's. Formula from the abstract (confidence up on
    correct, down on wrong samples), not verified against the paper text.

    Args:
        logits: ``[N, C, ...]`` calibrated logits (e.g. ``logits / T``).
        target: ``[N, ...]`` class ids; ``ignore_index`` (default -100) items are skipped.
        reduction: ``"mean"`` over non-ignored items, ``"sum"`` or ``"none"`` (``[N, ...]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Liu, Wang, Zou, Zou, Zheng, "Optimizing Calibration by Gaining Aware of Prediction
    Correctness", arXiv 2404.13016.
    """
    _check_ca(ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, loss="ca")
    z = batch.logits
    assert batch.index is not None
    lse = torch.logsumexp(z, dim=1)
    top = z.argmax(1)
    correct = top == batch.index
    log_c = z.gather(1, top.unsqueeze(1)).squeeze(1) - lse
    is_top = F.one_hot(top, z.shape[1]).bool()
    others = z.masked_fill(is_top, float("-inf"))
    has_other = torch.isfinite(others).any(1, keepdim=True)
    others = torch.where(has_other, others, torch.zeros_like(others))  # finite, then unused
    log_rest = torch.logsumexp(others, dim=1) - lse
    log_rest = torch.where(has_other.squeeze(1), log_rest, torch.zeros_like(log_rest))
    values = torch.where(correct, -log_c, -log_rest)
    return finish(values, batch, reduction)


_check_ca = hparams(ignore_index=Int())


@register("ca", family="calibration", kind="logits", paper=CA_PAPER, arxiv="2404.13016",
          summary="-[correct] log conf - [wrong] log(1 - conf), conf = max softmax",
          degenerate=("all_ignored",))
class CALoss(LossModule, function=ca_loss, check=_check_ca):
    """Module form of :func:`ca_loss`."""


# --------------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------------

FitLoss = Literal["nll", "ca"]
_check_fit = hparams(loss=Choice("nll", "ca"), max_iter=Int(ge=1))


def fit_temperature(logits: Tensor, target: Tensor, *, loss: FitLoss = "nll",
                    max_iter: int = 100) -> float:
    """The temperature ``T > 0`` that minimises the mean NLL (or the CA loss) of
    ``logits / T`` on a held-out set: temperature scaling (Guo, Pleiss, Sun, Weinberger, "On
    Calibration of Modern Neural Networks", arXiv 1706.04599).

    ``log T`` is optimised with L-BFGS in float64 from ``T = 1``; the logits are detached.

    Args:
        logits: ``[N, C]`` validation logits.
        target: ``[N]`` class ids.
        loss: ``"nll"`` (default, the standard fit) or ``"ca"`` (:func:`ca_loss`).
        max_iter: L-BFGS iterations (default 100).
    """
    _check_fit(loss=loss, max_iter=max_iter)
    batch = prepare(logits, target, spatial_ok=False, loss="fit_temperature")
    if batch.index is None or not bool(batch.valid.any()):
        raise ValueError("fit_temperature needs class-id targets and at least one sample")
    z = logits.detach().to(torch.float64)
    y = target.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        opt.zero_grad()
        scaled = z / log_t.exp()
        value = F.cross_entropy(scaled, y) if loss == "nll" else ca_loss(scaled, y)
        value.backward()
        return value

    opt.step(objective)  # type: ignore[arg-type]
    return float(log_t.detach().exp())


class TemperatureScaling(nn.Module):
    """Post-hoc temperature scaling: ``forward(logits) = logits / T``, with ``T`` fitted on a
    validation set by :meth:`fit` (NLL, or the CA loss). Accuracy preserving."""

    temperature: Tensor

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def fit(self, logits: Tensor, target: Tensor, *, loss: FitLoss = "nll",
            max_iter: int = 100) -> TemperatureScaling:
        """Fit ``T`` on ``(logits, target)`` (see :func:`fit_temperature`); returns self."""
        t = fit_temperature(logits, target, loss=loss, max_iter=max_iter)
        self.temperature.fill_(t)
        return self

    def forward(self, logits: Tensor) -> Tensor:
        return logits / self.temperature.to(logits.dtype)
