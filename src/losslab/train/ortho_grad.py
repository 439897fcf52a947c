r"""⊥Grad: the optimizer of "Grokking at the Edge of Numerical Stability" (Prieto, Barsbey,
Mediano, Birdal; arXiv 2501.04697), paired there with StableMax.

Past the point of overfitting, the gradient aligns with the *naive loss minimisation* (NLM)
direction: scaling the weights along themselves, which scales the logits, lowers the
cross-entropy without changing any prediction and ends in Softmax Collapse. ⊥Grad keeps only
the part of the gradient orthogonal to the current weights,

.. math:: \nabla_\perp L = \nabla L - \frac{\theta^\top \nabla L}{\theta^\top \theta}\,\theta,

and hands it to the base optimizer (the paper's ⊥SGD and ⊥AdamW). The projection is done per
parameter tensor :math:`\theta`. With plain SGD the update :math:`-\eta \nabla_\perp L` is then
exactly orthogonal to :math:`\theta`, so :math:`\|\theta\|^2` grows only by
:math:`\eta^2 \|\nabla_\perp L\|^2` per step. ``preserve_norm=True`` rescales the projected
gradient to the norm of the original one (an option of some re-implementations; off by default,
the paper's formula is the plain projection). A zero tensor is left unprojected.

StableMax, the paper's other contribution, is the registered loss ``stablemax_ce``
(:func:`losslab.functional.stablemax_ce_loss`); the two are used together in the paper and in
the tests.

Example::

    opt = OrthoGrad(torch.optim.SGD(model.parameters(), lr=0.1))
    loss.backward(); opt.step()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["OrthoGrad", "orthogonal_gradient"]

_TINY = 1e-30


@torch.no_grad()
def orthogonal_gradient(params: Iterable[Tensor], *, preserve_norm: bool = False) -> None:
    r"""Replace each ``p.grad`` by :math:`g - (p^\top g / p^\top p)\, p` in place (``p`` flattened;
    parameters without a gradient, or equal to zero, are left alone)."""
    for p in params:
        g = p.grad
        if g is None:
            continue
        w = p.detach()
        wf, gf = w.reshape(-1).to(torch.float64), g.reshape(-1).to(torch.float64)
        ww = torch.dot(wf, wf)
        if not ww > 0:
            continue
        proj = gf - (torch.dot(wf, gf) / ww) * wf
        if preserve_norm:
            proj = proj * (torch.linalg.vector_norm(gf)
                           / (torch.linalg.vector_norm(proj) + _TINY))
        g.copy_(proj.reshape(g.shape).to(g.dtype))


class OrthoGrad(torch.optim.Optimizer):
    """⊥Grad around the optimizer ``base``: project every gradient onto the orthogonal
    complement of its parameter tensor, then ``base.step()``.

    Args:
        base: any torch optimizer (the paper: SGD and AdamW). Its weight decay, if any, acts
            after the projection, as in ⊥AdamW.
        preserve_norm: rescale each projected gradient to the original gradient's norm.
    """

    def __init__(self, base: torch.optim.Optimizer, *, preserve_norm: bool = False) -> None:
        if not isinstance(base, torch.optim.Optimizer):
            raise ValueError(f"base must be a torch.optim.Optimizer, got {type(base).__name__}")
        self.base = base
        self.preserve_norm = bool(preserve_norm)
        super().__init__(base.param_groups, dict(base.defaults))
        self.param_groups = base.param_groups

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Optionally evaluate ``closure`` (with gradients), project, update."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        orthogonal_gradient((p for g in self.param_groups for p in g["params"]),
                            preserve_norm=self.preserve_norm)
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "preserve_norm": self.preserve_norm}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict["base"])
        self.preserve_norm = bool(state_dict["preserve_norm"])
