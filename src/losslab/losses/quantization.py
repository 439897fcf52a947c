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

Sparse autoencoders (the compression of activations into a sparse code): the reconstruction
objective (``sae_reconstruction``, kind ``regression``; Gao et al., arXiv 2406.04093), TopK-SAE's
aux-k loss for dead latents and the aux-Zipf loss of Ayonrinde (arXiv 2411.02124) for dead and
under-utilised latents (:func:`sae_aux_loss`, with :class:`LatentUsage` for the firing
statistics).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from losslab._core import LossModule, Reduction, check_float, reduce
from losslab._hparams import Real, hparams
from losslab._ops.paired import prepare_paired
from losslab.registry import register

__all__ = ["LatentUsage", "SAEReconstructionLoss", "VQCommitmentLoss", "VectorQuantizer",
           "aux_latents", "aux_zipf_weights", "sae_aux_loss", "sae_reconstruction_loss",
           "synchronized_straight_through", "vq_commitment_loss"]

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


# --------------------------------------------------------------------------------------------
# Sparse autoencoders: the reconstruction objective, TopK-SAE's aux-k and the aux-Zipf loss
# --------------------------------------------------------------------------------------------

SAE_SCALING = "Scaling and evaluating sparse autoencoders"
SAE_ADAPTIVE = ("Adaptive Sparse Allocation with Mutual Choice & Feature Choice Sparse "
                "Autoencoders")

_check_sae = hparams(scale=Real(gt=0, optional=True))


def sae_reconstruction_loss(pred: Tensor, target: Tensor, *, scale: float | None = None,
                            reduction: Reduction = "mean") -> Tensor:
    r"""The sparse-autoencoder reconstruction objective: normalised squared error, per sample.

    .. math::
        \ell_i = s \cdot \tfrac1d \lVert \hat x_i - x_i \rVert^2, \qquad
        s = \Big(\tfrac{1}{N d} \sum_{j} \lVert x_j - \bar x \rVert^2\Big)^{-1}

    so that the ``"mean"`` is the normalised MSE of Gao et al. (the MSE over the MSE of
    predicting the batch mean; 1 for a constant reconstruction at the mean). With ``scale``
    given, :math:`s` is that constant instead (the official TopK-SAE code's ``mse_scale``, one
    over the variance of a sample of the activations, fixed for the run). A batch whose rows are
    all equal has no variance: there :math:`s = 1` (the plain MSE). This is the objective that
    TopK-SAE's aux-k loss and the aux-Zipf loss extend (:func:`sae_aux_loss`).

    Args:
        pred: ``[N, d]`` reconstructions :math:`\hat x` (any ``[N, ...]``: flattened per row).
        target: ``[N, d]`` the activations :math:`x` being encoded.
        scale: the fixed normaliser :math:`s > 0`, or None (default) for the batch's.
        reduction: ``"mean"`` over samples (the normalised MSE), ``"sum"``, ``"none"``
            (``[N]``).

    Paper: Gao et al., "Scaling and evaluating sparse autoencoders", arXiv 2406.04093 (code
    ``openai/sparse_autoencoder``); extended by Ayonrinde, arXiv 2411.02124.
    """
    _check_sae(scale=scale)
    check_float("pred", pred)
    check_float("target", target)
    if pred.ndim == 0 or pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape [N, d], got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    dtype = pred.dtype if pred.dtype not in (torch.float16, torch.bfloat16) else torch.float32
    width = math.prod(pred.shape[1:])
    x_hat = pred.to(dtype).reshape(pred.shape[0], width)
    x = target.to(dtype).reshape(target.shape[0], width)
    err = (x_hat - x).pow(2).mean(1)
    if scale is not None:
        return reduce(err * scale, reduction)
    var = (x - x.mean(0, keepdim=True)).pow(2).mean().detach()
    s = torch.where(var > 0, 1.0 / torch.where(var > 0, var, torch.ones_like(var)),
                    torch.ones_like(var))
    return reduce(err * s, reduction)


@register(
    "sae_reconstruction",
    family="quantization-compression",
    kind="regression",
    paper=SAE_SCALING,
    arxiv="2406.04093",
    summary="||x_hat - x||^2 / d over the batch variance of x (normalised MSE), or times a "
            "fixed scale",
)
class SAEReconstructionLoss(LossModule, function=sae_reconstruction_loss, check=_check_sae):
    """Module form of :func:`sae_reconstruction_loss`."""


