"""Tests of MAR's Diffusion Loss (losslab.losses.generative.mar).

Peer: diffusers' DDPMScheduler (``squaredcos_cap_v2``, the same cosine schedule) for the
schedule and the noising. Oracle: the cosine schedule as a running product of (1 - beta_t)
and the loss as a Python loop over tokens and draws in float64 (the same random draws,
re-drawn from a generator of the same seed in the documented order). Properties: the loss is
exactly 0 for the ideal denoiser of a known token, the mask (weights) removes a token from
value and gradient, the module owns a learnable denoiser that starts at a zero prediction and
learns, the defaults are the paper's.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import losslab
from losslab.functional import mar_diffusion_loss
from losslab.losses.generative.mar import MARDenoiser, MARDiffusionLoss, cosine_alpha_bar

D = torch.float64
close = torch.testing.assert_close


def _cosine_loop(T: int) -> list[float]:
    f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
    out, prod = [], 1.0
    for i in range(T):
        beta = min(1.0 - f[i + 1] / f[i], 0.999)
        prod *= 1.0 - beta
        out.append(prod)
    return out


def _denoiser(token_dim: int = 3, cond_dim: int = 4, seed: int = 0) -> MARDenoiser:
    torch.manual_seed(seed)
    net = MARDenoiser(token_dim=token_dim, cond_dim=cond_dim, width=8, depth=2).double()
    with torch.no_grad():  # leave the zero initialisation: a non-trivial denoiser
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def test_cosine_schedule_matches_the_running_product() -> None:
    for T in (10, 1000):
        close(cosine_alpha_bar(T), torch.tensor(_cosine_loop(T), dtype=D))
    ab = cosine_alpha_bar(1000)
    assert bool((ab[1:] < ab[:-1]).all()) and 0.9999 < float(ab[0]) < 1.0
    assert float(ab[-1]) < 1e-6


def test_cosine_schedule_and_noising_match_the_diffusers_peer() -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ab = cosine_alpha_bar(1000)
    close(sched.alphas_cumprod.double(), ab, atol=2e-6, rtol=0)  # the peer is float32
    x, eps = torch.randn(6, 3, dtype=D), torch.randn(6, 3, dtype=D)
    t = torch.tensor([0, 10, 250, 500, 900, 999])
    a = ab[t].unsqueeze(1)
    close(sched.add_noise(x.float(), eps.float(), t).double(), a.sqrt() * x + (1 - a).sqrt() * eps,
          atol=1e-5, rtol=1e-5)


def test_oracle_loop_same_draws() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 4, generator=g, dtype=D)
    x = torch.randn(5, 3, generator=g, dtype=D)
    w = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5], dtype=D)
    net = _denoiser()
    T, k = 50, 3
    out = mar_diffusion_loss(z, x, denoiser=net, diffusion_steps=T, timesteps_per_token=k,
                             generator=torch.Generator().manual_seed(11), reduction="none")
    # re-draw in the documented order: t [k, N], then eps [k, N, Dt]
    g2 = torch.Generator().manual_seed(11)
    t = torch.randint(0, T, (k, 5), generator=g2)
    eps = torch.randn(k, 5, 3, generator=g2, dtype=D)
    ab = _cosine_loop(T)
    ref = []
    for n in range(5):
        total = 0.0
        for j in range(k):
            a = ab[int(t[j, n])]
            xt = [math.sqrt(a) * float(x[n, c]) + math.sqrt(1 - a) * float(eps[j, n, c])
                  for c in range(3)]
            with torch.no_grad():
                pred = net(torch.tensor([xt], dtype=D), t[j, n:n + 1], z[n:n + 1])[0]
            total += sum((float(eps[j, n, c]) - float(pred[c])) ** 2 for c in range(3)) / 3
        ref.append(total / k)
    close(out, torch.tensor(ref, dtype=D))
    mean = mar_diffusion_loss(z, x, denoiser=net, weights=w, diffusion_steps=T,
                              timesteps_per_token=k, generator=torch.Generator().manual_seed(11))
    close(mean, sum(r * float(wi) for r, wi in zip(ref, w)) / float(w.sum()) * torch.ones((),
          dtype=D))


def test_ideal_denoiser_of_a_known_token_gives_zero() -> None:
    T = 1000
    ab = cosine_alpha_bar(T)

    def ideal(x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        a = ab[t].unsqueeze(1)
        return (x_t - a.sqrt() * z) / (1 - a).sqrt()

    x = torch.randn(2, 6, 3, dtype=D)
    out = mar_diffusion_loss(x, x, denoiser=ideal, reduction="none")
    assert out.shape == (2, 6)
    close(out, torch.zeros(2, 6, dtype=D), atol=1e-10, rtol=0)


def test_masked_tokens_get_no_gradient() -> None:
    net = _denoiser()
    z = torch.randn(4, 4, dtype=D, requires_grad=True)
    x = torch.randn(4, 3, dtype=D)
    w = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=D)
    mar_diffusion_loss(z, x, denoiser=net, weights=w).backward()
    assert z.grad is not None
    assert torch.count_nonzero(z.grad[[1, 3]]) == 0
    assert torch.count_nonzero(z.grad[[0, 2]]) > 0


def test_module_owns_a_learnable_denoiser() -> None:
    m = losslab.create("mar_diffusion", token_dim=3, cond_dim=4, width=8, depth=1)
    names = {n for n, _ in m.named_parameters()}
    assert any(n.startswith("denoiser.") for n in names)
    z = torch.randn(5, 4, requires_grad=True)
    m(z, torch.randn(5, 3)).backward()
    assert isinstance(m, MARDiffusionLoss)
    out = m.denoiser.output.weight.grad  # zero-initialised output layer: gets a gradient
    assert out is not None and torch.count_nonzero(out) > 0


@pytest.mark.slow
def test_module_owns_a_learnable_denoiser_that_learns() -> None:
    torch.manual_seed(0)
    m = losslab.create("mar_diffusion", token_dim=2, cond_dim=4, width=32, depth=2, seed=0)
    assert isinstance(m, MARDiffusionLoss)
    params = list(m.parameters())
    assert params and all(p.requires_grad for p in params)
    z = torch.randn(64, 4)
    x = torch.tanh(z[:, :2] * 2)  # the token is a function of its condition
    with torch.no_grad():
        start = float(m(z, x))
    assert abs(start - 1.0) < 0.25  # zero initial prediction: E||eps||^2 / Dt = 1
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = m(z, x)
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = sum(float(m(z, x)) for _ in range(5)) / 5
    assert end < 0.6 * start


def test_seed_makes_draws_reproducible() -> None:
    a = losslab.create("mar_diffusion", token_dim=3, cond_dim=4, width=8, depth=1, seed=5)
    b = losslab.create("mar_diffusion", token_dim=3, cond_dim=4, width=8, depth=1, seed=5)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    b.load_state_dict(a.state_dict())
    z, x = torch.randn(6, 4), torch.randn(6, 3)
    close(a(z, x), b(z, x))


def test_defaults_are_the_papers() -> None:
    s = losslab.spec("mar_diffusion")
    assert s.defaults["diffusion_steps"] == 1000
    assert s.defaults["timesteps_per_token"] == 4
    assert s.defaults["width"] == 1024 and s.defaults["depth"] == 3


def test_bad_inputs() -> None:
    net = _denoiser()
    z, x = torch.randn(4, 4, dtype=D), torch.randn(4, 3, dtype=D)
    with pytest.raises(ValueError, match="leading"):
        mar_diffusion_loss(z[:3], x, denoiser=net)
    with pytest.raises(ValueError, match="weights"):
        mar_diffusion_loss(z, x, denoiser=net, weights=torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="eps_hat"):
        mar_diffusion_loss(z, x, denoiser=lambda a, t, c: a[:, :1])
    with pytest.raises(ValueError, match="diffusion_steps"):
        mar_diffusion_loss(z, x, denoiser=net, diffusion_steps=0)


def test_draw_op_draws_like_torch_and_its_fake_has_the_shapes() -> None:
    """``losslab::mar_draw`` (the draws under compile) draws ``t`` then ``eps`` from torch's
    default generator exactly as the eager loss does; its fake impl has the same shapes and
    dtypes."""
    x = torch.randn(2, 5, 3, dtype=D)
    torch.manual_seed(4)
    t, eps = torch.ops.losslab.mar_draw(x, 50, 3, 0)
    torch.manual_seed(4)
    close(t, torch.randint(0, 50, (3, 2, 5)))
    close(eps, torch.randn(3, 2, 5, 3, dtype=D))
    torch.library.opcheck(torch.ops.losslab.mar_draw.default, (x, 50, 3, 0),
                          test_utils=("test_schema", "test_faketensor"))


#: compiled vs eager: the timestep embedding is float32, where inductor's sin/cos may differ
#: from eager's in the last bits (a different draw changes the loss by O(1))
close_compiled = functools.partial(close, rtol=1e-5, atol=1e-6)


def _grads(loss: object, seed: int, z0: torch.Tensor, x: torch.Tensor,
           calls: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(value, dz) of ``calls`` successive calls after ``torch.manual_seed(seed)``."""
    assert callable(loss)
    torch.manual_seed(seed)
    out = []
    for _ in range(calls):
        z = z0.clone().requires_grad_(True)
        v = loss(z, x)
        (g,) = torch.autograd.grad(v, z)
        out.append((v.detach(), g))
    return out


