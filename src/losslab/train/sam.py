r"""Sharpness-aware minimisation as a wrapper around any torch optimizer, with its perturbation
rule pluggable: SAM, ASAM and AdaSAP's importance-adaptive radius.

SAM (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization",
arXiv 2010.01412) minimises :math:`\max_{\|\epsilon\|_2 \le \rho} L(w + \epsilon)`. Its step,
with the first-order solution of the inner maximisation (paper, eq. 2 with :math:`p = 2`):

1. gradient :math:`g = \nabla L(w)` at the current weights;
2. ascent to :math:`w + \hat\epsilon(w)`, :math:`\hat\epsilon = \rho\, g / \|g\|_2` (the norm over
   *all* parameters together);
3. gradient at the perturbed weights, :math:`\nabla L(w)|_{w + \hat\epsilon}`;
4. back to :math:`w` and the base optimizer's update with that gradient (so momentum, weight
   decay and the learning-rate schedule are the base optimizer's).

Two forward/backward passes per step. The paper's default radius is :math:`\rho = 0.05`.

ASAM (Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of
Deep Neural Networks", arXiv 2102.11600; ``adaptive=True``) makes the neighbourhood scale
invariant with the element-wise operator :math:`T_w = |w| + \eta`:
:math:`\hat\epsilon = \rho\, T_w^2 g / \|T_w g\|_2`, :math:`\eta = 0.01`. ASAM's paper uses a
larger radius (``rho`` 0.5 to 2 on CIFAR); pass it explicitly. Here :math:`T_w` applies to every
parameter (biases too).

AdaSAP (Bair et al., "Adaptive Sharpness-Aware Pruning for Robust Sparse Networks",
arXiv 2306.14306) perturbs each neuron by a radius that grows as its importance falls, so that
the neurons a pruner will remove sit in flat regions: :class:`AdaSAPPerturbation`. Formula from
the abstract and a summary of its method ("adaptive weight perturbations ... penalizing
sharpness in critical neurons"), **not verified against the paper**: the per-neuron radius
:math:`\rho_j = \rho_{min} + (\rho_{max} - \rho_{min})(1 - s_j)` with the importance
:math:`s_j` min-max normalised within each weight tensor (default importance: the L2 norm of the
neuron's incoming weights, the magnitude criterion), and :math:`\epsilon_j = \rho_j g_j /
\|g\|_2`; parameters without a neuron axis (biases, norms) get the SAM radius ``rho``.

UDIM (arXiv 2403.07329) perturbs the *inputs* as well and adds a loss-landscape inconsistency
term between the source and the perturbed data; that is an extra objective, not a rule for the
parameter perturbation, so it is not offered here.

Batch normalisation: :meth:`SAM.fit_step` (and :meth:`SAM.step` given ``model=``) run the
second pass with the running statistics frozen, so each step updates them once, from the
unperturbed weights.

Example (plain loop)::

    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    for x, y in loader:
        def closure():
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        loss = sam.step(closure, model=model)

With the lab's loop: ``fit(model, loss_fn, batches, optimizer=sam, step=sam.fit_step, ...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "SAM",
    "AdaSAPPerturbation",
    "PerturbationRule",
    "asam_perturbation",
    "frozen_bn_stats",
    "sam_perturbation",
]

#: ``rule(params, grads, rho) -> eps``: the ascent step :math:`\hat\epsilon` for each parameter
#: (same shapes), given the parameters, their gradients at the current weights and the radius.
PerturbationRule = Callable[[Sequence[Tensor], Sequence[Tensor], float], list[Tensor]]

_TINY = 1e-12


def _global_norm(tensors: Sequence[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def sam_perturbation(params: Sequence[Tensor], grads: Sequence[Tensor], rho: float
                     ) -> list[Tensor]:
    r"""SAM's :math:`\hat\epsilon = \rho\, g / \|g\|_2` (norm over all parameters). A zero gradient
    gives a zero perturbation."""
    if not grads:
        return []
    scale = rho / (_global_norm(grads) + _TINY)
    return [g * scale for g in grads]


def asam_perturbation(eta: float = 0.01) -> PerturbationRule:
    r"""ASAM's rule: :math:`\hat\epsilon = \rho\, T_w^2 g / \|T_w g\|_2`, :math:`T_w = |w| + \eta`
    element-wise."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    def rule(params: Sequence[Tensor], grads: Sequence[Tensor], rho: float) -> list[Tensor]:
        if not grads:
            return []
        t = [p.abs() + eta for p in params]
        tg = [ti * g for ti, g in zip(t, grads)]
        scale = rho / (_global_norm(tg) + _TINY)
        return [ti * tgi * scale for ti, tgi in zip(t, tg)]

    return rule


def _row_norm_importance(weight: Tensor) -> Tensor:
    return torch.linalg.vector_norm(weight.reshape(weight.shape[0], -1), dim=1)


