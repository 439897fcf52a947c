"""GradCache: the cached two-pass step gives the direct full-batch parameter gradients, for
every paired/embeddings loss of the registry; dropout replayed; shared encoders; bad input.

With DDP and the distributed modes: ``tests/distributed/test_modes.py`` (``gradcache:*``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import losslab
from losslab.gradcache import GradCache, cached_backward

N, D_IN, D_OUT, CHUNK = 13, 6, 8, 4  # 13 rows in chunks of 4: a short last chunk
NAMES = [n for k in ("paired", "embeddings") for n in losslab.available(kind=k)]


def mlp(seed: int, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, 16), nn.Tanh(), nn.Dropout(dropout),
                         nn.Linear(16, D_OUT)).double()


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    y = x + 0.5 * torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    return x, y, (torch.arange(N) % 3)[torch.randperm(N, generator=g)]


def grads(*modules: nn.Module) -> list[torch.Tensor]:
    out = []
    for m in modules:
        for p in m.parameters():
            assert p.grad is not None
            out.append(p.grad.clone())
            p.grad = None
    return out


def make_loss(name: str, **extra) -> nn.Module:
    s = losslab.spec(name)
    torch.manual_seed(0)
    hp = dict(s.example_hparams)
    if "embedding_dim" in hp:  # class-vector losses (proxies, EBV, ...): the encoder's width
        hp["embedding_dim"] = D_OUT
    return losslab.create(name, **{**hp, **extra}).double()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_equal_the_direct_full_batch(name: str) -> None:
    paired = losslab.spec(name).kind == "paired"
    loss = make_loss(name)
    fa, fb = mlp(1), mlp(2)
    x, y, labels = data()
    encoders, inputs, extra = ((fa, fb), (x, y), ()) if paired else ((fa,), (x,), (labels,))

    kw = {"index": torch.arange(N)} if losslab.spec(name).needs_index else {}
    state = {k: v.clone() for k, v in loss.state_dict().items()}  # per-sample buffers

    torch.manual_seed(5)
    direct = loss(*[e(i) for e, i in zip(encoders, inputs)], *extra, **kw)
    direct.backward()
    expected = grads(loss, *encoders)

    loss.load_state_dict(state)
    torch.manual_seed(5)
    value = cached_backward(loss, encoders, inputs, chunk_size=CHUNK, extra=extra,
                            loss_kwargs=kw)
    got = grads(loss, *encoders)
    assert torch.allclose(value, direct.detach(), rtol=1e-12, atol=1e-12)
    assert not value.requires_grad
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_dropout_is_replayed_and_matters() -> None:
    loss = make_loss("clip", chunk_size=3)  # the loss's own tiling composes
    fa, fb = mlp(1, dropout=0.3), mlp(2, dropout=0.3)
    x, y, _ = data()
    torch.manual_seed(7)  # direct reference: the same chunk order, with a graph
    za = torch.cat([fa(c) for c in x.split(CHUNK)])
    zb = torch.cat([fb(c) for c in y.split(CHUNK)])
    loss(za, zb).backward()
    expected = grads(fa, fb)
    after_direct = torch.rand(1)

    torch.manual_seed(7)
    step = GradCache(loss, (fa, fb), chunk_size=CHUNK)
    step(x, y)
    got = grads(fa, fb)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert torch.equal(torch.rand(1), after_direct)  # the RNG moves on as after one pass

    torch.manual_seed(7)
    cached_backward(loss, (fa, fb), (x, y), chunk_size=CHUNK, replay_rng=False)
    unreplayed = grads(fa, fb)
    assert max(float((e - g).abs().max()) for e, g in zip(expected, unreplayed)) > 1e-3


def test_shared_encoder_for_two_views_and_mapping_inputs() -> None:
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(4)

        def forward(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            return self.net(x + shift)

    loss = make_loss("infonce", symmetric=True)
    enc = Keyword()
    x, y, _ = data()
    shift = torch.linspace(0, 1, N, dtype=torch.float64)[:, None]
    loss(enc(x, shift), enc(y, shift)).backward()
    expected = grads(enc)
    cached_backward(loss, (enc, enc), ({"x": x, "shift": shift}, {"x": y, "shift": shift}),
                    chunk_size=5)
    for e, g in zip(expected, grads(enc)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_bad_input_raises() -> None:
    loss, enc = make_loss("clip"), mlp(1)
    x, y, _ = data()
    with pytest.raises(ValueError, match="chunk_size"):
        cached_backward(loss, (enc, enc), (x, y), chunk_size=0)
    with pytest.raises(ValueError, match="encoders and inputs"):
        cached_backward(loss, (enc,), (x, y), chunk_size=4)
    with pytest.raises(ValueError, match="one number of rows"):
        cached_backward(loss, (enc, enc), (x, y[:5]), chunk_size=4)
    with pytest.raises(ValueError, match="scalar"):
        cached_backward(make_loss("clip", reduction="none"), (enc, enc), (x, y), chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        GradCache(loss, (enc, enc), chunk_size=-1)
