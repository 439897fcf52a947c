r"""LegendreTron: a proper multiclass loss learned jointly with the model, through a learnable
monotone link (family ``classification``, kind ``logits``).

The model's scores :math:`v \in \mathbb{R}^{C-1}` are mapped to class probabilities by an
inverse link :math:`\tilde\psi^{-1} = \operatorname{softmax}^+ \circ\, \nabla F`: the gradient
of a learnable strongly convex potential :math:`F` (an input-convex network plus a quadratic),
followed by :math:`\operatorname{softmax}^+(z) = \operatorname{softmax}([z, 0])`, the gradient
of the convex :math:`\operatorname{LSE}^+(z) = \log(1 + \sum_k e^{z_k})` onto the projected
simplex. Gradients of convex functions are monotone: the link is invertible, and the log loss
of the linked probabilities is a proper loss whose link is learned. The link's parameters live
in the loss module (:class:`LegendreTronLoss`) and are trained with the model's.

:class:`ConvexPotential` and :class:`LegendreLink` are ordinary modules; the potential's
gradient is written out (no ``torch.autograd.grad`` inside the forward), so the loss is
differentiable twice by plain autograd and traces under ``torch.compile``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import LossModule, Reduction
from losslab._hparams import Int, hparams
from losslab._ops.logits import finish, gather_target, prepare
from losslab.registry import register

__all__ = [
    "ConvexPotential",
    "LegendreLink",
    "LegendreTronLoss",
    "legendretron_loss",
]


class ConvexPotential(nn.Module):
    r"""A strongly convex potential :math:`F: \mathbb{R}^d \to \mathbb{R}` and its gradient.

    .. math::
        z_1 = \sigma(W_0 x + b_0),\quad
        z_{l+1} = \sigma\big(\bar U_l z_l + W_l x + b_l\big)\ (l = 1..L-1),\quad
        f(x) = \bar u^\top z_L + w^\top x,

        F(x) = \operatorname{softplus}(a_1)\, f(x) + \operatorname{softplus}(a_0)\,
        \tfrac12 \lVert x \rVert^2

    with :math:`\sigma` = softplus (convex, increasing), :math:`\bar U_l =
    \operatorname{softplus}(U_l)/h` and :math:`\bar u = \operatorname{softplus}(u)/h`
    non-negative: :math:`f` is an input-convex network (Amos et al.), so :math:`F` is
    :math:`\operatorname{softplus}(a_0)`-strongly convex and :math:`\nabla F` is a strongly
    monotone bijection of :math:`\mathbb{R}^d`. The structure (an ICNN scaled by a softplus
    weight plus a softplus-weighted quadratic) is that of the official code's
    ``DeepConvexFlow`` potential; its ICNN has extra ActNorm layers and skip branches.

    Args:
        dim: :math:`d` (the number of classes minus one for a link).
        hidden: width :math:`h` of the hidden layers (default 4, the official default).
        depth: number of hidden layers :math:`L \ge 1` (default 4, the official default).
    """

    def __init__(self, dim: int, *, hidden: int = 4, depth: int = 4) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.dim, self.hidden, self.depth = dim, hidden, depth
        self.w_x = nn.ParameterList(
            [nn.Parameter(torch.randn(hidden, dim) / math.sqrt(dim)) for _ in range(depth)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(hidden)) for _ in range(depth)])
        self.u_z = nn.ParameterList(
            [nn.Parameter(torch.randn(hidden, hidden) * 0.1) for _ in range(depth - 1)])
        self.u_out = nn.Parameter(torch.randn(hidden) * 0.1)
        self.w_out = nn.Parameter(torch.zeros(dim))
        self.a1 = nn.Parameter(torch.zeros(()))
        self.a0 = nn.Parameter(torch.zeros(()))

    def _layers(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Pre-activations and activations of the ICNN at ``x`` ``[M, d]``."""
        dt = x.dtype
        pre, act = [], []
        z: Tensor | None = None
        for i in range(self.depth):
            a = F.linear(x, self.w_x[i].to(dt), self.b[i].to(dt))
            if z is not None:
                a = a + F.linear(z, F.softplus(self.u_z[i - 1].to(dt)) / self.hidden)
            z = F.softplus(a)
            pre.append(a)
            act.append(z)
        return pre, act

    def _coefficients(self, dt: torch.dtype) -> tuple[Tensor, Tensor]:
        return F.softplus(self.a1.to(dt)), F.softplus(self.a0.to(dt))

    def potential(self, x: Tensor) -> Tensor:
        """:math:`F(x)` for ``x[M, d]``: ``[M]``."""
        _, act = self._layers(x)
        c1, c0 = self._coefficients(x.dtype)
        f = act[-1] @ (F.softplus(self.u_out.to(x.dtype)) / self.hidden) + x @ self.w_out.to(
            x.dtype)
        return c1 * f + c0 * 0.5 * x.square().sum(-1)

    def forward(self, x: Tensor) -> Tensor:
        r""":math:`\nabla F(x)` for ``x[M, d]`` (``[M, d]``), by the chain rule written out:
        :math:`\partial f/\partial z_L = \bar u`, then through each softplus
        (derivative :math:`\operatorname{sigmoid}`) and linear map back to :math:`x`."""
        dt = x.dtype
        pre, _ = self._layers(x)
        c1, c0 = self._coefficients(dt)
        g_z = (F.softplus(self.u_out.to(dt)) / self.hidden).expand(x.shape[0], self.hidden)
        g_x = self.w_out.to(dt).expand(x.shape[0], self.dim)
        for i in reversed(range(self.depth)):
            g_a = g_z * torch.sigmoid(pre[i])
            g_x = g_x + g_a @ self.w_x[i].to(dt)
            if i > 0:
                g_z = g_a @ (F.softplus(self.u_z[i - 1].to(dt)) / self.hidden)
        return c1 * g_x + c0 * x