class AdaSAPPerturbation:
    r"""AdaSAP's importance-adaptive radius (see the module docstring; not verified against the
    paper): neuron ``j`` of a weight tensor (its slice along dim 0) is perturbed by
    :math:`\rho_j g_j / \|g\|_2`, :math:`\rho_j = \rho_{min} + (\rho_{max} - \rho_{min})(1 -
    s_j)`, :math:`s_j \in [0, 1]` its min-max normalised importance.

    Args:
        rho_min: radius of the most important neuron of each tensor.
        rho_max: radius of the least important one.
        importance: ``importance(weight) -> [out]`` scores (higher = more important); default the
            L2 norm of each neuron's incoming weights.
        min_dim: tensors with fewer dimensions (biases, norm scales) get SAM's ``rho``.
    """

    def __init__(self, *, rho_min: float = 0.01, rho_max: float = 0.1,
                 importance: Callable[[Tensor], Tensor] | None = None, min_dim: int = 2
                 ) -> None:
        if not 0 <= rho_min <= rho_max:
            raise ValueError(f"need 0 <= rho_min <= rho_max, got rho_min={rho_min}, "
                             f"rho_max={rho_max}")
        self.rho_min, self.rho_max = float(rho_min), float(rho_max)
        self.importance = importance if importance is not None else _row_norm_importance
        self.min_dim = int(min_dim)

    def radii(self, weight: Tensor) -> Tensor:
        """The per-neuron radii ``[weight.shape[0]]`` of one weight tensor."""
        s = self.importance(weight.detach()).to(weight.dtype)
        if s.shape != (weight.shape[0],):
            raise ValueError(f"importance must return shape ({weight.shape[0]},), got "
                             f"{tuple(s.shape)}")
        span = s.max() - s.min()
        s = torch.where(span > 0, (s - s.min()) / span.clamp_min(_TINY), torch.ones_like(s))
        return self.rho_min + (self.rho_max - self.rho_min) * (1.0 - s)

    def __call__(self, params: Sequence[Tensor], grads: Sequence[Tensor], rho: float
                 ) -> list[Tensor]:
        if not grads:
            return []
        inv = 1.0 / (_global_norm(grads) + _TINY)
        out = []
        for p, g in zip(params, grads):
            if p.dim() >= self.min_dim:
                r = self.radii(p).reshape(-1, *([1] * (p.dim() - 1)))
                out.append(g * r * inv)
            else:
                out.append(g * (rho * inv))
        return out


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module | None) -> Iterator[None]:
    """Within the block, batch-norm layers of ``model`` normalise with the batch statistics as
    usual but leave their running statistics (and batch counter) unchanged."""
    if model is None:
        yield
        return
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, None if m.num_batches_tracked is None
                          else m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)


class SAM(torch.optim.Optimizer):
    r"""Sharpness-aware minimisation around the optimizer ``base`` (see the module docstring).

    The wrapper shares ``base``'s parameter groups (a learning-rate scheduler built on the
    wrapper drives ``base``); ``state_dict()`` holds ``base``'s state and the radius.

    Args:
        base: any torch optimizer over the model's parameters (SGD, Adam, ...).
        rho: the neighbourhood radius :math:`\rho` (SAM: 0.05).
        adaptive: ASAM's scale-invariant neighbourhood (:func:`asam_perturbation`).
        eta: ASAM's :math:`\eta`.
        rule: a custom :data:`PerturbationRule` (e.g. :class:`AdaSAPPerturbation`); overrides
            ``adaptive``.
    """

    def __init__(self, base: torch.optim.Optimizer, *, rho: float = 0.05, adaptive: bool = False,
                 eta: float = 0.01, rule: PerturbationRule | None = None) -> None:
        if not isinstance(base, torch.optim.Optimizer):
            raise ValueError(f"base must be a torch.optim.Optimizer, got {type(base).__name__}")
        if isinstance(base, SAM):
            raise ValueError("base must not itself be a SAM wrapper")
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.base = base
        self.rho = float(rho)
        self.rule: PerturbationRule = (rule if rule is not None
                                       else asam_perturbation(eta) if adaptive
                                       else sam_perturbation)
        super().__init__(base.param_groups, dict(base.defaults))
        self.param_groups = base.param_groups
        self._perturbed: list[tuple[Tensor, Tensor]] = []

    def _params_with_grad(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def first_step(self) -> None:
        """Move to :math:`w + \\hat\\epsilon(w)` from the gradients now in ``.grad``."""
        if self._perturbed:
            raise RuntimeError("first_step called twice without second_step")
        params = self._params_with_grad()
        eps = self.rule(params, [p.grad for p in params], self.rho)  # type: ignore[misc]
        for p, e in zip(params, eps):
            p.add_(e)
            self._perturbed.append((p, e))

    @torch.no_grad()
    def second_step(self) -> None:
        """Back to :math:`w`, then the base optimizer's update with the gradients now in
        ``.grad`` (those at the perturbed weights)."""
        for p, e in self._perturbed:
            p.sub_(e)
        self._perturbed = []
        self.base.step()

    def step(self, closure: Callable[[], Any] | None = None, *,  # type: ignore[override]
             model: nn.Module | None = None) -> Any:
        """One SAM step. ``closure()`` computes the loss at the current weights, calls
        ``backward()`` and returns the loss; it is called twice (gradients are zeroed before
        each call). With ``model``, the second pass leaves batch-norm running statistics alone.
        Returns the first (unperturbed) loss."""
        if closure is None:
            raise ValueError("closure is required: SAM needs two forward/backward passes")
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        self.first_step()
        self.zero_grad(set_to_none=True)
        try:
            with torch.enable_grad(), frozen_bn_stats(model):
                closure()
        finally:
            self.second_step()
        return loss

    def fit_step(self, model: nn.Module, loss_fn: nn.Module, batch: Any,
                 optimizer: torch.optim.Optimizer | None = None) -> Tensor:
        """The lab's training step (:data:`losslab.lab.training.StepFn`) for this optimizer:
        ``fit(..., optimizer=sam, step=sam.fit_step)``."""
        if optimizer is not None and optimizer is not self:
            raise ValueError("fit_step belongs to the SAM optimizer passed to fit")

        def closure() -> Tensor:
            loss = loss_fn(*batch.loss_args(model(batch.inputs)), **batch.loss_kwargs)
            loss.backward()
            return loss

        return self.step(closure, model=model).detach()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "rho": self.rho}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict["base"])
        self.rho = float(state_dict["rho"])
