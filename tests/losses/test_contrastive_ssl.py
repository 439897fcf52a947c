"""Contrastive / self-supervised losses: oracles from the formulas, PML, learned temperature.

The tiled (memory-efficient) path is tested in ``tests/kernels/test_tiled_contrastive.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

import losslab
from losslab.functional import (
    alignment_loss,
    clip_loss,
    infonce_loss,
    siglip_loss,
    uniformity_loss,
)
from tests.losses.contrastive_ssl.common import open_clip_loss_module
from tests.losses.contrastive_ssl.common import pairs as noisy_pairs


def pairs(n: int = 7, d: int = 5, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    b = a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.requires_grad_(True), b.requires_grad_(True)


def cos(x: list[float], y: list[float]) -> float:
    return sum(p * q for p, q in zip(x, y)) / (math.hypot(*x) * math.hypot(*y))


def test_infonce_clip_siglip_match_loop_oracles() -> None:
    a, b = pairs()
    A, B = a.tolist(), b.tolist()
    n, tau = len(A), 0.2
    s = [[cos(A[i], B[j]) for j in range(n)] for i in range(n)]
    row = [-s[i][i] / tau + math.log(sum(math.exp(s[i][j] / tau) for j in range(n)))
           for i in range(n)]
    col = [-s[j][j] / tau + math.log(sum(math.exp(s[i][j] / tau) for i in range(n)))
           for j in range(n)]
    torch.testing.assert_close(infonce_loss(a, b, temperature=tau, reduction="none"),
                               torch.tensor(row, dtype=torch.float64))
    torch.testing.assert_close(clip_loss(a, b, temperature=tau, reduction="none"),
                               torch.tensor([(r + c) / 2 for r, c in zip(row, col)],
                                            dtype=torch.float64))
    t, bias = 10.0, -10.0
    sig = [sum(math.log1p(math.exp(-(1 if i == j else -1) * (t * s[i][j] + bias)))
               for j in range(n)) for i in range(n)]
    torch.testing.assert_close(siglip_loss(a, b, reduction="none"),
                               torch.tensor(sig, dtype=torch.float64))
    assert float(siglip_loss(a, b).detach()) == pytest.approx(sum(sig) / n, rel=1e-12)


def test_alignment_and_uniformity_oracles() -> None:
    a, b = pairs()
    na = torch.nn.functional.normalize(a.detach(), dim=1).tolist()
    nb = torch.nn.functional.normalize(b.detach(), dim=1).tolist()
    align = [sum((x - y) ** 2 for x, y in zip(na[i], nb[i])) for i in range(len(na))]
    assert float(alignment_loss(a, b).detach()) == pytest.approx(sum(align) / len(align), rel=1e-12)
    assert float(alignment_loss(a, b, alpha=1.0).detach()) == pytest.approx(
        sum(v**0.5 for v in align) / len(align), rel=1e-12)

    def unif(x: list[list[float]]) -> float:
        vals = [math.exp(-2 * sum((p - q) ** 2 for p, q in zip(x[i], x[j])))
                for i in range(len(x)) for j in range(i + 1, len(x))]
        return math.log(sum(vals) / len(vals))

    expected = (unif(na) + unif(nb)) / 2
    assert float(uniformity_loss(a, b).detach()) == pytest.approx(expected, rel=1e-12)


def test_infonce_matches_pml_ntxent() -> None:
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    a, b = pairs(n=9)
    labels = torch.arange(9)
    # ref_labels must be a different tensor object: PML treats `ref_labels is labels` as the
    # batch against itself and drops the diagonal (the positives here).
    pml = losses.NTXentLoss(temperature=0.1)(a, labels, ref_emb=b, ref_labels=labels.clone())
    ours = infonce_loss(a, b, temperature=0.1)
    torch.testing.assert_close(ours, pml)
    g_pml = torch.autograd.grad(pml, (a, b))
    g_ours = torch.autograd.grad(ours, (a, b))
    for x, y in zip(g_ours, g_pml):
        torch.testing.assert_close(x, y)


def test_learnable_temperature_and_bias_get_gradients() -> None:
    a, b = pairs()
    clip = losslab.create("clip", learnable_temperature=True).double()
    clip(a, b).backward()
    assert clip.log_scale.grad is not None
    assert float(clip.log_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    sig = losslab.create("siglip", learnable_temperature=True).double()
    sig(a, b).backward()
    assert sig.log_scale.grad is not None and sig.learned_bias.grad is not None
    assert float(sig.learned_bias.detach()) == -10.0
    assert float(sig.log_scale.detach()) == pytest.approx(math.log(10.0))


@pytest.mark.parametrize("name", ["infonce", "clip", "siglip"])
def test_learnable_temperature_is_a_module_option_not_a_hyperparameter(name: str) -> None:
    a, b = pairs()
    spec = losslab.spec(name)
    assert spec.defaults["learnable_temperature"] is False
    learned = losslab.create(name, learnable_temperature=True, temperature=0.25).double()
    fixed = losslab.create(name, temperature=0.25)
    assert learned.config == {"learnable_temperature": True}
    assert fixed.config == {"learnable_temperature": False}
    assert "learnable_temperature" not in learned.hparams
    assert fixed.log_scale is None and not list(fixed.parameters())
    # at initialisation the learned temperature is the given one: same value as the function
    torch.testing.assert_close(learned(a, b), spec.function(a, b, temperature=0.25))
    torch.testing.assert_close(fixed(a, b), spec.function(a, b, temperature=0.25))
    with pytest.raises(ValueError, match=r"temperature must be .*> 0"):
        losslab.create(name, temperature=-1.0, learnable_temperature=True)
    with pytest.raises(ValueError, match="chunk_size must be"):
        losslab.create(name, chunk_size=0)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        losslab.create(name, learnable=True)  # one word per concept: learnable_temperature


def test_single_pair_infonce_is_zero_and_uniformity_needs_two() -> None:
    a, b = pairs(n=1)
    assert float(infonce_loss(a, b).detach()) == 0.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        uniformity_loss(a, b)
    with pytest.raises(ValueError, match="same number of rows"):
        clip_loss(*pairs(n=3)[:1], pairs(n=4)[1])
    with pytest.raises(ValueError, match="chunk_size must be"):
        clip_loss(*pairs(), chunk_size=0)
    with pytest.raises(ValueError, match=r"temperature must be .*> 0"):
        clip_loss(*pairs(), temperature=0.0)


# ---------------------------------------------------------------------------------------------
# Bad input and faults (issue #11)
# ---------------------------------------------------------------------------------------------

PAIRED = ("infonce", "clip", "siglip", "alignment", "uniformity")


HALF_CASES = [(n, {}) for n in PAIRED] + [(n, {"chunk_size": 3}) for n in PAIRED[:3]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,kw", HALF_CASES)
def test_half_pairs_are_computed_and_returned_in_float32(name: str, kw: dict, dtype) -> None:
    """Finding 2: half inputs give a float32 loss equal to the float32 loss of the same
    values (also on the tiled path, ``chunk_size``)."""
    a, b = (x.detach().to(dtype) for x in pairs(scale=30.0))
    fn = losslab.spec(name).function
    out = fn(a, b, **kw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(a.float(), b.float(), **kw), rtol=0, atol=0)
    assert losslab.create(name, **kw).to(dtype)(a, b).dtype == torch.float32


BAD_CONTRASTIVE = [
    ("infonce", {"temperature": math.nan}),
    ("infonce", {"temperature": "0.1"}),
    ("infonce", {"normalize": "yes"}),
    ("infonce", {"symmetric": 1}),
    ("infonce", {"chunk_size": True}),
    ("infonce", {"chunk_size": -1}),
    ("clip", {"temperature": math.inf}),
    ("clip", {"chunk_size": 2.0}),
    ("siglip", {"bias": math.nan}),
    ("siglip", {"bias": "-10"}),
    ("siglip", {"temperature": -0.1}),
    ("alignment", {"alpha": math.nan}),
    ("alignment", {"alpha": "2"}),
    ("alignment", {"normalize": None}),
    ("uniformity", {"t": math.inf}),
    ("uniformity", {"t": 0.0}),
]


@pytest.mark.parametrize("name,hparams", BAD_CONTRASTIVE)
def test_bad_hyperparameters_raise_in_module_and_function(name: str, hparams: dict) -> None:
    """Finding 5: NaN/inf, strings, bools for integers (and integers for bools) are a
    ValueError naming the argument, at construction and in the function (a NaN bias, an
    infinite t, string values and chunk_size=True used to be accepted, or failed later with a
    TypeError)."""
    (key,) = hparams
    with pytest.raises(ValueError, match=key):
        losslab.create(name, **hparams)
    with pytest.raises(ValueError, match=key):
        losslab.spec(name).function(*pairs(), **hparams)


@pytest.mark.parametrize("name", ["infonce", "clip", "siglip"])
def test_learnable_temperature_option_is_validated(name: str) -> None:
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="learnable_temperature"):
            losslab.create(name, learnable_temperature=bad)


def test_learned_temperature_and_bias_tensors_must_be_scalars() -> None:
    a, b = pairs()
    t = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    assert torch.isfinite(siglip_loss(a, b, temperature=t, bias=torch.tensor(-10.0)))
    with pytest.raises(ValueError, match="temperature must be a scalar"):
        infonce_loss(a, b, temperature=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="bias must be a scalar"):  # was a RuntimeError
        siglip_loss(a, b, bias=torch.tensor([-10.0, -5.0]))


# --- open_clip parity: ClipLoss (local_loss=False, world_size=1) and SigLipLoss against clip and
# siglip, values and gradients in float64, dense and tiled, fixed and learned temperatures
# (open_clip_torch 3.3.0, its loss.py loaded by file) ---------------------------------------------

TILES = [None, 2, 5]


def unit(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.nn.functional
    return f.normalize(a, dim=1), f.normalize(b, dim=1)


@pytest.mark.parametrize("chunk_size", TILES, ids=["dense", "tile2", "tile5"])
def test_clip_matches_open_clip_cliploss(chunk_size: int | None) -> None:
    oc = open_clip_loss_module()
    a, b = noisy_pairs(n=11, d=6, seed=4)
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
    a, b = noisy_pairs(n=9, d=5, seed=6, noise=0.2)
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
    a, b = noisy_pairs(n=8, d=4, seed=2)
    m = losslab.create("clip", learnable_temperature=True, temperature=0.07).double()
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    want = oc.ClipLoss()(*unit(a, b), log_scale.exp())
    got = m(a, b)
    torch.testing.assert_close(got, want)
    param = m.log_scale
    assert isinstance(param, torch.nn.Parameter)
    torch.testing.assert_close(torch.autograd.grad(got, param)[0],
                               torch.autograd.grad(want, log_scale)[0])