def aux_latents(pre_acts: Tensor, candidates: Tensor, k: int) -> Tensor:
    r"""The auxiliary latents of TopK-SAE: per row, the ``k`` largest pre-activations among the
    ``candidates`` (``[F]`` bool, e.g. the dead latents), through a ReLU; zeros elsewhere
    (``[N, F]``). Fewer than ``k`` candidates: all of them."""
    if not isinstance(pre_acts, Tensor) or pre_acts.ndim != 2 or not pre_acts.is_floating_point():
        raise ValueError(f"pre_acts must be a float tensor [N, F], got "
                         f"{getattr(pre_acts, 'shape', type(pre_acts))}")
    f = pre_acts.shape[1]
    if not isinstance(candidates, Tensor) or candidates.dtype != torch.bool or \
            candidates.shape != (f,):
        raise ValueError(f"candidates must be a bool tensor of shape ({f},)")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    width = min(k, int(candidates.sum()))
    out = torch.zeros_like(pre_acts)
    if width == 0:
        return out
    masked = torch.where(candidates, pre_acts, torch.full_like(pre_acts, -torch.inf))
    vals, idx = masked.topk(width, dim=1)
    return out.scatter(1, idx, torch.relu(vals))


def aux_zipf_weights(frequency: Tensor, *, exponent: float = 1.0) -> Tensor:
    r"""Under-utilisation weights ``[F]`` in ``[0, 1]`` for the aux-Zipf loss (an assumption,
    see :func:`sae_aux_loss`): with the latents ranked by their firing frequency
    :math:`f_j` (rank 1 the most frequent), the Zipf expectation at rank :math:`r` is
    :math:`\hat f_r = \big(\sum_j f_j\big)\, r^{-s} / \sum_{q=1}^{F} q^{-s}`, and
    :math:`w_j = \operatorname{clamp}(1 - f_j / \hat f_{r(j)}, 0, 1)`. A dead latent
    (:math:`f_j = 0`) has weight 1; a latent firing at least as often as Zipf's law expects
    has weight 0. All frequencies 0: every weight is 1."""
    if not isinstance(frequency, Tensor) or frequency.ndim != 1 or \
            not frequency.is_floating_point():
        raise ValueError("frequency must be a 1-d float tensor of per-latent firing rates")
    if bool((frequency < 0).any()) or not bool(torch.isfinite(frequency).all()):
        raise ValueError("frequency must be finite and >= 0")
    if not (isinstance(exponent, (int, float)) and exponent > 0):
        raise ValueError(f"exponent must be a number > 0, got {exponent!r}")
    f = frequency.detach().to(torch.float64)
    n = f.shape[0]
    order = torch.argsort(-f, stable=True)
    rank = torch.empty(n, dtype=torch.float64)
    rank[order] = torch.arange(1, n + 1, dtype=torch.float64)
    zipf = rank.pow(-exponent) / torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent).sum()
    expected = f.sum() * zipf
    if float(f.sum()) == 0:
        return torch.ones(n, dtype=frequency.dtype)
    return (1 - f / expected).clamp(0, 1).to(frequency.dtype)


