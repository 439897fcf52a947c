r"""Vector quantisation (family ``quantization-compression``): the VQ commitment / codebook loss
(kind ``paired``) and :class:`VectorQuantizer`, the quantisation layer with the two fixes of
"Straightening Out the Straight-Through Estimator" (Huh, Cheung, Agrawal, Isola, ICML 2023,
arXiv 2305.08842): the **affine re-parameterised codebook** and the **synchronized update**
(the codebook also receives the task gradient through the straight-through estimator).

Why: with the plain straight-through estimator the encoder moves under the task gradient but
the codebook moves only under the commitment loss, so the two drift apart (the paper's
"index collapse" and stale codes). The affine codebook :math:`\tilde C = (1 + \eta s) \odot C +
\eta b` lets one shared scale and shift move every code at once, and the synchronized estimator
:math:`\hat z = z + \mathrm{sg}(z_q - z) + \nu z_q - \mathrm{sg}(\nu z_q)` (value :math:`z_q`)
gives the selected codes :math:`\nu` times the gradient the encoder gets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from losslab._core import LossModule, Reduction, reduce
from losslab._hparams import Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.registry import register

__all__ = ["VQCommitmentLoss", "VectorQuantizer", "synchronized_straight_through",
           "vq_commitment_loss"]

STRAIGHT = ("Straightening Out the Straight-Through Estimator: Overcoming Optimization Challenges "
            "in Vector Quantized Networks")

_check_vq = hparams(beta=Real(ge=0, le=1))


def vq_commitment_loss(a: Tensor, b: Tensor, *, beta: float = 0.95,
                       reduction: Reduction = "mean") -> Tensor:
    r"""The VQ loss between encoder outputs and their selected codes.

    .. math::
        \ell_i = (1 - \beta)\, \overline{\big(z_i - \mathrm{sg}(q_i)\big)^2} +
        \beta\, \overline{\big(\mathrm{sg}(z_i) - q_i\big)^2}

    (the bar: the mean over the :math:`D` features), the commitment term pulling the encoder
    output :math:`z` towards its code and the codebook term pulling the code :math:`q` towards
    the encoder output. Both terms have the value of the mean squared error; they differ in
    which side receives the gradient.

    Args:
        a: ``[N, D]`` encoder outputs :math:`z` (one row per quantised vector).
        b: ``[N, D]`` the selected codes :math:`q` (rows of the codebook, in the graph).
        beta: :math:`\beta \in [0, 1]`, the weight of the codebook term (default 0.95, the
            ``VectorQuant`` default of the authors' ``vqtorch``). VQ-VAE's
            :math:`\lVert \mathrm{sg}(z) - q\rVert^2 + \beta' \lVert z - \mathrm{sg}(q)\rVert^2`
            is this loss times :math:`1 + \beta'` with :math:`\beta = 1 / (1 + \beta')`
            (:math:`\beta' = 0.25` gives 0.8).
        reduction: ``"mean"`` over rows (vqtorch's ``.mean()``), ``"sum"``, ``"none"``.

    Paper: Huh et al., arXiv 2305.08842 (code: ``vqtorch``, ``VectorQuant.compute_loss``).
    """
    _check_vq(beta=beta)
    z, q = prepare_paired(a, b, normalize=False)
    commit = (z - q.detach()).pow(2).mean(1)
    codebook = (z.detach() - q).pow(2).mean(1)
    return reduce((1.0 - beta) * commit + beta * codebook, reduction)


@register(
    "vq_commitment",
    family="quantization-compression",
    kind="paired",
    paper=STRAIGHT,
    arxiv="2305.08842",
    summary="(1 - beta) mean (z - sg q)^2 + beta mean (sg z - q)^2; beta=0.95 (vqtorch)",
    surrogate_gradient="stop-gradients by design: the value is the MSE, the encoder side gets "
    "(1 - beta) and the code side beta of its gradient",
)
class VQCommitmentLoss(LossModule, function=vq_commitment_loss, check=_check_vq):
    """Module form of :func:`vq_commitment_loss`."""


def synchronized_straight_through(z: Tensor, z_q: Tensor, nu: float = 0.0) -> Tensor:
    r"""The straight-through estimator with the synchronized update:
    :math:`z + \mathrm{sg}(z_q - z) + \nu z_q - \mathrm{sg}(\nu z_q)`. The value is
    :math:`z_q`; the gradient reaches :math:`z` unchanged (the plain estimator) and the codes
    :math:`z_q` scaled by :math:`\nu` (``nu=0``: the plain estimator)."""
    out = z + (z_q - z).detach()
    if nu > 0:
        out = out + nu * z_q - (nu * z_q).detach()
    return out


class VectorQuantizer(nn.Module):
    r"""Nearest-code quantisation of ``z[..., D]`` with the affine codebook and the synchronized
    straight-through estimator (the ``VectorQuant`` layer of the authors' ``vqtorch``, one
    group, Euclidean distance).

    ``forward(z)`` returns ``(z_hat, loss, codes)``: ``z_hat`` with the value of the selected
    codes and the gradient of :func:`synchronized_straight_through`, ``loss`` the
    :func:`vq_commitment_loss` (add it to the task loss with a weight; vqtorch's example uses
    10), ``codes`` the indices ``[...]``.

    Args:
        feature_size: :math:`D`. num_codes: :math:`K`.
        beta: the codebook-term weight of :func:`vq_commitment_loss` (default 0.95).
        sync_nu: :math:`\nu \ge 0` of the synchronized update (default 0, vqtorch's; its
            example uses 1.0).
        affine_lr: :math:`\eta \ge 0`; when positive the codebook is
            :math:`(1 + \eta s) \odot C + \eta b` with learnable ``affine_scale`` :math:`s` and
            ``affine_bias`` :math:`b` (``[D]``, zero-initialised, so the start is the plain
            codebook; vqtorch's example uses 10). 0 (default): the plain codebook.

    The codebook starts from a standard normal draw (vqtorch's optional k-means
    initialisation and dead-code replacement are not part of this layer).
    """

    def __init__(self, feature_size: int, num_codes: int, *, beta: float = 0.95,
                 sync_nu: float = 0.0, affine_lr: float = 0.0) -> None:
        super().__init__()
        if feature_size < 1 or num_codes < 1:
            raise ValueError(f"feature_size and num_codes must be >= 1, got {feature_size} and "
                             f"{num_codes}")
        _check_vq(beta=beta)
        if sync_nu < 0 or affine_lr < 0:
            raise ValueError(f"sync_nu and affine_lr must be >= 0, got {sync_nu} and "
                             f"{affine_lr}")
        self.beta, self.sync_nu, self.affine_lr = float(beta), float(sync_nu), float(affine_lr)
        self.codebook = nn.Parameter(torch.randn(num_codes, feature_size))
        if affine_lr > 0:
            self.affine_scale = nn.Parameter(torch.zeros(feature_size))
            self.affine_bias = nn.Parameter(torch.zeros(feature_size))

    def effective_codebook(self) -> Tensor:
        """The codebook the layer quantises with (after the affine map, when enabled)."""
        if self.affine_lr > 0:
            return (1.0 + self.affine_lr * self.affine_scale) * self.codebook + \
                self.affine_lr * self.affine_bias
        return self.codebook

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d = self.codebook.shape[1]
        if not z.is_floating_point() or z.ndim < 1 or z.shape[-1] != d:
            raise ValueError(f"z must be a float tensor [..., {d}] (feature_size last), got "
                             f"{z.dtype} of shape {tuple(z.shape)}")
        flat = z.reshape(-1, d)
        book = self.effective_codebook().to(flat.dtype)
        with torch.no_grad():
            codes = torch.cdist(flat, book).argmin(dim=1)
        z_q = book[codes]
        loss = vq_commitment_loss(flat, z_q, beta=self.beta)
        z_hat = synchronized_straight_through(flat, z_q, self.sync_nu)
        return z_hat.reshape(z.shape), loss, codes.reshape(z.shape[:-1])
