"""AMCL: adaptive multi-head contrastive learning, the SimCLR instance.

Kind ``paired``: ``loss(a[N, H, D], b[N, H, D])`` -- ``H`` projection heads' outputs of the two
views (``[N, D]`` is one head). Each pair of embeddings gets its own temperature from a small
network ``phi`` shared by the heads, regularised so that it cannot run to 0 or infinity.

fp16/bf16 inputs are computed in float32 and the loss is returned in float32.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from losslab._core import LossModule, Reduction, check_same_device, compute_dtype, reduce
from losslab._hparams import Int, Real, hparams
from losslab.distances import normalize_rows
from losslab.registry import register

__all__ = ["AMCLLoss", "amcl_loss", "pair_temperature"]


def _check_bounds(**values: object) -> None:
    lo, hi = values.get("tau_min"), values.get("tau_max")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not lo < hi:
        raise ValueError(f"tau_min must be smaller than tau_max, got {lo} and {hi}")


_check_amcl = hparams(_check_bounds, beta=Real(ge=0), tau_min=Real(gt=0), tau_max=Real(gt=0),
                      num_negatives=Int(ge=1), embedding_dim=Int(ge=1),
                      hidden_dim=Int(ge=1, optional=True))


def pair_temperature(x: Tensor, y: Tensor, *, phi: Callable[[Tensor], Tensor] | None = None,
                     tau_min: float = 1e-5, tau_max: float = 2.0) -> Tensor:
    r"""AMCL's pair-adaptive temperature (the paper's Eq. 3),

    .. math::
        \tau(x, y) = \tau_{min} + (\tau_{max} - \tau_{min})\,
            \sigma\big(-\langle \phi(x), \phi(y) \rangle\big),

    broadcast over the leading dimensions of ``x[..., D]`` and ``y[..., D]``: similar pairs
    get low temperatures, dissimilar (uncertain) ones high. ``phi=None`` is the identity.
    """
    px = x if phi is None else phi(x)
    py = y if phi is None else phi(y)
    return tau_min + (tau_max - tau_min) * torch.sigmoid(-(px * py).sum(-1))


def _heads(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim not in (2, 3):
        raise ValueError(f"{name} must be a float tensor [N, D] or [N, H, D] (H heads), got "
                         f"{getattr(x, 'dtype', type(x))} of shape "
                         f"{tuple(getattr(x, 'shape', ()))}")
    return x.unsqueeze(1) if x.ndim == 2 else x


def amcl_loss(
    a: Tensor,
    b: Tensor,
    *,
    phi: Callable[[Tensor], Tensor] | None = None,
    beta: float = 0.01,
    tau_min: float = 1e-5,
    tau_max: float = 2.0,
    num_negatives: int = 100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""AMCL (SimCLR form): head-wise contrastive terms, each pair with its own temperature.

    For head ``h``, anchor :math:`u_i` (``a`` then ``b``) with positive :math:`v_i` (the other
    view) and the ``2N - 2`` other embeddings of both views as negatives, cosine similarities
    :math:`s`, pair temperatures :math:`\tau = ` :func:`pair_temperature` and the ``k =
    min(num_negatives, 2N - 2)`` most similar negatives :math:`\mathcal{K}_i`,

    .. math::
        \ell_i^h = -\frac{s(u_i, v_i)}{\tau_{i+}}
            + \frac{1}{k} \sum_{n \in \mathcal{K}_i} \frac{s(u_i, z_n)}{\tau_{in}}
            + \beta\,\Omega(\tau_{i+})
            - \beta \sum_{n \in \mathcal{K}_i} \big(\log \tau_{in} + \tau_{in}^{-1}\big),
        \qquad \Omega(\tau) = \tfrac{D}{2} \log \tau + \tau^{-1}

    (the paper's Eq. 2.1 with its top-``k`` approximation, Eq. 5). The pair's value is the
    mean of its two directions, summed over the ``H`` heads.

    Args:
        a, b: ``[N, H, D]`` (or ``[N, D]``, one head) two views, ``N >= 2``; rows are
            L2-normalised.
        phi: the temperature network :math:`\phi: \mathbb{R}^D \to \mathbb{R}^D`, applied
            to the normalised embeddings (the module learns a two-layer MLP); ``None`` =
            identity.
        beta: weight of the temperature regulariser (default 0.01, the official SimCLR
            setting). tau_min, tau_max: the temperature range (default ``1e-5`` and 2).
        num_negatives: ``k`` (default 100).
        reduction: ``"mean"`` over the ``N`` pairs, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Wang, Koniusz, Gedeon, Zheng, "Adaptive Multi-head Contrastive Learning", ECCV
    2024, arXiv 2310.05615. The formula is read from the official code
    (``LeiWangR/cl``, ``amcl/losses.py``, ``AMCLNTXentLoss``, which cites the paper's
    equations); the paper's text itself was not found beyond its abstract.
    """
    _check_amcl(beta=beta, tau_min=tau_min, tau_max=tau_max, num_negatives=num_negatives)
    a, b = _heads("a", a), _heads("b", b)
    if b.shape != a.shape:
        raise ValueError(f"a and b must have the same shape [N, H, D], got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    check_same_device(a=a, b=b)
    n, heads, d = a.shape
    if n < 2:
        raise ValueError(f"amcl needs at least 2 pairs in a and b, got {n}")
    dtype = compute_dtype(a.dtype)
    a, b = normalize_rows(a.to(dtype)), normalize_rows(b.to(dtype))
    k = min(num_negatives, 2 * n - 2)
    rows = torch.arange(2 * n, device=a.device)
    partner = (rows + n) % (2 * n)
    cand = (rows.unsqueeze(1) != rows.unsqueeze(0)) & (rows.unsqueeze(0) != partner.unsqueeze(1))
    per_pair = torch.zeros(n, dtype=dtype, device=a.device)
    for h in range(heads):
        z = torch.cat([a[:, h], b[:, h]], 0)  # [2N, D]; anchor r's positive is partner[r]
        pz = z if phi is None else phi(z)
        sim = z @ z.t()
        score = pz @ pz.t()
        tau = tau_min + (tau_max - tau_min) * torch.sigmoid(-score)
        pos_s = sim[rows, partner]
        pos_t = tau[rows, partner]
        neg_idx = sim.masked_fill(~cand, float("-inf")).topk(k, dim=1).indices
        neg_s, neg_t = sim.gather(1, neg_idx), tau.gather(1, neg_idx)
        omega = 0.5 * d * torch.log(pos_t) + 1.0 / pos_t
        term = (-pos_s / pos_t + (neg_s / neg_t).mean(1) + beta * omega
                - beta * (torch.log(neg_t) + 1.0 / neg_t).sum(1))
        per_pair = per_pair + (term[:n] + term[n:]) / 2
    return reduce(per_pair, reduction)


def _temperature_net(dim: int, hidden: int) -> nn.Module:
    """The official temperature network: Linear(D, hidden), ReLU, Linear(hidden, D)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


@register(
    "amcl", family="contrastive-ssl", kind="paired",
    paper="Adaptive Multi-head Contrastive Learning", arxiv="2310.05615",
    summary="sum_heads [-s+/tau+ + mean_topk s-/tau- + beta Omega(tau+) - beta sum_topk "
    "(log tau- + 1/tau-)], tau(x, y) = tau_min + (tau_max - tau_min) sigmoid(-phi(x).phi(y))",
    reduction="per pair", example_hparams={"embedding_dim": 5},
)
class AMCLLoss(LossModule, function=amcl_loss, check=_check_amcl):
    """Module form of :func:`amcl_loss` with the learned temperature network ``phi``
    (``Linear(D, hidden_dim)``, ReLU, ``Linear(hidden_dim, D)``; module options
    ``embedding_dim`` = ``D`` and ``hidden_dim``, default ``D``)."""

    function_only = ("phi",)
    module_options = (
        inspect.Parameter("embedding_dim", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("hidden_dim", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation="int | None"),
    )

    def configure(self, *, embedding_dim: int, hidden_dim: int | None) -> None:
        _check_amcl(embedding_dim=embedding_dim, hidden_dim=hidden_dim)
        self.config = {"embedding_dim": embedding_dim, "hidden_dim": hidden_dim}
        self.phi = _temperature_net(embedding_dim, hidden_dim or embedding_dim)

    def forward(self, a: Tensor, b: Tensor, *, index: Tensor | None = None) -> Tensor:
        if index is not None:
            raise ValueError("amcl takes no index= argument")
        weight = next(self.phi.parameters())

        def phi(x: Tensor) -> Tensor:  # the network in its own dtype, the loss in x's
            return self.phi(x.to(weight.dtype)).to(x.dtype)

        return amcl_loss(a, b, phi=phi, **self.call_kwargs())
