r"""SAF and MESA: sharpness-aware training at (almost) no extra cost, by a trajectory loss
(Du, Zhou, Feng, Tan, Zhou, "Sharpness-Aware Training for Free", arXiv 2205.14083).

SAF replaces SAM's sharpness term by the *trajectory loss*: the KL divergence between the
network's outputs now and its outputs on the same samples a few epochs earlier, softened by a
temperature, so that the training loss cannot drop suddenly along the trajectory (a sudden drop
is what a sharp minimum looks like from the trajectory):

.. math::
    L = L_{base} + \frac{\lambda}{|B|} \sum_{i \in B}
        \mathrm{KL}\Big(\sigma\big(\hat y_i^{(e - \tilde E)} / \tau\big) \,\Big\|\,
        \sigma\big(f_\theta(x_i) / \tau\big)\Big),

with :math:`\hat y_i^{(e - \tilde E)}` the logits recorded for sample :math:`i` in epoch
:math:`e - \tilde E` (one extra forward pass costs nothing: they are the logits of that epoch's
training step). SAF needs the dataset index of each sample (``index=``) and memory for
:math:`\tilde E` logit tables (:class:`SAFLoss`). A sample without a record from exactly
:math:`\tilde E` epochs ago (the first :math:`\tilde E` epochs) contributes no trajectory term.

MESA (memory-efficient SAF, same paper) uses an exponential moving average of the weights as the
teacher instead of stored logits: :math:`\mathrm{KL}(\sigma(f_{\bar\theta}(x)/\tau) \|
\sigma(f_\theta(x)/\tau))`, :math:`\bar\theta \leftarrow \beta\bar\theta + (1-\beta)\theta`
after every step (:class:`MESA`: one extra forward of the teacher per step, no backward).

Defaults (``lam`` 0.3, ``tau`` 5, ``delay`` 3 epochs; MESA ``decay`` 0.9998): recalled from the
paper's ImageNet setting, **not verified against the paper text**; the KL is used as written
above, without a :math:`\tau^2` factor. Formula of the trajectory loss from the abstract
("KL-divergence between the outputs of DNNs with the current weights and past weights") and the
paper's introduction.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import Reduction, reduce

__all__ = ["MESA", "SAFLoss", "trajectory_kl"]


def trajectory_kl(logits: Tensor, past_logits: Tensor, *, tau: float = 5.0,
                  reduction: Reduction = "mean") -> Tensor:
    r"""Per-sample :math:`\mathrm{KL}(\sigma(\text{past}/\tau) \| \sigma(\text{logits}/\tau))`
    (``[N, C]`` each; ``past_logits`` is treated as a constant)."""
    if logits.shape != past_logits.shape or logits.dim() != 2:
        raise ValueError(f"logits and past_logits must both be [N, C], got "
                         f"{tuple(logits.shape)} and {tuple(past_logits.shape)}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    log_q = F.log_softmax(logits / tau, dim=1)
    log_p = F.log_softmax(past_logits.detach().to(logits.dtype) / tau, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    return reduce(kl, reduction)


class SAFLoss(nn.Module):
    """``base_loss(logits, target) + lam * trajectory term`` (module docstring).

    Call ``start_epoch(epoch)`` at the start of every epoch (``fit(...,
    on_epoch_start=saf.start_epoch)``) and pass ``index=`` (dataset ids ``[N]``) with every
    batch. The logit tables are buffers (``state_dict`` saves them).

    Args:
        base_loss: the training loss on ``(logits, target)``.
        num_samples: dataset size (``index`` ranges over it).
        num_classes: logits per sample.
        lam: weight :math:`\\lambda` of the trajectory term.
        tau: temperature :math:`\\tau`.
        delay: :math:`\\tilde E`, how many epochs back the compared logits are.
    """

    past: Tensor
    stamp: Tensor
    epoch: Tensor

    def __init__(self, base_loss: nn.Module, *, num_samples: int, num_classes: int,
                 lam: float = 0.3, tau: float = 5.0, delay: int = 3) -> None:
        super().__init__()
        if num_samples < 1 or num_classes < 1:
            raise ValueError(f"num_samples and num_classes must be >= 1, got {num_samples}, "
                             f"{num_classes}")
        if delay < 1:
            raise ValueError(f"delay must be >= 1, got {delay}")
        if not tau > 0 or lam < 0:
            raise ValueError(f"need tau > 0 and lam >= 0, got tau={tau}, lam={lam}")
        self.base_loss = base_loss
        self.lam, self.tau, self.delay = float(lam), float(tau), int(delay)
        self.register_buffer("past", torch.zeros(delay, num_samples, num_classes))
        self.register_buffer("stamp", torch.full((delay, num_samples), -1, dtype=torch.long))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.last_trajectory = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.epoch.fill_(int(epoch))

    def forward(self, logits: Tensor, target: Tensor, *, index: Tensor) -> Tensor:
        n, c = self.past.shape[1], self.past.shape[2]
        if logits.dim() != 2 or logits.shape[1] != c:
            raise ValueError(f"logits must be [N, {c}], got {tuple(logits.shape)}")
        if (index.shape != (logits.shape[0],) or torch.is_floating_point(index)
                or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= n))):
            raise ValueError(f"index must be integer dataset ids in [0, {n}) of shape "
                             f"({logits.shape[0]},)")
        loss = self.base_loss(logits, target)
        if not self.training:
            return loss
        e = int(self.epoch)
        slot = e % self.delay
        idx = index.to(self.past.device)
        valid = (self.stamp[slot, idx] == e - self.delay).to(logits.device)
        term = logits.sum() * 0.0
        if e >= self.delay and bool(valid.any()):
            kl = trajectory_kl(logits, self.past[slot, idx].to(logits.device), tau=self.tau,
                               reduction="none")
            term = (kl * valid).sum() / logits.shape[0]
        with torch.no_grad():
            self.past[slot, idx] = logits.detach().to(self.past.dtype).to(self.past.device)
            self.stamp[slot, idx] = e
        self.last_trajectory = float(term.detach())
        return loss + self.lam * term


class MESA(nn.Module):
    """MESA's EMA teacher and trajectory term (module docstring).

    ``loss(inputs, logits)`` gives ``lam * KL(teacher(inputs)/tau || logits/tau)``;
    ``update(model)`` moves the teacher; :meth:`fit_step` does both around one optimizer step
    for the lab's ``fit`` (``step=mesa.fit_step``).

    Args:
        model: the student (the teacher starts as its copy).
        decay: EMA decay :math:`\\beta`.
        lam: weight of the trajectory term.
        tau: temperature.
        start_step: steps before the term is switched on (the teacher still updates).
    """

    steps: Tensor

    def __init__(self, model: nn.Module, *, decay: float = 0.9998, lam: float = 0.3,
                 tau: float = 5.0, start_step: int = 0) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if not tau > 0 or lam < 0:
            raise ValueError(f"need tau > 0 and lam >= 0, got tau={tau}, lam={lam}")
        self.teacher = copy.deepcopy(model)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.decay, self.lam, self.tau, self.start_step = float(decay), float(lam), float(tau), \
            int(start_step)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for t, s in zip(self.teacher.parameters(), model.parameters()):
            t.mul_(self.decay).add_(s.detach(), alpha=1.0 - self.decay)
        for t, s in zip(self.teacher.buffers(), model.buffers()):
            t.copy_(s)
        self.steps += 1

    def loss(self, inputs: Tensor, logits: Tensor) -> Tensor:
        if int(self.steps) < self.start_step:
            return logits.sum() * 0.0
        self.teacher.eval()
        with torch.no_grad():
            past = self.teacher(inputs)
        return self.lam * trajectory_kl(logits, past, tau=self.tau)

    def fit_step(self, model: nn.Module, loss_fn: nn.Module, batch: Any,
                 optimizer: torch.optim.Optimizer) -> Tensor:
        """One step of ``loss_fn(...) + MESA term``, then the teacher's update."""
        logits = model(batch.inputs)
        loss = loss_fn(*batch.loss_args(logits), **batch.loss_kwargs) + self.loss(
            batch.inputs, logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.update(model)
        return loss.detach()