class LegendreLink(nn.Module):
    r"""The learnable part of the inverse link: :math:`g = \nabla F_B \circ \cdots \circ
    \nabla F_1` on :math:`\mathbb{R}^{d}` (:class:`ConvexPotential` blocks).

    One block (the default, as the official experiments) is the gradient of a strongly convex
    function; several blocks compose invertible monotone maps (still a bijection, as the
    official ``LegendreLink(n_blocks)``), but the composition need not be a gradient.

    Args:
        dim: :math:`d = C - 1`.
        blocks: number of potentials :math:`B \ge 1` (default 1).
        hidden, depth: of each :class:`ConvexPotential` (defaults 4 and 4).
    """

    def __init__(self, dim: int, *, blocks: int = 1, hidden: int = 4, depth: int = 4) -> None:
        super().__init__()
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks must be an integer >= 1, got {blocks!r}")
        self.dim = dim
        self.potentials = nn.ModuleList(
            [ConvexPotential(dim, hidden=hidden, depth=depth) for _ in range(blocks)])

    def forward(self, v: Tensor) -> Tensor:
        for p in self.potentials:
            v = p(v)
        return v


def legendretron_loss(
    logits: Tensor,
    target: Tensor,
    link: nn.Module | None = None,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""LegendreTron loss: the log loss of the probabilities given by a learned inverse link.

    .. math::
        v = (s_k - s_C)_{k < C} \in \mathbb{R}^{C-1},\qquad
        \hat p = \operatorname{softmax}\big([g(v), 0]\big),\qquad
        \ell = -\log \hat p_y

    with :math:`s` the ``C`` logits of a row (their differences to the last class are the
    model's :math:`C-1` scores: a model with :math:`C-1` outputs is the same as one whose last
    logit is 0, and the loss is invariant to shifting a row of logits) and :math:`g` the
    learned monotone map (:class:`LegendreLink`). ``link=None`` is the identity: the loss is
    then cross-entropy (tested). Properness: for a fixed link, the expected loss
    :math:`\mathbb{E}_{y \sim q} \ell(y, v)` is minimised exactly where :math:`\hat p(v) = q`
    (:math:`g` is a bijection; tested numerically).

    A class masked with a ``-inf`` logit gets probability 0 (its score is set to 0 before the
    link and its linked score to ``-inf`` after it).

    Args:
        logits: ``[N, C, ...]`` scores (``C >= 2``); target: ``[N, ...]`` class ids.
        link: a module mapping ``[M, C-1]`` to ``[M, C-1]`` (:class:`LegendreLink`), or
            ``None`` (identity). :class:`LegendreTronLoss` owns one and passes it.
        ignore_index: class id of items to skip.
        reduction: ``"mean"`` over non-ignored items, ``"sum"``, ``"none"`` (``[N, ...]``).

    Formula from the official code (github.com/khflam/legendretron: ``LegendreLink`` =
    ``DeepConvexFlow`` blocks, then ``log_softmax_plus``, trained with ``NLLLoss``) and the
    paper's abstract; the full paper text was not read here.

    Paper: Lam, Walder, Penev, Nock, "LegendreTron: Uprising Proper Multiclass Loss Learning",
    arXiv 2301.11695 (ICML 2023).
    """
    _check_legendretron(ignore_index=ignore_index)
    batch = prepare(logits, target, ignore_index=ignore_index, min_classes=2,
                    loss="legendretron")
    s = batch.logits
    masked = torch.isneginf(s)
    finite = torch.where(masked, torch.zeros_like(s), s)
    v = finite[:, :-1] - finite[:, -1:]
    z = v if link is None else link(v)
    if z.shape != v.shape:
        raise ValueError(f"link must map [M, {v.shape[1]}] scores to the same shape, got "
                         f"{tuple(z.shape)}")
    scores = torch.cat([z.to(s.dtype), torch.zeros_like(s[:, :1])], dim=1)
    scores = torch.where(masked, torch.full_like(scores, -torch.inf), scores)
    nll = -gather_target(F.log_softmax(scores, dim=1), batch)
    return finish(nll, batch, reduction)


_check_legendretron = hparams(ignore_index=Int())
_check_link = hparams(num_classes=Int(ge=2), blocks=Int(ge=1), hidden=Int(ge=1),
                      depth=Int(ge=1))


@register(
    "legendretron",
    family="classification",
    kind="logits", degenerate=("all_ignored",),
    paper="LegendreTron: Uprising Proper Multiclass Loss Learning",
    arxiv="2301.11695",
    summary="-log softmax([g(s_{<C} - s_C), 0])_y, g = grad of a learned strongly convex "
    "potential (ICNN + quadratic)",
    example_hparams={"num_classes": 4},
)
class LegendreTronLoss(LossModule, function=legendretron_loss,
                       check=_check_legendretron | _check_link):
    """Module form of :func:`legendretron_loss`: owns the learnable link (a
    :class:`LegendreLink` on :math:`\\mathbb{R}^{C-1}`); train its parameters with the model's.

    Module options: ``num_classes`` (:math:`C \\ge 2`, required), ``blocks`` (default 1),
    ``hidden`` and ``depth`` of each potential (defaults 4, 4: the official code's).
    """

    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("blocks", inspect.Parameter.KEYWORD_ONLY, default=1,
                          annotation="int"),
        inspect.Parameter("hidden", inspect.Parameter.KEYWORD_ONLY, default=4,
                          annotation="int"),
        inspect.Parameter("depth", inspect.Parameter.KEYWORD_ONLY, default=4,
                          annotation="int"),
    )
    config: dict[str, Any]

    def configure(self, *, num_classes: int, blocks: int, hidden: int, depth: int) -> None:
        _check_link(num_classes=num_classes, blocks=blocks, hidden=hidden, depth=depth)
        self.config = {"num_classes": num_classes, "blocks": blocks, "hidden": hidden,
                       "depth": depth}
        self.link = LegendreLink(num_classes - 1, blocks=blocks, hidden=hidden, depth=depth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss with this module's link."""
        c = self.config["num_classes"]
        if isinstance(logits, Tensor) and logits.ndim >= 2 and logits.shape[1] != c:
            raise ValueError(f"logits must have num_classes={c} columns, got "
                             f"{tuple(logits.shape)}")
        return type(self).function(logits, target, self.link, **self.call_kwargs())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self.config, **self.hparams}.items())