def sae_aux_loss(pre_acts: Tensor, decoder: Tensor, residual: Tensor, *,
                 dead: Tensor | None = None, frequency: Tensor | None = None, k_aux: int = 512,
                 exponent: float = 1.0) -> Tensor:
    r"""TopK-SAE's aux-k loss (``dead=``) or the aux-Zipf loss (``frequency=``).

    **aux-k** (Gao et al., arXiv 2406.04093, as the official ``openai/sparse_autoencoder``
    code): the residual :math:`e = x - \hat x` of the main reconstruction (a constant) is
    reconstructed from the ``k_aux`` largest pre-activations of the *dead* latents,
    :math:`\hat e = W_{dec}^\top \operatorname{TopK}_{aux}(z_{dead})`, and the loss is the
    normalised MSE :math:`\lVert \hat e - e\rVert^2 / \lVert e - \bar e\rVert^2` (0 when no
    latent is dead or the residual has no variance, the code's ``nan_to_num(0)``). Add it to
    :func:`sae_reconstruction_loss` with the paper's weight :math:`\alpha = 1/32`; ``k_aux``
    512 is the paper's (the code's config uses 256); a latent is dead after 10M tokens without
    firing (:class:`LatentUsage`).

    **aux-Zipf** (Ayonrinde, arXiv 2411.02124): "generalises aux_k_loss to mitigate dead and
    underutilised features". Formula from the abstract, not verified against the paper: here
    the candidates are the latents with a positive under-utilisation weight
    :math:`w_j` (:func:`aux_zipf_weights`, firing less often than Zipf's law expects at their
    rank), and each selected latent's activation is scaled by :math:`w_j`. When only dead
    latents are under-utilised (:math:`w \in \{0, 1\}`) it equals aux-k (tested).

    Args:
        pre_acts: ``[N, F]`` the encoder's pre-activations (before TopK).
        decoder: ``[F, d]`` the decoder's rows (latent directions).
        residual: ``[N, d]`` :math:`x - \hat x` (detached here).
        dead: ``[F]`` bool, the dead latents (aux-k). Exactly one of ``dead`` / ``frequency``.
        frequency: ``[F]`` float, each latent's firing rate (aux-Zipf).
        k_aux: the number of auxiliary latents per row (default 512).
        exponent: Zipf's exponent :math:`s` (aux-Zipf; default 1).

    Returns:
        A scalar, connected to ``pre_acts`` and ``decoder`` (zero gradient when it is 0).
    """
    if (dead is None) == (frequency is None):
        raise ValueError("pass exactly one of dead= (aux-k) and frequency= (aux-Zipf)")
    check_float("decoder", decoder)
    check_float("residual", residual)
    if decoder.ndim != 2 or decoder.shape[0] != pre_acts.shape[-1]:
        raise ValueError(f"decoder must have shape [F, d] with F = {pre_acts.shape[-1]}, got "
                         f"{tuple(decoder.shape)}")
    if residual.shape != (pre_acts.shape[0], decoder.shape[1]):
        raise ValueError(f"residual must have shape [{pre_acts.shape[0]}, {decoder.shape[1]}], "
                         f"got {tuple(residual.shape)}")
    if dead is not None:
        latents = aux_latents(pre_acts, dead, k_aux)
    else:
        assert frequency is not None
        w = aux_zipf_weights(frequency, exponent=exponent).to(pre_acts.dtype)
        latents = aux_latents(pre_acts, w > 0, k_aux) * w
    e = residual.detach().to(pre_acts.dtype)
    e_hat = latents @ decoder.to(pre_acts.dtype)
    num = (e_hat - e).pow(2).mean()
    den = (e - e.mean(0, keepdim=True)).pow(2).mean()
    if not bool(latents.ne(0).any()) or float(den) <= 0:
        return (pre_acts * 0).sum() + (decoder * 0).sum()
    return num / den


class LatentUsage(nn.Module):
    """Firing statistics of an SAE's ``F`` latents, kept in buffers (saved by ``state_dict``):
    ``tokens_since_fired`` (the official code's ``stats_last_nonzero``, counted in tokens) and
    ``frequency``, an exponential moving average of each latent's firing rate. ``update(latents
    [N, F])`` after each step; a latent fires on a token when its activation exceeds
    ``threshold`` (1e-3, the code's). ``dead`` are the latents silent for more than
    ``dead_after`` tokens (10M, the paper's)."""

    tokens_since_fired: Tensor
    frequency: Tensor

    def __init__(self, num_latents: int, *, dead_after: int = 10_000_000,
                 momentum: float = 0.99, threshold: float = 1e-3) -> None:
        super().__init__()
        if num_latents < 1 or dead_after < 0 or not 0 <= momentum < 1:
            raise ValueError("num_latents >= 1, dead_after >= 0 and momentum in [0, 1) required")
        self.dead_after, self.momentum, self.threshold = dead_after, momentum, threshold
        self.register_buffer("tokens_since_fired", torch.zeros(num_latents, dtype=torch.long))
        self.register_buffer("frequency", torch.zeros(num_latents))

    @torch.no_grad()
    def update(self, latents: Tensor) -> None:
        if latents.ndim != 2 or latents.shape[1] != self.frequency.shape[0]:
            raise ValueError(f"latents must be [N, {self.frequency.shape[0]}], got "
                             f"{tuple(latents.shape)}")
        fired = latents > self.threshold
        self.tokens_since_fired.add_(latents.shape[0])
        self.tokens_since_fired.masked_fill_(fired.any(0), 0)
        rate = fired.float().mean(0).to(self.frequency.dtype)
        self.frequency.mul_(self.momentum).add_((1 - self.momentum) * rate)

    @property
    def dead(self) -> Tensor:
        return self.tokens_since_fired > self.dead_after
