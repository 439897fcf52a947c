"""iSogCLR: the robust global contrastive loss with one learned temperature per sample.

Stateful (kind ``paired`` with ``index=``): per dataset sample ``i`` the module keeps the
moving-average estimate ``u_i`` of the negatives' mean exponential, the temperature
``tau_i`` and the momentum of its gradient, in registered buffers (``state_dict()`` saves
them). The update follows the authors' LibAUC implementation (``GCLoss_v1`` with
``enable_isogclr=True``, unimodal, both views as negatives).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losslab._core import LossModule, Reduction, reduce, require
from losslab._hparams import Flag, Int, Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.losses.contrastive_ssl._common import two_view_logits
from losslab.registry import register

__all__ = ["ISogCLRLoss", "isogclr_loss"]


def _tau_bounds(**values: object) -> None:
    lo, hi = values.get("tau_min"), values.get("tau_max")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
        raise ValueError(f"tau_min must be <= tau_max, got {lo} and {hi}")
    t = values.get("temperature")
    if (isinstance(t, (int, float)) and isinstance(lo, (int, float))
            and isinstance(hi, (int, float)) and not lo <= t <= hi):
        raise ValueError(f"temperature (the initial tau) must be in [tau_min, tau_max] = "
                         f"[{lo}, {hi}], got {t}")


_check_isogclr = hparams(
    _tau_bounds,
    num_samples=Int(ge=1, optional=True), temperature=Real(gt=0), gamma=Real(gt=0, le=1),
    rho=Real(ge=0), eta=Real(ge=0), beta=Real(ge=0, le=1), tau_min=Real(gt=0),
    tau_max=Real(gt=0), update=Flag(), normalize=Flag(),
)


def _check_index(index: Tensor | None, n: int, num_samples: int) -> Tensor:
    if index is None:
        raise ValueError("isogclr needs index= (the dataset ids of the batch, LongTensor [N])")
    if not isinstance(index, Tensor) or index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError("index must be an integer tensor of dataset ids")
    if index.shape != (n,):
        raise ValueError(f"index must have shape [{n}] (one id per row of a), got "
                         f"{tuple(index.shape)}")
    require((index >= 0) & (index < num_samples), lambda: (  # no graph break under compile
        f"index must hold dataset ids in [0, {num_samples}), got values in "
        f"[{int(index.min())}, {int(index.max())}]"))
    return index.long()


def isogclr_loss(
    a: Tensor,
    b: Tensor,
    *,
    index: Tensor | None = None,
    u: Tensor | None = None,
    tau: Tensor | None = None,
    tau_grad: Tensor | None = None,
    num_samples: int | None = None,
    temperature: float = 0.1,
    gamma: float = 0.9,
    rho: float = 0.3,
    eta: float = 0.01,
    beta: float = 0.9,
    tau_min: float = 0.05,
    tau_max: float = 0.7,
    update: bool = True,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""iSogCLR: the robust global contrastive loss with individualised temperatures.

    The objective (the paper's RGCL, DRO over each anchor's negatives with a KL constraint
    :math:`\rho`):

    .. math::
        F(w, \tau) = \frac1n \sum_i \Big[\tau_i \log \mathbb{E}_{z \in S_i^-}
            \exp\frac{h_i(z)}{\tau_i} + \tau_i \rho\Big], \quad
        h_i(z) = s(x_i, z) - s(x_i, x_i^+)

    optimised with a moving average :math:`u_i \approx \mathbb{E}_{S_i^-} e^{s/\tau_i}` per
    sample (no large batch needed). Per visit of sample ``i`` (both views are anchors; the
    ``2N - 2`` other embeddings are its negatives, :math:`m = 2(N - 1)`):

    1. :math:`g_i = \frac1m \sum_{z} e^{s(x_i, z)/\tau_i}`,
       :math:`u_i \leftarrow (1 - \gamma) u_i + \gamma g_i` (:math:`u_i = g_i` on the first
       visit, ``u[index] == 0``), computed per view; the stored :math:`u_i` is the mean of
       the two views' estimates;
    2. the loss whose gradient is the paper's estimator, with weights
       :math:`w_{iz} = e^{s(x_i, z)/\tau_i} / u_i` held constant:
       :math:`\ell_i = -s(x_i, x_i^+) + \frac1m \sum_z w_{iz}\, s(x_i, z)`, summed over the
       two views (as LibAUC);
    3. the temperature step :math:`\nabla_{\tau_i} = \log u_i + \rho - \frac1m \sum_z w_{iz}
       s(x_i, z)/\tau_i` (mean of the views), with momentum :math:`\beta`:
       :math:`m_i \leftarrow (1 - \beta) m_i + \beta \nabla_{\tau_i}`,
       :math:`\tau_i \leftarrow \mathrm{clip}(\tau_i - \eta m_i, [\tau_{min}, \tau_{max}])`.

    The value is therefore a surrogate: its gradient with respect to the embeddings is the
    algorithm's stochastic gradient of :math:`F`, not the derivative of the value itself
    (the weights are constants of the step).

    Args:
        a, b: ``[N, D]`` two views of the batch (``N >= 2``).
        index: ``[N]`` dataset ids in ``[0, num_samples)`` (required with state).
        u, tau, tau_grad: ``[num_samples]`` state buffers (the module passes its own); ``None``
            (all three): every sample is on its first visit with :math:`\tau_i` =
            ``temperature`` and nothing is stored.
        num_samples: the dataset size (the buffers' length).
        temperature: initial :math:`\tau_i` (default 0.1). gamma: :math:`\gamma` of the moving
            average (0.9). rho: :math:`\rho` (0.3, LibAUC's unimodal default). eta: the
            temperature step (0.01). beta: its momentum (0.9). tau_min, tau_max: the clip range
            of :math:`\tau_i` (0.05, 0.7).
        update: write ``u``, ``tau`` and ``tau_grad`` (False: evaluate with the stored state).
        normalize: L2-normalise first (default True).
        reduction: ``"mean"`` over the batch, ``"sum"``, ``"none"`` (``[N]``, the two views'
            sum per sample).

    Paper: Qiu, Hu, Yuan, Zhou, Zhang, Yang, "Not All Semantics are Created Equal: Contrastive
    Self-supervised Learning with Automatic Temperature Individualization", arXiv 2305.11965;
    defaults and update order from the authors' LibAUC (``GCLoss_v1``).
    """
    _check_isogclr(num_samples=num_samples, temperature=temperature, gamma=gamma, rho=rho,
                   eta=eta, beta=beta, tau_min=tau_min, tau_max=tau_max, update=update,
                   normalize=normalize)
    a, b = prepare_paired(a, b, normalize=normalize)
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"isogclr needs at least 2 pairs in a and b (the negatives), got {n}")
    state = (u, tau, tau_grad)
    if any(s is not None for s in state):
        if any(s is None for s in state):
            raise ValueError("u, tau and tau_grad must be given together (the module's state)")
        assert u is not None and tau is not None and tau_grad is not None
        size = u.shape[0]
        for name, s in (("u", u), ("tau", tau), ("tau_grad", tau_grad)):
            if s.shape != (num_samples if num_samples is not None else size,):
                raise ValueError(f"{name} must have shape [{num_samples or size}] "
                                 f"(num_samples), got {tuple(s.shape)}")
        idx = _check_index(index, n, size)
    else:
        idx = None
        if index is not None and num_samples is not None:
            _check_index(index, n, num_samples)
    logits, positive, negative = two_view_logits(a, b, torch.ones((), dtype=a.dtype,
                                                                  device=a.device),
                                                 "both", normalize=False)
    m = 2 * (n - 1)
    with torch.no_grad():
        if idx is None:
            tau_i = torch.full((n,), float(temperature), dtype=a.dtype, device=a.device)
            u_old = torch.zeros(n, dtype=a.dtype, device=a.device)
        else:
            assert tau is not None and u is not None
            tau_i = tau[idx].to(a.device, a.dtype)
            u_old = u[idx].to(a.device, a.dtype)
        t2 = torch.cat([tau_i, tau_i]).unsqueeze(1)
        e = torch.exp(logits.detach() / t2) * negative
        g = e.sum(1) / m
        u2 = torch.cat([u_old, u_old])
        u_new = torch.where(u2 > 0, (1 - gamma) * u2 + gamma * g, g)
        w = e / u_new.clamp_min(1e-8).unsqueeze(1)
    pos = logits.gather(1, positive.unsqueeze(1)).squeeze(1)
    per_anchor = -pos + (w * logits).sum(1) / m
    if update and idx is not None:
        assert u is not None and tau is not None and tau_grad is not None
        with torch.no_grad():
            grad = torch.log(u_new) + rho - (w * logits.detach() / t2).sum(1) / m
            grad = (grad[:n] + grad[n:]) / 2
            u[idx] = ((u_new[:n] + u_new[n:]) / 2).to(u.dtype).to(u.device)
            mom = (1 - beta) * tau_grad[idx].to(grad) + beta * grad
            tau_grad[idx] = mom.to(tau_grad.dtype).to(tau_grad.device)
            new_tau = (tau_i - eta * mom).clamp(tau_min, tau_max)
            tau[idx] = new_tau.to(tau.dtype).to(tau.device)
    return reduce(per_anchor[:n] + per_anchor[n:], reduction)


