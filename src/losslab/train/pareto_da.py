r"""Pareto Domain Adaptation (ParetoDA): a target-guided Pareto combination of the domain
adaptation losses.

Lv, Liang, Gong, Li, Liu, Li, Liu, Wang, "Pareto Domain Adaptation" (NeurIPS 2021,
arXiv 2112.04137). A domain-adaptation model trains on a source classification loss and a
domain alignment (transfer) loss whose gradients can conflict. ParetoDA adds a surrogate of the
target classification loss, the **TCM** (target-classification-mimicking) loss, and updates
the shared parameters along a combination of the three gradients chosen per step by an exact
Pareto optimisation (EPO) linear program, with a *dynamic preference*: the gradient of the TCM
loss on a held-out batch of (unlabelled) target data.

* :func:`tcm_loss`: the TCM loss, the negative mutual information of the (refined) target
  predictions, :math:`-[H(\bar p) - \overline{H(p)}]`.
* :func:`refined_target_logits`: the target-prediction refinement by Bayes' theorem with
  class-wise domain discriminators.
* :func:`pareto_da_weights`: the EPO linear program of one step (our exact small-LP solver;
  the official code calls cvxpy/GLPK).
* :func:`pareto_da_combine`: one step end to end: per-loss gradients of the shared
  parameters, the held-out gradient, the weights, and the weighted loss to back-propagate.

Definitions checked against the official code (``BIT-DA/ParetoDA``: ``tools/TCM_loss.py``,
``tools/epo_lp_dna.py``, ``dalib/modules/cls_domaindiscri.py``,
``examples/DANN+ParetoDA.py``); the paper's text beyond the abstract could not be read here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from losslab._core import check_choice, check_positive

__all__ = ["pareto_da_combine", "pareto_da_weights", "refined_target_logits", "tcm_loss"]


def tcm_loss(target_logits: Tensor, *, eps: float = 1e-6) -> Tensor:
    r"""TCM loss: the negative mutual information between target inputs and predictions.

    .. math::
        \mathcal{L}_{TCM} = -\Big[ H\big(\bar p\big) - \frac1B \sum_b H(p_b) \Big],
        \qquad p_b = \operatorname{softmax}(\rho_b), \quad \bar p = \frac1B \sum_b p_b

    for the ``[B, C]`` (refined) target logits :math:`\rho`, with :math:`H(\bar p)` computed as
    :math:`-\sum_k \bar p_k \log(\bar p_k + \varepsilon)` (``eps = 1e-6``, as released). It
    lies in :math:`[-\log C, 0]` (up to ``eps``): :math:`-\log C` for confident predictions
    spread evenly over the classes, 0 when every prediction is the same. The official
    ``TCM_loss.TCM`` computes :math:`\sum p \log p` directly; here it is
    :math:`\sum p \log\operatorname{softmax}` (the same value, finite for saturated logits).

    Args:
        target_logits: ``[B, C]``; eps: inside the log of the mean prediction (default 1e-6).

    Paper: Lv et al., "Pareto Domain Adaptation", arXiv 2112.04137.
    """
    if not isinstance(target_logits, Tensor) or not target_logits.is_floating_point() or \
            target_logits.ndim != 2 or target_logits.shape[0] == 0:
        raise ValueError("target_logits must be a floating-point tensor [B, C] with B >= 1")
    check_positive("eps", eps, strict=False)
    logp = torch.log_softmax(target_logits, dim=1)
    p = logp.exp()
    mean_p = p.mean(0)
    marginal_entropy = -(mean_p * torch.log(mean_p + eps)).sum()
    conditional_entropy = -(p * logp).sum(1).mean()
    return -(marginal_entropy - conditional_entropy)


def refined_target_logits(target_logits: Tensor, target_domain_probs: Tensor, *,
                          form: Literal["bayes", "released"] = "bayes") -> Tensor:
    r"""Target predictions refined with class-wise domain discriminators.

    ``target_domain_probs [B, C]``: :math:`q_{bk} = P(d = \text{target} \mid x_b, y = k)`, the
    "target" output of the ``k``-th class-wise domain discriminator (detached in the official
    code, which trains the discriminators on their own loss).

    * ``"bayes"`` (default; the abstract's "exploits domain labels via Bayes' theorem"):
      :math:`P(y = k \mid x, d = t) \propto P(y = k \mid x)\, P(d = t \mid x, y = k)`, i.e. the
      logits :math:`\rho = z + \log q`.
    * ``"released"``: the official ``rho_pred``, :math:`\rho = z \odot q` (the logits, not the
      probabilities, scaled by the discriminator's output), then fed to the softmax of
      :func:`tcm_loss`.
    """
    check_choice("form", form, ("bayes", "released"))
    if target_logits.shape != target_domain_probs.shape or target_logits.ndim != 2:
        raise ValueError(f"target_logits and target_domain_probs must have one shape [B, C], "
                         f"got {tuple(target_logits.shape)} and "
                         f"{tuple(target_domain_probs.shape)}")
    q = target_domain_probs.detach()
    if form == "released":
        return target_logits * q
    return target_logits + torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))


def _solve_simplex_lp(c: Tensor, a: Tensor, b: Tensor) -> Tensor | None:
    """Maximise ``c @ x`` over the simplex ``{x >= 0, sum x = 1}`` with ``a @ x >= b``, by
    enumerating the vertices (``m`` small): ``m - 1`` active inequalities and the equality.
    Returns ``None`` when infeasible. float64 throughout."""
    m = c.shape[0]
    ineq_a = torch.cat([torch.eye(m, dtype=c.dtype), a])
    ineq_b = torch.cat([torch.zeros(m, dtype=c.dtype), b])
    scale = float(ineq_a.abs().max().clamp_min(1.0)) * max(1.0, float(b.abs().max())
                                                           if b.numel() else 1.0)
    tol = 1e-9 * scale
    best: Tensor | None = None
    best_value = -float("inf")
    for rows in itertools.combinations(range(ineq_a.shape[0]), m - 1):
        lhs = torch.cat([torch.ones(1, m, dtype=c.dtype), ineq_a[list(rows)]])
        rhs = torch.cat([torch.ones(1, dtype=c.dtype), ineq_b[list(rows)]])
        if abs(float(torch.linalg.det(lhs))) < 1e-12:
            continue
        x = torch.linalg.solve(lhs, rhs)
        if bool((ineq_a @ x >= ineq_b - tol).all()):
            value = float(c @ x)
            if value > best_value + 1e-12:
                best, best_value = x, value
    return best


def pareto_da_weights(grads: Tensor, val_grad: Tensor, val_loss: float | Tensor, *,
                      eps: float = 1e-3) -> Tensor | None:
    r"""The EPO linear program of one ParetoDA step: simplex weights :math:`\alpha` of the
    ``m`` losses' gradients, or ``None`` when the program is infeasible (the official code then
    falls back to fixed preferences).

    With the gradients :math:`G` (``[m, P]``, rows = losses), the held-out TCM gradient
    :math:`g_v` (``[P]``), :math:`C = G G^\top` and :math:`a = G g_v`:

    * **balance** (``val_loss > eps``): maximise :math:`\alpha^\top a` (the combined direction's
      alignment with the held-out gradient) subject to :math:`(C\alpha)_j \ge a_j` for the
      losses with :math:`a_j \le 0`, :math:`(C\alpha)_{j^*} \ge 0` for the best-aligned loss
      :math:`j^* = \arg\max_j a_j`; no constraint for the other losses with :math:`a_j > 0`
      (when no :math:`a_j > 0`, :math:`C\alpha \ge 0` for all).
    * **descent** (``val_loss <= eps``): maximise :math:`\mathbf 1^\top C \alpha` subject to
      :math:`C\alpha \ge 0` and :math:`\alpha^\top a \ge \min(\max_j a_j, 0)`.

    As ``tools/epo_lp_dna.py`` (``EPO_LP.get_alpha``, ``relax=False``); solved exactly by
    vertex enumeration (an LP on the simplex with ``m`` variables, ``m`` = 3 in ParetoDA).

    Args:
        grads: ``[m, P]`` per-loss gradients of the shared parameters, ``m >= 2``.
        val_grad: ``[P]`` gradient of the TCM loss on the held-out target batch.
        val_loss: that loss's value (selects the mode). eps: the mode threshold (default 1e-3).
    """
    if not isinstance(grads, Tensor) or grads.ndim != 2 or grads.shape[0] < 2:
        raise ValueError(f"grads must be a tensor [m, P] with m >= 2 losses, got "
                         f"{getattr(grads, 'shape', type(grads))}")
    if not isinstance(val_grad, Tensor) or val_grad.shape != grads.shape[1:]:
        raise ValueError(f"val_grad must have shape [{grads.shape[1]}] (one entry per "
                         f"parameter), got {getattr(val_grad, 'shape', type(val_grad))}")
    check_positive("eps", eps, strict=False)
    g = grads.detach().to(torch.float64).cpu()
    gv = val_grad.detach().to(torch.float64).cpu()
    cmat, a = g @ g.T, g @ gv
    if float(val_loss) > eps:
        positive = a > 0
        if bool(positive.any()):
            keep = ~positive
            keep[int(torch.argmax(a))] = True
            rhs = torch.where(positive, torch.zeros_like(a), a)
            alpha = _solve_simplex_lp(a, cmat[keep], rhs[keep])
        else:
            alpha = _solve_simplex_lp(a, cmat, torch.zeros_like(a))
    else:
        floor = min(float(a.max()), 0.0)
        alpha = _solve_simplex_lp(cmat.sum(0), torch.cat([cmat, a.unsqueeze(0)]),
                                  torch.cat([torch.zeros_like(a), a.new_tensor([floor])]))
    if alpha is None:
        return None
    return alpha.clamp_min(0).to(grads.dtype).to(grads.device)


def _flat_grad(loss: Tensor, params: list[Tensor]) -> Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1)
                      for gr, p in zip(grads, params)])


def pareto_da_combine(
    losses: Sequence[Tensor], val_loss: Tensor, shared_params: Iterable[Tensor], *,
    eps: float = 1e-3, fallback: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""One ParetoDA step: the weighted loss :math:`m \sum_i \alpha_i \mathcal{L}_i` to
    back-propagate, and the weights :math:`m\alpha` (``[m]``, detached).

    ``losses``: the ``m`` scalar objectives (ParetoDA: source cross-entropy, transfer loss,
    TCM loss on the training target batch); ``val_loss``: the TCM loss on a held-out target
    batch (the dynamic preference); ``shared_params``: the parameters the weighting is for
    (the feature extractor: ``model.get_base_parameters()`` in the official code, whose
    heads and discriminators take their own plain losses). Their gradients come from
    ``torch.autograd.grad`` (the graphs are kept for the final backward). When the LP is
    infeasible the weights are ``fallback`` (default uniform, i.e. all ones after the
    ``m`` scaling), as the official ``pref1..3`` patch.

    Example (one training step)::

        total, w = pareto_da_combine([ce_src, transfer, tcm_train], tcm_val, backbone_params)
        optimizer.zero_grad(); total.backward(); optimizer.step()
    """
    params = [p for p in shared_params if p.requires_grad]
    if not params:
        raise ValueError("shared_params must hold at least one tensor that requires grad")
    if len(losses) < 2:
        raise ValueError(f"losses must hold at least 2 objectives, got {len(losses)}")
    for i, loss in enumerate(losses):
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ValueError(f"losses[{i}] must be a scalar tensor")
    m = len(losses)
    grads = torch.stack([_flat_grad(loss, params) for loss in losses])
    val_grad = _flat_grad(val_loss, params)
    alpha = pareto_da_weights(grads, val_grad, val_loss.detach(), eps=eps)
    if alpha is None:
        pref = torch.full((m,), 1.0 / m) if fallback is None else torch.as_tensor(
            fallback, dtype=torch.float64)
        if pref.shape != (m,):
            raise ValueError(f"fallback must hold {m} weights, got {tuple(pref.shape)}")
        alpha = pref.to(grads.dtype).to(grads.device)
    weights = (m * alpha).detach()
    total = torch.stack(list(losses)) @ weights.to(losses[0].dtype)
    return total, weights
