"""open_clip's ``ClipLoss`` (``local_loss=False``, ``world_size=1``) and ``SigLipLoss`` against
``clip`` and ``siglip``: values and gradients in float64, the dense and the tiled forms, with
fixed and with learned temperatures (open_clip_torch 3.3.0, its ``loss.py`` loaded by file)."""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import clip_loss, siglip_loss
from tests.losses.contrastive_ssl.common import open_clip_loss_module, pairs

TILES = [None, 2, 5]


def unit(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.nn.functional
    return f.normalize(a, dim=1), f.normalize(b, dim=1)


@pytest.mark.parametrize("chunk_size", TILES, ids=["dense", "tile2", "tile5"])
def test_clip_matches_open_clip_cliploss(chunk_size: int | None) -> None:
    oc = open_clip_loss_module()
    a, b = pairs(n=11, d=6, seed=4)
    temperature = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    peer = oc.ClipLoss(local_loss=False, gather_with_grad=False, rank=0, world_size=1)
    want = peer(*unit(a, b), 1.0 / temperature)
    got = clip_loss(a, b, temperature=temperature, chunk_size=chunk_size)
    torch.testing.assert_close(got, want)
    inputs = (a, b, temperature)
    for x, y in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("chunk_size", TILES, ids=["dense", "tile2", "tile5"])
def test_siglip_matches_open_clip_sigliploss(chunk_size: int | None) -> None:
    """At open_clip's SigLIP initialisation (``logit_scale = log 10``, ``logit_bias = -10``,
    the defaults of ``siglip``) and at a trained-looking point."""
    oc = open_clip_loss_module()
    a, b = pairs(n=9, d=5, seed=6, noise=0.2)
    peer = oc.SigLipLoss(rank=0, world_size=1)
    for scale, bias in ((10.0, -10.0), (27.0, -3.5)):
        t = torch.tensor(1.0 / scale, dtype=torch.float64, requires_grad=True)
        bb = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
        want = peer(*unit(a, b), 1.0 / t, bb)
        got = siglip_loss(a, b, temperature=t, bias=bb, chunk_size=chunk_size)
        torch.testing.assert_close(got, want)
        inputs = (a, b, t, bb)
        for x, y in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
            torch.testing.assert_close(x, y)
    default = siglip_loss(a, b, chunk_size=chunk_size)
    torch.testing.assert_close(default, peer(*unit(a, b), torch.tensor(10.0, dtype=torch.float64),
                                            torch.tensor(-10.0, dtype=torch.float64)))


def test_learned_temperature_modules_match_open_clip() -> None:
    """``learnable_temperature=True``: the module's parameter is open_clip's ``logit_scale``
    parameter (``log(1/tau)``, exponentiated at use); gradients on it agree."""
    oc = open_clip_loss_module()
    a, b = pairs(n=8, d=4, seed=2)
    m = losslab.create("clip", learnable_temperature=True, temperature=0.07).double()
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    want = oc.ClipLoss()(*unit(a, b), log_scale.exp())
    got = m(a, b)
    torch.testing.assert_close(got, want)
    param = m.log_scale
    assert isinstance(param, torch.nn.Parameter)
    torch.testing.assert_close(torch.autograd.grad(got, param)[0],
                               torch.autograd.grad(want, log_scale)[0])