@register(
    "isogclr", family="contrastive-ssl", kind="paired",
    paper="Not All Semantics are Created Equal: Contrastive Self-supervised Learning with "
    "Automatic Temperature Individualization", arxiv="2305.11965",
    summary="robust global contrastive loss, per-sample tau_i (learned by DRO) and moving "
    "average u_i, by index", needs_index=True, example_hparams={"num_samples": 64},
    peers=("libauc.losses.GCLoss_v1",), reduction="per pair",
    surrogate_gradient="the weights exp(s/tau_i)/u_i are constants of the step (the paper's "
    "moving-average gradient estimator); the value is the surrogate, not F",
)
class ISogCLRLoss(LossModule, function=isogclr_loss, check=_check_isogclr):
    """Module form of :func:`isogclr_loss`; keeps ``u``, ``tau`` (the per-sample temperatures)
    and ``tau_grad`` in buffers of length ``num_samples`` (saved by ``state_dict()``).
    ``forward(a, b, *, index)``; in ``eval()`` mode the state is not updated.

    ``num_samples`` (the dataset size) is required here; it defaults to ``None`` only because
    it is optional in the function (which then keeps no state).
    """

    function_only = ("u", "tau", "tau_grad", "update")
    u: Tensor
    tau: Tensor
    tau_grad: Tensor

    def __init__(
        self,
        *,
        num_samples: int | None = None,
        temperature: float = 0.1,
        gamma: float = 0.9,
        rho: float = 0.3,
        eta: float = 0.01,
        beta: float = 0.9,
        tau_min: float = 0.05,
        tau_max: float = 0.7,
        normalize: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        if num_samples is None:
            raise ValueError("isogclr needs num_samples (the dataset size: one temperature per "
                             "sample)")
        super().__init__(num_samples=num_samples, temperature=temperature, gamma=gamma,
                         rho=rho, eta=eta, beta=beta, tau_min=tau_min, tau_max=tau_max,
                         normalize=normalize, reduction=reduction)
        self.register_buffer("u", torch.zeros(num_samples))
        self.register_buffer("tau", torch.full((num_samples,), float(temperature)))
        self.register_buffer("tau_grad", torch.zeros(num_samples))

    def forward(self, a: Tensor, b: Tensor, *, index: Tensor | None = None) -> Tensor:
        return isogclr_loss(a, b, index=index, u=self.u, tau=self.tau, tau_grad=self.tau_grad,
                            update=self.training, **self.call_kwargs())