@pytest.mark.slow
def test_compiled_draws_are_the_eager_draws() -> None:
    """Under ``torch.compile`` (no graph break) the draws are the effectful custom op: after
    ``torch.manual_seed(s)`` compiled and eager give the same value and gradient call after
    call, successive calls draw new numbers, and two losses in one graph draw twice and in
    order (no deduplication of the two equal calls)."""
    torch.manual_seed(0)
    m = losslab.create("mar_diffusion", token_dim=3, cond_dim=4, width=8, depth=1).double()
    z0, x = torch.randn(2, 5, 4, dtype=D), torch.randn(2, 5, 3, dtype=D)

    def twice(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return m(z, x) + 2 * m(z, x, weights=torch.ones(x.shape[:-1], dtype=D))

    torch._dynamo.reset()
    for fn in (m, twice):
        compiled_fn = torch.compile(fn, fullgraph=True)
        for seed in (0, 7):
            eager = _grads(fn, seed, z0, x)
            compiled = _grads(compiled_fn, seed, z0, x)
            for (ve, ge), (vc, gc) in zip(eager, compiled):
                close_compiled(vc, ve)
                close_compiled(gc, ge)
            assert not torch.equal(eager[0][0], eager[1][0])  # new draws each call
    # the loss drawn twice in one graph: not the same numbers twice
    torch.manual_seed(1)
    a = m(z0, x)
    b = m(z0, x)
    assert not torch.equal(a, b)
    torch.manual_seed(1)
    close_compiled(compiled_fn(z0, x), a + 2 * b)  # compiled_fn: twice


@pytest.mark.slow
def test_compiled_draws_from_an_explicit_generator() -> None:
    """An explicit generator compiles without a graph break and gives what eager draws from
    a generator in the same state: the module's own (``seed=``, also a deep copy's) and one
    passed to the functional form (a second generator traces again, with its own draws)."""
    import copy

    a = losslab.create("mar_diffusion", token_dim=3, cond_dim=4, width=8, depth=1, seed=5)
    b = copy.deepcopy(a)
    z0, x = torch.randn(6, 4), torch.randn(6, 3)
    torch._dynamo.reset()
    assert torch._dynamo.explain(copy.deepcopy(a))(z0, x).graph_break_count == 0
    for (ve, ge), (vc, gc) in zip(_grads(a, 0, z0, x),
                                  _grads(torch.compile(b, fullgraph=True), 1, z0, x)):
        close_compiled(vc, ve)
        close_compiled(gc, ge)
    net = _denoiser(token_dim=3, cond_dim=4)

    def f(z: torch.Tensor, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return mar_diffusion_loss(z, x, denoiser=net, generator=g)

    z0, x = z0.double(), x.double()
    torch._dynamo.reset()
    assert torch._dynamo.explain(f)(z0, x, torch.Generator()).graph_break_count == 0
    compiled = torch.compile(f, fullgraph=True)
    for seed in (3, 4):  # two generators: each its own stream
        g_eager, g_compiled = (torch.Generator().manual_seed(seed) for _ in range(2))
        for _ in range(2):
            close_compiled(compiled(z0, x, g_compiled), f(z0, x, g_eager))
