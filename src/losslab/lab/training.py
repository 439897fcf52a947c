"""The one training loop of the lab: :func:`fit`, used by every task.

A task's ``run_job`` is data + model + :func:`fit` + metrics: it builds the model, the loss,
the optimizer (:func:`build_optimizer`) and the scheduler, describes its training batches as
:class:`Batch` objects (the model input, and how the model output becomes the loss's
arguments), and hands them to :func:`fit`, which

* trains ``epochs`` epochs (``model.train()`` / ``loss_fn.train()`` at the start of each);
* stops with a ``FloatingPointError`` at the first non-finite loss (naming the epoch and step);
* steps the scheduler per epoch or per optimizer step (``scheduler_interval``);
* calls ``evaluate(model)`` after each epoch (a validation score, higher is better) and keeps
  the state of the best epoch in memory, restored at the end (``keep_best``; the first of equal
  scores wins); without ``evaluate`` the last state is kept;
* reports each epoch's mean loss (and terms, and validation score) to ``progress.epoch_end``
  when the progress object has one (the runner records them as the job's curves);
* shows one progress bar over all steps, with the epoch, its mean loss and the validation
  score as postfix;
* takes two optional hooks for training procedures (:mod:`losslab.train`): ``step`` replaces
  the default forward / backward / ``optimizer.step()`` of one batch (SAM's two passes, MESA's
  teacher update: see :data:`StepFn`), and ``on_epoch_start(epoch)`` runs before each epoch's
  first batch (SAF's epoch counter);
* returns a :class:`FitResult`: the epoch of the returned state, the last epoch's mean loss, the
  per-term values of a combined loss (:class:`losslab.combine.CombinedLoss.last_terms`: their
  mean over the last epoch, and their values at the last step), and the time spent training vs
  evaluating.

Everything that draws random numbers (the batches, the model and loss initialisation) belongs
to the task, so a job's numbers depend only on its seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from losslab.combine import CombinedLoss
from losslab.lab.progress import NullProgress, Progress

__all__ = ["OPTIMIZERS", "Batch", "FitResult", "StepFn", "build_optimizer", "cosine_schedule",
           "default_step", "fit"]

#: The optimizers of :func:`build_optimizer`.
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Batch:
    """One training step: ``loss_fn(*loss_args(model(inputs)), **loss_kwargs)``.

    Attributes:
        inputs: the model's input (already on the device).
        loss_args: maps the model's output to the loss's positional arguments, e.g.
            ``lambda emb: (emb[:n], support_labels, emb[n:], query_labels)`` for an episode.
        loss_kwargs: call-time keywords of the loss (``index=`` for per-sample state).
    """

    inputs: Tensor
    loss_args: Callable[[Tensor], Sequence[Any]]
    loss_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def supervised(cls, inputs: Tensor, target: Tensor, **loss_kwargs: Any) -> Batch:
        """``loss_fn(model(inputs), target, **loss_kwargs)`` (logits and labels, embeddings and
        labels)."""
        return cls(inputs, lambda output: (output, target), loss_kwargs)


#: ``step(model, loss_fn, batch, optimizer) -> loss``: one training step on ``batch`` (zero the
#: gradients, forward, backward, update), returning the batch's loss (a scalar tensor; it may be
#: detached). :func:`default_step` is the plain one; :meth:`losslab.train.SAM.fit_step` is SAM's.
StepFn = Callable[[nn.Module, nn.Module, Batch, torch.optim.Optimizer], Tensor]


def default_step(model: nn.Module, loss_fn: nn.Module, batch: Batch,
                 optimizer: torch.optim.Optimizer) -> Tensor:
    """The plain step: ``loss_fn(*batch.loss_args(model(batch.inputs)), **batch.loss_kwargs)``,
    backward, ``optimizer.step()``; returns the loss."""
    loss = loss_fn(*batch.loss_args(model(batch.inputs)), **batch.loss_kwargs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` reports.

    Attributes:
        best_epoch: the epoch (1-based) whose state the model holds after :func:`fit`: the best
            validation epoch with ``evaluate`` and ``keep_best``, else the last one.
        best_score: the validation score of that epoch (``None`` without ``evaluate``, or when
            no epoch had a finite score).
        train_loss: mean loss over the steps of the last epoch.
        terms: combined losses: mean of each term over the steps of the last epoch (else
            empty).
        last_terms: combined losses: each term at the last step (else empty).
        epoch_losses: mean loss of every epoch.
        scores: the validation score after every epoch (empty without ``evaluate``).
        steps: optimizer steps taken.
        seconds: wall time of :func:`fit` (training and per-epoch validation).
        eval_seconds: the part of ``seconds`` spent in ``evaluate``.
    """

    best_epoch: int
    best_score: float | None
    train_loss: float
    terms: dict[str, float]
    last_terms: dict[str, float]
    epoch_losses: list[float]
    scores: list[float]
    steps: int
    seconds: float
    eval_seconds: float

    @property
    def train_seconds(self) -> float:
        """``seconds - eval_seconds``: the time spent in training steps."""
        return self.seconds - self.eval_seconds


def build_optimizer(
    name: str,
    model: nn.Module,
    loss_fn: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    loss_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """``"adam"`` or ``"sgd"`` (with ``momentum``) over the model's parameters and the loss's
    own ones (proxies, class weights, a learned temperature). With ``loss_lr_mult != 1`` the
    loss's parameters are a second parameter group at ``lr * loss_lr_mult``."""
    own = list(loss_fn.parameters())
    if own and loss_lr_mult != 1.0:
        groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": lr},
                                        {"params": own, "lr": lr * loss_lr_mult}]
    else:
        groups = [{"params": [*model.parameters(), *own]}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay of the learning rate from its initial value to 0 over ``total_steps``
    scheduler steps (stepped per optimizer step: ``scheduler_interval="step"``)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps)
                                                      / total_steps)))


