"""MAR's Diffusion Loss: a per-token denoising loss that replaces cross-entropy over a codebook.

Li, Tian, Li, Deng, He, "Autoregressive Image Generation without Vector Quantization",
arXiv 2406.11838. An autoregressive (or masked autoregressive) model produces a vector ``z``
per token; a small denoising MLP conditioned on ``z`` models ``p(x | z)`` of the continuous
token ``x`` by diffusion. Training minimises the epsilon-prediction loss of that MLP at a
random timestep; the gradient reaches both the MLP and (through ``z``) the backbone.

Kind ``regression``: ``loss(z[..., Dz], target[..., Dt], *, weights=None)`` -- ``z`` is the
backbone's output (the prediction, differentiable), ``target`` the ground-truth token (e.g.
the latent of a frozen VAE, no gradient), ``weights`` the per-token mask (MAR trains on the
masked tokens only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import (
    LossModule,
    Reduction,
    check_float,
    check_same_device,
    compute_dtype,
    reduce,
)
from losslab._hparams import Int, hparams
from losslab._ops.draws import generator_key, generator_of, register_ordered
from losslab.registry import register

__all__ = [
    "MARDenoiser",
    "MARDiffusionLoss",
    "cosine_alpha_bar",
    "mar_diffusion_loss",
    "timestep_embedding",
]

#: Offset ``s`` of the cosine schedule (Nichol & Dhariwal, arXiv 2102.09672) and the cap on
#: each step's beta, as in the guided-diffusion code that MAR trains with.
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def cosine_alpha_bar(diffusion_steps: int, *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> Tensor:
    r"""The cosine noise schedule's :math:`\bar\alpha_t`, ``t = 0 .. T-1`` (``[T]``).

    .. math::
        f(u) = \cos^2\!\Big(\frac{u + s}{1 + s}\,\frac{\pi}{2}\Big),\quad
        \beta_t = \min\!\Big(1 - \frac{f((t+1)/T)}{f(t/T)},\ 0.999\Big),\quad
        \bar\alpha_t = \prod_{i \le t} (1 - \beta_i)

    with ``s = 0.008`` (improved DDPM, arXiv 2102.09672; the schedule MAR, arXiv 2406.11838,
    trains with: ``noise_schedule="cosine"``, 1000 steps). Index ``t = 0`` already carries
    one step of noise, ``t = T - 1`` is almost pure noise.
    """
    u = torch.arange(diffusion_steps + 1, dtype=dtype, device=device) / diffusion_steps
    f = torch.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * (math.pi / 2)).pow(2)
    betas = (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)
    return torch.cumprod(1 - betas, 0)


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[M, dim]`` of (integer or fractional) timesteps ``t[M]``:
    ``cos(t f_k), sin(t f_k)`` with frequencies ``f_k = max_period^(-k / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _AdaLNBlock(nn.Module):
    """Residual MLP block whose LayerNorm output is shifted, scaled and gated by the
    condition (adaLN, as in DiT and MAR's denoiser)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class MARDenoiser(nn.Module):
    """The small denoising MLP of MAR's Diffusion Loss: ``eps_hat = net(x_t, t, z)``.

    Input projection of ``x_t``, sinusoidal timestep embedding (256 frequencies) through a
    two-layer MLP, a linear embedding of the condition ``z`` added to it, ``depth`` adaLN
    residual blocks of ``width`` channels and an adaLN output layer. As in the paper's code,
    the modulation layers and the output layer start at zero, so the initial prediction is 0.

    Args:
        token_dim: channels of a token ``x`` (16 for MAR's KL-16 tokenizer).
        cond_dim: channels of the condition ``z`` (the backbone's width).
        width: channels of the MLP (1024 in the paper).
        depth: residual blocks (3 in the paper).
    """

    FREQUENCIES: ClassVar[int] = 256

    def __init__(self, *, token_dim: int, cond_dim: int, width: int = 1024,
                 depth: int = 3) -> None:
        super().__init__()
        self.input_proj = nn.Linear(token_dim, width)
        self.time_embed = nn.Sequential(nn.Linear(self.FREQUENCIES, width), nn.SiLU(),
                                        nn.Linear(width, width))
        self.cond_embed = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(_AdaLNBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.output = nn.Linear(width, token_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linear layers with zero biases, N(0, 0.02) timestep MLP, and zero
        modulation and output layers (the initialisation of the paper's code)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for i in (0, 2):
            layer = self.time_embed[i]
            assert isinstance(layer, nn.Linear)
            nn.init.normal_(layer.weight, std=0.02)
        zero = [b.modulation[-1] for b in self.blocks]  # type: ignore[union-attr]
        for m in (*zero, self.final_modulation[-1], self.output):
            assert isinstance(m, nn.Linear)
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        h = self.input_proj(x)
        c = self.time_embed(timestep_embedding(t, self.FREQUENCIES).to(h.dtype))
        c = c + self.cond_embed(z)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.output(self.final_norm(h) * (1 + scale) + shift)


Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]

_check_mar = hparams(diffusion_steps=Int(ge=1), timesteps_per_token=Int(ge=1),
                     token_dim=Int(ge=1), cond_dim=Int(ge=1), width=Int(ge=1),
                     depth=Int(ge=0), seed=Int(ge=0, optional=True))


def _denoiser_dtype(denoiser: Denoiser, default: torch.dtype) -> torch.dtype:
    if isinstance(denoiser, nn.Module):
        for p in denoiser.parameters():
            return p.dtype
    return default


# --------------------------------------------------------------------------------------------
# The random draws: the same numbers compiled and eager (the custom op losslab::mar_draw,
# ordered-effectful, the generator by key: losslab._ops.draws)
# --------------------------------------------------------------------------------------------


def _draw_eagerly(steps: int, t_shape: tuple[int, ...], eps_shape: tuple[int, ...],
                  dtype: torch.dtype, device: torch.device,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The timesteps, then the noise, drawn from ``generator`` (default: torch's global
    generator of ``device``) on the generator's device and moved to ``device``."""
    where = generator.device if generator is not None else device
    t = torch.randint(0, steps, t_shape, generator=generator, device=where)
    eps = torch.randn(eps_shape, generator=generator, dtype=dtype, device=where)
    return t.to(device), eps.to(device)


@torch.library.custom_op("losslab::mar_draw", mutates_args=())
def _mar_draw(like: Tensor, steps: int, k: int, generator: int) -> tuple[Tensor, Tensor]:
    """``t [k, ...]`` (int64) and ``eps [k, ..., Dt]`` (``like``'s dtype) for the tokens
    ``like [..., Dt]`` (only its shape, dtype and device are read), drawn eagerly from the
    generator of key ``generator`` (0: torch's default generator of ``like``'s device)."""
    gen = generator_of(generator, "losslab::mar_draw")
    lead = tuple(like.shape[:-1])
    return _draw_eagerly(steps, (k, *lead), (k, *like.shape), like.dtype, like.device, gen)


@_mar_draw.register_fake
def _mar_draw_fake(like: Tensor, steps: int, k: int, generator: int) -> tuple[Tensor, Tensor]:
    return (like.new_empty((k, *like.shape[:-1]), dtype=torch.long),
            like.new_empty((k, *like.shape)))


#: An ordered side effect: each call kept, in order, never merged or recomputed.
_ORDERED = register_ordered(_mar_draw)

#: Older torch only (no effectful custom ops): the draws run eagerly under compile, through a
#: graph break, rather than as an op that a pass could deduplicate.
_draw_through_a_break = cast(Callable[..., tuple[Tensor, Tensor]],
                             torch.compiler.disable(_draw_eagerly))


def _draw(steps: int, k: int, x: Tensor,
          generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``t [k, ...]`` and ``eps [k, ..., Dt]`` for the tokens ``x [..., Dt]``: the same
    numbers from the same generator, eager or compiled."""
    if not torch.compiler.is_compiling():
        lead = tuple(x.shape[:-1])
        return _draw_eagerly(steps, (k, *lead), (k, *x.shape), x.dtype, x.device, generator)
    if not _ORDERED:  # pragma: no cover - older torch
        lead = tuple(x.shape[:-1])
        return _draw_through_a_break(steps, (k, *lead), (k, *x.shape), x.dtype, x.device,
                                     generator)
    return _mar_draw(x.detach(), steps, k, generator_key(generator))


def mar_diffusion_loss(
    z: Tensor,
    target: Tensor,
    *,
    denoiser: Denoiser,
    weights: Tensor | None = None,
    diffusion_steps: int = 1000,
    timesteps_per_token: int = 4,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""MAR's Diffusion Loss: epsilon-prediction error of a denoiser conditioned on ``z``.

    For each token ``x`` (``target``) with condition ``z``, and each of
    ``timesteps_per_token`` independent draws of a timestep ``t ~ U{0, ..., T-1}`` and noise
    :math:`\varepsilon \sim \mathcal N(0, I)`:

    .. math::
        x_t = \sqrt{\bar\alpha_t}\,x + \sqrt{1 - \bar\alpha_t}\,\varepsilon,\qquad
        \mathcal L(z, x) = \mathbb E_{\varepsilon, t}\,
        \big\|\varepsilon - \varepsilon_\theta(x_t \mid t, z)\big\|^2

    (eq. 2 of the paper), with the cosine schedule :func:`cosine_alpha_bar` of ``T =
    diffusion_steps`` steps. A token's value is the mean over its ``Dt`` channels and its
    ``timesteps_per_token`` draws (the paper's code averages the squared error over channels
    and repeats every token 4 times, ``diffusion_batch_mul=4``).

    Random draws, in this order: the timesteps ``t`` (``torch.randint``, shape ``[k, ...]``
    with ``k = timesteps_per_token`` and ``...`` the token dims), then ``eps`` (``torch.randn``,
    ``[k, ..., Dt]``), both from ``generator`` (default: torch's global generator).
    Under ``torch.compile`` (no graph break) the draws are the custom op
    ``losslab::mar_draw``, which makes them eagerly: after the same ``torch.manual_seed``
    (or from a generator in the same state) compiled and eager runs draw the same numbers in
    the same order.

    Not included: the paper's code also learns the reverse-process variance with improved
    DDPM's variational-bound term (a second output head); this loss is the paper's
    epsilon-prediction objective only.

    Args:
        z: ``[..., Dz]`` conditions from the backbone (one per token; differentiable).
        target: ``[..., Dt]`` ground-truth tokens (same leading dims as ``z``).
        denoiser: ``eps_hat = denoiser(x_t[M, Dt], t[M] int64, z[M, Dz])`` (e.g.
            :class:`MARDenoiser`); the module form owns one.
        weights: optional ``[...]`` per-token weights (MAR's mask of the tokens to predict).
        diffusion_steps: ``T`` of the training schedule (1000 in the paper).
        timesteps_per_token: independent ``(t, eps)`` draws per token (4 in the paper).
        generator: random generator of the draws.
        reduction: ``"mean"`` over tokens (weighted by ``weights``: the paper's masked mean),
            ``"sum"``, or ``"none"`` (the per-token loss, shape ``[...]``).

    Returns:
        The loss, float32 for half inputs.

    Paper: Li, Tian, Li, Deng, He, "Autoregressive Image Generation without Vector
    Quantization", arXiv 2406.11838; defaults (T = 1000, cosine schedule, 4 draws per token)
    from the authors' code.
    """
    _check_mar(diffusion_steps=diffusion_steps, timesteps_per_token=timesteps_per_token)
    check_float("z", z)
    check_float("target", target)
    if z.ndim < 2 or target.ndim < 2:
        raise ValueError(f"z and target must have shape [..., D] (at least [N, D]), got "
                         f"{tuple(z.shape)} and {tuple(target.shape)}")
    if z.shape[:-1] != target.shape[:-1]:
        raise ValueError(f"z and target must have the same leading (token) dims, got "
                         f"{tuple(z.shape)} and {tuple(target.shape)}")
    check_same_device(z=z, target=target)
    lead = tuple(target.shape[:-1])
    if weights is not None:
        check_float("weights", weights)
        if tuple(weights.shape) != lead:
            raise ValueError(f"weights must have shape {list(lead)} (one per token), got "
                             f"{tuple(weights.shape)}")
    dtype = compute_dtype(z.dtype)
    x = target.to(dtype)
    cond = z.to(dtype)
    k = timesteps_per_token
    t, eps = _draw(diffusion_steps, k, x, generator)
    alpha_bar = cosine_alpha_bar(diffusion_steps, dtype=dtype, device=x.device)[t]
    a = alpha_bar.unsqueeze(-1)
    x_t = a.sqrt() * x + (1 - a).sqrt() * eps
    net_dtype = _denoiser_dtype(denoiser, dtype)
    d_t, d_z = x.shape[-1], cond.shape[-1]
    cond_k = cond.unsqueeze(0).expand(k, *cond.shape)
    eps_hat = denoiser(x_t.reshape(-1, d_t).to(net_dtype), t.reshape(-1),
                       cond_k.reshape(-1, d_z).to(net_dtype))
    if tuple(eps_hat.shape) != (k * math.prod(lead), d_t):
        raise ValueError(f"denoiser must return eps_hat of shape [M, {d_t}], got "
                         f"{tuple(eps_hat.shape)}")
    err = (eps - eps_hat.to(dtype).reshape(eps.shape)).pow(2).mean(-1)  # [k, ...]
    per_token = err.mean(0)
    w = None if weights is None else weights.to(dtype)
    return reduce(per_token, reduction, weights=w)


@register(
    "mar_diffusion", family="generative", kind="regression",
    paper="Autoregressive Image Generation without Vector Quantization", arxiv="2406.11838",
    summary="E_{t,eps} ||eps - eps_theta(sqrt(abar_t) x + sqrt(1 - abar_t) eps | t, z)||^2, "
    "a learnable denoising MLP conditioned on z (cosine schedule)",
    reduction="per token",
    example_hparams={"token_dim": 3, "cond_dim": 3, "width": 8, "depth": 1},
)
class MARDiffusionLoss(LossModule, function=mar_diffusion_loss, check=_check_mar):
    """Module form of :func:`mar_diffusion_loss`: owns the denoiser (:class:`MARDenoiser`, a
    learnable module -- optimise its parameters with the backbone's).

    ``forward(z, target, *, weights=None)``. ``seed`` (module-only) makes the draws of ``t``
    and ``eps`` reproducible with a generator of the module's own; by default they come from
    torch's global generator.
    """

    function_only: ClassVar[tuple[str, ...]] = ("denoiser", "generator")

    def __init__(self, *, token_dim: int = 16, cond_dim: int = 1024, width: int = 1024,
                 depth: int = 3, diffusion_steps: int = 1000, timesteps_per_token: int = 4,
                 seed: int | None = None, reduction: Reduction = "mean") -> None:
        _check_mar(token_dim=token_dim, cond_dim=cond_dim, width=width, depth=depth, seed=seed)
        super().__init__(diffusion_steps=diffusion_steps,
                         timesteps_per_token=timesteps_per_token, reduction=reduction)
        self.config = {"token_dim": token_dim, "cond_dim": cond_dim, "width": width,
                       "depth": depth, "seed": seed}
        self.denoiser = MARDenoiser(token_dim=token_dim, cond_dim=cond_dim, width=width,
                                    depth=depth)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, z: Tensor, target: Tensor, *, weights: Tensor | None = None) -> Tensor:
        return mar_diffusion_loss(z, target, denoiser=self.denoiser, weights=weights,
                                  generator=self.generator, **self.call_kwargs())
