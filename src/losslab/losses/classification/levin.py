r"""The Levin Tree Search loss (family ``classification``, kind ``tokens``).

Levin Tree Search (LTS) expands the nodes of a search tree in increasing order of
:math:`d(n) / \pi(n)`, where :math:`d(n)` is the depth of node :math:`n` and :math:`\pi(n)` the
probability that a policy assigns to the actions leading to it. Its guarantee: the number of
expansions before the goal node :math:`n^*` is at most :math:`d(n^*) / \pi(n^*)`. Orseau &
Lelis ("Policy-Guided Heuristic Search with Guarantees", AAAI 2021) use the bound as a loss over
the solution paths of solved problems; Orseau, Hutter & Lelis, "Levin Tree Search with Context
Models" (IJCAI 2023, arXiv 2305.16945) show that this **LTS loss** is convex when the policy is
a product of context models, :math:`\pi(a \mid n) \propto \exp\big(\sum_{c \in Q(n)}
\beta_{c,a}\big)` (a softmax of a sum of per-context parameters; the official code's
``flproduct-mix``), so that it can be minimised with convex-optimisation guarantees.

Kind ``tokens``: ``logits[N, T, V]`` are the policy's scores at the ``T`` steps of ``N``
solution paths (for a context model, the sum of the active contexts' :math:`\beta`; for a
network, its output), ``target[N, T]`` the actions taken, ``ignore_index`` pads shorter paths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Flag, Int, hparams
from losslab._ops.tokens import prepare_tokens
from losslab.registry import register

__all__ = ["LTSLoss", "lts_log_cost", "lts_loss"]

PAPER = "Levin Tree Search with Context Models"

_check_lts = hparams(ignore_index=Int(), normalize=Flag())
_check_ignore = hparams(ignore_index=Int())


def lts_log_cost(logits: Tensor, target: Tensor, *, ignore_index: int = -100
                 ) -> tuple[Tensor, Tensor]:
    r"""Per path: :math:`\log d - \log \pi` and the depth :math:`d` (``[N]`` each).

    Validates the inputs of the kind (``logits`` float ``[N, T, V]``, ``target`` integer
    ``[N, T]`` with actions in ``[0, V)`` or ``ignore_index``). A path without a step has
    depth 0 (its log-cost is returned as 0; the cost itself is 0).
    """
    _check_ignore(ignore_index=ignore_index)
    batch = prepare_tokens(logits, target, ignore_index=ignore_index, loss="lts",
                           ids="actions")
    valid, x = batch.valid, batch.logits
    logp = batch.target_log_prob(batch.log_probs())
    depth = valid.sum(1).to(x.dtype)
    log_cost = torch.where(depth > 0, depth.clamp_min(1).log() - logp.sum(1),
                           torch.zeros_like(depth))
    return log_cost, depth


def lts_loss(logits: Tensor, target: Tensor, *, normalize: bool = True,
             ignore_index: int = -100, reduction: Reduction = "mean") -> Tensor:
    r"""The LTS loss: per solution path, the Levin-search cost bound :math:`d / \pi`.

    .. math::
        \ell_k = \frac{d_k}{\pi(n_k)} = d_k \prod_{t=1}^{d_k}
            \frac{1}{\pi(a_{k,t} \mid n_{k,t-1})}, \qquad
        \pi(\cdot \mid n) = \mathrm{softmax}(\text{logits}_{k,t})

    with :math:`d_k` the number of actions of path :math:`k` (its non-ignored steps). Computed
    as :math:`\exp(\log d_k - \sum_t \log \pi(a_{k,t}))`. Its gradient with respect to the
    step's logits is :math:`\ell_k\,(\pi(\cdot \mid n_{k,t}) - e_{a_{k,t}})`, the official
    code's jacobian (``jacobian!/trajectory/logd/π``).

    The bound grows exponentially with the path length (20 steps at probability
    :math:`10^{-2}` each cost :math:`2 \cdot 10^{41}`, beyond float32; a cost above 65504 has
    an fp16 gradient of ``inf``). The official optimiser therefore works in log space and
    scales the losses, and their gradients, by :math:`e^{-C}` with :math:`C = \max_k \log
    \ell_k` the batch's largest log-cost, a constant (``optimization-max-log-loss``): with
    ``normalize=True`` (default) the value is :math:`\ell_k / \max_j \ell_j \in (0, 1]`,
    whose gradient is the LTS loss's gradient times that constant (same direction, same
    stationary points; the registry marks it as a surrogate gradient). ``normalize=False``
    returns the bound itself (:func:`lts_log_cost` gives its logarithm at any scale).

    The paper's proven properties (tested): the number of non-root expansions of a best-first
    search in the order of :math:`d/\pi` before it reaches the goal is at most the bound
    (``normalize=False``); the bound is convex in the parameters :math:`\beta` of a
    product-of-context-models policy.

    Args:
        logits: ``[N, T, V]`` float, the policy's scores over ``V`` actions at each step.
        target: ``[N, T]`` integer actions of the solution paths; ``ignore_index`` pads.
        normalize: divide by the batch's largest path cost, a constant (default True, the
            official optimiser's scaling); False: the bound :math:`d / \pi` itself.
        ignore_index: the padding id (default -100).
        reduction: ``"mean"`` over paths with at least one step (the paper sums over the
            solved problems: ``"sum"``), ``"none"`` (``[N]``, 0 for an empty path).

    Paper: Orseau, Hutter, Lelis, "Levin Tree Search with Context Models", arXiv 2305.16945
    (the LTS loss of Orseau & Lelis, AAAI 2021); official code ``deepmind/levintreesearch_cm``.
    """
    _check_lts(ignore_index=ignore_index, normalize=normalize)
    log_cost, depth = lts_log_cost(logits, target, ignore_index=ignore_index)
    has_step = depth > 0
    if normalize:
        top = torch.where(has_step, log_cost, torch.full_like(log_cost, -torch.inf))
        shift = top.amax().detach() if top.numel() else top.sum().detach()
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        log_cost = log_cost - shift
    cost = torch.where(has_step, log_cost.exp(), torch.zeros_like(log_cost))
    return reduce(cost, reduction, count=has_step.sum().to(cost.dtype))


@register(
    "lts",
    family="classification",
    kind="tokens",
    paper=PAPER,
    arxiv="2305.16945",
    summary="depth / pi(path) per solution path, pi = prod_t softmax(logits_t)[a_t]; "
            "normalize: over the batch's largest",
    reduction="per path",
    degenerate=("all_ignored",),
    surrogate_gradient="normalize=True (default) divides by the batch's largest path cost, "
    "treated as a constant (the official optimiser's scaling): the gradient is the bound's "
    "times that constant",
)
class LTSLoss(LossModule, function=lts_loss, check=_check_lts):
    """Module form of :func:`lts_loss`."""
