"""AMCL: adaptive multi-head contrastive learning, and its instances on four base methods.

``amcl`` (registered, kind ``paired``): ``loss(a[N, H, D], b[N, H, D])`` -- ``H`` projection
heads' outputs of the two views (``[N, D]`` is one head), the SimCLR instance. Each pair of
embeddings gets its own temperature from a small network ``phi`` shared by the heads,
regularised so that it cannot run to 0 or infinity.

The official code (``LeiWangR/cl``, ``amcl/losses.py``) has three more instances, one class
each with its own inputs; here they are functions of this module (not registered names: their
inputs are no existing kind's):

* :func:`amcl_moco_loss` ``(q, k, queue)`` -- MoCo, negatives from a queue
  (``AMCLMoCoLoss``);
* :func:`amcl_simsiam_loss` ``(p1, z2, p2, z1)`` -- SimSiam, no negatives, stop-gradient on
  the targets (``AMCLSimSiamLoss``, the paper's Eq. 2.2);
* :func:`amcl_barlow_twins_loss` ``(a, b)`` -- Barlow Twins, temperatures on pairs of
  batch-wise channel vectors (``AMCLBarlowTwinsLoss``, Eq. 2.3).

Verification: every formula here is read from that code (the authors' repository; the
equation numbers are its comments). The paper's text (arXiv 2310.05615) was found only as far
as its abstract, and the repository's loss table is an image, so the formulas are not checked
against the paper itself. With one head, ``beta = 0`` and a constant temperature of 1 the
SimSiam and Barlow Twins forms are their base losses; the SimCLR and MoCo forms keep AMCL's
linear contrastive term (no log-sum-exp), so they do not reduce to InfoNCE -- the tests tie
the MoCo form to the SimCLR form instead.

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
from losslab.losses.contrastive_ssl.redundancy import cross_correlation
from losslab.registry import register

__all__ = ["AMCLLoss", "amcl_barlow_twins_loss", "amcl_loss", "amcl_moco_loss", "amcl_simsiam_loss",
           "pair_temperature"]


def _check_bounds(**values: object) -> None:
    lo, hi = values.get("tau_min"), values.get("tau_max")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not lo < hi:
        raise ValueError(f"tau_min must be smaller than tau_max, got {lo} and {hi}")


_check_amcl = hparams(_check_bounds, beta=Real(ge=0), tau_min=Real(gt=0), tau_max=Real(gt=0),
                      num_negatives=Int(ge=1), embedding_dim=Int(ge=1),
                      hidden_dim=Int(ge=1, optional=True), lam=Real(ge=0), eps=Real(ge=0))


def _omega(tau: Tensor, dim: int) -> Tensor:
    r"""The temperature regulariser :math:`\Omega(\tau) = \frac{d}{2}\log\tau + \tau^{-1}`."""
    return 0.5 * dim * torch.log(tau) + 1.0 / tau


def _to_temperature(score: Tensor, tau_min: float, tau_max: float) -> Tensor:
    return tau_min + (tau_max - tau_min) * torch.sigmoid(-score)


def _direction(pos_s: Tensor, pos_t: Tensor, neg_s: Tensor, neg_t: Tensor, *, k: int,
               beta: float, dim: int) -> Tensor:
    """One direction of Eq. 2.1 with the top-``k`` approximation (Eq. 5), per anchor:
    ``pos_*`` are ``[M]``, ``neg_*`` ``[M, C]`` similarities and temperatures of the ``C``
    candidate negatives (``-inf`` similarity = not a candidate)."""
    idx = neg_s.topk(k, dim=1).indices
    top_s, top_t = neg_s.gather(1, idx), neg_t.gather(1, idx)
    return (-pos_s / pos_t + (top_s / top_t).mean(1) + beta * _omega(pos_t, dim)
            - beta * (torch.log(top_t) + 1.0 / top_t).sum(1))


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
        tau = _to_temperature(score, tau_min, tau_max)
        term = _direction(sim[rows, partner], tau[rows, partner],
                          sim.masked_fill(~cand, float("-inf")), tau, k=k, beta=beta, dim=d)
        per_pair = per_pair + (term[:n] + term[n:]) / 2
    return reduce(per_pair, reduction)


def _phi_of(phi: Callable[[Tensor], Tensor] | None, x: Tensor) -> Tensor:
    return x if phi is None else phi(x)


def amcl_moco_loss(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    *,
    phi: Callable[[Tensor], Tensor] | None = None,
    beta: float = 0.01,
    tau_min: float = 1e-5,
    tau_max: float = 2.0,
    num_negatives: int = 100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""AMCL (MoCo form): the terms of :func:`amcl_loss` with the negatives from a queue.

    For head ``h``, each direction (anchor ``q_i`` with positive ``k_i``, then ``k_i`` with
    positive ``q_i``) takes as negatives the ``k = min(num_negatives, K)`` queue entries most
    similar to the anchor,

    .. math::
        \ell_i^h = -\frac{s(u_i, v_i)}{\tau_{i+}}
            + \frac{1}{k} \sum_{n \in \mathcal{K}_i} \frac{s(u_i, m_n)}{\tau_{in}}
            + \beta\,\Omega(\tau_{i+})
            - \beta \sum_{n \in \mathcal{K}_i} \big(\log \tau_{in} + \tau_{in}^{-1}\big),

    :math:`\Omega(\tau) = \frac{D}{2}\log\tau + \tau^{-1}`, cosine similarities :math:`s`,
    :math:`\tau = ` :func:`pair_temperature` (``phi`` shared by the heads and directions). The
    pair's value is the mean of its two directions, summed over the heads; both directions
    use the same queue (as the official code).

    The contrastive term is AMCL's linear form (Eq. 2.1: similarity over temperature, no
    log-sum-exp), so with a constant temperature it is *not* MoCo's InfoNCE; what ties it to
    the SimCLR form is that ``amcl_moco_loss`` of one pair with the queue holding the other
    ``2N - 2`` embeddings of the batch equals that pair's :func:`amcl_loss` (tests).

    Args:
        q, k: ``[N, H, D]`` (or ``[N, D]``, one head) query and key embeddings of the two
            views (the keys from the momentum encoder; pass them detached, as MoCo does).
        queue: ``[K, H, D]`` (``[K, D]`` with one-head inputs), ``K >= 1`` negatives per head,
            used as given (a detached buffer in MoCo). The official code stores it as
            ``[H, D, K]``: pass ``queue.permute(2, 0, 1)``.
        phi, beta, tau_min, tau_max, num_negatives: as in :func:`amcl_loss` (same defaults).
        reduction: ``"mean"`` over the ``N`` pairs, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Wang, Koniusz, Gedeon, Zheng, "Adaptive Multi-head Contrastive Learning", ECCV
    2024, arXiv 2310.05615. Formula read from the official code (``AMCLMoCoLoss``).
    """
    _check_amcl(beta=beta, tau_min=tau_min, tau_max=tau_max, num_negatives=num_negatives)
    two_dim = isinstance(q, Tensor) and q.ndim == 2
    q, k = _heads("q", q), _heads("k", k)
    if k.shape != q.shape:
        raise ValueError(f"q and k must have the same shape [N, H, D], got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    want = "[K, D]" if two_dim else "[K, H, D]"
    if (not isinstance(queue, Tensor) or not queue.is_floating_point()
            or queue.ndim != (2 if two_dim else 3)
            or tuple(queue.shape[1:]) != tuple(q.shape[1 + two_dim:])):
        raise ValueError(f"queue must be a float tensor {want} matching q's heads and "
                         f"dimension {tuple(q.shape[1:])}, got "
                         f"{getattr(queue, 'dtype', type(queue))} of shape "
                         f"{tuple(getattr(queue, 'shape', ()))}")
    if queue.shape[0] < 1:
        raise ValueError("queue must hold at least 1 negative embedding, got 0")
    check_same_device(q=q, k=k, queue=queue)
    queue = _heads("queue", queue)
    n, heads, d = q.shape
    dtype = compute_dtype(q.dtype)
    q, k = normalize_rows(q.to(dtype)), normalize_rows(k.to(dtype))
    queue = normalize_rows(queue.to(dtype))
    top = min(num_negatives, queue.shape[0])
    per_pair = torch.zeros(n, dtype=dtype, device=q.device)
    for h in range(heads):
        bank = queue[:, h]
        pb = _phi_of(phi, bank)
        pq, pk = _phi_of(phi, q[:, h]), _phi_of(phi, k[:, h])
        pos_s = (q[:, h] * k[:, h]).sum(-1)
        pos_t = _to_temperature((pq * pk).sum(-1), tau_min, tau_max)
        both = torch.zeros_like(per_pair)
        for anchor, p_anchor in ((q[:, h], pq), (k[:, h], pk)):
            neg_t = _to_temperature(p_anchor @ pb.t(), tau_min, tau_max)
            both = both + _direction(pos_s, pos_t, anchor @ bank.t(), neg_t, k=top, beta=beta,
                                     dim=d)
        per_pair = per_pair + both / 2
    return reduce(per_pair, reduction)


def amcl_simsiam_loss(
    p1: Tensor,
    z2: Tensor,
    p2: Tensor,
    z1: Tensor,
    *,
    phi: Callable[[Tensor], Tensor] | None = None,
    beta: float = 0.01,
    tau_min: float = 1e-5,
    tau_max: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""AMCL (SimSiam form, the paper's Eq. 2.2): SimSiam's negative cosine, each pair with its
    own temperature,

    .. math::
        \ell_i = \sum_h \Big[-\frac{s(p^h_{1i}, \bar z^h_{2i})}{2\tau^h_{1i}}
            - \frac{s(p^h_{2i}, \bar z^h_{1i})}{2\tau^h_{2i}}
            + \beta\,\Omega(\tau^h_{1i}) + \beta\,\Omega(\tau^h_{2i})\Big],

    :math:`\tau^h_{1i} = \tau(p^h_{1i}, \bar z^h_{2i})` (:func:`pair_temperature` on the
    normalised vectors, ``phi`` shared), :math:`\bar z` = stop-gradient (``z1``, ``z2`` are
    detached here, as in SimSiam), :math:`\Omega(\tau) = \frac{D}{2}\log\tau + \tau^{-1}`.
    With one head, ``beta = 0`` and a constant temperature of 1 it is SimSiam's loss
    :math:`-\frac12[s(p_1, \bar z_2) + s(p_2, \bar z_1)]` (tests).

    Args:
        p1, p2: ``[N, H, D]`` (or ``[N, D]``) predictor outputs of views 1 and 2.
        z2, z1: projector outputs of views 2 and 1, same shape (the targets).
        phi, beta, tau_min, tau_max: as in :func:`amcl_loss` (same defaults; the regulariser
            is not halved, as in the official code).
        reduction: ``"mean"`` over the ``N`` samples, ``"sum"``, ``"none"`` (``[N]``).

    Paper: arXiv 2310.05615 (see :func:`amcl_loss`); SimSiam: Chen, He, "Exploring Simple
    Siamese Representation Learning", arXiv 2011.10566. Formula read from the official code
    (``AMCLSimSiamLoss``).
    """
    _check_amcl(beta=beta, tau_min=tau_min, tau_max=tau_max)
    p1 = _heads("p1", p1)
    others = {"z2": _heads("z2", z2), "p2": _heads("p2", p2), "z1": _heads("z1", z1)}
    for name, x in others.items():
        if x.shape != p1.shape:
            raise ValueError(f"{name} must have the shape of p1 {tuple(p1.shape)}, got "
                             f"{tuple(x.shape)}")
    check_same_device(p1=p1, **others)
    n, heads, d = p1.shape
    dtype = compute_dtype(p1.dtype)
    x1, t2 = normalize_rows(p1.to(dtype)), normalize_rows(others["z2"].detach().to(dtype))
    x2, t1 = normalize_rows(others["p2"].to(dtype)), normalize_rows(others["z1"].detach().to(dtype))
    per_sample = torch.zeros(n, dtype=dtype, device=p1.device)
    for h in range(heads):
        for p, z in ((x1[:, h], t2[:, h]), (x2[:, h], t1[:, h])):
            tau = _to_temperature((_phi_of(phi, p) * _phi_of(phi, z)).sum(-1), tau_min, tau_max)
            per_sample = per_sample - 0.5 * (p * z).sum(-1) / tau + beta * _omega(tau, d)
    return reduce(per_sample, reduction)


def amcl_barlow_twins_loss(
    a: Tensor,
    b: Tensor,
    *,
    phi: Callable[[Tensor], Tensor] | None = None,
    beta: float = 1e-4,
    lam: float = 5e-3,
    tau_min: float = 1e-5,
    tau_max: float = 2.0,
    eps: float = 1e-5,
) -> Tensor:
    r"""AMCL (Barlow Twins form, the paper's Eq. 2.3): each entry of the cross-correlation
    matrix gets its own temperature,

    .. math::
        \mathcal{L} = \sum_h \Big[\sum_l \Big(1 - \frac{C^h_{ll}}{\tau^h_{ll}}\Big)^2
            + \lambda \sum_{l \ne m} \frac{(C^h_{lm})^2}{\tau^h_{lm}}
            + \beta \sum_l \Omega(\tau^h_{ll}) - \beta \sum_{l \ne m} \Omega(\tau^h_{lm})\Big],

    :math:`C^h` the ``[D, D]`` cross-correlation of head ``h``'s batch-standardised views,
    :math:`\tau^h_{lm} = \tau_{min} + (\tau_{max} - \tau_{min})\,\sigma(-\langle
    \phi(a^h_{:l}), \phi(b^h_{:m})\rangle)` on the raw *channel vectors* :math:`a^h_{:l} \in
    \mathbb{R}^N` (column ``l`` of the batch, so ``phi`` maps :math:`\mathbb{R}^N \to
    \mathbb{R}^N` and the batch size is fixed by it; the official network is
    ``Linear(N, 128)``, ReLU, ``Linear(128, N)``, shared by the heads),
    :math:`\Omega(\tau) = \frac{D}{2}\log\tau + \tau^{-1}`. With one head, ``beta = 0`` and a
    constant temperature of 1 it is :func:`~losslab.losses.contrastive_ssl.redundancy.
    barlow_twins_loss` (tests).

    Standardisation is our ``barlow_twins``'s (biased variance plus ``eps``, the official
    Barlow Twins code's ``BatchNorm1d``); the AMCL repository divides by the unbiased
    standard deviation plus 1e-9, which scales :math:`C` by about ``(N - 1) / N``.

    Args:
        a, b: ``[N, H, D]`` (or ``[N, D]``) projector outputs of the two views, ``N >= 2``.
        phi: the temperature network on ``[D, N]`` channel vectors; ``None`` = identity.
        beta: regulariser weight (default 1e-4, the official Barlow Twins setting).
        lam: :math:`\lambda` (default 5e-3, Barlow Twins'). tau_min, tau_max: the range
            (default ``1e-5`` and 2). eps: added to the variance (default 1e-5).

    Returns:
        The scalar loss (set-level: no reduction).

    Paper: arXiv 2310.05615 (see :func:`amcl_loss`); Barlow Twins: arXiv 2103.03230. Formula
    read from the official code (``AMCLBarlowTwinsLoss``).
    """
    _check_amcl(beta=beta, lam=lam, tau_min=tau_min, tau_max=tau_max, eps=eps)
    a, b = _heads("a", a), _heads("b", b)
    if b.shape != a.shape:
        raise ValueError(f"a and b must have the same shape [N, H, D], got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    check_same_device(a=a, b=b)
    n, heads, d = a.shape
    if n < 2:
        raise ValueError(f"amcl_barlow_twins needs at least 2 samples in a and b, got {n}")
    dtype = compute_dtype(a.dtype)
    a, b = a.to(dtype), b.to(dtype)
    off = ~torch.eye(d, dtype=torch.bool, device=a.device)
    total = a.new_zeros(())
    for h in range(heads):
        c = cross_correlation(a[:, h], b[:, h], eps=eps)
        xa, xb = _phi_of(phi, a[:, h].t()), _phi_of(phi, b[:, h].t())
        tau = _to_temperature(xa @ xb.t(), tau_min, tau_max)
        diag_c, diag_t = c.diagonal(), tau.diagonal()
        total = total + ((1 - diag_c / diag_t).pow(2).sum()
                         + lam * (c[off].pow(2) / tau[off]).sum()
                         + beta * _omega(diag_t, d).sum() - beta * _omega(tau[off], d).sum())
    return total


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