def _check_finite(loss: Tensor, desc: str, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{desc}: non-finite loss at epoch {epoch}, step {step}; lower --lr?"
        )


def fit(
    model: nn.Module,
    loss_fn: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    scheduler_interval: Literal["epoch", "step"] = "epoch",
    epochs: int,
    steps_per_epoch: int,
    evaluate: Callable[[nn.Module], float] | None = None,
    keep_best: bool = True,
    progress: Progress | None = None,
    desc: str = "train",
    step: StepFn | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``model`` with ``loss_fn`` (see the module docstring).

    Args:
        model: the network (on its device, parameters in ``optimizer``).
        loss_fn: the loss module (its parameters, if any, in ``optimizer`` too).
        batches: ``batches(epoch)`` (``epoch`` from 1) yields that epoch's :class:`Batch`
            objects; drawn lazily, one step at a time.
        optimizer: e.g. from :func:`build_optimizer`.
        scheduler: a learning-rate scheduler, or ``None``.
        scheduler_interval: ``"epoch"`` (``scheduler.step()`` after each epoch) or ``"step"``
            (after each optimizer step).
        epochs: number of epochs (>= 1).
        steps_per_epoch: the number of batches per epoch (the progress bar's total).
        evaluate: ``evaluate(model) -> float`` after each epoch (higher is better), e.g. the
            validation accuracy; it should leave gradients alone (``torch.no_grad``).
        keep_best: restore the state of the epoch with the best ``evaluate`` score at the end.
        progress: where the bar goes (default: nowhere).
        desc: label of the bar and of the non-finite-loss error.
        step: a custom training step (:data:`StepFn`), e.g. ``sam.fit_step`` for a
            :class:`losslab.train.SAM` optimizer; default: the plain step (the non-finite check
            then runs before the update). A custom step's loss is checked after its update.
        on_epoch_start: called as ``on_epoch_start(epoch)`` (from 1) before each epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got "
                         f"{scheduler_interval!r}")
    progress = progress if progress is not None else NullProgress()
    combined = isinstance(loss_fn, CombinedLoss)
    t_start = time.perf_counter()
    eval_seconds = 0.0
    best_score: float | None = None
    best_epoch, best_state = 0, None
    epoch_losses: list[float] = []
    scores: list[float] = []
    terms: dict[str, float] = {}
    last_terms: dict[str, float] = {}
    steps = 0
    with progress.bar(epochs * steps_per_epoch, desc) as bar:
        for epoch in range(1, epochs + 1):
            model.train()
            loss_fn.train()
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            losses: list[float] = []
            term_sums: dict[str, float] = {}
            for batch in batches(epoch):
                if step is None:
                    output = model(batch.inputs)
                    loss = loss_fn(*batch.loss_args(output), **batch.loss_kwargs)
                    _check_finite(loss, desc, epoch, len(losses) + 1)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                else:
                    loss = step(model, loss_fn, batch, optimizer)
                    _check_finite(loss, desc, epoch, len(losses) + 1)
                if scheduler is not None and scheduler_interval == "step":
                    scheduler.step()
                steps += 1
                losses.append(float(loss.detach()))
                if combined:
                    last_terms = dict(loss_fn.last_terms)
                    for k, v in last_terms.items():
                        term_sums[k] = term_sums.get(k, 0.0) + v
                bar.update(1)
            if not losses:
                raise ValueError(f"{desc}: epoch {epoch} has no batches")
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            epoch_losses.append(float(np.mean(losses)))
            terms = {k: v / len(losses) for k, v in term_sums.items()}
            postfix: dict[str, Any] = {"epoch": epoch, "loss": f"{epoch_losses[-1]:.3f}"}
            if evaluate is not None:
                t_eval = time.perf_counter()
                score = float(evaluate(model))
                eval_seconds += time.perf_counter() - t_eval
                scores.append(score)
                if (best_score is None and math.isfinite(score)) or (
                        best_score is not None and score > best_score):
                    best_score, best_epoch = score, epoch
                    if keep_best:
                        best_state = {k: v.detach().clone()
                                      for k, v in model.state_dict().items()}
                postfix["val"] = f"{score:.1f}"
                if best_score is not None:
                    postfix["best"] = f"{best_score:.1f}@{best_epoch}"
            bar.set_postfix(**postfix)
            epoch_end = getattr(progress, "epoch_end", None)  # the runner's curve recorder
            if epoch_end is not None:
                values = {"train_loss": epoch_losses[-1],
                          **{f"term/{k}": v for k, v in terms.items()}}
                if evaluate is not None:
                    values["val_score"] = scores[-1]
                epoch_end(epoch, values)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epochs
        if evaluate is not None and scores and math.isfinite(scores[-1]):
            best_score = scores[-1]
        else:
            best_score = None
    return FitResult(
        best_epoch=best_epoch,
        best_score=best_score,
        train_loss=epoch_losses[-1],
        terms=terms,
        last_terms=last_terms,
        epoch_losses=epoch_losses,
        scores=scores,
        steps=steps,
        seconds=time.perf_counter() - t_start,
        eval_seconds=eval_seconds,
    )
